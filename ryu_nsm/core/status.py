"""The controller's status as typed data, and the manager that keeps its history and counters.

``Controller.status()`` answers a ``Status``; ``observe.report`` renders it (JSON for ``/status``,
text for ``ryu-nsm status``), so the core never shapes output.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ryu_nsm.core.manager import Manager
from ryu_nsm.core.planner import FAILED, FabricState, Plan, PlannedConnection
from ryu_nsm.core.policy_counters import PolicyCounters
from ryu_nsm.qos.measure import LinkQuality

log = logging.getLogger("ryu_nsm.core.controller")

SLOW_MARGIN = 0.001  # s: a link measured this much above its declared latency is slower than declared


@dataclass(frozen=True)
class HistoryEntry:
    """A line of history: what happened to a connection, when and why."""

    time: float
    connection: str
    what: str


@dataclass(frozen=True)
class PathMeasurement:
    """What the probes measure along a path, and whether that meets the connection's level."""

    latency: float | None
    loss: float
    complete: bool  # every link of the path is measured
    met: bool


@dataclass(frozen=True)
class ConnectionStatus:
    """A planned connection with its state (up, pending, failed) and what is measured of it."""

    planned: PlannedConnection
    state: str
    throughput: Mapping[str, float] | None = None  # "from_client"/"from_endpoint" → bit/s
    measured: PathMeasurement | None = None  # its path, under a service level
    chain_measured: PathMeasurement | None = None  # its whole chain, under a chain-wide bound
    policy: PolicyCounters | None = None  # what its policy allowed and dropped, as last read
    meter_drops: Mapping[str, int] | None = None  # "from_client"/"from_endpoint" → frames over its rate limit


@dataclass(frozen=True)
class SwitchStatus:
    name: str
    dpid: int
    connected: bool
    flows: int | None  # ours, as last read; None until read


@dataclass(frozen=True)
class LinkStatus:
    """A measured link; ``planned_latency`` while paths are planned with more than it declares."""

    name: str
    quality: LinkQuality
    planned_latency: float | None = None


@dataclass(frozen=True)
class Counters:
    """Since start: moves by why, connections that went to failed, breaches acted on by level."""

    moves: Mapping[str, int]
    failures: int
    breaches: Mapping[str, int]


@dataclass(frozen=True)
class Status:
    fabric: str
    connections: tuple[ConnectionStatus, ...]
    switches: tuple[SwitchStatus, ...]
    history: tuple[HistoryEntry, ...]
    problems: tuple[str, ...]
    reservations: tuple[dict, ...]  # the admission ledger's own description, per link
    counters: Counters
    links: tuple[LinkStatus, ...]


class History(Manager):
    """Recent changes to connections, and the counts kept since start, for status and metrics."""

    def __init__(self, avoided: Callable[[str], frozenset[str]]):
        """``avoided``: the links a connection is kept away from (the QoS loop's), to tell why it moved."""
        self.avoided = avoided
        self.changes: deque[HistoryEntry] = deque(maxlen=500)
        # Moves by why (link_down, switch_down, service_level, other); connections gone to failed.
        self.moves: Counter[str] = Counter()
        self.failures = 0

    def add(self, change: HistoryEntry) -> None:
        self.changes.append(change)

    def plan_changed(self, before: Plan, after: Plan, state: FabricState, now: float) -> None:
        """A line for each touched connection whose state, reason or path changed, or that left."""
        for cid in sorted(after.touched):
            new = after.connections.get(cid)
            if new is None:
                continue
            old = before.connections.get(cid)
            if new.state == FAILED and (old is None or old.state != FAILED):
                self.failures += 1
            what = self._what(old, new, state)
            if new.event and (what is None or new.event not in what):
                what = f"{what}; {new.event}" if what else new.event
            if what:
                self.changes.append(HistoryEntry(now, cid, what))
                log.info("connection %s %s", cid, what)
        for cid in before.connections.keys() - after.connections.keys():
            self.changes.append(HistoryEntry(now, cid, "removed"))
            log.info("connection %s removed", cid)

    def _what(self, old: PlannedConnection | None, new: PlannedConnection, state: FabricState) -> str | None:
        if old is None:
            return f"created: {new.state}" + (f" ({new.reason})" if new.reason else "")
        if old.state != new.state or old.reason != new.reason:
            return f"{old.state} → {new.state}" + (f": {new.reason}" if new.reason else "")
        if new.path != old.path and old.path is not None and new.path is not None:
            cut = [link.name for link in old.path.links if link.name in state.down_links]
            down = [sw for sw in old.path.switches if sw in state.down_switches]
            avoided = self.avoided(new.id) & {link.name for link in old.path.links}
            why = f"link {', '.join(cut)} down" if cut else (
                f"switch {', '.join(down)} down" if down else (
                    f"service level: off {', '.join(sorted(avoided))}" if avoided else (
                        new.event or "endpoint changed")))
            self.moves["link_down" if cut else "switch_down" if down else
                       "service_level" if avoided else "other"] += 1
            return f"moved {'-'.join(old.path.switches)} → {'-'.join(new.path.switches)} ({why})"
        return None
