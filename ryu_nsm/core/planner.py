"""One pure step from declared resources and fabric state to desired flows: resolve → route → compile.

Both ``ryu-nsm plan`` (dry run) and the controller call ``make_plan``; passing the previous plan
keeps endpoints, paths and tags of connections that are still valid, so a change touches only the
connections it concerns. It also costs only what it touches: a connection whose request, endpoint
side, path and ports are unchanged is carried over as it was, flows included, and ``touched`` says
which connections were planned anew, so the controller diffs only their flows.

Each connection is routed on its own first; then chain-wide latency bounds (``chainLatency: true``)
are met by routing a chain's wires again together where their paths add up to too much (see
``_ChainPass``), and each bounded connection carries what its chain comes to (``ChainBound``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property

from ryu_nsm.core.fabric import Fabric
from ryu_nsm.core.flows import WireEnds, WireQos, pipeline_flows, protected_wire_flows, queued, wire_flows
from ryu_nsm.core.flowspec import (
    GROUP_BASE,
    GROUP_ID_SPACE,
    METER_BASE,
    METER_ID_SPACE,
    FlowSpec,
    GroupSpec,
    MeterSpec,
    wire_cookie,
)
from ryu_nsm.core.model import Attachment, ClientRequest, Problem, Resources
from ryu_nsm.core.pathing import FabricView, NoPath, Path, TagAllocator, TagSpaceExhausted
from ryu_nsm.core.resolver import Connection, resolve
from ryu_nsm.qos.admission import (
    Demand,
    Ledger,
    Leg,
    NoFeasiblePath,
    Reservation,
    admit,
    constrained_chain,
    demand_for,
    meets_latency,
)
from ryu_nsm.qos.service_level import ServiceLevel, format_duration, select

PLANNED = "planned"
FAILED = "failed"
WAITING = "waiting"  # an end is on a switch that has not reported its ports yet


@dataclass(frozen=True)
class FabricState:
    """What the controller knows of the live fabric; the plan of a dry run uses the defaults."""

    down_links: frozenset[str] = frozenset()
    down_switches: frozenset[str] = frozenset()
    # (switch, port name) → port number as the switch reports it; overrides the declared number.
    ports: Mapping[tuple[str, str], int] = field(default_factory=dict, compare=False, hash=False)
    # Switches whose ports are not known yet (not connected since the controller started).
    unreported: frozenset[str] = frozenset()
    # Connection id → links it should leave (measured to break its service level); a preference:
    # with no other way, it stays where it is.
    avoid: Mapping[str, frozenset[str]] = field(default_factory=dict, compare=False, hash=False)
    # Link name → one-way latency (s) measured to last above the declared one: paths are planned with
    # it. Pass the same object again while it has not changed; a new one re-plans every connection.
    latency: Mapping[str, float] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class ChainBound:
    """A chain-wide latency bound as planned: the wires of the chain (the connection whose level
    bounds it first, then each service function's own request in turn) and the summed declared
    path latency of those of them that are planned."""

    wires: tuple[str, ...]
    latency: float
    bound: float

    @property
    def met(self) -> bool:
        return meets_latency(self.latency, self.bound)


@dataclass(frozen=True)
class PlannedConnection:
    connection: Connection
    state: str
    reason: str = ""
    path: Path | None = None
    tags: tuple[tuple[str, int], ...] = ()
    backup_tags: tuple[tuple[str, int], ...] = ()  # on the links of its backup, when protected
    # (switch, flow) pairs that carry the connection, both directions; empty unless planned.
    flows: tuple[tuple[str, FlowSpec], ...] = field(default=(), compare=False)
    level: ServiceLevel | None = None  # the service level that applies, if any
    backup: Path | None = None  # reserved for protection
    note: str = ""  # what admission says of how it is planned (no backup possible)
    # What happened to it in this plan only (preempted others, was moved by a preemption): history.
    event: str = field(default="", compare=False)
    # (switch, meter) pairs that police the connection at its ingress switches.
    meters: tuple[tuple[str, MeterSpec], ...] = field(default=(), compare=False)
    # (switch, group) pairs: the fast-failover groups of a protected connection, at each switch a
    # direction leaves along its primary: the a→b direction's in path order, then the b→a one's.
    groups: tuple[tuple[str, GroupSpec], ...] = field(default=(), compare=False)
    # Where its frames enter the fabric: a is the client's end, b the endpoint's.
    ends: WireEnds | None = field(default=None, compare=False)
    # On the links of its primary, when protected: the tags of frames cranked back towards the backup.
    crank_tags: tuple[tuple[str, int], ...] = ()
    # When planned under a chain-wide latency bound (``chainLatency: true``): what the chain comes to.
    chain: ChainBound | None = None

    def objects(self, kind: str) -> tuple[tuple[str, object], ...]:
        """Its meters or groups."""
        return self.meters if kind == "meter" else self.groups

    @property
    def id(self) -> str:
        return self.connection.id


@dataclass(frozen=True)
class _Basis:
    """What the next incremental ``make_plan`` compares against."""

    resources: Resources
    requests: Mapping[str, ClientRequest]
    resolved: Mapping[str, Connection]
    state: FabricState
    view: FabricView
    tags: TagAllocator
    hints: Mapping[tuple[str, str], int]
    ledger: Ledger
    meters: TagAllocator
    groups: TagAllocator
    measured_view: FabricView  # ``view`` with measured latencies, for new placements


@dataclass(frozen=True)
class Plan:
    connections: dict[str, PlannedConnection]
    # The base flows of every switch that is not down.
    pipeline: dict[str, tuple[FlowSpec, ...]]
    problems: tuple[Problem, ...] = ()
    # Cookies of waiting connections: their flows stay where they are until the switch reports.
    keep_cookies: frozenset[int] = frozenset()
    # Connections planned anew or removed since the previous plan (all of them without one).
    touched: frozenset[str] = field(default=frozenset(), compare=False)
    basis: _Basis | None = field(default=None, compare=False, repr=False)

    @cached_property
    def meters(self) -> dict[str, frozenset[MeterSpec]]:
        """Desired meters per switch."""
        return self.objects("meter")

    @cached_property
    def groups(self) -> dict[str, frozenset[GroupSpec]]:
        """Desired groups per switch."""
        return self.objects("group")

    def objects(self, kind: str) -> dict[str, frozenset]:
        """Desired meters or groups per switch."""
        desired: dict[str, set] = {}
        for pc in self.connections.values():
            for sw, spec in pc.objects(kind):
                desired.setdefault(sw, set()).add(spec)
        return {sw: frozenset(specs) for sw, specs in desired.items()}

    def reservations(self) -> list[dict]:
        """Guaranteed bandwidth held per link (with residual capacity), for plan and status output."""
        return self.basis.ledger.describe() if self.basis is not None else []

    @cached_property
    def flows(self) -> dict[str, frozenset[FlowSpec]]:
        """Desired flows per switch: the pipeline plus every planned connection's flows."""
        desired: dict[str, set[FlowSpec]] = {sw: set(flows) for sw, flows in self.pipeline.items()}
        for pc in self.connections.values():
            for sw, flow in pc.flows:
                desired.setdefault(sw, set()).add(flow)
        return {sw: frozenset(flows) for sw, flows in desired.items()}

    def failed(self) -> list[PlannedConnection]:
        return [c for c in self.connections.values() if c.state == FAILED]


def _port(fabric: Fabric, state: FabricState, attachment: Attachment) -> int | None:
    live = state.ports.get((attachment.switch, attachment.port))
    return live if live is not None else fabric.attachment_port(attachment)


def make_plan(
    fabric: Fabric,
    resources: Resources,
    state: FabricState | None = None,
    previous: Plan | None = None,
    tag_hints: Mapping[tuple[str, str], int] | None = None,
    now: float | None = None,
) -> Plan:
    """Resolve every request, route every connection and compile the desired flows of every switch.

    ``tag_hints`` ((connection id, link name) → tag) are tags found on the switches: they win over
    the previous plan's, so a fresh controller keeps whatever tags the fabric already carries.
    Pass the same mapping object again while it has not changed: only a new one is checked against
    the tags connections hold. Endpoints that have expired by ``now`` are no candidates.
    """
    state = state or FabricState()
    hints = tag_hints if tag_hints is not None else {}
    before = previous.connections if previous else {}
    basis = previous.basis if previous else None
    requests = {r.id: r for r in resources.requests}
    settled: frozenset[str] = frozenset()
    if basis is not None and (basis.resources.services == resources.services
                              and basis.resources.endpoints == resources.endpoints):
        old = basis.requests
        settled = frozenset(cid for cid, r in requests.items() if (o := old.get(cid)) is r or o == r)
    resolved = resolve(resources, basis.resolved if basis else {c: pc.connection for c, pc in before.items()},
                       settled, now)

    same_fabric = basis is not None and (basis.state.down_links, basis.state.down_switches) == (
        state.down_links, state.down_switches)
    view = basis.view if same_fabric else FabricView(fabric, state.down_links, state.down_switches)
    # New placements are chosen with the latency links measure; placements that exist are judged by
    # the declared latency here and by the measured one in the controller's closed loop.
    if same_fabric and (basis.state.latency is state.latency or basis.state.latency == state.latency):
        measured_view = basis.measured_view
    else:
        routed = _measured(fabric, state.latency)
        measured_view = view if routed is fabric else FabricView(
            routed, state.down_links, state.down_switches)
    levels = resources.service_levels
    # New service levels may change any connection: everything is planned anew (a rare event).
    anew_all = basis is None or basis.resources.service_levels != levels
    if not anew_all:
        tags, meters, ledger = basis.tags.copy(), basis.meters.copy(), basis.ledger.copy()
        groups = basis.groups.copy()
    else:  # sticky choices come from the previous connections themselves
        tags, meters, ledger = TagAllocator(fabric.tag_range), TagAllocator(METER_ID_SPACE), Ledger(fabric)
        groups = TagAllocator(GROUP_ID_SPACE)
        tags.remember({(cid, link): tag for cid, pc in before.items() for link, tag in pc.tags})
        tags.remember({(_backup_key(cid), link): tag for cid, pc in before.items()
                       for link, tag in pc.backup_tags})
        tags.remember({(_crank_key(cid), link): tag for cid, pc in before.items()
                       for link, tag in pc.crank_tags})
        meters.remember({(key, sw): m.meter_id - METER_BASE for cid, pc in before.items()
                         for key, (sw, m) in zip(_meter_keys(cid), pc.meters, strict=False)})
        groups.remember({(key, sw): g.group_id - GROUP_BASE for pc in before.values()
                         for key, (sw, g) in zip(_group_keys(pc), pc.groups, strict=False)})
    tags.prefer(hints)
    moved_ports: set[tuple[str, str]] = set()
    if basis is not None and basis.state.ports is not state.ports:
        moved_ports = {key for key, _ in basis.state.ports.items() ^ state.ports.items()}
    check_hints = basis is None or basis.hints is not hints
    moved_away: set[str] = set()
    if basis is not None and basis.state.avoid is not state.avoid:
        moved_away = {cid for cid, _ in basis.state.avoid.items() ^ state.avoid.items()}

    def still_good(cid: str, conn: Connection) -> PlannedConnection | None:
        old = before.get(cid)
        if anew_all or old is None or old.state != PLANNED:
            return None
        if not (old.connection is conn or old.connection == conn):
            return None
        if not same_fabric and not all(view.intact(path) for path in (old.path, old.backup) if path):
            return None
        if not same_fabric and old.level is not None and old.level.protected and old.backup is None:
            return None  # a backup may be possible now
        if moved_ports and ((conn.client_attachment.switch, conn.client_attachment.port) in moved_ports or (
                conn.endpoint_attachment.switch, conn.endpoint_attachment.port) in moved_ports):
            return None
        if check_hints and any(hints.get((cid, link), tag) != tag for link, tag in old.tags):
            return None
        if cid in moved_away:
            return None
        return old

    planned: dict[str, PlannedConnection] = {}
    anew = []
    quick = same_fabric and not moved_ports and not check_hints and not anew_all and not moved_away
    for cid, conn in resolved.items():
        old = before.get(cid)
        if quick and old is not None and old.connection is conn and old.state == PLANNED:
            planned[cid] = old  # the common case, without a call
            continue
        kept = still_good(cid, conn)
        if kept is None:
            anew.append(cid)
        else:
            planned[cid] = kept
    removed = before.keys() - resolved.keys()
    router = _Router(fabric, state, view, tags, meters, groups, ledger, measured_view)
    for cid in removed:
        router.release(cid)
    level_of = {cid: _level(levels, resolved[cid]) for cid in anew}
    # Unchanged connections planned before on paths still up go first (they keep tags, paths and
    # reservations; displacing one takes preemption), then the higher priorities.
    def held(cid: str) -> bool:
        old = before.get(cid)
        return (old is not None and old.state == PLANNED and view.intact(old.path)
                and old.connection == resolved[cid] and old.level == level_of[cid])

    def order(cid: str) -> tuple:
        level = level_of[cid]
        return (not held(cid), -(level.priority if level else 0), cid)

    anew.sort(key=order)
    # A held connection that had no backup looks for one only after every other is placed again
    # (``_BackupPass``): here it would take room that a kept backup held before it.
    unbacked = {cid for cid in anew if held(cid) and before[cid].backup is None}
    for cid in anew:
        router.release(cid, remember=True)
    queue = deque(anew)
    touched = set(anew) | removed
    preempted: dict[str, str] = {}
    while queue:
        cid = queue.popleft()
        conn = resolved[cid]
        if not conn.ok:
            planned[cid] = PlannedConnection(conn, FAILED, conn.reason)
            continue
        level = level_of[cid] if cid in level_of else _level(levels, conn)
        result, evicted = router.route(conn, before.get(cid) or planned.get(cid), level,
                                       preempt=cid not in preempted, find_backup=cid not in unbacked)
        if cid in preempted:
            why = preempted[cid]
            if result.state == PLANNED:
                result = replace(result, event="; ".join(filter(None, (f"moved: {why}", result.event))))
            else:
                result = replace(result, reason=f"{why}; {result.reason}")
        planned[cid] = result
        for victim in evicted:  # their reservations are gone: they find another path, or fail
            router.release(victim, remember=True, reservation=False)
            preempted[victim] = f"preempted by {cid} (priority {level.priority})"
            touched.add(victim)
            queue.append(victim)
    if any(level.chain_latency for level in levels):
        _ChainPass(router, resolved, planned, before, touched, anew_all).run()
    # Without protection nothing looks (a plan costs what it touches); with no change neither: the
    # ledger is as it was, and so is every backup search.
    if (touched or not same_fabric) and any(level.protected for level in levels):
        _find_backups(router, resolved, planned, touched)
    if same_fabric:
        pipeline = previous.pipeline
    else:
        pipeline = {s.name: tuple(pipeline_flows(fabric, s.name))
                    for s in fabric.switches if s.name not in state.down_switches}
    # Only connections planned anew can be waiting: a kept one is planned.
    keep = frozenset(wire_cookie(cid) for cid in touched if cid in planned and planned[cid].state == WAITING)
    return Plan(
        connections={cid: planned[cid] for cid in sorted(planned)},
        pipeline=pipeline,
        problems=resources.problems,
        keep_cookies=keep,
        touched=frozenset(touched),
        basis=_Basis(resources, requests, resolved, state, view, tags, hints, ledger, meters, groups,
                     measured_view),
    )


def _find_backups(router: _Router, resolved: Mapping[str, Connection], planned: dict[str, PlannedConnection],
                  touched: set[str]) -> None:
    """Protected connections without a backup look for one, higher priority first, then by id.

    Last, when every primary and every backup that could be kept is in the ledger: so planning
    anew gives what planning step by step gave (a backup never takes the room of one held before),
    and room that a change freed goes to those still without one.
    """
    def wanting(pc: PlannedConnection) -> bool:
        return (pc.state == PLANNED and pc.level is not None and pc.level.protected and pc.backup is None
                and bool(pc.path.links))

    for cid in sorted((c for c, pc in planned.items() if wanting(pc)),
                      key=lambda c: (-planned[c].level.priority, c)):
        old = planned[cid]
        router.release(cid, remember=True)
        new, _ = router.route(resolved[cid], old, old.level, preempt=False)
        # Placed again as it was (same tags: they were remembered), it stays the same object.
        if (new.path, new.backup, new.tags, new.flows, new.groups, new.note, new.state) != (
                old.path, old.backup, old.tags, old.flows, old.groups, old.note, old.state):
            planned[cid] = new
            touched.add(cid)


def _follow(head: str, resolved: Mapping[str, Connection], by_client: Mapping[tuple, str]) -> tuple[str, ...]:
    """The wires of the chain from ``head`` on: a service function's Pod shares its endpoint's name,
    so its own request for the same service (the lowest id, as ``report.chains`` takes it) is next."""
    wires, step = [], head
    while step is not None and step not in wires:
        wires.append(step)
        conn = resolved[step]
        step = by_client.get((conn.namespace, conn.network_service, conn.endpoint)) if conn.endpoint else None
    return tuple(wires)


class _ChainPass:
    """Chain-wide latency bounds, after every connection is routed on its own.

    Each planned connection whose level has ``chain_latency`` heads a chain; when the planned paths
    of the chain's planned wires add up to more than its bound, those wires are routed again
    together: the cheapest set of paths within the bound (each wire with its own guarantee and
    own bound), found by ``constrained_chain``. Chains go by priority, then id. A chain within its
    bound moves nothing; a move must not break another chain that met its bound (the wires it
    shares stay where they are and the rest try again); a chain that cannot be met fails its head,
    and its other wires stay as they were. Only chains that a touched wire or a change of membership
    concern are looked at: every other chain met its bound (or failed its head) in the plan before.
    """

    def __init__(self, router: _Router, resolved: Mapping[str, Connection],
                 planned: dict[str, PlannedConnection], before: Mapping[str, PlannedConnection],
                 touched: set[str], everything: bool):
        self.router, self.resolved, self.planned = router, resolved, planned
        self.before, self.touched, self.everything = before, touched, everything
        self.chains: dict[str, tuple[str, ...]] = {}
        self.member_of: dict[str, list[str]] = {}

    def run(self) -> None:
        """Bound every chain that needs it, then record what each chain comes to on its head."""
        by_client: dict[tuple, str] = {}
        for cid, conn in self.resolved.items():
            key = (conn.namespace, conn.network_service, conn.client)
            if key not in by_client or cid < by_client[key]:
                by_client[key] = cid
        for cid, pc in self.planned.items():
            level = pc.level
            if pc.state == PLANNED and level is not None and level.chain_latency and (
                    level.max_latency is not None):
                self.chains[cid] = _follow(cid, self.resolved, by_client)
        for head, wires in self.chains.items():
            for wire in wires:
                self.member_of.setdefault(wire, []).append(head)
        due = [head for head, wires in self.chains.items() if self._concerned(head, wires)]
        for head in sorted(due, key=lambda h: (-self.planned[h].level.priority, h)):
            if self.planned[head].state == PLANNED:
                self._bound(head)
        for head, wires in self.chains.items():
            pc = self.planned[head]
            if pc.state != PLANNED or not self._concerned(head, wires):
                continue
            summary = ChainBound(wires, self._latency(wires), pc.level.max_latency)
            if pc.chain != summary:
                self.planned[head] = replace(pc, chain=summary)
                self.touched.add(head)

    def _concerned(self, head: str, wires: tuple[str, ...]) -> bool:
        old = self.before.get(head)
        return (self.everything or old is None or old.chain is None or old.chain.wires != wires
                or any(wire in self.touched for wire in wires))

    def _latency(self, wires: Iterable[str], paths: Mapping[str, Path] | None = None) -> float:
        """Summed path latency of the planned ``wires``, with ``paths`` instead of their own."""
        paths = paths or {}
        return sum((paths[w] if w in paths else self.planned[w].path).latency for w in wires
                   if self.planned[w].state == PLANNED)

    def _meets(self, head: str, paths: Mapping[str, Path] | None = None) -> bool:
        return meets_latency(self._latency(self.chains[head], paths), self.planned[head].level.max_latency)

    def _bound(self, head: str) -> None:
        if self._meets(head):
            return
        ledger, avoid = self.router.ledger, self.router.state.avoid
        live = [w for w in self.chains[head] if self.planned[w].state == PLANNED]
        bound = self.planned[head].level.max_latency
        # Links any wire of the chain should leave (measured to break a level) are bad for all of them.
        leave = frozenset().union(*(avoid.get(w, frozenset()) for w in live))
        pinned: set[str] = set()
        released: dict[str, Reservation | None] = {}
        while True:
            for wire in pinned & released.keys():
                _reserve_again(ledger, released.pop(wire))
            free = [w for w in live if w not in pinned]
            for wire in free:
                if wire not in released:
                    released[wire] = ledger.release(wire)
            kept = sum(self.planned[w].path.latency for w in pinned)
            try:
                paths = self._search(free, bound - kept, leave)
            except NoFeasiblePath as exc:
                for reservation in released.values():
                    _reserve_again(ledger, reservation)
                self._fail(head, exc, kept, pinned)
                return
            moved = {w: p for w, p in zip(free, paths, strict=True) if p != self.planned[w].path}
            broken = {h for w in moved for h in self.member_of[w]
                      if h != head and self.planned[h].state == PLANNED and self._meets(h)
                      and not self._meets(h, moved)}
            if not broken:
                break
            pinned |= {w for w in moved if any(w in self.chains[h] for h in broken)}
        self._place(head, dict(zip(free, paths, strict=True)))

    def _legs(self, wires: list[str], leave: frozenset[str]) -> list[Leg]:
        legs = []
        for wire in wires:
            pc = self.planned[wire]
            level, conn = pc.level, pc.connection
            own = level.max_latency if level is not None and not level.chain_latency else None
            bandwidth = (level.guaranteed_bandwidth or 0) if level is not None else 0
            ends = (conn.client_attachment.switch, conn.endpoint_attachment.switch)
            legs.append(Leg(*ends, bandwidth, own, leave))
        return legs

    def _search(self, wires: list[str], budget: float, leave: frozenset[str]) -> tuple[Path, ...]:
        """The cheapest paths for ``wires`` within ``budget``, off ``leave`` if that can be done."""
        if not wires:  # every wire stays where another chain needs it: the chain is as fast as it gets
            raise NoFeasiblePath("no wire of the chain may move", "latency", best_latency=0.0)
        view, ledger = self.router.view, self.router.ledger
        if leave:
            try:
                return constrained_chain(view, self._legs(wires, leave), max_latency=budget, ledger=ledger)
            except NoFeasiblePath:
                pass  # like one wire, a chain with no way around a bad link stays on it
        return constrained_chain(view, self._legs(wires, frozenset()), max_latency=budget, ledger=ledger)

    def _place(self, head: str, paths: dict[str, Path]) -> None:
        """Route each wire on its path, as admission would (tags, meters, backups), in chain order."""
        router, ledger = self.router, self.router.ledger
        legs = dict(zip(paths, self._legs(list(paths), frozenset()), strict=True))
        # Every primary holds its room first, so that no wire's backup takes the room of another's path.
        for wire, path in paths.items():
            ledger.reserve(Demand(wire, legs[wire].src, legs[wire].dst, legs[wire].bandwidth), path)
        # Each wire keeps away from what it should leave, except what its path takes (no way around).
        kept_off = {w: router.state.avoid.get(w, frozenset()) - {link.name for link in p.links}
                    for w, p in paths.items()}
        placing = _Router(router.fabric, replace(router.state, avoid=kept_off), router.view, router.tags,
                          router.meters, router.groups, ledger)
        why = f"to bring chain {head} within {format_duration(self.planned[head].level.max_latency)}"
        for wire, path in paths.items():
            ledger.release(wire)
            router.release(wire, remember=True, reservation=False)
            old = self.planned[wire]
            result, _ = placing.route(old.connection, replace(old, path=path), old.level, preempt=False)
            previous = self.before.get(wire)
            if result.state == PLANNED and previous is not None and previous.path not in (None, result.path):
                result = replace(result, event="; ".join(filter(None, (why, result.event))))
            self.planned[wire] = result
            self.touched.add(wire)

    def _fail(self, head: str, exc: NoFeasiblePath, kept: float, pinned: set[str]) -> None:
        pc = self.planned[head]
        conn = pc.connection
        names = " → ".join([conn.client, *(self.resolved[w].endpoint or "?" for w in self.chains[head])])
        bound = format_duration(pc.level.max_latency)
        if exc.kind == "latency" and exc.leg is None:
            why = (f"no set of paths is within {bound}: the fastest takes "
                   f"{format_duration(exc.best_latency + kept)} in all")
        else:
            why = f"{exc} (bound {bound})"
        if pinned:
            why += f", with {', '.join(sorted(pinned))} kept where other chains' bounds need them"
        self.router.release(head, remember=True)
        reason = f"chain {names} cannot meet its latency bound: {why}"
        self.planned[head] = PlannedConnection(conn, FAILED, reason, level=pc.level)
        self.touched.add(head)


def _reserve_again(ledger: Ledger, reservation: Reservation | None) -> None:
    """Put back a reservation taken out of ``ledger`` (None: it held none)."""
    if reservation is not None:
        ledger.reserve(reservation.demand, reservation.path, reservation.backup)


def _measured(fabric: Fabric, latency: Mapping[str, float]) -> Fabric:
    """``fabric`` with each link's latency raised to what is measured (never below the declared)."""
    if not any(latency.get(link.name, 0.0) > link.latency for link in fabric.links):
        return fabric
    return replace(fabric, links=tuple(
        replace(link, latency=latency[link.name]) if latency.get(link.name, 0.0) > link.latency else link
        for link in fabric.links))


def _on(fabric: Fabric, path: Path | None) -> Path | None:
    """``path`` with the links of ``fabric`` (declared latency), matched by name: a path placed with
    measured latency is judged by the declared one from then on."""
    if path is None or not path.links:
        return path
    links = fabric.link_by_name
    return Path(path.switches, tuple(links.get(link.name, link) for link in path.links))


def _level(levels: tuple[ServiceLevel, ...], conn: Connection) -> ServiceLevel | None:
    return select(levels, conn.network_service, conn.namespace, conn.labels) if levels else None


def _meter_keys(cid: str) -> tuple[str, str]:
    """Meter (and group) allocation keys of a connection's two directions (client → endpoint, back)."""
    return (f"{cid}|ab", f"{cid}|ba")


def _backup_key(cid: str) -> str:
    """The tag allocation key of a connection's backup path."""
    return f"{cid}|backup"


def _crank_key(cid: str) -> str:
    """The tag allocation key of a protected connection's crankback tags (one per primary link)."""
    return f"{cid}|crank"


def _group_keys(pc: PlannedConnection) -> tuple[str, ...]:
    """The allocation key of each of ``pc.groups``: its direction's, one group per primary link each way."""
    hops = len(pc.path.links) if pc.path is not None else 0
    ab, ba = _meter_keys(pc.id)
    return (ab,) * hops + (ba,) * hops


def _admitted(level: ServiceLevel | None) -> bool:
    """True when the level asks for admission: a guarantee, a per-wire latency bound or a backup."""
    return level is not None and bool(
        level.guaranteed_bandwidth or (level.max_latency is not None and not level.chain_latency)
        or level.protected)


def _ends(fabric: Fabric, state: FabricState, conn: Connection) -> WireEnds:
    a, b = conn.client_attachment, conn.endpoint_attachment
    return WireEnds(conn.id, a.switch, _port(fabric, state, a), b.switch, _port(fabric, state, b))


class _Router:
    """Routes connections one at a time into the plan's tags, meters, groups and bandwidth ledger."""

    def __init__(self, fabric: Fabric, state: FabricState, view: FabricView, tags: TagAllocator,
                 meters: TagAllocator, groups: TagAllocator, ledger: Ledger,
                 measured_view: FabricView | None = None):
        self.fabric, self.state, self.view = fabric, state, view
        self.tags, self.meters, self.groups, self.ledger = tags, meters, groups, ledger
        self.measured_view = measured_view or view

    def release(self, cid: str, remember: bool = False, reservation: bool = True) -> None:
        """Free what ``cid`` holds; ``remember`` keeps its tags and meter ids as its preference."""
        self.tags.release(cid, remember)
        self.tags.release(_backup_key(cid), remember)
        self.tags.release(_crank_key(cid), remember)
        for key in _meter_keys(cid):
            self.meters.release(key, remember)
            self.groups.release(key, remember)
        if reservation:
            self.ledger.release(cid)

    def route(self, conn: Connection, before: PlannedConnection | None, level: ServiceLevel | None,
              preempt: bool = True, find_backup: bool = True) -> tuple[PlannedConnection, tuple[str, ...]]:
        """The connection's plan, and the connections its admission preempted; without
        ``find_backup`` a protected connection gets no backup (``_find_backups`` looks later)."""
        fabric, state = self.fabric, self.state

        def refused(state: str, reason: str, path: Path | None = None) -> PlannedConnection:
            return PlannedConnection(conn, state, reason, path, level=level)

        for att in (conn.client_attachment, conn.endpoint_attachment):
            if att.switch not in fabric.switch_by_name:
                return refused(FAILED, f"attachment {att}: switch {att.switch!r} is not in the fabric"), ()
            if _port(fabric, state, att) is None and att.switch in state.unreported:
                return refused(WAITING, f"waiting for switch {att.switch} to report its ports"), ()
            if _port(fabric, state, att) is None:
                return refused(FAILED, f"attachment {att}: no port {att.port!r} on {att.switch}"), ()
        src, dst = conn.client_attachment.switch, conn.endpoint_attachment.switch
        current = None
        if before is not None and before.path is not None and before.connection.endpoint_attachment == (
            conn.endpoint_attachment
        ) and before.connection.client_attachment == conn.client_attachment and self.view.intact(before.path):
            current = _on(self.fabric, before.path)
        avoid = self.state.avoid.get(conn.id, frozenset())
        if not find_backup and level is not None and level.protected:
            level_here = replace(level, protection="none")
        else:
            level_here = level
        # A connection placed anew (none to keep) is placed by the latency links measure.
        base = self.view if current is not None else self.measured_view
        found = self._place(conn, src, dst, level_here, current, before, preempt,
                            self._view_without(avoid, base))
        if avoid and isinstance(found, str):  # no way around what it should leave: it stays
            found = self._place(conn, src, dst, level_here, current, before, preempt, base)
            if not isinstance(found, str):
                found = (*found[:3], f"no path avoids {', '.join(sorted(avoid))}", *found[4:])
        if isinstance(found, str):
            return refused(FAILED, found), ()
        path, backup, event, note, evicted = found
        # Stored with declared latency: measured latency chose the path, the plan judges it as declared.
        path, backup = _on(fabric, path), _on(fabric, backup)
        try:
            held = tuple((link.name, self.tags.allocate(conn.id, link.name)) for link in path.links)
            spare = tuple((link.name, self.tags.allocate(_backup_key(conn.id), link.name))
                          for link in (backup.links if backup is not None else ()))
        except TagSpaceExhausted as exc:
            self.release(conn.id)
            return refused(FAILED, str(exc), path), evicted
        ends = _ends(fabric, state, conn)
        meters = self._meters(conn.id, ends, level)
        qos = WireQos(meters[0][1].meter_id if meters else None, meters[1][1].meter_id if meters else None,
                      level.dscp if level is not None else None)
        groups, crank = (), ()
        if backup is not None and backup.links:
            try:  # with a transit switch, every primary link may carry frames cranked back
                crank = tuple((link.name, self.tags.allocate(_crank_key(conn.id), link.name))
                              for link in (path.links if len(path.links) > 1 else ()))
            except TagSpaceExhausted as exc:
                self.release(conn.id)
                return refused(FAILED, str(exc), path), evicted
            ab, ba = _meter_keys(conn.id)
            ids = ([GROUP_BASE | self.groups.allocate(ab, switch) for switch in path.switches[:-1]],
                   [GROUP_BASE | self.groups.allocate(ba, switch) for switch in path.switches[:0:-1]])
            flows, groups = protected_wire_flows(ends, path, dict(held), backup, dict(spare), qos, ids,
                                                 dict(crank))
        else:
            flows = wire_flows(ends, path, dict(held), qos)
        if level is not None and level.guaranteed_bandwidth:
            flows, groups = queued(flows, groups, fabric.queue_by_port)
        flows, groups = tuple(flows), tuple(groups)
        planned = PlannedConnection(conn, PLANNED, "", path, held, spare, flows, level, backup, note, event,
                                    meters, groups, ends, crank_tags=crank)
        return planned, evicted

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
            backup = _on(self.fabric, before.backup) if current is not None else None
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
        for key, switch in zip(_meter_keys(cid), (ends.a_switch, ends.b_switch), strict=True):
            meter_id = METER_BASE | self.meters.allocate(key, switch)
            out.append((switch, MeterSpec(meter_id, rate, burst)))
        return tuple(out)
