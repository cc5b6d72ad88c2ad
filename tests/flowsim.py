"""A small OpenFlow 1.3 table simulator: follows a frame through compiled flows across the fabric.

It answers "where would this frame go?" so tests assert on behaviour, not on flow strings.
Only what the pipeline uses is modelled: matches on in_port / vlan_vid / eth fields, actions
push_vlan / pop_vlan / set_field vlan_vid / set_queue / output / group (fast failover), goto_table,
highest priority wins. As in OpenFlow, a frame leaves by the port it came in on only through
OFPP_IN_PORT. ``egress`` records every (switch, port, queue) a frame left by (queue None: none set).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ryu_nsm.core.fabric import Fabric
from ryu_nsm.core.flowspec import VID_PRESENT, FlowSpec

OFPP_IN_PORT = 0xFFFFFFF8


@dataclass
class Frame:
    vlans: list[int] = field(default_factory=list)  # outermost first, plain VLAN ids
    eth_type: int = 0x0800
    eth_src: str = "02:00:00:00:00:aa"
    eth_dst: str = "02:00:00:00:00:bb"

    def copy(self) -> Frame:
        return Frame(list(self.vlans), self.eth_type, self.eth_src, self.eth_dst)


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
        self.down = set(down_ports) | {self.peer[end] for end in down_ports if end in self.peer}

    def _matches(self, spec: FlowSpec, in_port: int, frame: Frame) -> bool:
        for name, value in spec.match:
            if name == "in_port" and value != in_port:
                return False
            if name == "vlan_vid":
                have = (VID_PRESENT | frame.vlans[0]) if frame.vlans else 0
                if have != value:
                    return False
            if name == "eth_type" and (0x8100 if frame.vlans else frame.eth_type) != value:
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
            table = 0
            while table is not None:
                spec = next(
                    (f for f in self.tables.get(sw, {}).get(table, []) if self._matches(f, port, fr)), None
                )
                if spec is None:
                    break  # table miss: dropped (OpenFlow 1.3 default)
                self.hits[(sw, spec)] = self.hits.get((sw, spec), 0) + 1
                self._act(sw, port, spec.actions, fr, hops, out, work)
                table = spec.goto
        return out

    def _act(self, sw: str, in_port: int, actions, fr: Frame, hops, out: list, work: list,
             queue: int | None = None) -> None:
        for action in actions:
            kind = action[0]
            if kind == "set_queue":
                queue = action[1]
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
