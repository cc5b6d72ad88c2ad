"""Chain-wide latency bounds (``chainLatency: true``), met after every connection is routed on its
own: where the planned paths of a chain's wires add up to too much, they are routed again together."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from ryu_nsm.core.chains import follow
from ryu_nsm.core.pathing import Path
from ryu_nsm.core.plan import PLANNED, ChainBound, PlannedConnection
from ryu_nsm.core.resolver import FAILED, Connection
from ryu_nsm.core.router import Router
from ryu_nsm.qos.chain_routing import Leg, constrained_chain
from ryu_nsm.qos.ledger import Demand, Ledger, Reservation
from ryu_nsm.qos.routing import NoFeasiblePath, meets_latency
from ryu_nsm.qos.service_level import format_duration


class ChainPass:
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

    def __init__(self, router: Router, resolved: Mapping[str, Connection],
                 planned: dict[str, PlannedConnection], before: Mapping[str, PlannedConnection],
                 touched: set[str], everything: bool):
        self.router, self.resolved, self.planned = router, resolved, planned
        self.before, self.touched, self.everything = before, touched, everything
        self.chains: dict[str, tuple[str, ...]] = {}
        self.member_of: dict[str, list[str]] = {}
        self.by_client: dict[tuple[str, str, str], str] = {}  # (namespace, service, client) → wire

    def _next(self, wire: str) -> str | None:
        """The chain's wire after ``wire``: its endpoint's own request for the same service (the
        lowest id, as ``report.chains`` takes it)."""
        conn = self.resolved[wire]
        if not conn.endpoint:
            return None
        return self.by_client.get((conn.namespace, conn.network_service, conn.endpoint))

    def run(self) -> None:
        """Bound every chain that needs it, then record what each chain comes to on its head."""
        for cid, conn in self.resolved.items():
            key = (conn.namespace, conn.network_service, conn.client)
            if key not in self.by_client or cid < self.by_client[key]:
                self.by_client[key] = cid
        for cid, pc in self.planned.items():
            level = pc.level
            if pc.state == PLANNED and level is not None and level.chain_latency and (
                    level.max_latency is not None):
                self.chains[cid] = follow(cid, self._next)
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
        placing = Router(router.fabric, replace(router.state, avoid=kept_off), router.view, router.tags,
                          router.meters, router.groups, ledger, policy=router.policy, zones=router.zones)
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
