"""FabricView.shortest: the very path networkx's ``bidirectional_dijkstra`` by ``cost`` returns on the
view's graph (the same tie-breaks), on random fabrics (uniform and mixed costs, parallel links, links
and switches down) and on fat-trees, for every ordered pair of switches."""

import itertools
import random

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ryu_nsm.core.fabric import Fabric, Link, Switch
from ryu_nsm.core.pathing import FabricView, NoPath
from ryu_nsm.sources.topology import fat_tree


def assert_as_networkx(view: FabricView) -> None:
    """Every ordered pair of switches: the view's path is networkx's, or NoPath where networkx has none."""
    names = [s.name for s in view.fabric.switches]
    for src, dst in itertools.product(names, repeat=2):
        try:
            expected = nx.bidirectional_dijkstra(view.graph, src, dst, weight="cost")[1]
        except (nx.NetworkXNoPath, nx.NodeNotFound):
            with pytest.raises(NoPath):
                view.shortest(src, dst)
            continue
        path = view.shortest(src, dst)
        assert list(path.switches) == expected, (src, dst)
        assert [view.graph.edges[a, b]["link"] for a, b in itertools.pairwise(expected)] == list(path.links)


@st.composite
def random_view(draw) -> FabricView:
    n = draw(st.integers(2, 12))
    uniform = draw(st.booleans())
    rng = random.Random(draw(st.integers(0, 2**32)))
    ports = dict.fromkeys(range(n), 0)
    links = []
    for _ in range(draw(st.integers(0, 3 * n))):
        # Self-loops and parallel links included: the view drops the one and collapses the other.
        u, v = rng.randrange(n), rng.randrange(n)
        ports[u] += 1
        ports[v] += 1
        cost = 1.0 if uniform else float(rng.choice((1, 1, 2, 3, 10)))
        links.append(Link(f"s{u}", ports[u], f"s{v}", ports[v], cost=cost))
    fabric = Fabric("random", tuple(Switch(f"s{i}", i + 1) for i in range(n)), tuple(links))
    down_links = [link.name for link in links if rng.random() < 0.1]
    down_switches = [f"s{i}" for i in range(n) if rng.random() < 0.05]
    return FabricView(fabric, down_links, down_switches)


@settings(max_examples=300, deadline=None)
@given(random_view())
def test_shortest_is_networkx_bidirectional_dijkstra(view):
    assert_as_networkx(view)


@pytest.mark.parametrize("k", [4, 6])
def test_shortest_on_a_fat_tree_is_networkx_bidirectional_dijkstra(k):
    assert_as_networkx(FabricView(fat_tree(k)))
    down = [link.name for link in fat_tree(k).links[::7]]
    assert_as_networkx(FabricView(fat_tree(k), down_links=down, down_switches=["c0"]))


@st.composite
def weighted_view(draw) -> FabricView:
    """A random fabric whose costs and latencies are each shared by every link or mixed."""
    n = draw(st.integers(2, 14))
    rng = random.Random(draw(st.integers(0, 2**32)))
    costs = draw(st.sampled_from([(1.0,), (3,), (0.1,), (1.0, 2.0, 5.0)]))
    latencies = draw(st.sampled_from([(0.0,), (0.001,), (0.0003,), (0.001, 0.002, 0.0007)]))
    ports = dict.fromkeys(range(n), 0)
    links = []
    for _ in range(draw(st.integers(0, 3 * n))):
        u, v = rng.randrange(n), rng.randrange(n)
        ports[u] += 1
        ports[v] += 1
        links.append(Link(f"s{u}", ports[u], f"s{v}", ports[v], cost=rng.choice(costs),
                          latency=rng.choice(latencies)))
    fabric = Fabric("random", tuple(Switch(f"s{i}", i + 1) for i in range(n)), tuple(links))
    return FabricView(fabric, [link.name for link in links if rng.random() < 0.1])


@settings(max_examples=300, deadline=None)
@given(weighted_view())
def test_bounds_are_networkx_dijkstra_distances(view):
    """The per-destination bounds are networkx's Dijkstra distances to the destination, to the bit,
    over the routing graph's links (parallel links kept: the lightest counts)."""
    graph = view.routing
    multi = nx.MultiGraph()
    multi.add_nodes_from(graph.adjacency)
    multi.add_edges_from((link.a, link.b, {"link": link}) for link in graph.links.values())
    for dst in graph.adjacency:
        expected = [nx.single_source_dijkstra_path_length(
            multi, dst, weight=lambda u, v, d, w=weight: min(getattr(e["link"], w) for e in d.values()))
            for weight in ("cost", "latency")]
        assert list(graph.bounds(dst)) == expected
