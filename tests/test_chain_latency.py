"""Chain-wide latency bounds (``chainLatency: true``): planned, admitted, kept by the closed loop, reported.

A client's request is served by a chain of wires (client → firewall → … → last endpoint); each service
function's own request continues it. The level selected for the client's wire bounds the sum of the
declared link latency of every wire of the chain; later wires keep their own levels too.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ryu_nsm.core.controller import Controller
from ryu_nsm.core.fabric import Fabric, Host, HostInterface, Link, Switch
from ryu_nsm.core.model import (
    ClientRequest,
    Destination,
    Endpoint,
    FrozenMap,
    Match,
    NetworkService,
    Resources,
)
from ryu_nsm.core.planner import FAILED, PLANNED, FabricState, make_plan
from ryu_nsm.observe.report import connection_entry, render_text, status_json
from ryu_nsm.qos.routing import meets_latency
from ryu_nsm.qos.service_level import ServiceLevel

from .flowsim import FabricSim
from .test_admission import fabrics, simple_paths
from .test_controller import FakeFabric
from .test_measure import Probed, run

MS = 0.001
M = 1_000_000
CLIENT, FW, GW = "default/client/nsm-1", "default/fw/nsm-1", "default/gw/nsm-1"


def fabric_of(links: list[tuple], hosts: dict[str, tuple[str, ...]]) -> Fabric:
    """Switches named in ``links`` (a, b, latency, cost[, capacity]); ``hosts`` maps a host to the
    switches of its interfaces (a service function has two: in, then out), ports from 20 up."""
    ports: Counter[str] = Counter()
    made = []
    for a, b, latency, cost, *capacity in links:
        ports[a] += 1
        ports[b] += 1
        made.append(Link(a, ports[a], b, ports[b], capacity=capacity[0] if capacity else 1e9,
                         latency=latency, cost=cost))
    names = sorted({s for link in made for s in (link.a, link.b)}, key=lambda s: int(s[1:]))
    host_port: Counter[str] = Counter()
    made_hosts = []
    for host, switches in hosts.items():
        interfaces = []
        for index, switch in enumerate(switches):
            port = 20 + host_port[switch]
            host_port[switch] += 1
            interfaces.append(HostInterface(host, f"eth{index}", switch, port, f"{switch}-{host}{index}"))
        made_hosts.append(Host(host, tuple(interfaces)))
    return Fabric("chain", tuple(Switch(s, int(s[1:])) for s in names), tuple(made), tuple(made_hosts))


def interface(fabric: Fabric, host: str, index: int = 0) -> HostInterface:
    return next(h for h in fabric.hosts if h.name == host).interfaces[index]


def chain_resources(fabric: Fabric, functions: list[str], clients: dict[str, FrozenMap],
                    levels: tuple[ServiceLevel, ...] = (), function_labels: dict | None = None,
                    last: str = "gw") -> Resources:
    """Network service ``svc``: every client → functions[0] → … → ``last`` (NSM composition by labels,
    as in examples/demo-chain). A function serves on every interface but its last, from which its Pod
    asks again, labelled app=<name>."""
    hops = [*functions, last]
    matches = tuple(Match(FrozenMap(app=here), (Destination(FrozenMap(app=there)),))
                    for here, there in zip(hops, hops[1:], strict=False))
    matches += (Match(FrozenMap(), (Destination(FrozenMap(app=hops[0])),)),)

    def serving(name: str) -> tuple:
        interfaces = next(h for h in fabric.hosts if h.name == name).interfaces
        return tuple(i.attachment for i in (interfaces[:-1] if name in functions else interfaces))

    endpoints = tuple(Endpoint(name, services=("svc",), service_labels=FrozenMap(svc=FrozenMap(app=name)),
                               attachments=serving(name)) for name in hops)
    requests = [ClientRequest(name, "nsm-1", "svc", labels=labels,
                              attachment=interface(fabric, name).attachment)
                for name, labels in clients.items()]
    for name in functions:
        labels = {"app": name, **((function_labels or {}).get(name, {}))}
        out = next(h for h in fabric.hosts if h.name == name).interfaces[-1]
        requests.append(ClientRequest(name, "nsm-1", "svc", labels=FrozenMap(labels),
                                      attachment=out.attachment))
    return Resources((NetworkService("svc", matches=matches),), endpoints, tuple(requests),
                     service_levels=levels)


def chain_level(bound: float, name: str = "gold", selector: dict | None = None, **kw) -> ServiceLevel:
    selector = FrozenMap(selector or {"tier": "gold"})
    return ServiceLevel(name, "svc", client_selector=selector, max_latency=bound, chain_latency=True, **kw)


def switches(plan, cid: str) -> tuple[str, ...]:
    pc = plan.connections[cid]
    assert pc.state == PLANNED, pc.reason
    return pc.path.switches


# client (s1) → fw (s2) → gw (s3). Each wire has a cheap slow link and a dear fast detour; the first
# detour is the cheaper one (4 against 6).
TWO_WIRES = [("s1", "s2", 3 * MS, 1), ("s1", "s4", 0.5 * MS, 2), ("s4", "s2", 0.5 * MS, 2),
             ("s2", "s3", 3 * MS, 1), ("s2", "s5", 1 * MS, 3), ("s5", "s3", 1 * MS, 3)]
HOSTS = {"client": ("s1",), "fw": ("s2", "s2"), "gw": ("s3",)}


def two_wires(bound: float | None, levels: tuple[ServiceLevel, ...] = (), fw_labels: dict | None = None):
    fabric = fabric_of(TWO_WIRES, HOSTS)
    if bound is not None:
        levels = (chain_level(bound), *levels)
    resources = chain_resources(fabric, ["fw"], {"client": FrozenMap(tier="gold")}, levels,
                                {"fw": fw_labels or {}})
    return fabric, resources


def test_a_chain_takes_the_cheapest_set_of_paths_within_its_bound():
    fabric, resources = two_wires(None)
    plan = make_plan(fabric, resources)
    # Without a bound each wire takes its cheapest path: 6 ms in all.
    assert (switches(plan, CLIENT), switches(plan, FW)) == (("s1", "s2"), ("s2", "s3"))

    fabric, resources = two_wires(5 * MS)
    plan = make_plan(fabric, resources)
    # Within 5 ms one detour is enough, and the client's is the cheaper one.
    assert (switches(plan, CLIENT), switches(plan, FW)) == (("s1", "s4", "s2"), ("s2", "s3"))
    head = plan.connections[CLIENT]
    assert head.chain.wires == (CLIENT, FW) and head.chain.latency == pytest.approx(4 * MS) and head.chain.met
    # Frames really take that chain: client → firewall in, firewall out → gateway.
    sim = FabricSim(fabric, plan.flows)
    for start, end in (("client", ("fw", 0)), (("fw", 1), "gw")):
        src = interface(fabric, *start) if isinstance(start, tuple) else interface(fabric, start)
        dst = interface(fabric, *end) if isinstance(end, tuple) else interface(fabric, end)
        (delivery,) = sim.send(src.switch, src.port)
        assert (delivery.switch, delivery.port) == (dst.switch, dst.port)

    # Within 3 ms both wires take their detours.
    plan = make_plan(fabric, two_wires(3 * MS)[1])
    assert (switches(plan, CLIENT), switches(plan, FW)) == (("s1", "s4", "s2"), ("s2", "s5", "s3"))


def test_a_chain_that_cannot_be_met_fails_its_head_and_leaves_the_rest_as_it_was():
    fabric, resources = two_wires(2 * MS)
    plan = make_plan(fabric, resources)
    head = plan.connections[CLIENT]
    assert head.state == FAILED and head.path is None and head.chain is None
    assert head.reason == ("chain client → fw → gw cannot meet its latency bound: no set of paths is within "
                           "2ms: the fastest takes 3ms in all")
    # The firewall's own wire serves the chain's later part as it would anyway.
    assert switches(plan, FW) == ("s2", "s3")
    assert not plan.connections[CLIENT].flows and not plan.reservations()


def test_later_wires_keep_their_own_levels():
    own = ServiceLevel("fw-own", "svc", client_selector=FrozenMap(app="fw"), guaranteed_bandwidth=30 * M,
                       rate_limit=40 * M, max_latency=2.5 * MS)
    fabric, resources = two_wires(3.5 * MS, (own,))
    plan = make_plan(fabric, resources)
    fw = plan.connections[FW]
    # Its own bound keeps the firewall's wire off the 3 ms link; the client's wire then detours too.
    assert fw.level.name == "fw-own" and fw.path.switches == ("s2", "s5", "s3") and fw.meters
    assert switches(plan, CLIENT) == ("s1", "s4", "s2")
    assert plan.connections[CLIENT].chain.latency == pytest.approx(3 * MS)
    (held,) = [r for r in plan.reservations() if r["link"].startswith("s2") and "s5" in r["link"]]
    assert held["connections"] == [FW] and held["residual"] == 1e9 - 30 * M


def test_a_met_chain_moves_nothing_and_unrelated_changes_touch_nothing():
    fabric, resources = two_wires(5 * MS)
    plan = make_plan(fabric, resources)
    again = make_plan(fabric, resources, previous=plan)
    assert again.touched == frozenset()
    assert all(again.connections[cid] is pc for cid, pc in plan.connections.items())
    # Planning everything anew from the plan gives the same paths.
    whole = make_plan(fabric, resources, previous=replace(plan, basis=None))
    assert whole.connections == plan.connections

    # The detour goes down: the chain is met again with the other detour (5 ms in all) ...
    detour = next(link.name for link in fabric.links if {link.a, link.b} == {"s1", "s4"})
    down = make_plan(fabric, resources, FabricState(down_links=frozenset({detour})), plan)
    assert (switches(down, CLIENT), switches(down, FW)) == (("s1", "s2"), ("s2", "s5", "s3"))
    assert {CLIENT, FW} <= down.touched
    # ... and when it is back, the chain still meets its bound: nothing moves, though a cheaper set exists.
    up = make_plan(fabric, resources, FabricState(), down)
    assert (switches(up, CLIENT), switches(up, FW)) == (("s1", "s2"), ("s2", "s5", "s3"))
    assert up.connections[CLIENT].chain.latency == pytest.approx(5 * MS)

    # Another client of another service, elsewhere: the chain's wires are carried over as they were.
    elsewhere = ClientRequest("client", "nsm-2", "other", attachment=interface(fabric, "client").attachment)
    other = Resources(resources.services + (NetworkService("other"),), resources.endpoints,
                      resources.requests + (elsewhere,), service_levels=resources.service_levels)
    changed = make_plan(fabric, other, FabricState(), up)
    assert changed.touched == {"default/client/nsm-2"}
    assert all(changed.connections[cid] is up.connections[cid] for cid in (CLIENT, FW))


def test_a_chain_that_continues_on_another_wire_is_bounded_again():
    # The firewall asks twice (nsm-1 from s2, nsm-2 from s4): the chain goes on with nsm-1, the lower id.
    fabric = fabric_of(TWO_WIRES, {**HOSTS, "gw": ("s3", "s3"), "fw-2": ("s4",)})
    base = chain_resources(fabric, ["fw"], {"client": FrozenMap(tier="gold")}, (chain_level(4.2 * MS),))
    second = ClientRequest("fw", "nsm-2", "svc", labels=FrozenMap(app="fw"),
                           attachment=interface(fabric, "fw-2").attachment)
    both = replace(base, requests=base.requests + (second,))
    plan = make_plan(fabric, both)
    fw2 = "default/fw/nsm-2"
    assert plan.connections[CLIENT].chain.wires == (CLIENT, FW)
    assert (switches(plan, CLIENT), switches(plan, fw2)) == (("s1", "s4", "s2"), ("s4", "s2", "s3"))
    # Without nsm-1 the chain goes on with nsm-2, untouched itself: 1 + 3.5 ms is over 4.2 ms.
    without = replace(both, requests=tuple(r for r in both.requests if r.id != FW))
    after = make_plan(fabric, without, previous=plan)
    assert after.connections[CLIENT].chain.wires == (CLIENT, fw2) and after.connections[CLIENT].chain.met
    assert switches(after, fw2) == ("s4", "s2", "s5", "s3") and fw2 in after.touched
    whole = make_plan(fabric, without, previous=replace(plan, basis=None))
    assert whole.connections == after.connections


# Both wires of a chain client (s1) → fw (s2) → back to s1 (gw): a slow wide link and a fast narrow
# detour; another connection holds part of the detour.
COMPETING = [("s1", "s2", 3 * MS, 1), ("s1", "s3", 0.5 * MS, 2, 100 * M), ("s3", "s2", 0.5 * MS, 2, 100 * M)]


def competing(bound: float, client_bits: int, fw_bits: int, held_bits: int):
    fabric = fabric_of(COMPETING, {"client": ("s1",), "fw": ("s2", "s2"), "gw": ("s1",),
                                   "hog": ("s1",), "sink": ("s2",)})
    levels = (chain_level(bound, guaranteed_bandwidth=client_bits),
              ServiceLevel("fw-own", "svc", client_selector=FrozenMap(app="fw"),
                           guaranteed_bandwidth=fw_bits),
              ServiceLevel("hog", "bulk", guaranteed_bandwidth=held_bits, max_latency=1 * MS, priority=900))
    chain = chain_resources(fabric, ["fw"], {"client": FrozenMap(tier="gold")}, levels)
    hog = (ClientRequest("hog", "nsm-1", "bulk", attachment=interface(fabric, "hog").attachment),)
    sink = (Endpoint("sink", services=("bulk",), attachments=(interface(fabric, "sink").attachment,)),)
    resources = Resources(chain.services + (NetworkService("bulk"),), chain.endpoints + sink,
                          chain.requests + hog, service_levels=levels)
    return fabric, make_plan(fabric, resources)


def test_each_wire_of_a_chain_reserves_its_own_guarantee():
    # 50 Mbit/s left on the detour: the firewall's 30 fit, the client's 80 do not.
    fabric, plan = competing(4.5 * MS, 80 * M, 30 * M, 50 * M)
    assert (switches(plan, CLIENT), switches(plan, FW)) == (("s1", "s2"), ("s2", "s3", "s1"))
    detour = {r["link"]: r for r in plan.reservations() if "s3" in r["link"]}
    assert all(r["connections"] == [FW, "default/hog/nsm-1"] and r["residual"] == 20 * M
               for r in detour.values())
    # Swapped guarantees: now the client's wire takes the detour.
    fabric, plan = competing(4.5 * MS, 30 * M, 80 * M, 50 * M)
    assert (switches(plan, CLIENT), switches(plan, FW)) == (("s1", "s3", "s2"), ("s2", "s1"))


def test_wires_that_both_need_one_link_need_room_for_both():
    # 2.5 ms: both wires must take the detour, which has 100 Mbit/s for their 110.
    fabric, plan = competing(2.5 * MS, 80 * M, 30 * M, 0)
    head = plan.connections[CLIENT]
    assert head.state == FAILED and "its wires compete for the same links" in head.reason
    # With 50 Mbit/s held there, neither fits: the fastest set that fits takes 6 ms.
    fabric, plan = competing(4.5 * MS, 80 * M, 60 * M, 50 * M)
    assert plan.connections[CLIENT].state == FAILED
    assert "no set of paths is within 4.5ms: the fastest takes 6ms in all" in plan.connections[CLIENT].reason
    assert all(r["connections"] != [CLIENT] for r in plan.reservations())


# Two clients through one firewall: c1 (s1) and c2 (s6) → fw (s2) → gw (s3). The firewall's wire has
# three ways: direct (3 ms, cost 1), through s4 (1.5 ms, cost 3) and through s5 (1 ms, cost 6). c1 has
# a slow cheap link and a fast dear detour through s4; c2 has only a 3 ms link.
SHARED = [("s1", "s2", 4 * MS, 1), ("s1", "s4", 0.25 * MS, 2), ("s4", "s2", 0.25 * MS, 2, 100 * M),
          ("s2", "s3", 3 * MS, 1), ("s4", "s3", 1.25 * MS, 1, 100 * M), ("s2", "s5", 0.5 * MS, 3),
          ("s5", "s3", 0.5 * MS, 3), ("s6", "s2", 3 * MS, 1)]


def shared(bits: int = 0):
    fabric = fabric_of(SHARED, {"c1": ("s1",), "c2": ("s6",), "fw": ("s2", "s2", "s2"), "gw": ("s3",)})
    # c2's chain goes first (higher priority).
    levels = (chain_level(4.5 * MS, "c1", {"who": "c1"}, priority=5, guaranteed_bandwidth=bits or None),
              chain_level(4.5 * MS, "c2", {"who": "c2"}, priority=10),
              ServiceLevel("fw-own", "svc", client_selector=FrozenMap(app="fw"),
                           guaranteed_bandwidth=bits or None, dscp=10))
    clients = {"c1": FrozenMap(who="c1"), "c2": FrozenMap(who="c2")}
    resources = chain_resources(fabric, ["fw"], clients, levels)
    return fabric, resources


def test_a_wire_shared_by_two_chains_is_not_moved_for_one_at_the_cost_of_the_other():
    fabric, resources = shared()
    plan = make_plan(fabric, resources)
    c1, c2 = "default/c1/nsm-1", "default/c2/nsm-1"
    # c2's chain put the firewall's wire through s4 (3 + 1.5 ms). c1's cheapest set alone would take it
    # back to the direct link (c1 through s4: 0.5 + 3 ms), breaking c2's chain: it stays, c1 detours.
    assert switches(plan, FW) == ("s2", "s4", "s3")
    assert switches(plan, c1) == ("s1", "s4", "s2") and switches(plan, c2) == ("s6", "s2")
    for head in (c1, c2):
        chain = plan.connections[head].chain
        assert chain.wires == (head, FW) and chain.met
    assert plan.connections[c2].chain.latency == pytest.approx(4.5 * MS)
    # The same again, whatever came before.
    assert make_plan(fabric, resources, previous=replace(plan, basis=None)).connections == plan.connections


def test_a_chain_that_only_another_chains_wire_could_serve_fails_and_says_so():
    # The firewall's wire and c1's detours share s4-s2 and s4-s3, with room for one of their 60 Mbit/s.
    fabric, resources = shared(60 * M)
    plan = make_plan(fabric, resources)
    c1 = plan.connections["default/c1/nsm-1"]
    assert c1.state == FAILED
    assert c1.reason == ("chain c1 → fw → gw cannot meet its latency bound: no set of paths is within 4.5ms: "
                         "the fastest takes 5.5ms in all, with default/fw/nsm-1 kept where other chains' "
                         "bounds need them")
    assert switches(plan, FW) == ("s2", "s4", "s3") and plan.connections["default/c2/nsm-1"].chain.met


# -- the closed loop ---------------------------------------------------------------------------------


def test_a_chain_measured_over_its_bound_moves_off_the_slow_link_and_reports_it():
    fabric, resources = two_wires(5.5 * MS)
    ctl = Controller(fabric, sla_window=3.0, avoid_hold=30.0)
    fake = FakeFabric(fabric)
    fake.connect_all(ctl)
    fake.run(ctl, ctl.set_resources(resources, 0.0))
    probed = Probed(ctl, fabric)
    probed.delay = {link.name: link.latency for link in fabric.links}
    now = run(ctl, fake, probed, 0.0, 8.0)
    assert (switches(ctl.plan, CLIENT), switches(ctl.plan, FW)) == (("s1", "s4", "s2"), ("s2", "s3"))
    entry = next(e for e in status_json(ctl.status())["connections"] if e["id"] == CLIENT)
    chain = entry["chain_latency"]
    assert chain["wires"] == [CLIENT, FW] and chain["bound"] == 5.5 * MS and chain["met"]
    assert chain["measured"]["latency"] == pytest.approx(4 * MS) and chain["measured"]["met"]

    slowed = next(link.name for link in fabric.links if {link.a, link.b} == {"s4", "s2"})
    probed.delay[slowed] = 10 * MS  # 13.5 ms measured over the chain
    now = run(ctl, fake, probed, now, now + 3.0)  # the median of five probes is slow from the third on
    assert switches(ctl.plan, CLIENT) == ("s1", "s4", "s2"), "moved before the breach was sustained"
    entry = next(e for e in status_json(ctl.status())["connections"] if e["id"] == CLIENT)
    assert not entry["chain_latency"]["measured"]["met"] and not entry["measured"]["met"]
    now = run(ctl, fake, probed, now, now + 6.0)
    # Off the slow link, the client's wire takes the direct one, so the firewall's wire detours.
    assert (switches(ctl.plan, CLIENT), switches(ctl.plan, FW)) == (("s1", "s2"), ("s2", "s5", "s3"))
    assert any(h.connection == CLIENT and "chain latency 13.5 ms > 5.5 ms" in h.what and slowed in h.what
               for h in ctl.history)
    assert any(h.connection == FW and f"to bring chain {CLIENT} within 5.5ms" in h.what for h in ctl.history)
    run(ctl, fake, probed, now, now + 6.0)
    entry = next(e for e in status_json(ctl.status())["connections"] if e["id"] == CLIENT)
    assert entry["chain_latency"]["measured"]["latency"] == pytest.approx(5 * MS)
    assert entry["chain_latency"]["measured"]["met"] and entry["state"] == "up"
    # The switches carry the chain where the plan says.
    sim = FabricSim(fabric, fake.tables)
    src, dst = interface(fabric, "client"), interface(fabric, "fw", 0)
    (delivery,) = sim.send(src.switch, src.port)
    assert (delivery.switch, delivery.port) == (dst.switch, dst.port)


# -- the report ----------------------------------------------------------------------------------------


def test_plan_and_status_say_what_the_chain_comes_to():
    fabric, resources = two_wires(5 * MS)
    plan = make_plan(fabric, resources)
    entries = [connection_entry(pc, pc.state) for pc in plan.connections.values()]
    head = next(e for e in entries if e["id"] == CLIENT)
    assert head["chain_latency"] == {"latency": pytest.approx(4 * MS), "bound": 5 * MS, "wires": [CLIENT, FW],
                                     "met": True}
    assert "chain_latency" not in next(e for e in entries if e["id"] == FW)
    text = render_text({"fabric": "chain", "connections": entries})
    assert "      chain of 2 wires: 4ms of ≤ 5ms declared (met)" in text.splitlines()
    measured = {**head["chain_latency"], "measured": {"latency": 0.0062, "met": False}}
    text = render_text({"fabric": "chain", "connections": [{**head, "chain_latency": measured}]})
    assert "chain of 2 wires: 4ms of ≤ 5ms declared (met), 6.2ms measured (NOT met)" in text


# -- the property ----------------------------------------------------------------------------------------


def follow(plan, head: str) -> list[str]:
    """The chain from ``head``, followed by endpoint names like report.chains does."""
    by_client: dict[tuple, str] = {}
    for cid in sorted(plan.connections):
        c = plan.connections[cid].connection
        by_client.setdefault((c.namespace, c.network_service, c.client), cid)
    wires, step = [], head
    while step is not None and step not in wires:
        wires.append(step)
        c = plan.connections[step].connection
        step = by_client.get((c.namespace, c.network_service, c.endpoint)) if c.endpoint else None
    return wires


@settings(max_examples=150, deadline=None)
@given(fabrics(max_switches=4, max_links=6), st.data())
def test_every_chain_meets_its_bound_or_its_head_fails_for_want_of_one(fabric, data):
    names = [s.name for s in fabric.switches]
    where = {host: tuple(data.draw(st.sampled_from(names)) for _ in range(count))
             for host, count in (("client", 1), ("f1", 2), ("f2", 2), ("gw", 1))}
    if {s for link in fabric.links for s in (link.a, link.b)} != set(names):
        return  # a switch without links: fabric_of would leave it out
    fabric = fabric_of([(lk.a, lk.b, lk.latency, lk.cost) for lk in fabric.links], where)
    bound = data.draw(st.sampled_from([0.5 * MS, 2 * MS, 4 * MS, 8 * MS]))
    nested = data.draw(st.booleans())  # the first function's own wire heads a chain of its own
    levels = (chain_level(bound),) + ((chain_level(bound / 2, "f1", {"app": "f1"}),) if nested else ())
    resources = chain_resources(fabric, ["f1", "f2"], {"client": FrozenMap(tier="gold")}, levels)
    plan = make_plan(fabric, resources)
    unbounded = make_plan(fabric, replace(resources, service_levels=()))

    for cid, pc in plan.connections.items():
        if pc.state == PLANNED and pc.level is not None and pc.level.chain_latency:
            wires = follow(plan, cid)
            assert list(pc.chain.wires) == wires
            planned = [plan.connections[w] for w in wires if plan.connections[w].state == PLANNED]
            total = sum(p.path.latency for p in planned)
            assert meets_latency(total, pc.level.max_latency) and total == pytest.approx(pc.chain.latency)
    head = plan.connections[CLIENT]
    # The wires that carry something (one with no path at all is left out of the sum).
    wires = [w for w in follow(plan, CLIENT) if unbounded.connections[w].state == PLANNED]
    ends = [(plan.connections[w].connection.client_attachment.switch,
             plan.connections[w].connection.endpoint_attachment.switch) for w in wires]
    if unbounded.connections[CLIENT].state != PLANNED:
        assert head.state == FAILED and "cannot meet" not in head.reason
        return
    options = [combo for combo in itertools.product(*(simple_paths(fabric, a, b) for a, b in ends))
               if meets_latency(sum(p.latency for p in combo), bound)]
    if head.state == FAILED:
        assert head.reason.startswith("chain client → f1 → f2 → gw cannot meet its latency bound")
        assert not options or nested  # the nested chain may hold a shared wire where it needs it
        return
    cheapest = [unbounded.connections[w].path for w in wires]
    if meets_latency(sum(p.latency for p in cheapest), bound):
        # Met by every wire's cheapest path: nothing moved.
        assert [plan.connections[w].path for w in wires] == cheapest or nested
    elif not nested:
        assert sum(plan.connections[w].path.cost for w in wires) == pytest.approx(
            min(sum(p.cost for p in combo) for combo in options), abs=1e-9)
