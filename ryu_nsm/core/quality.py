"""The controller's QoS loop: probes and counters in, measured quality out, and broken service
levels acted on.

Probes measure each link; ingress counters give each connection's rate. A connection whose service
level stays broken for ``sla_window`` is moved off the links that break it and kept away from them
for ``avoid_hold``; a link that stays slower than declared is planned with what it measures.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ryu_nsm.core.fabric import Fabric, Link
from ryu_nsm.core.flowspec import FlowSpec, Table
from ryu_nsm.core.manager import Manager
from ryu_nsm.core.meter_drops import MeterDrop, MeterDropCounter, metered_switches
from ryu_nsm.core.planner import PLANNED, FabricState, Plan, PlannedConnection
from ryu_nsm.core.policy_counters import GATE_TABLES, GateKey, gate_key, policy_counters
from ryu_nsm.core.status import SLOW_MARGIN, ConnectionStatus, HistoryEntry, LinkStatus, PathMeasurement
from ryu_nsm.core.switches import SwitchState
from ryu_nsm.qos.measure import LinkQuality, Measurements, path_quality

log = logging.getLogger("ryu_nsm.core.controller")

DRAIN_MARGIN = 0.005  # s, beyond twice a left path's latency


@dataclass(frozen=True)
class ReadCounters:
    """Ask a switch for the counters of our flows in ``tables`` (CLASSIFY, and the policy tables
    where a wire end is gated), one request a table: answer each with ``counters_read``. With
    ``meters`` (a wire is policed there), its meters' drop counts too: answer with ``meters_read``."""

    switch: str
    dpid: int
    tables: tuple[int, ...] = (Table.CLASSIFY,)
    meters: bool = False


@dataclass(frozen=True)
class SendProbe:
    """Send probe ``seq`` out of ``port`` of a switch (packet-out); the far switch hands it back."""

    switch: str
    dpid: int
    port: int
    seq: int


class QualityManager(Manager):
    """Measurements, rates, service level checks, and the links connections and paths keep off."""

    def __init__(self, fabric: Fabric, plan: Plan, note: Callable[[HistoryEntry], None], sla_window: float,
                 avoid_hold: float, probe_window: int, probe_timeout: float, probe_budget: int = 0):
        """``note``: where a breach acted on is written down (the history); ``probe_budget``: at most
        this many link probes a round (0: every link end)."""
        self.fabric = fabric
        self.plan = plan  # the latest, kept up to date by plan_changed
        # (plan, switches with policy-gated wire ends, switches with meters) of counter reads
        self._read_plan: tuple[object, frozenset[str], frozenset[str]] = (None, frozenset(), frozenset())
        self.note = note
        self.sla_window = sla_window
        self.avoid_hold = avoid_hold
        self.measurements = Measurements(probe_window, probe_timeout)
        self.probe_budget = probe_budget
        self._probe_turn = 0  # where the next round's probes start, under a budget
        self.breaches: Counter[str] = Counter()  # since start, acted on, by level
        self.drain = 0.0  # for the next program: see switches.Program.drain
        self._link_by_port = {(sw, link.port_on(sw)): link for link in fabric.links
                              for sw in (link.a, link.b)}
        self._broken_since: dict[str, float] = {}  # connection → since when its level is broken
        self._avoid: dict[str, tuple[frozenset[str], float]] = {}  # connection → (links, until)
        self._avoid_map: dict[str, frozenset[str]] | None = None  # the same object while unchanged
        # Link → latency paths are planned with (a new dict per change), and since when it measures
        # slower than declared, or back within the margin.
        self.latency: dict[str, float] = {}
        self._slow_since: dict[str, float] = {}
        self._fast_since: dict[str, float] = {}
        # (connection, switch, in_port) → (bytes, when) of its ingress flows, and the rates they give.
        self._ingress_bytes: dict[tuple[str, str, int], tuple[int, float]] = {}
        self._rates: dict[str, dict[str, float]] = {}  # connection → {"from_client"/"from_endpoint": bit/s}
        # Switch → packets of its policy gates' flows as last read (policy_counters.GateKey → packets).
        self._gate_packets: dict[str, dict[GateKey, int]] = {}
        # Switch → id(flow) → (flow, table, in_port, policy gate key) of flows counters were read for.
        self._shapes: dict[str, dict[int, tuple[FlowSpec, int, int | None, GateKey | None]]] = {}
        self.meter_drops = MeterDropCounter()

    # -- what planning takes from the loop -------------------------------------------------------

    def avoid(self) -> dict[str, frozenset[str]]:
        """Connection → links it keeps off (the same object while that is unchanged)."""
        if self._avoid_map is None or self._avoid_map.keys() != self._avoid.keys():
            self._avoid_map = {cid: links for cid, (links, _) in self._avoid.items()}
        return self._avoid_map

    def avoided(self, cid: str) -> frozenset[str]:
        return self._avoid.get(cid, (frozenset(),))[0]

    def plan_changed(self, before: Plan, after: Plan, state: FabricState, now: float) -> None:
        """The next program waits for frames on the paths planned connections left (see ``drain``)."""
        self.plan = after
        measured = None
        for cid in after.touched:
            old, new = before.connections.get(cid), after.connections.get(cid)
            if old is not None and new is not None and old.path is not None and new.path != old.path and (
                    old.state == PLANNED and new.state == PLANNED):
                measured = self.link_quality() if measured is None else measured
                latency = path_quality(old.path.links, measured).latency
                self.drain = max(self.drain, 2 * latency + DRAIN_MARGIN)

    # -- probes and counters --------------------------------------------------------------------

    def probes(self, ready: Iterable[SwitchState], now: float) -> list:
        """One probe out of each end of every link between two switches that hold their pipeline, or of
        the next ``probe_budget`` such ends in turn where there are more (a fabric of 80 switches has
        512: probing them all each second costs a Python controller a tenth of a core).

        A probe towards a switch whose probe flows are not in place yet would be lost, and counted as
        loss for the whole measurement window.
        """
        pipeline = self.plan.pipeline
        dpids = {s.name: s.dpid for s in ready
                 if all(s.flows.get(f.key) == f for f in pipeline.get(s.name, ()))}
        ends = [(link, end) for link in self.fabric.links if link.a in dpids and link.b in dpids
                for end in (link.a, link.b)]
        if self.probe_budget and len(ends) > self.probe_budget:
            start = self._probe_turn % len(ends)
            ends = (ends[start:] + ends[:start])[:self.probe_budget]
            self._probe_turn = start + self.probe_budget
        out = []
        for link, end in ends:
            seq = self.measurements.sent((link.name, end), now)
            out.append(SendProbe(end, dpids[end], link.port_on(end), seq))
        return out

    def probe_received(self, dpid: int, in_port: int, seq: int, now: float) -> None:
        switch = self.fabric.switch_by_dpid.get(dpid)
        link = self._link_by_port.get((switch.name, in_port)) if switch else None
        if link is not None:
            self.measurements.received(seq, switch.name, link.peer_of(switch.name)[0], now)

    def control_rtt(self, dpid: int, rtt: float) -> None:
        switch = self.fabric.switch_by_dpid.get(dpid)
        if switch is not None:
            self.measurements.control_rtt(switch.name, rtt)

    def counter_read(self, switch: str, dpid: int) -> ReadCounters:
        """What a counter read asks ``switch`` for: table 0, and the policy tables too where a wire end is
        gated; meter counts where a wire is policed."""
        if self._read_plan[0] is not self.plan:  # once per plan, not per switch and read
            gated = frozenset(end for pc in self.plan.connections.values()
                              if pc.policy is not None and pc.ends is not None
                              for end in (pc.ends.a_switch, pc.ends.b_switch))
            self._read_plan = (self.plan, gated, metered_switches(self.plan))
        _, gated, metered = self._read_plan
        return ReadCounters(switch, dpid, tuple(GATE_TABLES) if switch in gated else (Table.CLASSIFY,),
                            switch in metered)

    def meters_read(self, switch: str, dropped: dict[int, int]) -> list[MeterDrop]:
        """Meter id → packets its drop band dropped, on ``switch``: the frames each wire's meter
        dropped since the last read."""
        return self.meter_drops.read(switch, dropped, self.plan)

    def counters_read(self, switch: str, stats: Iterable[tuple[FlowSpec, int, int]], owner: dict[int, str],
                      now: float) -> set[str]:
        """Byte and packet counters of a switch's flows in some tables (``owner``: cookie →
        connection): each connection's rate where it enters there, and its policy gates' packets.
        Returns the connections whose rate changed (an idle fabric's read changes none)."""
        totals: dict[tuple[str, str, int], int] = {}
        gates: dict[GateKey, int] = {}
        tables = set()
        shapes = self._shapes.setdefault(switch, {})
        seen = 0
        for spec, byte_count, packets in stats:
            # The reader hands the same FlowSpec objects read after read: what a flow says is looked
            # up by identity, not worked out again for each of the ~60,000 of a read at size.
            shape = shapes.get(id(spec))
            if shape is None or shape[0] is not spec:
                in_port = spec.match_dict().get("in_port")
                shape = shapes[id(spec)] = (spec, spec.table, in_port, gate_key(spec))
            _, table, in_port, key = shape
            seen += 1
            cid = owner.get(spec.cookie)
            tables.add(table)
            if key is not None and cid is not None and getattr(self.plan.connections.get(cid), "policy",
                                                                None) is not None:
                gates[key] = gates.get(key, 0) + packets
            if cid is None or table != Table.CLASSIFY:
                continue
            key = (cid, switch, in_port)
            totals[key] = totals.get(key, 0) + byte_count  # a wire's IP and other frames alike
        if len(shapes) > 4 * seen + 1000:  # mostly flows long replaced: forget what they said
            del self._shapes[switch]
        changed = set()
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
            rates = self._rates.setdefault(cid, {})
            rate = (total - before[0]) * 8 / (now - before[1])
            if rates.get(side) != rate:
                rates[side] = rate
                changed.add(cid)
        for cid in [c for c in self._rates if c not in self.plan.connections]:
            del self._rates[cid]
        kept = {k: n for k, n in self._gate_packets.get(switch, {}).items() if k[0] not in tables}
        self._gate_packets[switch] = kept | gates
        return changed

    def link_quality(self) -> dict[str, LinkQuality]:
        """Measured quality per link (the worse direction), for links that have measurements."""
        out = {}
        for link in self.fabric.links:
            quality = self.measurements.link(link.name, (link.a, link.b))
            if quality is not None:
                out[link.name] = quality
        return out

    # -- the closed loop ------------------------------------------------------------------------

    def tick(self, now: float) -> bool:
        """Expire old probes, check service levels and links; True when planning must follow."""
        self.measurements.expire(now)
        moved = self._check_levels(now)
        slower = self._track_latency(now)
        return moved or slower

    def _track_latency(self, now: float) -> bool:
        """Plan paths with the latency of links measured slower than declared; True when that changed.

        A link counts as slower once it measures above its declared latency (by more than
        ``SLOW_MARGIN`` and the measurement's own error) for ``sla_window``; it is planned with what
        it measures (whole ms, up), updated when that moves by more than a quarter; it counts as
        declared again after ``avoid_hold`` back within the margin. New placements are chosen with it
        (the planner's measured view); placements that exist are judged by declared latency there
        and by measured latency in ``_check_levels``.
        """
        measured = self.link_quality()
        planned = dict(self.latency)
        for link in self.fabric.links:
            q = measured.get(link.name)
            if q is None or q.latency is None:
                continue
            held = planned.get(link.name)
            if q.latency > link.latency + SLOW_MARGIN + q.error:
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
        if planned == self.latency:
            return False
        for name in sorted(planned.keys() | self.latency.keys()):
            if planned.get(name) != self.latency.get(name):
                declared = self.fabric.link_by_name[name].latency
                log.warning("link %s is planned with %s ms (declared %s ms)", name,
                            round(planned.get(name, declared) * 1e3, 3), round(declared * 1e3, 3))
        self.latency = planned
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
            self.note(HistoryEntry(now, cid, what))
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

    # -- status ---------------------------------------------------------------------------------

    def connection_status(self, pc: PlannedConnection, state: str, measured: dict[str, LinkQuality]
                          ) -> ConnectionStatus:
        """``pc`` in ``state`` with its rates and, under a service level, what its path measures."""
        rates = self._rates.get(pc.id)
        throughput = dict(rates) if rates is not None else None
        policy = policy_counters(pc, self._gate_packets) if pc.state == PLANNED else None
        drops = self.meter_drops.totals.get(pc.id)
        meter_drops = dict(drops) if drops else None
        level = pc.level
        if level is None or pc.path is None or pc.state != PLANNED or not measured:
            return ConnectionStatus(pc, state, throughput, policy=policy, meter_drops=meter_drops)
        links = [link for wire in self._chain_wires(pc) for link in wire.path.links]
        met = _breach(level, links, measured) is None
        path = path_quality(pc.path.links, measured)
        chain = path_quality(links, measured) if pc.chain is not None else None
        return ConnectionStatus(
            pc, state, throughput, PathMeasurement(path.latency, path.loss, path.measured, met),
            PathMeasurement(chain.latency, chain.loss, chain.measured, met) if chain is not None else None,
            policy, meter_drops)

    def link_status(self, measured: dict[str, LinkQuality]) -> tuple[LinkStatus, ...]:
        return tuple(LinkStatus(name, q, self.latency.get(name)) for name, q in measured.items())


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
        slow = (q.latency is not None and q.latency > link.latency + SLOW_MARGIN + q.error
                and level.max_latency is not None)
        if slow or (q.loss > 0 and level.max_loss is not None):
            bad.add(link.name)
    return frozenset(bad or (link.name for link in links))
