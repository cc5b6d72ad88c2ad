"""One pure step from declared resources and fabric state to desired flows: resolve → route → compile.

Both ``ryu-nsm plan`` (dry run) and the controller call ``make_plan``; passing the previous plan
keeps endpoints, paths and tags of connections that are still valid, so a change touches only the
connections it concerns. It also costs only what it touches: a connection whose request, endpoint
side, path and ports are unchanged is carried over as it was, flows included, and ``touched`` says
which connections were planned anew, so the controller diffs only their flows.

The passes, in order: what is kept from the plan before (``_keep``); routing what is new or touched,
with preemption (``_route_anew``); chain-wide latency bounds (``chain_bound.ChainPass``); backups for
protected connections still without one (``_find_backups``); the switches' base flows.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace

from ryu_nsm.core.chain_bound import ChainPass
from ryu_nsm.core.fabric import Fabric
from ryu_nsm.core.flows import pipeline_flows
from ryu_nsm.core.flowspec import (
    GROUP_BASE,
    GROUP_ID_SPACE,
    METER_BASE,
    METER_ID_SPACE,
    FlowSpec,
    wire_cookie,
)
from ryu_nsm.core.model import ClientRequest, Resources
from ryu_nsm.core.pathing import FabricView, TagAllocator
from ryu_nsm.core.plan import PLANNED, WAITING, Basis, FabricState, HeldResolve, Plan, PlannedConnection
from ryu_nsm.core.resolver import FAILED, Connection, Resolution, resolve_changes, resolve_whole
from ryu_nsm.core.router import (
    ZONE_SCOPE,
    PathsReadBack,
    Router,
    backup_key,
    crank_key,
    group_keys,
    meter_keys,
    zone_allocator,
)
from ryu_nsm.core.sampling import sampled_pipeline
from ryu_nsm.qos.ledger import Ledger
from ryu_nsm.qos.service_level import ServiceLevel, select


def make_plan(
    fabric: Fabric,
    resources: Resources,
    state: FabricState | None = None,
    previous: Plan | None = None,
    tag_hints: Mapping[tuple[str, str], int] | None = None,
    now: float | None = None,
    held: HeldResolve | None = None,
) -> Plan:
    """Resolve every request, route every connection and compile the desired flows of every switch.

    ``tag_hints`` ((connection id, link name) → tag) are tags found on the switches: they win over
    the previous plan's, so a fresh controller keeps whatever tags the fabric already carries.
    Inputs are compared with the previous plan's by equality: a caller may rebuild an equal one
    freely, and changes one by passing a new one (the plan keeps the mappings it was given, so one
    changed in place afterwards looks unchanged).
    Endpoints that have expired by ``now`` are no candidates (``None``: none expire). ``held``: the
    resolve of a held plan (``held_plan``), taken over when it still holds.
    """
    state = state or FabricState()
    hints = tag_hints if tag_hints is not None else {}
    before = previous.connections if previous else {}
    basis = previous.basis if previous else None
    levels = resources.service_levels
    if basis is None and held is not None and held.holds(resources, now):
        requests, resolution = held.requests, held.resolution
    else:
        requests, resolution = _resolve(resources, basis, before, now)
    resolved = resolution.connections
    changes = _changes(basis, state, hints, levels, before)
    view, measured_view = _views(fabric, state, basis, changes.same_fabric)
    policed = basis is None or bool(basis.resources.policy.policies or resources.policy.policies)
    *allocators, zones = _allocators(fabric, basis, before, hints, changes.anew_all, policed)
    read_back = basis.read_back if basis is not None and _same(basis.hints, hints) else None
    if read_back is None and hints:
        read_back = PathsReadBack(fabric, hints)
    router = Router(fabric, state, view, *allocators, measured_view, policy=resources.policy, zones=zones,
                    read_back=read_back)
    # Only requests changed: what the resolve changed and what was not planned is all there is to do.
    since = None
    if changes.quick and basis.unplanned is not None and resolution.changed is not None:
        since = resolution.changed | changes.disagree
    if since is not None:
        planned, anew = _keep_since(before, resolved, since | basis.unplanned)
        removed = {cid for cid in since if cid in before and cid not in resolved}
    else:
        planned, anew = _keep(before, resolved, view, hints, changes)
        removed = before.keys() - resolved.keys()
    if basis is None or not _same(basis.resources.policy, resources.policy):
        anew += _policy_changed(router, planned)
    for cid in removed:
        router.release(cid)
    touched = _route_anew(router, resolved, before, planned, anew, levels) | removed
    if any(level.chain_latency for level in levels):
        ChainPass(router, resolved, planned, before, touched, changes.anew_all).run()
    # Without protection nothing looks (a plan costs what it touches); with no change neither: the
    # ledger is as it was, and so is every backup search.
    if (touched or not changes.same_fabric) and any(level.protected for level in levels):
        _find_backups(router, resolved, planned, touched)
    pipeline = previous.pipeline if changes.same_fabric else _pipeline(fabric, state, previous)
    # Only connections planned anew can be waiting: a kept one is planned.
    keep = frozenset(wire_cookie(cid) for cid in touched if cid in planned and planned[cid].state == WAITING)
    looked = touched if since is not None else planned.keys()
    unplanned = {cid for cid in looked if cid in planned and planned[cid].state != PLANNED}
    if since is not None:
        unplanned |= basis.unplanned - touched
    return Plan(
        connections=_in_order(planned, before if since is not None else None, touched),
        pipeline=pipeline,
        problems=resources.problems,
        keep_cookies=keep,
        touched=frozenset(touched),
        basis=Basis(resources, requests, resolved, state, view, router.tags, hints, router.ledger,
                    router.meters, router.groups, measured_view, router.zones, resolution,
                    frozenset(unplanned), read_back),
    )


def _in_order(planned: dict[str, PlannedConnection], before: Mapping[str, PlannedConnection] | None,
              touched: set[str]) -> dict[str, PlannedConnection]:
    """``planned`` by id; from ``before`` (already by id) with the ``touched`` ones put in, when given."""
    if before is None:
        return {cid: planned[cid] for cid in sorted(planned)}
    out = dict(before)
    last = next(reversed(out), "")
    added = sorted(cid for cid in touched if cid in planned and cid not in out)
    for cid in touched:
        if cid in planned:
            if cid in out:
                out[cid] = planned[cid]  # in its place
        else:
            out.pop(cid, None)
    out.update((cid, planned[cid]) for cid in added)
    if added and added[0] <= last:  # nearly sorted: a sort and a rebuild at C speed
        ids = sorted(out)
        return dict(zip(ids, map(out.__getitem__, ids), strict=True))
    return out


@dataclass(frozen=True)
class _Changes:
    """What changed since the plan before, as far as a connection it planned is concerned."""

    anew_all: bool  # no plan before, or new service levels: every connection is planned anew
    same_fabric: bool  # the same links and switches are down
    moved_ports: frozenset[tuple[str, str]]  # (switch, port name) whose number came, went or changed
    disagree: frozenset[str]  # planned connections whose tags or zone on the switches differ, as read
    moved_away: frozenset[str]  # connections told to leave some links, or no longer

    @property
    def quick(self) -> bool:
        """Nothing changed but requests: a connection planned before for the same request is kept."""
        return self.same_fabric and not (self.moved_ports or self.anew_all
                                         or self.moved_away)


def held_plan(resources: Resources, previous: Plan, now: float | None, reason: str) -> Plan:
    """Every request resolved and none routed, each waiting for ``reason`` (a failed resolve says
    why it failed): what the status shows while the controller holds its first plan. The pipeline
    is ``previous``'s, so the switches' desired base flows stay as they are."""
    requests, resolution = _resolve(resources, None, {}, now)
    planned = {cid: PlannedConnection(conn, WAITING, reason) if conn.ok else PlannedConnection(
        conn, FAILED, conn.reason) for cid, conn in resolution.connections.items()}
    return Plan(connections=planned, pipeline=previous.pipeline, problems=resources.problems,
                touched=frozenset(planned.keys() | previous.connections.keys()),
                held=HeldResolve(resources, requests, resolution))


def _changes(basis: Basis | None, state: FabricState, hints: Mapping[tuple[str, str], int],
             levels: tuple[ServiceLevel, ...], before: Mapping[str, PlannedConnection]) -> _Changes:
    if basis is None:
        return _Changes(True, False, frozenset(), frozenset(), frozenset())
    was = basis.state
    same_fabric = (was.down_links, was.down_switches) == (state.down_links, state.down_switches)
    # By equality: a mapping rebuilt as it was changes nothing. Hints are looked at only where they
    # changed: a read that found what the plan holds (an audit) costs no look at every connection.
    return _Changes(basis.resources.service_levels != levels, same_fabric,
                    _changed_keys(was.ports, state.ports),
                    disagreeing(before, hints, _changed_keys(basis.hints, hints)),
                    _changed_keys(was.avoid, state.avoid))


def disagreeing(before: Mapping[str, PlannedConnection], hints: Mapping[tuple[str, str], int],
                 keys: frozenset) -> frozenset[str]:
    """Planned connections whose tag on a link of their path, or zone, differs from what a read found
    (of the hint ``keys`` that came or changed; one that went says nothing, a drift the diff repairs)."""
    out = set()
    for key in keys:
        cid, link = key
        found = hints.get(key)
        old = before.get(cid)
        if found is None or old is None or old.state != PLANNED:
            continue
        held = old.zone if link == ZONE_SCOPE else next((tag for name, tag in old.tags if name == link), None)
        if held is not None and held != found:
            out.add(cid)
    return frozenset(out)


def _changed_keys(old: Mapping, new: Mapping) -> frozenset:
    """The keys whose value came, went or changed from ``old`` to ``new``."""
    if _same(old, new):  # the common case, cheaper than the difference
        return frozenset()
    return frozenset(key for key, _ in old.items() ^ new.items())


def _resolve(resources: Resources, basis: Basis | None, before: Mapping[str, PlannedConnection],
             now: float | None) -> tuple[dict[str, ClientRequest], Resolution]:
    """Every request by id, and every connection: with the same services and endpoints as before,
    a request as it was is settled (its connection is kept without being resolved again), and only
    the requests that changed and those that failed are resolved when that is enough."""
    requests = {r.id: r for r in resources.requests}
    settled: frozenset[str] = frozenset()
    if basis is not None and (basis.resources.services == resources.services
                              and basis.resources.endpoints == resources.endpoints):
        old = basis.requests
        # Identity first: most requests are the very objects seen before.
        changed = [cid for cid, r in requests.items() if old.get(cid) is not r]
        changed = [cid for cid in changed if old.get(cid) != requests[cid]]
        if basis.resolution is not None:
            removed = old.keys() - requests.keys()
            found = resolve_changes(resources, requests, old, basis.resolution, changed, removed, now)
            if found is not None:
                return requests, found
        settled = frozenset(requests.keys() - set(changed))
    previous = basis.resolved if basis else {c: pc.connection for c, pc in before.items()}
    return requests, resolve_whole(resources, previous, settled, now)


def _views(fabric: Fabric, state: FabricState, basis: Basis | None,
           same_fabric: bool) -> tuple[FabricView, FabricView]:
    """The fabric as it is (what placements are judged by) and with measured latency (what new
    placements are chosen by; the controller's closed loop judges existing ones by it)."""
    view = basis.view if same_fabric else FabricView(fabric, state.down_links, state.down_switches)
    if same_fabric and _same(basis.state.latency, state.latency):
        return view, basis.measured_view
    slower = _measured(fabric, state.latency)
    return view, view if slower is None else FabricView(slower, state.down_links, state.down_switches)


def _measured(fabric: Fabric, latency: Mapping[str, float]) -> Fabric | None:
    """``fabric`` with each link's latency raised to what is measured (never below the declared);
    None when no link is measured slower than declared."""
    if not any(latency.get(link.name, 0.0) > link.latency for link in fabric.links):
        return None
    return replace(fabric, links=tuple(
        replace(link, latency=latency[link.name]) if latency.get(link.name, 0.0) > link.latency else link
        for link in fabric.links))


def _allocators(fabric: Fabric, basis: Basis | None, before: Mapping[str, PlannedConnection],
                hints: Mapping[tuple[str, str], int],
                anew_all: bool, policed: bool) -> tuple[TagAllocator, TagAllocator, TagAllocator, Ledger,
                                                        TagAllocator]:
    """Tags, meter ids, group ids, the bandwidth ledger and conntrack zones, as the plan before left
    them; planned anew, each connection's choices before are its preference; tags and zones found
    on switches win. Zones are only looked for when policies were or are declared (``policed``)."""
    zones = zone_allocator()
    if basis is not None and basis.zones is not None:
        zones = basis.zones.copy()
    if policed:
        zones.remember({(cid, ZONE_SCOPE): pc.zone for cid, pc in before.items() if pc.zone is not None})
    if not anew_all:
        tags, meters, groups = basis.tags.copy(), basis.meters.copy(), basis.groups.copy()
        ledger = basis.ledger.copy()
    else:
        tags, meters, ledger = TagAllocator(fabric.tag_range), TagAllocator(METER_ID_SPACE), Ledger(fabric)
        groups = TagAllocator(GROUP_ID_SPACE)
        tags.remember({(cid, link): tag for cid, pc in before.items() for link, tag in pc.tags})
        tags.remember({(backup_key(cid), link): tag for cid, pc in before.items()
                       for link, tag in pc.backup_tags})
        tags.remember({(crank_key(cid), link): tag for cid, pc in before.items()
                       for link, tag in pc.crank_tags})
        meters.remember({(key, sw): m.meter_id - METER_BASE for cid, pc in before.items()
                         for key, (sw, m) in zip(meter_keys(cid), pc.meters, strict=False)})
        groups.remember({(key, sw): g.group_id - GROUP_BASE for pc in before.values()
                         for key, (sw, g) in zip(group_keys(pc), pc.groups, strict=False)})
    tags.prefer(hints)
    zones.prefer(hints)  # (connection, ZONE_SCOPE) → the zone its flows on the switches commit to
    return tags, meters, groups, ledger, zones


def _policy_changed(router: Router, planned: dict[str, PlannedConnection]) -> list[str]:
    """Kept connections whose wire's policy is no longer what they were planned with: out of
    ``planned``, to be routed anew (their path and tags are their preference)."""
    changed = [cid for cid, pc in planned.items()
               if pc.state == PLANNED and pc.policy != router.policy_of(pc.connection)]
    for cid in changed:
        del planned[cid]
    return changed


def _keep(before: Mapping[str, PlannedConnection], resolved: Mapping[str, Connection], view: FabricView,
          hints: Mapping[tuple[str, str], int],
          changes: _Changes) -> tuple[dict[str, PlannedConnection], list[str]]:
    """The connections kept as planned before, and the ids of the rest (to route anew)."""
    planned: dict[str, PlannedConnection] = {}
    anew = []
    quick = changes.quick
    for cid, conn in resolved.items():
        old = before.get(cid)
        if quick and old is not None and old.state == PLANNED and _same(old.connection, conn):
            planned[cid] = old  # the common case, without a call
        elif _still_good(old, conn, view, hints, changes):
            planned[cid] = old
        else:
            anew.append(cid)
    return planned, anew


def _keep_since(before: Mapping[str, PlannedConnection], resolved: Mapping[str, Connection],
                redo: frozenset[str]) -> tuple[dict[str, PlannedConnection], list[str]]:
    """``_keep`` when only requests changed: every connection is kept but those ``redo`` names (the
    resolve changed them, or they were not planned) that are still resolved, to route anew."""
    planned = dict(before)
    for cid in redo:
        planned.pop(cid, None)
    return planned, [cid for cid in redo if cid in resolved]


def _still_good(old: PlannedConnection | None, conn: Connection, view: FabricView,
                hints: Mapping[tuple[str, str], int], changes: _Changes) -> bool:
    """True when ``old`` is still how ``conn`` should be planned."""
    if changes.anew_all or old is None or old.state != PLANNED:
        return False
    if not _same(old.connection, conn):
        return False
    if not changes.same_fabric:
        if not all(view.intact(path) for path in (old.path, old.backup) if path):
            return False
        if old.level is not None and old.level.protected and old.backup is None:
            return False  # a backup may be possible now
    ends = ((conn.client_attachment.switch, conn.client_attachment.port),
            (conn.endpoint_attachment.switch, conn.endpoint_attachment.port))
    if changes.moved_ports and any(end in changes.moved_ports for end in ends):
        return False
    if conn.id in changes.disagree:
        return False
    return conn.id not in changes.moved_away


def _route_anew(router: Router, resolved: Mapping[str, Connection], before: Mapping[str, PlannedConnection],
                planned: dict[str, PlannedConnection], anew: list[str],
                levels: tuple[ServiceLevel, ...]) -> set[str]:
    """Route the connections ``anew`` into ``planned``, and those their admission preempts; returns
    every connection it routed.

    Unchanged connections planned before on paths still up go first (they keep tags, paths and
    reservations; displacing one takes preemption), then the higher priorities.
    """
    level_of = {cid: _level(levels, resolved[cid]) for cid in anew}
    held = {cid for cid in anew if _held(before.get(cid), resolved[cid], level_of[cid], router.view)}
    anew = sorted(anew, key=lambda c: (c not in held, -(level_of[c].priority if level_of[c] else 0), c))
    # A held connection that had no backup looks for one only after every other is placed again
    # (``_find_backups``): here it would take room that a kept backup held before it.
    unbacked = {cid for cid in held if before[cid].backup is None}
    for cid in anew:
        router.release(cid, remember=True)
    queue = deque(anew)
    routed = set(anew)
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
            routed.add(victim)
            queue.append(victim)
    return routed


def _held(old: PlannedConnection | None, conn: Connection, level: ServiceLevel | None,
          view: FabricView) -> bool:
    """True when ``old`` planned ``conn`` as it is now, under ``level``, on a path still up."""
    return (old is not None and old.state == PLANNED and view.intact(old.path)
            and old.connection == conn and old.level == level)


def _find_backups(router: Router, resolved: Mapping[str, Connection], planned: dict[str, PlannedConnection],
                  touched: set[str]) -> None:
    """Protected connections without a backup look for one, higher priority first, then by id.

    Last, when every primary and every backup that could be kept is in the ledger: so planning
    anew gives what planning step by step gave (a backup never takes the room of one held before),
    and room that a change freed goes to those still without one.
    """
    for cid in sorted((c for c, pc in planned.items() if _wants_backup(pc)),
                      key=lambda c: (-planned[c].level.priority, c)):
        old = planned[cid]
        router.release(cid, remember=True)
        new, _ = router.route(resolved[cid], old, old.level, preempt=False)
        # Placed again as it was (same tags: they were remembered), it stays the same object.
        if (new.path, new.backup, new.tags, new.flows, new.groups, new.note, new.state) != (
                old.path, old.backup, old.tags, old.flows, old.groups, old.note, old.state):
            planned[cid] = new
            touched.add(cid)


def _wants_backup(pc: PlannedConnection) -> bool:
    return (pc.state == PLANNED and pc.level is not None and pc.level.protected and pc.backup is None
            and bool(pc.path.links))


def _pipeline(fabric: Fabric, state: FabricState, previous: Plan | None = None
              ) -> dict[str, tuple[FlowSpec, ...]]:
    """The base flows of every switch that is not down. They follow from the fabric alone, so the
    plan before's stand (the same objects) for every switch it had: a link going down changes none,
    and the switch sessions then update only what the plan touched."""
    before = previous.pipeline if previous is not None else {}
    pipeline = {s.name: before.get(s.name) or tuple(sampled_pipeline(s.name, pipeline_flows(fabric, s.name),
                                                                     fabric.flow_sampling))
                for s in fabric.switches if s.name not in state.down_switches}
    return before if pipeline.keys() == before.keys() else pipeline


def _same(old: object, new: object) -> bool:
    """Equality, tried by identity first: most of what a plan compares is the very object it saw."""
    return old is new or old == new


def _level(levels: tuple[ServiceLevel, ...], conn: Connection) -> ServiceLevel | None:
    return select(levels, conn.network_service, conn.namespace, conn.labels) if levels else None
