"""The status, its JSON, its metrics and the Kubernetes objects, kept between calls, are exactly what
building them whole gives, and a change rebuilds only what it touches.

The core keeps each connection's ``ConnectionStatus`` until something it shows changes
(``core.status_book``); the renderer, the metrics memo and the desired-objects memo key what they
made on those objects. Random sequences of changes (declared state, ports, reconnects, programs a
switch does not confirm, probes, counters, audits) check the kept results against whole rebuilds.
"""

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from ryu_nsm.core.controller import Controller, PortInfo, Program
from ryu_nsm.k8s.connection_status import DesiredMemo, desired_connections
from ryu_nsm.observe.metrics import ExpositionMemo, exposition
from ryu_nsm.observe.report import StatusRenderer, status_json

from .fabrics import ring
from .test_controller import FakeFabric, ports_of
from .test_incremental import SWITCHES, World, fabric_for
from .test_planner import att, resources_for

T0 = "2026-01-01T00:00:00Z"


class Watchers:
    """What a long-lived status endpoint, scraper and status writer keep between calls."""

    def __init__(self):
        # Chunks of two lines on average: a few connections make several chunks.
        self.renderer, self.metrics, self.desired = StatusRenderer(), ExpositionMemo(chunk=2), DesiredMemo()

    def check(self, ctl: Controller, now: str = T0) -> dict:
        """Assert that each kept result equals the whole rebuild; the rendered status."""
        status = ctl.status()
        measured = ctl.quality.link_quality()
        whole = tuple(ctl.quality.connection_status(pc, ctl.switches._connection_state(pc), measured)
                      for pc in ctl.plan.connections.values())
        assert status.connections == whole
        rendered = self.renderer.render(status)
        assert rendered == status_json(status)
        assert exposition(lambda: rendered, self.metrics) == exposition(lambda: rendered)
        assert desired_connections(rendered, now, memo=self.desired) == desired_connections(rendered, now)
        assert list(desired_connections(rendered, now, memo=self.desired)) == list(
            desired_connections(rendered, now))
        return rendered


def run_partly(switches: FakeFabric, ctl: Controller, commands: list, now: float, silent: str) -> None:
    """Like ``FakeFabric.run``, but switch ``silent`` neither carries out nor confirms the first
    programs (the controller reads it again)."""
    for cmd in commands:
        if isinstance(cmd, Program) and silent in cmd.diffs:
            cmd = replace(cmd, diffs={sw: d for sw, d in cmd.diffs.items() if sw != silent})
        switches.run(ctl, [cmd], now)


def measure(ctl: Controller, fabric, now: float, delay: float) -> None:
    """A probe round: every probe comes back after ``delay``."""
    dpids = {s.name: s.dpid for s in fabric.switches}
    peer = {(sw, port): link.peer_of(sw) for link in fabric.links
            for sw, port in ((link.a, link.a_port), (link.b, link.b_port))}
    for probe in ctl.probes(now):
        ctl.probe_sent(probe.seq, now)
        back, port = peer[(probe.switch, probe.port)]
        ctl.probe_received(dpids[back], port, probe.seq, now + delay)


def read_counters(ctl: Controller, switches: FakeFabric, now: float, bytes_: int) -> None:
    for read in ctl.counters_due():
        stats = [(f, bytes_ * (1 + f.priority % 3), bytes_ // 100)
                 for f in switches.tables[read.switch] if f.table in read.tables]
        ctl.counters_read(read.switch, stats, now)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_kept_status_equals_the_whole_rebuild_after_every_change(data):
    world = World(fabric_for(data.draw))
    fabric = world.fabric
    ctl, switches, watchers = Controller(fabric), FakeFabric(fabric), Watchers()
    switches.connect_all(ctl)
    now = 0.0
    switches.run(ctl, ctl.set_resources(world.resources(), now), now)
    watchers.check(ctl)
    bytes_ = 0
    for _ in range(data.draw(st.integers(1, 14))):
        now += 1.0
        action = data.draw(st.sampled_from(["resources", "resources", "unconfirmed", "port", "reconnect",
                                            "probes", "counters", "audit", "drift", "tick"]))
        if action in ("resources", "unconfirmed"):
            world.step(data.draw)
            world.down, world.ports = frozenset(), {}
            commands = ctl.set_resources(world.resources(), now)
            if data.draw(st.booleans()):  # asked while the program is in flight
                watchers.check(ctl)
            silent = data.draw(st.sampled_from(SWITCHES)) if action == "unconfirmed" else ""
            run_partly(switches, ctl, commands, now, silent)
        elif action == "port":
            sw = data.draw(st.sampled_from(SWITCHES))
            number = data.draw(st.sampled_from([1, 2]))
            name = next(n for (s, n), p in fabric.port_names.items() if s == sw and p == number)
            dpid = fabric.switch_by_name[sw].dpid
            up = data.draw(st.booleans())
            switches.run(ctl, ctl.port_changed(dpid, PortInfo(number, name, up), now), now)
        elif action == "reconnect":
            sw = fabric.switch_by_name[data.draw(st.sampled_from(SWITCHES))]
            ctl.switch_disconnected(sw.dpid, now)
            switches.run(ctl, ctl.switch_connected(sw.dpid, ports_of(fabric, sw.name), now), now)
        elif action == "probes":
            measure(ctl, fabric, now, data.draw(st.sampled_from([0.0005, 0.001, 0.004])))
        elif action == "counters":
            bytes_ += data.draw(st.integers(0, 10_000))
            read_counters(ctl, switches, now, bytes_)
        elif action == "drift":  # flows gone behind our back, found by a read, then repaired
            sw = data.draw(st.sampled_from(SWITCHES))
            flows = sorted(switches.tables[sw], key=repr)
            gone = set(data.draw(st.lists(st.sampled_from(flows), max_size=3))) if flows else set()
            switches.tables[sw] = switches.tables[sw] - gone
            read = next(c for c in ctl.audit() if c.switch == sw)
            commands = ctl.flows_read(sw, switches.tables[sw], now, read.epoch, switches.meters[sw].values(),
                                      switches.groups[sw].values())
            watchers.check(ctl)
            switches.run(ctl, commands, now)
        elif action == "audit":
            switches.run(ctl, ctl.audit(), now)
        else:
            switches.run(ctl, ctl.tick(now), now)
        watchers.check(ctl, data.draw(st.sampled_from([T0, "2026-01-01T00:00:01Z"])))


def test_one_more_request_rebuilds_only_its_own_status():
    """At size, a new request leaves every other connection's status, entry and object as they were."""
    n = 12
    fabric = ring(4, {**{f"c{i}": ("s1",) for i in range(n + 1)}, **{f"s{i}": ("s3",) for i in range(n + 1)}})
    pairs = [(att(fabric, f"c{i}"), att(fabric, f"s{i}")) for i in range(n + 1)]
    everything = resources_for(pairs)
    ctl, switches, watchers = Controller(fabric), FakeFabric(fabric), Watchers()
    switches.connect_all(ctl)
    switches.run(ctl, ctl.set_resources(replace(everything, requests=everything.requests[:n]), 1.0), 1.0)
    before = ctl.status()
    rendered = watchers.check(ctl)
    objects = desired_connections(rendered, T0, memo=watchers.desired)
    switches.run(ctl, ctl.set_resources(everything, 2.0), 2.0)
    after = ctl.status()
    again = watchers.check(ctl)
    new = everything.requests[n].id
    assert [c.planned.id for c in after.connections if c not in before.connections] == [new]
    kept = {c.planned.id for c in before.connections}
    assert all(any(c is b for b in before.connections) for c in after.connections if c.planned.id in kept)
    old_entries = {e["id"]: e for e in rendered["connections"]}
    assert all(e is old_entries[e["id"]] for e in again["connections"] if e["id"] != new)
    later = desired_connections(again, T0, memo=watchers.desired)
    assert all(later[k] is v for k, v in objects.items())
    assert [e["state"] for e in again["connections"]] == ["up"] * (n + 1)


PODS = ("a", "a-b", "fw", "dpi")
IFNAMES = ("b-c", "c", "nsm-1")


def random_entry(draw, pod: str, ifname: str) -> dict:
    """A connection entry of ``status_json``'s shape: names that clash ("a" + "b-c", "a-b" + "c"),
    endpoints that are other entries' clients (chains, loops too)."""
    endpoint = draw(st.sampled_from([None, *PODS]))
    state = draw(st.sampled_from(["up", "pending", "failed"])) if endpoint else "failed"
    path = ["s1", "s2"] if state != "failed" else []
    return {"id": f"default/{pod}/{ifname}", "namespace": "default", "network_service": "svc",
            "client": pod, "client_attachment": "s1:p1", "endpoint": endpoint,
            "endpoint_attachment": "s2:p2" if endpoint else None, "path": path,
            "tags": {"l1": 2} if path else {}, "state": state,
            **({"reason": "no path from s1 to s2"} if state == "failed" else {})}


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_kept_kubernetes_objects_equal_the_whole_rebuild_after_every_change(data):
    memo, entries, generations = DesiredMemo(), [], {}
    masters = {}
    for _ in range(data.draw(st.integers(1, 20))):
        kind = data.draw(st.sampled_from(["set", "set", "remove", "copy", "reorder", "generation",
                                          "masters"]))
        if kind == "set":
            pod, ifname = data.draw(st.sampled_from(PODS)), data.draw(st.sampled_from(IFNAMES))
            new = random_entry(data.draw, pod, ifname)
            at = next((i for i, e in enumerate(entries) if e["id"] == new["id"]), None)
            if at is None:
                entries.insert(data.draw(st.integers(0, len(entries))), new)
            else:
                entries[at] = new
        elif kind == "remove" and entries:
            del entries[data.draw(st.integers(0, len(entries) - 1))]
        elif kind == "copy":  # equal entries, new objects (a status read back from JSON)
            entries = [{**e} for e in entries]
        elif kind == "reorder":
            entries = data.draw(st.permutations(entries))
        elif kind == "generation":
            keys = list(desired_connections({"connections": entries}, T0))
            if keys:
                generations = {**generations, data.draw(st.sampled_from(keys)): data.draw(st.integers(1, 3))}
        elif kind == "masters":
            masters = {"s1": {"holder": data.draw(st.sampled_from(["r1", "r2"]))}}
        status = {"connections": list(entries), **({"role": {"switches": masters}} if masters else {})}
        now = data.draw(st.sampled_from([T0, "2026-01-01T00:00:01Z"]))
        kept = desired_connections(status, now, generations, memo)
        whole = desired_connections(status, now, generations)
        assert kept == whole and list(kept) == list(whole)
