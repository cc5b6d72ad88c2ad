"""Chain routing: the paths of a chain's wires found together under one latency budget.

``constrained_chain`` serves ``chainLatency: true``: the set of paths of least total cost whose
summed latency meets the chain's bound, each wire within its own bound and guarantee. It is
routing's A* over labels (wire, switch). See docs/admission.md.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ryu_nsm.core.fabric import Link
from ryu_nsm.core.pathing import FabricView, Path, RoutingGraph
from ryu_nsm.qos.ledger import Ledger, whole_bits
from ryu_nsm.qos.routing import (
    LATENCY_TOLERANCE,
    NoFeasiblePath,
    constrained_path,
    fastest_from,
    meets_latency,
    routing_graph,
)
from ryu_nsm.qos.service_level import format_duration


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
    own = bandwidth if leg.bandwidth is None else whole_bits(leg.bandwidth)
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
    bandwidth = whole_bits(bandwidth)
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

        best += fastest_from(graph, leg.src, usable)[leg.dst]
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
