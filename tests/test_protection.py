"""Protected connections heal a cut of any primary link in the data plane, before the controller acts.

A fast-failover group at each end takes the backup when the primary's first link is down; at every
transit switch one cranks the frame back towards the end it entered at, which puts it on the backup.
Only the plan's flows and groups are simulated here: no controller takes part.
"""

from dataclasses import replace

import pytest

from ryu_nsm.core.flowspec import is_our_group
from ryu_nsm.core.model import ClientRequest, Endpoint, FrozenMap, NetworkService, Resources
from ryu_nsm.core.planner import PLANNED, make_plan
from ryu_nsm.qos.service_level import ServiceLevel

from .fabrics import ring
from .flowsim import FabricSim
from .test_controller import restarted
from .test_planner import att, resources_for


def protected_plan(protection="disjoint"):
    fabric = ring(4, {"client": ("s1",), "server": ("s2",)})
    client = next(h for h in fabric.hosts if h.name == "client").interfaces[0]
    server = next(h for h in fabric.hosts if h.name == "server").interfaces[0]
    level = ServiceLevel("safe", "svc", protection=protection, dscp=46) if protection != "none" else None
    resources = Resources((NetworkService("svc"),),
                          (Endpoint("server", services=("svc",), attachments=(server.attachment,)),),
                          (ClientRequest("client", "nsm-1", "svc", attachment=client.attachment),),
                          service_levels=(level,) if level else ())
    return fabric, client, server, make_plan(fabric, resources)


def deliveries(fabric, plan, start, down=()):
    sim = FabricSim(fabric, plan.flows, plan.groups, down)
    return [(d.switch, d.port, d.vlans) for d in sim.send(start.switch, start.port)]


def test_a_cut_primary_link_fails_over_in_the_data_plane_both_ways():
    fabric, client, server, plan = protected_plan()
    (pc,) = plan.connections.values()
    assert pc.state == PLANNED and pc.path.switches == ("s1", "s2")
    assert pc.backup.switches == ("s1", "s4", "s3", "s2")
    assert {sw for sw, _ in pc.groups} == {"s1", "s2"}
    assert pc.crank_tags == ()  # one link: the ends' groups cover it, nothing to crank back
    first = pc.path.links[0]
    for down in ((), ((first.a, first.a_port),)):
        assert deliveries(fabric, plan, client, down) == [(server.switch, server.port, ())]
        assert deliveries(fabric, plan, server, down) == [(client.switch, client.port, ())]


def test_without_protection_the_same_cut_loses_the_frames():
    fabric, client, server, plan = protected_plan("none")
    (pc,) = plan.connections.values()
    first = pc.path.links[0]
    assert not pc.groups
    assert deliveries(fabric, plan, client, ((first.a, first.a_port),)) == []


# A ring of seven: the protected wire c0 (s1 → s4) has a three-link primary s1–s2–s3–s4 and the backup
# s1–s7–s6–s5–s4. Wire c1 (s2 → s3) shares the primary's middle link, c2 (s1 → s4) all of it.
LONG = ("s1", "s2", "s3", "s4")
BACKUP = ("s1", "s7", "s6", "s5", "s4")


def long_plan(protected=True, previous=None, **ring_kw):
    fabric = ring(7, {"c0": ("s1",), "e0": ("s4",), "c1": ("s2",), "e1": ("s3",), "c2": ("s1",),
                      "e2": ("s4",)}, **ring_kw)
    resources = resources_for([(att(fabric, f"c{i}"), att(fabric, f"e{i}")) for i in range(3)])
    if protected:
        level = ServiceLevel("safe", "svc", client_selector=FrozenMap(n="0"), protection="disjoint", dscp=10)
        resources = replace(resources, service_levels=(level,))
    return fabric, make_plan(fabric, resources, previous=previous)


def host(fabric, name):
    return next(h for h in fabric.hosts if h.name == name).interfaces[0]


def cut(link):
    return ((link.a, link.a_port),)


def sent(fabric, plan, src, dst, down=()):
    """Where a frame from host ``src`` comes out, and the switches it crossed."""
    sim = FabricSim(fabric, plan.flows, plan.groups, down)
    start = host(fabric, src)
    return [((d.switch, d.port, d.vlans), d.hops) for d in sim.send(start.switch, start.port)]


def at(fabric, name):
    h = host(fabric, name)
    return (h.switch, h.port, ())


def test_the_long_fabric_has_a_three_link_primary_and_a_disjoint_backup():
    fabric, plan = long_plan()
    pc = plan.connections["default/c0/nsm-1"]
    assert pc.path.switches == LONG and pc.backup.switches == BACKUP
    # A group per switch each direction leaves along the primary: three each way.
    assert sorted(sw for sw, _ in pc.groups) == ["s1", "s2", "s2", "s3", "s3", "s4"]
    assert all(is_our_group(g.group_id) for _, g in pc.groups)
    assert [name for name, _ in pc.crank_tags] == [link.name for link in pc.path.links]


@pytest.mark.parametrize("hop", [0, 1, 2])
def test_a_cut_of_any_primary_link_heals_in_the_data_plane_both_ways(hop):
    fabric, plan = long_plan()
    pc = plan.connections["default/c0/nsm-1"]
    down = cut(pc.path.links[hop])
    # Each way: along the primary to the switch before the cut, cranked back to the end the frame
    # entered at (no crankback when the cut is the first link), then along the backup.
    for src, dst, primary, backup, before_cut in (("c0", "e0", LONG, BACKUP, hop),
                                                  ("e0", "c0", LONG[::-1], BACKUP[::-1], 2 - hop)):
        ((there, hops),) = sent(fabric, plan, src, dst, down)
        assert there == at(fabric, dst)
        assert hops == primary[:before_cut + 1] + primary[:before_cut][::-1] + backup[1:]


def test_uncut_frames_take_the_primary():
    fabric, plan = long_plan()
    assert sent(fabric, plan, "c0", "e0") == [(at(fabric, "e0"), LONG)]
    assert sent(fabric, plan, "e0", "c0") == [(at(fabric, "c0"), LONG[::-1])]


@pytest.mark.parametrize("hop", [0, 1, 2])
def test_without_protection_a_cut_of_any_primary_link_loses_the_frames(hop):
    fabric, plan = long_plan(protected=False)
    pc = plan.connections["default/c0/nsm-1"]
    assert pc.path.switches == LONG and not pc.groups and not pc.crank_tags
    down = cut(pc.path.links[hop])
    assert sent(fabric, plan, "c0", "e0", down) == []
    assert sent(fabric, plan, "e0", "c0", down) == []


def test_unrelated_wires_on_the_same_links_are_unaffected():
    fabric, plan = long_plan()
    pc = plan.connections["default/c0/nsm-1"]
    assert plan.connections["default/c2/nsm-1"].path.switches == LONG
    assert plan.connections["default/c1/nsm-1"].path.switches == ("s2", "s3")
    for src, dst in (("c1", "e1"), ("e1", "c1"), ("c2", "e2"), ("e2", "c2")):
        ((there, _),) = sent(fabric, plan, src, dst)
        assert there == at(fabric, dst)
    # A cut c1 does not cross leaves it alone; one it crosses loses its frames (it is unprotected),
    # and none of them ever reach another wire's end.
    for link in pc.path.links:
        crossed = link.name == "s2:1-s3:2"
        for src, dst in (("c1", "e1"), ("e1", "c1")):
            assert [there for there, _ in sent(fabric, plan, src, dst, cut(link))] == (
                [] if crossed else [at(fabric, dst)])
        assert sent(fabric, plan, "c2", "e2", cut(link)) == []  # unprotected c2 crosses every one


@pytest.mark.parametrize("hop", [0, 1, 2])
def test_while_cranked_back_each_link_direction_carries_one_direction_of_the_wire(hop):
    # So a healed guaranteed wire stays within what admission reserved for it, each way.
    fabric, plan = long_plan()
    down = cut(plan.connections["default/c0/nsm-1"].path.links[hop])
    users: dict[tuple[str, int], list[str]] = {}
    for src in ("c0", "e0"):
        sim = FabricSim(fabric, plan.flows, plan.groups, down)
        start = host(fabric, src)
        assert len(sim.send(start.switch, start.port)) == 1
        for switch, port, _ in sim.egress:
            users.setdefault((switch, port), []).append(src)
    assert users and all(len(sources) == 1 for sources in users.values()), users


def test_tags_are_unique_on_every_link_with_crankback_in_a_crowded_tag_space():
    # Eight tags per link for three wires' primary, backup and crankback tags: hashes collide.
    fabric, plan = long_plan(tag_range=(2, 9))
    held: dict[str, list[int]] = {}
    for pc in plan.connections.values():
        assert pc.state == PLANNED
        for link, tag in pc.tags + pc.backup_tags + pc.crank_tags:
            held.setdefault(link, []).append(tag)
    assert all(len(tags) == len(set(tags)) for tags in held.values()), held
    pc = plan.connections["default/c0/nsm-1"]
    for link in pc.path.links:
        ((there, _),) = sent(fabric, plan, "c0", "e0", cut(link))
        assert there == at(fabric, "e0")


def test_planning_again_gives_the_same_flows_groups_and_tags():
    fabric, plan = long_plan()
    for other in (long_plan()[1], long_plan(previous=plan)[1],
                  long_plan(previous=replace(plan, basis=None))[1]):  # the last from the connections alone
        assert other.flows == plan.flows and other.groups == plan.groups
        assert other.connections == plan.connections  # tags, backup tags and crankback tags too


def test_a_plan_from_the_connections_alone_keeps_tags_chosen_in_arrival_order():
    # With eight tags per link, which wire got which tag depends on the order the wires arrived:
    # planning everything anew from the previous connections must keep them, crankback tags included.
    fabric = ring(7, {"c0": ("s1",), "e0": ("s4",), "c1": ("s2",), "e1": ("s3",), "c2": ("s1",),
                      "e2": ("s4",)}, tag_range=(2, 9))
    full = resources_for([(att(fabric, f"c{i}"), att(fabric, f"e{i}")) for i in range(3)])
    levels = (ServiceLevel("safe", "svc", protection="disjoint"),)
    plan = None
    for n in range(1, 4):  # c2, then c1, then c0: the reverse of the order planning anew takes
        part = replace(full, requests=full.requests[-n:], service_levels=levels)
        plan = make_plan(fabric, part, previous=plan)
    whole = make_plan(fabric, replace(full, service_levels=levels), previous=replace(plan, basis=None))
    assert whole.connections == plan.connections
    assert whole.flows == plan.flows and whole.groups == plan.groups


def test_a_restarted_controller_keeps_a_protected_long_wire_as_it_is():
    fabric, plan = long_plan()
    restarted(fabric, plan.basis.resources)
