"""One pure step from declared resources and fabric state to desired flows: resolve → route → compile.

Both ``ryu-nsm plan`` (dry run) and the controller call ``make_plan``; passing the previous plan
keeps endpoints, paths and tags of connections that are still valid, so a change touches only the
connections it concerns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .fabric import Fabric
from .flows import WireEnds, compile_flows
from .flowspec import FlowSpec, wire_cookie
from .model import Attachment, Problem, Resources
from .pathing import FabricView, NoPath, Path, TagAllocator, TagSpaceExhausted
from .resolver import Connection, resolve

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


@dataclass(frozen=True)
class PlannedConnection:
    connection: Connection
    state: str
    reason: str = ""
    path: Path | None = None
    tags: tuple[tuple[str, int], ...] = ()

    @property
    def id(self) -> str:
        return self.connection.id


@dataclass(frozen=True)
class Plan:
    connections: dict[str, PlannedConnection]
    flows: dict[str, frozenset[FlowSpec]]
    problems: tuple[Problem, ...] = ()
    # Cookies of waiting connections: their flows stay where they are until the switch reports.
    keep_cookies: frozenset[int] = frozenset()

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
) -> Plan:
    """Resolve every request, route every connection and compile the desired flows of every switch.

    ``tag_hints`` ((connection id, link name) → tag) are tags found on the switches: they win over
    the previous plan's, so a fresh controller keeps whatever tags the fabric already carries.
    """
    state = state or FabricState()
    before = previous.connections if previous else {}
    resolved = resolve(resources, {cid: pc.connection for cid, pc in before.items()})
    view = FabricView(fabric, state.down_links, state.down_switches)
    held = {(cid, link): tag for cid, pc in before.items() for link, tag in pc.tags}
    tags = TagAllocator(fabric.tag_range, {**held, **(tag_hints or {})})
    planned: dict[str, PlannedConnection] = {}
    wires = []
    # Connections that existed before go first, so they keep their tags.
    for cid in sorted(resolved, key=lambda c: (c not in before, c)):
        conn = resolved[cid]
        if not conn.ok:
            planned[cid] = PlannedConnection(conn, FAILED, conn.reason)
            continue
        result = _route(fabric, state, view, conn, before.get(cid), tags)
        planned[cid] = result
        if result.state == PLANNED:
            wires.append((_ends(fabric, state, conn), result.path, dict(result.tags)))
    switches = [s.name for s in fabric.switches if s.name not in state.down_switches]
    return Plan(
        connections=dict(sorted(planned.items())),
        flows=compile_flows(fabric, switches, wires),
        problems=resources.problems,
        keep_cookies=frozenset(wire_cookie(cid) for cid, pc in planned.items() if pc.state == WAITING),
    )


def _ends(fabric: Fabric, state: FabricState, conn: Connection) -> WireEnds:
    a, b = conn.client_attachment, conn.endpoint_attachment
    return WireEnds(conn.id, a.switch, _port(fabric, state, a), b.switch, _port(fabric, state, b))


def _route(
    fabric: Fabric,
    state: FabricState,
    view: FabricView,
    conn: Connection,
    before: PlannedConnection | None,
    tags: TagAllocator,
) -> PlannedConnection:
    for att in (conn.client_attachment, conn.endpoint_attachment):
        if att.switch not in fabric.switch_by_name:
            return PlannedConnection(
                conn, FAILED, f"attachment {att}: switch {att.switch!r} is not in the fabric")
        if _port(fabric, state, att) is None and att.switch in state.unreported:
            return PlannedConnection(conn, WAITING, f"waiting for switch {att.switch} to report its ports")
        if _port(fabric, state, att) is None:
            return PlannedConnection(conn, FAILED, f"attachment {att}: no port {att.port!r} on {att.switch}")
    src, dst = conn.client_attachment.switch, conn.endpoint_attachment.switch
    path = None
    if before is not None and before.path is not None and before.connection.endpoint_attachment == (
        conn.endpoint_attachment
    ) and before.connection.client_attachment == conn.client_attachment and view.intact(before.path):
        path = before.path
    if path is None:
        try:
            path = view.shortest(src, dst)
        except NoPath as exc:
            return PlannedConnection(conn, FAILED, str(exc))
    try:
        held = tuple((link.name, tags.allocate(conn.id, link.name)) for link in path.links)
    except TagSpaceExhausted as exc:
        tags.release(conn.id)
        return PlannedConnection(conn, FAILED, str(exc), path)
    return PlannedConnection(conn, PLANNED, "", path, held)
