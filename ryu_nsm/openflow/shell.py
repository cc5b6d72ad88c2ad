"""The os-ken application: a thin shell between OpenFlow events and the pure Controller core.

Event handlers run on os-ken's event thread; they only translate and call the core under a lock.
Commands the core returns go to one worker thread, the only place that sends to switches, so
every send is serialised by this app. Flow changes are pre-serialised bytes (``ofwire``), sent per
switch and phase as one ONF bundle (atomic) followed by a barrier; a phase is done when every
switch has confirmed it.

With ``role_election`` two replicas share the switches and only the elected leader programs them.
Each switch is told our OpenFlow role: SLAVE while following, MASTER with the lease's generation
while leading (``set_leader``). A switch refuses MASTER for a generation older than one it has seen
and demotes the old master when a newer one claims it, so a deposed leader cannot change flows even
before it knows it was deposed. A switch is programmed only once it has confirmed MASTER for the
current term; a Program the core asks for meanwhile is held, and given back unconfirmed when a switch
confirms MASTER or at the next audit, so the core reads again and plans anew (never a busy loop).
Flows are read in every role, so a follower's status shows what the switches really hold.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.ofproto import ofproto_v1_3

from ryu_nsm.core.controller import Controller, PortInfo, Program, ReadCounters, ReadFlows
from ryu_nsm.core.fabric import Fabric
from ryu_nsm.core.flowspec import COOKIE_OWNER_MASK, PIPELINE_COOKIE
from ryu_nsm.core.meter_drops import MeterDrop
from ryu_nsm.core.model import Resources
from ryu_nsm.core.reconcile import ADD, DELETE, MODIFY
from ryu_nsm.observe.health import Loop, supervise
from ryu_nsm.observe.report import StatusRenderer
from ryu_nsm.openflow import wire as ofwire
from ryu_nsm.openflow.counter_reads import CounterReads
from ryu_nsm.openflow.flow_read import FlowReader, keep_flow_stats_raw
from ryu_nsm.openflow.foreground import ForegroundGate
from ryu_nsm.openflow.launch import send_bytes
from ryu_nsm.openflow.probes import LinkProbes
from ryu_nsm.openflow.roles import RoleKeeper, describe_error
from ryu_nsm.qos.measure import PROBE_BUDGET

log = logging.getLogger("ryu_nsm.openflow.shell")
# Work of our own longer than this holds the interpreter long enough to skew a link probe's time.
STALL_S = 0.005
ofp = ofproto_v1_3


@dataclass
class ShellSettings:
    """What the launcher hands the app (os-ken instantiates apps itself, so it is a class attribute)."""

    fabric: Fabric
    barrier_timeout: float = 10.0
    audit_interval: float = 30.0
    tick_interval: float = 1.0
    probe_interval: float = 1.0  # link probes and echo round trips; 0: none
    probe_budget: int = PROBE_BUDGET  # link probes a round at most, the next ones in turn; 0: all
    counter_interval: float = 5.0  # ingress flow counters → per-connection throughput; 0: none
    switch_down_after: float = 10.0
    use_bundles: bool = True
    # Called once with a function that takes a whole Resources; sources push through it.
    attach_sources: Callable[[Callable[[Resources], None]], None] | None = None
    on_ready: Callable[[NsmApp], None] | None = None
    # Each counter read's frames over a wire's rate limit (core.meter_drops), on the core-calls thread.
    on_meter_drops: Callable[[list[MeterDrop]], None] | None = None
    extra: dict = field(default_factory=dict)
    # Off: the only controller, no role messages. On: start as follower; ``set_leader`` follows the election.
    role_election: bool = False
    # With role_election: dpid → shard, each shard led on its own (docs/sharding.md); None: one shard.
    shards: dict[int, int] | None = None
    shard_holders: Callable[[], dict[int, str | None]] | None = None  # shard → its Lease's holder


class _Waiter:
    """A barrier we wait for; an error from the switch for the same batch marks it failed."""

    def __init__(self, switch: str):
        self.switch = switch
        self.done = threading.Event()
        self.failed = False


class NsmApp(LinkProbes, CounterReads, app_manager.OSKenApp):
    OFP_VERSIONS = [ofp.OFP_VERSION]
    settings: ClassVar[ShellSettings | None] = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.settings is None:
            raise RuntimeError("NsmApp.settings must be set before os-ken instantiates the app")
        s = self.settings
        self.core = Controller(s.fabric, switch_down_after=s.switch_down_after, probe_budget=s.probe_budget)
        self.lock = threading.RLock()
        self._status_renderer = StatusRenderer()  # used under the lock
        self.work: queue.Queue = queue.Queue()
        self.calls: queue.Queue = queue.Queue()  # what os-ken's event handlers hand the core: see _later
        self.datapaths: dict[int, object] = {}
        self.no_bundles: set[int] = set()
        self._multipart: dict[tuple[int, str], list] = {}
        keep_flow_stats_raw()
        self._flow_reader = FlowReader()
        self._reads: dict[int, ReadFlows] = {}  # stats request xid → the read it answers
        self._loops: dict[int, tuple[int, float]] = {}  # loop probe seq → (dpid, sent at)
        self._counter_reads: dict[int, ReadCounters] = {}  # stats request xid → the read it answers
        # CPU seconds counter replies took on the core-calls thread since the last read was asked, and
        # the interval that read was paced at (see _counter_pace).
        self._counter_cpu, self._counter_interval = 0.0, s.counter_interval
        self._meter_reads: dict[int, ReadCounters] = {}  # meter stats request xid → the read it answers
        self._loop_seq = 0
        # Meters and groups are asked for just before the flows (the switch answers in order):
        # request xid → (kind, flow request xid), and flow request xid → kind → what was read.
        self._object_reads: dict[int, tuple[str, int]] = {}
        self._read_objects: dict[int, dict[str, list]] = {}
        self._waiters: dict[int, _Waiter] = {}  # barrier/bundle/flow xid → waiter of its batch
        # xid → what it was, for error messages: a text, or (phase, switch, flow) worded only if needed
        self._sent: OrderedDict[int, str | tuple] = OrderedDict()
        self._xids = itertools.count(0x70000000)
        self._bundle_ids = itertools.count(1)
        self._stop = threading.Event()
        self._beat: Callable[[], None] = lambda: None  # the worker's progress, once it runs
        self._core_calls_thread: int | None = None  # its thread's ident, once it runs
        self.foreground = ForegroundGate()  # a change in progress holds the core-calls thread back
        self.started = time.monotonic()
        self.roles = RoleKeeper(self, s.shards, s.tick_interval)  # used with role_election only

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self):
        thread = super().start()
        # The worker blocks on barriers for up to barrier_timeout and beats after each.
        loops = [supervise("ryu-nsm-worker", self._worker, self.settings.barrier_timeout, self._stop),
                 supervise("ryu-nsm-core-calls", self._core_calls, self.settings.barrier_timeout, self._stop),
                 supervise("ryu-nsm-ticker", self._ticker, self.settings.tick_interval, self._stop)]
        self.threads.extend(loop.thread for loop in loops)  # os-ken joins them on stop
        if self.settings.attach_sources:
            self.settings.attach_sources(self.set_resources)
        if self.settings.on_ready:
            self.settings.on_ready(self)
        return thread

    def stop(self):
        self._stop.set()
        self.roles.due_changed.set()  # the ticker waits on it
        self.work.put(None)
        self.calls.put(None)
        super().stop()

    # -- calls into the core --------------------------------------------------------------------

    def _call(self, fn: Callable[[float], list]) -> None:
        with self.lock:
            started = time.monotonic()
            commands = fn(started)
            ended = time.monotonic()
            if ended - started > STALL_S and threading.get_ident() != self._core_calls_thread:
                self.core.stalled(ended)  # on the core-calls thread, _core_calls reports the whole call
        for command in commands:
            self.work.put(command)

    def _later(self, fn: Callable[[float], list]) -> None:
        """From os-ken's event loop: ``_call(fn)`` on the core-calls thread, in order. That loop is
        the one thread that delivers every switch's replies, barrier replies included; waiting there
        for the lock a replan holds would hold up the confirmation of the program in flight (and,
        once os-ken's queue of 128 events is full, every switch's receive thread) for the whole replan.
        Work to do before the lock (decoding) goes on ``calls`` itself, as a function of no argument."""
        self.calls.put(lambda: self._call(fn))

    def _core_calls(self, loop: Loop) -> None:
        self._core_calls_thread = threading.get_ident()
        while not self._stop.is_set():
            try:
                call = self.calls.get(timeout=self.settings.tick_interval)
            except queue.Empty:
                call = ()
            loop.beat()
            if call is None:
                return
            if not call:
                continue
            self.foreground.wait_quiet()
            started = time.monotonic()
            try:
                call()
            except Exception:  # as os-ken's event loop did: log, go on with the next event
                log.exception("core call failed")
            ended = time.monotonic()
            if ended - started > STALL_S:  # a decode before the lock holds the interpreter too
                with self.lock:
                    self.core.stalled(ended)

    def set_resources(self, resources: Resources) -> None:
        """Entry point for sources (any thread): the whole declared state."""
        with self.foreground.change():
            self._call(lambda now: self.core.set_resources(resources, now))

    def status(self) -> dict:
        with self.lock:
            status = self._status_renderer.render(self.core.status())
            if self.settings.role_election:
                status["role"] = self.role_status()
            return status

    def states(self, ids: list[str] | None = None) -> dict:
        """Only each connection's state (up, pending, failed), by id; of ``ids`` alone if given (an id
        the core does not know is left out)."""
        with self.lock:
            if ids is None:
                return {"connections": self.core.connection_states()}
            known = self.core.plan.connections
            return {"connections": {cid: self.core.connection_state(cid) for cid in ids if cid in known}}

    def set_leader(self, generation: int | None, shard: int = 0) -> None:
        """Follow the election (any thread): None → follower, an int → leader with that generation
        (of ``shard``'s switches when sharded).

        Follower: no Program is run from now on (one already running stops at its next phase) and
        every switch is told SLAVE. Leader: every switch is asked for MASTER with ``generation``; each
        one that confirms is read again and reconciled (audit), and only then programmed.
        """
        if not self.settings.role_election:
            raise RuntimeError("set_leader needs ShellSettings.role_election")
        self.roles.set_leader(generation, shard)

    def drain(self, timeout: float) -> bool:
        """Return once the worker has finished what was queued before this call (a Program in flight
        ends at its current phase's barriers once we no longer lead): a hand-over frees its shard's
        Lease only after that, so no write of ours reaches a switch after the next master's. False if
        ``timeout`` passed first."""
        done = threading.Event()
        self.work.put(("fence", done))
        return done.wait(timeout)

    def role_status(self) -> dict:
        """Whether we lead, our generation, and each switch's last confirmed role for us."""
        holders = self.settings.shard_holders
        return self.roles.status(holders() if holders else None)

    # -- OpenFlow events ------------------------------------------------------------------------

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _features(self, ev):
        dp = ev.msg.datapath
        # Each os-ken app handles events on its own thread: os-ken's ofp_handler, which sets dp.id
        # from this very message, may not have yet (a busy controller sent role requests for None
        # and the switch never got one, wedging every replica that waited for its master).
        dp.id = ev.msg.datapath_id
        self.datapaths[dp.id] = dp
        self._multipart.pop((dp.id, "ports"), None)
        if self.settings.role_election:
            self.roles.connected(dp.id)  # before anything else, so a leader is MASTER first
        # os-ken's own handler asks for the ports (OpenFlow 1.3): asking again read every flow twice.

    @set_ev_cls(ofp_event.EventOFPPortDescStatsReply, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _port_desc(self, ev):
        dp = ev.msg.datapath
        ports = self._gather(dp.id, "ports", ev.msg)
        if ports is None:
            return
        infos = [_port_info(p) for p in ports if p.port_no <= ofp.OFPP_MAX]
        self._later(lambda now: self.core.switch_connected(dp.id, infos, now))

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    def _flow_stats(self, ev):
        msg = ev.msg
        if msg.xid in self._counter_reads:
            self._counters(msg)
            return
        answered = self._answered(self._reads, "flows", msg)
        if answered is None:
            return
        read, entries = answered
        held = self._read_objects.pop(msg.xid, {})
        meters, groups = held.get("meter", []), held.get("group", [])
        dpid = msg.datapath.id

        def flows_read() -> None:
            specs = self._flow_reader.specs(dpid, entries)
            self._call(lambda now: self.core.flows_read(read.switch, specs, now, read.epoch, meters, groups))
        self.calls.put(flows_read)

    @set_ev_cls(ofp_event.EventOFPMeterConfigStatsReply, MAIN_DISPATCHER)
    def _meter_config(self, ev):
        self._object_reply(ev.msg, ofwire.decode_meter_configs)

    @set_ev_cls(ofp_event.EventOFPGroupDescStatsReply, MAIN_DISPATCHER)
    def _group_desc(self, ev):
        self._object_reply(ev.msg, ofwire.decode_group_descs)

    def _object_reply(self, msg, decode: Callable) -> None:
        answered = self._answered(self._object_reads, "objects", msg)
        if answered is None:
            return
        (kind, flows_xid), entries = answered
        self._read_objects.setdefault(flows_xid, {})[kind] = decode(entries)

    def _answered(self, pending: dict, label: str, msg) -> tuple | None:
        """(what ``msg`` answers, all its entries) once its last part came, taken out of ``pending``;
        None for a part before the last, or for an answer to nothing ``pending`` holds."""
        asked = pending.get(msg.xid)
        if asked is None:
            return None
        entries = self._gather(msg.datapath.id, f"{label}-{msg.xid}", msg)
        if entries is None:
            return None
        del pending[msg.xid]
        return asked, entries

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status(self, ev):
        msg = ev.msg
        dpid = msg.datapath.id
        if msg.desc.port_no > ofp.OFPP_MAX:
            return
        if msg.reason == ofp.OFPPR_DELETE:
            name = _name(msg.desc)
            self._later(lambda now: self.core.port_changed(dpid, None, now, deleted_name=name))
        else:
            info = _port_info(msg.desc)
            self._later(lambda now: self.core.port_changed(dpid, info, now))

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change(self, ev):
        dp = ev.datapath
        if ev.state != DEAD_DISPATCHER or dp.id is None:
            return
        if self.datapaths.get(dp.id) is not dp:
            return  # an old connection of a switch that has already come back
        del self.datapaths[dp.id]
        for waiter in self._waiters.values():
            if waiter.switch == self._switch_name(dp.id):
                waiter.failed = True
                waiter.done.set()
        self._later(lambda now: self.core.switch_disconnected(dp.id, now))

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def _barrier(self, ev):
        waiter = self._waiters.get(ev.msg.xid)
        if waiter is not None:
            waiter.done.set()

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _error(self, ev):
        msg = ev.msg
        dpid = msg.datapath.id
        if self.settings.role_election and msg.type == ofp.OFPET_ROLE_REQUEST_FAILED:
            return  # a refused role is part of the election: _role_error handles it and says what it means
        what = self._sent.get(msg.xid, "a message we did not keep")
        if isinstance(what, tuple):
            phase, switch, spec = what
            what = f"{phase} on {switch}: {spec.to_ofctl()}"
        log.error("switch %s rejected %s: %s", self._switch_name(dpid), what, describe_error(msg))
        # IS_SLAVE is about our role, not about bundles.
        no_bundles = msg.type == ofp.OFPET_BAD_REQUEST and msg.code != ofp.OFPBRC_IS_SLAVE
        if what.startswith("bundle") and no_bundles:
            log.warning("switch %s has no ONF bundles: sending plain flow mods", self._switch_name(dpid))
            self.no_bundles.add(dpid)
        waiter = self._waiters.get(msg.xid)
        if waiter is not None:
            waiter.failed = True

    # -- the worker: the only thread that sends ------------------------------------------------

    def _worker(self, loop: Loop) -> None:
        self._beat = loop.beat
        while not self._stop.is_set():
            try:
                command = self.work.get(timeout=self.settings.tick_interval)
            except queue.Empty:
                command = ()
            loop.beat()
            if command is None:
                return
            if not command:
                continue
            try:
                if isinstance(command, Program):
                    self._program(command)
                elif isinstance(command, ReadFlows):
                    self._read_flows(command)
                elif isinstance(command, ReadCounters):
                    self._read_counters(command)
                elif command[0] in ("role", "role-query", "role-slave"):
                    self.roles.send(*command)
                elif command[0] == "fence":
                    command[1].set()
                elif command[0] == "probes":
                    self._send_probes(command[1])
            except Exception:  # a bug here must not kill the only sender
                log.exception("worker failed on %r", command)

    def _xid(self, what: str | tuple) -> int:
        xid = next(self._xids) & 0xFFFFFFFF
        self._sent[xid] = what
        while len(self._sent) > 100_000:
            self._sent.popitem(last=False)
        return xid

    def _read_flows(self, read: ReadFlows) -> None:
        dp = self.datapaths.get(read.dpid)
        if dp is None:
            return
        meters_xid = self._xid(f"meter config request to {read.switch}")
        groups_xid = self._xid(f"group description request to {read.switch}")
        xid = self._xid(f"flow stats request to {read.switch}")
        self._object_reads[meters_xid] = ("meter", xid)
        self._object_reads[groups_xid] = ("group", xid)
        self._reads[xid] = read
        dp.send(ofwire.encode_meter_config_request(meters_xid) + ofwire.encode_group_desc_request(groups_xid)
                + ofwire.encode_flow_stats_request(xid, PIPELINE_COOKIE, COOKIE_OWNER_MASK))

    def _run_program(self, program: Program) -> None:
        confirmed = set(program.diffs)
        started = time.monotonic()
        phases = self.roles.phases(program) if self.settings.role_election else program.phases()
        for _, later in program.phases()[len(phases):]:
            confirmed.difference_update(later)  # not done yet: read again, then the rest
        for phase, step in phases:
            if phase == DELETE and program.drain:
                time.sleep(program.drain)  # frames in flight on left paths arrive first
                self._beat()
            waiting: list[tuple[str, _Waiter, list[int]]] = []
            for switch, flows in step.items():
                dpid = program.dpids[switch]
                dp = self.datapaths.get(dpid)
                if switch not in confirmed or dp is None or not self._may_program(dpid):
                    confirmed.discard(switch)
                    continue
                waiter = _Waiter(switch)
                xids = []
                msgs = []
                for spec in flows:
                    xid = self._xid((phase, switch, spec))
                    xids.append(xid)
                    msgs.append(_encode(phase, spec, xid))
                    if phase in (ADD, MODIFY):
                        self._flow_reader.expect(dpid, msgs[-1], spec)
                if "-" in phase or dpid in self.no_bundles:  # bundles carry flow mods only
                    buf = b"".join(msgs)
                else:
                    bundle_xid = self._xid(f"bundle of {len(msgs)} {phase}s on {switch}")
                    xids.append(bundle_xid)
                    buf = ofwire.encode_bundle(next(self._bundle_ids), msgs, bundle_xid)
                barrier = self._xid(f"barrier to {switch}")
                xids.append(barrier)
                for xid in xids:
                    self._waiters[xid] = waiter
                try:
                    send_bytes(dp, buf + ofwire.encode_barrier(barrier))
                except ConnectionError:
                    waiter.failed = True
                    waiter.done.set()
                waiting.append((switch, waiter, xids))
            for switch, waiter, xids in waiting:
                if not waiter.done.wait(self.settings.barrier_timeout):
                    log.error("switch %s did not confirm %s phase within %.0fs",
                              switch, phase, self.settings.barrier_timeout)
                    waiter.failed = True
                self._beat()
                if waiter.failed:
                    confirmed.discard(switch)
                for xid in xids:
                    self._waiters.pop(xid, None)
        log.info("program %d: %d flow changes on %d switches in %.1f ms (%d confirmed)",
                 program.id, sum(d.size for d in program.diffs.values()), len(program.diffs),
                 (time.monotonic() - started) * 1000, len(confirmed))
        self._call(lambda now: self.core.program_done(program.id, confirmed, now))

    def _ticker(self, loop: Loop) -> None:
        next_audit = time.monotonic() + self.settings.audit_interval
        # Switches owed an audit read: each is read once an interval, in turn, spread over it.
        audited, audit_due = time.monotonic(), 0.0
        audit_rate = len(self.settings.fabric.switches) / max(self.settings.audit_interval, 1e-3)
        next_probe = next_counters = time.monotonic()
        next_tick = time.monotonic() + self.settings.tick_interval
        woken = self.roles.due_changed
        while True:
            # Between ticks, only to give back a Program held for another shard's phase when due.
            due = self.roles.held_due
            woken.wait(max(0.0, min(next_tick, due if due is not None else next_tick) - time.monotonic()))
            woken.clear()
            if self._stop.is_set():
                return
            due = self.roles.held_due
            if due is not None and time.monotonic() >= due:
                self.roles.release_held()  # read those switches again: the other shard may be done
            if time.monotonic() < next_tick:
                loop.beat()
                continue
            next_tick = time.monotonic() + self.settings.tick_interval
            self._call(self.core.tick)
            if self.settings.counter_interval and time.monotonic() >= next_counters:
                next_counters = time.monotonic() + self._counter_pace()
                self._call(lambda _: self.core.counters_due())
            if self.settings.probe_interval and time.monotonic() >= next_probe:
                next_probe = time.monotonic() + self.settings.probe_interval
                with self.lock:
                    probes = self.core.probes(time.monotonic())
                if probes:
                    self.work.put(("probes", probes))
            if time.monotonic() >= next_audit:
                next_audit = time.monotonic() + self.settings.audit_interval
                self.roles.release_held()
            audit_due += audit_rate * (time.monotonic() - audited)
            audited = time.monotonic()
            if audit_due >= 1:
                count, audit_due = int(audit_due), audit_due % 1
                self._call(lambda _, count=count: self.core.audit(count))
            loop.beat()  # a whole round done: an exception above is a failed round

    # -- roles (role_election): see roles.RoleKeeper --------------------------------------------

    def _may_program(self, dpid: int) -> bool:
        """True if we may change the switch's flows: always without roles, else MASTER for this term."""
        return not self.settings.role_election or self.roles.may_program(dpid)

    def _program(self, program: Program) -> None:
        """Run a Program, or hold it when we may program none of its switches (see the module doc)."""
        if not (self.settings.role_election and self.roles.hold(program)):
            with self.foreground.change():
                self._run_program(program)

    @set_ev_cls(ofp_event.EventOFPRoleReply, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _role_reply(self, ev):
        self.roles.reply(ev.msg)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _role_error(self, ev):
        if self.settings.role_election:
            self.roles.error(ev.msg)

    @set_ev_cls(ofp_event.EventOFPStateChange, DEAD_DISPATCHER)
    def _role_gone(self, ev):
        if self.settings.role_election:
            self.roles.gone(ev.datapath)

    @set_ev_cls(ofp_event.EventOFPExperimenter, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _role_status(self, ev):
        if self.settings.role_election:
            self.roles.role_status(ev.msg)

    # -- helpers --------------------------------------------------------------------------------

    def _gather(self, dpid: int, kind: str, msg) -> list | None:
        """Collect a multipart reply; the whole body once the last part arrives, else None."""
        parts = self._multipart.setdefault((dpid, kind), [])
        parts.extend(msg.body)
        if msg.flags & ofp.OFPMPF_REPLY_MORE:
            return None
        return self._multipart.pop((dpid, kind))

    def _switch_name(self, dpid: int) -> str:
        switch = self.core.fabric.switch_by_dpid.get(dpid)
        return switch.name if switch else f"{dpid:#x}"


def _encode(phase: str, spec, xid: int) -> bytes:
    """The message of one operation of a program phase (flow or meter)."""
    kind, _, verb = phase.rpartition("-")
    if kind:  # ADD, MODIFY and DELETE are 0, 1, 2 for meters and groups alike
        command = ("add", "modify", "delete").index(verb)
        encode = ofwire.encode_meter_mod if kind == "meter" else ofwire.encode_group_mod
        return encode(spec, command, xid)
    command = ofwire.OFPFC_DELETE_STRICT if phase == DELETE else ofwire.OFPFC_ADD
    return ofwire.encode_flow_mod(spec, command, xid)


def _name(desc) -> str:
    name = desc.name
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)


def _port_info(desc) -> PortInfo:
    up = not (desc.state & ofp.OFPPS_LINK_DOWN) and not (desc.config & ofp.OFPPC_PORT_DOWN)
    return PortInfo(desc.port_no, _name(desc), up)
