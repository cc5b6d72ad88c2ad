"""The fabric: switches, links between switch ports, hosts attached to switch ports.

Plain frozen data plus a networkx view. Loading from files lives in ``topology.py``.
Port numbers are OpenFlow port numbers; port names are the OVS port (Linux interface) names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import networkx as nx

from ryu_nsm.core.model import Attachment
from ryu_nsm.core.sampling import FlowSampling


@dataclass(frozen=True)
class SwitchCertificate:
    """Who a switch must be on OpenFlow over TLS: its certificate's SPIFFE ID and/or subject CN."""

    spiffe_id: str | None = None
    cn: str | None = None


@dataclass(frozen=True)
class Switch:
    name: str
    dpid: int
    certificate: SwitchCertificate | None = None  # None: any certificate from the trust bundle


@dataclass(frozen=True)
class Link:
    """A bidirectional switch-to-switch link. ``capacity`` in bit/s, ``latency`` one-way in seconds.

    ``queue``: the egress queue, at both ends, that carries wires with a guaranteed bandwidth
    (OpenFlow set_queue). The switch owns the queue (e.g. OVS QoS linux-htb with a min-rate); None
    when the link has none and guarantees rest on admission and meters alone.
    """

    a: str
    a_port: int
    b: str
    b_port: int
    capacity: float = 1e9
    latency: float = 0.0
    cost: float = 1.0
    queue: int | None = None

    # Cached: planning and path searches ask for it far more often than there are links.
    @cached_property
    def name(self) -> str:
        return f"{self.a}:{self.a_port}-{self.b}:{self.b_port}"

    def port_on(self, switch: str) -> int:
        """The port of this link on ``switch``."""
        if switch == self.a:
            return self.a_port
        if switch == self.b:
            return self.b_port
        raise KeyError(f"link {self.name} does not touch {switch}")

    def peer_of(self, switch: str) -> tuple[str, int]:
        """(switch, port) at the other end of this link as seen from ``switch``."""
        if switch == self.a:
            return self.b, self.b_port
        if switch == self.b:
            return self.a, self.a_port
        raise KeyError(f"link {self.name} does not touch {switch}")


@dataclass(frozen=True)
class HostInterface:
    """A host's interface ``name`` (inside the host) attached at ``switch`` port ``port``/``port_name``."""

    host: str
    name: str
    switch: str
    port: int
    port_name: str
    mac: str | None = None
    ip: str | None = None  # CIDR, e.g. 10.0.0.1/24

    @property
    def attachment(self) -> Attachment:
        return Attachment(self.switch, self.port_name)


@dataclass(frozen=True)
class Host:
    name: str
    interfaces: tuple[HostInterface, ...] = ()
    role: str = "host"  # "host" or "function" (bridges its interfaces) — used by the Mininet builder


@dataclass(frozen=True)
class Fabric:
    name: str
    switches: tuple[Switch, ...] = ()
    links: tuple[Link, ...] = ()
    hosts: tuple[Host, ...] = ()
    tag_range: tuple[int, int] = (2, 4094)  # VLAN ids usable as per-link tags, inclusive
    extra: dict = field(default_factory=dict, compare=False, hash=False)
    # Names of the links whose latency no source declared: they plan at Link.latency's 0 s, so any
    # path meets a latency bound; sources.topology.fabric_warnings says so.
    undeclared_latency: tuple[str, ...] = field(default=(), compare=False)
    # Off (None) unless the controller runs an IPFIX collector (docs/observability.md).
    flow_sampling: FlowSampling | None = None

    @cached_property
    def switch_by_name(self) -> dict[str, Switch]:
        return {s.name: s for s in self.switches}

    @cached_property
    def switch_by_dpid(self) -> dict[int, Switch]:
        return {s.dpid: s for s in self.switches}

    @cached_property
    def link_by_name(self) -> dict[str, Link]:
        return {link.name: link for link in self.links}

    @cached_property
    def link_ports(self) -> frozenset[tuple[str, int]]:
        """(switch, port) pairs that face another switch."""
        return frozenset(p for link in self.links for p in ((link.a, link.a_port), (link.b, link.b_port)))

    @cached_property
    def queue_by_port(self) -> dict[tuple[str, int], int]:
        """(switch, port) → the egress queue for guaranteed wires, at both ends of each link with one."""
        return {end: link.queue for link in self.links if link.queue is not None
                for end in ((link.a, link.a_port), (link.b, link.b_port))}

    @cached_property
    def link_ports_by_switch(self) -> dict[str, tuple[int, ...]]:
        """Switch name → its ports that face other switches, sorted."""
        by_switch: dict[str, list[int]] = {s.name: [] for s in self.switches}
        for switch, port in self.link_ports:
            by_switch.setdefault(switch, []).append(port)
        return {switch: tuple(sorted(ports)) for switch, ports in by_switch.items()}

    @cached_property
    def port_names(self) -> dict[tuple[str, str], int]:
        """(switch, port name) → port number, for every declared port (links and hosts)."""
        names = {(link.a, f"{link.a}-eth{link.a_port}"): link.a_port for link in self.links}
        names.update({(link.b, f"{link.b}-eth{link.b_port}"): link.b_port for link in self.links})
        for host in self.hosts:
            for intf in host.interfaces:
                names[(intf.switch, intf.port_name)] = intf.port
        return names

    def attachment_port(self, attachment: Attachment) -> int | None:
        """The declared port number of an attachment, or None when the fabric does not declare it."""
        return self.port_names.get((attachment.switch, attachment.port))

    def graph(self) -> nx.MultiGraph:
        """Switches as nodes, links as edges keyed by link name, with capacity/latency/cost attributes."""
        g = nx.MultiGraph(name=self.name)
        for s in self.switches:
            g.add_node(s.name, dpid=s.dpid)
        for link in self.links:
            g.add_edge(
                link.a, link.b, key=link.name, link=link,
                capacity=link.capacity, latency=link.latency, cost=link.cost,
            )
        return g
