"""Admission: a ledger of guaranteed bandwidth per link direction, and the paths that fit it.

**Ledger.** Every link is full duplex: a 1 Gbit/s link carries 1 Gbit/s each way at once. A wire
carries both directions of its connection over the same path, and its guarantee holds each way, so
a reservation of G takes G from the a→b ledger and G from the b→a ledger of every link it crosses.
Keeping one figure per link (2G against C, as for a shared medium) would admit half of what fits;
keeping one per direction is what the hardware does, and it is what the measured per-direction
rates and meters are compared with. With today's symmetric guarantees both ledgers of a link hold
the same figure. The sum of the guarantees on any link direction never exceeds its capacity:
a reservation that does not fit is refused whole, naming the bottleneck.

**Paths.** ``constrained_path`` finds the cheapest path (by link ``cost``, then the lowest latency;
remaining ties break the same way every time for the same fabric and ledger) whose every link has at least
the demanded bandwidth free in both directions and whose summed one-way latency meets the bound.
It is an exact resource-constrained shortest path search: A* over (cost, latency) labels, with
lower bounds to the destination computed once per destination by Dijkstra on the usable fabric;
a label is dropped when even its best completion breaks the latency bound, or when an earlier
label at the same switch was no costlier and no slower. Parallel links are kept (a costlier
parallel link may still have room). Latencies meet a bound with a relative tolerance of 1e-9, so
that three 1 ms links meet 3 ms in binary floating point.

**Protection.** A backup is link-disjoint from its primary and, where the fabric allows, also
switch-disjoint except at the ends; it meets the same bandwidth and latency as the primary (it
carries the connection under the same SLA after a failover) and is reserved like it, so a
failover never oversubscribes a link. When the cheapest primary leaves no disjoint backup (a
"trap"), the cheapest disjoint pair is found by a min-cost flow of two units instead.

**Chains.** ``constrained_chain`` finds the paths of a chain's wires together (``chainLatency:
true``): the set of least total cost whose summed latency meets the chain's bound, each wire within
its own bound and with its own guarantee free on every link it takes (wires that take the same link
need room for the sum of theirs). It is the same A*, over labels (wire, switch) with a free jump from
one wire's end to the next wire's start.

**Preemption.** A demand that does not fit may take the guarantees of connections with a strictly
lower priority that declared themselves ``preemptible``, and only those. Its path is the cheapest
that would fit with all of them gone; the victims are taken link by link along that path, lowest
priority first, then the larger guarantee, then the connection id; victims that turn out not to be
needed are then given back, so no victim can be spared. A backup never preempts.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import weakref
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

import networkx as nx

from ryu_nsm.core.fabric import Fabric, Link
from ryu_nsm.core.pathing import FabricView, NoPath, Path
from ryu_nsm.qos.service_level import ServiceLevel, format_bandwidth, format_duration

LATENCY_TOLERANCE = 1e-9
# Costs enter the min-cost flow as integers (network simplex is exact only on integers).
_COST_SCALE = 1_000_000

Direction = tuple[str, str]
"""One direction of a link: (link name, the switch the traffic leaves from)."""


def meets_latency(latency: float, bound: float | None) -> bool:
    """True when ``latency`` meets ``bound`` (None = no bound), within the relative tolerance."""
    return bound is None or latency <= bound * (1 + LATENCY_TOLERANCE)


def _path_text(path: Path) -> str:
    return " → ".join(path.switches)


# -- demands and the ledger ---------------------------------------------------------------------


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
        return dict(Counter(d for path in self.paths for link in path.links for d in _both(link)))


def _below(by_priority: Counter[int] | None, priority: int) -> int:
    """Bit/s held by priorities below ``priority`` (None: nothing held)."""
    return sum(bits for held, bits in by_priority.items() if held < priority) if by_priority else 0


def _both(link: Link) -> tuple[Direction, Direction]:
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


def _bits(value: object) -> int:
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
        return link.capacity - max(self._reserved.get(d, 0) for d in _both(link))

    def holders(self, link_name: str, src: str) -> tuple[Reservation, ...]:
        """The reservations on one direction of a link, oldest first."""
        self.reserved(link_name, src)  # refuses a link or switch that is not there
        return tuple(self._reservations[c] for c in self._holders.get((link_name, src), ()))

    def fits(self, bandwidth: int, paths: Iterable[Path]) -> Bottleneck | None:
        """The first link direction (in path order) that cannot take ``bandwidth`` on ``paths``, or None."""
        bandwidth = _bits(bandwidth)
        need: Counter[Direction] = Counter()
        order: list[Direction] = []
        for path in paths:
            self._check(path)
            for link in path.links:
                for d in _both(link):
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
                raise ValueError(f"path {_path_text(which)} does not join {demand.src} to {demand.dst}")
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
            ab, ba = (self._reserved.get(d, 0) for d in _both(link))
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
            raise ValueError(f"path {_path_text(path)} has {len(path.links)} links for "
                             f"{len(path.switches)} switches")
        for here, there, link in zip(path.switches, path.switches[1:], path.links, strict=False):
            # Latency may be measured rather than declared; the link itself must be the ledger's.
            ours = replace(self._link(link.name), latency=link.latency)
            if {here, there} != {link.a, link.b} or ours != link:
                raise ValueError(f"link {link.name} does not join {here} to {there} in the ledger's fabric")


# -- the routing graph --------------------------------------------------------------------------


class RoutingGraph:
    """The usable fabric of a FabricView as adjacency lists (parallel links kept, declaration order),
    with lower bounds of cost and latency to each destination, computed once per destination."""

    def __init__(self, view: FabricView):
        self.view = view
        up = [s.name for s in view.fabric.switches if s.name not in view.down_switches]
        # switch → (neighbour, link, link name); the name is kept because Link.name is computed.
        self.adjacency: dict[str, list[tuple[str, Link, str]]] = {name: [] for name in up}
        self.links: dict[str, Link] = {}
        for link in view.fabric.links:
            name = link.name
            if name in view.down_links or link.a == link.b:
                continue
            if link.a in self.adjacency and link.b in self.adjacency:
                self.links[name] = link
                self.adjacency[link.a].append((link.b, link, name))
                self.adjacency[link.b].append((link.a, link, name))
        self._bounds: dict[str, tuple[dict[str, float], dict[str, float]]] = {}

    def bounds(self, dst: str) -> tuple[dict[str, float], dict[str, float]]:
        """(least cost, least latency) from every switch that reaches ``dst`` to ``dst``."""
        if dst not in self._bounds:
            self._bounds[dst] = (self._dijkstra(dst, "cost"), self._dijkstra(dst, "latency"))
        return self._bounds[dst]

    def _dijkstra(self, origin: str, weight: str) -> dict[str, float]:
        dist = {origin: 0.0}
        heap = [(0.0, origin)]
        done: set[str] = set()
        while heap:
            d, node = heapq.heappop(heap)
            if node in done:
                continue
            done.add(node)
            for nb, link, _ in self.adjacency[node]:
                nd = d + getattr(link, weight)
                if nd < dist.get(nb, math.inf):
                    dist[nb] = nd
                    heapq.heappush(heap, (nd, nb))
        return dist


_GRAPHS: weakref.WeakKeyDictionary[FabricView, RoutingGraph] = weakref.WeakKeyDictionary()


def routing_graph(view: FabricView | RoutingGraph) -> RoutingGraph:
    """The RoutingGraph of a view, built once per view (a view is one state of the fabric)."""
    if isinstance(view, RoutingGraph):
        return view
    graph = _GRAPHS.get(view)
    if graph is None:
        graph = _GRAPHS[view] = RoutingGraph(view)
    return graph


# -- constrained paths --------------------------------------------------------------------------


class NoFeasiblePath(NoPath):
    """No path meets the demand. ``kind`` is 'disconnected', 'bandwidth' or 'latency'; a bandwidth
    failure names the ``bottleneck`` on the cheapest path within the latency bound, a latency failure
    the ``best_latency`` there is. For a chain, ``leg`` is the index of the leg that has no path on
    its own (None: the legs do not go together)."""

    def __init__(self, message: str, kind: str, bottleneck: Bottleneck | None = None,
                 best_latency: float | None = None, leg: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.bottleneck = bottleneck
        self.best_latency = best_latency
        self.leg = leg


class NoBackup(NoFeasiblePath):
    """A primary path exists but no disjoint backup meets the demand."""


def _unwind(label: tuple) -> Path:
    """The path of a search label (node, link, parent)."""
    switches, links = [], []
    while label is not None:
        node, link, label = label
        switches.append(node)
        if link is not None:
            links.append(link)
    return Path(tuple(reversed(switches)), tuple(reversed(links)))


def _way_out(graph: RoutingGraph, switch: str, bandwidth: int, room, exclude_links: frozenset[str],
             exclude_switches: frozenset[str]) -> bool:
    """True when some link of ``switch`` that a search may take has ``bandwidth`` free (``room``)."""
    return any(
        name not in exclude_links and nb not in exclude_switches and (room is None or room(name) >= bandwidth)
        for nb, _, name in graph.adjacency[switch]
    )


def _search(
    graph: RoutingGraph, src: str, dst: str, bandwidth: int, max_latency: float | None,
    ledger: Ledger | None, exclude_links: frozenset[str], exclude_switches: frozenset[str],
    preempt_below: int | None = None,
) -> Path | None:
    """The cheapest (then fastest) feasible path, or None: A* over (cost, latency) labels."""
    to_cost, to_latency = graph.bounds(dst)
    if src not in to_cost:
        return None
    limit = math.inf if max_latency is None else max_latency * (1 + LATENCY_TOLERANCE)
    if to_latency[src] > limit:
        return None
    if ledger is None or bandwidth == 0:
        room = None
    elif preempt_below is None:
        room = ledger._free.__getitem__
    else:
        room = functools.partial(ledger.available, preempt_below=preempt_below)
    # A full end switch is the usual refusal: found by its own links, not by searching the whole fabric.
    if src != dst and (room is not None or exclude_links or exclude_switches) and not all(
        _way_out(graph, end, bandwidth, room, exclude_links, exclude_switches) for end in (src, dst)
    ):
        return None
    # Unbounded: plain A* (a switch is settled once). Bounded: a label survives at a switch only if
    # it is faster than every label settled there before (those were no costlier: pop order).
    bounded = max_latency is not None
    settled: dict[str, float] = {}
    count = itertools.count()
    heap = [(to_cost[src], to_latency[src], 0.0, next(count), src, 0.0, 0.0, (src, None, None))]
    while heap:
        _, _, _, _, node, cost, latency, label = heapq.heappop(heap)
        if node in settled and (not bounded or settled[node] <= latency):
            continue
        settled[node] = latency
        if node == dst:
            return _unwind(label)
        for nb, link, name in graph.adjacency[node]:
            if nb not in to_cost or nb in exclude_switches or name in exclude_links:
                continue
            nl = latency + link.latency
            if nb in settled and (not bounded or settled[nb] <= nl):
                continue
            if nl + to_latency[nb] > limit:
                continue
            if room is not None and room(name) < bandwidth:
                continue
            nc = cost + link.cost
            # Ties on (cost, latency) go deeper first, then in declaration order: fewer labels, same answer.
            heapq.heappush(heap, (nc + to_cost[nb], nl + to_latency[nb], -nc, next(count), nb, nc, nl,
                                  (nb, link, label)))
    return None


def constrained_path(
    view: FabricView | RoutingGraph,
    src: str,
    dst: str,
    *,
    bandwidth: int = 0,
    max_latency: float | None = None,
    ledger: Ledger | None = None,
    exclude_links: Iterable[str] = (),
    exclude_switches: Iterable[str] = (),
    preempt_below: int | None = None,
) -> Path:
    """The cheapest path from ``src`` to ``dst`` with ``bandwidth`` free in both directions of every
    link (per ``ledger``; no check without one) and summed latency within ``max_latency``.

    With ``preempt_below``, preemptible guarantees of a lower priority count as free (the path a
    preempting demand would take). Raises NoFeasiblePath saying why: no path at all, the bottleneck
    link of the widest path, or the best latency achievable against the bound.
    """
    graph = routing_graph(view)
    bandwidth = _bits(bandwidth)
    links, switches = frozenset(exclude_links), frozenset(exclude_switches)
    for end in (src, dst):
        if end not in graph.adjacency:
            where = "down" if end in graph.view.down_switches else "not in the fabric"
            raise NoFeasiblePath(f"switch {end} is {where}", "disconnected")
    if src == dst:
        return Path((src,))
    path = _search(graph, src, dst, bandwidth, max_latency, ledger, links, switches, preempt_below)
    if path is None:
        raise _why(graph, src, dst, bandwidth, max_latency, ledger, links, switches)
    return path


def _reach(
    graph: RoutingGraph, src: str, usable, weight: str | None = None
) -> tuple[dict[str, float], dict[str, tuple[str, Link]]]:
    """Dijkstra (hops with weight None) over the links ``usable(name, nb)`` allows: distances, parents."""
    dist, parent = {src: 0.0}, {}
    heap = [(0.0, 0, src)]
    count = itertools.count(1)
    done: set[str] = set()
    while heap:
        d, _, node = heapq.heappop(heap)
        if node in done:
            continue
        done.add(node)
        for nb, link, name in graph.adjacency[node]:
            if not usable(name, nb):
                continue
            nd = d + (getattr(link, weight) if weight else 1.0)
            if nd < dist.get(nb, math.inf):
                dist[nb], parent[nb] = nd, (node, link)
                heapq.heappush(heap, (nd, next(count), nb))
    return dist, parent


def _walk_back(parent: Mapping[str, tuple[str, Link]], src: str, dst: str) -> Path:
    switches, links, at = [dst], [], dst
    while at != src:
        at, link = parent[at]
        switches.append(at)
        links.append(link)
    return Path(tuple(reversed(switches)), tuple(reversed(links)))


def _narrowest(ledger: Ledger, path: Path, bandwidth: int) -> Bottleneck:
    """The link direction of ``path`` with the least free bandwidth (first in path order on ties)."""
    best = None
    for here, link in zip(path.switches, path.links, strict=False):
        for src in (here, link.b if here == link.a else link.a):
            free = ledger.residual(link.name, src)
            if best is None or free < best[0]:
                best = (free, link, src)
    free, link, src = best
    dst = link.b if src == link.a else link.a
    return Bottleneck(link.name, src, dst, link.capacity, ledger.reserved(link.name, src),
                      len(ledger.holders(link.name, src)), bandwidth)


def _why(graph, src, dst, bandwidth, max_latency, ledger, links, switches) -> NoFeasiblePath:
    """Why no path meets the demand, as the error to raise (only run after the search failed)."""
    avoiding = " avoiding the excluded links and switches" if links or switches else ""
    if avoiding:
        fastest = _reach(graph, src, lambda name, nb: name not in links and nb not in switches, "latency")[0]
        best = fastest.get(dst)
    else:
        best = graph.bounds(dst)[1].get(src)
    if best is None:
        return NoFeasiblePath(f"no path from {src} to {dst} with the links that are up{avoiding}",
                              "disconnected")
    # Room aside, is there a path within the bound? Then room is what is missing, on that path.
    within = _search(graph, src, dst, 0, max_latency, None, links, switches)
    if within is None:
        return NoFeasiblePath(f"no path from {src} to {dst}{avoiding} is within "
                              f"{format_duration(max_latency)}: the fastest takes {format_duration(best)}",
                              "latency", best_latency=best)
    bottleneck = _narrowest(ledger, within, bandwidth)
    bound = f" within {format_duration(max_latency)}" if max_latency is not None else ""
    return NoFeasiblePath(f"no path from {src} to {dst}{avoiding}{bound} has {format_bandwidth(bandwidth)} "
                          f"free each way on every link: the cheapest, {_path_text(within)}, is limited by "
                          f"{bottleneck}", "bandwidth", bottleneck)


# -- protection ---------------------------------------------------------------------------------


def disjoint_backup(
    view: FabricView | RoutingGraph,
    primary: Path,
    *,
    bandwidth: int = 0,
    max_latency: float | None = None,
    ledger: Ledger | None = None,
) -> Path | None:
    """The cheapest backup for ``primary`` meeting the same demand: switch-disjoint except at the
    ends where the fabric allows, else link-disjoint. None when ``primary`` crosses no link (both
    ends on one switch: there is nothing to protect). Raises NoBackup when there is none."""
    if not primary.links:
        return None
    src, dst = primary.switches[0], primary.switches[-1]
    used = frozenset(link.name for link in primary.links)
    demand = {"bandwidth": bandwidth, "max_latency": max_latency, "ledger": ledger, "exclude_links": used}
    graph = routing_graph(view)
    if src in graph.adjacency and dst in graph.adjacency:
        # The search alone: why a switch-disjoint backup is missing is not reported, so not worked out.
        found = _search(graph, src, dst, _bits(bandwidth), max_latency, ledger, used,
                        frozenset(primary.switches[1:-1]))
        if found is not None:
            return found
    try:
        return constrained_path(view, src, dst, **demand)
    except NoFeasiblePath as exc:
        raise NoBackup(f"no backup disjoint from {_path_text(primary)}: {exc}", exc.kind, exc.bottleneck,
                       exc.best_latency) from None


def protected_pair(
    view: FabricView | RoutingGraph,
    src: str,
    dst: str,
    *,
    bandwidth: int = 0,
    max_latency: float | None = None,
    ledger: Ledger | None = None,
) -> tuple[Path, Path | None]:
    """A primary and a disjoint backup that both meet the demand (backup None on a single switch).

    The primary is the cheapest path with its cheapest backup; when that primary leaves no backup,
    the cheapest disjoint pair (min-cost flow) is taken. Raises NoFeasiblePath when there is no
    primary at all, NoBackup when there is no disjoint pair.
    """
    primary = constrained_path(view, src, dst, bandwidth=bandwidth, max_latency=max_latency, ledger=ledger)
    try:
        return primary, disjoint_backup(view, primary, bandwidth=bandwidth, max_latency=max_latency,
                                        ledger=ledger)
    except NoBackup as exc:
        graph = routing_graph(view)
        for switch_disjoint in (True, False):
            pair = _disjoint_pair(graph, src, dst, bandwidth, ledger, switch_disjoint)
            if pair is not None and all(meets_latency(p.latency, max_latency) for p in pair):
                return pair
        raise exc from None


def _disjoint_pair(
    graph: RoutingGraph, src: str, dst: str, bandwidth: int, ledger: Ledger | None, switch_disjoint: bool
) -> tuple[Path, Path] | None:
    """The two disjoint paths of least total cost (cheaper first), or None: a min-cost flow of 2."""
    room = None if ledger is None or bandwidth == 0 else ledger._free.__getitem__
    # Two disjoint paths leave and enter by two links with room: a cheap test before the costly flow.
    for end in (src, dst):
        if sum(room is None or room(name) >= bandwidth for _, _, name in graph.adjacency[end]) < 2:
            return None
    flow = nx.DiGraph()

    def inside(switch: str, end: str) -> tuple:
        # A switch that may be crossed once is split into an entry and an exit joined by one unit.
        if switch_disjoint and switch not in (src, dst):
            return (end, switch)
        return ("node", switch)

    if switch_disjoint:
        for switch in graph.adjacency:
            if switch not in (src, dst):
                flow.add_edge(("in", switch), ("out", switch), capacity=1, weight=0)
    for node, neighbours in graph.adjacency.items():
        for nb, link, name in neighbours:
            if node > nb or (bandwidth and ledger is not None and ledger.available(name) < bandwidth):
                continue
            # An undirected link that carries one unit in either direction: u,v → enter → leave → u,v.
            enter, leave = ("enter", name), ("leave", name)
            flow.add_edge(enter, leave, capacity=1, weight=round(link.cost * _COST_SCALE), link=link)
            for end in (node, nb):
                flow.add_edge(inside(end, "out"), enter, capacity=1, weight=0)
                flow.add_edge(leave, inside(end, "in"), capacity=1, weight=0)
    source, sink = ("node", src), ("node", dst)
    if source not in flow or sink not in flow:
        return None
    flow.nodes[source]["demand"], flow.nodes[sink]["demand"] = -2, 2
    try:
        result = nx.min_cost_flow(flow)
    except nx.NetworkXUnfeasible:
        return None
    paths = [_unit_path(flow, result, source, sink, src) for _ in range(2)]
    return tuple(sorted(paths, key=lambda p: (p.cost, p.latency, p.switches)))


def _unit_path(flow: nx.DiGraph, result: dict, source: tuple, sink: tuple, src: str) -> Path:
    """Take one unit of flow from ``source`` to ``sink`` out of ``result`` as a simple path."""
    walk = [source]
    while walk[-1] != sink:
        at = walk[-1]
        nxt = min(target for target, units in result[at].items() if units > 0)
        result[at][nxt] -= 1
        if nxt in walk:
            # A loop of zero-cost links: cut it out, the path stays disjoint from the other one.
            del walk[walk.index(nxt) + 1:]
        else:
            walk.append(nxt)
    switches, links = [src], []
    for here, there in zip(walk, walk[1:], strict=False):
        link = flow.edges[here, there].get("link")
        if link is not None:
            links.append(link)
            switches.append(link.b if switches[-1] == link.a else link.a)
    return Path(tuple(switches), tuple(links))


# -- admission with preemption ------------------------------------------------------------------


@dataclass(frozen=True)
class Eviction:
    """A reservation taken away so that a higher-priority demand fits; ``link`` is where it was needed."""

    reservation: Reservation
    link: str

    @property
    def connection_id(self) -> str:
        return self.reservation.connection_id

    def __str__(self) -> str:
        return f"preempted {self.connection_id} (priority {self.reservation.priority}) on link {self.link}"


@dataclass(frozen=True)
class Decision:
    """What became of a demand: admitted on ``path`` (and ``backup``), or refused with ``reason``.

    ``reason`` also explains an admitted demand's evictions or missing backup.
    """

    connection_id: str
    admitted: bool
    path: Path | None = None
    backup: Path | None = None
    evicted: tuple[Eviction, ...] = ()
    reason: str = ""

    def describe(self) -> dict:
        """JSON-able form for plans and status: paths as switch names, evictions as connection ids."""
        out: dict = {"id": self.connection_id, "admitted": self.admitted}
        if self.path is not None:
            out["path"] = list(self.path.switches)
        if self.backup is not None:
            out["backup"] = list(self.backup.switches)
        if self.evicted:
            out["evicted"] = [e.connection_id for e in self.evicted]
        if self.reason:
            out["reason"] = self.reason
        return out


def demand_for(
    connection_id: str, src: str, dst: str, level: ServiceLevel | None, current: Path | None = None,
    current_backup: Path | None = None,
) -> Demand:
    """The demand of a connection from ``src`` to ``dst`` under ``level`` (None: best effort, no
    guarantee or bound). A chain-wide bound (``chain_latency``) is left to ``constrained_chain``."""
    if level is None:
        return Demand(connection_id, src, dst, current=current)
    return Demand(
        connection_id, src, dst, bandwidth=level.guaranteed_bandwidth or 0,
        max_latency=None if level.chain_latency else level.max_latency, priority=level.priority,
        preemptible=level.preemptible, protected=level.protected, current=current,
        current_backup=current_backup,
    )


def _keeps_current(graph: RoutingGraph, ledger: Ledger, demand: Demand) -> bool:
    """True when the demand's current path is still up, ends right and fits (sticky paths)."""
    path = demand.current
    if path is None or (path.switches[0], path.switches[-1]) != (demand.src, demand.dst):
        return False
    if any(graph.links.get(link.name) != link for link in path.links):
        return False  # a link that is down, gone or changed
    if not graph.view.intact(path) or not meets_latency(path.latency, demand.max_latency):
        return False
    try:
        return ledger.fits(demand.bandwidth, (path,)) is None
    except ValueError:
        return False  # switches and links that do not chain up


def _route(graph: RoutingGraph, ledger: Ledger, demand: Demand) -> tuple[Path, Path | None, str]:
    """Primary, backup and a note on protection, in the ledger as it is; raises NoFeasiblePath."""
    args = {"bandwidth": demand.bandwidth, "max_latency": demand.max_latency, "ledger": ledger}
    if _keeps_current(graph, ledger, demand):
        primary = demand.current
    elif demand.protected:
        try:
            primary, backup = protected_pair(graph, demand.src, demand.dst, **args)
            return primary, backup, ""
        except NoBackup as exc:
            primary = constrained_path(graph, demand.src, demand.dst, **args)
            return primary, None, f"unprotected: {exc}"
    else:
        primary = constrained_path(graph, demand.src, demand.dst, **args)
    return primary, *_backup(graph, ledger, demand, primary)


def _backup(graph: RoutingGraph, ledger: Ledger, demand: Demand, primary: Path) -> tuple[Path | None, str]:
    """A best-effort backup for ``primary`` in the ledger as it is, and a note when there is none."""
    if not demand.protected:
        return None, ""
    kept = demand.current_backup
    if kept is not None and _keeps(graph, ledger, demand, kept, primary):
        return kept, ""
    try:
        return disjoint_backup(graph, primary, bandwidth=demand.bandwidth, max_latency=demand.max_latency,
                               ledger=ledger), ""
    except NoBackup as exc:
        return None, f"unprotected: {exc}"


def _keeps(graph: RoutingGraph, ledger: Ledger, demand: Demand, backup: Path, primary: Path) -> bool:
    """True when a backup held before still qualifies: up, link-disjoint from ``primary``, fits with it."""
    if {link.name for link in backup.links} & {link.name for link in primary.links}:
        return False
    if not _keeps_current(graph, ledger, replace(demand, current=backup)):
        return False
    try:
        return ledger.fits(demand.bandwidth, (primary, backup)) is None
    except ValueError:
        return False


def admit(
    view: FabricView | RoutingGraph, ledger: Ledger, demand: Demand, *, preempt: bool = True
) -> Decision:
    """Admit one demand into ``ledger`` (reserving its path and backup), preempting if allowed.

    Preemption takes only guarantees of strictly lower priority whose holders are preemptible (see
    the module docstring for which); with ``preempt`` False it takes none. A refused demand leaves
    the ledger as it was.
    """
    graph = routing_graph(view)
    if demand.connection_id in ledger.reservations:
        raise ValueError(f"{demand.connection_id} already holds a reservation: release it first")
    try:
        primary, backup, note = _route(graph, ledger, demand)
    except NoFeasiblePath as exc:
        # Only room can be made: no preemption helps a path that is too slow or not there.
        if not preempt or exc.kind != "bandwidth":
            return Decision(demand.connection_id, False, reason=str(exc))
        return _preempting(graph, ledger, demand, exc)
    ledger.reserve(demand, primary, backup)
    return Decision(demand.connection_id, True, primary, backup, reason=note)


def _preempting(graph: RoutingGraph, ledger: Ledger, demand: Demand, refusal: NoFeasiblePath) -> Decision:
    if not ledger.may_preempt(demand.priority):
        return Decision(demand.connection_id, False, reason=str(refusal))
    # The search alone: when it fails the reason is the refusal's, not a second diagnosis.
    primary = _search(graph, demand.src, demand.dst, demand.bandwidth, demand.max_latency, ledger,
                      frozenset(), frozenset(), demand.priority)
    if primary is None:
        return Decision(demand.connection_id, False, reason=(
            f"{refusal} (preempting every preemptible connection of lower priority would not make room)"))
    victims = _victims(ledger, primary, demand)
    for victim in victims:
        ledger.release(victim.connection_id)
    backup, note = _backup(graph, ledger, demand, primary)
    ledger.reserve(demand, primary, backup)
    reason = "; ".join(filter(None, (", ".join(map(str, victims)), note)))
    return Decision(demand.connection_id, True, primary, backup, tuple(victims), reason)


def _victims(ledger: Ledger, path: Path, demand: Demand) -> list[Eviction]:
    """Preemptible reservations of lower priority whose release makes ``path`` fit, none spared."""
    freed: Counter[Direction] = Counter()
    chosen: list[Eviction] = []

    def over(d: Direction, freed: Counter[Direction]) -> bool:
        return ledger.reserved(*d) - freed[d] + demand.bandwidth > ledger.capacity(d[0])

    directions = [d for link in path.links for d in _both(link)]
    for d in directions:
        while over(d, freed):
            taken = {e.connection_id for e in chosen}
            options = [r for r in ledger.holders(*d) if r.demand.preemptible and r.priority < demand.priority
                       and r.bandwidth > 0 and r.connection_id not in taken]
            # Lowest priority first, then the larger guarantee (fewer victims), then the id.
            victim = min(options, key=lambda r: (r.priority, -r.bandwidth, r.connection_id))
            chosen.append(Eviction(victim, d[0]))
            for held, times in victim.held.items():
                freed[held] += times * victim.bandwidth
    for eviction in reversed(list(chosen)):
        spared = freed.copy()
        for held, times in eviction.reservation.held.items():
            spared[held] -= times * eviction.reservation.bandwidth
        if not any(over(d, spared) for d in directions):
            chosen.remove(eviction)
            freed = spared
    return chosen


def admit_all(
    view: FabricView | RoutingGraph, ledger: Ledger, demands: Iterable[Demand]
) -> dict[str, Decision]:
    """Admit demands in order (put existing connections first so they keep their paths).

    A connection preempted on the way tries once more for another path, without preempting in
    turn (so admission always ends); its decision says by whom it was preempted. Returns a decision
    for every demand and every preempted connection, by connection id.
    """
    graph = routing_graph(view)
    decisions: dict[str, Decision] = {}
    for demand in demands:
        decision = admit(graph, ledger, demand)
        decisions[demand.connection_id] = decision
        for eviction in decision.evicted:
            why = (f"preempted by {demand.connection_id} (priority {demand.priority}) on link "
                   f"{eviction.link}")
            retry = admit(graph, ledger, replace(eviction.reservation.demand, current=None), preempt=False)
            if retry.admitted:
                decisions[eviction.connection_id] = replace(
                    retry, reason="; ".join(filter(None, (f"moved: {why}", retry.reason))))
            else:
                decisions[eviction.connection_id] = replace(
                    retry, reason=f"{why}; no other path: {retry.reason}")
    return decisions


# -- chains under one latency budget ------------------------------------------------------------


@dataclass(frozen=True)
class Leg:
    """One wire of a chain for ``constrained_chain``: from switch ``src`` to ``dst``, with its own
    guarantee (None: the chain's ``bandwidth``), its own latency bound besides the chain's, and the
    links it must not take."""

    src: str
    dst: str
    bandwidth: int | None = None
    max_latency: float | None = None
    exclude_links: frozenset[str] = frozenset()


def _as_leg(leg: Leg | tuple[str, str], bandwidth: int) -> Leg:
    if not isinstance(leg, Leg):
        src, dst = leg
        return Leg(src, dst, bandwidth)
    own = bandwidth if leg.bandwidth is None else _bits(leg.bandwidth)
    return replace(leg, bandwidth=own, exclude_links=frozenset(leg.exclude_links))


def constrained_chain(
    view: FabricView | RoutingGraph,
    legs: Sequence[Leg | tuple[str, str]],
    *,
    bandwidth: int = 0,
    max_latency: float | None = None,
    ledger: Ledger | None = None,
) -> tuple[Path, ...]:
    """Paths for the wires of a chain, ``legs`` being each wire's (src, dst) switches in order (or a
    ``Leg`` with its own guarantee, bound and excluded links), of least total cost with each leg's
    bandwidth on every link it takes, each leg within its own bound, and total latency within
    ``max_latency`` (``chainLatency: true``). Legs that cross the same link need room for the sum
    of their guarantees (a wire holds both directions of every link it takes).

    Never returns paths that do not fit; exact (cheapest) unless two legs compete for the same
    nearly full link. Raises NoFeasiblePath naming the leg or the best total latency.
    """
    graph = routing_graph(view)
    bandwidth = _bits(bandwidth)
    legs = [_as_leg(leg, bandwidth) for leg in legs]
    if not legs:
        return ()
    for leg in legs:
        for end in (leg.src, leg.dst):
            if end not in graph.adjacency:
                where = "down" if end in graph.view.down_switches else "not in the fabric"
                raise NoFeasiblePath(f"switch {end} is {where}", "disconnected")
    found = _chain_search(graph, legs, max_latency, ledger)
    if found is not None:
        return found
    best = 0.0
    for index, leg in enumerate(legs):
        try:
            constrained_path(graph, leg.src, leg.dst, bandwidth=leg.bandwidth, max_latency=leg.max_latency,
                             ledger=ledger, exclude_links=leg.exclude_links)
        except NoFeasiblePath as exc:
            raise NoFeasiblePath(f"wire {index + 1} of the chain ({leg.src} to {leg.dst}): {exc}", exc.kind,
                                 exc.bottleneck, exc.best_latency, index) from None

        def usable(name: str, nb: str, leg: Leg = leg) -> bool:
            roomy = ledger is None or ledger.available(name) >= leg.bandwidth
            return roomy and name not in leg.exclude_links

        best += _reach(graph, leg.src, usable, "latency")[0][leg.dst]
    if max_latency is not None and not meets_latency(best, max_latency):
        raise NoFeasiblePath(f"no set of paths for the chain is within {format_duration(max_latency)}: the "
                             f"fastest takes {format_duration(best)} in all", "latency", best_latency=best)
    raise NoFeasiblePath("no set of paths for the chain fits: its wires compete for the same links",
                         "bandwidth")


def _chain_search(
    graph: RoutingGraph, legs: Sequence[Leg], max_latency: float | None, ledger: Ledger | None,
) -> tuple[Path, ...] | None:
    """A* over labels (leg, switch) with zero-cost jumps from each leg's end to the next one's start.

    A label is dropped when one settled before at the same (leg, switch) was no costlier (pop order),
    no slower in all and, when the leg has its own bound, no slower within the leg.
    """
    bounds = [graph.bounds(leg.dst) for leg in legs]
    own_limits = [math.inf if leg.max_latency is None else leg.max_latency * (1 + LATENCY_TOLERANCE)
                  for leg in legs]
    rest_cost, rest_latency = [0.0] * (len(legs) + 1), [0.0] * (len(legs) + 1)
    for i in range(len(legs) - 1, -1, -1):
        src = legs[i].src
        if src not in bounds[i][0] or bounds[i][1][src] > own_limits[i]:
            return None
        rest_cost[i] = rest_cost[i + 1] + bounds[i][0][src]
        rest_latency[i] = rest_latency[i + 1] + bounds[i][1][src]
    limit = math.inf if max_latency is None else max_latency * (1 + LATENCY_TOLERANCE)
    if rest_latency[0] > limit:
        return None
    room = ledger is not None and any(leg.bandwidth for leg in legs)

    def key(leg: int, node: str, cost: float, latency: float) -> tuple[float, float]:
        return (cost + bounds[leg][0][node] + rest_cost[leg + 1],
                latency + bounds[leg][1][node] + rest_latency[leg + 1])

    settled: dict[tuple[int, str], list[tuple[float, float]]] = {}

    def dominated(leg: int, node: str, latency: float, within: float) -> bool:
        return any(lat <= latency and own <= within for lat, own in settled.get((leg, node), ()))

    # A label: (leg, switch, cost, latency, latency within the leg (0 unless it has its own bound),
    # link, parent, bit/s this chain holds so far per link).
    count = itertools.count()
    start = (0, legs[0].src, 0.0, 0.0, 0.0, None, None, Counter())
    heap = [(*key(0, legs[0].src, 0.0, 0.0), 0.0, next(count), start)]
    while heap:
        *_, label = heapq.heappop(heap)
        leg, node, cost, latency, within, _, _, held = label
        if dominated(leg, node, latency, within):
            continue
        settled.setdefault((leg, node), []).append((latency, within))
        if node == legs[leg].dst:
            if leg == len(legs) - 1:
                return _chain_paths(label, len(legs))
            nxt = legs[leg + 1].src
            heapq.heappush(heap, (*key(leg + 1, nxt, cost, latency), -cost, next(count),
                                  (leg + 1, nxt, cost, latency, 0.0, None, label, held)))
            continue
        to_cost, to_latency = bounds[leg]
        here = legs[leg]
        need = here.bandwidth if room else 0
        for nb, link, name in graph.adjacency[node]:
            if nb not in to_cost or name in here.exclude_links:
                continue
            nl = latency + link.latency
            nw = within + link.latency if here.max_latency is not None else 0.0
            if dominated(leg, nb, nl, nw):
                continue
            if nl + to_latency[nb] + rest_latency[leg + 1] > limit or nw + to_latency[nb] > own_limits[leg]:
                continue
            if need and ledger.available(name) < held[name] + need:
                continue
            nc = cost + link.cost
            pushed = held + Counter({name: need}) if need else held
            heapq.heappush(heap, (*key(leg, nb, nc, nl), -nc, next(count),
                                  (leg, nb, nc, nl, nw, link, label, pushed)))
    return None


def _chain_paths(label: tuple, legs: int) -> tuple[Path, ...]:
    switches: list[list[str]] = [[] for _ in range(legs)]
    links: list[list[Link]] = [[] for _ in range(legs)]
    at = label
    while at is not None:
        leg, node, _, _, _, link, parent, _ = at
        switches[leg].append(node)
        if link is not None:
            links[leg].append(link)
        at = parent
    return tuple(Path(tuple(reversed(s)), tuple(reversed(ls))) for s, ls in zip(switches, links, strict=True))
