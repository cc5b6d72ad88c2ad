"""Egress queues for guaranteed wires: on links that declare a queue, a guaranteed wire's frames leave
every fabric port in it, on the primary, on the backup and when cranked back; other wires' do not.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from ryu_nsm.core.model import FrozenMap
from ryu_nsm.core.planner import PLANNED, make_plan
from ryu_nsm.qos.service_level import ServiceLevel
from ryu_nsm.sources.topology import TopologyError, load_topology

from .fabrics import ring
from .flowsim import FabricSim
from .test_planner import att, resources_for
from .test_protection import host

QUEUE = 3
M = 1_000_000


def plan_on(fabric):
    """c0 guaranteed and protected, c1 best effort, c2 guaranteed (s1 → s4, s2 → s3, s1 → s4)."""
    resources = resources_for([(att(fabric, f"c{i}"), att(fabric, f"e{i}")) for i in range(3)])
    levels = (ServiceLevel("gold", "svc", client_selector=FrozenMap(n="0"), guaranteed_bandwidth=10 * M,
                           protection="disjoint"),
              ServiceLevel("silver", "svc", client_selector=FrozenMap(n="2"), guaranteed_bandwidth=10 * M))
    plan = make_plan(fabric, replace(resources, service_levels=levels))
    assert {pc.state for pc in plan.connections.values()} == {PLANNED}
    return plan


def seven(**link_kw):
    return ring(7, {"c0": ("s1",), "e0": ("s4",), "c1": ("s2",), "e1": ("s3",), "c2": ("s1",),
                    "e2": ("s4",)}, **link_kw)


def egress(fabric, plan, src, down=()):
    """(switch, port, queue) of every output a frame from ``src`` takes, and where it came out."""
    sim = FabricSim(fabric, plan.flows, plan.groups, down)
    start = host(fabric, src)
    delivered = sim.send(start.switch, start.port)
    return sim.egress, [(d.switch, d.port) for d in delivered]


def link_ports(fabric):
    return {(link.a, link.a_port) for link in fabric.links} | {(link.b, link.b_port) for link in fabric.links}


@pytest.mark.parametrize("src,dst", [("c0", "e0"), ("e0", "c0"), ("c2", "e2"), ("e2", "c2")])
def test_guaranteed_frames_leave_every_link_in_its_queue_and_host_ports_in_none(src, dst):
    fabric = seven(queue=QUEUE)
    plan = plan_on(fabric)
    outputs, delivered = egress(fabric, plan, src)
    end = host(fabric, dst)
    assert delivered == [(end.switch, end.port)]
    on_links = [(sw, port, queue) for sw, port, queue in outputs if (sw, port) in link_ports(fabric)]
    assert len(on_links) == 3  # s1–s2–s3–s4
    assert {queue for _, _, queue in on_links} == {QUEUE}
    assert [queue for sw, port, queue in outputs if (sw, port) == (end.switch, end.port)] == [None]


def test_best_effort_frames_take_no_queue():
    fabric = seven(queue=QUEUE)
    outputs, delivered = egress(fabric, plan_on(fabric), "c1")
    assert delivered == [(host(fabric, "e1").switch, host(fabric, "e1").port)]
    assert outputs and {queue for _, _, queue in outputs} == {None}


@pytest.mark.parametrize("hop", [0, 1, 2])
@pytest.mark.parametrize("src", ["c0", "e0"])
def test_healed_frames_stay_in_the_queue_on_crankback_and_backup(hop, src):
    fabric = seven(queue=QUEUE)
    plan = plan_on(fabric)
    link = plan.connections["default/c0/nsm-1"].path.links[hop]
    outputs, delivered = egress(fabric, plan, src, down=((link.a, link.a_port),))
    assert len(delivered) == 1
    on_links = [queue for sw, port, queue in outputs if (sw, port) in link_ports(fabric)]
    assert len(on_links) >= 4 and set(on_links) == {QUEUE}  # the 4-link backup at least


def test_links_without_a_queue_get_no_set_queue():
    fabric = seven()
    plan = plan_on(fabric)
    assert not any(action[0] == "set_queue" for flows in plan.flows.values() for flow in flows
                   for action in flow.actions)
    assert not any(action[0] == "set_queue" for groups in plan.groups.values() for group in groups
                   for _, actions in group.buckets for action in actions)


def test_a_queue_declared_on_some_links_only_applies_there():
    fabric = seven(queue=QUEUE)
    first = fabric.links[0]  # s1:1-s2:2, on c0's and c2's primary
    fabric = replace(fabric, links=(replace(first, queue=None), *fabric.links[1:]))
    outputs, _ = egress(fabric, plan_on(fabric), "c2")
    queues = {(sw, port): queue for sw, port, queue in outputs}
    assert queues[("s1", first.a_port)] is None
    assert queues[("s2", 1)] == queues[("s3", 1)] == QUEUE


def test_topology_files_declare_queues_per_link_or_by_default(tmp_path):
    path = tmp_path / "fabric.yaml"
    path.write_text("defaults: {queue: 1}\nswitches: [s1, s2, s3]\n"
                    "links: [[s1, s2], {a: s2, b: s3, queue: 7}]\n")
    assert [link.queue for link in load_topology(path).links] == [1, 7]
    path.write_text("switches: [s1, s2]\nlinks: [[s1, s2]]\n")
    assert [link.queue for link in load_topology(path).links] == [None]
    for bad in ("-1", "one", "4294967295", "true"):
        path.write_text(f"switches: [s1, s2]\nlinks: [{{a: s1, b: s2, queue: {bad}}}]\n")
        with pytest.raises(TopologyError, match=r"links\[0\]\.queue: expected an OpenFlow queue id"):
            load_topology(path)


def test_reservations_name_the_queue_that_must_hold_them():
    fabric = seven(queue=QUEUE)
    reservations = plan_on(fabric).reservations()
    assert reservations and {r["queue"] for r in reservations} == {QUEUE}
    assert "queue" not in plan_on(seven()).reservations()[0]
