"""The flow factory: wires and their paths → per-switch FlowSpecs for both directions.

A wire is an L2 pseudowire between two attachments. Across the fabric it is carried with a VLAN
tag per link (label swapping): the ingress switch classifies by in_port and pushes the first link's
tag, each transit switch matches (in_port, tag) and swaps to the next link's tag, and the egress
switch pops the tag and delivers. A wire whose ends share a switch needs no tag.
Every flow of a wire carries ``wire_cookie(connection id)``; pipeline flows carry PIPELINE_COOKIE.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from .fabric import Fabric
from .flowspec import (
    ETH_TYPE_VLAN,
    VID_PRESENT,
    FlowSpec,
    GroupSpec,
    Priority,
    Table,
    wire_cookie,
)
from .measure import PROBE_ETH_TYPE
from .pathing import Path

OFPP_CONTROLLER = 0xFFFFFFFD

ETH_TYPE_IPV4 = 0x0800
ETH_TYPE_IPV6 = 0x86DD


@dataclass(frozen=True)
class WireQos:
    """What a wire's service level asks of its ingress flows: a meter per direction, a DSCP mark."""

    meter_ab: int | None = None  # on frames entering at the a-end
    meter_ba: int | None = None
    dscp: int | None = None


@dataclass(frozen=True)
class WireEnds:
    """A wire to compile: its id, and (switch, port number) of each end."""

    id: str
    a_switch: str
    a_port: int
    b_switch: str
    b_port: int


def pipeline_flows(fabric: Fabric, switch: str) -> list[FlowSpec]:
    """The base flows of one switch: fabric ports go on to FORWARD, everything else is dropped.

    The controller's link probes (untagged, PROBE_ETH_TYPE) arriving from a fabric port go to the
    controller; untagged, so that a client's frame of that type riding a wire's tag never does.
    """
    flows = [
        FlowSpec.make(Table.CLASSIFY, Priority.MISS, {}),
        FlowSpec.make(Table.FORWARD, Priority.MISS, {}),
    ]
    for port in fabric.link_ports_by_switch.get(switch, ()):
        flows.append(
            FlowSpec.make(Table.CLASSIFY, Priority.FABRIC_PORT, {"in_port": port}, goto=Table.FORWARD)
        )
        flows.append(FlowSpec.make(Table.CLASSIFY, Priority.PROBE,
                                   {"in_port": port, "eth_type": PROBE_ETH_TYPE, "vlan_vid": 0},
                                   [("output", OFPP_CONTROLLER)]))
    return flows


def wire_flows(
    wire: WireEnds, path: Path, tags: Mapping[str, int], qos: WireQos | None = None
) -> list[tuple[str, FlowSpec]]:
    """(switch, flow) pairs carrying ``wire`` along ``path`` in both directions.

    ``path`` runs from the a-end's switch to the b-end's; ``tags`` maps link name → tag. With
    ``qos``, each direction's ingress flows go through its meter and IP frames get the DSCP mark.
    """
    cookie = wire_cookie(wire.id)
    qos = qos or WireQos()
    flows = _one_way(path.switches, path.links, wire.a_port, wire.b_port, tags, cookie,
                     qos.meter_ab, qos.dscp)
    flows += _one_way(path.switches[::-1], path.links[::-1], wire.b_port, wire.a_port, tags, cookie,
                      qos.meter_ba, qos.dscp)
    return flows


def protected_wire_flows(
    wire: WireEnds, path: Path, tags: Mapping[str, int], backup: Path, backup_tags: Mapping[str, int],
    qos: WireQos | None, groups: tuple[int, int],
) -> tuple[list[tuple[str, FlowSpec]], list[tuple[str, GroupSpec]]]:
    """A wire on ``path`` with a fast-failover to ``backup`` at both ends: (flows, groups).

    Each end's ingress flows hand the frame to a fast-failover group (``groups``: at the a-end,
    at the b-end) whose first bucket takes the primary's first link and, once that port is down,
    the second takes the backup's: the data plane heals a cut there before the controller acts.
    Both paths carry the wire (their own tags); the far end delivers from either.
    """
    flows = wire_flows(wire, path, tags, qos)
    spare = wire_flows(wire, backup, backup_tags)
    ends = {(wire.a_switch, wire.a_port): groups[0], (wire.b_switch, wire.b_port): groups[1]}

    def ingress(switch: str, flow: FlowSpec) -> tuple[str, int] | None:
        end = (switch, flow.match_dict().get("in_port"))
        return end if flow.table == Table.CLASSIFY and end in ends else None

    buckets: dict[tuple[str, int], list] = {end: [] for end in ends}
    out = []
    for which in (flows, spare):
        for switch, flow in which:
            end = ingress(switch, flow)
            if end is None:
                out.append((switch, flow))
                continue
            if flow.priority == Priority.WIRE:  # its actions (push the tag, out) become a bucket
                buckets[end].append((flow.actions[-1][1], flow.actions))
            if which is flows:  # the primary's ingress flows (and their DSCP variants) go to the group
                marks = tuple(a for a in flow.actions if a[:2] == ("set_field", "ip_dscp"))
                out.append((switch, replace(flow, actions=(*marks, ("group", ends[end])))))
    specs = [(end[0], GroupSpec(ends[end], tuple(buckets[end]))) for end in ends]
    return out, specs


def _ingress(switch: str, in_port: int, actions: list, cookie: int, meter: int | None,
             dscp: int | None) -> list[tuple[str, FlowSpec]]:
    """Where a direction enters the fabric: metered, and with IP frames marked when asked."""
    out = [(switch, FlowSpec.make(Table.CLASSIFY, Priority.WIRE, {"in_port": in_port}, actions,
                                  cookie=cookie, meter=meter))]
    if dscp is not None:
        # eth_type is the type after any VLAN headers (as Open vSwitch matches it), so tagged client
        # frames are marked too.
        for eth_type in (ETH_TYPE_IPV4, ETH_TYPE_IPV6):
            out.append((switch, FlowSpec.make(
                Table.CLASSIFY, Priority.WIRE_IP, {"in_port": in_port, "eth_type": eth_type},
                [("set_field", "ip_dscp", dscp), *actions], cookie=cookie, meter=meter)))
    return out


def _one_way(switches, links, in_port: int, out_port: int, tags, cookie: int, meter: int | None = None,
             dscp: int | None = None) -> list[tuple[str, FlowSpec]]:
    first = switches[0]
    if len(switches) == 1:
        return _ingress(first, in_port, [("output", out_port)], cookie, meter, dscp)
    tag = tags[links[0].name]
    push = [("push_vlan", ETH_TYPE_VLAN), ("set_field", "vlan_vid", VID_PRESENT | tag),
            ("output", links[0].port_on(first))]
    out = _ingress(first, in_port, push, cookie, meter, dscp)
    for i in range(1, len(switches)):
        here, arrived = switches[i], links[i - 1]
        match = {"in_port": arrived.port_on(here), "vlan_vid": VID_PRESENT | tags[arrived.name]}
        if i == len(switches) - 1:
            actions = [("pop_vlan",), ("output", out_port)]
        else:
            leave = links[i]
            actions = []
            if tags[leave.name] != tags[arrived.name]:
                actions.append(("set_field", "vlan_vid", VID_PRESENT | tags[leave.name]))
            actions.append(("output", leave.port_on(here)))
        out.append((here, FlowSpec.make(Table.FORWARD, Priority.WIRE, match, actions, cookie=cookie)))
    return out
