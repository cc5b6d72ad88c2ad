"""The controller's switch sessions: what each switch holds, what it should hold, and the programs
that take it from one to the other.

Flows on a switch are known only after the shell has read them (on every connect and reconnect);
a switch is programmed with the diff against what it holds, so a restarted controller facing an
unchanged fabric sends nothing. One program runs at a time; changes that arrive meanwhile are
folded into the next one. The desired flows are kept per switch and key and updated for the
connections a plan touched only, and only the keys they touched are diffed — except on a switch
whose flows were just read, which is diffed whole.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from ryu_nsm.core.fabric import Fabric
from ryu_nsm.core.flowspec import (
    FlowSpec,
    GroupSpec,
    MeterSpec,
    is_our_group,
    is_our_meter,
    wire_cookie,
)
from ryu_nsm.core.manager import Manager
from ryu_nsm.core.model import Resources
from ryu_nsm.core.planner import PLANNED, WAITING, FabricState, Plan, PlannedConnection
from ryu_nsm.core.reconcile import (
    OBJECT_KINDS,
    PHASES,
    ConflictingFlows,
    FlowKey,
    SwitchDiff,
    apply_keyed,
    diff_keyed,
    diff_objects,
)
from ryu_nsm.core.resolver import FAILED
from ryu_nsm.core.switch_reads import SwitchReads

log = logging.getLogger("ryu_nsm.core.controller")

MAX_DRAIN = 1.0  # s: a path slower than that is not waited for

UP = "up"
PENDING = "pending"


@dataclass(frozen=True)
class PortInfo:
    number: int
    name: str
    up: bool


@dataclass(frozen=True)
class ReadFlows:
    """Ask a switch for the flows it holds (ours, by cookie); answer with ``flows_read``."""

    switch: str
    dpid: int
    epoch: int = 0


@dataclass(frozen=True)
class Program:
    """HistoryEntry switches in phases (add, modify, delete); each phase is barrier-confirmed on every
    switch before the next one starts. Answer with ``program_done``."""

    id: int
    diffs: dict[str, SwitchDiff]
    dpids: dict[str, int]
    # Seconds to wait before the delete phase: frames still on a path a connection left (a slow link
    # holds tens of milliseconds of them) must reach the far end while its old flows are there.
    drain: float = 0.0

    def phases(self) -> list[dict[str, tuple[FlowSpec, ...]]]:
        out = []
        for phase in PHASES:
            step = {sw: d.ops(phase) for sw, d in self.diffs.items() if d.ops(phase)}
            if step:
                out.append((phase, step))
        return out


@dataclass
class SwitchState:
    name: str
    dpid: int
    connected: bool = True
    ports: dict[str, PortInfo] = field(default_factory=dict)
    flows: dict[FlowKey, FlowSpec] | None = None  # ours, by key; None until read from the switch
    read: object = None  # the flows as last read, while no program has changed ``flows`` since
    moved: set[FlowKey] = field(default_factory=set)  # keys confirmed programs changed since the read
    meters: dict[int, MeterSpec] = field(default_factory=dict)  # ours, by id; read with the flows
    groups: dict[int, GroupSpec] = field(default_factory=dict)  # ours, by id; read with the flows
    since: float = 0.0
    epoch: int = 0  # bumped by every program; a read answered from an older epoch is stale

    def objects(self) -> dict[str, dict[int, object]]:
        """Meters and groups, by kind."""
        return {"meter": self.meters, "group": self.groups}


class SwitchManager(Manager):
    """What each switch holds and should hold; the programs between the two; connection states."""

    def __init__(self, fabric: Fabric, plan: Plan, switch_down_after: float):
        self.fabric = fabric
        self.switch_down_after = switch_down_after
        self.plan = plan  # the latest, kept up to date by plan_changed
        self.switches: dict[str, SwitchState] = {}
        self.owner: dict[int, str] = {}  # cookie → connection id, for planned connections
        self._hints: dict[tuple[str, str], int] | None = {}  # all switches' hints; None: to gather again
        self.dirty = False  # a change waits for the program in flight
        self._program_seq = 0
        self._inflight: Program | None = None
        self._tag_hints: dict[str, dict[tuple[str, str], int]] = {}
        # The hints the last read found that its switch's read before did not (came or changed), and
        # whether it found anything other than what was believed the switch holds.
        self.hints_came: dict[tuple[str, str], int] = {}
        self.read_changed = False
        self.reads = SwitchReads(fabric)
        self._named: dict[str, tuple[dict, tuple, dict]] = {}  # switch → (those tags, requests, hints)
        self._cookies: tuple[tuple, dict[int, str]] = ((), {})  # requests → their wire cookies
        self._cookie_of: dict[str, int] = {}  # the other way, for those requests
        # Desired flows by switch and key, the keys changed since the last diff, and the switches to
        # diff whole (flows just read).
        self._desired: dict[str, dict[FlowKey, FlowSpec]] = {
            sw: {f.key: f for f in flows} for sw, flows in plan.flows.items()}
        self._changed_keys: dict[str, set[FlowKey]] = {}
        # Meters and groups alike: kind → switch → id → spec, and kind → switch → ids changed.
        self._desired_objects: dict[str, dict[str, dict[int, object]]] = {kind: {} for kind in OBJECT_KINDS}
        self._changed_objects: dict[str, dict[str, set[int]]] = {kind: {} for kind in OBJECT_KINDS}
        self._diff_whole: set[str] = set()
        self._audited = ""  # the switch a spread audit read last: the next read begins after it
        self._up: dict[str, str] = {}  # connection id → its last computed state, until invalidated
        self._ports_state: tuple | None = None  # (ports, down links, unreported) until a port changes

    # -- sessions -------------------------------------------------------------------------------

    def connected(self, dpid: int, ports: Iterable[PortInfo], now: float) -> SwitchState | None:
        """A switch (re)connected with ``ports``; None when it is not in the fabric."""
        switch = self.fabric.switch_by_dpid.get(dpid)
        if switch is None:
            log.warning("datapath %#x is not in fabric %s: left alone", dpid, self.fabric.name)
            return None
        state = SwitchState(switch.name, dpid, ports={p.name: p for p in ports}, since=now)
        self.switches[switch.name] = state
        log.info("switch %s (dpid %#x) connected with %d ports", switch.name, dpid, len(state.ports))
        return state

    def disconnected(self, dpid: int, now: float) -> bool:
        """A switch went away; False when it was not known."""
        state = self._by_dpid(dpid)
        if state is None:
            return False
        state.connected = False
        state.flows = state.read = None
        state.since = now
        log.warning("switch %s disconnected; its flows stay (fail-mode secure)", state.name)
        return True

    def port_changed(self, dpid: int, port: PortInfo | None, deleted_name: str = "") -> bool:
        """Port added, changed (``port``) or deleted (``deleted_name``); True when that is news."""
        state = self._by_dpid(dpid)
        if state is None:
            return False
        if port is None:
            state.ports.pop(deleted_name, None)
        else:
            old = state.ports.get(port.name)
            state.ports[port.name] = port
            if old == port:
                return False
        log.info("switch %s port %s is %s", state.name, deleted_name or port.name,
                 "gone" if port is None else ("up" if port.up else "down"))
        return True

    def _by_dpid(self, dpid: int) -> SwitchState | None:
        switch = self.fabric.switch_by_dpid.get(dpid)
        return self.switches.get(switch.name) if switch else None

    def flows_read(self, switch: str, flows: Iterable[FlowSpec], epoch: int, meters: Iterable[MeterSpec],
                   groups: Iterable[GroupSpec], resources: Resources) -> list | None:
        """What a switch holds; None when taken, else the commands instead (a stale read is asked
        again, a read of a switch not connected dropped)."""
        self.read_changed = False
        state = self.switches.get(switch)
        if state is None or not state.connected:
            return []
        if epoch != state.epoch:
            return [ReadFlows(switch, state.dpid, state.epoch)]
        believed, believed_objects = state.flows, (state.meters, state.groups)
        # The reader hands back the very list of the switch's last read when every entry is as it was
        # then; if no program changed what we believe since, that read's work stands (at size an idle
        # audit's read of a core switch was ~40 ms of indexing and comparing 18,000 flows).
        again = believed is not None and flows is state.read
        changed = moved = None
        if not again:
            state.flows, changed = self.reads.take(switch, flows)
            state.read, moved, state.moved = flows, state.moved, set()
        state.meters = {m.meter_id: m for m in meters if is_our_meter(m.meter_id)}
        state.groups = {g.group_id: g for g in groups if is_our_group(g.group_id)}
        # An audit that finds what was believed (the reader hands back the very flow objects) changes
        # no connection's state: at size, working them all out again was most of a status render.
        # Nor is it diffed whole: what was believed is what the last confirmed program left, so what
        # the desired state gained since is in the changed keys (an idle audit at 178,000 flows
        # compared them all every 30 s).
        same_flows = again or (believed is not None and _same_objects(believed, state.flows, changed, moved))
        self.read_changed = not (same_flows and believed_objects == (state.meters, state.groups))
        if self.read_changed:
            self._up.clear()
            self._diff_whole.add(switch)
        found = self._by_connection(switch, self.reads.tags(switch), resources)
        # The same hints stay the same object: the core then knows that the read changed no plan
        # (an audit of a big fabric that finds what it expects costs the flows read, not a replan).
        old = self._tag_hints.get(switch)
        if found is old:  # an audit that found what the last read found: nothing came
            self.hints_came = {}
            return None
        self.hints_came = {key: tag for key, tag in found.items() if old is None or old.get(key) != tag}
        if old is None or found != old:
            self._hints = None
        self._tag_hints[switch] = found  # kept even when equal: the next read's is the same object
        return None

    @property
    def hints(self) -> dict[tuple[str, str], int]:
        """Every switch's tag and zone hints: a new object after a read changed them, gathered when
        asked for (a restart reads 80 switches before it plans once)."""
        if self._hints is None:
            self._hints = {k: v for per_switch in self._tag_hints.values() for k, v in per_switch.items()}
        return self._hints

    def _by_connection(self, switch: str, tags: dict[tuple[int, str], int], resources: Resources
                       ) -> dict[tuple[str, str], int]:
        """``tags`` keyed by the declared connection each cookie is the wire of (others left out):
        the same object while neither changed."""
        last = self._named.get(switch)
        if last is not None and last[0] is tags and last[1] is resources.requests:
            return last[2]
        if self._cookies[0] is not resources.requests:  # one map per declared state, not per read
            # Each id's cookie kept from the state before: hashing 10,000 ids again was ~40 ms.
            before, cookie_of = self._cookie_of, {}
            for request in resources.requests:
                cookie = before.get(request.id)
                cookie_of[request.id] = wire_cookie(request.id) if cookie is None else cookie
            self._cookie_of = cookie_of
            self._cookies = (resources.requests, {cookie: cid for cid, cookie in cookie_of.items()})
        by_cookie = self._cookies[1]
        found = {}
        for (cookie, scope), tag in tags.items():
            cid = by_cookie.get(cookie)
            if cid:
                found[(cid, scope)] = tag
        self._named[switch] = (tags, resources.requests, found)
        return found

    def audit(self, count: int | None = None) -> list:
        """Read connected switches again: drift (flows changed behind our back) is then repaired.
        ``count``: the next that many in turn (by name), not all; an audit spread over its interval
        holds a change up behind one switch's read, not behind every switch's (at 80 switches and
        178,000 flows, a whole audit held the requests that came during it for up to 0.2 s)."""
        connected = sorted(name for name, s in self.switches.items() if s.connected)
        if count is not None and count < len(connected):
            at = bisect.bisect_right(connected, self._audited)
            connected = (connected[at:] + connected[:at])[:count]
            self._audited = connected[-1]
        return [ReadFlows(name, self.switches[name].dpid, self.switches[name].epoch) for name in connected]

    def ready(self) -> list[SwitchState]:
        """Connected switches whose flows are known."""
        return [s for s in self.switches.values() if s.connected and s.flows is not None]

    # -- fabric state ---------------------------------------------------------------------------

    def fabric_changed(self) -> None:
        self._ports_state = None
        self._up.clear()

    def fabric_state(self, now: float, avoid: dict[str, frozenset[str]], latency: dict[str, float]
                     ) -> FabricState:
        """Down links and switches, live port numbers and unreported switches, with the QoS loop's
        ``avoid`` and ``latency``."""
        if self._ports_state is None:
            self._ports_state = self._ports()
        ports, down_links, unreported = self._ports_state
        down_switches = frozenset(
            s.name for s in self.switches.values()
            if not s.connected and now - s.since >= self.switch_down_after
        )
        return FabricState(down_links, down_switches, ports, unreported, avoid, latency)

    def _ports(self) -> tuple:
        down_ports = set()
        ports: dict[tuple[str, str], int] = {}
        for s in self.switches.values():
            if not s.ports:
                continue
            by_number = {p.number: p for p in s.ports.values()}
            for p in s.ports.values():
                ports[(s.name, p.name)] = p.number
            for number in self.fabric.link_ports_by_switch.get(s.name, ()):
                if number not in by_number or not by_number[number].up:
                    down_ports.add((s.name, number))
        down_links = frozenset(
            link.name for link in self.fabric.links
            if (link.a, link.a_port) in down_ports or (link.b, link.b_port) in down_ports
        )
        unreported = frozenset(s.name for s in self.fabric.switches if s.name not in self.switches)
        return ports, down_links, unreported

    # -- programs -------------------------------------------------------------------------------

    def diff_all(self) -> None:
        """Diff every switch whole at the next program."""
        self._diff_whole.update(self.switches)

    def program(self, drain: float) -> list:
        """A program of what changed since the last one, unless one is in flight (then after it)."""
        if self._inflight is not None:
            self.dirty = True
            return []
        self.dirty = False
        diffs = {}
        for sw, s in self.switches.items():
            if not s.connected or s.flows is None:
                continue  # diffed whole once its flows are read
            change = self._diff(sw, s)
            if change:
                diffs[sw] = change
        self._diff_whole.clear()
        self._changed_keys.clear()
        for changed in self._changed_objects.values():
            changed.clear()
        if not diffs:
            return []
        self._program_seq += 1
        for sw in diffs:
            self.switches[sw].epoch += 1
        program = Program(self._program_seq, diffs, {sw: self.switches[sw].dpid for sw in diffs},
                          min(drain, MAX_DRAIN))
        self._inflight = program
        return [program]

    def _diff(self, sw: str, s: SwitchState) -> SwitchDiff | None:
        """What takes switch ``sw`` to its desired state: whole, or the keys changed; None if unchanged."""
        whole = sw in self._diff_whole
        if not whole and sw not in self._changed_keys and not any(
                sw in changed for changed in self._changed_objects.values()):
            return None
        keys = None if whole else self._changed_keys.get(sw, ())
        change = diff_keyed(self._desired.get(sw, {}), s.flows, keys, self.plan.keep_cookies)
        held = s.objects()
        for kind in OBJECT_KINDS:
            ids = None if whole else self._changed_objects[kind].get(sw, ())
            found = diff_objects(kind, self._desired_objects[kind].get(sw, {}), held[kind], ids)
            if any(found.values()):
                change = replace(change, **found)
        return change

    def program_done(self, program_id: int, confirmed: Iterable[str]) -> list:
        """The shell finished a program; ``confirmed`` are switches whose every phase was acknowledged.

        Switches not confirmed (error, disconnect, timeout) are read again before the next diff.
        """
        program = self._inflight
        if program is None or program.id != program_id:
            return []
        self._inflight = None
        confirmed = set(confirmed)
        commands: list = []
        for sw, change in program.diffs.items():
            state = self.switches.get(sw)
            if state is None or state.flows is None:
                continue
            if sw in confirmed:
                apply_keyed(state.flows, change, state.objects())
                state.moved.update(f.key for f in change.adds + change.modifies + change.deletes)
                state.read = None
                for flow in change.adds + change.modifies + change.deletes:
                    self._up.pop(self.owner.get(flow.cookie), None)
                if any(change.ops(phase) for phase in PHASES if "-" in phase):
                    self._up.clear()  # meters and groups carry no cookie; they change seldom
            else:
                state.flows = state.read = None
                self._up.clear()
                if state.connected:
                    commands.append(ReadFlows(sw, state.dpid, state.epoch))
        return commands

    # -- desired state --------------------------------------------------------------------------

    def plan_changed(self, before: Plan, after: Plan, state: FabricState, now: float) -> None:
        """Bring the desired flows up to ``after``: whole on a new pipeline, else the touched connections."""
        self.plan = after
        for cid in after.touched:
            self._up.pop(cid, None)
            old, new = before.connections.get(cid), after.connections.get(cid)
            if old is not None:
                self.owner.pop(wire_cookie(cid), None)
            if new is not None and new.flows:
                self.owner[wire_cookie(cid)] = cid
        if after.pipeline is not before.pipeline and not self._desired:
            self._desired = {sw: {f.key: f for f in flows} for sw, flows in after.flows.items()}
            for kind in OBJECT_KINDS:
                self._desired_objects[kind] = {sw: {spec.key: spec for spec in specs}
                                               for sw, specs in after.objects(kind).items()}
            self._diff_whole.update(self.switches)
            return
        if after.pipeline is not before.pipeline:
            self._update_pipeline(before, after)
        for kind in OBJECT_KINDS:
            self._update_objects(kind, before, after)
        self._update_flows(before, after)

    def _update_pipeline(self, before: Plan, after: Plan) -> None:
        """The base flows of the switches whose pipeline came, went or changed (a switch down or back)."""
        for sw in before.pipeline.keys() | after.pipeline.keys():
            old, new = before.pipeline.get(sw, ()), after.pipeline.get(sw, ())
            if old is new:
                continue
            table = self._desired.setdefault(sw, {})
            for flow in old:
                if table.get(flow.key) == flow:
                    del table[flow.key]
            for flow in new:
                table[flow.key] = flow
            self._diff_whole.add(sw)

    def _update_flows(self, before: Plan, after: Plan) -> None:
        changes = []
        for cid in after.touched:
            old, new = before.connections.get(cid), after.connections.get(cid)
            old_flows, new_flows = (old.flows if old else ()), (new.flows if new else ())
            if old_flows != new_flows:
                changes.append((old_flows, new_flows))
        # Every old flow goes before any new one is added: a key may pass from one connection to another.
        # The desired tables hold the plan's very flow objects: identity settles most comparisons.
        for old_flows, _ in changes:
            for sw, flow in old_flows:
                key, table = flow.key, self._desired.get(sw, {})
                held = table.get(key)
                if held is flow or held == flow:
                    del table[key]
                self._changed_keys.setdefault(sw, set()).add(key)
        for _, new_flows in changes:
            for sw, flow in new_flows:
                key = flow.key
                other = self._desired.setdefault(sw, {}).setdefault(key, flow)
                if other is not flow and other != flow:
                    raise ConflictingFlows(f"two desired flows share {key}: {other} and {flow}")
                self._changed_keys.setdefault(sw, set()).add(key)

    def _update_objects(self, kind: str, before: Plan, after: Plan) -> None:
        """Like the flows: the touched connections' meters (or groups) leave, then come back as they are."""
        desired, changed = self._desired_objects[kind], self._changed_objects[kind]
        changes = []
        for cid in after.touched:
            old, new = before.connections.get(cid), after.connections.get(cid)
            old_specs, new_specs = (old.objects(kind) if old else ()), (new.objects(kind) if new else ())
            if old_specs != new_specs:
                changes.append((old_specs, new_specs))
        for old_specs, _ in changes:
            for sw, spec in old_specs:
                table = desired.get(sw, {})
                if table.get(spec.key) == spec:
                    del table[spec.key]
                changed.setdefault(sw, set()).add(spec.key)
        for _, new_specs in changes:
            for sw, spec in new_specs:
                desired.setdefault(sw, {})[spec.key] = spec
                changed.setdefault(sw, set()).add(spec.key)

    # -- connection states ----------------------------------------------------------------------

    def connection_state(self, cid: str) -> str:
        """``up`` when every switch on the path holds the connection's flows, else pending/failed."""
        known = self._up.get(cid)
        if known is None:
            known = self._up[cid] = self._connection_state(self.plan.connections[cid])
        return known

    def _connection_state(self, planned: PlannedConnection) -> str:
        if planned.state == WAITING:
            return PENDING
        if planned.state != PLANNED:
            return FAILED
        for sw, flow in planned.flows:
            state = self.switches.get(sw)
            if state is None or state.flows is None or state.flows.get(flow.key) != flow:
                return PENDING
        for kind in OBJECT_KINDS:
            for sw, spec in planned.objects(kind):
                if self.switches[sw].objects()[kind].get(spec.key) != spec:
                    return PENDING
        return UP


def _same_objects(before: dict, after: dict, changed: set | None, moved: set | None) -> bool:
    """The same keys holding the very same objects (flows read back are the reader's cached ones).
    ``changed`` (the keys where the read differs from the last) and ``moved`` (where programs changed
    what was believed since): when known, both came from the last read and differ only there."""
    if len(before) != len(after):
        return False
    if changed is None or moved is None:
        return all(before.get(key) is value for key, value in after.items())
    return all(before.get(key) is after.get(key) for key in changed | moved)
