"""Paths for wires across the fabric, and the per-link tags that carry them.

Paths are cheapest by link ``cost`` (bidirectional Dijkstra, as networkx's, over the switches that
are up, with links that are down removed; breadth first, to the same paths, when all costs are
equal); ties break deterministically by the fabric's declaration order, so the same fabric always
gives the same paths. A path that is still intact is kept
(sticky), so a link coming back does not move connections again. A view also holds the routing
graph that qos's constrained path searches run on.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import networkx as nx

from ryu_nsm.core.fabric import Fabric, Link


@dataclass(frozen=True)
class Path:
    """Switches in order from the client's switch to the endpoint's, and the links between them."""

    switches: tuple[str, ...]
    links: tuple[Link, ...] = ()

    @property
    def cost(self) -> float:
        return sum(link.cost for link in self.links)

    @property
    def latency(self) -> float:
        return sum(link.latency for link in self.links)

    def uses(self, link_names: Iterable[str]) -> bool:
        names = set(link_names)
        return any(link.name in names for link in self.links)


class NoPath(Exception):
    """No path between two switches in the current state of the fabric."""


class FabricView:
    """The usable fabric: links and switches that are down are left out. Build once per state."""

    def __init__(self, fabric: Fabric, down_links: Iterable[str] = (), down_switches: Iterable[str] = ()):
        self.fabric = fabric
        self.down_links = frozenset(down_links)
        self.down_switches = frozenset(down_switches)
        # Parallel links collapse to the cheapest (then first declared): a simple graph, as networkx
        # would hold it, so that searches break ties as networkx's did (``_bidirectional``).
        up = [s.name for s in fabric.switches if s.name not in self.down_switches]
        best: dict[tuple[str, str], Link] = {}
        nodes = set(up)
        for link in fabric.links:
            a, b = link.a, link.b
            if a == b or a not in nodes or b not in nodes or link.name in self.down_links:
                continue
            pair = (a, b) if a < b else (b, a)
            held = best.get(pair)
            if held is None or link.cost < held.cost:
                best[pair] = link
        # switch → (neighbours, costs, links) in the order networkx's adjacency would have: three
        # lists a switch, not a tuple a link end (fewer objects for the garbage collector to walk).
        self.adjacency: dict[str, tuple[list[str], list[float], list[Link]]] = {
            name: ([], [], []) for name in up}
        self._edges = tuple(best.values())
        self._link_between = best
        # Equal whole-number costs (the default 1): the cheapest path is a fewest-hop one, searched
        # breadth first (``_breadth_first``); whole numbers keep networkx's float sums exact.
        kinds = {link.cost for link in self._edges}
        cost = next(iter(kinds), 1.0)
        self._hops = len(kinds) <= 1 and 0 < cost < 2**32 and float(cost).is_integer()
        for link in self._edges:
            for end, other in ((link.a, link.b), (link.b, link.a)):
                nbrs, costs, links = self.adjacency[end]
                nbrs.append(other)
                costs.append(link.cost)
                links.append(link)
        self._shortest: dict[tuple[str, str], Path | NoPath] = {}

    @functools.cached_property
    def graph(self) -> nx.Graph:
        """The usable fabric as a networkx graph (edges carry ``cost`` and ``link``), built on first use."""
        graph = nx.Graph()
        graph.add_nodes_from(self.adjacency)
        graph.add_edges_from((link.a, link.b, {"cost": link.cost, "link": link}) for link in self._edges)
        return graph

    # The routing graph of qos's constrained searches lives here, not in qos, so that the view can
    # own it without core importing qos (qos imports pathing); one per view, gone with the view.
    @functools.cached_property
    def routing(self) -> RoutingGraph:
        """This view as adjacency lists for constrained path searches, built on first use."""
        return RoutingGraph(self)

    def forget_paths(self) -> None:
        """Drop the paths and per-destination bounds found so far (benchmarks time the searches, not
        the lookups)."""
        self._shortest.clear()
        if "routing" in self.__dict__:
            self.routing._bounds.clear()

    def intact(self, path: Path) -> bool:
        """True when every switch and link of ``path`` is still up."""
        return all(s not in self.down_switches for s in path.switches) and not path.uses(self.down_links)

    def shortest(self, src: str, dst: str) -> Path:
        """The cheapest path from switch ``src`` to switch ``dst`` (remembered: the view does not change)."""
        found = self._shortest.get((src, dst))
        if found is None:
            try:
                found = self._search(src, dst)
            except NoPath as exc:
                found = exc
            self._shortest[(src, dst)] = found
        if isinstance(found, NoPath):
            raise NoPath(str(found))
        return found

    def _search(self, src: str, dst: str) -> Path:
        if src == dst:
            if src in self.down_switches:
                raise NoPath(f"switch {src} is down")
            return Path((src,))
        for s in (src, dst):
            if s not in self.adjacency:
                raise NoPath(f"switch {s} is {'down' if s in self.down_switches else 'not in the fabric'}")
        if not self._hops:
            found = _bidirectional(self.adjacency, src, dst)
        else:
            switches = _breadth_first(self.adjacency, src, dst)
            found = None if switches is None else Path(switches, tuple(
                self._link_between[(a, b) if a < b else (b, a)] for a, b in itertools.pairwise(switches)))
        if found is None:
            raise NoPath(f"no path from {src} to {dst} with the links that are up")
        return found


def _bidirectional(adjacency: Mapping[str, tuple[list[str], list[float], list[Link]]], src: str,
                   dst: str) -> Path | None:
    """The cheapest path, by networkx's ``bidirectional_dijkstra`` step for step (the same ties break
    the same way) on plain adjacency lists, without its per-edge calls; None when there is none.
    Predecessors are (switch, link): the link a step took."""
    dists: tuple[dict[str, float], dict[str, float]] = ({}, {})
    preds: tuple[dict, dict] = ({src: None}, {dst: None})
    seen: tuple[dict[str, float], dict[str, float]] = ({src: 0}, {dst: 0})
    fringe: tuple[list, list] = ([(0, 0, src)], [(0, 1, dst)])
    count = 2
    best, meet = None, None
    direction = 1
    push, pop = heapq.heappush, heapq.heappop
    while fringe[0] and fringe[1]:
        # Nothing ahead is cheaper than the best meeting found (the usual stopping rule): networkx
        # would go on until a switch is settled both ways, but no later step changes this path.
        if best is not None and fringe[0][0][0] + fringe[1][0][0] >= best:
            return _joined(preds, meet)
        direction = 1 - direction
        here, there, heap = dists[direction], dists[1 - direction], fringe[direction]
        dist, _, v = pop(heap)
        if v in here:
            continue
        here[v] = dist
        if v in there:
            return _joined(preds, meet)
        near, far, pred = seen[direction], seen[1 - direction], preds[direction]
        for w, cost, link in zip(*adjacency[v], strict=True):
            length = dist + cost
            if w not in here and (w not in near or length < near[w]):
                near[w] = length
                push(heap, (length, count, w))
                count += 1
                pred[w] = (v, link)
                if w in far:
                    total = length + far[w]
                    if best is None or best > total:
                        best, meet = total, w
    return None


def _joined(preds: tuple[dict, dict], meet: str) -> Path:
    """The path from the source to ``meet`` and on to the target, along each side's predecessors."""
    switches, links, step = [meet], [], preds[0][meet]
    while step is not None:
        switches.append(step[0])
        links.append(step[1])
        step = preds[0][step[0]]
    switches.reverse()
    links.reverse()
    step = preds[1][meet]
    while step is not None:
        switches.append(step[0])
        links.append(step[1])
        step = preds[1][step[0]]
    return Path(tuple(switches), tuple(links))


def _breadth_first(adjacency: Mapping[str, tuple[list[str], list, list]], src: str,
                   dst: str) -> tuple[str, ...] | None:
    """``_bidirectional``'s path when every link costs the same, found with less work.

    With equal costs its heaps pop in push order, so each side is a breadth-first queue, and this
    replays it (side by side, one switch a turn, the same predecessors and meeting switch). It stops
    sooner: once the best meeting is proved shortest (``_proved``), no later step of the replay could
    change the path (a meeting replaces another only when strictly shorter).
    """
    queues = ([src], [dst])
    levels: tuple[dict[str, int], dict[str, int]] = ({src: 0}, {dst: 0})
    preds: tuple[dict[str, str | None], dict[str, str | None]] = ({src: None}, {dst: None})
    # Where each level starts in its side's queue (a queue is in level order).
    starts: tuple[list[int], list[int]] = ([0, 1], [0, 1])
    heads = [0, 0]
    settled: tuple[set[str], set[str]] = (set(), set())
    best, meet, tried = None, None, None
    direction = 1
    while heads[0] < len(queues[0]) and heads[1] < len(queues[1]):
        if best is not None:
            front = levels[0][queues[0][heads[0]]], levels[1][queues[1][heads[1]]]
            if front[0] + front[1] >= best:
                break
            if (best, front) != tried:
                tried = best, front
                if _proved(adjacency, queues, starts, front, best):
                    break
        direction = 1 - direction
        queue, near, far = queues[direction], levels[direction], levels[1 - direction]
        v = queue[heads[direction]]
        heads[direction] += 1
        settled[direction].add(v)
        if v in settled[1 - direction]:
            break
        level = near[v] + 1
        new = [w for w in adjacency[v][0] if w not in near]
        if not new:
            continue
        if level == len(starts[direction]) - 1:
            starts[direction].append(len(queue) + len(new))
        else:
            starts[direction][-1] += len(new)
        queue.extend(new)
        near.update(dict.fromkeys(new, level))
        preds[direction].update(dict.fromkeys(new, v))
        if not far.keys().isdisjoint(new):
            for w in new:
                if w in far and (best is None or best > level + far[w]):
                    best, meet = level + far[w], w
    else:
        return None
    return _walk(preds, meet)


def _proved(adjacency: Mapping[str, tuple[list[str], list, list]], queues: tuple[list[str], list[str]],
            starts: tuple[list[int], list[int]], front: tuple[int, int], best: int) -> bool:
    """True when no path is shorter than ``best`` hops, seen from the replay's queues.

    Every switch up to its side's front level is queued, and a path of at most front + front' hops
    would have met already, so ``best`` = front + front' + 1 is proved. At + 2, one more level of
    one side (the one with fewer switches at its front) must not touch the other's queued switches
    up to its front level.
    """
    if best <= front[0] + front[1] + 1:
        return True
    if best > front[0] + front[1] + 2:
        return False
    widths = [starts[side][front[side] + 1] - starts[side][front[side]] for side in (0, 1)]
    side = 0 if widths[0] <= widths[1] else 1
    other = 1 - side
    ball = set(queues[other][:starts[other][front[other] + 1]])
    edge = queues[side][starts[side][front[side]]:starts[side][front[side] + 1]]
    return all(ball.isdisjoint(adjacency[v][0]) for v in edge)


def _walk(preds: tuple[dict[str, str | None], dict[str, str | None]], meet: str) -> tuple[str, ...]:
    """The switches from the source to ``meet`` and on to the target, along each side's predecessors."""
    switches, step = [meet], preds[0][meet]
    while step is not None:
        switches.append(step)
        step = preds[0][step]
    switches.reverse()
    step = preds[1][meet]
    while step is not None:
        switches.append(step)
        step = preds[1][step]
    return tuple(switches)


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
        # A weight every link shares (None: they differ): its bounds follow from hop counts.
        self._steps = tuple(_shared({getattr(link, weight) for link in self.links.values()})
                            for weight in ("cost", "latency"))

    def bounds(self, dst: str) -> tuple[dict[str, float], dict[str, float]]:
        """(least cost, least latency) from every switch that reaches ``dst`` to ``dst`` (looked up,
        never walked: their order is not the same in every case)."""
        if dst not in self._bounds:
            if self._steps == (None, None):
                self._bounds[dst] = (self._dijkstra(dst, 0), self._dijkstra(dst, 1))
            else:
                levels = _hop_levels(self._neighbours, dst)
                self._bounds[dst] = tuple(
                    self._dijkstra(dst, weight) if step is None else _by_hops(levels, step)
                    for weight, step in enumerate(self._steps))
        return self._bounds[dst]

    @functools.cached_property
    def _neighbours(self) -> dict[str, list[str]]:
        """switch → its neighbours, each once: the hop counts' searches."""
        return {node: nbrs for node, (nbrs, _, _) in self.view.adjacency.items()}

    @functools.cached_property
    def _weights(self) -> dict[str, list[tuple[str, tuple[float, float]]]]:
        """switch → [(neighbour, (cost, latency))]: the bounds' searches without attribute look-ups."""
        return {node: [(nb, (link.cost, link.latency)) for nb, link, _ in nbrs]
                for node, nbrs in self.adjacency.items()}

    def _dijkstra(self, origin: str, weight: int) -> dict[str, float]:
        """Least cost (``weight`` 0) or latency (1) from every switch to ``origin``."""
        weights = self._weights
        dist = {origin: 0.0}
        heap = [(0.0, origin)]
        done: set[str] = set()
        while heap:
            d, node = heapq.heappop(heap)
            if node in done:
                continue
            done.add(node)
            for nb, w in weights[node]:
                nd = d + w[weight]
                if nd < dist.get(nb, math.inf):
                    dist[nb] = nd
                    heapq.heappush(heap, (nd, nb))
        return dist


def _shared(weights: set[float]) -> float | None:
    """The one finite non-negative weight of ``weights``, else None."""
    if len(weights) > 1:
        return None
    weight = next(iter(weights), 0.0)
    return weight if 0 <= weight < math.inf else None


def _hop_levels(neighbours: Mapping[str, list[str]], origin: str) -> list[set[str]]:
    """The switches 0, 1, 2... hops from ``origin`` (all that reach it), breadth first a level at a
    time: one set union a level, not a step a switch."""
    levels, seen = [{origin}], {origin}
    while len(seen) < len(neighbours):
        reached = set().union(*map(neighbours.__getitem__, levels[-1])) - seen
        if not reached:
            break
        seen |= reached
        levels.append(reached)
    return levels


def _by_hops(levels: list[set[str]], step: float) -> dict[str, float]:
    """Dijkstra's distances when every link weighs ``step``: ``step`` added once a hop from 0.0, in
    that order, so the floats are the very sums Dijkstra makes (fewest hops give the least)."""
    found, total = {}, 0.0
    for hops, level in enumerate(levels):
        if hops:
            total += step
        found.update(dict.fromkeys(level, total))
    return found


class TagSpaceExhausted(Exception):
    """Every tag of a link is in use: the connection cannot be admitted on that link."""


class TagAllocator:
    """Per-link tags (VLAN ids). One tag per (connection, link) serves both directions.

    A connection prefers, in order: a tag given in ``previous`` (e.g. found on the switches), the
    tag it held before a re-plan released it, and a tag derived from a hash of (connection, link),
    so a fresh controller finds the same tags as the one before it; collisions probe upward.
    """

    def __init__(self, tag_range: tuple[int, int], previous: Mapping[tuple[str, str], int] | None = None):
        self.low, self.high = tag_range
        self.size = self.high - self.low + 1
        self.held: dict[tuple[str, str], int] = {}
        self.used: dict[str, dict[int, str]] = {}
        self._links: dict[str, tuple[str, ...]] = {}  # connection → links it holds a tag on
        self._previous: Mapping[tuple[str, str], int] = previous or {}
        self._released: dict[tuple[str, str], int] = {}

    def copy(self) -> TagAllocator:
        """An independent allocator holding the same tags (preferences are not carried over)."""
        new = TagAllocator((self.low, self.high))
        new.held = dict(self.held)
        new.used = {link: dict(tags) for link, tags in self.used.items()}
        new._links = dict(self._links)
        return new

    def prefer(self, previous: Mapping[tuple[str, str], int]) -> None:
        """Tags to try first for (connection, link) pairs allocated from now on."""
        self._previous = previous

    def remember(self, tags: Mapping[tuple[str, str], int]) -> None:
        """Tags (connection, link) held before, tried after ``prefer``'s when allocated again."""
        self._released.update(tags)

    def preferred(self, connection_id: str, link_name: str) -> int:
        digest = hashlib.blake2b(f"{connection_id}|{link_name}".encode(), digest_size=4).digest()
        return self.low + int.from_bytes(digest, "big") % self.size

    def allocate(self, connection_id: str, link_name: str) -> int:
        """The tag of ``connection_id`` on ``link_name``; raises TagSpaceExhausted when none is free."""
        key = (connection_id, link_name)
        if key in self.held:
            return self.held[key]
        used = self.used.setdefault(link_name, {})
        if len(used) >= self.size:
            raise TagSpaceExhausted(
                f"link {link_name} has no free tag: all {self.size} tags of {self.low}-{self.high} are in use"
            )
        for tag in (self._previous.get(key), self._released.get(key)):
            if tag is not None and tag not in used and self.low <= tag <= self.high:
                break
        else:
            tag = self.preferred(connection_id, link_name)
            while tag in used:
                tag = self.low + (tag - self.low + 1) % self.size
        used[tag] = connection_id
        self.held[key] = tag
        self._links[connection_id] = self._links.get(connection_id, ()) + (link_name,)
        return tag

    def release(self, connection_id: str, remember: bool = False) -> None:
        """Free every tag of ``connection_id``; ``remember`` keeps them as its preference."""
        for link in self._links.pop(connection_id, ()):
            tag = self.held.pop((connection_id, link))
            self.used[link].pop(tag, None)
            if remember:
                self._released[(connection_id, link)] = tag
