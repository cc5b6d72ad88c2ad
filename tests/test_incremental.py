"""Incremental planning and diffing give exactly what planning everything anew gives.

The planner carries unchanged connections over and the controller diffs only the flow keys a change
touched; both are checked here against the whole computation over random sequences of changes.
"""

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from ryu_nsm.controller import UP, Controller, PortInfo
from ryu_nsm.model import ClientRequest, Endpoint, FrozenMap, NetworkService, Resources
from ryu_nsm.planner import PLANNED, FabricState, make_plan

from .fabrics import ring
from .test_controller import FakeFabric, ports_of

CLIENTS = 6
SWITCHES = ("s1", "s2", "s3", "s4", "s5")
NO_HINTS: dict = {}  # one object throughout: unchanged hints


def fabric_for(draw):
    hosts = {f"c{i}": (draw(st.sampled_from(SWITCHES)),) for i in range(CLIENTS)}
    hosts.update({f"e{j}": tuple(draw(st.sampled_from(SWITCHES)) for _ in range(3)) for j in range(3)})
    return ring(5, hosts)


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

    def resources(self) -> Resources:
        match_labels = FrozenMap(app="x")
        endpoints = tuple(
            Endpoint(f"e{j}", services=("svc",), service_labels=FrozenMap(svc=match_labels),
                     attachments=tuple(attachment(self.fabric, f"e{j}", i) for i in atts))
            for j, atts in sorted(self.endpoints.items()))
        requests = tuple(self.requests[i] for i in sorted(self.requests))
        return Resources((NetworkService("svc"),), endpoints, requests)

    def state(self) -> FabricState:
        return FabricState(down_links=self.down, ports=dict(self.ports))

    def step(self, draw) -> None:
        kind = draw(st.sampled_from(["add", "add", "remove", "relabel", "endpoint", "link", "port"]))
        i = draw(st.integers(0, CLIENTS - 1))
        if kind == "add":
            client = attachment(self.fabric, f"c{i}")
            self.requests[i] = ClientRequest(f"c{i}", "nsm-1", "svc", attachment=client)
        elif kind == "remove":
            self.requests.pop(i, None)
        elif kind == "relabel" and i in self.requests:
            self.requests[i] = replace(self.requests[i], labels=FrozenMap(v=str(draw(st.integers(0, 3)))))
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


def comparable(plan):
    return plan.connections, plan.flows, plan.keep_cookies


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_incremental_plan_equals_planning_everything_anew(data):
    world = World(fabric_for(data.draw))
    plan = make_plan(world.fabric, world.resources(), world.state(), None, NO_HINTS)
    for _ in range(data.draw(st.integers(1, 12))):
        world.step(data.draw)
        resources, state = world.resources(), world.state()
        incremental = make_plan(world.fabric, resources, state, plan, NO_HINTS)
        whole = make_plan(world.fabric, resources, state, replace(plan, basis=None), NO_HINTS)
        assert comparable(incremental) == comparable(whole)
        # Untouched connections are carried over as they were.
        for cid, pc in incremental.connections.items():
            if cid not in incremental.touched:
                assert plan.connections[cid] is pc
        plan = incremental


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
        action = data.draw(st.sampled_from(["resources", "resources", "port", "reconnect"]))
        if action == "resources":
            world.step(data.draw)
            world.down, world.ports = frozenset(), {}  # the fabric's own state comes from its events
            switches.run(ctl, ctl.set_resources(world.resources(), now), now)
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
        for cid, pc in ctl.plan.connections.items():
            expected = UP if pc.state == PLANNED else ctl._connection_state(pc)
            assert ctl.connection_state(cid) == expected
