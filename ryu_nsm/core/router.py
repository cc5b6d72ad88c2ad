"""Routing one connection at a time: a path (by admission when its service level asks for it), tags
on its links, meters, fast-failover groups and its flows, held in the plan's allocators and ledger."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from ryu_nsm.core.fabric import Fabric, Link
from ryu_nsm.core.flows import (
    WireEnds,
    WireQos,
    protected_wire_flows,
    queued,
    stateful_wire_flows,
    wire_flows,
)
from ryu_nsm.core.flowspec import GROUP_BASE, METER_BASE, MeterSpec, Priority
from ryu_nsm.core.model import Attachment
from ryu_nsm.core.pathing import FabricView, NoPath, Path, TagAllocator, TagSpaceExhausted
from ryu_nsm.core.plan import PLANNED, WAITING, FabricState, PlannedConnection
from ryu_nsm.core.policy import WirePolicy, wire_ends, wire_policy
from ryu_nsm.core.policy_model import PolicyInputs
from ryu_nsm.core.resolver import FAILED, Connection
from ryu_nsm.core.sampling import FlowSampling, sampled_wire_flows
from ryu_nsm.qos.admission import admit, demand_for
from ryu_nsm.qos.ledger import Ledger
from ryu_nsm.qos.service_level import ServiceLevel


def port_of(fabric: Fabric, state: FabricState, attachment: Attachment) -> int | None:
    live = state.ports.get((attachment.switch, attachment.port))
    return live if live is not None else fabric.attachment_port(attachment)


def on_declared(fabric: Fabric, path: Path | None) -> Path | None:
    """``path`` with the links of ``fabric`` (declared latency), matched by name: a path placed with
    measured latency is judged by the declared one from then on."""
    if path is None or not path.links:
        return path
    links = fabric.link_by_name
    return Path(path.switches, tuple(links.get(link.name, link) for link in path.links))


class PathsReadBack:
    """The path that each connection's tags on the switches trace (``hints``: (connection, link) →
    tag, as read): a fresh controller keeps it rather than choose anew among equal paths."""

    def __init__(self, fabric: Fabric, hints: Mapping[tuple[str, str], int]):
        self.fabric, self.hints = fabric, hints
        self._links: dict[str, list[Link]] | None = None  # made when first asked: a restart asks

    def path(self, cid: str, src: str, dst: str) -> Path | None:
        """The one loop-free path from ``src`` to ``dst`` that all of ``cid``'s tagged links make,
        or None (no tags, other ends, or more links than one path: a backup's too)."""
        if self._links is None:
            self._links = {}
            links = self.fabric.link_by_name
            for owner, name in self.hints:
                link = links.get(name)
                if link is not None:
                    self._links.setdefault(owner, []).append(link)
        left = list(self._links.get(cid, ()))
        if not left:
            return None
        switches, used, here = [src], [], src
        while here != dst:
            step = next((link for link in left if here in (link.a, link.b)), None)
            if step is None:
                return None
            left.remove(step)
            used.append(step)
            here = step.b if step.a == here else step.a
            if here in switches:
                return None
            switches.append(here)
        return None if left else Path(tuple(switches), tuple(used))


def meter_keys(cid: str) -> tuple[str, str]:
    """Meter (and group) allocation keys of a connection's two directions (client → endpoint, back)."""
    return (f"{cid}|ab", f"{cid}|ba")


ZONE_SPACE = (1, 0xFFFF)  # conntrack zones; zone 0 is everyone's default
ZONE_SCOPE = "conntrack"  # zones are unique in the whole fabric: switches may share one datapath


def zone_allocator() -> TagAllocator:
    return TagAllocator(ZONE_SPACE)


# Rule i of a direction has priority POLICY_RULE + i, below POLICY_STATE's; its conjunction id is
# zone << 16 | ingress << 15 | IPv6 << 14 | i, so i also stays below 1 << 14.
MAX_RULES = Priority.POLICY_STATE - Priority.POLICY_RULE


def policy_refused(policy: WirePolicy | None) -> str | None:
    """Why a wire's policy cannot be compiled (more rules in a direction than priorities for them)."""
    for name, direction in (("client → endpoint", policy.a_to_b), ("endpoint → client", policy.b_to_a)
                            ) if policy is not None else ():
        for side, rules in (("egress", direction.egress), ("ingress", direction.ingress)
                            ) if direction is not None else ():
            if rules is not None and len(rules) > MAX_RULES:
                return (f"policy: {len(rules)} {side} rules apply to {name} connections on this wire; "
                        f"at most {MAX_RULES} can be enforced")
    return None


def backup_key(cid: str) -> str:
    """The tag allocation key of a connection's backup path."""
    return f"{cid}|backup"


def crank_key(cid: str) -> str:
    """The tag allocation key of a protected connection's crankback tags (one per primary link)."""
    return f"{cid}|crank"


def group_keys(pc: PlannedConnection) -> tuple[str, ...]:
    """The allocation key of each of ``pc.groups``: its direction's, one group per primary link each way."""
    hops = len(pc.path.links) if pc.path is not None else 0
    ab, ba = meter_keys(pc.id)
    return (ab,) * hops + (ba,) * hops


def _admitted(level: ServiceLevel | None) -> bool:
    """True when the level asks for admission: a guarantee, a per-wire latency bound or a backup."""
    return level is not None and bool(
        level.guaranteed_bandwidth or (level.max_latency is not None and not level.chain_latency)
        or level.protected)


def _sampling(level: ServiceLevel | None, sampling: FlowSampling | None) -> float:
    """A wire's sampling probability: its level's ``flowSampling``, else the fabric's default."""
    if sampling is None:
        return 0.0
    return level.flow_sampling if level is not None and level.flow_sampling is not None else sampling.default


def _ends(fabric: Fabric, state: FabricState, conn: Connection) -> WireEnds:
    a, b = conn.client_attachment, conn.endpoint_attachment
    return WireEnds(conn.id, a.switch, port_of(fabric, state, a), b.switch, port_of(fabric, state, b))


class Router:
    """Routes connections one at a time into the plan's tags, meters, groups and bandwidth ledger."""

    def __init__(self, fabric: Fabric, state: FabricState, view: FabricView, tags: TagAllocator,
                 meters: TagAllocator, groups: TagAllocator, ledger: Ledger,
                 measured_view: FabricView | None = None, *, policy: PolicyInputs | None = None,
                 zones: TagAllocator | None = None, read_back: PathsReadBack | None = None):
        self.fabric, self.state, self.view = fabric, state, view
        self.read_back = read_back
        self.tags, self.meters, self.groups, self.ledger = tags, meters, groups, ledger
        self.measured_view = measured_view or view
        self.policy = policy or PolicyInputs()
        self.zones = zones or zone_allocator()

    def policy_of(self, conn: Connection) -> WirePolicy | None:
        """The MultiNetworkPolicy of ``conn``'s wire, None when no policy restricts it."""
        if not self.policy.policies or not conn.ok:
            return None
        client, endpoint = wire_ends(conn.namespace, conn.client, conn.endpoint, self.policy)
        return wire_policy((conn.namespace, conn.network_service), client, endpoint, self.policy)

    def release(self, cid: str, remember: bool = False, reservation: bool = True) -> None:
        """Free what ``cid`` holds; ``remember`` keeps its tags and meter ids as its preference."""
        self.tags.release(cid, remember)
        self.tags.release(backup_key(cid), remember)
        self.tags.release(crank_key(cid), remember)
        self.zones.release(cid, remember)
        for key in meter_keys(cid):
            self.meters.release(key, remember)
            self.groups.release(key, remember)
        if reservation:
            self.ledger.release(cid)

    def route(self, conn: Connection, before: PlannedConnection | None, level: ServiceLevel | None,
              preempt: bool = True, find_backup: bool = True) -> tuple[PlannedConnection, tuple[str, ...]]:
        """The connection's plan, and the connections its admission preempted; without
        ``find_backup`` a protected connection gets no backup (the planner's backup pass looks later)."""
        unplaced = self._unplaced_end(conn)
        if unplaced is not None:
            return PlannedConnection(conn, *unplaced, level=level), ()
        found = self._find(conn, before, level, preempt, find_backup)
        if isinstance(found, str):
            return PlannedConnection(conn, FAILED, found, level=level), ()
        path, backup, event, note, evicted = found
        # Stored with declared latency: measured latency chose the path, the plan judges it as declared.
        path, backup = on_declared(self.fabric, path), on_declared(self.fabric, backup)
        try:
            held = tuple((link.name, self.tags.allocate(conn.id, link.name)) for link in path.links)
            spare = tuple((link.name, self.tags.allocate(backup_key(conn.id), link.name))
                          for link in (backup.links if backup is not None else ()))
        except TagSpaceExhausted as exc:
            self.release(conn.id)
            return PlannedConnection(conn, FAILED, str(exc), path, level=level), evicted
        ends = _ends(self.fabric, self.state, conn)
        meters = self._meters(conn.id, ends, level)
        crank = ()
        if backup is not None and backup.links:
            try:  # with a transit switch, every primary link may carry frames cranked back
                crank = tuple((link.name, self.tags.allocate(crank_key(conn.id), link.name))
                              for link in (path.links if len(path.links) > 1 else ()))
            except TagSpaceExhausted as exc:
                self.release(conn.id)
                return PlannedConnection(conn, FAILED, str(exc), path, level=level), evicted
        policy = self.policy_of(conn)
        refused = policy_refused(policy)
        try:  # every wire has a zone: a policy may come to it while its connections are up
            zone = self.zones.allocate(conn.id, ZONE_SCOPE) if refused is None else None
        except TagSpaceExhausted:
            refused = f"no free conntrack zone: all {self.zones.size} are in use"
        if refused is not None:
            self.release(conn.id)
            return PlannedConnection(conn, FAILED, refused, path, level=level, policy=policy), evicted
        flows, groups = self._compile(conn.id, ends, level, meters, path, held, backup, spare, crank)
        flows = tuple(stateful_wire_flows(ends, flows, policy, zone))
        flows = tuple(sampled_wire_flows(ends, flows, _sampling(level, self.fabric.flow_sampling),
                                         self.fabric.flow_sampling))
        planned = PlannedConnection(conn, PLANNED, "", path, held, spare, flows, level, backup, note, event,
                                    meters, groups, ends, crank_tags=crank, policy=policy, zone=zone)
        return planned, evicted

    def _unplaced_end(self, conn: Connection) -> tuple[str, str] | None:
        """(state, reason) when an end of ``conn`` has no port to attach to, yet or at all."""
        for att in (conn.client_attachment, conn.endpoint_attachment):
            if att.switch not in self.fabric.switch_by_name:
                return FAILED, f"attachment {att}: switch {att.switch!r} is not in the fabric"
            if port_of(self.fabric, self.state, att) is None and att.switch in self.state.unreported:
                return WAITING, f"waiting for switch {att.switch} to report its ports"
            if port_of(self.fabric, self.state, att) is None:
                return FAILED, f"attachment {att}: no port {att.port!r} on {att.switch}"
        return None

    def _find(self, conn: Connection, before: PlannedConnection | None, level: ServiceLevel | None,
              preempt: bool, find_backup: bool) -> tuple | str:
        """(path, backup, event, note, preempted ids), kept from ``before`` where it still holds, off
        the links it should leave where it can be; or why there is none."""
        src, dst = conn.client_attachment.switch, conn.endpoint_attachment.switch
        current = None
        if before is not None and before.path is not None and before.connection.endpoint_attachment == (
            conn.endpoint_attachment
        ) and before.connection.client_attachment == conn.client_attachment and self.view.intact(before.path):
            current = on_declared(self.fabric, before.path)
        elif self.read_back is not None:  # no plan before (a restart): the path the switches carry
            current = self.read_back.path(conn.id, src, dst)
        avoid = self.state.avoid.get(conn.id, frozenset())
        if not find_backup and level is not None and level.protected:
            level = replace(level, protection="none")
        # A connection placed anew (none to keep) is placed by the latency links measure.
        base = self.view if current is not None else self.measured_view
        found = self._place(conn, src, dst, level, current, before, preempt, self._view_without(avoid, base))
        if avoid and isinstance(found, str):  # no way around what it should leave: it stays
            found = self._place(conn, src, dst, level, current, before, preempt, base)
            if not isinstance(found, str):
                found = (*found[:3], f"no path avoids {', '.join(sorted(avoid))}", *found[4:])
        return found

    def _compile(self, cid: str, ends: WireEnds, level: ServiceLevel | None,
                 meters: tuple[tuple[str, MeterSpec], ...], path: Path, held: tuple, backup: Path | None,
                 spare: tuple, crank: tuple) -> tuple[tuple, tuple]:
        """The connection's flows and fast-failover groups, (switch, spec) pairs."""
        qos = WireQos(meters[0][1].meter_id if meters else None, meters[1][1].meter_id if meters else None,
                      level.dscp if level is not None else None)
        groups = ()
        if backup is not None and backup.links:
            ab, ba = meter_keys(cid)
            ids = ([GROUP_BASE | self.groups.allocate(ab, switch) for switch in path.switches[:-1]],
                   [GROUP_BASE | self.groups.allocate(ba, switch) for switch in path.switches[:0:-1]])
            flows, groups = protected_wire_flows(ends, path, dict(held), backup, dict(spare), qos, ids,
                                                 dict(crank))
        else:
            flows = wire_flows(ends, path, dict(held), qos)
        if level is not None and level.guaranteed_bandwidth:
            flows, groups = queued(flows, groups, self.fabric.queue_by_port)
        return tuple(flows), tuple(groups)

    def _view_without(self, avoid: frozenset[str], base: FabricView) -> FabricView:
        if not avoid:
            return base
        return FabricView(base.fabric, base.down_links | avoid, base.down_switches)

    def _place(self, conn: Connection, src: str, dst: str, level: ServiceLevel | None, current: Path | None,
               before: PlannedConnection | None, preempt: bool, view: FabricView) -> tuple | str:
        """(path, backup, event, note, preempted ids) in ``view``, or why there is none."""
        if current is not None and not view.intact(current):
            current = None
        if _admitted(level):
            backup = on_declared(self.fabric, before.backup) if current is not None and before else None
            decision = admit(view, self.ledger, demand_for(conn.id, src, dst, level, current, backup),
                             preempt=preempt)
            if not decision.admitted:
                return decision.reason
            event = ", ".join(map(str, decision.evicted))
            note = decision.reason.removeprefix(event).removeprefix("; ")
            return (decision.path, decision.backup, event, note,
                    tuple(e.connection_id for e in decision.evicted))
        if current is not None:
            return current, None, "", "", ()
        try:
            return view.shortest(src, dst), None, "", "", ()
        except NoPath as exc:
            return str(exc)

    def _meters(
        self, cid: str, ends: WireEnds, level: ServiceLevel | None
    ) -> tuple[tuple[str, MeterSpec], ...]:
        """A meter per direction at the switch where that direction enters, when the level limits rate."""
        if level is None or level.rate_limit is None:
            return ()
        rate = -(-level.rate_limit // 1000)
        # Without a declared burst, a tenth of a second at the rate: enough for TCP to reach it.
        burst = -(-level.burst * 8 // 1000) if level.burst is not None else max(rate // 10, 1)
        out = []
        for key, switch in zip(meter_keys(cid), (ends.a_switch, ends.b_switch), strict=True):
            meter_id = METER_BASE | self.meters.allocate(key, switch)
            out.append((switch, MeterSpec(meter_id, rate, burst)))
        return tuple(out)
