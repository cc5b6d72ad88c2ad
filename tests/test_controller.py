"""The controller core, driven like the shell drives it: connects, reads, programs, failures."""

from ryu_nsm.core.controller import Controller, PortInfo, Program, ReadFlows
from ryu_nsm.core.reconcile import SwitchDiff, apply
from ryu_nsm.observe.report import status_json

from .fabrics import ring
from .flowsim import FabricSim
from .test_planner import att, port, resources_for


def ports_of(fabric, switch, down=()):
    names = {n: p for (sw, n), p in fabric.port_names.items() if sw == switch}
    return [PortInfo(p, n, (switch, p) not in down) for n, p in names.items()]


FIELD_OF = {"add": "adds", "modify": "modifies", "delete": "deletes"}


class FakeFabric:
    """Holds each switch's flows, meters and groups and carries out the controller's commands like
    the shell would."""

    def __init__(self, fabric):
        self.fabric = fabric
        self.tables = {s.name: frozenset() for s in fabric.switches}
        self.meters = {s.name: {} for s in fabric.switches}
        self.groups = {s.name: {} for s in fabric.switches}
        self.sent = []

    def run(self, ctl, commands, now=0.0, check=None):
        queue = list(commands)
        while queue:
            cmd = queue.pop(0)
            if isinstance(cmd, ReadFlows):
                queue += ctl.flows_read(cmd.switch, self.read(cmd.switch), now, cmd.epoch,
                                        self.meters[cmd.switch].values(), self.groups[cmd.switch].values())
            elif isinstance(cmd, Program):
                for phase, step in cmd.phases():
                    for sw, ops in step.items():
                        self.sent.append((phase, sw, len(ops)))
                        kind, _, verb = phase.rpartition("-")
                        if kind:
                            held = {"meter": self.meters, "group": self.groups}[kind][sw]
                            for spec in ops:
                                if verb == "delete":
                                    del held[spec.key]
                                else:
                                    held[spec.key] = spec
                        else:
                            part = SwitchDiff(**{FIELD_OF[phase]: ops})
                            self.tables[sw] = apply(self.tables[sw], part)
                            self.sent_flows(sw, part)
                    if check:
                        check(self.tables)
                queue += ctl.program_done(cmd.id, cmd.diffs.keys(), now)

    def read(self, switch):
        """The switch's flows as the controller is handed them."""
        return self.tables[switch]

    def sent_flows(self, switch, change):
        """``change`` was carried out on ``switch``."""

    def connect_all(self, ctl, now=0.0, down=()):
        for s in self.fabric.switches:
            self.run(ctl, ctl.switch_connected(s.dpid, ports_of(self.fabric, s.name, down), now), now)


def setup():
    fab = ring(4, {"client": ("s1",), "server": ("s3",)})
    res = resources_for([(att(fab, "client"), att(fab, "server"))])
    return fab, res


def loaded():
    """``setup()``'s connection up on every switch: (fabric, controller, switches)."""
    fab, res = setup()
    ctl, sw = Controller(fab), FakeFabric(fab)
    sw.connect_all(ctl)
    sw.run(ctl, ctl.set_resources(res, 0.0))
    return fab, ctl, sw


def test_connect_then_declare_installs_and_reports_up():
    fab, res = setup()
    ctl, sw = Controller(fab), FakeFabric(fab)
    sw.connect_all(ctl)
    sw.run(ctl, ctl.set_resources(res, 1.0))
    (conn,) = status_json(ctl.status())["connections"]
    assert conn["state"] == "up" and conn["path"][0] == "s1" and conn["path"][-1] == "s3"
    (d,) = FabricSim(fab, sw.tables).send(*port(fab, "client"))
    assert (d.switch, d.port) == port(fab, "server")


def restarted(fab, res) -> Controller:
    """A controller that programmed the fabric, then a fresh one on the same fabric and resources:
    asserts that the fresh one sent nothing and changed nothing, and returns it."""
    ctl, sw = Controller(fab), FakeFabric(fab)
    sw.connect_all(ctl)
    sw.run(ctl, ctl.set_resources(res, 0.0))
    before = dict(sw.tables)
    sw.sent.clear()
    fresh = Controller(fab)
    sw.run(fresh, fresh.set_resources(res, 5.0))
    sw.connect_all(fresh, 5.0)
    assert sw.sent == [] and sw.tables == before
    return fresh


def test_restarted_controller_with_unchanged_fabric_sends_nothing():
    fresh = restarted(*setup())
    assert status_json(fresh.status())["connections"][0]["state"] == "up"


def test_request_removed_leaves_only_pipeline_flows():
    fab, res = setup()
    ctl, sw = Controller(fab), FakeFabric(fab)
    sw.connect_all(ctl)
    sw.run(ctl, ctl.set_resources(res, 0.0))
    sw.run(ctl, ctl.set_resources(type(res)(res.services, res.endpoints, ()), 1.0))
    from ryu_nsm.core.flowspec import PIPELINE_COOKIE
    assert all(f.cookie == PIPELINE_COOKIE for flows in sw.tables.values() for f in flows)


def test_link_down_reroutes_make_before_break():
    fab, res = setup()
    ctl, sw = Controller(fab), FakeFabric(fab)
    sw.connect_all(ctl)
    sw.run(ctl, ctl.set_resources(res, 0.0))
    path = status_json(ctl.status())["connections"][0]["path"]
    # Cut the first link of the path: take s1's port on it down.
    link = next(lk for lk in fab.links if {lk.a, lk.b} == {path[0], path[1]})
    s1 = fab.switch_by_name[path[0]]
    cut_port = link.port_on(path[0])
    name = f"{path[0]}-eth{cut_port}"
    alive = [l2 for l2 in fab.links if l2 is not link]
    from ryu_nsm.core.fabric import Fabric
    survived = Fabric(fab.name, fab.switches, tuple(alive), fab.hosts)

    def still_delivers(tables):
        # Between phases the old path still works (the cut link aside, judged on the old fabric).
        deliveries = FabricSim(fab, tables).send(*port(fab, "client"))
        assert [(d.switch, d.port) for d in deliveries] == [port(fab, "server")]

    sw.run(ctl, ctl.port_changed(s1.dpid, PortInfo(cut_port, name, False), 2.0), 2.0, check=still_delivers)
    new = status_json(ctl.status())["connections"][0]
    assert new["state"] == "up" and new["path"] != path
    (d,) = FabricSim(survived, sw.tables).send(*port(fab, "client"))
    assert (d.switch, d.port) == port(fab, "server")
    assert any("moved" in h["what"] and "down" in h["what"] for h in status_json(ctl.status())["history"])
    phases = [p for p, _, _ in sw.sent]
    assert phases == sorted(phases, key=["add", "modify", "delete"].index)


def test_a_move_waits_before_deleting_the_old_path_for_what_is_still_on_it():
    fab = ring(4, {"client": ("s1",), "server": ("s3",)}, latency=0.020)
    res = resources_for([(att(fab, "client"), att(fab, "server"))])
    ctl, sw = Controller(fab), FakeFabric(fab)
    sw.connect_all(ctl)
    first = ctl.set_resources(res, 0.0)
    assert [c.drain for c in first if isinstance(c, Program)] == [0.0]  # nothing moved
    sw.run(ctl, first)
    path = ctl.plan.connections["default/c0/nsm-1"].path
    link = path.links[0]
    name = next(n for (s, n), p in fab.port_names.items() if s == link.a and p == link.a_port)
    (program,) = [c for c in ctl.port_changed(fab.switch_by_name[link.a].dpid,
                                              PortInfo(link.a_port, name, False), 1.0)
                  if isinstance(c, Program)]
    # Twice the left path's latency (two 20 ms links), and a margin.
    assert abs(program.drain - (2 * 0.040 + 0.005)) < 1e-9


def test_changes_during_a_program_are_folded_into_the_next():
    fab, res = setup()
    ctl, sw = Controller(fab), FakeFabric(fab)
    sw.connect_all(ctl)
    (program,) = [c for c in ctl.set_resources(res, 0.0) if isinstance(c, Program)]
    assert ctl.set_resources(type(res)(), 0.5) == []  # held back: a program is in flight
    sw.run(ctl, [program])
    from ryu_nsm.core.flowspec import PIPELINE_COOKIE
    assert all(f.cookie == PIPELINE_COOKIE for flows in sw.tables.values() for f in flows)


def test_unconfirmed_switch_is_read_again():
    fab, res = setup()
    ctl, sw = Controller(fab), FakeFabric(fab)
    sw.connect_all(ctl)
    (program,) = ctl.set_resources(res, 0.0)
    failed = next(iter(program.diffs))
    cmds = ctl.program_done(program.id, [s for s in program.diffs if s != failed], 0.1)
    assert [c.switch for c in cmds if isinstance(c, ReadFlows)] == [failed]


def test_switch_away_too_long_is_routed_around():
    fab, res = setup()
    ctl, sw = Controller(fab, switch_down_after=5.0), FakeFabric(fab)
    sw.connect_all(ctl)
    sw.run(ctl, ctl.set_resources(res, 0.0))
    transit = status_json(ctl.status())["connections"][0]["path"][1]
    ctl.switch_disconnected(fab.switch_by_name[transit].dpid, 1.0)
    assert ctl.tick(3.0) == []
    sw.run(ctl, ctl.tick(7.0), 7.0)
    assert transit not in status_json(ctl.status())["connections"][0]["path"]


def test_unknown_datapath_is_left_alone():
    fab, _ = setup()
    assert Controller(fab).switch_connected(0xDEAD, [], 0.0) == []


def test_read_overtaken_by_a_program_is_asked_again():
    fab, res = setup()
    ctl, sw = Controller(fab), FakeFabric(fab)
    sw.connect_all(ctl)
    stale = ctl.audit()
    sw.run(ctl, ctl.set_resources(res, 0.0))
    touched = [c for c in stale if c.switch in {"s1", "s3"}]
    again = ctl.flows_read(touched[0].switch, frozenset(), 1.0, touched[0].epoch)
    assert [type(c) for c in again] == [ReadFlows]
    assert status_json(ctl.status())["connections"][0]["state"] == "up"


def test_audit_repairs_drift():
    fab, res = setup()
    ctl, sw = Controller(fab), FakeFabric(fab)
    sw.connect_all(ctl)
    sw.run(ctl, ctl.set_resources(res, 0.0))
    good = dict(sw.tables)
    sw.tables["s1"] = frozenset()  # someone wiped s1
    sw.run(ctl, ctl.audit(), 2.0)
    assert sw.tables == good


def test_a_spread_audit_reads_the_switches_in_turn_and_still_repairs_drift():
    # The shell spreads an audit over its interval (a few switches a tick): every switch is read in
    # turn, round and round, whichever were read before; a wiped switch is repaired on its turn.
    fab, ctl, sw = loaded()
    names = sorted(s.name for s in fab.switches)
    turns = [[read.switch for read in ctl.audit(2)] for _ in range(len(names))]
    flat = [name for turn in turns for name in turn]
    assert all(len(turn) == 2 for turn in turns) and flat == (names * 2)[:2 * len(names)]
    assert {read.switch for read in ctl.audit(len(names) + 5)} == set(names)  # never more than all
    good = dict(sw.tables)
    wiped = names[-1]
    sw.tables[wiped] = frozenset()
    for _ in range(len(names)):
        reads = ctl.audit(1)
        sw.run(ctl, reads, 2.0)
        if reads[0].switch == wiped:
            break
    assert sw.tables == good


def test_the_very_flows_of_the_last_read_stand_only_until_a_program_changes_the_switch():
    # The shell's reader hands back the very object of a switch's last read when nothing on it
    # changed; the core then takes that read's work as it stands. Once a program has changed what
    # the switch holds, the same object is no longer what it holds: it is read as news (here the
    # program's flows are missing from it, so they are put back).
    fab, res = setup()
    ctl, sw = Controller(fab), FakeFabric(fab)
    sw.connect_all(ctl)
    before = dict(sw.tables)  # every switch's read: empty, before anything is declared
    sw.run(ctl, ctl.set_resources(res, 0.0))
    good = dict(sw.tables)
    changed = sorted(name for name in good if good[name] != before[name])
    assert changed
    stale = ctl.switches.switches[changed[0]].epoch
    commands = ctl.flows_read(changed[0], before[changed[0]], 1.0, stale)
    assert [type(c) for c in commands] == [Program]
    sw.tables[changed[0]] = before[changed[0]]
    sw.run(ctl, commands, 1.0)
    assert sw.tables == good
    for read in ctl.audit():  # the same objects again: nothing to do
        assert ctl.flows_read(read.switch, sw.tables[read.switch], 2.0, read.epoch) == []
        assert ctl.flows_read(read.switch, sw.tables[read.switch], 2.0, read.epoch) == []
    assert status_json(ctl.status())["connections"][0]["state"] == "up"


def test_an_audit_plans_again_only_for_tags_that_disagree_with_the_plan():
    # Tags read for the first time (the first audit after a load) are those the plan gave: at size
    # a replan for each switch's read was most of the idle load. A tag the plan does not have is
    # taken in: the connection keeps what the switch carries, the other end follows.
    from dataclasses import replace

    from ryu_nsm.core.flowspec import Priority, Table

    fab, ctl, sw = loaded()
    planned, sw.sent[:] = ctl.plan, []
    sw.run(ctl, ctl.audit(), 1.0)
    assert ctl.plan is planned and sw.sent == []
    (pc,) = planned.connections.values()
    link, tag = pc.tags[0]
    ends = fab.link_by_name[link]
    receiver = next(s for s in pc.path.switches[1:] if s in (ends.a, ends.b))
    in_port = ends.port_on(receiver)

    def retag(flow):
        match = flow.match_dict()
        if flow.table == Table.FORWARD and flow.priority == Priority.WIRE and match.get("in_port") == in_port:
            return replace(flow, match=tuple(sorted({**match, "vlan_vid": 0x1000 | (tag + 1)}.items())))
        return flow

    sw.tables[receiver] = frozenset(map(retag, sw.tables[receiver]))
    sw.run(ctl, ctl.audit(), 2.0)
    assert ctl.plan is not planned and dict(ctl.plan.connections[pc.id].tags)[link] == tag + 1
    assert status_json(ctl.status())["connections"][0]["state"] == "up"


def test_a_read_that_finds_what_was_believed_leaves_every_status_as_it_was(monkeypatch):
    # At size an audit marked every connection's status for a rebuild at each switch's read, and
    # compared every flow of the switch with the desired ones; a read that changes nothing on its
    # switch does neither, and one that finds drift does both.
    from ryu_nsm.core import switches

    _, ctl, sw = loaded()
    (before,) = ctl.status().connections
    built, build = [], ctl.book.build
    ctl.book.build = lambda pc, measured: built.append(pc.id) or build(pc, measured)
    diffed, diff = [], switches.diff_keyed
    monkeypatch.setattr(switches, "diff_keyed", lambda *a: diffed.append(a[2]) or diff(*a))
    for read in ctl.audit():
        assert ctl.flows_read(read.switch, sw.tables[read.switch], 1.0, read.epoch) == []
    (after,) = ctl.status().connections
    assert after is before and after.state == "up" and built == [] and diffed == []
    s1 = next(read for read in ctl.audit() if read.switch == "s1")
    repair = ctl.flows_read("s1", frozenset(), 2.0, s1.epoch)  # someone wiped s1
    (drifted,) = ctl.status().connections
    assert drifted.state == "pending" and built == [before.planned.id] and diffed == [None]
    assert [type(c) for c in repair] == [Program]


def test_restart_keeps_tags_chosen_in_arrival_order():
    # Four tags for three wires on the same link: preferred tags collide, so which wire got which
    # tag depends on the order requests arrived. A fresh controller must adopt them, not re-sort.
    from ryu_nsm.core.fabric import Fabric

    base = ring(2, {f"c{i}": ("s1",) for i in range(3)} | {f"e{i}": ("s2",) for i in range(3)})
    fab = Fabric(base.name, base.switches, base.links[:1], base.hosts, (10, 13))
    pairs = [(att(fab, f"c{i}"), att(fab, f"e{i}")) for i in range(3)]
    full = resources_for(pairs)
    for order in ([2, 1, 0], [1, 2, 0], [0, 2, 1]):
        ctl, sw = Controller(fab), FakeFabric(fab)
        sw.connect_all(ctl)
        for n in range(1, 4):
            chosen = {f"c{i}" for i in order[:n]}
            part = type(full)(full.services, full.endpoints,
                              tuple(r for r in full.requests if r.pod in chosen))
            sw.run(ctl, ctl.set_resources(part, float(n)))
        sw.sent.clear()
        fresh = Controller(fab)
        sw.run(fresh, fresh.set_resources(full, 9.0))
        sw.connect_all(fresh, 9.0)
        assert sw.sent == [], f"restart changed flows after arrival order {order}"
        assert all(c["state"] == "up" for c in status_json(fresh.status())["connections"])


def test_tags_read_again_after_changes_are_those_a_fresh_read_finds():
    # A switch's tags are worked out again only for the flows that changed since its last read, by
    # cookie, then named by the declared state of the moment: after requests came and went, and
    # programs changed some flows, every switch's hints must be what a restarted controller reads.
    fab = ring(4, {f"c{i}": ("s1",) for i in range(4)} | {f"e{i}": ("s3",) for i in range(4)})
    pairs = [(att(fab, f"c{i}"), att(fab, f"e{i}")) for i in range(4)]
    full = resources_for(pairs)
    ctl, sw = Controller(fab), FakeFabric(fab)
    sw.connect_all(ctl)
    for n, chosen in enumerate(({"c0", "c1"}, {"c0", "c1", "c2"}, {"c1", "c2", "c3"}), start=1):
        part = type(full)(full.services, full.endpoints, tuple(r for r in full.requests if r.pod in chosen))
        sw.run(ctl, ctl.set_resources(part, float(n)))
        sw.run(ctl, ctl.audit(), float(n))
    fresh = Controller(fab)
    sw.run(fresh, fresh.set_resources(part, 9.0))
    sw.connect_all(fresh, 9.0)
    assert len(fresh.switches.hints) >= 6  # three wires' tags, zones if any
    assert ctl.switches.hints == fresh.switches.hints
    before = ctl.switches.hints
    sw.run(ctl, ctl.audit(), 10.0)  # nothing changed: the same object, so the core knows at once
    assert ctl.switches.hints is before


def test_nothing_is_programmed_before_the_sources_have_reported():
    # A restarted controller whose source is still listing must not take the empty state for "remove all".
    fab, res = setup()
    ctl, sw = Controller(fab), FakeFabric(fab)
    sw.run(ctl, ctl.set_resources(res, 0.0))
    sw.connect_all(ctl)
    sw.sent.clear()
    fresh = Controller(fab)
    sw.connect_all(fresh, 5.0)
    assert sw.sent == []
    sw.run(fresh, fresh.set_resources(res, 6.0))
    assert sw.sent == []
    assert status_json(fresh.status())["connections"][0]["state"] == "up"


def test_restart_with_live_only_ports_keeps_flows_until_every_end_reports():
    # Attachment ports that only the switches know (made by the forwarder, not declared): after a
    # restart, the first switch to connect must not lose the flows of a wire whose other end is on a
    # switch that has not reported yet.
    from ryu_nsm.core.fabric import Fabric

    declared = ring(2, {"client": ("s1",), "server": ("s2",)})
    res = resources_for([(att(declared, "client"), att(declared, "server"))])
    bare = Fabric(declared.name, declared.switches, declared.links)  # no hosts: ports only live
    ctl, sw = Controller(bare), FakeFabric(declared)

    def connect(controller, name, now):
        cmds = controller.switch_connected(declared.switch_by_name[name].dpid, ports_of(declared, name), now)
        sw.run(controller, cmds, now)

    sw.run(ctl, ctl.set_resources(res, 0.0))
    connect(ctl, "s1", 0.0)
    connect(ctl, "s2", 0.0)
    assert status_json(ctl.status())["connections"][0]["state"] == "up"
    sw.sent.clear()
    fresh = Controller(bare)
    sw.run(fresh, fresh.set_resources(res, 5.0))
    connect(fresh, "s1", 5.0)
    assert status_json(fresh.status())["connections"][0]["state"] == "pending"
    connect(fresh, "s2", 5.1)
    assert sw.sent == []
    assert status_json(fresh.status())["connections"][0]["state"] == "up"


def test_tick_replans_when_an_endpoint_expires():
    """The core keeps the earliest expiry ahead and replans at the first tick past it (pure: ``now``)."""
    from dataclasses import replace

    fab, res = setup()
    (endpoint,) = res.endpoints
    res = replace(res, endpoints=(replace(endpoint, expires=10.0),))
    ctl, sw = Controller(fab), FakeFabric(fab)
    sw.connect_all(ctl)
    sw.run(ctl, ctl.set_resources(res, 1.0), 1.0)
    assert status_json(ctl.status())["connections"][0]["state"] == "up"
    assert ctl.tick(9.0) == []
    sw.run(ctl, ctl.tick(10.0), 10.0)
    (conn,) = status_json(ctl.status())["connections"]
    assert conn["state"] == "failed" and "endpoint expired: e0" in conn["reason"]
    assert FabricSim(fab, sw.tables).send(*port(fab, "client")) == []
    assert ctl.tick(11.0) == []  # nothing further ahead: no more replanning


def _programmed(fab, res, now=0.0):
    ctl, sw = Controller(fab), FakeFabric(fab)
    sw.connect_all(ctl, now)
    sw.run(ctl, ctl.set_resources(res, now), now)
    sw.sent.clear()
    return sw


def _connect(ctl, sw, name, now):
    dpid = sw.fabric.switch_by_name[name].dpid
    sw.run(ctl, ctl.switch_connected(dpid, ports_of(sw.fabric, name), now), now)


def test_a_restart_plans_once_every_switch_is_read():
    # A fabric that holds our flows: each switch read before the last would be a whole replan at
    # size, with tags and paths not yet known from its neighbours; the plan waits for the last read.
    fab = ring(4, {"client": ("s1",), "server": ("s3",)})
    sw = _programmed(fab, resources_for([(att(fab, "client"), att(fab, "server"))]))
    fresh = Controller(fab)
    sw.run(fresh, fresh.set_resources(resources_for([(att(fab, "client"), att(fab, "server"))]), 5.0))
    waiting = fresh.plan
    for name in ("s1", "s2", "s3"):
        _connect(fresh, sw, name, 5.0)
        assert fresh.plan is waiting, f"replanned after {name} while s4 was not read yet"
    _connect(fresh, sw, "s4", 5.1)
    assert fresh.plan is not waiting
    assert sw.sent == []
    assert status_json(fresh.status())["connections"][0]["state"] == "up"


def test_a_restart_resolves_once_unless_an_endpoint_expired_while_it_held(monkeypatch):
    # The held plan resolved every request already: at 10,000 connections a second resolve at the
    # last read was ~0.4 s of a restart. An endpoint that expires meanwhile is no candidate after.
    from dataclasses import replace

    from ryu_nsm.core import planner

    fab = ring(4, {"client": ("s1",), "server": ("s3",)})
    res = resources_for([(att(fab, "client"), att(fab, "server"))])
    resolves = []
    real = planner.resolve_whole
    monkeypatch.setattr(planner, "resolve_whole", lambda *a, **k: resolves.append(1) or real(*a, **k))
    for expires, state in ((None, "up"), (5.05, "failed")):
        declared = replace(res, endpoints=tuple(replace(ep, expires=expires) for ep in res.endpoints))
        sw = _programmed(fab, declared)
        fresh = Controller(fab)
        resolves.clear()
        sw.run(fresh, fresh.set_resources(declared, 5.0))
        for name in ("s1", "s2", "s3", "s4"):
            _connect(fresh, sw, name, 5.1)
        assert len(resolves) == (1 if expires is None else 2)
        (conn,) = status_json(fresh.status())["connections"]
        assert conn["state"] == state, conn
        if expires is not None:
            assert "endpoint expired: e0" in conn["reason"]


def test_a_restart_waits_for_a_switch_that_stays_away_no_longer_than_switch_down_after():
    fab = ring(4, {"client": ("s1",), "server": ("s2",)})
    res = resources_for([(att(fab, "client"), att(fab, "server"))])
    sw = _programmed(fab, res)
    fresh = Controller(fab, switch_down_after=10.0)
    sw.run(fresh, fresh.set_resources(res, 5.0))
    for name in ("s1", "s2", "s3"):  # s4 does not come back
        _connect(fresh, sw, name, 5.0)
    waiting = fresh.plan
    assert fresh.tick(14.9) == [] and fresh.plan is waiting
    sw.run(fresh, fresh.tick(15.0), 15.0)
    assert fresh.plan is not waiting
    assert sw.sent == []
    assert status_json(fresh.status())["connections"][0]["state"] == "up"


def test_a_cold_start_plans_at_the_first_read():
    # Bridges without flows of ours: nothing to agree with, so nothing waits for the others.
    fab = ring(4, {"client": ("s1",), "server": ("s2",)})
    ctl, sw = Controller(fab), FakeFabric(fab)
    sw.run(ctl, ctl.set_resources(resources_for([(att(fab, "client"), att(fab, "server"))]), 0.0))
    _connect(ctl, sw, "s1", 0.0)
    _connect(ctl, sw, "s2", 0.0)
    assert status_json(ctl.status())["connections"][0]["state"] == "up"


def test_a_start_shows_what_is_declared_and_plans_at_the_first_read_or_after_switch_down_after():
    # Planned before a switch is read, a start at size would route 10,000 connections for nothing:
    # until then every connection is only resolved, and shown waiting, with why.
    fab = ring(4, {"client": ("s1",), "server": ("s2",)})
    res = resources_for([(att(fab, "client"), att(fab, "server"))])
    ctl = Controller(fab, switch_down_after=10.0)
    assert ctl.set_resources(res, 0.0) == []
    (conn,) = status_json(ctl.status())["connections"]
    assert conn["state"] == "pending" and "just started" in conn["reason"]
    assert all(pc.path is None for pc in ctl.plan.connections.values())
    held = ctl.plan
    assert ctl.tick(9.9) == [] and ctl.plan is held
    ctl.tick(10.0)  # no switch came: planned all the same, waiting for the switches to report
    (conn,) = status_json(ctl.status())["connections"]
    assert conn["state"] == "pending" and "just started" not in conn.get("reason", ""), conn
    assert ctl.plan is not held and all(pc.path is not None for pc in ctl.plan.connections.values())


def test_a_restart_keeps_the_conntrack_zones_the_switches_hold():
    # Two wires whose preferred zones collide: the one that came first holds it, the other the next
    # zone up. A fresh controller planning both at once must keep the zones the switches commit to.
    import itertools
    from dataclasses import replace

    from ryu_nsm.core.router import ZONE_SCOPE, zone_allocator

    fab = ring(2, {"a": ("s1",), "b": ("s1",), "x": ("s2",), "y": ("s2",)})
    base = resources_for([(att(fab, "a"), att(fab, "x")), (att(fab, "b"), att(fab, "y"))])
    zones, seen = zone_allocator(), {}
    for i in itertools.count():
        zone = zones.preferred(replace(base.requests[0], pod=f"p{i}").id, ZONE_SCOPE)
        if zone in seen:
            pods = (seen[zone], f"p{i}")
            break
        seen[zone] = f"p{i}"
    renamed = tuple(replace(r, pod=pod) for r, pod in zip(base.requests, pods, strict=True))
    full = replace(base, requests=renamed)
    held = {}
    for order in ((0, 1), (1, 0)):
        ctl, sw = Controller(fab), FakeFabric(fab)
        sw.connect_all(ctl)
        for n in (1, 2):
            part = replace(full, requests=tuple(full.requests[i] for i in sorted(order[:n])))
            sw.run(ctl, ctl.set_resources(part, float(n)))
        held[order] = {cid: pc.zone for cid, pc in ctl.plan.connections.items()}
        sw.sent.clear()
        fresh = Controller(fab)
        sw.run(fresh, fresh.set_resources(full, 9.0))
        sw.connect_all(fresh, 9.0)
        assert sw.sent == [], f"restart changed flows after arrival order {order}"
        assert {cid: pc.zone for cid, pc in fresh.plan.connections.items()} == held[order]
    assert held[(0, 1)] != held[(1, 0)]  # the order decided: a fresh plan cannot know it alone


def test_a_restart_keeps_the_paths_the_switches_carry():
    # Two equal paths s1-s2-s3 and s1-s4-s3: the wire took the second while the first was cut, and
    # stays there once the link is back. A fresh plan would choose the first; the restart keeps it.
    fab, res = setup()
    sw = _programmed(fab, res)
    ctl = Controller(fab)
    sw.run(ctl, ctl.set_resources(res, 0.0))
    sw.connect_all(ctl, 0.0)
    first = status_json(ctl.status())["connections"][0]["path"]
    link = next(iter(ctl.plan.connections.values())).path.links[0]
    name = next(n for (s, n), p in fab.port_names.items() if (s, p) == (link.a, link.a_port))
    dpid = fab.switch_by_name[link.a].dpid
    for now, up in ((1.0, False), (2.0, True)):  # the link goes down, then comes back
        sw.run(ctl, ctl.port_changed(dpid, PortInfo(link.a_port, name, up), now), now)
    carried = status_json(ctl.status())["connections"][0]["path"]
    assert carried != first
    sw.sent.clear()
    fresh = Controller(fab)
    sw.run(fresh, fresh.set_resources(res, 5.0))
    sw.connect_all(fresh, 5.0)
    assert sw.sent == []
    assert status_json(fresh.status())["connections"][0]["path"] == carried
