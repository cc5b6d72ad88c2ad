"""Flow specs: plain, hashable descriptions of OpenFlow 1.3 flows, and the declared pipeline.

A FlowSpec is what the flow compiler produces and what the reconciler diffs; ``ofwire`` is the
only module that turns it into bytes. Matches and actions are tuples so specs hash and sort.

Match fields (name → value):
  in_port: int; vlan_vid: int (OpenFlow value: ``VID_PRESENT | vid`` for tagged, 0 for untagged);
  eth_type: int; eth_src / eth_dst: "aa:bb:cc:dd:ee:ff"; ip_proto: int;
  ipv4_src / ipv4_dst / ipv6_src / ipv6_dst: "address" or "network/prefix length";
  tcp_dst / udp_dst / sctp_dst: int, or (value, mask); icmpv6_type: int;
  ct_state: (value, mask) of CT_* bits; conj_id: int (Nicira extensions, as Open vSwitch has them)
Actions (apply-actions, in order):
  ("output", port) · ("push_vlan", ethertype) · ("pop_vlan",) · ("set_field", "vlan_vid", value)
  · ("set_field", "ip_dscp", value) · ("group", group_id) · ("set_queue", queue_id)
  · ("ct", zone, table): conntrack, then continue in ``table`` · ("ct_commit", zone)
  · ("conjunction", id, clause, n_clauses): clause counted from 1, as ovs-ofctl writes it
  · ("sample", probability, collector_set_id, obs_domain_id, obs_point_id): IPFIX flow sampling
    (core/sampling.py); allowed in every table
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from enum import IntEnum

VID_PRESENT = 0x1000  # OFPVID_PRESENT: set in vlan_vid match/set-field values for tagged frames
ETH_TYPE_VLAN = 0x8100

# Ownership: every flow ryu-nsm installs carries this byte at the top of its cookie.
COOKIE_OWNER = 0x4E
COOKIE_OWNER_SHIFT = 56
COOKIE_OWNER_MASK = 0xFF << COOKIE_OWNER_SHIFT
COOKIE_WIRE_MASK = (1 << COOKIE_OWNER_SHIFT) - 1
PIPELINE_COOKIE = COOKIE_OWNER << COOKIE_OWNER_SHIFT  # base flows of the pipeline (wire part 0)


def wire_cookie(connection_id: str) -> int:
    """The cookie of every flow of one connection: owner byte + 56-bit hash of its id (never 0)."""
    digest = int.from_bytes(hashlib.blake2b(connection_id.encode(), digest_size=7).digest(), "big")
    return PIPELINE_COOKIE | (digest or 1)


def is_ours(cookie: int) -> bool:
    return cookie & COOKIE_OWNER_MASK == PIPELINE_COOKIE


# Meters have no cookie: ryu-nsm owns the meter ids whose top byte is the owner byte.
METER_BASE = COOKIE_OWNER << 24
METER_ID_SPACE = (1, (1 << 24) - 1)


def is_our_meter(meter_id: int) -> bool:
    return meter_id >> 24 == COOKIE_OWNER


GROUP_BASE = COOKIE_OWNER << 24  # groups, like meters, are ours by the top byte of their id
GROUP_ID_SPACE = METER_ID_SPACE


def is_our_group(group_id: int) -> bool:
    return group_id >> 24 == COOKIE_OWNER


@dataclass(frozen=True, order=True)
class GroupSpec:
    """A fast-failover group: the first bucket whose ``watch_port`` is live forwards the frame.

    ``buckets``: ((watch_port, actions), ...), actions as in FlowSpec.
    """

    group_id: int
    buckets: tuple[tuple[int, tuple[tuple, ...]], ...]

    @property
    def key(self) -> int:
        return self.group_id

    def to_ofctl(self) -> str:
        """The group in ``ovs-ofctl add-group`` syntax (OpenFlow 1.3)."""
        buckets = ",".join(f"bucket=watch_port:{port},actions={','.join(_ofctl_action(a) for a in actions)}"
                           for port, actions in self.buckets)
        return f"group_id={self.group_id},type=ff,{buckets}"


@dataclass(frozen=True, order=True)
class MeterSpec:
    """One OpenFlow meter with a single drop band: ``rate_kbps`` (kbit/s), ``burst_kbits`` (kbit)."""

    meter_id: int
    rate_kbps: int
    burst_kbits: int

    @property
    def key(self) -> int:
        return self.meter_id

    def to_ofctl(self) -> str:
        """The meter in ``ovs-ofctl add-meter`` syntax."""
        return (f"meter={self.meter_id},kbps,burst,stats,band=type=drop,rate={self.rate_kbps},"
                f"burst_size={self.burst_kbits}")


class Table(IntEnum):
    """The declared pipeline. Every FlowSpec must name one of these tables.

    CLASSIFY (0): frames entering from an attachment start their wire here (tag push or direct
        output); frames from fabric links go on to FORWARD; anything else is dropped.
    FORWARD (1): tagged frames from fabric links: swap the tag and go on, or pop it and deliver.
    POLICY_EGRESS (2): after conntrack, frames a policed wire end sends: established and related
        pass; a new connection goes on when the sender's egress rules allow it.
    POLICY_INGRESS (3): new connections the far end's ingress rules allow are committed.
    WIRE_ENTRY (4): a policed wire end's frames that passed, put on their wire (as CLASSIFY does
        for a wire without policy).
    """

    CLASSIFY = 0
    FORWARD = 1
    POLICY_EGRESS = 2
    POLICY_INGRESS = 3
    WIRE_ENTRY = 4


@dataclass(frozen=True)
class TableRule:
    match_fields: frozenset[str]
    actions: frozenset[str]
    may_goto: frozenset[int]


_WIRE_ACTIONS = frozenset({"output", "push_vlan", "set_field", "group", "set_queue"})
_RULE_MATCH = frozenset({"in_port", "eth_type", "ip_proto", "ipv4_src", "ipv4_dst", "ipv6_src", "ipv6_dst",
                         "tcp_dst", "udp_dst", "sctp_dst", "conj_id"})

PIPELINE: dict[Table, TableRule] = {
    Table.CLASSIFY: TableRule(
        frozenset({"in_port", "vlan_vid", "eth_type", "eth_src", "eth_dst", "ip_proto", "icmpv6_type"}),
        _WIRE_ACTIONS | {"ct", "ct_commit"},
        frozenset({Table.FORWARD, Table.WIRE_ENTRY}),
    ),
    Table.FORWARD: TableRule(
        frozenset({"in_port", "vlan_vid", "eth_type"}),
        frozenset({"output", "pop_vlan", "set_field", "group", "set_queue", "ct_commit"}),
        frozenset(),
    ),
    Table.POLICY_EGRESS: TableRule(_RULE_MATCH | {"ct_state"}, frozenset({"conjunction"}),
                                   frozenset({Table.POLICY_INGRESS, Table.WIRE_ENTRY})),
    Table.POLICY_INGRESS: TableRule(_RULE_MATCH, frozenset({"conjunction", "ct_commit"}),
                                    frozenset({Table.WIRE_ENTRY})),
    Table.WIRE_ENTRY: TableRule(frozenset({"in_port", "eth_type"}), _WIRE_ACTIONS | {"ct_commit"},
                                frozenset()),
}
# Sampling (core/sampling.py) may watch any flow.
PIPELINE = {table: replace(rule, actions=rule.actions | {"sample"}) for table, rule in PIPELINE.items()}

# Conntrack state bits (Open vSwitch's ct_state).
CT_NEW, CT_EST, CT_REL, CT_RPL, CT_INV, CT_TRK = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_CT_BITS = (("new", CT_NEW), ("est", CT_EST), ("rel", CT_REL), ("rpl", CT_RPL), ("inv", CT_INV),
            ("trk", CT_TRK))


class Priority(IntEnum):
    MISS = 0
    FABRIC_PORT = 100
    PROBE = 150  # the controller's link probes, above the fabric ports' goto
    WIRE = 1000
    WIRE_IP = 1100  # IP frames of a wire whose IP header is rewritten (DSCP), above its other frames
    POLICY_PASS = 1200  # a policed end's ARP and IPv6 neighbour discovery: never filtered
    POLICY_RULE = 2000  # + the rule's index on its wire: rules never share a key
    POLICY_STATE = 3000  # established and related connections


class PipelineError(ValueError):
    """A flow that does not fit its table's declaration: a bug in the compiler, caught at build time."""


def _check_fits(table: int, fields: Collection[str], actions: list[str], goto: int | None) -> None:
    """PipelineError unless a flow with these match fields, action kinds and goto fits its table."""
    rule = PIPELINE.get(table)
    if rule is None:
        raise PipelineError(f"table {table} is not in the pipeline")
    # Subset tests on the declared frozensets: nothing is built unless there is an error to word.
    if not rule.match_fields.issuperset(fields):
        bad = sorted(set(fields) - rule.match_fields)
        raise PipelineError(f"table {Table(table).name} may not match {bad}")
    if not rule.actions.issuperset(actions):
        raise PipelineError(f"table {Table(table).name} may not {sorted(set(actions) - rule.actions)}")
    if goto is not None and goto not in rule.may_goto:
        raise PipelineError(f"table {Table(table).name} may not go to table {goto}")


def _check_sorted_fits(table: int, match: tuple[tuple[str, object], ...], actions: tuple, goto: int | None
                       ) -> None:
    """``_check_fits`` for a flow whose match is (name, value) pairs."""
    _check_fits(table, [name for name, _ in match], [a[0] for a in actions], goto)


@dataclass(frozen=True, order=True)
class FlowSpec:
    """One flow. Identity on the switch is ``key`` = (table, priority, match)."""

    table: int
    priority: int
    match: tuple[tuple[str, object], ...]
    actions: tuple[tuple, ...] = ()
    goto: int | None = None
    cookie: int = PIPELINE_COOKIE
    meter: int | None = None
    # Set when the flow is built, never compared: the reconcile looks a flow up by its key several
    # times per plan (667,000 times for 4,000 connections moved by a link failure).
    key: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Checked every time: cheaper than looking the flow's shape up in a cache of shapes seen.
        _check_sorted_fits(self.table, self.match, self.actions, self.goto)
        if len(self.match) > 1 and list(self.match) != sorted(self.match):
            object.__setattr__(self, "match", tuple(sorted(self.match)))
        object.__setattr__(self, "key", (self.table, self.priority, self.match))

    @classmethod
    def make(cls, table: int, priority: int, match: dict, actions=(), goto: int | None = None,
             cookie: int = PIPELINE_COOKIE, meter: int | None = None) -> FlowSpec:
        """The compiler's constructor: the same flow and the same check as ``FlowSpec(...)``, on the
        match as a dict, sorted once (a restart at 10,000 connections builds 178,000 flows)."""
        table, actions = int(table), tuple(actions)
        _check_fits(table, match, [a[0] for a in actions], goto)
        return cls._built(table, int(priority), tuple(sorted(match.items())), actions, goto, cookie, meter)

    @classmethod
    def on_sorted(cls, table: int, priority: int, match: tuple[tuple[str, object], ...], actions: tuple,
                  goto: int | None, cookie: int, meter: int | None) -> FlowSpec:
        """``FlowSpec(...)`` on a sorted match, at a third of its cost: the decoder's (a restarted
        controller decodes every flow of every switch) and the compiler's for a flow it derives
        from one it built (a restart compiles 80,000 such)."""
        _check_sorted_fits(table, match, actions, goto)
        return cls._built(table, priority, match, actions, goto, cookie, meter)

    @classmethod
    def _built(cls, table: int, priority: int, match: tuple, actions: tuple, goto: int | None, cookie: int,
               meter: int | None) -> FlowSpec:
        flow = object.__new__(cls)
        # Frozen: the fields are set as the dataclass's own __init__ and __post_init__ set them, past
        # their per-field __setattr__ (two thirds of a decode's cost).
        flow.__dict__.update(table=table, priority=priority, match=match, actions=actions, goto=goto,
                             cookie=cookie, meter=meter, key=(table, priority, match))
        return flow

    def __eq__(self, other: object) -> bool:
        # The dataclass's own compares two tuples it builds of every field; by the key built with the
        # flow, then the rest, a restart's whole diff of the flows read back takes a fifth less.
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self is other or (self.key == other.key and self.actions == other.actions
                                 and self.cookie == other.cookie and self.goto == other.goto
                                 and self.meter == other.meter)

    def match_dict(self) -> dict:
        return dict(self.match)

    def to_ofctl(self) -> str:
        """The flow in ``ovs-ofctl add-flow`` syntax (OpenFlow 1.3)."""
        parts = [f"cookie={self.cookie:#x}", f"table={self.table}", f"priority={self.priority}"]
        for name, value in self.match:
            parts.append(_ofctl_match(name, value))
        acts = []
        if self.meter is not None:
            acts.append(f"meter:{self.meter}")
        for action in self.actions:
            acts.append(_ofctl_action(action))
        if self.goto is not None:
            acts.append(f"goto_table:{self.goto}")
        return ",".join(parts) + " actions=" + (",".join(acts) or "drop")


def _ofctl_match(name: str, value: object) -> str:
    if name == "vlan_vid":
        v = int(value)
        return "vlan_tci=0x0000/0x1fff" if v == 0 else f"dl_vlan={v & 0xFFF}"
    if name == "eth_type":
        return f"dl_type={int(value):#06x}"
    if name == "eth_src":
        return f"dl_src={value}"
    if name == "eth_dst":
        return f"dl_dst={value}"
    if name == "ip_proto":
        return f"nw_proto={value}"
    if name in ("ipv4_src", "ipv4_dst"):
        return f"nw_{name[5:]}={value}"
    if name == "ct_state":
        bits, mask = value
        return "ct_state=" + "".join(f"{'+' if bits & bit else '-'}{word}" for word, bit in _CT_BITS
                                     if mask & bit)
    if isinstance(value, tuple):
        return f"{name}={value[0]}/{value[1]:#x}"
    return f"{name}={value}"


def _ofctl_action(action: tuple) -> str:
    kind = action[0]
    if kind == "output":
        return f"output:{action[1]}"
    if kind == "push_vlan":
        return f"push_vlan:{action[1]:#06x}"
    if kind == "pop_vlan":
        return "pop_vlan"
    if kind == "group":
        return f"group:{action[1]}"
    if kind == "set_queue":
        return f"set_queue:{action[1]}"
    if kind == "ct":
        return f"ct(table={action[2]},zone={action[1]})"
    if kind == "ct_commit":
        return f"ct(commit,zone={action[1]})"
    if kind == "conjunction":
        return f"conjunction({action[1]},{action[2]}/{action[3]})"
    if kind == "sample":
        _, prob, collector_set, domain, point = action
        return (f"sample(probability={prob},collector_set_id={collector_set},obs_domain_id={domain},"
                f"obs_point_id={point})")
    if kind == "set_field":
        _, name, value = action
        if name == "vlan_vid":
            return f"set_field:{int(value) | VID_PRESENT:#06x}->vlan_vid"
        return f"set_field:{value}->{name}"
    raise PipelineError(f"unknown action {action!r}")
