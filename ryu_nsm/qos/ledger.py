"""The bandwidth ledger: guaranteed bit/s held per link direction, never above capacity.

Demands say what a connection asks of the fabric; a Reservation holds one demand's guarantee on
every link direction of its path and backup; a reservation that does not fit is refused whole,
naming the Bottleneck. See docs/admission.md for why the ledger counts each direction.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from ryu_nsm.core.fabric import Fabric, Link
from ryu_nsm.core.pathing import Path
from ryu_nsm.qos.service_level import format_bandwidth

Direction = tuple[str, str]
"""One direction of a link: (link name, the switch the traffic leaves from)."""


def path_text(path: Path) -> str:
    """A path as its switches, for messages."""
    return " → ".join(path.switches)


@dataclass(frozen=True)
class Demand:
    """What one connection asks of the fabric: a path from ``src`` to ``dst`` (switch names) with
    ``bandwidth`` bit/s guaranteed each way, at most ``max_latency`` seconds one-way, and a backup
    when ``protected``. ``current`` is the path it has now, kept while it still qualifies, and
    ``current_backup`` its backup, kept alike while it is still disjoint from the primary."""

    connection_id: str
    src: str
    dst: str
    bandwidth: int = 0
    max_latency: float | None = None
    priority: int = 0
    preemptible: bool = False
    protected: bool = False
    current: Path | None = None
    current_backup: Path | None = None


@dataclass(frozen=True)
class Reservation:
    """A demand's guarantee, held on every link of its path and of its backup."""

    demand: Demand
    path: Path
    backup: Path | None = None

    @property
    def connection_id(self) -> str:
        return self.demand.connection_id

    @property
    def bandwidth(self) -> int:
        return self.demand.bandwidth

    @property
    def priority(self) -> int:
        return self.demand.priority

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.path,) if self.backup is None else (self.path, self.backup)

    @functools.cached_property
    def held(self) -> dict[Direction, int]:
        """How many times each link direction is held (both directions of every link of every path)."""
        return dict(Counter(d for path in self.paths for link in path.links for d in directions(link)))


def _below(by_priority: Counter[int] | None, priority: int) -> int:
    """Bit/s held by priorities below ``priority`` (None: nothing held)."""
    return sum(bits for held, bits in by_priority.items() if held < priority) if by_priority else 0


def directions(link: Link) -> tuple[Direction, Direction]:
    """Both directions of a link: a guarantee holds each way."""
    return ((link.name, link.a), (link.name, link.b))


@dataclass(frozen=True)
class Bottleneck:
    """A link direction that cannot take ``requested`` more bit/s."""

    link: str
    src: str
    dst: str
    capacity: float
    reserved: float
    holders: int
    requested: float

    @property
    def free(self) -> float:
        return self.capacity - self.reserved

    def __str__(self) -> str:
        holders = f"{self.holders} connection" + ("" if self.holders == 1 else "s")
        return (f"link {self.link} ({self.src}→{self.dst}): {format_bandwidth(self.free)} free of "
                f"{format_bandwidth(self.capacity)} ({format_bandwidth(self.reserved)} reserved by "
                f"{holders}), {format_bandwidth(self.requested)} needed")


class AdmissionError(Exception):
    """A reservation that does not fit: ``bottleneck`` says where."""

    def __init__(self, connection_id: str, bottleneck: Bottleneck):
        super().__init__(f"cannot reserve for {connection_id}: {bottleneck}")
        self.connection_id = connection_id
        self.bottleneck = bottleneck


def whole_bits(value: object) -> int:
    """A bandwidth as an integer number of bit/s, so sums and releases are exact."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"bandwidth must be a whole number of bit/s, at least 0, got {value!r}")
    return value


class Ledger:
    """Guaranteed bandwidth reserved on each link direction of a fabric, never above capacity."""

    def __init__(self, fabric: Fabric):
        self._links = {link.name: link for link in fabric.links}
        # Link name → what a wire could still reserve on it (the smaller residual of both directions),
        # kept up to date because path searches ask for it on every link they look at.
        self._free: dict[str, float] = {name: link.capacity for name, link in self._links.items()}
        self._reserved: dict[Direction, int] = {}
        self._holders: dict[Direction, dict[str, None]] = {}
        self._reservations: dict[str, Reservation] = {}
        # Bit/s held by preemptible reservations, per direction and priority: what preemption may free.
        self._yielding: dict[Direction, Counter[int]] = {}
        self._preemptible: Counter[int] = Counter()

    def copy(self) -> Ledger:
        """An independent ledger holding the same reservations (a plan changes its own copy)."""
        new = Ledger.__new__(Ledger)
        new._links = self._links
        new._free = dict(self._free)
        new._reserved = dict(self._reserved)
        new._holders = {d: dict(ids) for d, ids in self._holders.items()}
        new._reservations = dict(self._reservations)
        new._yielding = {d: Counter(bits) for d, bits in self._yielding.items()}
        new._preemptible = Counter(self._preemptible)
        return new

    @property
    def reservations(self) -> Mapping[str, Reservation]:
        """Connection id → its reservation (read-only)."""
        return MappingProxyType(self._reservations)

    def capacity(self, link_name: str) -> float:
        """Capacity of a link in each direction (bit/s)."""
        return self._link(link_name).capacity

    def reserved(self, link_name: str, src: str) -> int:
        """Bit/s reserved on the direction of ``link_name`` that leaves ``src``."""
        link = self._link(link_name)
        if src not in (link.a, link.b):
            raise KeyError(f"link {link_name} does not touch {src}")
        return self._reserved.get((link_name, src), 0)

    def residual(self, link_name: str, src: str | None = None) -> float:
        """Bit/s still free leaving ``src`` on the link; without ``src``, the smaller of both directions."""
        link = self._link(link_name)
        if src is not None:
            return link.capacity - self.reserved(link_name, src)
        return link.capacity - max(self._reserved.get(d, 0) for d in directions(link))

    def holders(self, link_name: str, src: str) -> tuple[Reservation, ...]:
        """The reservations on one direction of a link, oldest first."""
        self.reserved(link_name, src)  # refuses a link or switch that is not there
        return tuple(self._reservations[c] for c in self._holders.get((link_name, src), ()))

    def fits(self, bandwidth: int, paths: Iterable[Path]) -> Bottleneck | None:
        """The first link direction (in path order) that cannot take ``bandwidth`` on ``paths``, or None."""
        bandwidth = whole_bits(bandwidth)
        need: Counter[Direction] = Counter()
        order: list[Direction] = []
        for path in paths:
            self._check(path)
            for link in path.links:
                for d in directions(link):
                    if d not in need:
                        order.append(d)
                    need[d] += bandwidth
        for d in order:
            link = self._links[d[0]]
            reserved = self._reserved.get(d, 0)
            if reserved + need[d] > link.capacity:
                dst = link.b if d[1] == link.a else link.a
                return Bottleneck(link.name, d[1], dst, link.capacity, reserved,
                                  len(self._holders.get(d, ())), need[d])
        return None

    def reserve(self, demand: Demand, path: Path, backup: Path | None = None) -> Reservation:
        """Hold ``demand.bandwidth`` on every link direction of ``path`` (and ``backup``), or nothing.

        Raises AdmissionError naming the bottleneck when it does not fit, ValueError when the
        connection already holds a reservation or a path does not join ``demand.src`` to ``demand.dst``.
        """
        if demand.connection_id in self._reservations:
            raise ValueError(f"{demand.connection_id} already holds a reservation: release it first")
        for which in (path, backup):
            if which is not None and (which.switches[0], which.switches[-1]) != (demand.src, demand.dst):
                raise ValueError(f"path {path_text(which)} does not join {demand.src} to {demand.dst}")
        reservation = Reservation(demand, path, backup)
        bottleneck = self.fits(demand.bandwidth, reservation.paths)
        if bottleneck is not None:
            raise AdmissionError(demand.connection_id, bottleneck)
        yields = demand.preemptible and demand.bandwidth > 0
        for d, times in reservation.held.items():
            self._reserved[d] = self._reserved.get(d, 0) + times * demand.bandwidth
            self._holders.setdefault(d, {})[demand.connection_id] = None
            if yields:
                self._yielding.setdefault(d, Counter())[demand.priority] += times * demand.bandwidth
        if yields:
            self._preemptible[demand.priority] += 1
        self._refresh(reservation)
        self._reservations[demand.connection_id] = reservation
        return reservation

    def release(self, connection_id: str) -> Reservation | None:
        """Give back a connection's reservation; returns it, or None if it held none."""
        reservation = self._reservations.pop(connection_id, None)
        if reservation is None:
            return None
        yields = reservation.demand.preemptible and reservation.bandwidth > 0
        for d, times in reservation.held.items():
            left = self._reserved[d] - times * reservation.bandwidth
            holders = self._holders[d]
            del holders[connection_id]
            if holders:
                self._reserved[d] = left
            else:
                del self._reserved[d], self._holders[d]
            if yields:
                self._yielding[d][reservation.priority] -= times * reservation.bandwidth
                if not +self._yielding[d]:
                    del self._yielding[d]
        if yields:
            self._preemptible[reservation.priority] -= 1
        self._refresh(reservation)
        return reservation

    def _refresh(self, reservation: Reservation) -> None:
        for name in {d[0] for d in reservation.held}:
            link = self._links[name]
            self._free[name] = link.capacity - max(self._reserved.get((name, link.a), 0),
                                                   self._reserved.get((name, link.b), 0))

    @property
    def room(self) -> Callable[[str], float]:
        """Link name → ``available(name)`` without preemption, as a plain lookup (path searches ask
        it of every link they look at)."""
        return self._free.__getitem__

    def may_preempt(self, priority: int) -> bool:
        """True when some preemptible guarantee has a priority below ``priority``."""
        return any(count for held, count in self._preemptible.items() if held < priority)

    def available(self, link_name: str, preempt_below: int | None = None) -> float:
        """Bit/s a wire could still reserve on a link: the smaller residual of its two directions.

        With ``preempt_below``, preemptible guarantees of a lower priority count as free.
        """
        if preempt_below is None:
            return self._free[link_name]
        link = self._links[link_name]
        ab, ba = (link_name, link.a), (link_name, link.b)
        yield_ab, yield_ba = self._yielding.get(ab), self._yielding.get(ba)
        if not yield_ab and not yield_ba:
            return self._free[link_name]  # nothing here yields: the same figure, without summing
        taken_ab = self._reserved.get(ab, 0) - _below(yield_ab, preempt_below)
        taken_ba = self._reserved.get(ba, 0) - _below(yield_ba, preempt_below)
        return link.capacity - max(taken_ab, taken_ba)

    def describe(self) -> list[dict]:
        """JSON-able state of every link that holds reservations, in fabric order (for plans and status)."""
        out = []
        for link in self._links.values():
            ab, ba = (self._reserved.get(d, 0) for d in directions(link))
            if (link.name, link.a) not in self._holders and (link.name, link.b) not in self._holders:
                continue
            ids = {*self._holders.get((link.name, link.a), ()), *self._holders.get((link.name, link.b), ())}
            out.append({
                "link": link.name, "capacity": link.capacity,
                "reserved": {f"{link.a}->{link.b}": ab, f"{link.b}->{link.a}": ba},
                "residual": link.capacity - max(ab, ba), "connections": sorted(ids),
                # The switch's queue for guaranteed wires needs at least max(reserved) of min-rate.
                **({"queue": link.queue} if link.queue is not None else {}),
            })
        return out

    def _link(self, link_name: str) -> Link:
        try:
            return self._links[link_name]
        except KeyError:
            raise KeyError(f"link {link_name} is not in the ledger's fabric") from None

    def _check(self, path: Path) -> None:
        if len(path.switches) != len(path.links) + 1:
            raise ValueError(f"path {path_text(path)} has {len(path.links)} links for "
                             f"{len(path.switches)} switches")
        for here, there, link in zip(path.switches, path.switches[1:], path.links, strict=False):
            # Latency may be measured rather than declared; the link itself must be the ledger's.
            ours = replace(self._link(link.name), latency=link.latency)
            if {here, there} != {link.a, link.b} or ours != link:
                raise ValueError(f"link {link.name} does not join {here} to {there} in the ledger's fabric")

