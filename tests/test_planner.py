"""Paths, tags and compiled flows, checked by following frames through a simulated fabric."""

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ryu_nsm.core.fabric import Fabric, Host, HostInterface, Link, Switch
from ryu_nsm.core.flowspec import PIPELINE_COOKIE, FlowSpec, PipelineError, Table, wire_cookie
from ryu_nsm.core.model import Attachment, ClientRequest, Endpoint, FrozenMap, NetworkService, Resources
from ryu_nsm.core.planner import FAILED, PLANNED, FabricState, make_plan
from ryu_nsm.core.reconcile import apply, diff

from .fabrics import ring
from .flowsim import FabricSim, Frame


def resources_for(pairs, service="svc"):
    """One request per (client attachment, endpoint attachment) pair, each endpoint distinct."""
    eps, reqs = [], []
    for i, (client, server) in enumerate(pairs):
        eps.append(Endpoint(f"e{i}", services=(service,),
                            service_labels=FrozenMap({service: FrozenMap(n=str(i))}),
                            attachments=(server,)))
        reqs.append(ClientRequest(f"c{i}", "nsm-1", service, labels=FrozenMap(n=str(i)), attachment=client))
    from ryu_nsm.core.model import Destination, Match
    match = Match(FrozenMap(n="{{.n}}"), (Destination(FrozenMap(n="{{.n}}")),))
    return Resources((NetworkService(service, matches=(match,)),), tuple(eps), tuple(reqs))


def att(fabric, host, idx=0):
    h = next(h for h in fabric.hosts if h.name == host)
    return h.interfaces[idx].attachment


def port(fabric, host, idx=0):
    h = next(h for h in fabric.hosts if h.name == host)
    i = h.interfaces[idx]
    return i.switch, i.port


def test_wire_across_ring_delivers_both_ways_untagged():
    fab = ring(4, {"client": ("s1",), "server": ("s3",), "intruder": ("s1",)})
    plan = make_plan(fab, resources_for([(att(fab, "client"), att(fab, "server"))]))
    (conn,) = plan.connections.values()
    assert conn.state == PLANNED and len(conn.path.switches) == 3
    sim = FabricSim(fab, plan.flows)
    (d,) = sim.send(*port(fab, "client"))
    assert (d.switch, d.port, d.vlans) == (*port(fab, "server"), ())
    (d,) = sim.send(*port(fab, "server"), Frame(eth_src="02:00:00:00:00:bb"))
    assert (d.switch, d.port, d.vlans) == (*port(fab, "client"), ())
    # A host with no request reaches nothing.
    assert sim.send(*port(fab, "intruder")) == []


def test_client_tags_are_carried_through_untouched():
    fab = ring(4, {"client": ("s1",), "server": ("s3",)})
    plan = make_plan(fab, resources_for([(att(fab, "client"), att(fab, "server"))]))
    (d,) = FabricSim(fab, plan.flows).send(*port(fab, "client"), Frame(vlans=[42]))
    assert d.vlans == (42,)


def test_same_switch_wire_needs_no_tag():
    fab = ring(2, {"client": ("s1",), "server": ("s1",)})
    plan = make_plan(fab, resources_for([(att(fab, "client"), att(fab, "server"))]))
    (conn,) = plan.connections.values()
    assert conn.path.switches == ("s1",) and conn.tags == ()
    flows = [f for f in plan.flows["s1"] if f.cookie != PIPELINE_COOKIE]
    assert all("push_vlan" not in [a[0] for a in f.actions] for f in flows)
    (d,) = FabricSim(fab, plan.flows).send(*port(fab, "client"))
    assert (d.switch, d.port) == port(fab, "server")


def test_every_flow_of_a_wire_carries_its_cookie():
    fab = ring(4, {"client": ("s1",), "server": ("s3",)})
    plan = make_plan(fab, resources_for([(att(fab, "client"), att(fab, "server"))]))
    cookie = wire_cookie("default/c0/nsm-1")
    wire = [f for flows in plan.flows.values() for f in flows if f.cookie != PIPELINE_COOKIE]
    assert wire and {f.cookie for f in wire} == {cookie}
    # Ingress, transit, egress per direction; at each end its IPv4 and IPv6 frames are committed to
    # conntrack where they enter and where they are delivered (ready for a policy to come).
    assert len(wire) == 2 * 3 + 2 * 4


def test_link_down_moves_the_wire_and_keeps_delivering():
    fab = ring(4, {"client": ("s1",), "server": ("s3",)})
    res = resources_for([(att(fab, "client"), att(fab, "server"))])
    first = make_plan(fab, res)
    (conn,) = first.connections.values()
    cut = conn.path.links[0].name
    second = make_plan(fab, res, FabricState(down_links=frozenset({cut})), first)
    (moved,) = second.connections.values()
    assert moved.state == PLANNED and cut not in {link.name for link in moved.path.links}
    (d,) = FabricSim(fab, second.flows).send(*port(fab, "client"))
    assert (d.switch, d.port) == port(fab, "server")
    # The link returns: the wire stays where it is (no flap).
    third = make_plan(fab, res, FabricState(), second)
    assert third.connections[moved.id].path == moved.path
    assert third.flows == second.flows


def test_no_path_is_reported():
    fab = ring(4, {"client": ("s1",), "server": ("s3",)})
    res = resources_for([(att(fab, "client"), att(fab, "server"))])
    down = frozenset(link.name for link in fab.links if "s2" in (link.a, link.b) or "s4" in (link.a, link.b))
    plan = make_plan(fab, res, FabricState(down_links=down))
    (conn,) = plan.connections.values()
    assert conn.state == FAILED and "no path" in conn.reason
    assert all(f.cookie == PIPELINE_COOKIE for flows in plan.flows.values() for f in flows)


def test_tag_space_exhaustion_is_an_admission_error_not_a_clash():
    hosts = {f"c{i}": ("s1",) for i in range(4)} | {f"e{i}": ("s2",) for i in range(4)}
    fab = ring(2, hosts, tag_range=(10, 12))
    pairs = [(att(fab, f"c{i}"), att(fab, f"e{i}")) for i in range(4)]
    plan = make_plan(fab, resources_for(pairs))
    ok = [c for c in plan.connections.values() if c.state == PLANNED]
    bad = [c for c in plan.connections.values() if c.state == FAILED]
    # Two parallel ring links between s1 and s2 collapse to one path; 3 tags on it.
    assert len(ok) == 3 and len(bad) == 1 and "no free tag" in bad[0].reason
    tags = [dict(c.tags) for c in ok]
    link = ok[0].path.links[0].name
    assert len({t[link] for t in tags}) == 3
    sim = FabricSim(fab, plan.flows)
    for c in ok:
        i = c.connection.client[1:]
        (d,) = sim.send(*port(fab, f"c{i}"))
        assert (d.switch, d.port) == port(fab, f"e{i}")


def test_unknown_port_fails_the_connection_with_its_name():
    fab = ring(2, {"client": ("s1",)})
    plan = make_plan(fab, resources_for([(att(fab, "client"), Attachment("s2", "nowhere"))]))
    (conn,) = plan.connections.values()
    assert conn.state == FAILED and "nowhere" in conn.reason


def test_live_port_numbers_override_declared_ones():
    fab = ring(2, {"client": ("s1",), "server": ("s2",)})
    a, b = att(fab, "client"), att(fab, "server")
    plan = make_plan(fab, resources_for([(a, b)]), FabricState(ports={(b.switch, b.port): 77}))
    (d,) = FabricSim(fab, plan.flows).send(*port(fab, "client"))
    assert (d.switch, d.port) == ("s2", 77)


def test_pipeline_rejects_flows_that_do_not_fit_their_table():
    with pytest.raises(PipelineError):
        FlowSpec.make(Table.FORWARD, 1, {"eth_dst": "02:00:00:00:00:01"})
    with pytest.raises(PipelineError):
        FlowSpec.make(Table.FORWARD, 1, {}, goto=Table.CLASSIFY)
    with pytest.raises(PipelineError):
        FlowSpec.make(7, 1, {})
    with pytest.raises(PipelineError, match="may not"):
        FlowSpec.make(Table.FORWARD, 1, {}, [("conjunction", 1, 1, 2)])


def test_make_builds_the_flow_the_constructor_does():
    # make sets the fields past the frozen dataclass's __init__: equal, hashed and shown alike.
    actions = [("pop_vlan",), ("output", 3)]
    made = FlowSpec.make(Table.FORWARD, 1000, {"vlan_vid": 0x1005, "in_port": 2}, actions, cookie=7, meter=9)
    built = FlowSpec(1, 1000, (("in_port", 2), ("vlan_vid", 0x1005)), tuple(actions), None, 7, 9)
    assert made == built and hash(made) == hash(built) and repr(made) == repr(built)
    assert vars(made) == vars(built) and list(vars(made)) == list(vars(built))
    read = FlowSpec.on_sorted(1, 1000, built.match, tuple(actions), None, 7, 9)  # the decoder's
    assert vars(read) == vars(built) and list(vars(read)) == list(vars(built))
    with pytest.raises(AttributeError):
        made.priority = 1
    with pytest.raises(PipelineError):
        FlowSpec.on_sorted(1, 1000, (("ipv4_src", "10.0.0.1"),), (), None, 7, None)  # not in FORWARD


def test_replanning_is_idempotent_and_diff_is_empty_the_second_time():
    fab = ring(4, {f"c{i}": ("s1",) for i in range(3)} | {f"e{i}": ("s3",) for i in range(3)})
    res = resources_for([(att(fab, f"c{i}"), att(fab, f"e{i}")) for i in range(3)])
    first = make_plan(fab, res)
    second = make_plan(fab, res, previous=first)
    assert first.flows == second.flows
    fresh = make_plan(fab, res)
    assert fresh.flows == first.flows  # a restarted controller computes the same flows
    for flows in first.flows.values():
        after = apply(set(), diff(flows, set()))
        assert diff(flows, after).size == 0


def random_fabric(draw):
    n = draw(st.integers(2, 7))
    g = nx.connected_watts_strogatz_graph(n, min(2, n - 1), 0.5, seed=draw(st.integers(0, 10_000))) \
        if n > 2 else nx.path_graph(n)
    switches = tuple(Switch(f"s{i}", i + 1) for i in range(n))
    ports = {i: 1 for i in range(n)}
    links = []
    for u, v in sorted(g.edges()):
        links.append(Link(f"s{u}", ports[u], f"s{v}", ports[v], cost=draw(st.integers(1, 5))))
        ports[u] += 1
        ports[v] += 1
    hosts = []
    for h in range(draw(st.integers(2, 8))):
        sw = draw(st.integers(0, n - 1))
        hosts.append(Host(f"h{h}", (HostInterface(f"h{h}", "eth0", f"s{sw}", 100 + h, f"s{sw}-h{h}"),)))
    return Fabric("random", switches, tuple(links), tuple(hosts))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_property_every_wire_delivers_exactly_to_its_other_end(data):
    fab = random_fabric(data.draw)
    names = [h.name for h in fab.hosts]
    half = len(names) // 2
    pairs = [(att(fab, names[i]), att(fab, names[i + half])) for i in range(half)]
    plan = make_plan(fab, resources_for(pairs))
    sim = FabricSim(fab, plan.flows)
    for i in range(half):
        for src, dst in ((names[i], names[i + half]), (names[i + half], names[i])):
            deliveries = sim.send(*port(fab, src))
            assert [(d.switch, d.port, d.vlans) for d in deliveries] == [(*port(fab, dst), ())]
    for extra in names[2 * half:]:
        assert sim.send(*port(fab, extra)) == []
    # Any down link: every wire still delivers or reports no path.
    if fab.links:
        cut = data.draw(st.sampled_from(fab.links)).name
        moved = make_plan(fab, resources_for(pairs), FabricState(down_links=frozenset({cut})), plan)
        sim = FabricSim(Fabric(fab.name, fab.switches, tuple(lk for lk in fab.links if lk.name != cut),
                               fab.hosts), moved.flows)
        for c in moved.connections.values():
            if c.state == PLANNED:
                deliveries = sim.send(*port(fab, names[int(c.connection.client[1:])]))
                assert len(deliveries) == 1


def test_pipelines_stand_while_their_switches_do():
    # Base flows follow from the fabric alone: a link going down leaves every switch's as it was
    # (the same objects, so the switch sessions update only the touched wires), a switch going down
    # takes only its own away.
    fab = ring(4, {"client": ("s1",), "server": ("s3",)})
    res = resources_for([(att(fab, "client"), att(fab, "server"))])
    first = make_plan(fab, res)
    cut = fab.links[0].name
    second = make_plan(fab, res, FabricState(down_links=frozenset({cut})), first)
    assert second.pipeline is first.pipeline
    third = make_plan(fab, res, FabricState(down_switches=frozenset({"s2"})), second)
    assert "s2" not in third.pipeline
    assert all(third.pipeline[sw] is first.pipeline[sw] for sw in third.pipeline)
    assert third.flows == make_plan(fab, res, FabricState(down_switches=frozenset({"s2"}))).flows
