"""A small OpenFlow 1.3 table simulator: follows a frame through compiled flows across the fabric.

It answers "where would this frame go?" so tests assert on behaviour, not on flow strings.
Only what the pipeline uses is modelled: matches on in_port / vlan_vid / eth fields (eth_type is
the type after any VLAN headers, as Open vSwitch matches it), IP addresses, protocol and destination
ports, ct_state and conj_id; actions push_vlan / pop_vlan / set_field vlan_vid / set_queue / output /
group (fast failover) / ct / conjunction / sample, goto_table, highest priority wins. As in OpenFlow, a frame
leaves by the port it came in on only through OFPP_IN_PORT. ``egress`` records every (switch, port,
queue) a frame left by (queue None: none set).

Conntrack is one table of committed connections per zone, shared by every switch (as the bridges of
one userspace datapath share it): a frame of a committed connection, either way, is established.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ryu_nsm.core.fabric import Fabric
from ryu_nsm.core.flowspec import CT_EST, CT_NEW, CT_RPL, CT_TRK, VID_PRESENT, FlowSpec

OFPP_IN_PORT = 0xFFFFFFF8


@dataclass
class Frame:
    vlans: list[int] = field(default_factory=list)  # outermost first, plain VLAN ids
    eth_type: int = 0x0800
    eth_src: str = "02:00:00:00:00:aa"
    eth_dst: str = "02:00:00:00:00:bb"
    src_ip: str | None = None  # IP frames: addresses, protocol, ports (None: no ports)
    dst_ip: str | None = None
    ip_proto: int | None = None
    src_port: int | None = None
    dst_port: int | None = None
    icmpv6_type: int | None = None
    ct_state: int = 0  # set by a ct action, for the rest of the pass through one switch

    def copy(self) -> Frame:
        return Frame(list(self.vlans), self.eth_type, self.eth_src, self.eth_dst, self.src_ip, self.dst_ip,
                     self.ip_proto, self.src_port, self.dst_port, self.icmpv6_type, self.ct_state)

    def five_tuple(self) -> tuple:
        return (self.src_ip, self.dst_ip, self.ip_proto, self.src_port, self.dst_port)

    def reply(self) -> Frame:
        """The answer to this frame: addresses and ports swapped."""
        return Frame([], self.eth_type, self.eth_dst, self.eth_src, self.dst_ip, self.src_ip, self.ip_proto,
                     self.dst_port, self.src_port, self.icmpv6_type)


_PORT_PROTO = {"tcp_dst": 6, "udp_dst": 17, "sctp_dst": 132}


@dataclass(frozen=True)
class Delivery:
    switch: str
    port: int
    vlans: tuple[int, ...]
    hops: tuple[str, ...]


class LoopError(AssertionError):
    pass


class FabricSim:
    def __init__(self, fabric: Fabric, flows: Mapping[str, Iterable[FlowSpec]],
                 groups: Mapping[str, Iterable] | None = None, down_ports: Iterable[tuple[str, int]] = ()):
        """``groups``: fast-failover groups per switch; ``down_ports``: (switch, port) whose link is cut
        (both ends count as down, as the switches would see it)."""
        self.fabric = fabric
        self.groups = {sw: {g.group_id: g for g in specs} for sw, specs in (groups or {}).items()}
        self.tables: dict[str, dict[int, list[FlowSpec]]] = {}
        for sw, specs in flows.items():
            by_table: dict[int, list[FlowSpec]] = {}
            for spec in specs:
                by_table.setdefault(spec.table, []).append(spec)
            for lst in by_table.values():
                lst.sort(key=lambda f: -f.priority)
            self.tables[sw] = by_table
        self.peer = {}
        for link in fabric.links:
            self.peer[(link.a, link.a_port)] = (link.b, link.b_port)
            self.peer[(link.b, link.b_port)] = (link.a, link.a_port)
        self.hits: dict[tuple[str, FlowSpec], int] = {}
        self.egress: list[tuple[str, int, int | None]] = []
        self.samples: list[tuple[str, int, int]] = []  # (switch, obs_domain_id, obs_point_id) sampled
        self.down = set(down_ports) | {self.peer[end] for end in down_ports if end in self.peer}
        self.conntrack: dict[int, set[tuple]] = {}

    def _field(self, name: str, value: object, frame: Frame, conj: set[int]) -> bool | None:
        """Whether the frame has an IP, port, conntrack or conjunction field; None for other fields."""
        if name[:4] in ("ipv4", "ipv6"):
            address = frame.src_ip if name.endswith("src") else frame.dst_ip
            return address is not None and ipaddress.ip_address(address) in ipaddress.ip_network(value)
        if name in _PORT_PROTO:
            want, mask = value if isinstance(value, tuple) else (value, 0xFFFF)
            return (frame.ip_proto == _PORT_PROTO[name] and frame.dst_port is not None
                    and frame.dst_port & mask == want)
        if name == "ip_proto":
            return frame.ip_proto == value
        if name == "icmpv6_type":
            return frame.icmpv6_type == value
        if name == "ct_state":
            return frame.ct_state & value[1] == value[0]
        if name == "conj_id":
            return value in conj
        return None

    def _matches(self, spec: FlowSpec, in_port: int, frame: Frame, conj: set[int] = frozenset()) -> bool:
        for name, value in spec.match:
            found = self._field(name, value, frame, conj)
            if found is not None:
                if not found:
                    return False
                continue
            if name == "in_port" and value != in_port:
                return False
            if name == "vlan_vid":
                have = (VID_PRESENT | frame.vlans[0]) if frame.vlans else 0
                if have != value:
                    return False
            if name == "eth_type" and frame.eth_type != value:
                return False
            if name == "eth_src" and frame.eth_src != value:
                return False
            if name == "eth_dst" and frame.eth_dst != value:
                return False
        return True

    def send(
        self, switch: str, in_port: int, frame: Frame | None = None, max_hops: int = 64
    ) -> list[Delivery]:
        """Inject ``frame`` at (switch, in_port); return where copies leave the fabric (host ports)."""
        out: list[Delivery] = []
        work = [(switch, in_port, frame or Frame(), ())]
        while work:
            sw, port, fr, hops = work.pop()
            if len(hops) > max_hops:
                raise LoopError(f"frame looped: {hops}")
            hops = hops + (sw,)
            fr.ct_state = 0
            self._run(sw, port, 0, fr, hops, out, work)
        return out

    def _lookup(self, sw: str, table: int, port: int, fr: Frame) -> FlowSpec | None:
        """The flow a frame hits: the highest priority one that matches, conjunctions completed."""
        flows = self.tables.get(sw, {}).get(table, [])
        clauses: dict[int, tuple[int, set[int]]] = {}
        for f in flows:
            joins = [a for a in f.actions if a[0] == "conjunction"]
            if joins and self._matches(f, port, fr):
                for _, conj_id, clause, n in joins:
                    clauses.setdefault(conj_id, (n, set()))[1].add(clause)
        done = {conj_id for conj_id, (n, seen) in clauses.items() if len(seen) == n}
        return next((f for f in flows if not any(a[0] == "conjunction" for a in f.actions)
                     and self._matches(f, port, fr, done)), None)

    def _run(self, sw: str, port: int, table: int | None, fr: Frame, hops, out: list, work: list) -> None:
        while table is not None:
            spec = self._lookup(sw, table, port, fr)
            if spec is None:
                return  # table miss: dropped (OpenFlow 1.3 default)
            self.hits[(sw, spec)] = self.hits.get((sw, spec), 0) + 1
            table = spec.goto
            if self._act(sw, port, spec.actions, fr, hops, out, work):
                return

    def _track(self, zone: int, fr: Frame) -> int:
        """The conntrack state of a frame in ``zone``."""
        known = self.conntrack.get(zone, set())
        key = fr.five_tuple()
        if key in known:
            return CT_TRK | CT_EST
        if (key[1], key[0], key[2], key[4], key[3]) in known:
            return CT_TRK | CT_EST | CT_RPL
        return CT_TRK | CT_NEW

    def _commit(self, zone: int, fr: Frame) -> None:
        key = fr.five_tuple()
        known = self.conntrack.setdefault(zone, set())
        if (key[1], key[0], key[2], key[4], key[3]) not in known:
            known.add(key)

    def _act(self, sw: str, in_port: int, actions, fr: Frame, hops, out: list, work: list,
             queue: int | None = None) -> bool:
        """Apply actions; True when a ct action took the frame on to another table."""
        for action in actions:
            kind = action[0]
            if kind == "ct":  # recirculation: the frame goes on, tracked, in the named table
                fr.ct_state = self._track(action[1], fr)
                self._run(sw, in_port, action[2], fr, hops, out, work)
                return True
            if kind == "ct_commit":
                self._commit(action[1], fr)
            elif kind == "set_queue":
                queue = action[1]
            elif kind == "sample":
                self.samples.append((sw, action[3], action[4]))
            elif kind == "push_vlan":
                fr.vlans.insert(0, 0)
            elif kind == "pop_vlan":
                assert fr.vlans, f"pop_vlan on untagged frame at {sw}: {actions}"
                fr.vlans.pop(0)
            elif kind == "set_field" and action[1] == "vlan_vid":
                assert fr.vlans, f"set vlan on untagged frame at {sw}: {actions}"
                fr.vlans[0] = action[2] & 0xFFF
            elif kind == "group":  # fast failover: the first bucket whose watched port is up
                group = self.groups[sw][action[1]]
                live = next((acts for port, acts in group.buckets if (sw, port) not in self.down), None)
                if live is not None:
                    self._act(sw, in_port, live, fr.copy(), hops, out, work, queue)
            elif kind == "output":
                if action[1] == in_port:
                    continue  # OpenFlow drops a plain output to the frame's own in_port
                port = in_port if action[1] == OFPP_IN_PORT else action[1]
                if (sw, port) in self.down:
                    continue  # the link is cut: the frame is lost
                self.egress.append((sw, port, queue))
                dest = self.peer.get((sw, port))
                if dest is None:
                    out.append(Delivery(sw, port, tuple(fr.vlans), hops))
                else:
                    work.append((dest[0], dest[1], fr.copy(), hops))
        return False
