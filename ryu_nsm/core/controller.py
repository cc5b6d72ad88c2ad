"""The controller's pure core: fabric events and declared resources in, commands out.

No sockets, no threads, no clock: the os-ken shell (``app.py``) turns OpenFlow events into calls
here, passes ``now`` explicitly, and carries out the returned commands. That keeps every decision
testable without a switch and makes ``ryu-nsm plan`` the same code as the live controller.

Flows on a switch are known only after the shell has read them (on every connect and reconnect);
a switch is programmed with the diff against what it holds, so a restarted controller facing an
unchanged fabric sends nothing. One program runs at a time; changes that arrive meanwhile are
planned at once and folded into the next one.

A change costs what it touches: the planner reports which connections it planned anew, the desired
flows are kept per switch and key and updated for those connections only, and only the keys they
touched are diffed — except on a switch whose flows were just read, which is diffed whole.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from ryu_nsm.core.fabric import Fabric, Link
from ryu_nsm.core.flowspec import (
    FlowSpec,
    GroupSpec,
    MeterSpec,
    Priority,
    Table,
    is_our_group,
    is_our_meter,
    is_ours,
    wire_cookie,
)
from ryu_nsm.core.model import Resources
from ryu_nsm.core.planner import PLANNED, WAITING, FabricState, Plan, PlannedConnection, make_plan
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
from ryu_nsm.observe.report import connection_entry
from ryu_nsm.qos.measure import LinkQuality, Measurements, path_quality

log = logging.getLogger("ryu_nsm.core.controller")

DRAIN_MARGIN = 0.005  # s, beyond twice a left path's latency
MAX_DRAIN = 1.0  # s: a path slower than that is not waited for
SLOW_MARGIN = 0.001  # s: a link measured this much above its declared latency is slower than declared

UP = "up"
PENDING = "pending"
FAILED = "failed"


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
    """Change switches in phases (add, modify, delete); each phase is barrier-confirmed on every
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


@dataclass(frozen=True)
class ReadCounters:
    """Ask a switch for the counters of its CLASSIFY flows (ours): answer with ``counters_read``."""

    switch: str
    dpid: int


@dataclass(frozen=True)
class SendProbe:
    """Send probe ``seq`` out of ``port`` of a switch (packet-out); the far switch hands it back."""

    switch: str
    dpid: int
    port: int
    seq: int


@dataclass
class SwitchState:
    name: str
    dpid: int
    connected: bool = True
    ports: dict[str, PortInfo] = field(default_factory=dict)
    flows: dict[FlowKey, FlowSpec] | None = None  # ours, by key; None until read from the switch
    meters: dict[int, MeterSpec] = field(default_factory=dict)  # ours, by id; read with the flows
    groups: dict[int, GroupSpec] = field(default_factory=dict)  # ours, by id; read with the flows
    since: float = 0.0
    epoch: int = 0  # bumped by every program; a read answered from an older epoch is stale

    def objects(self) -> dict[str, dict[int, object]]:
        """Meters and groups, by kind."""
        return {"meter": self.meters, "group": self.groups}


@dataclass(frozen=True)
class Change:
    """A line of history: what happened to a connection, when and why."""

    time: float
    connection: str
    what: str


class Controller:
    """Desired state of the whole fabric and what each switch is known to hold."""

    def __init__(self, fabric: Fabric, switch_down_after: float = 10.0, sla_window: float = 3.0,
                 avoid_hold: float = 60.0, probe_window: int = 5, probe_timeout: float = 1.0):
        """``sla_window``: how long a service level must stay broken before its connection moves;
        ``avoid_hold``: how long it then keeps away from the links that broke it."""
        self.fabric = fabric
        self.switch_down_after = switch_down_after
        self.sla_window = sla_window
        self.avoid_hold = avoid_hold
        self.measurements = Measurements(probe_window, probe_timeout)
        self._link_by_port = {(sw, link.port_on(sw)): link for link in fabric.links
                              for sw in (link.a, link.b)}
        self._broken_since: dict[str, float] = {}  # connection → since when its level is broken
        self._avoid: dict[str, tuple[frozenset[str], float]] = {}  # connection → (links, until)
        # Link → latency paths are planned with (a new dict per change), and since when it measures
        # slower than declared, or back within the margin.
        self._latency: dict[str, float] = {}
        self._slow_since: dict[str, float] = {}
        self._fast_since: dict[str, float] = {}
        self.resources = Resources()
        self.switches: dict[str, SwitchState] = {}
        self.plan: Plan = make_plan(fabric, self.resources)
        self.history: deque[Change] = deque(maxlen=500)
        # Since start, for metrics: moves by why (link_down, switch_down, service_level, other),
        # connections that went to failed, and service level breaches acted on, by level.
        self.moves: Counter[str] = Counter()
        self.failures = 0
        self.breaches: Counter[str] = Counter()
        self._program_seq = 0
        self._inflight: Program | None = None
        self._dirty = False
        self._tag_hints: dict[str, dict[tuple[str, str], int]] = {}
        self._hints: dict[tuple[str, str], int] = {}  # all switches' tag hints; a new object per read
        # Desired flows by switch and key, the keys changed since the last diff, and the switches to
        # diff whole (flows just read).
        self._desired: dict[str, dict[FlowKey, FlowSpec]] = {
            sw: {f.key: f for f in flows} for sw, flows in self.plan.flows.items()}
        self._changed_keys: dict[str, set[FlowKey]] = {}
        # Meters and groups alike: kind → switch → id → spec, and kind → switch → ids changed.
        self._desired_objects: dict[str, dict[str, dict[int, object]]] = {kind: {} for kind in OBJECT_KINDS}
        self._changed_objects: dict[str, dict[str, set[int]]] = {kind: {} for kind in OBJECT_KINDS}
        self._diff_whole: set[str] = set()
        self._owner: dict[int, str] = {}  # cookie → connection id, for planned connections
        self._up: dict[str, str] = {}  # connection id → its last computed state, until invalidated
        self._entries: dict[str, tuple] = {}  # connection id → (planned, state, status entry)
        self._ports_state: tuple | None = None  # (ports, down links, unreported) until a port changes
        self._avoid_map: dict[str, frozenset[str]] | None = None  # the same object while unchanged
        self._drain = 0.0  # for the next program: see Program.drain
        # (connection, switch, in_port) → (bytes, when) of its ingress flows, and the rates they give.
        self._ingress_bytes: dict[tuple[str, str, int], tuple[int, float]] = {}
        self._rates: dict[str, dict[str, float]] = {}  # connection → {"from_client"/"from_endpoint": bit/s}
        # Until the sources have reported once, an empty plan means "not known yet", not "remove all".
        self._declared = False

    # -- inputs ---------------------------------------------------------------------------------

    def set_resources(self, resources: Resources, now: float) -> list:
        """The sources' whole declared state (level-triggered): replan and program the difference."""
        for problem in resources.problems:
            log.warning("invalid document: %s", problem)
        self.resources = resources
        if not self._declared:
            self._declared = True
            self._diff_whole.update(self.switches)
        return self._replan(now)

    def switch_connected(self, dpid: int, ports: Iterable[PortInfo], now: float) -> list:
        """A switch (re)connected and reported its ports: read its flows before touching it."""
        switch = self.fabric.switch_by_dpid.get(dpid)
        if switch is None:
            log.warning("datapath %#x is not in fabric %s: left alone", dpid, self.fabric.name)
            return []
        state = SwitchState(switch.name, dpid, ports={p.name: p for p in ports}, since=now)
        self.switches[switch.name] = state
        self._fabric_changed()
        log.info("switch %s (dpid %#x) connected with %d ports", switch.name, dpid, len(state.ports))
        return [ReadFlows(switch.name, dpid, state.epoch), *self._replan(now)]

    def switch_disconnected(self, dpid: int, now: float) -> list:
        switch = self.fabric.switch_by_dpid.get(dpid)
        state = self.switches.get(switch.name) if switch else None
        if state is None:
            return []
        state.connected = False
        state.flows = None
        state.since = now
        self._fabric_changed()
        log.warning("switch %s disconnected; its flows stay (fail-mode secure)", state.name)
        return []

    def port_changed(self, dpid: int, port: PortInfo | None, now: float, deleted_name: str = "") -> list:
        """Port added, changed (``port``) or deleted (``deleted_name``)."""
        switch = self.fabric.switch_by_dpid.get(dpid)
        state = self.switches.get(switch.name) if switch else None
        if state is None:
            return []
        if port is None:
            state.ports.pop(deleted_name, None)
        else:
            old = state.ports.get(port.name)
            state.ports[port.name] = port
            if old == port:
                return []
        self._fabric_changed()
        log.info("switch %s port %s is %s", state.name, deleted_name or port.name,
                 "gone" if port is None else ("up" if port.up else "down"))
        return self._replan(now)

    def flows_read(self, switch: str, flows: Iterable[FlowSpec], now: float, epoch: int = 0,
                   meters: Iterable[MeterSpec] = (), groups: Iterable[GroupSpec] = ()) -> list:
        """The switch's flows, meters and groups (all or ours); from now on it is reconciled by diff.

        A read asked for before a program changed the switch is stale: it is asked again.
        """
        state = self.switches.get(switch)
        if state is None or not state.connected:
            return []
        if epoch != state.epoch:
            return [ReadFlows(switch, state.dpid, state.epoch)]
        state.flows = {f.key: f for f in flows if is_ours(f.cookie)}
        state.meters = {m.meter_id: m for m in meters if is_our_meter(m.meter_id)}
        state.groups = {g.group_id: g for g in groups if is_our_group(g.group_id)}
        self._diff_whole.add(switch)
        self._up.clear()
        self._tag_hints[switch] = self._tags_in(switch, state.flows.values())
        self._hints = {k: v for per_switch in self._tag_hints.values() for k, v in per_switch.items()}
        return self._replan(now)

    def _tags_in(self, switch: str, flows: Iterable[FlowSpec]) -> dict[tuple[str, str], int]:
        """(connection, link) → tag, read off the FORWARD flows of one switch."""
        by_cookie = {wire_cookie(r.id): r.id for r in self.resources.requests}
        links = {link.port_on(switch): link.name for link in self.fabric.links if switch in (link.a, link.b)}
        hints = {}
        for flow in flows:
            match = flow.match_dict()
            cid = by_cookie.get(flow.cookie)
            link = links.get(match.get("in_port"))
            # Only the wire's own flows: a crankback flow arrives on the same port with another tag.
            if flow.table == Table.FORWARD and flow.priority == Priority.WIRE and cid and link and match.get(
                    "vlan_vid"):
                hints[(cid, link)] = match["vlan_vid"] & 0xFFF
        return hints

    def program_done(self, program_id: int, confirmed: Iterable[str], now: float) -> list:
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
                for flow in change.adds + change.modifies + change.deletes:
                    self._up.pop(self._owner.get(flow.cookie), None)
                if any(change.ops(phase) for phase in PHASES if "-" in phase):
                    self._up.clear()  # meters and groups carry no cookie; they change seldom
            else:
                state.flows = None
                self._up.clear()
                if state.connected:
                    commands.append(ReadFlows(sw, state.dpid, state.epoch))
        if self._dirty:
            commands += self._program()
        return commands

    def audit(self) -> list:
        """Read every connected switch again: drift (flows changed behind our back) is then repaired."""
        return [ReadFlows(s.name, s.dpid, s.epoch) for s in self.switches.values() if s.connected]

    def tick(self, now: float) -> list:
        """Periodic: switches away longer than ``switch_down_after`` are treated as down; service
        levels are checked against what the probes measure, and broken ones move."""
        self.measurements.expire(now)
        moved = self._check_levels(now)
        slower = self._track_latency(now)
        return self._replan(now) if moved or slower or self._state(now) != self._last_state else []

    # -- measurement and the closed loop --------------------------------------------------------

    def probes(self, now: float) -> list:
        """One probe out of each end of every link between two switches that hold their pipeline.

        A probe towards a switch whose probe flows are not in place yet would be lost, and counted as
        loss for the whole measurement window.
        """
        pipeline = self.plan.pipeline
        ready = {name for name, s in self.switches.items() if s.connected and s.flows is not None
                 and all(s.flows.get(f.key) == f for f in pipeline.get(name, ()))}
        out = []
        for link in self.fabric.links:
            if link.a in ready and link.b in ready:
                for end in (link.a, link.b):
                    seq = self.measurements.sent((link.name, end), now)
                    out.append(SendProbe(end, self.switches[end].dpid, link.port_on(end), seq))
        return out

    def probe_sent(self, seq: int, now: float) -> None:
        """The shell sent probe ``seq`` now (later than it was asked for, behind other work)."""
        self.measurements.resent(seq, now)

    def probe_received(self, dpid: int, in_port: int, seq: int, now: float) -> None:
        """A probe came back as a packet-in from ``in_port`` of switch ``dpid``."""
        switch = self.fabric.switch_by_dpid.get(dpid)
        link = self._link_by_port.get((switch.name, in_port)) if switch else None
        if link is not None:
            self.measurements.received(seq, switch.name, link.peer_of(switch.name)[0], now)

    def control_rtt(self, dpid: int, rtt: float) -> None:
        """A round trip controller → switch ``dpid`` → controller: the control path's share of a probe."""
        switch = self.fabric.switch_by_dpid.get(dpid)
        if switch is not None:
            self.measurements.control_rtt(switch.name, rtt)

    def counters_due(self) -> list:
        """Read the ingress counters of every switch whose flows are known (periodic, cheap: table 0)."""
        return [ReadCounters(s.name, s.dpid) for s in self.switches.values()
                if s.connected and s.flows is not None]

    def counters_read(self, switch: str, stats: Iterable[tuple[FlowSpec, int]], now: float) -> None:
        """Byte counters of a switch's CLASSIFY flows: each connection's rate where it enters there."""
        totals: dict[tuple[str, str, int], int] = {}
        for spec, byte_count in stats:
            cid = self._owner.get(spec.cookie)
            if cid is None or spec.table != Table.CLASSIFY:
                continue
            key = (cid, switch, spec.match_dict().get("in_port"))
            totals[key] = totals.get(key, 0) + byte_count  # a wire's IP and other frames alike
        for key, total in totals.items():
            cid = key[0]
            pc = self.plan.connections.get(cid)
            if pc is None or pc.ends is None:
                continue
            before = self._ingress_bytes.get(key)
            self._ingress_bytes[key] = (total, now)
            if before is None or now <= before[1] or total < before[0]:
                continue  # first reading, or the flows were replaced: no rate yet
            client_side = (switch, key[2]) == (pc.ends.a_switch, pc.ends.a_port)
            side = "from_client" if client_side else "from_endpoint"
            self._rates.setdefault(cid, {})[side] = (total - before[0]) * 8 / (now - before[1])
        for cid in [c for c in self._rates if c not in self.plan.connections]:
            del self._rates[cid]

    def link_quality(self) -> dict[str, LinkQuality]:
        """Measured quality per link (the worse direction), for links that have measurements."""
        out = {}
        for link in self.fabric.links:
            quality = self.measurements.link(link.name, (link.a, link.b))
            if quality is not None:
                out[link.name] = quality
        return out

    def _track_latency(self, now: float) -> bool:
        """Plan paths with the latency of links measured slower than declared; True when that changed.

        A link counts as slower once it measures above its declared latency (by more than
        ``SLOW_MARGIN``) for ``sla_window``; it is planned with what it measures (whole ms, up), updated
        when that moves by more than a quarter; it counts as declared again after ``avoid_hold`` back
        within the margin. New placements are chosen with it (the planner's measured view); placements
        that exist are judged by declared latency there and by measured latency in ``_check_levels``.
        """
        measured = self.link_quality()
        planned = dict(self._latency)
        for link in self.fabric.links:
            q = measured.get(link.name)
            if q is None or q.latency is None:
                continue
            held = planned.get(link.name)
            if q.latency > link.latency + SLOW_MARGIN:
                self._fast_since.pop(link.name, None)
                since = self._slow_since.setdefault(link.name, now)
                value = math.ceil(q.latency * 1000) / 1000
                if now - since >= self.sla_window and (held is None or abs(value - held) > 0.25 * held):
                    planned[link.name] = value
            else:
                self._slow_since.pop(link.name, None)
                if held is not None and now - self._fast_since.setdefault(link.name, now) >= self.avoid_hold:
                    del planned[link.name]
                    del self._fast_since[link.name]
        if planned == self._latency:
            return False
        for name in sorted(planned.keys() | self._latency.keys()):
            if planned.get(name) != self._latency.get(name):
                declared = self.fabric.link_by_name[name].latency
                log.warning("link %s is planned with %s ms (declared %s ms)", name,
                            round(planned.get(name, declared) * 1e3, 3), round(declared * 1e3, 3))
        self._latency = planned
        return True

    def _check_levels(self, now: float) -> bool:
        """Start moving connections whose level has been broken for ``sla_window``; True if any."""
        for cid, (_, until) in list(self._avoid.items()):
            if now >= until:
                del self._avoid[cid]  # it stays where it went: paths are sticky
        measured = self.link_quality()
        moved = False
        for cid, pc in self.plan.connections.items():
            level = pc.level
            if pc.state != PLANNED or level is None or (level.max_latency is None and level.max_loss is None):
                self._broken_since.pop(cid, None)
                continue
            # A chain-wide level is kept or broken by the chain's wires together.
            wires = self._chain_wires(pc)
            links = [link for wire in wires for link in wire.path.links]
            broken = _breach(level, links, measured)
            if broken is None:
                self._broken_since.pop(cid, None)
                continue
            since = self._broken_since.setdefault(cid, now)
            if now - since < self.sla_window or any(wire.id in self._avoid for wire in wires):
                continue
            bad = _culprits(level, links, measured)
            movers = [wire.id for wire in wires if wire.path.uses(bad)]
            for mover in movers:
                self._avoid[mover] = (bad, now + self.avoid_hold)
            self._broken_since.pop(cid, None)
            which = f"moving {', '.join(movers)} " if pc.chain is not None else "moving "
            what = (f"service level {level.name} broken for {now - since:.1f} s: {broken}; "
                    f"{which}off {', '.join(sorted(bad))}")
            self.history.append(Change(now, cid, what))
            self.breaches[level.name] += 1
            log.warning("connection %s: %s", cid, what)
            moved = True
        return moved

    def _chain_wires(self, pc: PlannedConnection) -> list[PlannedConnection]:
        """The planned wires a connection's level covers: its chain's under a chain-wide bound, else it."""
        if pc.chain is None:
            return [pc]
        planned = (self.plan.connections.get(wire) for wire in pc.chain.wires)
        return [wire for wire in planned if wire is not None and wire.state == PLANNED]

    # -- planning -------------------------------------------------------------------------------

    _last_state = FabricState()

    def _fabric_changed(self) -> None:
        """A switch or port changed: the fabric state is computed again, connection states too."""
        self._ports_state = None
        self._up.clear()

    def _state(self, now: float) -> FabricState:
        if self._ports_state is None:
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
            self._ports_state = (ports, down_links, unreported)
        ports, down_links, unreported = self._ports_state
        down_switches = frozenset(
            s.name for s in self.switches.values()
            if not s.connected and now - s.since >= self.switch_down_after
        )
        avoid = self._avoid_map
        if avoid is None or avoid.keys() != self._avoid.keys():
            avoid = self._avoid_map = {cid: links for cid, (links, _) in self._avoid.items()}
        return FabricState(down_links, down_switches, ports, unreported, avoid, self._latency)

    def _replan(self, now: float) -> list:
        """Plan now, even while a program is in flight (planning overlaps the switches' work); the
        diff waits for that program to be done, since it is taken against what the switches hold."""
        state = self._state(now)
        self._last_state = state
        before = self.plan
        self.plan = make_plan(self.fabric, self.resources, state, before, self._hints)
        self._update_desired(before, self.plan)
        self._record(before, self.plan, state, now)
        return self._program()

    def _program(self) -> list:
        """A program of what changed since the last one, unless one is in flight (then after it)."""
        if self._inflight is not None:
            self._dirty = True
            return []
        self._dirty = False
        if not self._declared:
            return []
        diffs = {}
        for sw, s in self.switches.items():
            if not s.connected or s.flows is None:
                continue  # diffed whole once its flows are read
            desired = self._desired.get(sw, {})
            whole = sw in self._diff_whole
            if not whole and sw not in self._changed_keys and not any(
                    sw in changed for changed in self._changed_objects.values()):
                continue
            change = diff_keyed(desired, s.flows, None if whole else self._changed_keys.get(sw, ()),
                                self.plan.keep_cookies)
            held = s.objects()
            for kind in OBJECT_KINDS:
                ids = None if whole else self._changed_objects[kind].get(sw, ())
                found = diff_objects(kind, self._desired_objects[kind].get(sw, {}), held[kind], ids)
                if any(found.values()):
                    change = replace(change, **found)
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
                          min(self._drain, MAX_DRAIN))
        self._drain = 0.0
        self._inflight = program
        return [program]

    def _update_desired(self, before: Plan, after: Plan) -> None:
        """Bring the desired flows up to ``after``: whole on a new pipeline, else the touched connections."""
        measured = None
        for cid in after.touched:
            self._up.pop(cid, None)
            self._entries.pop(cid, None)
            old, new = before.connections.get(cid), after.connections.get(cid)
            if old is not None and new is not None and old.path is not None and new.path != old.path and (
                    old.state == PLANNED and new.state == PLANNED):
                measured = self.link_quality() if measured is None else measured
                latency = path_quality(old.path.links, measured).latency
                self._drain = max(self._drain, 2 * latency + DRAIN_MARGIN)
            if old is not None:
                self._owner.pop(wire_cookie(cid), None)
            if new is not None and new.flows:
                self._owner[wire_cookie(cid)] = cid
        if after.pipeline is not before.pipeline:
            self._desired = {sw: {f.key: f for f in flows} for sw, flows in after.flows.items()}
            for kind in OBJECT_KINDS:
                self._desired_objects[kind] = {sw: {spec.key: spec for spec in specs}
                                               for sw, specs in after.objects(kind).items()}
            self._diff_whole.update(self.switches)
            return
        for kind in OBJECT_KINDS:
            self._update_objects(kind, before, after)
        changes = []
        for cid in after.touched:
            old, new = before.connections.get(cid), after.connections.get(cid)
            old_flows, new_flows = (old.flows if old else ()), (new.flows if new else ())
            if old_flows != new_flows:
                changes.append((old_flows, new_flows))
        # Every old flow goes before any new one is added: a key may pass from one connection to another.
        for old_flows, _ in changes:
            for sw, flow in old_flows:
                table = self._desired.get(sw, {})
                if table.get(flow.key) == flow:
                    del table[flow.key]
                self._changed_keys.setdefault(sw, set()).add(flow.key)
        for _, new_flows in changes:
            for sw, flow in new_flows:
                table = self._desired.setdefault(sw, {})
                other = table.setdefault(flow.key, flow)
                if other != flow:
                    raise ConflictingFlows(f"two desired flows share {flow.key}: {other} and {flow}")
                self._changed_keys.setdefault(sw, set()).add(flow.key)

    def _record(self, before: Plan, after: Plan, state: FabricState, now: float) -> None:
        for cid in sorted(after.touched):
            new = after.connections.get(cid)
            if new is None:
                continue
            old = before.connections.get(cid)
            what = None
            if new.state == FAILED and (old is None or old.state != FAILED):
                self.failures += 1
            if old is None:
                what = f"created: {new.state}" + (f" ({new.reason})" if new.reason else "")
            elif old.state != new.state or old.reason != new.reason:
                what = f"{old.state} → {new.state}" + (f": {new.reason}" if new.reason else "")
            elif new.path != old.path and old.path is not None and new.path is not None:
                cut = [link.name for link in old.path.links if link.name in state.down_links]
                down = [sw for sw in old.path.switches if sw in state.down_switches]
                avoided = self._avoid.get(cid, (frozenset(),))[0] & {link.name for link in old.path.links}
                why = f"link {', '.join(cut)} down" if cut else (
                    f"switch {', '.join(down)} down" if down else (
                        f"service level: off {', '.join(sorted(avoided))}" if avoided else (
                            new.event or "endpoint changed")))
                self.moves["link_down" if cut else "switch_down" if down else
                           "service_level" if avoided else "other"] += 1
                what = f"moved {'-'.join(old.path.switches)} → {'-'.join(new.path.switches)} ({why})"
            if new.event and (what is None or new.event not in what):
                what = f"{what}; {new.event}" if what else new.event
            if what:
                self.history.append(Change(now, cid, what))
                log.info("connection %s %s", cid, what)
        for cid in before.connections.keys() - after.connections.keys():
            self.history.append(Change(now, cid, "removed"))
            log.info("connection %s removed", cid)

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

    # -- reporting ------------------------------------------------------------------------------

    def connection_state(self, cid: str) -> str:
        """``up`` when every switch on the path holds the connection's flows, else pending/failed."""
        known = self._up.get(cid)
        if known is None:
            known = self._up[cid] = self._connection_state(self.plan.connections[cid])
        return known

    def connection_states(self) -> dict[str, str]:
        """Every connection's state by id (cheap: states are kept until something changes them)."""
        return {cid: self.connection_state(cid) for cid in self.plan.connections}

    def _connection_state(self, planned) -> str:
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

    def _entry(self, pc, measured: dict[str, LinkQuality]) -> dict:
        """The connection's status entry, built again only when the connection or its state changed."""
        state = self.connection_state(pc.id)
        cached = self._entries.get(pc.id)
        if cached is None or cached[0] is not pc or cached[1] != state:
            cached = self._entries[pc.id] = (pc, state, connection_entry(pc, state))
        entry = cached[2]
        if pc.id in self._rates:
            entry = {**entry, "throughput": dict(self._rates[pc.id])}
        level = pc.level
        if level is not None and pc.path is not None and pc.state == PLANNED and measured:
            quality = path_quality(pc.path.links, measured)
            links = [link for wire in self._chain_wires(pc) for link in wire.path.links]
            met = _breach(level, links, measured) is None
            entry = {**entry, "measured": {"latency": quality.latency, "loss": quality.loss,
                                           "complete": quality.measured, "met": met}}
            if "chain_latency" in entry:
                chain = path_quality(links, measured)
                entry["chain_latency"] = {**entry["chain_latency"], "measured": {
                    "latency": chain.latency, "loss": chain.loss, "complete": chain.measured, "met": met}}
        return entry

    def status(self) -> dict:
        """A JSON-able picture: connections (with path, state, reason), switches and recent history."""
        measured = self.link_quality()
        connections = [self._entry(pc, measured) for pc in self.plan.connections.values()]
        switches = [
            {"name": s.name, "dpid": f"{s.dpid:#018x}", "connected": s.connected,
             "flows": len(s.flows) if s.flows is not None else None}
            for s in sorted(self.switches.values(), key=lambda s: s.name)
        ]
        history = [{"time": h.time, "connection": h.connection, "what": h.what} for h in self.history]
        problems = [str(p) for p in self.resources.problems]
        counters = {"moves": dict(self.moves), "failures": self.failures, "breaches": dict(self.breaches)}
        return {"fabric": self.fabric.name, "connections": connections, "switches": switches,
                "history": history, "problems": problems, "reservations": self.plan.reservations(),
                "counters": counters,
                "links": [{"link": name, "latency": q.latency, "loss": q.loss, "samples": q.samples,
                           **({"planned_latency": self._latency[name]} if name in self._latency else {})}
                          for name, q in measured.items()]}


def _breach(level, links: list[Link], measured: dict[str, LinkQuality]) -> str | None:
    """How the path of ``links`` (a wire's, or a whole chain's under ``chain_latency``) breaks
    ``level`` by what is measured, or None while it meets it."""
    quality = path_quality(links, measured)
    scope = "chain " if level.chain_latency else ""
    if level.max_latency is not None and quality.latency > level.max_latency:
        return f"{scope}latency {quality.latency * 1e3:.1f} ms > {level.max_latency * 1e3:.1f} ms"
    if level.max_loss is not None and quality.loss > level.max_loss:
        return f"{scope}loss {quality.loss:.1%} > {level.max_loss:.1%}"
    return None


def _culprits(level, links: list[Link], measured: dict[str, LinkQuality]) -> frozenset[str]:
    """The ``links`` to leave: those measured worse than declared (latency) or losing frames."""
    bad = set()
    for link in links:
        q = measured.get(link.name)
        if q is None:
            continue
        slow = (q.latency is not None and q.latency > link.latency + SLOW_MARGIN
                and level.max_latency is not None)
        if slow or (q.loss > 0 and level.max_loss is not None):
            bad.add(link.name)
    return frozenset(bad or (link.name for link in links))
