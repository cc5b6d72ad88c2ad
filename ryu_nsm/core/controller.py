"""The controller's pure core: fabric events and declared resources in, commands out.

No sockets, no threads, no clock: the os-ken shell (``openflow.shell``) turns OpenFlow events into
calls here, passes ``now`` explicitly, and carries out the returned commands. That keeps every
decision testable without a switch and makes ``ryu-nsm plan`` the same code as the live controller.

The core owns the plan and calls its feature managers in turn (``core.manager``): the switch
sessions with the programs that reconcile them (``core.switches``), the QoS loop (``core.quality``),
the history behind the status (``core.status``) and each connection's status (``core.status_book``).
A change costs what it touches: the planner reports which connections it planned anew, and each
manager updates its books for those only.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from itertools import chain
from operator import attrgetter

from ryu_nsm.core.fabric import Fabric
from ryu_nsm.core.flowspec import FlowSpec, GroupSpec, MeterSpec
from ryu_nsm.core.meter_drops import MeterDrop
from ryu_nsm.core.model import Resources
from ryu_nsm.core.planner import FabricState, Plan, disagreeing, held_plan, make_plan
from ryu_nsm.core.quality import QualityManager, ReadCounters, SendProbe
from ryu_nsm.core.reconcile import PHASES
from ryu_nsm.core.status import Counters, History, HistoryEntry, Status, SwitchStatus
from ryu_nsm.core.status_book import StatusBook
from ryu_nsm.core.switches import FAILED, PENDING, UP, PortInfo, Program, ReadFlows, SwitchManager
from ryu_nsm.qos.measure import PROBE_BUDGET, LinkQuality

__all__ = ["FAILED", "PENDING", "UP", "Controller", "PortInfo", "Program", "ReadCounters", "ReadFlows",
           "SendProbe"]

log = logging.getLogger("ryu_nsm.core.controller")


class Controller:
    """Desired state of the whole fabric and what each switch is known to hold."""

    def __init__(self, fabric: Fabric, switch_down_after: float = 10.0, sla_window: float = 3.0,
                 avoid_hold: float = 60.0, probe_window: int = 5, probe_timeout: float = 1.0,
                 probe_budget: int = PROBE_BUDGET):
        """``sla_window``: how long a service level must stay broken before its connection moves;
        ``avoid_hold``: how long it then keeps away from the links that broke it; ``probe_budget``:
        link probes a round at most (0: all)."""
        self.fabric = fabric
        self.resources = Resources()
        self.plan: Plan = make_plan(fabric, self.resources)
        self.switches = SwitchManager(fabric, self.plan, switch_down_after)
        self.quality = QualityManager(fabric, self.plan, self._note, sla_window, avoid_hold, probe_window,
                                      probe_timeout, probe_budget)
        self.records = History(self.quality.avoided)
        self.book = StatusBook(lambda pc, measured: self.quality.connection_status(
            pc, self.connection_state(pc.id), measured))
        self.managers = (self.switches, self.quality, self.records, self.book)
        self._programs: dict[int, Program] = {}  # sent, not yet done: what it touches marks statuses
        self._last_state = FabricState()
        # Until the sources have reported once, an empty plan means "not known yet", not "remove all".
        self._declared = False
        self._next_expiry: float | None = None  # the earliest endpoint expiry still ahead: replan then
        # A start against a fabric that already holds our flows (a restart) plans once every switch
        # is read, or once ``switch_down_after`` passed since the first input: planned earlier, a
        # switch's connections would get tags and paths other than those its neighbours carry (flow-mods
        # for nothing), and each switch would cost a whole replan. None: not holding (any more).
        self._hold_until: float | None = None
        self._started = False  # the first input came: the hold starts, until a read says cold or warm
        self._held_reads: set[str] = set()  # switches read (and still connected) while holding

    @property
    def history(self) -> deque[HistoryEntry]:
        """Recent changes to connections, oldest first."""
        return self.records.changes

    def _note(self, change: HistoryEntry) -> None:
        self.records.add(change)

    # -- inputs ---------------------------------------------------------------------------------

    def set_resources(self, resources: Resources, now: float) -> list:
        """The sources' whole declared state (level-triggered): replan and program the difference."""
        for problem in resources.problems:
            log.warning("invalid document: %s", problem)
        for warning in resources.warnings:
            log.warning("%s", warning)
        self.resources = resources
        if not self._declared:
            self._declared = True
            self.switches.diff_all()
        self._start(now)
        if self._hold_until is not None:
            self._hold(now)
            return []
        return self._replan(now)

    def switch_connected(self, dpid: int, ports: Iterable[PortInfo], now: float) -> list:
        """A switch (re)connected and reported its ports: read its flows before touching it."""
        state = self.switches.connected(dpid, ports, now)
        self.book.mark_all()
        if state is None:
            return []
        self._start(now)
        self._fabric_changed()
        return [ReadFlows(state.name, dpid, state.epoch), *self._replan_unless_held(now)]

    def switch_disconnected(self, dpid: int, now: float) -> list:
        self.book.mark_all()
        switch = self.fabric.switch_by_dpid.get(dpid)
        if switch is not None:
            self._held_reads.discard(switch.name)
        if self.switches.disconnected(dpid, now):
            self._fabric_changed()
        return []

    def port_changed(self, dpid: int, port: PortInfo | None, now: float, deleted_name: str = "") -> list:
        """Port added, changed (``port``) or deleted (``deleted_name``)."""
        if not self.switches.port_changed(dpid, port, deleted_name):
            return []
        self.book.mark_all()
        self._fabric_changed()
        return self._replan_unless_held(now)

    def flows_read(self, switch: str, flows: Iterable[FlowSpec], now: float, epoch: int = 0,
                   meters: Iterable[MeterSpec] = (), groups: Iterable[GroupSpec] = ()) -> list:
        """The switch's flows, meters and groups (all or ours); from now on it is reconciled by diff.

        A read asked for before a program changed the switch is stale: it is asked again. ``flows``
        may be the very object of the switch's last read only when it holds the same flows (the
        shell's reader does so for a switch that did not change): then that read's work stands.
        """
        instead = self.switches.flows_read(switch, flows, epoch, meters, groups, self.resources)
        if self.switches.read_changed:
            self.book.mark_all()  # any connection's state may follow what the switch holds
        if instead is not None:
            return instead
        if self._hold_until is not None:
            return self._settle(switch, now)
        # Tags as the plan has them and the fabric as it was: planning again would give the same
        # plan, so only the switch is diffed (an audit costs what the switches hold, not a replan
        # each). Tags read for the first time are mostly those the plan gave: the next plan that has
        # other reasons to run takes them in.
        came = self.switches.hints_came
        if self._state(now) == self._last_state and not disagreeing(self.plan.connections, came, came.keys()):
            return self._program()
        return self._replan(now)

    def program_done(self, program_id: int, confirmed: Iterable[str], now: float) -> list:
        """The shell finished a program; ``confirmed`` are switches whose every phase was acknowledged.

        Switches not confirmed (error, disconnect, timeout) are read again before the next diff.
        """
        confirmed = set(confirmed)
        self._mark_program(self._programs.pop(program_id, None), confirmed)
        commands = self.switches.program_done(program_id, confirmed)
        if self.switches.dirty:
            commands += self._program()
        return commands

    def audit(self, count: int | None = None) -> list:
        """Read every connected switch again (``count``: the next that many in turn): drift (flows
        changed behind our back) is then repaired."""
        return self.switches.audit(count)

    def tick(self, now: float) -> list:
        """Periodic: switches away longer than ``switch_down_after`` are treated as down; service
        levels are checked against what the probes measure, and broken ones move; an endpoint whose
        registration expired is no longer chosen."""
        if self._hold_until is not None:
            if now < self._hold_until:
                return []
            missing = [s.name for s in self.fabric.switches if not self._read(s.name)]
            log.warning("planning without waiting longer for %d switch(es) not read since the start: %s",
                        len(missing), ", ".join(missing[:10]) + (" …" if len(missing) > 10 else ""))
            self._hold_until = None
            return self._replan(now, anew=True)
        changed = self.quality.tick(now)
        expired = self._next_expiry is not None and now >= self._next_expiry
        return self._replan(now) if changed or expired or self._state(now) != self._last_state else []

    # -- measurement ----------------------------------------------------------------------------

    def probes(self, now: float) -> list:
        """One probe out of each end of every link between two switches that hold their pipeline."""
        return self.quality.probes(self.switches.ready(), now)

    def probe_sent(self, seq: int, now: float) -> None:
        """The shell sent probe ``seq`` now (later than it was asked for, behind other work)."""
        self.quality.measurements.resent(seq, now)

    def probe_received(self, dpid: int, in_port: int, seq: int, now: float) -> None:
        """A probe came back as a packet-in from ``in_port`` of switch ``dpid``."""
        self.quality.probe_received(dpid, in_port, seq, now)

    def stalled(self, until: float) -> None:
        """The shell's own work (a core call, a decode) held the interpreter until ``until``: probes
        in flight meanwhile measured that, not their links."""
        self.quality.measurements.stalled(until)

    def control_rtt(self, dpid: int, rtt: float) -> None:
        """A round trip controller → switch ``dpid`` → controller: the control path's share of a probe."""
        self.quality.control_rtt(dpid, rtt)

    def counters_due(self) -> list:
        """Read the ingress counters of every switch whose flows are known (periodic, cheap: table 0,
        and the policy tables where a wire end is gated)."""
        return [self.quality.counter_read(s.name, s.dpid) for s in self.switches.ready()]

    def counters_read(self, switch: str, stats: Iterable[tuple[FlowSpec, int, int]], now: float) -> None:
        """(flow, bytes, packets) of a switch's flows in some tables: each connection's rate where
        it enters there, and what its policy allowed and dropped."""
        self.book.mark(self.quality.counters_read(switch, stats, self.switches.owner, now))
        self.book.mark(self.book.gated_on(self.plan, switch))

    def meters_read(self, switch: str, dropped: dict[int, int]) -> list[MeterDrop]:
        """Meter id → packets its drop band dropped, as read from ``switch``: the frames each wire's
        meter dropped since the last read (for flow events; the totals go to the status)."""
        drops = self.quality.meters_read(switch, dropped)
        self.book.mark(drop.connection for drop in drops)
        return drops

    def link_quality(self) -> dict[str, LinkQuality]:
        """Measured quality per link (the worse direction), for links that have measurements."""
        return self.quality.link_quality()

    # -- planning -------------------------------------------------------------------------------

    def _fabric_changed(self) -> None:
        """A switch or port changed: the fabric state is computed again, connection states too."""
        for manager in self.managers:
            manager.fabric_changed()

    def _state(self, now: float) -> FabricState:
        return self.switches.fabric_state(now, self.quality.avoid(), self.quality.latency)

    def _read(self, switch: str) -> bool:
        state = self.switches.switches.get(switch)
        return state is not None and state.connected and state.flows is not None

    def _settle(self, switch: str, now: float) -> list:
        """A read while holding: a first switch without flows of ours is a cold start (no more hold);
        otherwise the plan waits for every switch's read."""
        if not self._held_reads and not self.switches.switches[switch].flows:
            self._hold_until = None  # cold: nothing on the switches to agree with
            return self._replan(now)
        self._held_reads.add(switch)
        if len(self._held_reads) < len(self.fabric.switches):
            return []
        log.info("every switch read since the start: planning once with the tags and paths they hold")
        self._hold_until = None
        return self._replan(now, anew=True)

    def _start(self, now: float) -> None:
        """The first input (the sources' state or a switch) starts the hold: a plan made before the
        first switch is read would be thrown away, whether that read finds a cold or a loaded fabric."""
        if not self._started:
            self._started = True
            self._hold_until = now + self.switches.switch_down_after
            log.info("holding the first plan until the first switch is read (at most %.0f s)",
                     self.switches.switch_down_after)

    def _hold(self, now: float) -> None:
        """While holding, a plan that only resolves: the status shows every declared connection."""
        before = self.plan
        self.plan = held_plan(self.resources, before, now, "the controller has just started: it plans once "
                              f"the switches are read (at most {self.switches.switch_down_after:.0f} s)")
        for manager in self.managers:
            manager.plan_changed(before, self.plan, self._last_state, now)

    def _replan_unless_held(self, now: float) -> list:
        return [] if self._hold_until is not None else self._replan(now)

    def _replan(self, now: float, anew: bool = False) -> list:
        """Plan now, even while a program is in flight (planning overlaps the switches' work); the
        diff waits for that program to be done, since it is taken against what the switches hold.
        ``anew``: nothing kept from the plan before (made before the switches were read), so every
        connection takes the path, tags and zone its flows on the switches show."""
        state = self._state(now)
        self._last_state = state
        before = self.plan
        self.plan = make_plan(self.fabric, self.resources, state, None if anew else before,
                              self.switches.hints, now, held=before.held if anew else None)
        self._next_expiry = min((ep.expires for ep in self.resources.endpoints
                                 if ep.expires is not None and ep.expires > now), default=None)
        for manager in self.managers:
            manager.plan_changed(before, self.plan, state, now)
        return self._program()

    def _program(self) -> list:
        """A program of what changed since the last one, unless one is in flight (then after it)."""
        if not self._declared:
            return []
        commands = self.switches.program(self.quality.drain)
        if commands:
            self.quality.drain = 0.0
        sent = {c.id: c for c in commands if isinstance(c, Program)}
        if sent:  # one program is in flight at a time: one never answered is forgotten here
            self._programs = sent
        return commands

    def _mark_program(self, program: Program | None, confirmed: set[str]) -> None:
        """The statuses a finished program may change: its flows' connections when every switch
        confirmed flows only, else all (as the switch sessions forget connection states then)."""
        if program is None or not confirmed.issuperset(program.diffs) or any(
                d.ops(phase) for d in program.diffs.values() for phase in PHASES if "-" in phase):
            self.book.mark_all()
            return
        flows = chain.from_iterable((*d.adds, *d.modifies, *d.deletes) for d in program.diffs.values())
        self.book.mark(map(self.switches.owner.get, map(attrgetter("cookie"), flows)))

    # -- reporting ------------------------------------------------------------------------------

    def connection_state(self, cid: str) -> str:
        """``up`` when every switch on the path holds the connection's flows, else pending/failed."""
        return self.switches.connection_state(cid)

    def connection_states(self) -> dict[str, str]:
        """Every connection's state by id (cheap: states are kept until something changes them)."""
        return {cid: self.connection_state(cid) for cid in self.plan.connections}

    def status(self) -> Status:
        """Connections (with path, state, reason and what is measured), switches, links, recent
        history and counters; ``observe.report`` renders it."""
        measured = self.quality.link_quality()
        connections = self.book.connections(self.plan, measured)
        switches = tuple(
            SwitchStatus(s.name, s.dpid, s.connected, len(s.flows) if s.flows is not None else None)
            for s in sorted(self.switches.switches.values(), key=lambda s: s.name))
        counters = Counters(dict(self.records.moves), self.records.failures, dict(self.quality.breaches))
        return Status(self.fabric.name, connections, switches, tuple(self.records.changes),
                      tuple(str(p) for p in self.resources.problems), tuple(self.plan.reservations()),
                      counters, self.quality.link_status(measured))
