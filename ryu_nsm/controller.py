"""The controller's pure core: fabric events and declared resources in, commands out.

No sockets, no threads, no clock: the os-ken shell (``app.py``) turns OpenFlow events into calls
here, passes ``now`` explicitly, and carries out the returned commands. That keeps every decision
testable without a switch and makes ``ryu-nsm plan`` the same code as the live controller.

Flows on a switch are known only after the shell has read them (on every connect and reconnect);
a switch is programmed with the diff against what it holds, so a restarted controller facing an
unchanged fabric sends nothing. One program runs at a time; changes that arrive meanwhile are
folded into the next one.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from .fabric import Fabric
from .flowspec import FlowSpec, Table, is_ours, wire_cookie
from .model import Resources
from .planner import PLANNED, WAITING, FabricState, Plan, make_plan
from .reconcile import PHASES, SwitchDiff, apply, diff_fabric
from .report import connection_entry

log = logging.getLogger("ryu_nsm.controller")

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
    flows: frozenset[FlowSpec] | None = None  # None until read from the switch
    since: float = 0.0
    epoch: int = 0  # bumped by every program; a read answered from an older epoch is stale


@dataclass(frozen=True)
class Change:
    """A line of history: what happened to a connection, when and why."""

    time: float
    connection: str
    what: str


class Controller:
    """Desired state of the whole fabric and what each switch is known to hold."""

    def __init__(self, fabric: Fabric, switch_down_after: float = 10.0):
        self.fabric = fabric
        self.switch_down_after = switch_down_after
        self.resources = Resources()
        self.switches: dict[str, SwitchState] = {}
        self.plan: Plan = make_plan(fabric, self.resources)
        self._wanted = _by_switch_and_cookie(self.plan)
        self.history: deque[Change] = deque(maxlen=500)
        self._program_seq = 0
        self._inflight: Program | None = None
        self._dirty = False
        self._tag_hints: dict[str, dict[tuple[str, str], int]] = {}
        # Until the sources have reported once, an empty plan means "not known yet", not "remove all".
        self._declared = False

    # -- inputs ---------------------------------------------------------------------------------

    def set_resources(self, resources: Resources, now: float) -> list:
        """The sources' whole declared state (level-triggered): replan and program the difference."""
        for problem in resources.problems:
            log.warning("invalid document: %s", problem)
        self.resources = resources
        self._declared = True
        return self._replan(now)

    def switch_connected(self, dpid: int, ports: Iterable[PortInfo], now: float) -> list:
        """A switch (re)connected and reported its ports: read its flows before touching it."""
        switch = self.fabric.switch_by_dpid.get(dpid)
        if switch is None:
            log.warning("datapath %#x is not in fabric %s: left alone", dpid, self.fabric.name)
            return []
        state = SwitchState(switch.name, dpid, True, {p.name: p for p in ports}, None, now)
        self.switches[switch.name] = state
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
        log.info("switch %s port %s is %s", state.name, deleted_name or port.name,
                 "gone" if port is None else ("up" if port.up else "down"))
        return self._replan(now)

    def flows_read(self, switch: str, flows: Iterable[FlowSpec], now: float, epoch: int = 0) -> list:
        """The switch's flows (all or ours); from now on it is reconciled by diff.

        A read asked for before a program changed the switch is stale: it is asked again.
        """
        state = self.switches.get(switch)
        if state is None or not state.connected:
            return []
        if epoch != state.epoch:
            return [ReadFlows(switch, state.dpid, state.epoch)]
        state.flows = frozenset(f for f in flows if is_ours(f.cookie))
        self._tag_hints[switch] = self._tags_in(switch, state.flows)
        return self._replan(now)

    def _tags_in(self, switch: str, flows: frozenset[FlowSpec]) -> dict[tuple[str, str], int]:
        """(connection, link) → tag, read off the FORWARD flows of one switch."""
        by_cookie = {wire_cookie(r.id): r.id for r in self.resources.requests}
        links = {link.port_on(switch): link.name for link in self.fabric.links if switch in (link.a, link.b)}
        hints = {}
        for flow in flows:
            match = flow.match_dict()
            cid = by_cookie.get(flow.cookie)
            link = links.get(match.get("in_port"))
            if flow.table == Table.FORWARD and cid and link and match.get("vlan_vid"):
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
                state.flows = apply(state.flows, change)
                self._tag_hints[sw] = self._tags_in(sw, state.flows)
            else:
                state.flows = None
                if state.connected:
                    commands.append(ReadFlows(sw, state.dpid, state.epoch))
        if self._dirty:
            commands += self._replan(now)
        return commands

    def audit(self) -> list:
        """Read every connected switch again: drift (flows changed behind our back) is then repaired."""
        return [ReadFlows(s.name, s.dpid, s.epoch) for s in self.switches.values() if s.connected]

    def tick(self, now: float) -> list:
        """Periodic: switches away longer than ``switch_down_after`` are treated as down."""
        return self._replan(now) if self._state(now) != self._last_state else []

    # -- planning -------------------------------------------------------------------------------

    _last_state = FabricState()

    def _state(self, now: float) -> FabricState:
        down_switches = frozenset(
            s.name for s in self.switches.values()
            if not s.connected and now - s.since >= self.switch_down_after
        )
        down_ports = set()
        ports: dict[tuple[str, str], int] = {}
        for s in self.switches.values():
            if not s.ports:
                continue
            by_number = {p.number: p for p in s.ports.values()}
            for p in s.ports.values():
                ports[(s.name, p.name)] = p.number
            for sw, number in self.fabric.link_ports:
                if sw == s.name and (number not in by_number or not by_number[number].up):
                    down_ports.add((sw, number))
        down_links = frozenset(
            link.name for link in self.fabric.links
            if (link.a, link.a_port) in down_ports or (link.b, link.b_port) in down_ports
        )
        unreported = frozenset(s.name for s in self.fabric.switches if s.name not in self.switches)
        return FabricState(down_links, down_switches, ports, unreported)

    def _replan(self, now: float) -> list:
        state = self._state(now)
        if self._inflight is not None:
            self._dirty = True
            return []
        self._dirty = False
        self._last_state = state
        before = self.plan
        hints = {k: v for per_switch in self._tag_hints.values() for k, v in per_switch.items()}
        self.plan = make_plan(self.fabric, self.resources, state, before, hints)
        self._wanted = _by_switch_and_cookie(self.plan)
        self._record(before, self.plan, state, now)
        if not self._declared:
            return []
        known = {sw: s.flows for sw, s in self.switches.items() if s.connected and s.flows is not None}
        diffs = diff_fabric(self.plan.flows, known, self.plan.keep_cookies)
        if not diffs:
            return []
        self._program_seq += 1
        for sw in diffs:
            self.switches[sw].epoch += 1
        program = Program(self._program_seq, diffs, {sw: self.switches[sw].dpid for sw in diffs})
        self._inflight = program
        return [program]

    def _record(self, before: Plan, after: Plan, state: FabricState, now: float) -> None:
        for cid, new in after.connections.items():
            old = before.connections.get(cid)
            what = None
            if old is None:
                what = f"created: {new.state}" + (f" ({new.reason})" if new.reason else "")
            elif old.state != new.state or old.reason != new.reason:
                what = f"{old.state} → {new.state}" + (f": {new.reason}" if new.reason else "")
            elif new.path != old.path and old.path is not None and new.path is not None:
                cut = [link.name for link in old.path.links if link.name in state.down_links]
                down = [sw for sw in old.path.switches if sw in state.down_switches]
                why = f"link {', '.join(cut)} down" if cut else (
                    f"switch {', '.join(down)} down" if down else "endpoint changed")
                what = f"moved {'-'.join(old.path.switches)} → {'-'.join(new.path.switches)} ({why})"
            if what:
                self.history.append(Change(now, cid, what))
                log.info("connection %s %s", cid, what)
        for cid in before.connections.keys() - after.connections.keys():
            self.history.append(Change(now, cid, "removed"))
            log.info("connection %s removed", cid)

    # -- reporting ------------------------------------------------------------------------------

    def connection_state(self, cid: str) -> str:
        """``up`` when every switch on the path holds the connection's flows, else pending/failed."""
        planned = self.plan.connections[cid]
        if planned.state == WAITING:
            return PENDING
        if planned.state != PLANNED:
            return FAILED
        cookie = wire_cookie(cid)
        for sw in planned.path.switches:
            state = self.switches.get(sw)
            if state is None or state.flows is None:
                return PENDING
            if not self._wanted.get((sw, cookie), frozenset()) <= state.flows:
                return PENDING
        return UP

    def status(self) -> dict:
        """A JSON-able picture: connections (with path, state, reason), switches and recent history."""
        connections = [connection_entry(pc, self.connection_state(cid))
                       for cid, pc in self.plan.connections.items()]
        switches = [
            {"name": s.name, "dpid": f"{s.dpid:#018x}", "connected": s.connected,
             "flows": len(s.flows) if s.flows is not None else None}
            for s in sorted(self.switches.values(), key=lambda s: s.name)
        ]
        history = [{"time": h.time, "connection": h.connection, "what": h.what} for h in self.history]
        problems = [str(p) for p in self.resources.problems]
        return {"fabric": self.fabric.name, "connections": connections, "switches": switches,
                "history": history, "problems": problems}


def _by_switch_and_cookie(plan: Plan) -> dict[tuple[str, int], frozenset[FlowSpec]]:
    """The plan's flows grouped by (switch, cookie): what each connection needs on each switch."""
    grouped: dict[tuple[str, int], set[FlowSpec]] = {}
    for sw, flows in plan.flows.items():
        for flow in flows:
            grouped.setdefault((sw, flow.cookie), set()).add(flow)
    return {key: frozenset(flows) for key, flows in grouped.items()}
