"""One pure step from declared resources and fabric state to desired flows: resolve → route → compile.

Both ``ryu-nsm plan`` (dry run) and the controller call ``make_plan``; passing the previous plan
keeps endpoints, paths and tags of connections that are still valid, so a change touches only the
connections it concerns. It also costs only what it touches: a connection whose request, endpoint
side, path and ports are unchanged is carried over as it was, flows included, and ``touched`` says
which connections were planned anew, so the controller diffs only their flows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from .fabric import Fabric
from .flows import WireEnds, pipeline_flows, wire_flows
from .flowspec import FlowSpec, wire_cookie
from .model import Attachment, ClientRequest, Problem, Resources
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
    # (switch, flow) pairs that carry the connection, both directions; empty unless planned.
    flows: tuple[tuple[str, FlowSpec], ...] = field(default=(), compare=False)

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
) -> Plan:
    """Resolve every request, route every connection and compile the desired flows of every switch.

    ``tag_hints`` ((connection id, link name) → tag) are tags found on the switches: they win over
    the previous plan's, so a fresh controller keeps whatever tags the fabric already carries.
    Pass the same mapping object again while it has not changed: only a new one is checked against
    the tags connections hold.
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
                       settled)

    same_fabric = basis is not None and (basis.state.down_links, basis.state.down_switches) == (
        state.down_links, state.down_switches)
    view = basis.view if same_fabric else FabricView(fabric, state.down_links, state.down_switches)
    if basis is not None:
        tags = basis.tags.copy()
    else:  # a plan without its basis (read back, or a test) is followed by planning everything anew
        tags = TagAllocator(fabric.tag_range)
        tags.remember({(cid, link): tag for cid, pc in before.items() for link, tag in pc.tags})
    tags.prefer(hints)
    moved_ports: set[tuple[str, str]] = set()
    if basis is not None and basis.state.ports is not state.ports:
        moved_ports = {key for key, _ in basis.state.ports.items() ^ state.ports.items()}
    check_hints = basis is None or basis.hints is not hints

    def still_good(cid: str, conn: Connection) -> PlannedConnection | None:
        old = before.get(cid)
        if basis is None or old is None or old.state != PLANNED or not (old.connection is conn or old.connection == conn):
            return None
        if not same_fabric and not view.intact(old.path):
            return None
        if moved_ports and ((conn.client_attachment.switch, conn.client_attachment.port) in moved_ports or (
                conn.endpoint_attachment.switch, conn.endpoint_attachment.port) in moved_ports):
            return None
        if check_hints and any(hints.get((cid, link), tag) != tag for link, tag in old.tags):
            return None
        return old

    planned: dict[str, PlannedConnection] = {}
    anew = []
    quick = same_fabric and not moved_ports and not check_hints
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
    for cid in removed:
        tags.release(cid)
    # Connections that existed before go first, so they keep their tags.
    anew.sort(key=lambda c: (c not in before, c))
    for cid in anew:
        tags.release(cid, remember=True)
    for cid in anew:
        conn = resolved[cid]
        planned[cid] = _route(fabric, state, view, conn, before.get(cid), tags) if conn.ok else (
            PlannedConnection(conn, FAILED, conn.reason))
    if same_fabric:
        pipeline = previous.pipeline
    else:
        pipeline = {s.name: tuple(pipeline_flows(fabric, s.name))
                    for s in fabric.switches if s.name not in state.down_switches}
    # Only connections planned anew can be waiting: a kept one is planned.
    keep = frozenset(wire_cookie(cid) for cid in anew if planned[cid].state == WAITING)
    return Plan(
        connections={cid: planned[cid] for cid in sorted(planned)},
        pipeline=pipeline,
        problems=resources.problems,
        keep_cookies=keep,
        touched=frozenset(anew) | removed,
        basis=_Basis(resources, requests, resolved, state, view, tags, hints),
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
    flows = tuple(wire_flows(_ends(fabric, state, conn), path, dict(held)))
    return PlannedConnection(conn, PLANNED, "", path, held, flows)
