"""Reads taken by what changed since the last one (core/switch_reads.py), fed by the shell's reader
from flow stats bytes: what the core believes, and the tags it reads, must be what a whole read of
the same switches gives, and drift inside a read taken that way is still found and repaired."""

from __future__ import annotations

from ryu_nsm.core.controller import Controller, Program
from ryu_nsm.core.flowspec import FlowSpec, Priority, Table, is_ours, wire_cookie
from ryu_nsm.core.switch_reads import FlowsRead, SwitchReads
from ryu_nsm.observe.report import status_json
from ryu_nsm.openflow import wire
from ryu_nsm.openflow.flow_read import FlowReader

from .fabrics import ring
from .test_controller import FakeFabric
from .test_planner import att, resources_for
from .test_wire_decode import raw_of


class ReaderFabric(FakeFabric):
    """Hands the controller each switch's flows as the shell does: flow stats entries through one
    FlowReader, seeded with the flows it sent."""

    def __init__(self, fabric):
        super().__init__(fabric)
        self.reader = FlowReader()
        self.dpid = {s.name: s.dpid for s in fabric.switches}
        self.taken_by_change = 0

    def read(self, switch):
        entries = [wire.RawFlowStats(raw_of(spec, 3, 180)) for spec in sorted(self.tables[switch], key=str)]
        flows = self.reader.specs(self.dpid[switch], entries)
        self.taken_by_change += flows.since is not None
        return flows

    def sent_flows(self, switch, change):
        for spec in change.adds + change.modifies:
            self.reader.expect(self.dpid[switch], wire.encode_flow_mod(spec, wire.OFPFC_ADD), spec)


def four_wires():
    fab = ring(4, {f"c{i}": ("s1",) for i in range(4)} | {f"e{i}": ("s3",) for i in range(4)})
    full = resources_for([(att(fab, f"c{i}"), att(fab, f"e{i}")) for i in range(4)])
    return fab, full


def declared(full, chosen):
    return type(full)(full.services, full.endpoints, tuple(r for r in full.requests if r.pod in chosen))


def started(chosen=None):
    """A controller and its switches read through a FlowReader, with ``chosen`` clients' wires (all
    when None) up: (the whole declared state, controller, switches)."""
    fab, full = four_wires()
    ctl, sw = Controller(fab), ReaderFabric(fab)
    sw.connect_all(ctl)
    sw.run(ctl, ctl.set_resources(full if chosen is None else declared(full, chosen), 1.0))
    return full, ctl, sw


def all_up(ctl):
    return all(c["state"] == "up" for c in status_json(ctl.status())["connections"])


def believed_is_held(ctl, sw):
    for name, state in ctl.switches.switches.items():
        assert state.flows == {f.key: f for f in sw.tables[name] if is_ours(f.cookie)}, name


def test_reads_taken_by_change_believe_and_tag_as_whole_reads_do():
    fab, full = four_wires()
    ctl, sw = Controller(fab), ReaderFabric(fab)
    sw.connect_all(ctl)
    for n, chosen in enumerate(({"c0", "c1"}, {"c0", "c1", "c2"}, {"c1", "c2", "c3"}, {"c3"}), start=1):
        part = declared(full, chosen)
        sw.run(ctl, ctl.set_resources(part, float(n)))
        sw.run(ctl, ctl.audit(), float(n))
        believed_is_held(ctl, sw)
    assert sw.taken_by_change > 0  # the reads after programs were taken by what changed
    fresh = Controller(fab)
    sw.run(fresh, fresh.set_resources(part, 9.0))
    sw.connect_all(fresh, 9.0)
    assert ctl.switches.hints == fresh.switches.hints and len(fresh.switches.hints) >= 2
    assert all_up(ctl)


def test_drift_between_reads_taken_by_change_is_repaired():
    # Someone deletes one of our flows and adds a stranger's: the read that finds it is taken by
    # what changed, and must still tell the core what the switch holds, so the flow comes back.
    _, ctl, sw = started()
    sw.run(ctl, ctl.audit(), 2.0)
    ours = sorted((f for f in sw.tables["s1"] if is_ours(f.cookie)), key=str)
    lost, first = ours[-1], ours[0]
    stranger = FlowSpec.make(first.table, first.priority + 1, first.match_dict(), first.actions, first.goto,
                             cookie=0x42)
    sw.tables["s1"] = (sw.tables["s1"] - {lost}) | {stranger}
    taken = sw.taken_by_change
    commands = ctl.audit()
    assert any(cmd.switch == "s1" for cmd in commands)
    sw.sent.clear()
    sw.run(ctl, commands, 3.0)
    assert sw.taken_by_change > taken
    assert lost in sw.tables["s1"] and stranger in sw.tables["s1"]  # ours back, theirs left alone
    assert [(phase, switch) for phase, switch, _ in sw.sent if phase == "add"] == [("add", "s1")]
    believed_is_held(ctl, sw)
    assert all_up(ctl)


def test_a_read_since_one_the_core_never_took_is_taken_whole():
    # A stale read (asked before a program) reaches the reader but not the core: the next read's
    # change is against a read the core does not hold, so the core must take it whole.
    full, ctl, sw = started({"c0"})
    stale = [cmd for cmd in ctl.audit() if cmd.switch == "s1"]
    commands = ctl.set_resources(full, 2.0)  # a program: the audit's read of s1 is stale now
    assert any(isinstance(cmd, Program) for cmd in commands)
    sw.run(ctl, commands, 2.0)
    sw.run(ctl, stale, 2.0)  # the reader reads s1, the core asks again
    believed_is_held(ctl, sw)
    assert all_up(ctl)


def test_a_program_undone_behind_our_back_is_found_though_the_read_is_the_last_one():
    # A program swaps one wire's flows for another's on s1; someone puts s1 back as it was. The read
    # then finds nothing the last read did not, yet the switch holds what the program changed:
    # where programs changed what was believed is checked too, and the program is made again.
    full, ctl, sw = started({"c0", "c1", "c2"})
    sw.run(ctl, ctl.audit(), 1.0)
    before = sw.tables["s1"]
    sw.run(ctl, ctl.set_resources(declared(full, {"c1", "c2", "c3"}), 2.0))
    after, sw.tables["s1"] = sw.tables["s1"], before
    taken = sw.taken_by_change
    sw.sent.clear()
    sw.run(ctl, ctl.audit(), 3.0)
    assert sw.taken_by_change > taken
    assert sw.tables["s1"] == after
    assert {(phase, switch) for phase, switch, _ in sw.sent} == {("add", "s1"), ("delete", "s1")}
    believed_is_held(ctl, sw)


def test_a_read_is_taken_by_change_only_after_the_read_it_names():
    # A read numbered after no other (a reader's first) follows nothing the core holds, even when
    # the core's last read of the switch was not numbered: it is taken whole.
    fab, _ = four_wires()
    a, b = (FlowSpec.make(Table.FORWARD, Priority.WIRE, {"in_port": port}, [("output", 9)],
                          cookie=wire_cookie(f"c{port}")) for port in (1, 2))
    reads = SwitchReads(fab)
    assert reads.take("s1", [a]) == ({a.key: a}, None)
    assert reads.take("s1", FlowsRead([b], serial=1)) == ({b.key: b}, None)
    swapped = FlowsRead([a], serial=2, since=1, added=(a,), gone=(b,))
    assert reads.take("s1", swapped) == ({a.key: a}, {a.key, b.key})
    assert reads.take("s1", FlowsRead([a, b], serial=4, since=3, added=(b,))) == ({a.key: a, b.key: b}, None)
