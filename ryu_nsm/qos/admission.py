"""Admission: whether a connection's demand gets a path, a backup and its guarantee, and whom it preempts.

``admit`` routes a demand in the ledger as it is (keeping the paths it has while they qualify) and,
when only room is missing, takes the guarantees of preemptible connections of lower priority;
``admit_all`` does so in order and gives the preempted a second try. See docs/admission.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace

from ryu_nsm.core.pathing import FabricView, Path, RoutingGraph
from ryu_nsm.qos.ledger import Demand, Direction, Ledger, Reservation, directions
from ryu_nsm.qos.routing import (
    NoBackup,
    NoFeasiblePath,
    constrained_path,
    disjoint_backup,
    meets_latency,
    protected_pair,
    routing_graph,
    search_path,
)
from ryu_nsm.qos.service_level import ServiceLevel


@dataclass(frozen=True)
class Eviction:
    """A reservation taken away so that a higher-priority demand fits; ``link`` is where it was needed."""

    reservation: Reservation
    link: str

    @property
    def connection_id(self) -> str:
        return self.reservation.connection_id

    def __str__(self) -> str:
        return f"preempted {self.connection_id} (priority {self.reservation.priority}) on link {self.link}"


@dataclass(frozen=True)
class Decision:
    """What became of a demand: admitted on ``path`` (and ``backup``), or refused with ``reason``.

    ``reason`` also explains an admitted demand's evictions or missing backup.
    """

    connection_id: str
    admitted: bool
    path: Path | None = None
    backup: Path | None = None
    evicted: tuple[Eviction, ...] = ()
    reason: str = ""

    def describe(self) -> dict:
        """JSON-able form for plans and status: paths as switch names, evictions as connection ids."""
        out: dict = {"id": self.connection_id, "admitted": self.admitted}
        if self.path is not None:
            out["path"] = list(self.path.switches)
        if self.backup is not None:
            out["backup"] = list(self.backup.switches)
        if self.evicted:
            out["evicted"] = [e.connection_id for e in self.evicted]
        if self.reason:
            out["reason"] = self.reason
        return out


def demand_for(
    connection_id: str, src: str, dst: str, level: ServiceLevel | None, current: Path | None = None,
    current_backup: Path | None = None,
) -> Demand:
    """The demand of a connection from ``src`` to ``dst`` under ``level`` (None: best effort, no
    guarantee or bound). A chain-wide bound (``chain_latency``) is left to ``constrained_chain``."""
    if level is None:
        return Demand(connection_id, src, dst, current=current)
    return Demand(
        connection_id, src, dst, bandwidth=level.guaranteed_bandwidth or 0,
        max_latency=None if level.chain_latency else level.max_latency, priority=level.priority,
        preemptible=level.preemptible, protected=level.protected, current=current,
        current_backup=current_backup,
    )


def _keeps_current(graph: RoutingGraph, ledger: Ledger, demand: Demand) -> bool:
    """True when the demand's current path is still up, ends right and fits (sticky paths)."""
    path = demand.current
    if path is None or (path.switches[0], path.switches[-1]) != (demand.src, demand.dst):
        return False
    if any(graph.links.get(link.name) != link for link in path.links):
        return False  # a link that is down, gone or changed
    if not graph.view.intact(path) or not meets_latency(path.latency, demand.max_latency):
        return False
    try:
        return ledger.fits(demand.bandwidth, (path,)) is None
    except ValueError:
        return False  # switches and links that do not chain up


def _route(graph: RoutingGraph, ledger: Ledger, demand: Demand) -> tuple[Path, Path | None, str]:
    """Primary, backup and a note on protection, in the ledger as it is; raises NoFeasiblePath."""
    args = {"bandwidth": demand.bandwidth, "max_latency": demand.max_latency, "ledger": ledger}
    if _keeps_current(graph, ledger, demand):
        primary = demand.current
    elif demand.protected:
        try:
            primary, backup = protected_pair(graph, demand.src, demand.dst, **args)
            return primary, backup, ""
        except NoBackup as exc:
            primary = constrained_path(graph, demand.src, demand.dst, **args)
            return primary, None, f"unprotected: {exc}"
    else:
        primary = constrained_path(graph, demand.src, demand.dst, **args)
    return primary, *_backup(graph, ledger, demand, primary)


def _backup(graph: RoutingGraph, ledger: Ledger, demand: Demand, primary: Path) -> tuple[Path | None, str]:
    """A best-effort backup for ``primary`` in the ledger as it is, and a note when there is none."""
    if not demand.protected:
        return None, ""
    kept = demand.current_backup
    if kept is not None and _keeps(graph, ledger, demand, kept, primary):
        return kept, ""
    try:
        return disjoint_backup(graph, primary, bandwidth=demand.bandwidth, max_latency=demand.max_latency,
                               ledger=ledger), ""
    except NoBackup as exc:
        return None, f"unprotected: {exc}"


def _keeps(graph: RoutingGraph, ledger: Ledger, demand: Demand, backup: Path, primary: Path) -> bool:
    """True when a backup held before still qualifies: up, link-disjoint from ``primary``, fits with it."""
    if {link.name for link in backup.links} & {link.name for link in primary.links}:
        return False
    if not _keeps_current(graph, ledger, replace(demand, current=backup)):
        return False
    try:
        return ledger.fits(demand.bandwidth, (primary, backup)) is None
    except ValueError:
        return False


def admit(
    view: FabricView | RoutingGraph, ledger: Ledger, demand: Demand, *, preempt: bool = True
) -> Decision:
    """Admit one demand into ``ledger`` (reserving its path and backup), preempting if allowed.

    Preemption takes only guarantees of strictly lower priority whose holders are preemptible (see
    docs/admission.md for which); with ``preempt`` False it takes none. A refused demand leaves
    the ledger as it was.
    """
    graph = routing_graph(view)
    if demand.connection_id in ledger.reservations:
        raise ValueError(f"{demand.connection_id} already holds a reservation: release it first")
    try:
        primary, backup, note = _route(graph, ledger, demand)
    except NoFeasiblePath as exc:
        # Only room can be made: no preemption helps a path that is too slow or not there.
        if not preempt or exc.kind != "bandwidth":
            return Decision(demand.connection_id, False, reason=str(exc))
        return _preempting(graph, ledger, demand, exc)
    ledger.reserve(demand, primary, backup)
    return Decision(demand.connection_id, True, primary, backup, reason=note)


def _preempting(graph: RoutingGraph, ledger: Ledger, demand: Demand, refusal: NoFeasiblePath) -> Decision:
    if not ledger.may_preempt(demand.priority):
        return Decision(demand.connection_id, False, reason=str(refusal))
    # The search alone: when it fails the reason is the refusal's, not a second diagnosis.
    primary = search_path(graph, demand.src, demand.dst, demand.bandwidth, demand.max_latency, ledger,
                      frozenset(), frozenset(), demand.priority)
    if primary is None:
        return Decision(demand.connection_id, False, reason=(
            f"{refusal} (preempting every preemptible connection of lower priority would not make room)"))
    victims = _victims(ledger, primary, demand)
    for victim in victims:
        ledger.release(victim.connection_id)
    backup, note = _backup(graph, ledger, demand, primary)
    ledger.reserve(demand, primary, backup)
    reason = "; ".join(filter(None, (", ".join(map(str, victims)), note)))
    return Decision(demand.connection_id, True, primary, backup, tuple(victims), reason)


def _victims(ledger: Ledger, path: Path, demand: Demand) -> list[Eviction]:
    """Preemptible reservations of lower priority whose release makes ``path`` fit, none spared."""
    freed: Counter[Direction] = Counter()
    chosen: list[Eviction] = []

    def over(d: Direction, freed: Counter[Direction]) -> bool:
        return ledger.reserved(*d) - freed[d] + demand.bandwidth > ledger.capacity(d[0])

    along = [d for link in path.links for d in directions(link)]
    for d in along:
        while over(d, freed):
            taken = {e.connection_id for e in chosen}
            options = [r for r in ledger.holders(*d) if r.demand.preemptible and r.priority < demand.priority
                       and r.bandwidth > 0 and r.connection_id not in taken]
            # Lowest priority first, then the larger guarantee (fewer victims), then the id.
            victim = min(options, key=lambda r: (r.priority, -r.bandwidth, r.connection_id))
            chosen.append(Eviction(victim, d[0]))
            for held, times in victim.held.items():
                freed[held] += times * victim.bandwidth
    for eviction in reversed(list(chosen)):
        spared = freed.copy()
        for held, times in eviction.reservation.held.items():
            spared[held] -= times * eviction.reservation.bandwidth
        if not any(over(d, spared) for d in along):
            chosen.remove(eviction)
            freed = spared
    return chosen


def admit_all(
    view: FabricView | RoutingGraph, ledger: Ledger, demands: Iterable[Demand]
) -> dict[str, Decision]:
    """Admit demands in order (put existing connections first so they keep their paths).

    A connection preempted on the way tries once more for another path, without preempting in
    turn (so admission always ends); its decision says by whom it was preempted. Returns a decision
    for every demand and every preempted connection, by connection id.
    """
    graph = routing_graph(view)
    decisions: dict[str, Decision] = {}
    for demand in demands:
        decision = admit(graph, ledger, demand)
        decisions[demand.connection_id] = decision
        for eviction in decision.evicted:
            why = (f"preempted by {demand.connection_id} (priority {demand.priority}) on link "
                   f"{eviction.link}")
            retry = admit(graph, ledger, replace(eviction.reservation.demand, current=None), preempt=False)
            if retry.admitted:
                decisions[eviction.connection_id] = replace(
                    retry, reason="; ".join(filter(None, (f"moved: {why}", retry.reason))))
            else:
                decisions[eviction.connection_id] = replace(
                    retry, reason=f"{why}; no other path: {retry.reason}")
    return decisions

