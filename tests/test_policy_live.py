"""MultiNetworkPolicy while traffic runs: connections up before a policy keep going, a policy edit
programs only its wires, and what cannot be enforced fails that one connection with a reason."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ryu_nsm.core import router
from ryu_nsm.core.controller import Controller
from ryu_nsm.core.flowspec import Table
from ryu_nsm.core.planner import FAILED, PLANNED, make_plan
from ryu_nsm.core.policy_model import (
    IPBlock,
    LabelSelector,
    MultiNetworkPolicy,
    NetworkRef,
    Peer,
    PolicyInputs,
    PolicyPort,
    PolicyRule,
    Workload,
)
from ryu_nsm.core.values import FrozenMap

from .fabrics import ring
from .flowsim import FabricSim, Frame
from .test_controller import FakeFabric
from .test_planner import att, port, resources_for

SVC = NetworkRef("default", "svc")
ALLOW_80 = MultiNetworkPolicy("web", "default", (SVC,), LabelSelector(), ("Ingress",),
                              (PolicyRule((), (PolicyPort("TCP", 80),)),))
DENY_ALL = MultiNetworkPolicy("web", "default", (SVC,), LabelSelector(), ("Ingress",))


def _tcp(sport: int, dport: int = 80) -> Frame:
    return Frame(eth_type=0x0800, src_ip="10.0.0.1", dst_ip="10.0.0.2", ip_proto=6, src_port=sport,
                 dst_port=dport)


def _with(resources, *policies, pods=()):
    return replace(resources, policy=PolicyInputs(tuple(policies), FrozenMap(dict(pods))))


def _delivered(sim: FabricSim, end, frame: Frame) -> list:
    return [(d.switch, d.port) for d in sim.send(*end, frame)]


@pytest.mark.parametrize("server_on", ["s1", "s3"])
def test_a_connection_up_before_a_policy_keeps_going_and_new_ones_obey_it(server_on):
    fab = ring(4, {"client": ("s1",), "server": (server_on,)})
    bare = resources_for([(att(fab, "client"), att(fab, "server"))])
    c_end, e_end = port(fab, "client"), port(fab, "server")
    plans = [make_plan(fab, bare)]
    plans.append(make_plan(fab, _with(bare, ALLOW_80), previous=plans[-1]))
    plans.append(make_plan(fab, _with(bare, DENY_ALL), previous=plans[-1]))
    up = _tcp(40000)
    conntrack: dict = {}
    for i, plan in enumerate(plans):
        (pc,) = plan.connections.values()
        assert pc.state == PLANNED and pc.zone == plans[0].connections[pc.id].zone
        sim = FabricSim(fab, plan.flows)
        sim.conntrack = conntrack  # one datapath's conntrack, across the changes
        if i == 0:  # opened before any policy
            assert _delivered(sim, c_end, up) == [e_end]
        assert _delivered(sim, c_end, up) == [e_end], f"plan {i}: established, client → server"
        assert _delivered(sim, e_end, up.reply()) == [c_end], f"plan {i}: established, server → client"
    # Under the deny-all policy a new connection is refused, on any port.
    assert _delivered(sim, c_end, _tcp(40001)) == []
    assert _delivered(sim, c_end, _tcp(40002, 81)) == []


def test_a_wire_without_policy_pays_eight_conntrack_flows():
    fab = ring(4, {"client": ("s1",), "server": ("s3",)})
    (pc,) = make_plan(fab, resources_for([(att(fab, "client"), att(fab, "server"))])).connections.values()
    commits = [f for _, f in pc.flows if any(a[0] == "ct_commit" for a in f.actions)]
    # IPv4 and IPv6, where frames enter at each end and where they are delivered there.
    assert len(commits) == 8 and len(pc.flows) == 6 + 8
    assert {f.table for f in commits} == {Table.CLASSIFY, Table.FORWARD}


def test_one_policy_edit_programs_only_its_wire_and_never_cuts_a_connection():
    fab = ring(4, {"client": ("s1", "s1"), "server": ("s3", "s3")})
    bare = resources_for([(att(fab, "client", 0), att(fab, "server", 0)),
                          (att(fab, "client", 1), att(fab, "server", 1))])
    pods = {("default", "c0"): Workload(FrozenMap(app="web"))}
    egress = MultiNetworkPolicy("out", "default", (SVC,), LabelSelector(FrozenMap(app="web")), ("Egress",),
                                egress=(PolicyRule((), (PolicyPort("TCP", 80),)),))
    ctl, switches = Controller(fab), FakeFabric(fab)
    switches.connect_all(ctl)
    switches.run(ctl, ctl.set_resources(bare, 1.0))
    c_end, e_end = port(fab, "client", 0), port(fab, "server", 0)
    conntrack: dict = {}
    opened = _tcp(40000, 22)  # a port the policy will not allow: only new connections obey it

    def still_up(tables) -> None:
        sim = FabricSim(fab, tables)
        sim.conntrack = conntrack
        assert _delivered(sim, c_end, opened) == [e_end] and _delivered(sim, e_end, opened.reply()) == [c_end]

    still_up(switches.tables)
    switches.sent.clear()
    before = {sw: set(flows) for sw, flows in switches.tables.items()}
    switches.run(ctl, ctl.set_resources(_with(bare, egress, pods=pods), 2.0), 2.0, check=still_up)
    changed = {f for sw, flows in switches.tables.items() for f in flows ^ before[sw]}
    wire0 = next(pc for pc in ctl.plan.connections.values() if pc.connection.client == "c0")
    assert {f.cookie for f in changed} == {wire0.flows[0][1].cookie}  # the other wire: not a flow
    # At the client's switch only: its gate is added (non-IP drop, ARP, ND ×4, est/rel ×2, table
    # misses ×2, the rule ×2 families, ingress unrestricted ×2) with its frames' way on in
    # WIRE_ENTRY; then its CLASSIFY flows (non-IP, IPv4, IPv6) are pointed at the gate.
    assert switches.sent == [("add", "s1", 14), ("modify", "s1", 3)]
    sim = FabricSim(fab, switches.tables)
    sim.conntrack = conntrack
    assert _delivered(sim, c_end, _tcp(40001, 22)) == []  # new, on a port not allowed
    assert _delivered(sim, c_end, _tcp(40002, 80)) == [e_end]


def test_more_rules_than_priorities_fail_that_connection_only():
    fab = ring(4, {"client": ("s1", "s1"), "server": ("s3", "s3")})
    bare = resources_for([(att(fab, "client", 0), att(fab, "server", 0)),
                          (att(fab, "client", 1), att(fab, "server", 1))])
    many = tuple(PolicyRule((Peer(ip_block=IPBlock(_net(f"10.{i // 250}.{i % 250}.0/24"))),))
                 for i in range(router.MAX_RULES + 1))
    wide = MultiNetworkPolicy("wide", "default", (SVC,), LabelSelector(FrozenMap(app="web")), ("Ingress",),
                              many)
    endpoints = {("default", "e0"): Workload(FrozenMap(app="web"))}
    policy = PolicyInputs((wide,), endpoints=FrozenMap(endpoints))
    plan = make_plan(fab, replace(bare, policy=policy))
    by_endpoint = {pc.connection.endpoint: pc for pc in plan.connections.values()}
    assert by_endpoint["e0"].state == FAILED and not by_endpoint["e0"].flows
    assert by_endpoint["e0"].reason == (
        "policy: 1001 ingress rules apply to client → endpoint connections on this wire; at most 1000 "
        "can be enforced")
    assert by_endpoint["e1"].state == PLANNED


def test_running_out_of_conntrack_zones_fails_that_connection_only(monkeypatch):
    monkeypatch.setattr(router, "ZONE_SPACE", (1, 1))
    fab = ring(4, {"client": ("s1", "s1"), "server": ("s3", "s3")})
    bare = resources_for([(att(fab, "client", 0), att(fab, "server", 0)),
                          (att(fab, "client", 1), att(fab, "server", 1))])
    plan = make_plan(fab, bare)
    states = sorted((pc.state, pc.reason) for pc in plan.connections.values())
    assert states == [(FAILED, "no free conntrack zone: all 1 are in use"), (PLANNED, "")]
    failed = next(pc for pc in plan.connections.values() if pc.state == FAILED)
    assert not failed.flows and not failed.tags


def _net(text: str):
    import ipaddress

    return ipaddress.ip_network(text)


def test_rule_and_drop_counters_reach_status_and_metrics():
    from ryu_nsm.observe.metrics import exposition
    from ryu_nsm.observe.report import render_text, status_json

    fab = ring(4, {"client": ("s1",), "server": ("s3",)})
    bare = resources_for([(att(fab, "client"), att(fab, "server"))])
    ctl, switches = Controller(fab), FakeFabric(fab)
    switches.connect_all(ctl)
    switches.run(ctl, ctl.set_resources(_with(bare, ALLOW_80), 1.0))
    reads = {r.switch: r.tables for r in ctl.counters_due()}
    assert reads["s1"] == (0, 2, 3) and reads["s3"] == (0, 2, 3) and reads["s2"] == (0,)
    sim = FabricSim(fab, switches.tables)
    c_end, e_end = port(fab, "client"), port(fab, "server")
    for sport in (40000, 40001):  # two connections to port 80: one packet each through the rule
        assert _delivered(sim, c_end, _tcp(sport)) == [e_end]
        assert _delivered(sim, c_end, _tcp(sport)) == [e_end]  # established: not the rule's
    for dport in (22, 23, 81):
        assert _delivered(sim, c_end, _tcp(41000, dport)) == []
    for switch, tables in reads.items():
        for table in tables:
            ctl.counters_read(switch, [(f, 0, sim.hits.get((switch, f), 0)) for f in switches.tables[switch]
                                       if f.table == table], 2.0)
    (entry,) = status_json(ctl.status())["connections"]
    endpoint = "endpoint default/e0"
    # The policy selects both ends (podSelector {}): each is isolated for ingress.
    rules = {(r["policy"], r["rule"], r["direction"], r["workload"]): r["packets"]
             for r in entry["policy"]["rules"]}
    assert rules == {("default/web", "ingress[0]", "ingress", endpoint): 2,
                     ("default/web", "ingress[0]", "ingress", "client default/c0"): 0}
    dropped = {(d["workload"], d["direction"]): d["packets"] for d in entry["policy"]["dropped"]}
    assert dropped == {("client default/c0", "egress"): 0, (endpoint, "ingress"): 3,
                       (endpoint, "egress"): 0, ("client default/c0", "ingress"): 0}
    text = render_text(status_json(ctl.status()))
    assert f"default/web ingress[0] for {endpoint}: allowed 2 packets" in text
    assert f"{endpoint} isolated for ingress: dropped 3 packets" in text
    metrics = exposition(lambda: status_json(ctl.status())).decode()
    assert ('ryu_nsm_policy_rule_packets_total{direction="ingress",policy="default/web",rule="ingress[0]",'
            f'workload="{endpoint}"}} 2.0') in metrics
    assert f'ryu_nsm_policy_dropped_packets_total{{direction="ingress",workload="{endpoint}"}} 3.0' in metrics


def test_a_policed_connection_says_so_on_its_networkserviceconnection():
    import jsonschema

    from ryu_nsm.k8s.connection_status import desired_connections, short_reason
    from ryu_nsm.observe.report import connection_entry

    from .test_deploy import our_schema

    fab = ring(4, {"client": ("s1",), "server": ("s3",)})
    bare = resources_for([(att(fab, "client"), att(fab, "server"))])
    (pc,) = make_plan(fab, _with(bare, ALLOW_80)).connections.values()
    status = {"connections": [connection_entry(pc, "up")]}
    (obj,) = desired_connections(status, "2024-01-01T00:00:00Z").values()
    assert obj["status"]["policy"] == {"policies": ["default/web"], "governedBy": [
        "default/web isolates client default/c0 for Ingress",
        "default/web isolates endpoint default/e0 for Ingress"]}
    (isolated,) = [c for c in obj["status"]["conditions"] if c["type"] == "PolicyIsolated"]
    assert (isolated["status"], isolated["reason"]) == ("True", "Isolated")
    jsonschema.validate(obj, our_schema())
    assert short_reason("failed", "no free conntrack zone: all 1 are in use") == "ZoneSpaceExhausted"
    assert short_reason("failed", "policy: 1001 ingress rules apply to …") == "PolicyTooLarge"
