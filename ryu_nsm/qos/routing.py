"""Constrained routing: the cheapest path that has room and meets a latency bound, and disjoint backups.

An exact resource-constrained shortest path search (A* over cost and latency labels) on the view's
RoutingGraph, the usable fabric as adjacency lists; a min-cost flow for disjoint pairs when the
cheapest primary leaves no backup. A failed search says why. See docs/admission.md.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
from collections.abc import Iterable

import networkx as nx

from ryu_nsm.core.pathing import FabricView, NoPath, Path, RoutingGraph
from ryu_nsm.qos.ledger import Bottleneck, Ledger, path_text, whole_bits
from ryu_nsm.qos.service_level import format_bandwidth, format_duration

LATENCY_TOLERANCE = 1e-9
# Costs enter the min-cost flow as integers (network simplex is exact only on integers).
_COST_SCALE = 1_000_000


def meets_latency(latency: float, bound: float | None) -> bool:
    """True when ``latency`` meets ``bound`` (None = no bound), within the relative tolerance."""
    return bound is None or latency <= bound * (1 + LATENCY_TOLERANCE)


def routing_graph(view: FabricView | RoutingGraph) -> RoutingGraph:
    """The RoutingGraph of a view (built once per view: a view is one state of the fabric)."""
    return view if isinstance(view, RoutingGraph) else view.routing


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


def search_path(
    graph: RoutingGraph, src: str, dst: str, bandwidth: int, max_latency: float | None,
    ledger: Ledger | None, exclude_links: frozenset[str], exclude_switches: frozenset[str],
    preempt_below: int | None = None,
) -> Path | None:
    """The cheapest (then fastest) feasible path, or None: A* over (cost, latency) labels. The
    search alone, without ``constrained_path``'s checks and diagnosis."""
    to_cost, to_latency = graph.bounds(dst)
    if src not in to_cost:
        return None
    limit = math.inf if max_latency is None else max_latency * (1 + LATENCY_TOLERANCE)
    if to_latency[src] > limit:
        return None
    if ledger is None or bandwidth == 0:
        room = None
    elif preempt_below is None:
        room = ledger.room
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
    bandwidth = whole_bits(bandwidth)
    links, switches = frozenset(exclude_links), frozenset(exclude_switches)
    for end in (src, dst):
        if end not in graph.adjacency:
            where = "down" if end in graph.view.down_switches else "not in the fabric"
            raise NoFeasiblePath(f"switch {end} is {where}", "disconnected")
    if src == dst:
        return Path((src,))
    path = search_path(graph, src, dst, bandwidth, max_latency, ledger, links, switches, preempt_below)
    if path is None:
        raise _why(graph, src, dst, bandwidth, max_latency, ledger, links, switches)
    return path


def fastest_from(graph: RoutingGraph, src: str, usable) -> dict[str, float]:
    """Least latency from ``src`` to every switch it reaches over the links ``usable(name, nb)`` allows."""
    dist = {src: 0.0}
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
            nd = d + link.latency
            if nd < dist.get(nb, math.inf):
                dist[nb] = nd
                heapq.heappush(heap, (nd, next(count), nb))
    return dist


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
        fastest = fastest_from(graph, src, lambda name, nb: name not in links and nb not in switches)
        best = fastest.get(dst)
    else:
        best = graph.bounds(dst)[1].get(src)
    if best is None:
        return NoFeasiblePath(f"no path from {src} to {dst} with the links that are up{avoiding}",
                              "disconnected")
    # Room aside, is there a path within the bound? Then room is what is missing, on that path.
    within = search_path(graph, src, dst, 0, max_latency, None, links, switches)
    if within is None:
        return NoFeasiblePath(f"no path from {src} to {dst}{avoiding} is within "
                              f"{format_duration(max_latency)}: the fastest takes {format_duration(best)}",
                              "latency", best_latency=best)
    bottleneck = _narrowest(ledger, within, bandwidth)
    bound = f" within {format_duration(max_latency)}" if max_latency is not None else ""
    return NoFeasiblePath(f"no path from {src} to {dst}{avoiding}{bound} has {format_bandwidth(bandwidth)} "
                          f"free each way on every link: the cheapest, {path_text(within)}, is limited by "
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
        found = search_path(graph, src, dst, whole_bits(bandwidth), max_latency, ledger, used,
                        frozenset(primary.switches[1:-1]))
        if found is not None:
            return found
    try:
        return constrained_path(view, src, dst, **demand)
    except NoFeasiblePath as exc:
        raise NoBackup(f"no backup disjoint from {path_text(primary)}: {exc}", exc.kind, exc.bottleneck,
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
    room = None if ledger is None or bandwidth == 0 else ledger.room
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

