"""Paths for wires across the fabric, and the per-link tags that carry them.

Paths are cheapest by link ``cost`` (networkx Dijkstra over the switches that are up, with links
that are down removed); ties break deterministically by the fabric's declaration order, so the same
fabric always gives the same paths. A path that is still intact is kept (sticky), so a link coming
back does not move connections again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import networkx as nx

from .fabric import Fabric, Link


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
        graph = nx.Graph()
        graph.add_nodes_from(s.name for s in fabric.switches if s.name not in self.down_switches)
        # Parallel links collapse to the cheapest (then first declared): Dijkstra needs a simple graph.
        for link in fabric.links:
            if link.name in self.down_links or not (graph.has_node(link.a) and graph.has_node(link.b)):
                continue
            if link.a == link.b:
                continue
            best = graph.get_edge_data(link.a, link.b)
            if best is None or link.cost < best["cost"]:
                graph.add_edge(link.a, link.b, cost=link.cost, link=link)
        self.graph = graph

    def intact(self, path: Path) -> bool:
        """True when every switch and link of ``path`` is still up."""
        return all(s not in self.down_switches for s in path.switches) and not path.uses(self.down_links)

    def shortest(self, src: str, dst: str) -> Path:
        """The cheapest path from switch ``src`` to switch ``dst``."""
        if src == dst:
            if src in self.down_switches:
                raise NoPath(f"switch {src} is down")
            return Path((src,))
        for s in (src, dst):
            if s not in self.graph:
                raise NoPath(f"switch {s} is {'down' if s in self.down_switches else 'not in the fabric'}")
        try:
            _, nodes = nx.bidirectional_dijkstra(self.graph, src, dst, weight="cost")
        except nx.NetworkXNoPath:
            raise NoPath(f"no path from {src} to {dst} with the links that are up") from None
        links = tuple(self.graph.edges[u, v]["link"] for u, v in zip(nodes, nodes[1:], strict=False))
        return Path(tuple(nodes), links)


class TagSpaceExhausted(Exception):
    """Every tag of a link is in use: the connection cannot be admitted on that link."""


class TagAllocator:
    """Per-link tags (VLAN ids). One tag per (connection, link) serves both directions.

    A connection prefers a tag derived from a hash of (connection, link), so a fresh controller
    finds the same tags as the one before it; collisions probe upward. Tags already held are kept.
    """

    def __init__(self, tag_range: tuple[int, int], previous: Mapping[tuple[str, str], int] | None = None):
        self.low, self.high = tag_range
        self.size = self.high - self.low + 1
        self.held: dict[tuple[str, str], int] = {}
        self.used: dict[str, dict[int, str]] = {}
        self._previous = dict(previous or {})

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
        tag = self._previous.get(key)
        if tag is None or tag in used or not self.low <= tag <= self.high:
            tag = self.preferred(connection_id, link_name)
            while tag in used:
                tag = self.low + (tag - self.low + 1) % self.size
        used[tag] = connection_id
        self.held[key] = tag
        return tag

    def release(self, connection_id: str) -> None:
        for key in [k for k in self.held if k[0] == connection_id]:
            tag = self.held.pop(key)
            self.used[key[1]].pop(tag, None)
