"""The flow factory: wires and their paths → per-switch FlowSpecs for both directions.

A wire is an L2 pseudowire between two attachments. Across the fabric it is carried with a VLAN
tag per link (label swapping): the ingress switch classifies by in_port and pushes the first link's
tag, each transit switch matches (in_port, tag) and swaps to the next link's tag, and the egress
switch pops the tag and delivers. A wire whose ends share a switch needs no tag.
Every flow of a wire carries ``wire_cookie(connection id)``; pipeline flows carry PIPELINE_COOKIE.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .fabric import Fabric
from .flowspec import (
    ETH_TYPE_VLAN,
    VID_PRESENT,
    FlowSpec,
    Priority,
    Table,
    wire_cookie,
)
from .pathing import Path


@dataclass(frozen=True)
class WireEnds:
    """A wire to compile: its id, and (switch, port number) of each end."""

    id: str
    a_switch: str
    a_port: int
    b_switch: str
    b_port: int


def pipeline_flows(fabric: Fabric, switch: str) -> list[FlowSpec]:
    """The base flows of one switch: fabric ports go on to FORWARD, everything else is dropped."""
    flows = [
        FlowSpec.make(Table.CLASSIFY, Priority.MISS, {}),
        FlowSpec.make(Table.FORWARD, Priority.MISS, {}),
    ]
    for port in fabric.link_ports_by_switch.get(switch, ()):
        flows.append(
            FlowSpec.make(Table.CLASSIFY, Priority.FABRIC_PORT, {"in_port": port}, goto=Table.FORWARD)
        )
    return flows


def wire_flows(wire: WireEnds, path: Path, tags: Mapping[str, int]) -> list[tuple[str, FlowSpec]]:
    """(switch, flow) pairs carrying ``wire`` along ``path`` in both directions.

    ``path`` runs from the a-end's switch to the b-end's; ``tags`` maps link name → tag.
    """
    cookie = wire_cookie(wire.id)
    flows = _one_way(path.switches, path.links, wire.a_port, wire.b_port, tags, cookie)
    flows += _one_way(
        path.switches[::-1], path.links[::-1], wire.b_port, wire.a_port, tags, cookie
    )
    return flows


def _one_way(switches, links, in_port: int, out_port: int, tags, cookie: int) -> list[tuple[str, FlowSpec]]:
    first = switches[0]
    if len(switches) == 1:
        return [(first, FlowSpec.make(
            Table.CLASSIFY, Priority.WIRE, {"in_port": in_port}, [("output", out_port)], cookie=cookie,
        ))]
    out = []
    tag = tags[links[0].name]
    out.append((first, FlowSpec.make(
        Table.CLASSIFY, Priority.WIRE, {"in_port": in_port},
        [("push_vlan", ETH_TYPE_VLAN), ("set_field", "vlan_vid", VID_PRESENT | tag),
         ("output", links[0].port_on(first))],
        cookie=cookie,
    )))
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


def compile_flows(
    fabric: Fabric,
    switches: Iterable[str],
    wires: Iterable[tuple[WireEnds, Path, Mapping[str, int]]],
) -> dict[str, frozenset[FlowSpec]]:
    """Desired flows per switch: the pipeline on each of ``switches`` plus every wire's flows."""
    desired: dict[str, set[FlowSpec]] = {sw: set(pipeline_flows(fabric, sw)) for sw in switches}
    for wire, path, tags in wires:
        for sw, flow in wire_flows(wire, path, tags):
            desired.setdefault(sw, set()).add(flow)
    return {sw: frozenset(flows) for sw, flows in desired.items()}
