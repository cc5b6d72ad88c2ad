"""Each connection's ``ConnectionStatus``, kept until something it shows changes.

A status of a big fabric is asked for after every change (the status endpoint, metrics, the
Kubernetes status writer), so it must cost what changed, not the connections already there. The
book keeps one ``ConnectionStatus`` per connection, in the plan's order, and builds again only those
marked: touched by the plan (a chain's other wires too), whose flows a program or a counter read
touched, under a service level when the measurements moved; everything after a switch or port
change or a read of a switch's flows (then unchanged ones keep their object). An unchanged
connection keeps the same object, so renderers can key what they made on its identity.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ryu_nsm.core.manager import Manager
from ryu_nsm.core.planner import FabricState, Plan, PlannedConnection
from ryu_nsm.core.status import ConnectionStatus
from ryu_nsm.qos.measure import LinkQuality

Build = Callable[[PlannedConnection, dict[str, LinkQuality]], ConnectionStatus]


class StatusBook(Manager):
    """Connection statuses by id, built by ``build`` (planned connection, measured links) when marked."""

    def __init__(self, build: Build):
        self.build = build
        self._held: dict[str, ConnectionStatus] = {}
        self._marked: set[str] = set()
        self._all = True  # build every connection at the next look
        self._measured: dict[str, LinkQuality] | None = None
        self._leveled: set[str] = set()  # whose status shows measurements
        self._gated: set[str] = set()  # whose status shows policy counters
        self._connections: tuple[ConnectionStatus, ...] = ()

    def fabric_changed(self) -> None:
        self._all = True

    def plan_changed(self, before: Plan, after: Plan, state: FabricState, now: float) -> None:
        for cid in after.touched:  # removed connections are touched too
            self._marked.add(cid)
            for pc in (before.connections.get(cid), after.connections.get(cid)):
                if pc is not None and pc.chain is not None:  # its chain's measurement moves too
                    self._marked.update(pc.chain.wires)
            new = after.connections.get(cid)
            _keep(self._leveled, cid, new is not None and new.level is not None)
            _keep(self._gated, cid, new is not None and new.policy is not None)

    def mark(self, cids: Iterable[str | None]) -> None:
        """These connections' statuses may have changed (None is ignored)."""
        self._marked.update(cids)
        self._marked.discard(None)

    def mark_all(self) -> None:
        self._all = True

    def gated_on(self, plan: Plan, switch: str) -> list[str]:
        """Connections with a policy that have an end on ``switch`` (their counters are read there)."""
        out = []
        for cid in self._gated:
            pc = plan.connections.get(cid)
            if pc is not None and pc.ends is not None and switch in (pc.ends.a_switch, pc.ends.b_switch):
                out.append(cid)
        return out

    def connections(self, plan: Plan, measured: dict[str, LinkQuality]) -> tuple[ConnectionStatus, ...]:
        """Every connection's status in the plan's order; unchanged ones are the objects of last time."""
        if measured != self._measured:
            self._measured = measured
            self._marked |= self._leveled
        planned = plan.connections
        if self._all:
            self._rebuild(planned, measured)
        elif self._marked:
            held, added = self._held, False
            for cid in self._marked:
                pc = planned.get(cid)
                if pc is None:
                    held.pop(cid, None)
                    continue
                old, new = held.get(cid), self.build(pc, measured)
                if old is None:
                    added = True
                if old is None or old != new:
                    held[cid] = new
            if len(held) != len(planned):  # a connection came unannounced: build them all
                self._rebuild(planned, measured)
            else:
                if added:  # in the plan's order (C speed)
                    self._held = dict(zip(planned, map(held.__getitem__, planned), strict=True))
                self._connections = tuple(self._held.values())
        self._marked.clear()
        return self._connections

    def _rebuild(self, planned: dict[str, PlannedConnection], measured: dict[str, LinkQuality]) -> None:
        held, fresh = self._held, {}
        for cid, pc in planned.items():
            new, old = self.build(pc, measured), held.get(cid)
            fresh[cid] = old if old is not None and old == new else new
        self._held, self._all = fresh, False
        self._leveled = {cid for cid, pc in planned.items() if pc.level is not None}
        self._gated = {cid for cid, pc in planned.items() if pc.policy is not None}
        self._connections = tuple(fresh.values())


def _keep(members: set[str], cid: str, member: bool) -> None:
    if member:
        members.add(cid)
    else:
        members.discard(cid)
