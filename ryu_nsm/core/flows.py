"""The flow factory: wires and their paths → per-switch FlowSpecs for both directions.

A wire is an L2 pseudowire between two attachments. Across the fabric it is carried with a VLAN
tag per link (label swapping): the ingress switch classifies by in_port and pushes the first link's
tag, each transit switch matches (in_port, tag) and swaps to the next link's tag, and the egress
switch pops the tag and delivers. A wire whose ends share a switch needs no tag. A protected wire
also rides a link-disjoint backup on its own tags, and fast-failover groups move it there in the
data plane when a primary link is cut (see ``protected_wire_flows``).
Every flow of a wire carries ``wire_cookie(connection id)``; pipeline flows carry PIPELINE_COOKIE.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

from ryu_nsm.core.fabric import Fabric
from ryu_nsm.core.flowspec import (
    CT_EST,
    CT_INV,
    CT_NEW,
    CT_REL,
    CT_TRK,
    ETH_TYPE_VLAN,
    VID_PRESENT,
    FlowSpec,
    GroupSpec,
    Priority,
    Table,
    wire_cookie,
)
from ryu_nsm.core.pathing import Path
from ryu_nsm.core.policy import ANY_PORT, Allowance, Direction, WirePolicy
from ryu_nsm.qos.measure import PROBE_ETH_TYPE

OFPP_CONTROLLER = 0xFFFFFFFD
OFPP_IN_PORT = 0xFFFFFFF8  # OpenFlow sends a frame back where it came from only through this port

# Crankback flows (see protected_wire_flows) sit at a priority of their own: their matches never
# overlap the wire's, but whoever reads tags off the switches can tell them from the primary's.
CRANKBACK = Priority.WIRE - 10
_PUSH = ("push_vlan", ETH_TYPE_VLAN)

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
    return list(_pipeline_of_ports(fabric.link_ports_by_switch.get(switch, ())))


@lru_cache(maxsize=1024)
def _pipeline_of_ports(ports: tuple[int, ...]) -> tuple[FlowSpec, ...]:
    """The base flows of a switch with these fabric ports: one shape, built once, shared by every
    switch of that shape (a fat-tree has a few shapes for thousands of switches)."""
    flows = [
        FlowSpec.make(Table.CLASSIFY, Priority.MISS, {}),
        FlowSpec.make(Table.FORWARD, Priority.MISS, {}),
    ]
    for port in ports:
        flows.append(
            FlowSpec.make(Table.CLASSIFY, Priority.FABRIC_PORT, {"in_port": port}, goto=Table.FORWARD)
        )
        flows.append(FlowSpec.make(Table.CLASSIFY, Priority.PROBE,
                                   {"in_port": port, "eth_type": PROBE_ETH_TYPE, "vlan_vid": 0},
                                   [("output", OFPP_CONTROLLER)]))
    return tuple(flows)


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
    qos: WireQos | None, groups: tuple[Sequence[int], Sequence[int]], crank_tags: Mapping[str, int],
) -> tuple[list[tuple[str, FlowSpec]], list[tuple[str, GroupSpec]]]:
    """A wire on ``path`` that heals a cut of any primary link in the data plane: (flows, groups).

    Each direction has a fast-failover group at every switch it leaves along the primary
    (``groups``: the ids for a→b at ``path.switches[:-1]``, then for b→a at ``path.switches[:0:-1]``).
    The first bucket takes the next primary link. While that link is down, the second bucket at the
    end where the direction enters takes the backup instead; at a transit switch it cranks the
    frame back: out the port it came in on, tagged with ``crank_tags`` of that link (one per primary
    link, both directions: each direction's crankback frames arrive at the other end of the link).
    Upstream switches carry crankback frames to the entry end, which puts them on the backup. The
    backup carries the wire in both directions on its own tags; the far end delivers from either.
    """
    cookie = wire_cookie(wire.id)
    qos = qos or WireQos()
    # The backup's own ingress flows give way to the groups' second buckets.
    flows = [(sw, f) for sw, f in wire_flows(wire, backup, backup_tags) if f.table != Table.CLASSIFY]
    specs: list[tuple[str, GroupSpec]] = []
    ways = ((path.switches, path.links, backup.links[0], wire.a_port, wire.b_port, qos.meter_ab, groups[0]),
            (path.switches[::-1], path.links[::-1], backup.links[-1], wire.b_port, wire.a_port, qos.meter_ba,
             groups[1]))
    for switches, links, detour, in_port, out_port, meter, ids in ways:
        head = switches[0]
        to_backup = (detour.port_on(head), backup_tags[detour.name])
        more, groups_of_way = _protected_one_way(switches, links, in_port, out_port, tags, to_backup,
                                                 crank_tags, ids, cookie, meter, qos.dscp)
        flows += more
        specs += groups_of_way
    return flows, specs


def _protected_one_way(switches, links, in_port: int, out_port: int, tags, to_backup: tuple[int, int],
                       crank_tags, ids: Sequence[int], cookie: int, meter: int | None, dscp: int | None
                       ) -> tuple[list[tuple[str, FlowSpec]], list[tuple[str, GroupSpec]]]:
    """One direction of a protected wire: its group-forwarding flows, crankback flows and groups."""
    flows: list[tuple[str, FlowSpec]] = []
    specs = []
    backup_port, backup_tag = to_backup
    for i, group_id in enumerate(ids):  # switches[i] leaves on links[i]
        here, leave = switches[i], links[i]
        tag = tags[leave.name]
        if i == 0:
            flows += _ingress(here, in_port, [("group", group_id)], cookie, meter, dscp)
            primary = (_PUSH, _vid(tag), ("output", leave.port_on(here)))
            spare = (backup_port, (_PUSH, _vid(backup_tag), ("output", backup_port)))
        else:
            arrived = links[i - 1]
            match = {"in_port": arrived.port_on(here), "vlan_vid": VID_PRESENT | tags[arrived.name]}
            flows.append((here, FlowSpec.make(Table.FORWARD, Priority.WIRE, match, [("group", group_id)],
                                              cookie=cookie)))
            primary = (*_retag(tags[arrived.name], tag), ("output", leave.port_on(here)))
            spare = (arrived.port_on(here), (_vid(crank_tags[arrived.name]), ("output", OFPP_IN_PORT)))
            flows.append(_crankback(switches, links, i - 1, crank_tags, to_backup, cookie))
        specs.append((here, GroupSpec(group_id, ((leave.port_on(here), primary), spare))))
    last, arrived = switches[-1], links[-1]
    match = {"in_port": arrived.port_on(last), "vlan_vid": VID_PRESENT | tags[arrived.name]}
    flows.append((last, FlowSpec.make(Table.FORWARD, Priority.WIRE, match,
                                      [("pop_vlan",), ("output", out_port)], cookie=cookie)))
    return flows, specs


def queued(flows: Sequence[tuple[str, FlowSpec]], groups: Sequence[tuple[str, GroupSpec]],
           queues: Mapping[tuple[str, int], int]
           ) -> tuple[list[tuple[str, FlowSpec]], list[tuple[str, GroupSpec]]]:
    """A guaranteed wire's flows and groups with every output onto a queued link port put in its queue.

    Frames sent back where they came from (OFPP_IN_PORT) leave by the flow's in_port, or a bucket's
    watched port; ports to attachments have no queue and stay as they are.
    """
    if not queues:
        return list(flows), list(groups)
    out_flows = []
    for switch, flow in flows:
        actions = _queue_outputs(switch, flow.actions, dict(flow.match).get("in_port"), queues)
        out_flows.append((switch, replace(flow, actions=actions)))
    out_groups = [(switch, GroupSpec(group.group_id, tuple(
        (watch, _queue_outputs(switch, tuple(actions), watch, queues)) for watch, actions in group.buckets)))
        for switch, group in groups]
    return out_flows, out_groups


def _queue_outputs(switch: str, actions: tuple[tuple, ...], in_port: int | None,
                   queues: Mapping[tuple[str, int], int]) -> tuple[tuple, ...]:
    out: list[tuple] = []
    for action in actions:
        if action[0] == "output":
            port = in_port if action[1] == OFPP_IN_PORT else action[1]
            queue = queues.get((switch, port))
            if queue is not None:
                out.append(("set_queue", queue))
        out.append(action)
    return tuple(out)


def _crankback(switches, links, i: int, crank_tags, to_backup: tuple[int, int], cookie: int
               ) -> tuple[str, FlowSpec]:
    """At ``switches[i]``: crankback frames coming back on ``links[i]`` go on back, or onto the backup."""
    here, came = switches[i], links[i]
    tag = crank_tags[came.name]
    if i == 0:
        backup_port, backup_tag = to_backup
        actions = [*_retag(tag, backup_tag), ("output", backup_port)]
    else:
        back = links[i - 1]
        actions = [*_retag(tag, crank_tags[back.name]), ("output", back.port_on(here))]
    match = {"in_port": came.port_on(here), "vlan_vid": VID_PRESENT | tag}
    return here, FlowSpec.make(Table.FORWARD, CRANKBACK, match, actions, cookie=cookie)


def _vid(tag: int) -> tuple:
    return ("set_field", "vlan_vid", VID_PRESENT | tag)


def _retag(old: int, new: int) -> tuple[tuple, ...]:
    """The actions that change a frame's tag from ``old`` to ``new`` (none when they are equal)."""
    return () if old == new else (_vid(new),)


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


# -- policy: MultiNetworkPolicy on a wire's ends (docs/policy.md) ---------------------------------

ETH_TYPE_ARP = 0x0806
_ND_TYPES = (133, 134, 135, 136)  # IPv6 router/neighbour solicitation and advertisement
_PORT_FIELD = {6: "tcp_dst", 17: "udp_dst", 132: "sctp_dst"}
_ETH_OF = {4: ETH_TYPE_IPV4, 6: ETH_TYPE_IPV6}
_NEW = (CT_TRK | CT_NEW, CT_TRK | CT_NEW | CT_INV)
_STATES = ((CT_TRK | CT_EST, CT_TRK | CT_EST | CT_INV), (CT_TRK | CT_REL, CT_TRK | CT_REL | CT_EST | CT_INV))


def stateful_wire_flows(wire: WireEnds, flows: Sequence[tuple[str, FlowSpec]], policy: WirePolicy | None,
                        zone: int) -> list[tuple[str, FlowSpec]]:
    """A wire's flows with conntrack in ``zone`` at both ends, and its policy (if any) enforced.

    Every IP frame a wire end sends or receives is committed at that end's switch, policy or not:
    userspace conntrack only learns a TCP connection from its first packet, so a connection that
    was never committed would be invalid once a policy arrives (OVN does the same for every port
    an ACL may ever apply to). An end whose connections are restricted instead goes through its
    gate: established and related frames pass, a new connection passes when its egress and the
    far end's ingress rules allow it, and is committed; ARP and IPv6 neighbour discovery pass, the
    rest is dropped.
    """
    cookie = wire_cookie(wire.id)
    out = list(flows)
    ends = ((wire.a_switch, wire.a_port, policy.a_to_b if policy is not None else None),
            (wire.b_switch, wire.b_port, policy.b_to_a if policy is not None else None))
    for switch, port, direction in ends:
        if direction is not None:
            out = [(sw, replace(f, table=int(Table.WIRE_ENTRY)) if _enters(sw, f, switch, port) else f)
                   for sw, f in out]
            out += [(switch, f) for f in _gate(port, direction, zone, cookie)]
    return _committed(out, zone, [(switch, port, direction is None) for switch, port, direction in ends])


def _enters(sw: str, flow: FlowSpec, switch: str, port: int) -> bool:
    """True for a flow by which frames from ``port`` of ``switch`` enter their wire."""
    return sw == switch and flow.table == Table.CLASSIFY and ("in_port", port) in flow.match


def _committed(flows: list[tuple[str, FlowSpec]], zone: int, ends: Sequence[tuple[str, int, bool]]
               ) -> list[tuple[str, FlowSpec]]:
    """The flows with IP frames committed to conntrack at the wire's ends: a flow of an end's
    switch commits before its output to the end's port, or (``entering``: the end has no gate)
    first thing when it takes frames in from that port; the first end that applies, in order. A
    flow that matches no eth_type keeps its other frames, and gets one flow per IP family beside it
    (unless one is there already, as a DSCP mark's)."""
    commit = ("ct_commit", zone)
    keys = None  # every flow's key, once a flow needs IP ones beside it
    out = []
    for sw, flow in flows:
        i = None
        if commit not in flow.actions:
            for switch, port, entering in ends:
                if sw != switch:
                    continue
                leave = ("output", port)
                if leave in flow.actions:
                    i = flow.actions.index(leave)
                    break
                if entering and _enters(sw, flow, switch, port):
                    i = 0
                    break
        if i is None:
            out.append((sw, flow))
            continue
        actions = (*flow.actions[:i], commit, *flow.actions[i:])
        if any(name == "eth_type" for name, _ in flow.match):
            out.append((sw, FlowSpec.on_sorted(flow.table, flow.priority, flow.match, actions, flow.goto,
                                               flow.cookie, flow.meter)))
            continue
        out.append((sw, flow))
        if keys is None:
            keys = {(s, f.key) for s, f in flows}
        for eth in (ETH_TYPE_IPV4, ETH_TYPE_IPV6):
            ip = FlowSpec.on_sorted(flow.table, _WIRE_IP, tuple(sorted((*flow.match, ("eth_type", eth)))),
                                    actions, flow.goto, flow.cookie, flow.meter)
            if (sw, ip.key) not in keys:
                out.append((sw, ip))
    return out


_WIRE_IP = int(Priority.WIRE_IP)


def _gate(port: int, direction: Direction, zone: int, cookie: int) -> list[FlowSpec]:
    """CLASSIFY, POLICY_EGRESS and POLICY_INGRESS flows of one policed end."""
    base = {"in_port": port}

    def flow(table, priority, match, actions=(), goto=None):
        return FlowSpec.make(table, priority, {**base, **match}, actions, goto=goto, cookie=cookie)

    out = [flow(Table.CLASSIFY, Priority.WIRE, {}),
           flow(Table.CLASSIFY, Priority.POLICY_PASS, {"eth_type": ETH_TYPE_ARP}, goto=Table.WIRE_ENTRY)]
    out += [flow(Table.CLASSIFY, Priority.POLICY_PASS, {"eth_type": ETH_TYPE_IPV6, "ip_proto": 58,
                                                        "icmpv6_type": t}, goto=Table.WIRE_ENTRY)
            for t in _ND_TYPES]
    track = [("ct", zone, int(Table.POLICY_EGRESS))]
    out += [flow(Table.CLASSIFY, Priority.WIRE_IP, {"eth_type": eth}, track)
            for eth in (ETH_TYPE_IPV4, ETH_TYPE_IPV6)]
    out += [flow(Table.POLICY_EGRESS, Priority.POLICY_STATE, {"ct_state": state}, goto=Table.WIRE_ENTRY)
            for state in _STATES]
    out += [flow(Table.POLICY_EGRESS, Priority.WIRE, {}), flow(Table.POLICY_INGRESS, Priority.WIRE, {})]
    egress = {"ct_state": _NEW}
    if direction.egress is None:
        out.append(flow(Table.POLICY_EGRESS, Priority.POLICY_RULE, egress, goto=Table.POLICY_INGRESS))
    for i, allowance in enumerate(direction.egress or ()):
        out += _rule_flows(Table.POLICY_EGRESS, Priority.POLICY_RULE + i, {**base, **egress}, allowance,
                           "dst", (), Table.POLICY_INGRESS, cookie, zone << 16 | i)
    commit = (("ct_commit", zone),)
    if direction.ingress is None:
        out += [flow(Table.POLICY_INGRESS, Priority.POLICY_RULE, {"eth_type": eth}, commit, Table.WIRE_ENTRY)
                for eth in (ETH_TYPE_IPV4, ETH_TYPE_IPV6)]
    for i, allowance in enumerate(direction.ingress or ()):
        out += _rule_flows(Table.POLICY_INGRESS, Priority.POLICY_RULE + i, base, allowance, "src", commit,
                           Table.WIRE_ENTRY, cookie, zone << 16 | 1 << 15 | i)
    return out


def _rule_flows(table: Table, priority: int, base: dict, allowance: Allowance, side: str, actions: tuple,
                goto: Table, cookie: int, conj: int) -> list[FlowSpec]:
    """The flows of one rule: addresses × ports, as a conjunction when both are several."""
    out = []
    families = (4, 6) if allowance.networks is None else sorted({n.version for n in allowance.networks})
    ports = [None] if allowance.ports is None else [
        {"ip_proto": proto} | ({} if (low, high) == ANY_PORT else {_PORT_FIELD[proto]: mask})
        for proto, low, high in allowance.ports for mask in port_masks(low, high)]
    for family in families:
        head = {**base, "eth_type": _ETH_OF[family]}
        nets = [None] if allowance.networks is None else [
            {f"ipv{family}_{side}": network_text(n)} for n in allowance.networks if n.version == family]
        if len(nets) > 1 and len(ports) > 1:
            conj_id = conj | (family == 6) << 14
            for clause, parts in ((1, nets), (2, ports)):
                joins = [("conjunction", conj_id, clause, 2)]
                out += [FlowSpec.make(table, priority, {**head, **part}, joins, cookie=cookie)
                        for part in parts]
            out.append(FlowSpec.make(table, priority, {**head, "conj_id": conj_id}, actions, goto=goto,
                                     cookie=cookie))
            continue
        out += [FlowSpec.make(table, priority, {**head, **(net or {}), **(port or {})}, actions, goto=goto,
                              cookie=cookie) for net in nets for port in ports]
    return out


def port_masks(low: int, high: int) -> list[int | tuple[int, int]]:
    """The port range low..high as (value, mask) prefixes; a single port as its number."""
    out: list[int | tuple[int, int]] = []
    while low <= high:
        size = low & -low or 1 << 16
        while low + size - 1 > high:
            size >>= 1
        out.append(low if size == 1 else (low, 0xFFFF & ~(size - 1)))
        low += size
    return out


def network_text(network) -> str:
    """How a FlowSpec writes an address match: the address alone when the prefix is whole."""
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


_POLICY_TABLES = (Table.POLICY_EGRESS, Table.POLICY_INGRESS)


def policy_flow_count(flows: Sequence[tuple[str, FlowSpec]]) -> int:
    """How many of a wire's flows its policy adds: the policy tables' and the conntrack gates'."""
    return sum(1 for _, f in flows if f.table in _POLICY_TABLES or (
        f.table == Table.CLASSIFY and f.priority in (Priority.POLICY_PASS, Priority.WIRE_IP, Priority.WIRE)
        and (any(a[0] == "ct" for a in f.actions) or f.goto == Table.WIRE_ENTRY or not f.actions)))
