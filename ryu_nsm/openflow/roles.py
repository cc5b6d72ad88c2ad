"""OpenFlow roles for the os-ken app under leader election (see ``shell``'s module doc): which role
each switch confirmed for us, in which term, the role requests in flight, and a Program held while
we may program none of its switches.

``RoleKeeper`` is the app's helper: the app's event handlers and its worker call it; it shares the
app's lock, datapaths, work queue and sent-message book.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from os_ken.ofproto import ofproto_common, ofproto_v1_3

from ryu_nsm.core.controller import Controller, Program

log = logging.getLogger("ryu_nsm.openflow.shell")
ofp = ofproto_v1_3
ONF_ET_ROLE_STATUS = 1911  # ONF extension 191: role status for OpenFlow 1.3, as Open vSwitch sends it
_NO_GENERATION = 0xFFFFFFFFFFFFFFFF  # a role reply's generation_id when the switch has none yet
# Sharded, a Program held for another shard's phase is given back (its switches read again) after
# this, then twice as long each time in a row, up to a tick: the other holder is typically done
# within a few of its plans, and a replica that is gone costs one read of those switches a tick.
FIRST_RELOOK_S = 0.05
ROLE_NAMES = {ofp.OFPCR_ROLE_NOCHANGE: "nochange", ofp.OFPCR_ROLE_EQUAL: "equal",
              ofp.OFPCR_ROLE_MASTER: "master", ofp.OFPCR_ROLE_SLAVE: "slave"}


@dataclass(frozen=True)
class _RoleAsk:
    """A role request in flight: to which switch, what we asked, in which term (``set_leader`` call)."""

    dpid: int
    role: int
    generation: int
    epoch: int


class RoleApp(Protocol):
    """What ``RoleKeeper`` uses of the os-ken app (``shell.NsmApp``), named here so that this module
    does not import the shell that imports it."""

    lock: Any
    datapaths: dict[int, Any]
    work: Any
    core: Controller

    def _switch_name(self, dpid: int) -> str: ...
    def _xid(self, what: str | tuple) -> int: ...
    def _call(self, fn: Callable[[float], list]) -> None: ...


@dataclass
class _Term:
    """This replica's term for one shard: whether it leads there, with which generation, since which
    ``set_leader`` call (epoch)."""

    leading: bool = False
    generation: int = 0
    epoch: int = 0


class RoleKeeper:
    """The app's roles; every field is guarded by the app's lock.

    ``shards`` (dpid → shard) splits the switches into shards led one by one (``set_leader(…,
    shard)``); without it every switch is in shard 0, the single leader's.
    """

    def __init__(self, app: RoleApp, shards: dict[int, int] | None = None, most_relook: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.app = app
        self.shards = shards
        self.most_relook = most_relook
        self.clock = clock
        self.terms: dict[int, _Term] = {}
        self.epoch = 0  # bumped by set_leader: replies to requests of an older term are ignored
        self.roles: dict[int, tuple[str, int]] = {}  # dpid → (role the switch confirmed, epoch)
        self.asks: dict[int, _RoleAsk] = {}  # role request xid → what it asked
        self.held: Program | None = None  # a Program not run because we may not program its switches
        self.held_due: float | None = None  # sharded: when ``held`` is given back (on ``clock``)
        self._relook = FIRST_RELOOK_S  # the wait of the next hold in a row
        self.due_changed = threading.Event()  # set when held_due is set (the ticker waits on it)

    def shard(self, dpid: int) -> int:
        return self.shards.get(dpid, 0) if self.shards else 0

    def term(self, dpid: int) -> _Term:
        """The term of the switch's shard (a follower's, before any ``set_leader`` for it)."""
        return self.terms.setdefault(self.shard(dpid), _Term())

    def set_leader(self, generation: int | None, shard: int = 0) -> None:
        """See ``NsmApp.set_leader``."""
        app = self.app
        with app.lock:
            self.epoch += 1
            was = self.terms.get(shard, _Term())
            term = self.terms[shard] = _Term(generation is not None,
                                             was.generation if generation is None else generation, self.epoch)
            dpids = [dpid for dpid in app.datapaths if self.shard(dpid) == shard]
        log.info("now %s%s", f"leader (generation {generation})" if generation is not None else "follower",
                 f" of shard {shard}" if self.shards else "")
        for dpid in dpids:
            app.work.put(("role", dpid, term.epoch))

    def status(self, holders: dict[int, str | None] | None = None) -> dict:
        """Leading and generation (of shard 0 unsharded), each switch's confirmed role; sharded, per
        switch its shard, that shard's holder (from ``holders``) and our role, and per shard our term."""
        with self.app.lock:
            if not self.shards:
                term = self.terms.get(0, _Term())
                switches = {self.app._switch_name(dpid): role
                            for dpid, (role, _) in sorted(self.roles.items())}
                return {"leader": term.leading, "generation": term.generation, "switches": switches}
            holders = holders or {}
            switches = {self.app._switch_name(dpid): {
                "shard": shard, "holder": holders.get(shard), "role": self.roles.get(dpid, ("none", 0))[0]}
                for dpid, shard in sorted(self.shards.items())}
            terms = {shard: {"leader": t.leading, "generation": t.generation}
                     for shard, t in sorted(self.terms.items())}
            return {"leader": any(t.leading for t in self.terms.values()), "shards": terms,
                    "switches": switches}

    def connected(self, dpid: int) -> None:
        """A new connection starts with the EQUAL role: ask for ours before anything else."""
        with self.app.lock:
            self.roles.pop(dpid, None)
            epoch = self.term(dpid).epoch
        self.app.work.put(("role", dpid, epoch))

    def may_program(self, dpid: int) -> bool:
        """True if we may change the switch's flows: MASTER confirmed for this term."""
        with self.app.lock:
            term = self.term(dpid)
            return term.leading and self.roles.get(dpid) == ("master", term.epoch)

    def hold(self, program: Program) -> bool:
        """Hold ``program`` (and say so) when we may program none of its switches; sharded, none of
        its first phase's (the other shards' masters go first, see ``phases``)."""
        phases = program.phases()
        switches = phases[0][1] if self.shards and phases else program.diffs
        with self.app.lock:
            if any(self.may_program(program.dpids[sw]) for sw in switches):
                self._relook = FIRST_RELOOK_S
                return False
            self.held = program
            if self.shards:
                self.held_due = self.clock() + self._relook
                self._relook = min(2 * self._relook, self.most_relook)
        if self.shards:
            self.due_changed.set()
            log.debug("program %d held: waiting for %s", program.id, ", ".join(sorted(switches)))
        else:
            log.info("program %d held: not MASTER on %s", program.id, ", ".join(sorted(program.diffs)))
        return True

    def phases(self, program: Program) -> list:
        """The phases of ``program`` to run now: all of them; sharded, up to the first with work on a
        switch we do not master, whose master must finish it before anyone starts the next phase
        (docs/sharding.md: the switches make the phase boundary visible to every replica)."""
        phases = program.phases()
        if not self.shards:
            return phases
        for i, (_, step) in enumerate(phases):
            if not all(self.may_program(program.dpids[sw]) for sw in step):
                return phases[:i + 1]
        return phases

    def release_held(self) -> None:
        """Give a held Program back to the core as confirmed nowhere: it reads those switches again."""
        with self.app.lock:
            held, self.held, self.held_due = self.held, None, None
        if held is not None:
            self.app._call(lambda now: self.app.core.program_done(held.id, (), now))

    def send(self, kind: str, dpid: int, epoch: int, generation: int | None = None) -> None:
        """Worker: ask a switch for MASTER ("role" while leading), for its generation ("role-query", or
        "role" while following: NOCHANGE), or for SLAVE at a given generation ("role-slave")."""
        app = self.app
        dp = app.datapaths.get(dpid)
        with app.lock:
            term = self.term(dpid)
            if dp is None or epoch != term.epoch:
                return  # gone, or a later set_leader has asked every switch again
            if kind == "role" and term.leading:
                role, generation = ofp.OFPCR_ROLE_MASTER, term.generation
            elif kind == "role-slave":
                role = ofp.OFPCR_ROLE_SLAVE
            else:  # a follower first asks the switch's generation, so that its SLAVE is never stale
                role, generation = ofp.OFPCR_ROLE_NOCHANGE, 0
            xid = app._xid(f"role request {ROLE_NAMES[role]} (generation {generation}) to "
                           f"{app._switch_name(dpid)}")
            self.asks[xid] = _RoleAsk(dpid, role, generation, epoch)
        request = dp.ofproto_parser.OFPRoleRequest(dp, role, generation & 0xFFFFFFFFFFFFFFFF)
        request.xid = xid
        dp.send_msg(request)

    def reply(self, msg) -> None:
        """A role reply: note the role; a follower then asks SLAVE, a confirmed master audits."""
        app = self.app
        dpid = msg.datapath.id
        role = ROLE_NAMES.get(msg.role, str(msg.role))
        with app.lock:
            asked = self.asks.pop(msg.xid, None)
            if asked is None or app.datapaths.get(dpid) is not msg.datapath:
                return
            term = self.term(dpid)
            current = asked.epoch == term.epoch
            if asked.role != ofp.OFPCR_ROLE_NOCHANGE:
                self.roles[dpid] = (role, asked.epoch)
            master = current and term.leading and role == "master"
        log.log(logging.DEBUG if asked.role == ofp.OFPCR_ROLE_NOCHANGE else logging.INFO,
                "switch %s: this controller is %s (switch generation %s)", app._switch_name(dpid), role,
                "none" if msg.generation_id == _NO_GENERATION else msg.generation_id)
        if asked.role == ofp.OFPCR_ROLE_NOCHANGE:
            if current and not master:
                with app.lock:
                    generation = self.term(dpid).generation
                if msg.generation_id != _NO_GENERATION:
                    generation = _newer(generation, msg.generation_id)
                app.work.put(("role-slave", dpid, asked.epoch, generation))
        elif master:
            self.release_held()
            app._call(lambda now: [read for read in app.core.audit() if read.dpid == dpid])

    def error(self, msg) -> None:
        """An error that may be about our role: IS_SLAVE, or a refused role request."""
        app = self.app
        dpid = msg.datapath.id
        name = app._switch_name(dpid)
        if msg.type == ofp.OFPET_BAD_REQUEST and msg.code == ofp.OFPBRC_IS_SLAVE:
            with app.lock:
                role, epoch = self.roles.get(dpid, ("equal", -1))
                self.roles[dpid] = ("slave", epoch)
            if role != "slave":  # once, not for every message of a rejected batch
                log.error("switch %s takes this controller for a slave (another one is master): not "
                          "programming it", name)
            return
        with app.lock:
            asked = self.asks.pop(msg.xid, None)
        if asked is None:
            return
        if msg.type == ofp.OFPET_ROLE_REQUEST_FAILED and msg.code == ofp.OFPRRFC_STALE:
            if asked.role == ofp.OFPCR_ROLE_MASTER:
                log.error("switch %s refused MASTER for generation %d as stale: a newer leader has claimed "
                          "it; following there", name, asked.generation)
            else:  # a race with a new leader's MASTER: ask the generation again
                log.info("switch %s has moved past generation %d", name, asked.generation)
            # Become SLAVE (not stay EQUAL, which could write) at the generation the switch holds.
            app.work.put(("role-query", dpid, asked.epoch))
        else:
            log.error("switch %s refused role %s: %s", name, ROLE_NAMES[asked.role], describe_error(msg))

    def gone(self, datapath) -> None:
        """A connection ended: forget its role and requests, unless the switch is back on a new one."""
        dpid = datapath.id
        with self.app.lock:
            if dpid is None or self.app.datapaths.get(dpid) not in (datapath, None):
                return
            self.roles.pop(dpid, None)
            self.asks = {xid: ask for xid, ask in self.asks.items() if ask.dpid != dpid}

    def role_status(self, msg) -> None:
        """Open vSwitch tells a demoted master at once (ONF role status for OpenFlow 1.3)."""
        if (msg.experimenter, msg.exp_type) != (ofproto_common.ONF_EXPERIMENTER_ID, ONF_ET_ROLE_STATUS):
            return
        role, _reason, generation = struct.unpack_from("!IB3xQ", bytes(msg.data))
        dpid = msg.datapath.id
        with self.app.lock:
            if self.app.datapaths.get(dpid) is not msg.datapath or dpid not in self.roles:
                return
            self.roles[dpid] = (ROLE_NAMES.get(role, str(role)), self.roles[dpid][1])
        log.warning("switch %s: another controller took MASTER with generation %d; this controller is %s "
                    "there now", self.app._switch_name(dpid), generation, ROLE_NAMES.get(role, role))


def _newer(a: int, b: int) -> int:
    """The later of two generation ids, compared as a wrapping 64-bit counter (as switches do)."""
    return a if (a - b) & 0xFFFFFFFFFFFFFFFF < 1 << 63 else b


def describe_error(msg) -> str:
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
