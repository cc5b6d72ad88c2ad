"""Incremental planning and diffing give exactly what planning everything anew gives.

The planner carries unchanged connections over and the controller diffs only the flow keys a change
touched; both are checked here against the whole computation over random sequences of changes.
"""

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from ryu_nsm.core.controller import UP, Controller, PortInfo
from ryu_nsm.core.fabric import Link
from ryu_nsm.core.model import ClientRequest, Endpoint, FrozenMap, NetworkService, Resources
from ryu_nsm.core.planner import PLANNED, FabricState, make_plan
from ryu_nsm.qos.service_level import ServiceLevel

from .fabrics import ring
from .test_controller import FakeFabric, ports_of
from .test_planner import resources_for

CLIENTS = 6
SWITCHES = ("s1", "s2", "s3", "s4", "s5")
NO_HINTS: dict = {}  # one object throughout: unchanged hints


def fabric_for(draw):
    hosts = {f"c{i}": (draw(st.sampled_from(SWITCHES)),) for i in range(CLIENTS)}
    # Endpoints serve on interfaces 0-2 and, as service functions, ask for the service again on 3.
    hosts.update({f"e{j}": tuple(draw(st.sampled_from(SWITCHES)) for _ in range(4)) for j in range(3)})
    # Small capacities and some latency, so that admission refuses, preempts and detours. Two chords
    # are fast but dear: the cheapest paths of a chain are not its fastest.
    fabric = ring(5, hosts, capacity=100e6)
    links = tuple(replace(link, latency=draw(st.sampled_from([0.001, 0.002]))) for link in fabric.links)
    chords = (Link("s1", 3, "s3", 3, capacity=100e6, latency=0.0005, cost=3.0),
              Link("s2", 3, "s4", 3, capacity=100e6, latency=0.0005, cost=3.0))
    return replace(fabric, links=links + chords)


LEVELS = {
    "guaranteed": dict(guaranteed_bandwidth=50_000_000, priority=1, preemptible=True),
    "important": dict(guaranteed_bandwidth=60_000_000, priority=5),
    "fast": dict(max_latency=0.0021),
    "limited": dict(rate_limit=10_000_000, dscp=46),
    "protected": dict(protection="disjoint", guaranteed_bandwidth=30_000_000),
    # Chain-wide bounds, met by the shortest paths only: detours (a link that was down, a guarantee
    # that did not fit) make the chain pass move or fail wires.
    "chain": dict(max_latency=0.0025, chain_latency=True, priority=3),
    "chain-tight": dict(max_latency=0.0015, chain_latency=True, dscp=10, priority=4),
}


def level(name):
    """The service level ``name`` of LEVELS, for requests labelled sla=<name>."""
    return ServiceLevel(name, "svc", client_selector=FrozenMap(sla=name), **LEVELS[name])


def attachment(fabric, host, index=0):
    return next(h for h in fabric.hosts if h.name == host).interfaces[index].attachment


class World:
    """Declared resources and fabric state that random steps change."""

    def __init__(self, fabric):
        self.fabric = fabric
        self.requests: dict[int, ClientRequest] = {}
        self.endpoints = {j: (0, 1, 2) for j in range(3)}  # endpoint → indexes of its attachments
        self.down: frozenset[str] = frozenset()
        self.ports: dict[tuple[str, str], int] = {}
        self.levels = {name: level(name) for name in LEVELS}

    def resources(self) -> Resources:
        match_labels = FrozenMap(app="x")
        endpoints = tuple(
            Endpoint(f"e{j}", services=("svc",), service_labels=FrozenMap(svc=match_labels),
                     attachments=tuple(attachment(self.fabric, f"e{j}", i) for i in atts))
            for j, atts in sorted(self.endpoints.items()))
        requests = tuple(self.requests[i] for i in sorted(self.requests))
        levels = tuple(self.levels[name] for name in sorted(self.levels))
        return Resources((NetworkService("svc"),), endpoints, requests, service_levels=levels)

    def state(self) -> FabricState:
        return FabricState(down_links=self.down, ports=dict(self.ports))

    def step(self, draw) -> None:
        kind = draw(st.sampled_from(["add", "add", "remove", "relabel", "endpoint", "link", "port", "level",
                                     "function"]))
        i = draw(st.integers(0, CLIENTS - 1))
        if kind == "function":  # a service function's own request (continues the chains that reach it)
            j = draw(st.integers(0, 2))
            if CLIENTS + j in self.requests:
                del self.requests[CLIENTS + j]
            else:
                labels = FrozenMap(sla=draw(st.sampled_from(sorted(LEVELS))))
                self.requests[CLIENTS + j] = ClientRequest(f"e{j}", "nsm-1", "svc", labels=labels,
                                                           attachment=attachment(self.fabric, f"e{j}", 3))
        elif kind == "add":
            client = attachment(self.fabric, f"c{i}")
            labels = FrozenMap(sla=draw(st.sampled_from(sorted(LEVELS))))
            self.requests[i] = ClientRequest(f"c{i}", "nsm-1", "svc", labels=labels, attachment=client)
        elif kind == "remove":
            self.requests.pop(i, None)
        elif kind == "relabel" and i in self.requests:
            labels = {"v": str(draw(st.integers(0, 3)))}
            if draw(st.booleans()):
                labels["sla"] = draw(st.sampled_from(sorted(LEVELS)))
            self.requests[i] = replace(self.requests[i], labels=FrozenMap(labels))
        elif kind == "level":
            name = draw(st.sampled_from(sorted(LEVELS)))
            if name in self.levels:
                del self.levels[name]
            else:
                self.levels[name] = level(name)
        elif kind == "endpoint":
            j = draw(st.integers(0, 2))
            self.endpoints[j] = tuple(sorted(draw(st.sets(st.integers(0, 2)))))
        elif kind == "link":
            link = draw(st.sampled_from(self.fabric.links)).name
            self.down = self.down ^ {link}
        elif kind == "port":
            host = next(h for h in self.fabric.hosts if h.name == f"c{i}")
            intf = host.interfaces[0]
            self.ports[(intf.switch, intf.port_name)] = draw(st.sampled_from([intf.port, 60 + i]))


def assert_chains_bounded(plan):
    """Every planned connection under a chain-wide bound has its chain within it."""
    for pc in plan.connections.values():
        if pc.state == PLANNED and pc.level is not None and pc.level.chain_latency:
            assert pc.chain is not None and pc.chain.wires[0] == pc.id
            total = sum(plan.connections[w].path.latency for w in pc.chain.wires
                        if plan.connections[w].state == PLANNED)
            assert total == pc.chain.latency and pc.chain.met, pc.id


def comparable(plan):
    return plan.connections, plan.flows, plan.meters, plan.groups, plan.keep_cookies


def assert_never_oversubscribed(plan, fabric):
    """Guarantees of planned connections (path and backup, each way) fit every link direction."""
    held = {}
    for pc in plan.connections.values():
        if pc.state != PLANNED or pc.level is None or not pc.level.guaranteed_bandwidth:
            continue
        for path in filter(None, (pc.path, pc.backup)):
            for link in path.links:
                for direction in ((link.name, link.a), (link.name, link.b)):
                    held[direction] = held.get(direction, 0) + pc.level.guaranteed_bandwidth
    capacity = {link.name: link.capacity for link in fabric.links}
    assert all(bits <= capacity[name] for (name, _), bits in held.items())


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_incremental_plan_equals_planning_everything_anew(data):
    world = World(fabric_for(data.draw))
    plan = make_plan(world.fabric, world.resources(), world.state(), None, NO_HINTS)
    for _ in range(data.draw(st.integers(1, 16))):
        world.step(data.draw)
        resources, state = world.resources(), world.state()
        incremental = make_plan(world.fabric, resources, state, plan, NO_HINTS)
        whole = make_plan(world.fabric, resources, state, replace(plan, basis=None), NO_HINTS)
        assert comparable(incremental) == comparable(whole)
        assert_never_oversubscribed(incremental, world.fabric)
        assert_chains_bounded(incremental)
        # Untouched connections are carried over as they were.
        for cid, pc in incremental.connections.items():
            if cid not in incremental.touched:
                assert plan.connections[cid] is pc
        plan = incremental


def test_a_protected_connection_without_a_backup_does_not_take_the_room_of_one_kept_before():
    """Found by the property above: planning anew gave the backup to whichever came first by id."""
    hosts = {"c0": ("s2",), **{f"c{i}": ("s1",) for i in range(1, CLIENTS)},
             "e0": ("s2", "s2", "s1", "s1"), "e1": ("s1",) * 4, "e2": ("s1",) * 4}
    world = World(ring(5, hosts, capacity=100e6, latency=0.001))
    plan = make_plan(world.fabric, world.resources(), world.state(), None, NO_HINTS)
    for i, name in ((3, "guaranteed"), (4, "protected"), (0, "protected"), (0, "protected")):
        world.requests[i] = ClientRequest(f"c{i}", "nsm-1", "svc", labels=FrozenMap(sla=name),
                                          attachment=attachment(world.fabric, f"c{i}"))
        incremental = make_plan(world.fabric, world.resources(), world.state(), plan, NO_HINTS)
        whole = make_plan(world.fabric, world.resources(), world.state(), replace(plan, basis=None), NO_HINTS)
        assert comparable(incremental) == comparable(whole)
        plan = incremental
    # The one that came first keeps its backup; the later one says why it has none.
    assert plan.connections["default/c4/nsm-1"].backup is not None
    late = plan.connections["default/c0/nsm-1"]
    assert late.backup is None and late.note.startswith("unprotected"), late


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_controller_switches_hold_exactly_the_plan_after_every_change(data):
    world = World(fabric_for(data.draw))
    fabric = world.fabric
    ctl, switches = Controller(fabric), FakeFabric(fabric)
    switches.connect_all(ctl)
    now = 0.0
    switches.run(ctl, ctl.set_resources(world.resources(), now), now)
    for _ in range(data.draw(st.integers(1, 12))):
        now += 1.0
        action = data.draw(st.sampled_from(["resources", "resources", "overlap", "port", "reconnect"]))
        if action in ("resources", "overlap"):
            world.step(data.draw)
            world.down, world.ports = frozenset(), {}  # the fabric's own state comes from its events
            commands = ctl.set_resources(world.resources(), now)
            if action == "overlap":  # another change while that program is still in flight
                world.step(data.draw)
                world.down, world.ports = frozenset(), {}
                commands += ctl.set_resources(world.resources(), now)
            switches.run(ctl, commands, now)
        elif action == "port":
            sw = data.draw(st.sampled_from(SWITCHES))
            number = data.draw(st.sampled_from([1, 2]))
            name = next(n for (s, n), p in fabric.port_names.items() if s == sw and p == number)
            up = data.draw(st.booleans())
            dpid = fabric.switch_by_name[sw].dpid
            switches.run(ctl, ctl.port_changed(dpid, PortInfo(number, name, up), now), now)
        else:
            sw = fabric.switch_by_name[data.draw(st.sampled_from(SWITCHES))]
            ctl.switch_disconnected(sw.dpid, now)
            switches.run(ctl, ctl.switch_connected(sw.dpid, ports_of(fabric, sw.name), now), now)
        for name in SWITCHES:
            assert switches.tables[name] == ctl.plan.flows.get(name, frozenset()), name
            assert frozenset(switches.meters[name].values()) == ctl.plan.meters.get(name, frozenset()), name
            assert frozenset(switches.groups[name].values()) == ctl.plan.groups.get(name, frozenset()), name
        for cid, pc in ctl.plan.connections.items():
            expected = UP if pc.state == PLANNED else ctl.switches._connection_state(pc)
            assert ctl.connection_state(cid) == expected


def _rebuilt_world():
    """A small plan, and a function rebuilding its inputs: equal, but new objects throughout."""
    fabric = ring(4, {"c0": ("s1",), "c1": ("s1",), "e0": ("s3",), "e1": ("s3",)}, latency=0.001)
    atts = {h: attachment(fabric, h) for h in ("c0", "c1", "e0", "e1")}
    resources = resources_for([(atts["c0"], atts["e0"]), (atts["c1"], atts["e1"])])
    resources = replace(resources, service_levels=(
        ServiceLevel("guaranteed", "svc", guaranteed_bandwidth=10_000_000, priority=1),))
    ports = {(a.switch, a.port): fabric.attachment_port(a) for a in atts.values()}
    state = FabricState(ports=ports, avoid={"default/c0/nsm-1": frozenset()},
                        latency={fabric.links[0].name: 0.002})
    plan = make_plan(fabric, resources, state, None, {})
    hints = {(cid, link): tag for cid, pc in plan.connections.items() for link, tag in pc.tags}
    # A tag found on a switch that c1 cannot have (c0 holds it): c1 keeps disagreeing with the hints.
    c0, c1 = (plan.connections[f"default/{c}/nsm-1"] for c in ("c0", "c1"))
    shared = next(link for link, _ in c1.tags if link in dict(c0.tags))
    hints[(c1.id, shared)] = dict(c0.tags)[shared]
    plan = make_plan(fabric, resources, state, plan, hints)
    assert plan.touched == {c1.id} and dict(plan.connections[c1.id].tags)[shared] != hints[(c1.id, shared)]

    def rebuilt(**changes):
        """The inputs again, as new equal objects, with ``changes`` (requests, ports, avoid, hints)."""
        requests = changes.get("requests", tuple(replace(r) for r in resources.requests))
        state_again = FabricState(frozenset(state.down_links), frozenset(state.down_switches),
                                  changes.get("ports", dict(ports)), frozenset(state.unreported),
                                  changes.get("avoid", dict(state.avoid)), dict(state.latency))
        return (replace(resources, requests=requests), state_again, changes.get("hints", dict(hints)))

    return fabric, plan, rebuilt


def test_inputs_rebuilt_equal_plan_as_the_same_objects_do():
    """Equal inputs are unchanged inputs, whatever their identity: nothing is planned anew."""
    fabric, plan, rebuilt = _rebuilt_world()
    resources, state, hints = rebuilt()
    again = make_plan(fabric, resources, state, plan, hints)
    assert again.touched == frozenset()
    assert all(again.connections[cid] is pc for cid, pc in plan.connections.items())
    assert again.basis.measured_view is plan.basis.measured_view


def test_a_changed_input_is_planned_anew():
    """The other side of the test above: each kind of change reaches the connections it concerns."""
    fabric, plan, rebuilt = _rebuilt_world()
    c0, c1 = "default/c0/nsm-1", "default/c1/nsm-1"
    before = plan.basis
    client = plan.connections[c0].connection.client_attachment
    link, tag = plan.connections[c1].tags[0]
    changes = [
        (dict(requests=tuple(replace(r, labels=FrozenMap(n="1", x="y")) if r.id == c1 else r
                             for r in before.resources.requests)), {c1}),
        (dict(ports={**before.state.ports, (client.switch, client.port): 99}), {c0}),
        (dict(avoid={c1: frozenset({"nowhere"})}), {c0, c1}),  # c0's entry went, c1's came
        (dict(hints={**before.hints, (c1, link): tag + 1}), {c1}),
    ]
    for change, expected in changes:
        resources, state, hints = rebuilt(**change)
        assert make_plan(fabric, resources, state, plan, hints).touched == expected, change


def test_requests_that_claim_the_same_attachment_resolve_as_planning_anew_does():
    """Changed requests are resolved alone: a clash over an attachment must come out as a whole
    resolve finds it (the earlier request in resolve order keeps it, whoever changed)."""
    hosts = {f"c{i}": ("s1",) for i in range(CLIENTS)}
    hosts.update({f"e{j}": ("s3",) * 4 for j in range(3)})
    world = World(ring(5, hosts, capacity=1e9, latency=0.001))

    def request(pod, host, index=0):
        return ClientRequest(pod, "nsm-1", "svc", attachment=attachment(world.fabric, host, index))

    for i in range(4):
        world.requests[i] = request(f"c{i}", f"c{i}")
    plan = make_plan(world.fabric, world.resources(), world.state(), None, NO_HINTS)

    steps = [
        (10, request("a0", "c1")),  # new, sorts first by id, but c1 holds it: a0 fails
        (11, request("z0", "e0")),  # an endpoint's attachment
        (1, None),  # c1 goes: a0 takes its attachment
        (12, request("b0", "c1")),  # and keeps it against a newer one
        (0, request("c0", "c2")),  # c0 (held, before c2 by id) now claims c2's: c2 loses it
        (10, None),  # b0 gets it back
        (2, request("c2", "c5")),
        (11, None),
    ]
    for key, changed in steps:
        if changed is None:
            del world.requests[key]
        else:
            world.requests[key] = changed
        resources = world.resources()
        incremental = make_plan(world.fabric, resources, world.state(), plan, NO_HINTS)
        whole = make_plan(world.fabric, resources, world.state(), replace(plan, basis=None), NO_HINTS)
        assert comparable(incremental) == comparable(whole), (key, changed)
        assert {c: pc.connection for c, pc in incremental.connections.items()} == (
            {c: pc.connection for c, pc in whole.connections.items()})
        plan = incremental
    assert plan.connections["default/b0/nsm-1"].state == PLANNED  # a0 left: the attachment is b0's
