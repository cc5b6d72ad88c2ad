"""The relay core of the impairment element (``ryu_nsm.lab.impairment``): each direction's settings
and schedule (pure: ``now`` is given), and its raw sockets, queue and counters.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import math
import random
import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

log = logging.getLogger(__name__)

DIRECTIONS = ("a2b", "b2a")
COUNTERS = ("received", "relayed", "dropped", "overflow", "failed", "queued", "relayed_bytes", "missed")
MAX_DELAY_MS = 60_000.0

# Linux constants the socket module does not export.
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_STATISTICS = 6
PACKET_AUXDATA = 8
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
ETH_P_8021Q = 0x8100
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

_VNET = struct.Struct("=BBHHHH")  # virtio_net_hdr: flags gso_type hdr_len gso_size csum_start csum_offset
_AUXDATA = struct.Struct("=IIIHHHH")  # tpacket_auxdata
_PACKET_STATS = struct.Struct("=II")  # tpacket_stats: packets, drops (reset by every read)
RECV_BUFFER = 256 * 1024  # a GSO super-frame is at most 64 KiB; room to spare costs nothing
_SOCKET_BUFFER = 8 * 1024 * 1024
_RECV_BUDGET = 256  # frames read from one socket per wake, so releases are not starved by a flood
_MAX_QUEUED_BYTES = 64 * 1024 * 1024  # per direction: 10,000 delayed super-frames would be 640 MiB
_RETRY_S = 0.001  # wait before resending after the socket said "would block"


class ImpairmentError(RuntimeError):
    """The impairment element refused a request, could not start, or could not be reached."""


@dataclass(frozen=True)
class Settings:
    """The impairment of one direction."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    rate_bps: float = 0.0
    limit: int = 10_000

    def updated(self, changes: Mapping[str, Any]) -> Settings:
        """Return these settings with ``changes`` applied, or raise ImpairmentError naming the bad field."""
        fields: dict[str, Any] = {}
        for key, value in changes.items():
            if key not in _FIELD_CHECKS:
                raise ImpairmentError(f"unknown setting {key!r}")
            fields[key] = _FIELD_CHECKS[key](key, value)
        return replace(self, **fields)


def _number(key: str, value: Any, low: float, high: float) -> float:
    # bool is an int in Python but never a meaningful delay or probability.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ImpairmentError(f"{key} must be a number, got {value!r}")
    if not low <= value <= high:
        raise ImpairmentError(f"{key} must be within [{low}, {high}], got {value!r}")
    return float(value)


def _limit(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ImpairmentError(f"{key} must be a positive integer, got {value!r}")
    return value


_FIELD_CHECKS = {
    "delay_ms": lambda k, v: _number(k, v, 0.0, MAX_DELAY_MS),
    "jitter_ms": lambda k, v: _number(k, v, 0.0, MAX_DELAY_MS),
    "loss": lambda k, v: _number(k, v, 0.0, 1.0),
    "rate_bps": lambda k, v: _number(k, v, 0.0, 1e12),
    "limit": _limit,
}


class Schedule:
    """When the frames of one direction leave: the pure core of the element (no sockets, ``now`` given)."""

    def __init__(self, name: str, settings: Settings = Settings(), seed: int | None = None):
        self.name = name
        self.settings = settings
        self.reseed(seed)
        self._last_release = 0.0
        self._link_free = 0.0

    def reseed(self, seed: int | None) -> None:
        """Restart the loss and jitter RNGs from ``seed`` (None: from the OS)."""
        # Separate streams, so the sequence of loss decisions does not depend on the jitter setting.
        self._loss_rng = random.Random(None if seed is None else f"{seed}:{self.name}:loss")
        self._jitter_rng = random.Random(None if seed is None else f"{seed}:{self.name}:jitter")

    def admit(self, size: int, now: float) -> float | None:
        """Release time (seconds, same clock as ``now``) of a frame of ``size`` bytes, or None to drop it."""
        s = self.settings
        if s.loss > 0 and self._loss_rng.random() < s.loss:
            return None
        delay = s.delay_ms / 1000.0
        if s.jitter_ms:
            delay = max(0.0, delay + self._jitter_rng.uniform(-s.jitter_ms, s.jitter_ms) / 1000.0)
        release = now + delay
        if s.rate_bps:
            self._link_free = max(release, self._link_free) + size * 8 / s.rate_bps
            release = self._link_free
        if not s.jitter_ms:
            # Keeps arrival order when the delay is lowered while frames are still queued.
            release = max(release, self._last_release)
        self._last_release = max(self._last_release, release)
        return release


def open_port(ifname: str) -> socket.socket:
    """A raw socket bound to ``ifname`` that sees every frame it receives and sets it promiscuous.

    Promiscuity is a membership of the socket, so it ends when the socket closes, even on a crash.
    """
    # Protocol 0 until bind: an unbound ETH_P_ALL socket would queue frames of every interface.
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        with contextlib.suppress(OSError):  # before Linux 4.20; _receive also skips outgoing frames
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, _SOCKET_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, _SOCKET_BUFFER)
        sock.bind((ifname, ETH_P_ALL))
        mreq = struct.pack("iHH8s", socket.if_nametoindex(ifname), PACKET_MR_PROMISC, 0, b"")
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _with_vlan(frame: memoryview, tci: int, tpid: int) -> bytes:
    """Put a VLAN tag that the kernel moved into metadata back into a vnet-header + frame buffer."""
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = _VNET.unpack_from(frame)
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
        csum_start += 4
    if gso_type and hdr_len:
        hdr_len += 4
    head = _VNET.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)
    vnet = _VNET.size
    return b"".join((head, frame[vnet:vnet + 12], struct.pack("!HH", tpid, tci), frame[vnet + 12:]))


class Direction:
    """One direction of the relay: its schedule, its queue of (release, seq, frame) and its counters."""

    def __init__(self, name: str, rx: socket.socket, tx: socket.socket, schedule: Schedule):
        self.name = name
        self.rx, self.tx = rx, tx
        self.schedule = schedule
        self.queue: list[tuple[float, int, bytes]] = []
        self.queued_bytes = 0
        self.seq = 0
        self.retry_at = 0.0
        self.errors_seen: set[int | None] = set()  # log each kind of send error once, not per frame
        self.counts = dict.fromkeys(COUNTERS, 0)

    def accept(self, frame: bytes, now: float) -> None:
        counts = self.counts
        counts["received"] += 1
        settings = self.schedule.settings
        if len(self.queue) >= settings.limit or self.queued_bytes + len(frame) > _MAX_QUEUED_BYTES:
            counts["overflow"] += 1
            return
        release = self.schedule.admit(len(frame) - _VNET.size, now)
        if release is None:
            counts["dropped"] += 1
        elif release <= now and not self.queue:
            if not self._send(frame):
                self._push(release, frame)
        else:
            self._push(release, frame)

    def _push(self, release: float, frame: bytes) -> None:
        self.seq += 1
        self.queued_bytes += len(frame)
        heapq.heappush(self.queue, (release, self.seq, frame))

    def _send(self, frame: bytes) -> bool:
        """Send one frame; False when the socket would block (the frame is kept for a retry)."""
        try:
            self.tx.send(frame)
        except (BlockingIOError, InterruptedError):
            self.retry_at = time.monotonic() + _RETRY_S
            return False
        except OSError as exc:
            # A frame the interface refuses (too big, link down) is lost, as on a real link.
            self.counts["failed"] += 1
            if exc.errno not in self.errors_seen:
                self.errors_seen.add(exc.errno)
                log.warning("%s: sending a frame of %d bytes failed: %s", self.name, len(frame), exc)
            return True
        self.counts["relayed"] += 1
        self.counts["relayed_bytes"] += len(frame) - _VNET.size
        return True

    def release_due(self, now: float) -> float | None:
        """Send every frame whose time has come; return when the next one is due (None: queue empty)."""
        queue = self.queue
        if now < self.retry_at:
            return self.retry_at
        while queue and queue[0][0] <= now:
            if not self._send(queue[0][2]):
                return self.retry_at
            self.queued_bytes -= len(heapq.heappop(queue)[2])
        return queue[0][0] if queue else None

    def stats(self) -> dict[str, int]:
        raw = self.rx.getsockopt(SOL_PACKET, PACKET_STATISTICS, _PACKET_STATS.size)
        _packets, drops = _PACKET_STATS.unpack(raw)
        self.counts["missed"] += drops
        return {**self.counts, "queued": len(self.queue)}


def receive(direction: Direction, buffer: bytearray, view: memoryview) -> None:
    """Read what waits on ``direction``'s socket (at most a budget per call) into its queue."""
    sock = direction.rx
    for _ in range(_RECV_BUDGET):
        try:
            size, ancillary, flags, address = sock.recvmsg_into([buffer], 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            # ENETDOWN once when the interface goes down; the socket works again when it comes up.
            log.warning("%s: receiving failed: %s", direction.name, exc)
            return
        if address[2] == socket.PACKET_OUTGOING:
            continue
        if flags & socket.MSG_TRUNC:
            direction.counts["received"] += 1
            direction.counts["failed"] += 1
            continue
        frame = None
        for level, kind, data in ancillary:
            if level == SOL_PACKET and kind == PACKET_AUXDATA and len(data) >= _AUXDATA.size:
                status, _len, _snap, _mac, _net, tci, tpid = _AUXDATA.unpack_from(data)
                if status & TP_STATUS_VLAN_VALID:
                    tpid = tpid if status & TP_STATUS_VLAN_TPID_VALID else ETH_P_8021Q
                    frame = _with_vlan(view[:size], tci, tpid)
        direction.accept(bytes(view[:size]) if frame is None else frame, time.monotonic())
