"""Link quality from the controller's own probes, and the service levels it breaks.

Every ``interval`` the controller sends a probe frame out of each end of each fabric link
(packet-out) and gets it back from the switch at the other end (packet-in). The time from sending
to receiving, minus half the control path's round trip of each of the two switches, is the link's
one-way latency in that direction. The control path's round trip is measured the same way, with a
probe each switch hands straight back (packet-out to the controller port): it holds what a link
probe spends in the channel, in the switch's slow path and in the controller's event queue, which
an OpenFlow echo would not. A probe not back within
``timeout`` is lost. Each direction keeps its last ``window`` probes: latency is their median
(robust to a scheduling hiccup of this userspace datapath), loss the fraction that never came back.
A latency is only as good as the correction: its ``error`` is half the spread (largest less smallest)
of the two switches' control round trips in the window, so that a controller busy enough to hold
packet-ins in its queue does not read as a slow link.

Pure: callers pass ``now``; the shell does the sending and the clocks.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

PROBE_BUDGET = 128  # link probes a round by default: every end of up to 64 links, in turn beyond
PROBE_ETH_TYPE = 0x88B5  # IEEE 802 local experimental ethertype: never a client's wire traffic here


@dataclass(frozen=True)
class LinkQuality:
    """Measured one-way latency (s, None before any probe came back) and loss of one link direction."""

    latency: float | None
    loss: float
    samples: int
    error: float = 0.0  # s: how far the latency may be off, by the control path's own spread


@dataclass
class _Direction:
    sent: deque = field(default_factory=deque)  # (seq, sent at), oldest first
    delays: deque = field(default_factory=deque)  # corrected one-way delays of probes that came back
    lost: deque = field(default_factory=deque)  # outcome per finished probe: True = lost
    far: str = ""  # the switch that hands this direction's probes back


class Measurements:
    """Probe bookkeeping and per-direction link quality. A direction is (link name, sending switch)."""

    def __init__(self, window: int = 10, timeout: float = 1.0):
        self.window = window
        self.timeout = timeout
        self._directions: dict[tuple[str, str], _Direction] = {}
        self._outstanding: dict[int, tuple[tuple[str, str], float]] = {}  # seq → (direction, sent at)
        self._rtt: dict[str, deque] = {}  # switch → its last control path round trips (s)
        self._seq = 0
        # Until when the controller's interpreter was held by its own work (a replan, a big decode):
        # a probe in flight then came back late by that work, not by the link.
        self._stalled_until = float("-inf")

    def stalled(self, until: float) -> None:
        """The controller's own work held the interpreter until ``until``: probes in flight then say
        nothing about their links (not counted), and are not lost before a timeout after it."""
        self._stalled_until = max(self._stalled_until, until)

    def sent(self, direction: tuple[str, str], now: float) -> int:
        """Record a probe sent now; returns its sequence number (carried in the frame)."""
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        self._outstanding[self._seq] = (direction, now)
        self._directions.setdefault(direction, _Direction())
        return self._seq

    def resent(self, seq: int, now: float) -> None:
        """Probe ``seq`` really left now (the shell sends behind other work)."""
        known = self._outstanding.get(seq)
        if known is not None:
            self._outstanding[seq] = (known[0], now)

    def control_rtt(self, switch: str, rtt: float) -> None:
        """A control path round trip to ``switch`` (its median over the window counts)."""
        _push(self._rtt.setdefault(switch, deque()), rtt, self.window)

    def _control(self, switch: str) -> float:
        rtts = self._rtt.get(switch)
        return statistics.median(rtts) if rtts else 0.0

    def _spread(self, switch: str) -> float:
        rtts = self._rtt.get(switch)
        return max(rtts) - min(rtts) if rtts else 0.0

    def received(self, seq: int, at_switch: str, from_switch: str, now: float) -> float | None:
        """A probe came back from the far switch; returns the one-way delay it measured, or None."""
        known = self._outstanding.pop(seq, None)
        if known is None:
            return None  # too late (already counted lost) or not ours
        direction, sent_at = known
        if sent_at < self._stalled_until:
            return None
        correction = (self._control(from_switch) + self._control(at_switch)) / 2
        delay = max(0.0, now - sent_at - correction)
        state = self._directions[direction]
        state.far = at_switch
        _push(state.delays, delay, self.window)
        _push(state.lost, False, self.window)
        return delay

    def expire(self, now: float) -> None:
        """Probes older than ``timeout`` that did not come back are lost."""
        for seq, (direction, sent_at) in list(self._outstanding.items()):
            if now - max(sent_at, self._stalled_until) >= self.timeout:
                del self._outstanding[seq]
                _push(self._directions[direction].lost, True, self.window)

    def quality(self, direction: tuple[str, str]) -> LinkQuality | None:
        state = self._directions.get(direction)
        if state is None or not state.lost:
            return None
        latency = statistics.median(state.delays) if state.delays else None
        error = (self._spread(direction[1]) + self._spread(state.far)) / 2 if state.far else 0.0
        return LinkQuality(latency, sum(state.lost) / len(state.lost), len(state.lost), error)

    def link(self, name: str, ends: Iterable[str]) -> LinkQuality | None:
        """The worse of a link's two directions (a wire uses both)."""
        found = [q for q in (self.quality((name, end)) for end in ends) if q is not None]
        if not found:
            return None
        latencies = [q for q in found if q.latency is not None]
        worse = max(latencies, key=lambda q: q.latency) if latencies else None
        return LinkQuality(worse.latency if worse else None, max(q.loss for q in found),
                           min(q.samples for q in found), worse.error if worse else 0.0)

    def forget(self, keep: Iterable[tuple[str, str]]) -> None:
        """Drop directions no longer probed (their link or switch went away)."""
        keep = set(keep)
        for direction in list(self._directions):
            if direction not in keep:
                del self._directions[direction]


def _push(queue: deque, value: object, limit: int) -> None:
    queue.append(value)
    while len(queue) > limit:
        queue.popleft()


@dataclass(frozen=True)
class PathQuality:
    """What a path measures: summed latency (declared where a link has no measurement yet) and loss."""

    latency: float
    loss: float
    measured: bool  # every link had measurements


def path_quality(links: Iterable, measured: Mapping[str, LinkQuality]) -> PathQuality:
    """Latency adds up along a path; delivery probabilities multiply."""
    latency, delivered, complete = 0.0, 1.0, True
    for link in links:
        q = measured.get(link.name)
        if q is None or q.latency is None:
            latency += link.latency
            complete = False
        else:
            latency += q.latency
        if q is not None:
            delivered *= 1 - q.loss
    return PathQuality(latency, 1 - delivered, complete)
