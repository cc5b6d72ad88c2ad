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
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.ofproto import ofproto_common, ofproto_v1_3

from ryu_nsm.core.controller import Controller, PortInfo, Program, ReadCounters, ReadFlows, SendProbe
from ryu_nsm.core.fabric import Fabric
from ryu_nsm.core.flowspec import COOKIE_OWNER_MASK, PIPELINE_COOKIE
from ryu_nsm.core.model import Resources
from ryu_nsm.core.reconcile import DELETE
from ryu_nsm.observe.report import StatusRenderer
from ryu_nsm.openflow import wire as ofwire
from ryu_nsm.openflow.launch import send_bytes
from ryu_nsm.qos.measure import PROBE_ETH_TYPE

log = logging.getLogger("ryu_nsm.openflow.shell")
ofp = ofproto_v1_3
ONF_ET_ROLE_STATUS = 1911  # ONF extension 191: role status for OpenFlow 1.3, as Open vSwitch sends it
_NO_GENERATION = 0xFFFFFFFFFFFFFFFF  # a role reply's generation_id when the switch has none yet
_ROLE_NAMES = {ofp.OFPCR_ROLE_NOCHANGE: "nochange", ofp.OFPCR_ROLE_EQUAL: "equal",
               ofp.OFPCR_ROLE_MASTER: "master", ofp.OFPCR_ROLE_SLAVE: "slave"}


@dataclass
class ShellSettings:
    """What the launcher hands the app (os-ken instantiates apps itself, so it is a class attribute)."""

    fabric: Fabric
    barrier_timeout: float = 10.0
    audit_interval: float = 30.0
    tick_interval: float = 1.0
    probe_interval: float = 1.0  # link probes and echo round trips; 0: none
    counter_interval: float = 5.0  # ingress flow counters → per-connection throughput; 0: none
    switch_down_after: float = 10.0
    use_bundles: bool = True
    # Called once with a function that takes a whole Resources; sources push through it.
    attach_sources: Callable[[Callable[[Resources], None]], None] | None = None
    on_ready: Callable[[NsmApp], None] | None = None
    extra: dict = field(default_factory=dict)
    # Off: the only controller, no role messages. On: start as follower; ``set_leader`` follows the election.
    role_election: bool = False


@dataclass(frozen=True)
class _RoleAsk:
    """A role request in flight: to which switch, what we asked, in which term (``set_leader`` call)."""

    dpid: int
    role: int
    generation: int
    epoch: int


class _Waiter:
    """A barrier we wait for; an error from the switch for the same batch marks it failed."""

    def __init__(self, switch: str):
        self.switch = switch
        self.done = threading.Event()
        self.failed = False


class NsmApp(app_manager.OSKenApp):
    OFP_VERSIONS = [ofp.OFP_VERSION]
    settings: ClassVar[ShellSettings | None] = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.settings is None:
            raise RuntimeError("NsmApp.settings must be set before os-ken instantiates the app")
        s = self.settings
        self.core = Controller(s.fabric, switch_down_after=s.switch_down_after)
        self.lock = threading.RLock()
        self._status_renderer = StatusRenderer()  # used under the lock
        self.work: queue.Queue = queue.Queue()
        self.datapaths: dict[int, object] = {}
        self.no_bundles: set[int] = set()
        self._multipart: dict[tuple[int, str], list] = {}
        self._reads: dict[int, ReadFlows] = {}  # stats request xid → the read it answers
        self._loops: dict[int, tuple[int, float]] = {}  # loop probe seq → (dpid, sent at)
        self._counter_reads: dict[int, ReadCounters] = {}  # stats request xid → the read it answers
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
        self.started = time.monotonic()
        # Roles (role_election only); all under self.lock.
        self._leading = False
        self._generation = 0
        self._role_epoch = 0  # bumped by set_leader: replies to requests of an older term are ignored
        self._roles: dict[int, tuple[str, int]] = {}  # dpid → (role the switch confirmed, epoch)
        self._role_asks: dict[int, _RoleAsk] = {}  # role request xid → what it asked
        self._held: Program | None = None  # a Program not run because we may not program its switches

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self):
        thread = super().start()
        self.threads.append(threading.Thread(target=self._worker, name="ryu-nsm-worker", daemon=True))
        self.threads.append(threading.Thread(target=self._ticker, name="ryu-nsm-ticker", daemon=True))
        for t in self.threads[-2:]:
            t.start()
        if self.settings.attach_sources:
            self.settings.attach_sources(self.set_resources)
        if self.settings.on_ready:
            self.settings.on_ready(self)
        return thread

    def stop(self):
        self._stop.set()
        self.work.put(None)
        super().stop()

    # -- calls into the core --------------------------------------------------------------------

    def _call(self, fn: Callable[[float], list]) -> None:
        with self.lock:
            commands = fn(time.monotonic())
        for command in commands:
            self.work.put(command)

    def set_resources(self, resources: Resources) -> None:
        """Entry point for sources (any thread): the whole declared state."""
        self._call(lambda now: self.core.set_resources(resources, now))

    def status(self) -> dict:
        with self.lock:
            status = self._status_renderer.render(self.core.status())
            if self.settings.role_election:
                status["role"] = self.role_status()
            return status

    def states(self) -> dict:
        """Only each connection's state (up, pending, failed), by id."""
        with self.lock:
            return {"connections": self.core.connection_states()}

    def set_leader(self, generation: int | None) -> None:
        """Follow the election (any thread): None → follower, an int → leader with that generation.

        Follower: no Program is run from now on (one already running stops at its next phase) and
        every switch is told SLAVE. Leader: every switch is asked for MASTER with ``generation``; each
        one that confirms is read again and reconciled (audit), and only then programmed.
        """
        if not self.settings.role_election:
            raise RuntimeError("set_leader needs ShellSettings.role_election")
        with self.lock:
            self._leading = generation is not None
            if generation is not None:
                self._generation = generation
            self._role_epoch += 1
            epoch = self._role_epoch
            dpids = list(self.datapaths)
        log.info("now %s", f"leader (generation {generation})" if generation is not None else "follower")
        for dpid in dpids:
            self.work.put(("role", dpid, epoch))

    def role_status(self) -> dict:
        """Whether we lead, our generation, and each switch's last confirmed role for us."""
        with self.lock:
            switches = {self._switch_name(dpid): role for dpid, (role, _) in sorted(self._roles.items())}
            return {"leader": self._leading, "generation": self._generation, "switches": switches}

    # -- OpenFlow events ------------------------------------------------------------------------

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _features(self, ev):
        dp = ev.msg.datapath
        self.datapaths[dp.id] = dp
        self._multipart.pop((dp.id, "ports"), None)
        if self.settings.role_election:
            with self.lock:
                self._roles.pop(dp.id, None)  # a new connection starts with the EQUAL role
                epoch = self._role_epoch
            self.work.put(("role", dp.id, epoch))  # before anything else, so a leader is MASTER first
        self.work.put(("port-desc", dp.id))

    @set_ev_cls(ofp_event.EventOFPPortDescStatsReply, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _port_desc(self, ev):
        dp = ev.msg.datapath
        ports = self._gather(dp.id, "ports", ev.msg)
        if ports is None:
            return
        infos = [_port_info(p) for p in ports if p.port_no <= ofp.OFPP_MAX]
        self._call(lambda now: self.core.switch_connected(dp.id, infos, now))

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
        specs = [stats.spec for stats in ofwire.decode_flow_stats(entries)]
        held = self._read_objects.pop(msg.xid, {})
        meters, groups = held.get("meter", []), held.get("group", [])
        self._call(lambda now: self.core.flows_read(read.switch, specs, now, read.epoch, meters, groups))

    def _counters(self, msg) -> None:
        now = time.monotonic()
        answered = self._answered(self._counter_reads, "counters", msg)
        if answered is None:
            return
        read, entries = answered
        stats = [(s.spec, s.bytes) for s in ofwire.decode_flow_stats(entries)]
        self._call(lambda _: self.core.counters_read(read.switch, stats, now) or [])

    def _read_counters(self, read: ReadCounters) -> None:
        dp = self.datapaths.get(read.dpid)
        if dp is None:
            return
        xid = self._xid(f"flow counters request to {read.switch}")
        self._counter_reads[xid] = read
        while len(self._counter_reads) > 10_000:  # answers that never came
            self._counter_reads.pop(next(iter(self._counter_reads)))
        dp.send(ofwire.encode_flow_stats_request(xid, PIPELINE_COOKIE, COOKIE_OWNER_MASK, table=0))

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
            self._call(lambda now: self.core.port_changed(dpid, None, now, deleted_name=name))
        else:
            info = _port_info(msg.desc)
            self._call(lambda now: self.core.port_changed(dpid, info, now))

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
        self._call(lambda now: self.core.switch_disconnected(dp.id, now))

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
        log.error("switch %s rejected %s: %s", self._switch_name(dpid), what, _describe_error(msg))
        # IS_SLAVE is about our role, not about bundles.
        no_bundles = msg.type == ofp.OFPET_BAD_REQUEST and msg.code != ofp.OFPBRC_IS_SLAVE
        if what.startswith("bundle") and no_bundles:
            log.warning("switch %s has no ONF bundles: sending plain flow mods", self._switch_name(dpid))
            self.no_bundles.add(dpid)
        waiter = self._waiters.get(msg.xid)
        if waiter is not None:
            waiter.failed = True

    # -- the worker: the only thread that sends ------------------------------------------------

    def _worker(self) -> None:
        while not self._stop.is_set():
            command = self.work.get()
            if command is None:
                return
            try:
                if isinstance(command, Program):
                    self._program(command)
                elif isinstance(command, ReadFlows):
                    self._read_flows(command)
                elif isinstance(command, ReadCounters):
                    self._read_counters(command)
                elif command[0] in ("role", "role-query", "role-slave"):
                    self._send_role(*command)
                elif command[0] == "probes":
                    self._send_probes(command[1])
                elif command[0] == "port-desc":
                    dp = self.datapaths.get(command[1])
                    if dp is not None:
                        dp.send_msg(dp.ofproto_parser.OFPPortDescStatsRequest(dp, 0))
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
        for phase, step in program.phases():
            if phase == DELETE and program.drain:
                time.sleep(program.drain)  # frames in flight on left paths arrive first
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
                if waiter.failed:
                    confirmed.discard(switch)
                for xid in xids:
                    self._waiters.pop(xid, None)
        log.info("program %d: %d flow changes on %d switches in %.1f ms (%d confirmed)",
                 program.id, sum(d.size for d in program.diffs.values()), len(program.diffs),
                 (time.monotonic() - started) * 1000, len(confirmed))
        self._call(lambda now: self.core.program_done(program.id, confirmed, now))

    def _send_probes(self, probes: list[SendProbe]) -> None:
        """Loop a probe through each switch (packet-out straight back as packet-in: the control path's
        own share of a link probe's time), then send the link probes; note when each left."""
        sent = []
        for dpid in sorted({probe.dpid for probe in probes}):
            self._loop_seq = (self._loop_seq + 1) & 0xFFFFFFFF
            if self._packet_out(dpid, ofp.OFPP_CONTROLLER, _LOOP_MAGIC, self._loop_seq):
                self._loops[self._loop_seq] = (dpid, time.monotonic())
        for probe in probes:
            if self._packet_out(probe.dpid, probe.port, _PROBE_MAGIC, probe.seq):
                sent.append((probe.seq, time.monotonic()))
        with self.lock:
            for seq, at in sent:
                self.core.probe_sent(seq, at)
        while len(self._loops) > 10_000:  # answers that never came
            self._loops.pop(next(iter(self._loops)))

    def _packet_out(self, dpid: int, port: int, magic: int, seq: int) -> bool:
        dp = self.datapaths.get(dpid)
        if dp is None:
            return False
        parser = dp.ofproto_parser
        frame = _PROBE_HEAD + _PROBE.pack(magic, seq) + bytes(46 - _PROBE.size)
        dp.send_msg(parser.OFPPacketOut(dp, buffer_id=ofp.OFP_NO_BUFFER, in_port=ofp.OFPP_CONTROLLER,
                                        actions=[parser.OFPActionOutput(port)], data=frame))
        return True

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev):
        now = time.monotonic()
        msg = ev.msg
        data = bytes(msg.data)
        if len(data) < 14 + _PROBE.size or struct.unpack_from("!H", data, 12)[0] != PROBE_ETH_TYPE:
            return
        magic, seq = _PROBE.unpack_from(data, 14)
        dpid = msg.datapath.id
        if magic == _PROBE_MAGIC:
            in_port = msg.match.get("in_port")
            self._call(lambda _: self.core.probe_received(dpid, in_port, seq, now) or [])
        elif magic == _LOOP_MAGIC and seq in self._loops:
            looped, sent = self._loops.pop(seq)
            if looped == dpid:
                self._call(lambda _: self.core.control_rtt(dpid, now - sent) or [])

    def _ticker(self) -> None:
        next_audit = time.monotonic() + self.settings.audit_interval
        next_probe = next_counters = time.monotonic()
        while not self._stop.wait(self.settings.tick_interval):
            self._call(self.core.tick)
            if self.settings.counter_interval and time.monotonic() >= next_counters:
                next_counters = time.monotonic() + self.settings.counter_interval
                self._call(lambda _: self.core.counters_due())
            if self.settings.probe_interval and time.monotonic() >= next_probe:
                next_probe = time.monotonic() + self.settings.probe_interval
                with self.lock:
                    probes = self.core.probes(time.monotonic())
                if probes:
                    self.work.put(("probes", probes))
            if time.monotonic() >= next_audit:
                next_audit = time.monotonic() + self.settings.audit_interval
                self._release_held()
                self._call(lambda now: self.core.audit())

    # -- roles (role_election) ------------------------------------------------------------------

    def _may_program(self, dpid: int) -> bool:
        """True if we may change the switch's flows: always without roles, else MASTER for this term."""
        if not self.settings.role_election:
            return True
        with self.lock:
            return self._leading and self._roles.get(dpid) == ("master", self._role_epoch)

    def _program(self, program: Program) -> None:
        """Run a Program, or hold it when we may program none of its switches (see the module doc)."""
        if self.settings.role_election:
            with self.lock:
                if not any(self._may_program(program.dpids[sw]) for sw in program.diffs):
                    self._held = program
                    log.info("program %d held: not MASTER on %s", program.id,
                             ", ".join(sorted(program.diffs)))
                    return
        self._run_program(program)

    def _release_held(self) -> None:
        """Give a held Program back to the core as confirmed nowhere: it reads those switches again."""
        with self.lock:
            held, self._held = self._held, None
        if held is not None:
            self._call(lambda now: self.core.program_done(held.id, (), now))

    def _send_role(self, kind: str, dpid: int, epoch: int, generation: int | None = None) -> None:
        """Worker: ask a switch for MASTER ("role" while leading), for its generation ("role-query", or
        "role" while following: NOCHANGE), or for SLAVE at a given generation ("role-slave")."""
        dp = self.datapaths.get(dpid)
        with self.lock:
            if dp is None or epoch != self._role_epoch:
                return  # gone, or a later set_leader has asked every switch again
            if kind == "role" and self._leading:
                role, generation = ofp.OFPCR_ROLE_MASTER, self._generation
            elif kind == "role-slave":
                role = ofp.OFPCR_ROLE_SLAVE
            else:  # a follower first asks the switch's generation, so that its SLAVE is never stale
                role, generation = ofp.OFPCR_ROLE_NOCHANGE, 0
            xid = self._xid(f"role request {_ROLE_NAMES[role]} (generation {generation}) to "
                            f"{self._switch_name(dpid)}")
            self._role_asks[xid] = _RoleAsk(dpid, role, generation, epoch)
        request = dp.ofproto_parser.OFPRoleRequest(dp, role, generation & 0xFFFFFFFFFFFFFFFF)
        request.xid = xid
        dp.send_msg(request)

    @set_ev_cls(ofp_event.EventOFPRoleReply, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _role_reply(self, ev):
        msg = ev.msg
        dpid = msg.datapath.id
        role = _ROLE_NAMES.get(msg.role, str(msg.role))
        with self.lock:
            asked = self._role_asks.pop(msg.xid, None)
            if asked is None or self.datapaths.get(dpid) is not msg.datapath:
                return
            current = asked.epoch == self._role_epoch
            if asked.role != ofp.OFPCR_ROLE_NOCHANGE:
                self._roles[dpid] = (role, asked.epoch)
            master = current and self._leading and role == "master"
        log.log(logging.DEBUG if asked.role == ofp.OFPCR_ROLE_NOCHANGE else logging.INFO,
                "switch %s: this controller is %s (switch generation %s)", self._switch_name(dpid), role,
                "none" if msg.generation_id == _NO_GENERATION else msg.generation_id)
        if asked.role == ofp.OFPCR_ROLE_NOCHANGE:
            if current and not master:
                with self.lock:
                    generation = self._generation
                if msg.generation_id != _NO_GENERATION:
                    generation = _newer(generation, msg.generation_id)
                self.work.put(("role-slave", dpid, asked.epoch, generation))
        elif master:
            self._release_held()
            self._call(lambda now: [read for read in self.core.audit() if read.dpid == dpid])

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _role_error(self, ev):
        if not self.settings.role_election:
            return
        msg = ev.msg
        dpid = msg.datapath.id
        name = self._switch_name(dpid)
        if msg.type == ofp.OFPET_BAD_REQUEST and msg.code == ofp.OFPBRC_IS_SLAVE:
            with self.lock:
                role, epoch = self._roles.get(dpid, ("equal", -1))
                self._roles[dpid] = ("slave", epoch)
            if role != "slave":  # once, not for every message of a rejected batch
                log.error("switch %s takes this controller for a slave (another one is master): not "
                          "programming it", name)
            return
        with self.lock:
            asked = self._role_asks.pop(msg.xid, None)
        if asked is None:
            return
        if msg.type == ofp.OFPET_ROLE_REQUEST_FAILED and msg.code == ofp.OFPRRFC_STALE:
            if asked.role == ofp.OFPCR_ROLE_MASTER:
                log.error("switch %s refused MASTER for generation %d as stale: a newer leader has claimed "
                          "it; following there", name, asked.generation)
            else:  # a race with a new leader's MASTER: ask the generation again
                log.info("switch %s has moved past generation %d", name, asked.generation)
            # Become SLAVE (not stay EQUAL, which could write) at the generation the switch holds.
            self.work.put(("role-query", dpid, asked.epoch))
        else:
            log.error("switch %s refused role %s: %s", name, _ROLE_NAMES[asked.role], _describe_error(msg))

    @set_ev_cls(ofp_event.EventOFPStateChange, DEAD_DISPATCHER)
    def _role_gone(self, ev):
        if not self.settings.role_election:
            return
        dpid = ev.datapath.id
        with self.lock:
            if dpid is None or self.datapaths.get(dpid) not in (ev.datapath, None):
                return  # the switch is back on a new connection, with its own role
            self._roles.pop(dpid, None)
            self._role_asks = {xid: ask for xid, ask in self._role_asks.items() if ask.dpid != dpid}

    @set_ev_cls(ofp_event.EventOFPExperimenter, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _role_status(self, ev):
        """Open vSwitch tells a demoted master at once (ONF role status for OpenFlow 1.3)."""
        msg = ev.msg
        if not self.settings.role_election or (msg.experimenter, msg.exp_type) != (
                ofproto_common.ONF_EXPERIMENTER_ID, ONF_ET_ROLE_STATUS):
            return
        role, _reason, generation = struct.unpack_from("!IB3xQ", bytes(msg.data))
        dpid = msg.datapath.id
        with self.lock:
            if self.datapaths.get(dpid) is not msg.datapath or dpid not in self._roles:
                return
            self._roles[dpid] = (_ROLE_NAMES.get(role, str(role)), self._roles[dpid][1])
        log.warning("switch %s: another controller took MASTER with generation %d; this controller is %s "
                    "there now", self._switch_name(dpid), generation, _ROLE_NAMES.get(role, role))

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


# Probe frames: locally administered addresses, our ethertype, a magic word and the sequence number.
_PROBE_HEAD = bytes.fromhex("024e00000001" "024e00000002") + struct.pack("!H", PROBE_ETH_TYPE)
_PROBE = struct.Struct("!II")
_PROBE_MAGIC = 0x4E50524F  # "NPRO": out of a fabric port, back from the far switch
_LOOP_MAGIC = 0x4E4C4F4F  # "NLOO": straight back from the switch it was sent to


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


def _newer(a: int, b: int) -> int:
    """The later of two generation ids, compared as a wrapping 64-bit counter (as switches do)."""
    return a if (a - b) & 0xFFFFFFFFFFFFFFFF < 1 << 63 else b


def _describe_error(msg) -> str:
    """An OpenFlow error in words: type and code names from os-ken's constants."""
    types = {v: k for k, v in vars(ofp).items() if k.startswith("OFPET_") and isinstance(v, int)}
    type_name = types.get(msg.type, str(msg.type))
    prefix = {"OFPET_BAD_REQUEST": "OFPBRC_", "OFPET_BAD_ACTION": "OFPBAC_", "OFPET_BAD_MATCH": "OFPBMC_",
              "OFPET_FLOW_MOD_FAILED": "OFPFMFC_", "OFPET_BAD_INSTRUCTION": "OFPBIC_",
              "OFPET_METER_MOD_FAILED": "OFPMMFC_", "OFPET_GROUP_MOD_FAILED": "OFPGMFC_",
              "OFPET_ROLE_REQUEST_FAILED": "OFPRRFC_"}.get(type_name)
    code = str(msg.code)
    if prefix:
        code = next((k for k, v in vars(ofp).items() if k.startswith(prefix) and v == msg.code), code)
    return f"{type_name}/{code}"
