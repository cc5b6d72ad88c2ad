"""Admission: the bandwidth ledger, constrained paths, protection, preemption and chains.

Property tests compare against brute force: every simple path of a small random fabric (networkx
enumerates them on a multigraph, parallel links included) and a ledger model kept by the test.
"""

import itertools
import json
import random
from collections import Counter

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ryu_nsm.core.fabric import Fabric, Link, Switch
from ryu_nsm.core.pathing import FabricView, NoPath, Path
from ryu_nsm.qos.admission import admit, admit_all, demand_for
from ryu_nsm.qos.chain_routing import Leg, constrained_chain
from ryu_nsm.qos.ledger import AdmissionError, Demand, Ledger
from ryu_nsm.qos.routing import (
    NoBackup,
    NoFeasiblePath,
    constrained_path,
    disjoint_backup,
    meets_latency,
    protected_pair,
    routing_graph,
)
from ryu_nsm.qos.service_level import ServiceLevel, parse_duration
from ryu_nsm.sources.topology import fat_tree
from tests.fabrics import ring

MS = 0.001
G = 1_000_000_000
M = 1_000_000


def build(n: int, links: list[tuple], name: str = "test") -> Fabric:
    """Switches s1..sn; links (a, b, capacity, latency, cost) with ports numbered per switch."""
    ports: Counter[str] = Counter()
    made = []
    for a, b, capacity, latency, cost in links:
        ports[a] += 1
        ports[b] += 1
        made.append(Link(a, ports[a], b, ports[b], capacity=capacity, latency=latency, cost=cost))
    return Fabric(name, tuple(Switch(f"s{i}", i) for i in range(1, n + 1)), tuple(made))


def link_between(fabric: Fabric, a: str, b: str) -> Link:
    (found,) = [link for link in fabric.links if {link.a, link.b} == {a, b}]
    return found


def path_of(fabric: Fabric, *switches: str) -> Path:
    pairs = zip(switches, switches[1:], strict=False)
    return Path(switches, tuple(link_between(fabric, a, b) for a, b in pairs))


@st.composite
def fabrics(draw, max_switches: int = 5, max_links: int = 8) -> Fabric:
    n = draw(st.integers(2, max_switches))
    links = []
    for _ in range(draw(st.integers(1, max_links))):
        a = draw(st.integers(1, n))
        b = draw(st.integers(1, n - 1))
        b += b >= a
        links.append((f"s{a}", f"s{b}", draw(st.sampled_from([10, 20, 30, 50])),
                      draw(st.sampled_from([0.0, MS, 2 * MS, 5 * MS])),
                      draw(st.sampled_from([0.0, 1.0, 2.0, 3.0]))))
    return build(n, links, "random")


@st.composite
def ladders(draw) -> Fabric:
    """Switches in a line with one to three parallel links between neighbours, each its own trade of
    cost against latency: the shape where the cheapest way to a midpoint is not on the answer."""
    n = draw(st.integers(3, 5))
    links = [(f"s{i}", f"s{i + 1}", draw(st.sampled_from([10, 30])),
              draw(st.sampled_from([0.5 * MS, MS, 3 * MS])), draw(st.sampled_from([1.0, 2.0, 5.0])))
             for i in range(1, n) for _ in range(draw(st.integers(1, 3)))]
    return build(n, links, "ladder")


def simple_paths(fabric: Fabric, src: str, dst: str, down: frozenset = frozenset()) -> list[Path]:
    """Every simple path from src to dst over the links that are up (the brute-force oracle)."""
    if src == dst:
        return [Path((src,))]
    graph = nx.MultiGraph()
    graph.add_nodes_from(s.name for s in fabric.switches)
    for link in fabric.links:
        if link.name not in down:
            graph.add_edge(link.a, link.b, key=link.name, link=link)
    paths = []
    for edges in nx.all_simple_edge_paths(graph, src, dst):
        links = tuple(graph.edges[u, v, k]["link"] for u, v, k in edges)
        paths.append(Path((src, *(v for _, v, _ in edges)), links))
    return paths


class Model:
    """The test's own account of what is reserved: link name → bit/s (guarantees are symmetric)."""

    def __init__(self, fabric: Fabric):
        self.fabric = fabric
        self.held: dict[str, tuple[int, tuple[Path, ...]]] = {}

    def reserved(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for bandwidth, paths in self.held.values():
            for path in paths:
                for link in path.links:
                    out[link.name] += bandwidth
        return out

    def free(self, link: Link) -> float:
        return link.capacity - self.reserved()[link.name]

    def fits(self, bandwidth: int, paths: tuple[Path, ...]) -> bool:
        extra: Counter[str] = Counter(link.name for path in paths for link in path.links)
        taken = self.reserved()
        return all(taken[link.name] + extra[link.name] * bandwidth <= link.capacity
                   for link in self.fabric.links if link.name in extra)


def assert_ledger_matches(ledger: Ledger, model: Model) -> None:
    taken = model.reserved()
    for link in model.fabric.links:
        for end in (link.a, link.b):
            assert ledger.reserved(link.name, end) == taken[link.name]
            assert ledger.reserved(link.name, end) <= link.capacity
            assert ledger.residual(link.name, end) == link.capacity - taken[link.name]
        assert ledger.available(link.name) == link.capacity - taken[link.name]
    assert set(ledger.reservations) == set(model.held)


def snapshot(ledger: Ledger, fabric: Fabric) -> tuple:
    figures = tuple((ledger.reserved(link.name, end), ledger.residual(link.name, end),
                     ledger.available(link.name)) for link in fabric.links for end in (link.a, link.b))
    return figures, json.dumps(ledger.describe())


def chained(path: Path, src: str, dst: str) -> bool:
    """True when ``path`` is a simple path from src to dst whose links join its switches."""
    hops = zip(path.switches[:-1], path.switches[1:], path.links, strict=True)
    return ((path.switches[0], path.switches[-1]) == (src, dst)
            and len(set(path.switches)) == len(path.switches)
            and all({a, b} == {link.a, link.b} for a, b, link in hops))


# -- the ledger ---------------------------------------------------------------------------------


def test_a_reservation_takes_both_directions_of_every_link_and_release_gives_them_back():
    fabric = ring(4, capacity=G)
    ledger = Ledger(fabric)
    path = path_of(fabric, "s1", "s2", "s3")
    held = ledger.reserve(Demand("a", "s1", "s3", 300 * M), path)
    assert held.path == path and ledger.reservations["a"] is held
    s1s2 = link_between(fabric, "s1", "s2").name
    assert ledger.reserved(s1s2, "s1") == ledger.reserved(s1s2, "s2") == 300 * M
    assert ledger.residual(s1s2) == ledger.available(s1s2) == 700 * M
    assert ledger.residual(link_between(fabric, "s3", "s4").name) == G
    assert [h.connection_id for h in ledger.holders(s1s2, "s2")] == ["a"]
    assert ledger.describe() == [
        {"link": "s1:1-s2:2", "capacity": G, "reserved": {"s1->s2": 300 * M, "s2->s1": 300 * M},
         "residual": 700 * M, "connections": ["a"]},
        {"link": "s2:1-s3:2", "capacity": G, "reserved": {"s2->s3": 300 * M, "s3->s2": 300 * M},
         "residual": 700 * M, "connections": ["a"]},
    ]
    assert ledger.release("a") is held and ledger.release("a") is None
    assert ledger.describe() == [] and ledger.residual(s1s2, "s1") == G


def test_a_reservation_that_does_not_fit_is_refused_whole_naming_the_bottleneck():
    fabric = build(3, [("s1", "s2", G, 0, 1), ("s2", "s3", 100 * M, 0, 1)])
    ledger = Ledger(fabric)
    ledger.reserve(Demand("a", "s2", "s3", 60 * M), path_of(fabric, "s2", "s3"))
    before = snapshot(ledger, fabric)
    with pytest.raises(AdmissionError) as error:
        ledger.reserve(Demand("b", "s1", "s3", 50 * M), path_of(fabric, "s1", "s2", "s3"))
    assert str(error.value) == (
        "cannot reserve for b: link s2:2-s3:1 (s2→s3): 40Mbit/s free of 100Mbit/s (60Mbit/s reserved by "
        "1 connection), 50Mbit/s needed")
    assert (error.value.bottleneck.link, error.value.bottleneck.capacity) == ("s2:2-s3:1", 100 * M)
    assert snapshot(ledger, fabric) == before and "b" not in ledger.reservations


def test_a_backup_sharing_a_link_with_its_primary_counts_twice():
    fabric = build(2, [("s1", "s2", 100, 0, 1)])
    ledger = Ledger(fabric)
    path = path_of(fabric, "s1", "s2")
    with pytest.raises(AdmissionError, match="120bit/s needed"):
        ledger.reserve(Demand("a", "s1", "s2", 60), path, path)
    ledger.reserve(Demand("a", "s1", "s2", 50), path, path)
    assert ledger.reserved(path.links[0].name, "s1") == 100


def test_reserve_refuses_nonsense():
    fabric = ring(4)
    ledger = Ledger(fabric)
    path = path_of(fabric, "s1", "s2")
    ledger.reserve(Demand("a", "s1", "s2", 1), path)
    with pytest.raises(ValueError, match="already holds"):
        ledger.reserve(Demand("a", "s1", "s2", 1), path)
    with pytest.raises(ValueError, match="does not join s1 to s3"):
        ledger.reserve(Demand("b", "s1", "s3", 1), path)
    broken = Path(("s1", "s3"), (link_between(fabric, "s1", "s2"),))
    with pytest.raises(ValueError, match="does not join s1 to s3"):
        ledger.reserve(Demand("b", "s1", "s3", 1), broken)
    with pytest.raises(ValueError, match="whole number"):
        ledger.reserve(Demand("b", "s1", "s2", 1.5), path)
    foreign = Link("x", 1, "y", 1)
    with pytest.raises(KeyError, match="not in the ledger's fabric"):
        ledger.residual(foreign.name)
    with pytest.raises(KeyError, match="does not touch s9"):
        ledger.reserved(path.links[0].name, "s9")


@settings(max_examples=150, deadline=None)
@given(fabrics(), st.data())
def test_the_ledger_never_oversubscribes_and_release_restores_exactly(fabric, data):
    ledger, model = Ledger(fabric), Model(fabric)
    names = [s.name for s in fabric.switches]
    for step in range(data.draw(st.integers(1, 25))):
        if model.held and data.draw(st.booleans()):
            victim = data.draw(st.sampled_from(sorted(model.held)))
            ledger.release(victim)
            del model.held[victim]
        else:
            src, dst = data.draw(st.sampled_from(names)), data.draw(st.sampled_from(names))
            paths = simple_paths(fabric, src, dst)
            if not paths:
                continue
            chosen = tuple(data.draw(st.sampled_from(paths)) for _ in range(data.draw(st.integers(1, 2))))
            bandwidth = data.draw(st.integers(0, 40))
            before = snapshot(ledger, fabric)
            demand = Demand(f"c{step}", src, dst, bandwidth)
            if model.fits(bandwidth, chosen):
                ledger.reserve(demand, *chosen)
                model.held[demand.connection_id] = (bandwidth, chosen)
                if data.draw(st.booleans()):
                    # Reserving and releasing leaves the ledger exactly as it was.
                    ledger.release(demand.connection_id)
                    del model.held[demand.connection_id]
                    assert snapshot(ledger, fabric) == before
            else:
                with pytest.raises(AdmissionError) as error:
                    ledger.reserve(demand, *chosen)
                bottleneck = error.value.bottleneck
                assert bottleneck.reserved + bottleneck.requested > bottleneck.capacity
                assert snapshot(ledger, fabric) == before
        assert_ledger_matches(ledger, model)
    for connection in list(model.held):
        ledger.release(connection)
    assert ledger.describe() == [] and all(
        ledger.available(link.name) == link.capacity for link in fabric.links)


# -- constrained paths --------------------------------------------------------------------------


def test_without_constraints_it_is_the_cheapest_path():
    fabric = ring(6)
    view = FabricView(fabric)
    assert constrained_path(view, "s1", "s3").switches == ("s1", "s2", "s3")
    assert constrained_path(view, "s1", "s5").switches == ("s1", "s6", "s5")
    assert constrained_path(view, "s2", "s2") == Path(("s2",))


def test_two_guarantees_that_do_not_both_fit_on_the_short_path_are_split():
    fabric = ring(4, capacity=100 * M)
    view, ledger = FabricView(fabric), Ledger(fabric)
    first = admit(view, ledger, Demand("a", "s1", "s2", 60 * M))
    second = admit(view, ledger, Demand("b", "s1", "s2", 60 * M))
    assert first.path.switches == ("s1", "s2")
    assert second.path.switches == ("s1", "s4", "s3", "s2")
    third = admit(view, ledger, Demand("c", "s1", "s2", 60 * M))
    assert not third.admitted
    assert "limited by link s1:1-s2:2 (s1→s2): 40Mbit/s free of 100Mbit/s" in third.reason


def test_a_latency_bound_avoids_the_slow_link_and_takes_the_cheapest_that_meets_it():
    # s1-s2 direct is cheap but slow; s1-s3-s2 costs more and is fast; s1-s4-s2 costs most, fast too.
    fabric = build(4, [("s1", "s2", G, 10 * MS, 1), ("s1", "s3", G, 1 * MS, 2), ("s3", "s2", G, 1 * MS, 2),
                       ("s1", "s4", G, 0.5 * MS, 5), ("s4", "s2", G, 0.5 * MS, 5)])
    view = FabricView(fabric)
    assert constrained_path(view, "s1", "s2").switches == ("s1", "s2")
    assert constrained_path(view, "s1", "s2", max_latency=5 * MS).switches == ("s1", "s3", "s2")
    assert constrained_path(view, "s1", "s2", max_latency=1 * MS).switches == ("s1", "s4", "s2")
    with pytest.raises(NoFeasiblePath) as error:
        constrained_path(view, "s1", "s2", max_latency=0.5 * MS)
    assert error.value.kind == "latency" and error.value.best_latency == pytest.approx(1 * MS)
    assert str(error.value) == "no path from s1 to s2 is within 500us: the fastest takes 1ms"


def test_the_cheapest_way_to_a_midpoint_need_not_be_on_the_answer():
    # Two ways to s2 (cheap and slow, dear and fast), then two ways on to s3 (likewise). Within 4ms
    # the cheapest is dear-fast first, then cheap-slow: a search that keeps only the cheapest way to
    # s2 would pay for the dear second half instead.
    fabric = build(5, [("s1", "s2", G, 3 * MS, 1), ("s1", "s4", G, 0.5 * MS, 1),
                       ("s4", "s2", G, 0.5 * MS, 1), ("s2", "s3", G, 3 * MS, 1),
                       ("s2", "s5", G, 0.5 * MS, 5), ("s5", "s3", G, 0.5 * MS, 5)])
    path = constrained_path(FabricView(fabric), "s1", "s3", max_latency=4 * MS)
    assert path.switches == ("s1", "s4", "s2", "s3") and path.cost == 3


def test_latencies_that_add_up_to_the_bound_meet_it():
    hop, bound = parse_duration("100us"), parse_duration("0.3ms")
    assert hop + hop + hop > bound  # binary floating point: three 100us hops add up to a hair above
    fabric = build(4, [("s1", "s2", G, hop, 1), ("s2", "s3", G, hop, 1), ("s3", "s4", G, hop, 1)])
    path = constrained_path(FabricView(fabric), "s1", "s4", max_latency=bound)
    assert path.switches == ("s1", "s2", "s3", "s4")
    assert meets_latency(0.0003000000000000001, 0.0003) and not meets_latency(0.000301, 0.0003)
    assert meets_latency(5.0, None)


def test_a_costlier_parallel_link_with_room_is_used_when_the_cheap_one_is_full():
    fabric = build(2, [("s1", "s2", 100, 0, 1), ("s1", "s2", 100, 0, 3)])
    view, ledger = FabricView(fabric), Ledger(fabric)
    cheap, dear = fabric.links
    assert constrained_path(view, "s1", "s2", bandwidth=80, ledger=ledger).links == (cheap,)
    ledger.reserve(Demand("a", "s1", "s2", 80), Path(("s1", "s2"), (cheap,)))
    assert constrained_path(view, "s1", "s2", bandwidth=80, ledger=ledger).links == (dear,)
    assert constrained_path(view, "s1", "s2", bandwidth=20, ledger=ledger).links == (cheap,)


def test_refusals_say_why():
    fabric = ring(4, capacity=100 * M, latency=1 * MS)
    view, ledger = FabricView(fabric, down_links={link_between(fabric, "s3", "s4").name}), Ledger(fabric)
    ledger.reserve(Demand("a", "s1", "s2", 70 * M), path_of(fabric, "s1", "s2"))
    ledger.reserve(Demand("b", "s2", "s3", 10 * M), path_of(fabric, "s2", "s3"))
    with pytest.raises(NoFeasiblePath) as error:
        constrained_path(view, "s1", "s3", bandwidth=50 * M, ledger=ledger)
    assert error.value.kind == "bandwidth"
    assert error.value.bottleneck.link == link_between(fabric, "s1", "s2").name
    assert str(error.value) == (
        "no path from s1 to s3 has 50Mbit/s free each way on every link: the cheapest, s1 → s2 → s3, is "
        "limited by link s1:1-s2:2 (s1→s2): 30Mbit/s free of 100Mbit/s (70Mbit/s reserved by 1 connection), "
        "50Mbit/s needed")
    with pytest.raises(NoFeasiblePath, match="within 2.5ms has 50Mbit/s free"):
        constrained_path(view, "s1", "s3", bandwidth=50 * M, ledger=ledger, max_latency=2.5 * MS)
    with pytest.raises(NoFeasiblePath, match="no path from s1 to s4 with the links that are up avoiding"):
        constrained_path(view, "s1", "s4", exclude_links={link_between(fabric, "s4", "s1").name})
    down = FabricView(fabric, down_switches={"s2"})
    with pytest.raises(NoFeasiblePath, match="^switch s2 is down$"):
        constrained_path(down, "s2", "s3")
    with pytest.raises(NoPath, match="switch s9 is not in the fabric"):
        constrained_path(view, "s1", "s9")
    disconnected = FabricView(fabric, down_links={link.name for link in fabric.links[1:3]})
    with pytest.raises(NoFeasiblePath, match="no path from s1 to s3 with the links that are up$") as error:
        constrained_path(disconnected, "s1", "s3")
    assert error.value.kind == "disconnected"


@settings(max_examples=400, deadline=None)
@given(fabrics() | ladders(), st.data())
def test_constrained_path_is_the_cheapest_feasible_path_brute_force_finds(fabric, data):
    names = [s.name for s in fabric.switches]
    down = frozenset(data.draw(st.sets(st.sampled_from([link.name for link in fabric.links]), max_size=2)))
    view, ledger, model = FabricView(fabric, down_links=down), Ledger(fabric), Model(fabric)
    # Some guarantees already held, on paths of the whole fabric (a link may be down since).
    for i in range(data.draw(st.integers(0, 4))):
        src, dst = data.draw(st.sampled_from(names)), data.draw(st.sampled_from(names))
        paths = simple_paths(fabric, src, dst)
        path, bandwidth = data.draw(st.sampled_from(paths)) if paths else None, data.draw(st.integers(1, 30))
        if path is not None and model.fits(bandwidth, (path,)):
            ledger.reserve(Demand(f"h{i}", src, dst, bandwidth), path)
            model.held[f"h{i}"] = (bandwidth, (path,))
    src = data.draw(st.sampled_from(names))
    dst = data.draw(st.sampled_from([n for n in names if n != src]))
    bandwidth = data.draw(st.sampled_from([0, 5, 10, 20, 30]))
    every = simple_paths(fabric, src, dst, down)
    # Bounds right at the latency of some path are where a wrong search goes astray.
    bound = data.draw(st.sampled_from(sorted({None, 0.0005, 4 * MS, *(p.latency for p in every)},
                                             key=lambda b: -1 if b is None else b)))
    within = [p for p in every if meets_latency(p.latency, bound)]
    feasible = [p for p in within if all(model.free(link) >= bandwidth for link in p.links)]
    try:
        found = constrained_path(view, src, dst, bandwidth=bandwidth, max_latency=bound, ledger=ledger)
    except NoFeasiblePath as error:
        assert not feasible
        assert error.kind == ("disconnected" if not every else "latency" if not within else "bandwidth")
        if error.kind == "bandwidth":
            assert model.free(link_between_named(fabric, error.bottleneck.link)) < bandwidth
        return
    assert feasible, found
    assert chained(found, src, dst) and not found.uses(down)
    assert meets_latency(found.latency, bound)
    assert all(model.free(link) >= bandwidth for link in found.links)
    best = min((p.cost, p.latency) for p in feasible)
    assert found.cost == pytest.approx(best[0], abs=1e-9)
    assert found.latency == pytest.approx(best[1], abs=1e-12)


def link_between_named(fabric: Fabric, name: str) -> Link:
    (found,) = [link for link in fabric.links if link.name == name]
    return found


def test_paths_are_deterministic():
    fabric = fat_tree(4)
    first = [constrained_path(FabricView(fabric), "e0_0", f"e{p}_1").switches for p in range(4)]
    again = [constrained_path(FabricView(fabric), "e0_0", f"e{p}_1").switches for p in range(4)]
    assert first == again


def test_ten_thousand_guarantees_on_a_k16_fat_tree_take_shortest_paths_and_fit():
    fabric = fat_tree(16)
    view, ledger = FabricView(fabric), Ledger(fabric)
    edges = [s.name for s in fabric.switches if s.name.startswith("e")]
    rng = random.Random(16)
    graph = nx.Graph(fabric.graph())
    hops: dict[str, dict[str, int]] = {}
    for i in range(10_000):
        src, dst = rng.sample(edges, 2)
        decision = admit(view, ledger, Demand(f"c{i}", src, dst, 10 * M))
        assert decision.admitted, decision.reason
        if i % 500 == 0:
            if src not in hops:
                hops[src] = nx.single_source_shortest_path_length(graph, src)
            assert len(decision.path.links) == hops[src][dst]
    for link in fabric.links:
        assert ledger.reserved(link.name, link.a) <= link.capacity
    assert sum(len(r.path.links) for r in ledger.reservations.values()) * 10 * M == sum(
        ledger.reserved(link.name, link.a) for link in fabric.links)


# -- protection ---------------------------------------------------------------------------------


def test_a_backup_is_disjoint_and_switch_disjoint_where_it_can_be():
    fabric = ring(4)
    view = FabricView(fabric)
    primary = constrained_path(view, "s1", "s3")
    backup = disjoint_backup(view, primary)
    assert backup.switches == ("s1", "s4", "s3")
    assert disjoint_backup(view, Path(("s2",))) is None
    # Two parallel links and nothing else: only link-disjoint is possible.
    twin = build(2, [("s1", "s2", G, 0, 1), ("s1", "s2", G, 0, 2)])
    primary, backup = protected_pair(FabricView(twin), "s1", "s2")
    assert (primary.links, backup.links) == ((twin.links[0],), (twin.links[1],))


def test_a_backup_meets_the_same_demand_or_there_is_none():
    fabric = ring(4, capacity=100 * M, latency=1 * MS)
    view, ledger = FabricView(fabric), Ledger(fabric)
    primary = constrained_path(view, "s1", "s2")
    expected = "^no backup disjoint from s1 → s2: .*within 2ms: the fastest takes 3ms$"
    with pytest.raises(NoBackup, match=expected):
        disjoint_backup(view, primary, max_latency=2 * MS)
    ledger.reserve(Demand("x", "s3", "s4", 90 * M), path_of(fabric, "s3", "s4"))
    with pytest.raises(NoBackup, match="limited by link s3:1-s4:2"):
        protected_pair(view, "s1", "s2", bandwidth=20 * M, ledger=ledger)


def test_a_trap_topology_still_gets_a_disjoint_pair():
    # The cheapest path s1-s2-s3-s4 takes the only links that could join the two disjoint paths
    # s1-s2-s4 and s1-s3-s4; taking it first leaves no backup.
    fabric = build(4, [("s1", "s2", G, 0, 1), ("s2", "s3", G, 0, 1), ("s3", "s4", G, 0, 1),
                       ("s1", "s3", G, 0, 5), ("s2", "s4", G, 0, 5)])
    view = FabricView(fabric)
    assert constrained_path(view, "s1", "s4").switches == ("s1", "s2", "s3", "s4")
    primary, backup = protected_pair(view, "s1", "s4")
    assert {primary.switches, backup.switches} == {("s1", "s2", "s4"), ("s1", "s3", "s4")}
    assert primary.cost == backup.cost == 6


@settings(max_examples=200, deadline=None)
@given(fabrics(max_links=7), st.data())
def test_protected_pair_finds_disjoint_paths_whenever_brute_force_does(fabric, data):
    names = [s.name for s in fabric.switches]
    src = data.draw(st.sampled_from(names))
    dst = data.draw(st.sampled_from([n for n in names if n != src]))
    view = FabricView(fabric)
    every = simple_paths(fabric, src, dst)
    pairs = [(p, q) for p, q in itertools.combinations(every, 2)
             if not {link.name for link in p.links} & {link.name for link in q.links}]
    try:
        primary, backup = protected_pair(view, src, dst)
    except NoFeasiblePath:
        assert not pairs
        return
    assert pairs
    assert chained(primary, src, dst) and chained(backup, src, dst)
    assert not backup.uses(link.name for link in primary.links)
    inner = set(primary.switches[1:-1])
    if inner & set(backup.switches):
        # Not switch-disjoint: then no switch-disjoint backup exists for this primary.
        assert not [q for q in every if not q.uses(link.name for link in primary.links)
                    and not inner & set(q.switches)]


# -- admission and preemption -------------------------------------------------------------------


def test_a_higher_priority_takes_a_preemptible_guarantee_and_says_so():
    fabric = build(2, [("s1", "s2", 100 * M, 1 * MS, 1)])
    view, ledger = FabricView(fabric), Ledger(fabric)
    assert admit(view, ledger, Demand("low", "s1", "s2", 60 * M, priority=1, preemptible=True)).admitted
    assert admit(view, ledger, Demand("fixed", "s1", "s2", 30 * M, priority=1)).admitted
    decision = admit(view, ledger, Demand("high", "s1", "s2", 50 * M, priority=5))
    assert decision.admitted and [e.connection_id for e in decision.evicted] == ["low"]
    assert decision.reason == "preempted low (priority 1) on link s1:1-s2:1"
    assert set(ledger.reservations) == {"fixed", "high"}
    assert decision.describe() == {"id": "high", "admitted": True, "path": ["s1", "s2"], "evicted": ["low"],
                                   "reason": "preempted low (priority 1) on link s1:1-s2:1"}
    # Preemption makes room, not speed: a bound no path meets is refused without taking anything.
    slow = admit(view, ledger, Demand("slow", "s1", "s2", 10 * M, priority=9, max_latency=0.5 * MS))
    assert not slow.admitted and not slow.evicted
    assert slow.reason == "no path from s1 to s2 is within 500us: the fastest takes 1ms"
    assert set(ledger.reservations) == {"fixed", "high"}


def test_preemption_spares_equal_priorities_non_preemptible_ones_and_needless_victims():
    fabric = build(2, [("s1", "s2", 100 * M, 0, 1)])
    view, ledger = FabricView(fabric), Ledger(fabric)
    admit(view, ledger, Demand("same", "s1", "s2", 40 * M, priority=5, preemptible=True))
    admit(view, ledger, Demand("firm", "s1", "s2", 40 * M, priority=0))
    admit(view, ledger, Demand("small", "s1", "s2", 10 * M, priority=0, preemptible=True))
    # Only "small" is below priority 5 and preemptible: 10M free + 10M is not 40M.
    refused = admit(view, ledger, Demand("high", "s1", "s2", 40 * M, priority=5))
    assert not refused.admitted and "would not make room" in refused.reason
    assert set(ledger.reservations) == {"same", "firm", "small"}
    # At priority 6: "small" goes first (lowest), is not enough, then "same" is; with "same" gone,
    # "small" was not needed after all and keeps its guarantee.
    decision = admit(view, ledger, Demand("high", "s1", "s2", 30 * M, priority=6))
    assert [e.connection_id for e in decision.evicted] == ["same"]
    assert set(ledger.reservations) == {"firm", "small", "high"}
    no = admit(view, ledger, Demand("other", "s1", "s2", 50 * M, priority=9), preempt=False)
    assert not no.admitted and not no.evicted and "has 50Mbit/s free" in no.reason


def test_victims_are_chosen_lowest_priority_then_largest_then_given_back_if_not_needed():
    fabric = build(2, [("s1", "s2", 100, 0, 1)])
    view, ledger = FabricView(fabric), Ledger(fabric)
    for cid, bandwidth, priority in (("a", 30, 2), ("b", 50, 1), ("c", 20, 1)):
        admit(view, ledger, Demand(cid, "s1", "s2", bandwidth, priority=priority, preemptible=True))
    decision = admit(view, ledger, Demand("d", "s1", "s2", 40, priority=3))
    assert [e.connection_id for e in decision.evicted] == ["b"]
    # Now a 30 (priority 2), c 20 (priority 1), d 40 (priority 3): 10 free. c goes first, then a.
    decision = admit(view, ledger, Demand("e", "s1", "s2", 60, priority=3))
    assert [e.connection_id for e in decision.evicted] == ["c", "a"]
    assert not admit(view, ledger, Demand("f", "s1", "s2", 61, priority=4)).admitted


def test_admit_all_moves_a_preempted_connection_to_another_path():
    # Only the direct link meets high's bound; low has none and can go the long way round.
    fabric = ring(4, capacity=100 * M, latency=1 * MS)
    view, ledger = FabricView(fabric), Ledger(fabric)
    decisions = admit_all(view, ledger, [
        Demand("low", "s1", "s2", 60 * M, preemptible=True),
        Demand("high", "s1", "s2", 60 * M, priority=5, max_latency=1 * MS)])
    assert decisions["high"].path.switches == ("s1", "s2")
    assert [e.connection_id for e in decisions["high"].evicted] == ["low"]
    assert decisions["low"].admitted and decisions["low"].path.switches == ("s1", "s4", "s3", "s2")
    assert decisions["low"].reason == "moved: preempted by high (priority 5) on link s1:1-s2:2"
    assert set(ledger.reservations) == {"low", "high"}


def test_admit_all_refuses_a_preempted_connection_with_no_other_path_and_says_by_whom():
    fabric = ring(4, capacity=100 * M, latency=1 * MS)
    view, ledger = FabricView(fabric), Ledger(fabric)
    decisions = admit_all(view, ledger, [
        Demand("low", "s1", "s2", 60 * M, preemptible=True),
        Demand("filler", "s1", "s4", 60 * M, priority=9),
        Demand("high", "s1", "s2", 60 * M, priority=5, max_latency=1 * MS),
    ])
    assert decisions["high"].admitted and decisions["filler"].admitted
    assert not decisions["low"].admitted and decisions["low"].reason.startswith(
        "preempted by high (priority 5) on link s1:1-s2:2; no other path: no path from s1 to s2 has 60Mbit/s")
    assert set(ledger.reservations) == {"filler", "high"}


def test_a_demand_follows_its_service_level():
    level = ServiceLevel("gold", "chain", guaranteed_bandwidth=5 * M, max_latency=2 * MS, priority=7,
                         preemptible=True, protection="disjoint")
    path = Path(("s1",))
    assert demand_for("ns/pod/if", "s1", "s2", level, path) == Demand(
        "ns/pod/if", "s1", "s2", 5 * M, 2 * MS, 7, True, True, path)
    chain_wide = ServiceLevel("c", "chain", max_latency=2 * MS, chain_latency=True)
    assert demand_for("x", "s1", "s2", chain_wide).max_latency is None
    assert demand_for("x", "s1", "s2", None) == Demand("x", "s1", "s2")


def test_a_current_path_is_kept_while_it_still_qualifies():
    fabric = ring(4, capacity=100 * M, latency=1 * MS)
    view, ledger = FabricView(fabric), Ledger(fabric)
    long_way = path_of(fabric, "s1", "s4", "s3", "s2")
    decision = admit(view, ledger, Demand("a", "s1", "s2", 10 * M, current=long_way))
    assert decision.path == long_way
    ledger.release("a")
    bounded = admit(view, ledger, Demand("a", "s1", "s2", 10 * M, max_latency=2 * MS, current=long_way))
    assert bounded.path.switches == ("s1", "s2")
    ledger.release("a")
    cut = FabricView(fabric, down_links={link_between(fabric, "s3", "s4").name})
    assert admit(cut, ledger, Demand("a", "s1", "s2", 10 * M, current=long_way)).path.switches == ("s1", "s2")


def test_a_protected_demand_gets_a_reserved_backup_or_is_admitted_unprotected_saying_why():
    fabric = ring(4, capacity=100 * M, latency=1 * MS)
    view, ledger = FabricView(fabric), Ledger(fabric)
    decision = admit(view, ledger, Demand("p", "s1", "s3", 40 * M, protected=True))
    assert decision.admitted and decision.backup is not None and decision.reason == ""
    assert all(ledger.available(link.name) == 60 * M for link in fabric.links)
    decision = admit(view, ledger, Demand("q", "s1", "s3", 40 * M, protected=True))
    assert decision.admitted and decision.backup is not None
    assert all(ledger.available(link.name) == 20 * M for link in fabric.links)
    # The only backup for s1-s2 goes the long way round, 3ms: beyond the bound, so none.
    decision = admit(view, ledger, Demand("r", "s1", "s2", 10 * M, max_latency=1 * MS, protected=True))
    assert decision.admitted and decision.backup is None
    assert decision.reason.startswith("unprotected: no backup disjoint from s1 → s2")


@settings(max_examples=200, deadline=None)
@given(fabrics(), st.data())
def test_preemption_only_takes_lower_preemptible_guarantees_and_only_those_needed(fabric, data):
    names = [s.name for s in fabric.switches]
    view, ledger = FabricView(fabric), Ledger(fabric)
    for i in range(data.draw(st.integers(1, 12))):
        src = data.draw(st.sampled_from(names))
        dst = data.draw(st.sampled_from([n for n in names if n != src]))
        demand = Demand(f"c{i}", src, dst, data.draw(st.integers(1, 30)),
                        priority=data.draw(st.integers(0, 3)),
                        preemptible=data.draw(st.booleans()), protected=data.draw(st.booleans()),
                        max_latency=data.draw(st.sampled_from([None, 2 * MS, 5 * MS])))
        held_before = dict(ledger.reservations)
        decision = admit(view, ledger, demand)
        for eviction in decision.evicted:
            victim = eviction.reservation
            assert victim.priority < demand.priority and victim.demand.preemptible
            assert held_before[victim.connection_id] is victim
            # Not one victim could have been spared: it does not fit back beside the newcomer.
            assert ledger.fits(victim.bandwidth, victim.paths) is not None
        if decision.admitted:
            held = ledger.reservations[demand.connection_id]
            assert (held.path, held.backup) == (decision.path, decision.backup)
            assert chained(decision.path, src, dst)
            assert meets_latency(decision.path.latency, demand.max_latency)
        else:
            assert dict(ledger.reservations) == held_before
        assert set(held_before) - set(ledger.reservations) == {e.connection_id for e in decision.evicted}
        for link in fabric.links:
            used = sum(r.bandwidth * r.held.get((link.name, link.a), 0) for r in ledger.reservations.values())
            assert used == ledger.reserved(link.name, link.a) <= link.capacity


# -- chains -------------------------------------------------------------------------------------


def test_a_chain_shares_one_latency_budget():
    # Two wires s1→s2 and s2→s3, each with a cheap slow link and a dear fast detour.
    fabric = build(5, [("s1", "s2", G, 3 * MS, 1), ("s1", "s4", G, 0.5 * MS, 2), ("s4", "s2", G, 0.5 * MS, 2),
                       ("s2", "s3", G, 3 * MS, 1), ("s2", "s5", G, 1 * MS, 3), ("s5", "s3", G, 1 * MS, 3)])
    view = FabricView(fabric)
    legs = [("s1", "s2"), ("s2", "s3")]
    assert [p.switches for p in constrained_chain(view, legs)] == [("s1", "s2"), ("s2", "s3")]
    # 5ms: one detour is enough, and the first is cheaper (4 vs 6).
    paths = constrained_chain(view, legs, max_latency=5 * MS)
    assert [p.switches for p in paths] == [("s1", "s4", "s2"), ("s2", "s3")]
    paths = constrained_chain(view, legs, max_latency=3 * MS)
    assert [p.switches for p in paths] == [("s1", "s4", "s2"), ("s2", "s5", "s3")]
    with pytest.raises(NoFeasiblePath, match="within 2ms: the fastest takes 3ms in all"):
        constrained_chain(view, legs, max_latency=2 * MS)
    assert constrained_chain(view, [("s1", "s1"), ("s1", "s2")])[0] == Path(("s1",))
    assert constrained_chain(view, []) == ()


def test_chain_legs_that_cross_the_same_link_need_room_for_each():
    fabric = build(3, [("s1", "s2", 100, 0, 1), ("s1", "s2", 100, 0, 5), ("s2", "s3", 100, 0, 1)])
    view, ledger = FabricView(fabric), Ledger(fabric)
    paths = constrained_chain(view, [("s1", "s2"), ("s1", "s2")], bandwidth=60, ledger=ledger)
    assert {paths[0].links, paths[1].links} == {(fabric.links[0],), (fabric.links[1],)}
    ledger.reserve(Demand("x", "s2", "s3", 50), path_of(fabric, "s2", "s3"))
    with pytest.raises(NoFeasiblePath, match=r"wire 2 of the chain \(s2 to s3\): no path from s2 to s3 has"):
        constrained_chain(view, [("s1", "s2"), ("s2", "s3")], bandwidth=60, ledger=ledger)


@settings(max_examples=150, deadline=None)
@given(fabrics(max_switches=4, max_links=6), st.data())
def test_constrained_chain_is_the_cheapest_set_within_the_budget(fabric, data):
    names = [s.name for s in fabric.switches]
    legs = [(data.draw(st.sampled_from(names)), data.draw(st.sampled_from(names))) for _ in range(2)]
    bound = data.draw(st.sampled_from([None, MS, 3 * MS, 6 * MS]))
    view = FabricView(fabric)
    options = [p for p in itertools.product(*(simple_paths(fabric, a, b) for a, b in legs))
               if meets_latency(sum(q.latency for q in p), bound)]
    try:
        found = constrained_chain(view, legs, max_latency=bound)
    except NoFeasiblePath:
        assert not options
        return
    assert options
    assert all(chained(p, a, b) for p, (a, b) in zip(found, legs, strict=True))
    assert meets_latency(sum(p.latency for p in found), bound)
    assert sum(p.cost for p in found) == pytest.approx(min(sum(q.cost for q in p) for p in options), abs=1e-9)


def test_each_leg_of_a_chain_has_its_own_guarantee_bound_and_links_to_leave():
    # Two parallel links s1-s2: slow and wide (3 ms, 100), fast and narrow (1 ms, 50, dearer).
    fabric = build(3, [("s1", "s2", 100, 3 * MS, 1), ("s1", "s2", 50, 1 * MS, 2),
                       ("s2", "s3", 100, 1 * MS, 1)])
    view, ledger = FabricView(fabric), Ledger(fabric)
    slow, fast, last = fabric.links
    # Both legs cross s1-s2 and the chain's 5 ms allow one on the slow link: the one that needs 60
    # cannot take the fast link, so the one that needs 40 does.
    legs = [Leg("s1", "s2", 60), Leg("s1", "s2", 40)]
    paths = constrained_chain(view, legs, max_latency=5 * MS, ledger=ledger)
    assert [p.links for p in paths] == [(slow,), (fast,)]
    # A leg's own bound holds besides the chain's.
    paths = constrained_chain(view, [Leg("s1", "s2", max_latency=2 * MS), ("s2", "s3")], max_latency=9 * MS)
    assert paths[0].links == (fast,)
    # Its bound and its guarantee together: the fast link is too narrow.
    with pytest.raises(NoFeasiblePath, match=r"wire 1 of the chain \(s1 to s2\): no path from s1 to s2 "
                                             "within 2ms has 60bit/s free"):
        constrained_chain(view, [Leg("s1", "s2", 60, max_latency=2 * MS)], ledger=ledger)
    # Links a leg must leave: the best total is reckoned without them.
    leave = frozenset({fast.name})
    assert constrained_chain(view, [Leg("s1", "s2", exclude_links=leave)]) == (Path(("s1", "s2"), (slow,)),)
    with pytest.raises(NoFeasiblePath, match="within 2ms: the fastest takes 4ms in all"):
        constrained_chain(view, [Leg("s1", "s2", exclude_links=leave), ("s2", "s3")], max_latency=2 * MS)
    # A leg without a bandwidth of its own takes the chain's.
    with pytest.raises(NoFeasiblePath, match="wire 1 of the chain"):
        constrained_chain(view, [Leg("s1", "s2")], bandwidth=200, ledger=ledger)


@settings(max_examples=150, deadline=None)
@given(fabrics(max_switches=4, max_links=6), st.data())
def test_constrained_chain_with_own_bounds_and_left_links_is_the_cheapest_that_qualifies(fabric, data):
    names = [s.name for s in fabric.switches]
    link_names = [link.name for link in fabric.links]
    legs = [Leg(data.draw(st.sampled_from(names)), data.draw(st.sampled_from(names)),
                max_latency=data.draw(st.sampled_from([None, MS, 3 * MS])),
                exclude_links=frozenset(data.draw(st.sets(st.sampled_from(link_names), max_size=2))))
            for _ in range(data.draw(st.integers(1, 3)))]
    bound = data.draw(st.sampled_from([None, 2 * MS, 6 * MS]))

    def allowed(path: Path, leg: Leg) -> bool:
        return meets_latency(path.latency, leg.max_latency) and not path.uses(leg.exclude_links)

    options = [combo for combo in itertools.product(*(
        [p for p in simple_paths(fabric, leg.src, leg.dst) if allowed(p, leg)] for leg in legs))
        if meets_latency(sum(p.latency for p in combo), bound)]
    try:
        found = constrained_chain(FabricView(fabric), legs, max_latency=bound)
    except NoFeasiblePath:
        assert not options
        return
    assert all(chained(p, leg.src, leg.dst) and allowed(p, leg) for p, leg in zip(found, legs, strict=True))
    assert meets_latency(sum(p.latency for p in found), bound)
    assert sum(p.cost for p in found) == pytest.approx(min(sum(q.cost for q in c) for c in options), abs=1e-9)


@settings(max_examples=150, deadline=None)
@given(fabrics(max_switches=4, max_links=6), st.data())
def test_a_chain_never_takes_more_room_than_is_free(fabric, data):
    names = [s.name for s in fabric.switches]
    ledger = Ledger(fabric)
    for link in fabric.links:  # some room already taken, on a one-link path
        taken = data.draw(st.sampled_from([0, 10]))
        if taken and taken <= link.capacity:
            ledger.reserve(Demand(f"x-{link.name}", link.a, link.b, taken), Path((link.a, link.b), (link,)))
    legs = [Leg(data.draw(st.sampled_from(names)), data.draw(st.sampled_from(names)),
                data.draw(st.sampled_from([0, 5, 10, 20]))) for _ in range(data.draw(st.integers(1, 3)))]
    try:
        bound = data.draw(st.sampled_from([None, 4 * MS]))
        found = constrained_chain(FabricView(fabric), legs, max_latency=bound, ledger=ledger)
    except NoFeasiblePath:
        return
    need: Counter[str] = Counter()
    for path, leg in zip(found, legs, strict=True):
        for link in path.links:
            need[link.name] += leg.bandwidth
    assert all(bits <= ledger.available(name) for name, bits in need.items())


def test_the_routing_graph_is_built_once_per_view():
    view = FabricView(ring(4))
    assert routing_graph(view) is routing_graph(view) is view.routing
    assert routing_graph(routing_graph(view)) is routing_graph(view)
