"""What the planner produces and keeps: a plan of every connection (path, tags, flows, meters,
groups), the fabric state it was planned for, and the basis the next incremental plan starts from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from ryu_nsm.core.flows import WireEnds
from ryu_nsm.core.flowspec import FlowSpec, GroupSpec, MeterSpec
from ryu_nsm.core.model import ClientRequest, Problem, Resources
from ryu_nsm.core.pathing import FabricView, Path, TagAllocator
from ryu_nsm.core.policy import WirePolicy
from ryu_nsm.core.resolver import FAILED, Connection, Resolution
from ryu_nsm.qos.ledger import Ledger
from ryu_nsm.qos.routing import meets_latency
from ryu_nsm.qos.service_level import ServiceLevel

PLANNED = "planned"
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
    # it. New placements are chosen by it; placements that exist stay (the closed loop judges them).
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
    # Its MultiNetworkPolicy (None: unrestricted) and the conntrack zone its policed ends use.
    policy: WirePolicy | None = None
    zone: int | None = None

    def objects(self, kind: str) -> tuple[tuple[str, object], ...]:
        """Its meters or groups."""
        return self.meters if kind == "meter" else self.groups

    @property
    def id(self) -> str:
        return self.connection.id


@dataclass(frozen=True)
class Basis:
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
    zones: TagAllocator | None = None  # conntrack zones of policed wires
    resolution: Resolution | None = None  # the resolve behind ``resolved``, for the next one
    unplanned: frozenset[str] | None = None  # connections not planned (failed, waiting)
    read_back: object = None  # router.PathsReadBack of ``hints``, kept while they are the same


@dataclass(frozen=True)
class HeldResolve:
    """A held plan's resolve: the first plan after the hold takes it over while the declared state
    is the very same and no endpoint expired since (a restart at 10,000 connections resolved twice)."""

    resources: Resources
    requests: Mapping[str, ClientRequest]
    resolution: Resolution

    def holds(self, resources: Resources, now: float | None) -> bool:
        return resources is self.resources and self.resolution.expired_alike(resources, now)


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
    basis: Basis | None = field(default=None, compare=False, repr=False)
    held: HeldResolve | None = field(default=None, compare=False, repr=False)  # a held plan's resolve

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
