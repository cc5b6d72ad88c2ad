"""OpenFlow 1.3 bytes for FlowSpecs, and flow stats back into FlowSpecs.

The only module that knows the wire format (``wire_decode`` reads flow stats with its tables).
Encoding is plain ``struct`` packing with no os-ken objects, because building one OFPFlowMod object
per flow caps an install at ~13k flows/s; the encoded match and instruction blobs are cached, so
re-encoding a known flow (reconcile, delete) is a dictionary hit plus one header. Every message
comes out byte-identical to what os-ken's own ``ofproto_v1_3_parser`` would serialise for the same
parameters (pinned by tests/test_ofwire.py).

Flow mods carry: buffer_id NO_BUFFER, no flags (no FLOW_REMOVED), idle/hard timeout 0,
out_port/out_group ANY. Instructions, when present, come in the order OpenFlow executes them:
meter, apply-actions, goto-table. A flow with no actions and no goto has no instructions (drop).

Values on the wire:
  match vlan_vid 0 is OFPVID_NONE (untagged, exact); any other value must carry VID_PRESENT.
  set_field vlan_vid is sent as ``value | VID_PRESENT`` and decoded with VID_PRESENT set, so
  specs should carry it (as ``flows.py`` does) for decode(encode(spec)) == spec.
  output to the controller asks for the whole packet (max_len NO_BUFFER); other outputs use 0.
"""

from __future__ import annotations

import ipaddress
import logging
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from os_ken.ofproto import ofproto_v1_3_parser as _parser

from ryu_nsm.core.flows import network_text
from ryu_nsm.core.flowspec import VID_PRESENT, FlowSpec, GroupSpec, MeterSpec, is_ours

LOG = logging.getLogger(__name__)

OFP_VERSION = 4  # OpenFlow 1.3

OFPT_EXPERIMENTER = 4
OFPT_FLOW_MOD = 14
OFPT_MULTIPART_REQUEST = 18
OFPT_BARRIER_REQUEST = 20
OFPT_METER_MOD = 29
OFPT_GROUP_MOD = 15
OFPGC_ADD = 0
OFPGC_MODIFY = 1
OFPGC_DELETE = 2
OFPGT_FF = 3
OFPMP_GROUP_DESC = 7

OFPFC_ADD = 0
OFPFC_DELETE = 3
OFPFC_DELETE_STRICT = 4

OFPTT_ALL = 0xFF
OFPP_CONTROLLER = 0xFFFFFFFD
OFPP_ANY = 0xFFFFFFFF
OFPG_ANY = 0xFFFFFFFF
OFP_NO_BUFFER = 0xFFFFFFFF
OFPCML_NO_BUFFER = 0xFFFF
OFPMP_FLOW = 1
OFPMP_METER = 9
OFPMP_METER_CONFIG = 10
OFPMC_ADD = 0
OFPMC_MODIFY = 1
OFPMC_DELETE = 2
OFPM_ALL = 0xFFFFFFFF
OFPMF_KBPS = 1
OFPMF_BURST = 4
OFPMF_STATS = 8
OFPMBT_DROP = 1
COOKIE_EXACT = 0xFFFF_FFFF_FFFF_FFFF

# ONF extension EXT-230 (bundles for OpenFlow 1.3), as Open vSwitch implements it.
ONF_EXPERIMENTER_ID = 0x4F4E4600
ONF_ET_BUNDLE_CONTROL = 2300
ONF_ET_BUNDLE_ADD_MESSAGE = 2301
BUNDLE_OPEN_REQUEST = 0
BUNDLE_OPEN_REPLY = 1
BUNDLE_CLOSE_REQUEST = 2
BUNDLE_CLOSE_REPLY = 3
BUNDLE_COMMIT_REQUEST = 4
BUNDLE_COMMIT_REPLY = 5
BUNDLE_DISCARD_REQUEST = 6
BUNDLE_DISCARD_REPLY = 7
BUNDLE_ATOMIC = 1
BUNDLE_ORDERED = 2
BUNDLE_FLAGS = BUNDLE_ATOMIC | BUNDLE_ORDERED

# Instruction and action type numbers (OpenFlow 1.3 spec, section 7.2.4 / 7.2.5).
_OFPIT_GOTO_TABLE = 1
_OFPIT_APPLY_ACTIONS = 4
_OFPIT_METER = 6
_OFPAT_OUTPUT = 0
_OFPAT_PUSH_VLAN = 17
_OFPAT_POP_VLAN = 18
_OFPAT_SET_QUEUE = 21
_OFPAT_GROUP = 22
_OFPAT_SET_FIELD = 25
_OFPAT_EXPERIMENTER = 0xFFFF
# Nicira extensions, as Open vSwitch implements them: conntrack and conjunctive matches.
NX_VENDOR_ID = 0x00002320
_NXAST_CONJUNCTION = 34
_NXAST_CT = 35
_NX_CT_F_COMMIT = 1
_NX_CT_RECIRC_NONE = 0xFF
_NX_CT = struct.Struct("!HHIHHIHB3xH")  # type, len, vendor, subtype, flags, zone_src, zone, table, alg
_NX_CONJUNCTION = struct.Struct("!HHIHBBI")  # type, len, vendor, subtype, clause (from 0), n, id
_NXAST_SAMPLE = 29
# type, len, vendor, subtype, probability, collector set id, observation domain id, point id
_NX_SAMPLE = struct.Struct("!HHIHHIII")

_CACHE_SIZE = 1 << 16  # blobs are ~50-100 bytes: the caches stay in the low megabytes

_HEADER = struct.Struct("!BBHI")
_FLOW_MOD = struct.Struct("!BBHIQQBBHHHIIIH2x")
_FLOW_STATS_REQUEST = struct.Struct("!BBHIHH4xB3xII4xQQ")
_BUNDLE_CTRL = struct.Struct("!BBHIIIIHH")
_METER_MOD = struct.Struct("!BBHIHHI")
_METER_BAND_DROP = struct.Struct("!HHII4x")
_METER_CONFIG_REQUEST = struct.Struct("!BBHIHH4xI4x")
_GROUP_MOD = struct.Struct("!BBHIHBxI")
_BUCKET = struct.Struct("!HHII4x")
_MULTIPART_REQUEST = struct.Struct("!BBHIHH4x")
_BUNDLE_ADD_TAIL = struct.Struct("!III2xH")  # experimenter, exp_type, bundle_id, pad, flags
_EMPTY_MATCH = struct.pack("!HH4x", 1, 4)


_OFB = 0x8000  # OXM class of OpenFlow-basic fields
_NXM1 = 0x0001  # OXM class of Nicira's extension fields (NXM_NX_*)


def _oxm_header(field: int, length: int, oxm_class: int = _OFB, masked: bool = False) -> int:
    """OXM header of a field; ``length`` counts the value and, when masked, the mask."""
    return oxm_class << 16 | field << 9 | masked << 8 | length


def _mac(value: object) -> bytes:
    raw = bytes.fromhex(str(value).replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {value!r}")
    return raw


def _vlan_match(value: object) -> bytes:
    vid = int(value)
    if vid and not vid & VID_PRESENT:
        raise ValueError(f"vlan_vid match {vid:#x} is neither 0 (untagged) nor VID_PRESENT | vid")
    return struct.pack("!H", vid)


def _network(value: object) -> tuple[bytes, bytes | None]:
    """"address" or "network/prefix length" → (address bytes, mask bytes or None when whole)."""
    net = ipaddress.ip_network(str(value))
    if net.prefixlen == net.max_prefixlen:
        return net.network_address.packed, None
    return net.network_address.packed, net.netmask.packed


def _masked(fmt: str) -> Callable[[object], tuple[bytes, bytes | None]]:
    """An integer field: a value, or (value, mask) sent masked."""
    def encode(value: object) -> tuple[bytes, bytes | None]:
        if isinstance(value, tuple):
            return struct.pack(fmt, int(value[0])), struct.pack(fmt, int(value[1]))
        return struct.pack(fmt, int(value)), None
    return encode


def _plain(encode: Callable[[object], bytes]) -> Callable[[object], tuple[bytes, None]]:
    return lambda value: (encode(value), None)


# name → (OXM class, field number, encoder to (value, mask or None)). Order on the wire: as os-ken
# sorts, by (class << 7 | field): Nicira's fields first.
_MATCH_FIELDS = {
    "in_port": (_OFB, 0, _plain(lambda v: struct.pack("!I", int(v)))),
    "eth_dst": (_OFB, 3, _plain(_mac)),
    "eth_src": (_OFB, 4, _plain(_mac)),
    "eth_type": (_OFB, 5, _plain(lambda v: struct.pack("!H", int(v)))),
    "vlan_vid": (_OFB, 6, _plain(_vlan_match)),
    "ip_proto": (_OFB, 10, _plain(lambda v: struct.pack("!B", int(v)))),
    "ipv4_src": (_OFB, 11, _network),
    "ipv4_dst": (_OFB, 12, _network),
    "tcp_dst": (_OFB, 14, _masked("!H")),
    "udp_dst": (_OFB, 16, _masked("!H")),
    "sctp_dst": (_OFB, 18, _masked("!H")),
    "ipv6_src": (_OFB, 26, _network),
    "ipv6_dst": (_OFB, 27, _network),
    "icmpv6_type": (_OFB, 29, _plain(lambda v: struct.pack("!B", int(v)))),
    "conj_id": (_NXM1, 37, _plain(lambda v: struct.pack("!I", int(v)))),
    "ct_state": (_NXM1, 105, _masked("!I")),
}
_SET_FIELDS = {
    "vlan_vid": (6, lambda v: struct.pack("!H", int(v) | VID_PRESENT)),
    "ip_dscp": (8, lambda v: struct.pack("!B", int(v))),
}


def _oxm(table: dict, name: str, value: object) -> bytes:
    try:
        field, encode = table[name]
        raw = encode(value)
    except KeyError:
        raise ValueError(f"no wire encoding for field {name!r}") from None
    except (struct.error, TypeError, ValueError) as exc:
        raise ValueError(f"cannot encode {name}={value!r}: {exc}") from None
    return struct.pack("!I", _oxm_header(field, len(raw))) + raw


def _match_oxm(name: str, value: object) -> bytes:
    try:
        oxm_class, field, encode = _MATCH_FIELDS[name]
        raw, mask = encode(value)
    except KeyError:
        raise ValueError(f"no wire encoding for field {name!r}") from None
    except (struct.error, TypeError, ValueError) as exc:
        raise ValueError(f"cannot encode {name}={value!r}: {exc}") from None
    if mask is None:
        return struct.pack("!I", _oxm_header(field, len(raw), oxm_class)) + raw
    return struct.pack("!I", _oxm_header(field, 2 * len(raw), oxm_class, True)) + raw + mask


def _match_order(item: tuple[str, object]) -> int:
    oxm_class, field, _ = _MATCH_FIELDS.get(item[0], (0, -1, None))
    return oxm_class << 7 | field


@lru_cache(maxsize=_CACHE_SIZE)
def _match_blob(match: tuple[tuple[str, object], ...]) -> bytes:
    """ofp_match (OXM, padded to 8) for a FlowSpec's match."""
    fields = sorted(match, key=_match_order)
    oxms = b"".join(_match_oxm(name, value) for name, value in fields)
    length = 4 + len(oxms)
    return struct.pack("!HH", 1, length) + oxms + bytes(-length % 8)


def _action_blob(action: tuple) -> bytes:
    kind = action[0]
    if kind == "output":
        port = int(action[1])
        max_len = OFPCML_NO_BUFFER if port == OFPP_CONTROLLER else 0
        return struct.pack("!HHIH6x", _OFPAT_OUTPUT, 16, port, max_len)
    if kind == "push_vlan":
        return struct.pack("!HHH2x", _OFPAT_PUSH_VLAN, 8, int(action[1]))
    if kind == "pop_vlan":
        return struct.pack("!HH4x", _OFPAT_POP_VLAN, 8)
    if kind == "group":
        return struct.pack("!HHI", _OFPAT_GROUP, 8, int(action[1]))
    if kind == "set_queue":
        return struct.pack("!HHI", _OFPAT_SET_QUEUE, 8, int(action[1]))
    if kind == "ct":
        return _NX_CT.pack(_OFPAT_EXPERIMENTER, _NX_CT.size, NX_VENDOR_ID, _NXAST_CT, 0, 0, int(action[1]),
                           int(action[2]), 0)
    if kind == "ct_commit":
        return _NX_CT.pack(_OFPAT_EXPERIMENTER, _NX_CT.size, NX_VENDOR_ID, _NXAST_CT, _NX_CT_F_COMMIT, 0,
                           int(action[1]), _NX_CT_RECIRC_NONE, 0)
    if kind == "conjunction":
        _, conj_id, clause, n_clauses = action
        return _NX_CONJUNCTION.pack(_OFPAT_EXPERIMENTER, _NX_CONJUNCTION.size, NX_VENDOR_ID,
                                    _NXAST_CONJUNCTION, int(clause) - 1, int(n_clauses), int(conj_id))
    if kind == "sample":
        return _NX_SAMPLE.pack(_OFPAT_EXPERIMENTER, _NX_SAMPLE.size, NX_VENDOR_ID, _NXAST_SAMPLE,
                               *(int(v) for v in action[1:]))
    if kind == "set_field":
        oxm = _oxm(_SET_FIELDS, action[1], action[2])
        length = 4 + len(oxm)
        return struct.pack("!HH", _OFPAT_SET_FIELD, length + -length % 8) + oxm + bytes(-length % 8)
    raise ValueError(f"no wire encoding for action {action!r}")


@lru_cache(maxsize=_CACHE_SIZE)
def _instructions_blob(meter: int | None, actions: tuple[tuple, ...], goto: int | None) -> bytes:
    """The instructions of a flow: meter, apply-actions, goto-table (each only when present)."""
    parts = []
    if meter is not None:
        parts.append(struct.pack("!HHI", _OFPIT_METER, 8, int(meter)))
    if actions:
        acts = b"".join(_action_blob(action) for action in actions)
        parts.append(struct.pack("!HH4x", _OFPIT_APPLY_ACTIONS, 8 + len(acts)) + acts)
    if goto is not None:
        parts.append(struct.pack("!HHB3x", _OFPIT_GOTO_TABLE, 8, int(goto)))
    return b"".join(parts)


def encode_flow_mod(spec: FlowSpec, command: int, xid: int = 0) -> bytes:
    """One OFPT_FLOW_MOD for ``spec``.

    ``command`` is OFPFC_ADD (installs or replaces the flow with the spec's key) or
    OFPFC_DELETE_STRICT (removes exactly the flow with that key and that exact cookie, so a flow
    of someone else with the same key survives).
    """
    if command == OFPFC_ADD:
        tail = _match_blob(spec.match) + _instructions_blob(spec.meter, spec.actions, spec.goto)
        cookie_mask = 0
    elif command == OFPFC_DELETE_STRICT:
        tail = _match_blob(spec.match)
        cookie_mask = COOKIE_EXACT
    else:
        raise ValueError(f"encode_flow_mod supports ADD and DELETE_STRICT, not command {command}")
    return _FLOW_MOD.pack(
        OFP_VERSION, OFPT_FLOW_MOD, _FLOW_MOD.size + len(tail), xid,
        spec.cookie, cookie_mask, spec.table, command, 0, 0, spec.priority,
        OFP_NO_BUFFER, OFPP_ANY, OFPG_ANY, 0,
    ) + tail


def encode_flow_mods(specs: Iterable[FlowSpec], command: int, first_xid: int) -> list[bytes]:
    """``encode_flow_mod`` for many specs, with consecutive xids from ``first_xid`` (wrapping at 2**32)."""
    return [
        encode_flow_mod(spec, command, (first_xid + i) & 0xFFFFFFFF) for i, spec in enumerate(specs)
    ]


def encode_delete_by_cookie(cookie: int, cookie_mask: int, table: int = OFPTT_ALL, xid: int = 0) -> bytes:
    """A non-strict OFPFC_DELETE of every flow in ``table`` whose cookie matches under ``cookie_mask``."""
    return _FLOW_MOD.pack(
        OFP_VERSION, OFPT_FLOW_MOD, _FLOW_MOD.size + len(_EMPTY_MATCH), xid,
        cookie, cookie_mask, table, OFPFC_DELETE, 0, 0, 0,
        OFP_NO_BUFFER, OFPP_ANY, OFPG_ANY, 0,
    ) + _EMPTY_MATCH


def encode_barrier(xid: int) -> bytes:
    """OFPT_BARRIER_REQUEST: its reply says every earlier message on the connection is done."""
    return _HEADER.pack(OFP_VERSION, OFPT_BARRIER_REQUEST, _HEADER.size, xid)


def encode_flow_stats_request(xid: int, cookie: int, cookie_mask: int, table: int = OFPTT_ALL) -> bytes:
    """OFPMP_FLOW request for the flows of ``table`` (all tables by default) whose cookie matches
    under ``cookie_mask``."""
    return _FLOW_STATS_REQUEST.pack(
        OFP_VERSION, OFPT_MULTIPART_REQUEST, _FLOW_STATS_REQUEST.size + len(_EMPTY_MATCH), xid,
        OFPMP_FLOW, 0, table, OFPP_ANY, OFPG_ANY, cookie, cookie_mask,
    ) + _EMPTY_MATCH


def encode_meter_mod(spec: MeterSpec, command: int, xid: int = 0) -> bytes:
    """One OFPT_METER_MOD: add, modify (``spec`` whole) or delete (by id) a meter with one drop band."""
    if command == OFPMC_DELETE:
        bands, flags = b"", 0
    elif command in (OFPMC_ADD, OFPMC_MODIFY):
        bands = _METER_BAND_DROP.pack(OFPMBT_DROP, _METER_BAND_DROP.size, spec.rate_kbps, spec.burst_kbits)
        flags = OFPMF_KBPS | OFPMF_BURST | OFPMF_STATS
    else:
        raise ValueError(f"encode_meter_mod supports ADD, MODIFY and DELETE, not command {command}")
    return _METER_MOD.pack(OFP_VERSION, OFPT_METER_MOD, _METER_MOD.size + len(bands), xid, command, flags,
                           spec.meter_id) + bands


def encode_meter_config_request(xid: int, meter_id: int = OFPM_ALL) -> bytes:
    """OFPMP_METER_CONFIG request for one meter or all of them."""
    return _METER_CONFIG_REQUEST.pack(OFP_VERSION, OFPT_MULTIPART_REQUEST, _METER_CONFIG_REQUEST.size, xid,
                                      OFPMP_METER_CONFIG, 0, meter_id)


def encode_meter_stats_request(xid: int) -> bytes:
    """OFPMP_METER request: every meter's counters, with each band's (our drop band's) packets."""
    return _METER_CONFIG_REQUEST.pack(OFP_VERSION, OFPT_MULTIPART_REQUEST, _METER_CONFIG_REQUEST.size, xid,
                                      OFPMP_METER, 0, OFPM_ALL)


def decode_meter_drops(body: Iterable[object]) -> dict[int, int]:
    """os-ken's parsed meter stats (``OFPMeterStats``) → meter id → packets its bands dropped."""
    return {entry.meter_id: sum(band.packet_band_count for band in entry.band_stats) for entry in body}


def encode_group_mod(spec: GroupSpec, command: int, xid: int = 0) -> bytes:
    """One OFPT_GROUP_MOD: add, modify (``spec`` whole) or delete (by id) a fast-failover group."""
    buckets = b""
    if command in (OFPGC_ADD, OFPGC_MODIFY):
        for watch_port, actions in spec.buckets:
            acts = b"".join(_action_blob(action) for action in actions)
            buckets += _BUCKET.pack(_BUCKET.size + len(acts), 0, watch_port, OFPG_ANY) + acts
    elif command != OFPGC_DELETE:
        raise ValueError(f"encode_group_mod supports ADD, MODIFY and DELETE, not command {command}")
    head = _GROUP_MOD.pack(OFP_VERSION, OFPT_GROUP_MOD, _GROUP_MOD.size + len(buckets), xid, command,
                           OFPGT_FF, spec.group_id)
    return head + buckets


def encode_group_desc_request(xid: int) -> bytes:
    """OFPMP_GROUP_DESC request: every group with its buckets."""
    return _MULTIPART_REQUEST.pack(OFP_VERSION, OFPT_MULTIPART_REQUEST, _MULTIPART_REQUEST.size, xid,
                                   OFPMP_GROUP_DESC, 0)


def decode_group_descs(body: Iterable[object]) -> list[GroupSpec]:
    """os-ken's parsed group descriptions (``OFPGroupDescStats``) → GroupSpecs.

    A group not in ryu-nsm's shape (fast failover, actions it writes) is read without buckets, so
    that a diff against the desired group replaces it.
    """
    out = []
    for entry in body:
        if isinstance(entry, RawFlowStats):  # os-ken told to leave flow stats raw (flow_read)
            entry = _parser.OFPFlowStats.parser(entry.buf, 0)
        try:
            if entry.type != OFPGT_FF:
                raise _Undecodable(f"group type {entry.type}")
            buckets = tuple((bucket.watch_port, tuple(_decode_action(a) for a in bucket.actions))
                            for bucket in entry.buckets)
        except _Undecodable:
            buckets = ()
        out.append(GroupSpec(entry.group_id, buckets))
    return out


def decode_meter_configs(body: Iterable[object]) -> list[MeterSpec]:
    """os-ken's parsed meter config entries (``OFPMeterConfigStats``) → MeterSpecs.

    A meter not in ryu-nsm's shape (kbit/s, one drop band) is read with rate -1, so that a diff
    against the desired meter replaces it.
    """
    out = []
    for entry in body:
        drops = [band for band in entry.bands if getattr(band, "type", None) == OFPMBT_DROP]
        ours = entry.flags & OFPMF_KBPS and len(entry.bands) == 1 and drops
        rate, burst = (drops[0].rate, drops[0].burst_size) if ours else (-1, -1)
        out.append(MeterSpec(entry.meter_id, rate, burst))
    return out


def encode_bundle_control(bundle_id: int, ctrl_type: int, xid: int, flags: int = BUNDLE_FLAGS) -> bytes:
    """An ONF bundle control message (open, commit, discard, ...) without properties."""
    return _BUNDLE_CTRL.pack(
        OFP_VERSION, OFPT_EXPERIMENTER, _BUNDLE_CTRL.size, xid,
        ONF_EXPERIMENTER_ID, ONF_ET_BUNDLE_CONTROL, bundle_id, ctrl_type, flags,
    )


def encode_bundle(bundle_id: int, messages: Sequence[bytes], xid: int) -> bytes:
    """Open bundle ``bundle_id`` (atomic, ordered), add ``messages``, commit it.

    Each message is a complete OpenFlow 1.3 message; its bundle-add wrapper takes the message's own
    xid (the switch requires them equal), so an error names the message that caused it. The open
    and commit requests both carry ``xid``; the switch answers each with a bundle control reply
    (OPEN_REPLY, COMMIT_REPLY) or an error with that xid.
    """
    add_tail = _BUNDLE_ADD_TAIL.pack(ONF_EXPERIMENTER_ID, ONF_ET_BUNDLE_ADD_MESSAGE, bundle_id, BUNDLE_FLAGS)
    prefix_size = 8 + len(add_tail)
    parts = [encode_bundle_control(bundle_id, BUNDLE_OPEN_REQUEST, xid)]
    append = parts.append
    for message in messages:
        # version, type, length; then the inner xid copied as bytes (cheaper than unpack + pack)
        append(struct.pack("!BBH", OFP_VERSION, OFPT_EXPERIMENTER, prefix_size + len(message)))
        append(message[4:8])
        append(add_tail)
        append(message)
    append(encode_bundle_control(bundle_id, BUNDLE_COMMIT_REQUEST, xid))
    return b"".join(parts)


@dataclass(frozen=True)
class FlowStats:
    """One flow read back from a switch: its spec and its counters."""

    spec: FlowSpec
    packets: int
    bytes: int
    duration: float  # seconds since the flow was installed


class RawFlowStats:
    """One flow stats entry as the switch sent it (os-ken's body class for flow stats replies)."""

    __slots__ = ("buf", "length")

    def __init__(self, buf: bytes):
        self.buf = buf
        self.length = len(buf)

    @classmethod
    def parser(cls, buf, offset: int) -> RawFlowStats:
        (length,) = struct.unpack_from("!H", buf, offset)
        if length < 48:
            raise ValueError(f"flow stats entry of {length} bytes")
        return cls(bytes(buf[offset:offset + length]))


class _Undecodable(ValueError):
    """A flow entry that no FlowSpec can describe."""


def _decode_nx_action(action: object) -> tuple:
    subtype = getattr(action, "subtype", None)
    if subtype == _NXAST_CONJUNCTION:
        return ("conjunction", action.id, action.clause + 1, action.n_clauses)
    if subtype == _NXAST_SAMPLE:
        return ("sample", action.probability, action.collector_set_id, action.obs_domain_id,
                action.obs_point_id)
    if subtype == _NXAST_CT and not action.zone_src and not action.alg and not action.actions:
        if action.flags == _NX_CT_F_COMMIT and action.recirc_table == _NX_CT_RECIRC_NONE:
            return ("ct_commit", action.zone_ofs_nbits)
        if action.flags == 0 and action.recirc_table != _NX_CT_RECIRC_NONE:
            return ("ct", action.zone_ofs_nbits, action.recirc_table)
    raise _Undecodable(f"action {action!r}")


def _decode_match(name: str, value: object) -> object:
    """A field as os-ken parses it → as a FlowSpec holds it; masked values only where specs have them."""
    if name in ("ipv4_src", "ipv4_dst", "ipv6_src", "ipv6_dst"):
        address, mask = value if isinstance(value, tuple) else (value, None)
        if mask is None:
            return str(ipaddress.ip_address(address))
        length = bin(int(ipaddress.ip_address(mask))).count("1")
        return network_text(ipaddress.ip_network(f"{address}/{length}", strict=False))
    if isinstance(value, tuple):
        if name not in ("tcp_dst", "udp_dst", "sctp_dst", "ct_state"):
            raise _Undecodable(f"masked match {name}={value[0]}/{value[1]}")
        return tuple(value)
    if name == "ct_state":
        return (value, 0xFFFFFFFF)
    return value.lower() if isinstance(value, str) else value


def _decode_action(action: object) -> tuple:
    kind = action.type
    if kind == _OFPAT_EXPERIMENTER:
        return _decode_nx_action(action)
    if kind == _OFPAT_OUTPUT:
        return ("output", action.port)
    if kind == _OFPAT_PUSH_VLAN:
        return ("push_vlan", action.ethertype)
    if kind == _OFPAT_POP_VLAN:
        return ("pop_vlan",)
    if kind == _OFPAT_GROUP:
        return ("group", action.group_id)
    if kind == _OFPAT_SET_QUEUE:
        return ("set_queue", action.queue_id)
    if kind == _OFPAT_SET_FIELD and action.key in _SET_FIELDS:
        if isinstance(action.value, tuple):
            raise _Undecodable(f"masked set_field {action.key}")
        value = action.value | VID_PRESENT if action.key == "vlan_vid" else action.value
        return ("set_field", action.key, value)
    raise _Undecodable(f"action {action!r}")


def _decode_entry(entry: object) -> FlowSpec:
    match = []
    for name, value in entry.match.items():
        if name not in _MATCH_FIELDS:
            raise _Undecodable(f"match field {name}")
        match.append((name, _decode_match(name, value)))
    meter = goto = None
    actions: list[tuple] = []
    for inst in entry.instructions:
        if inst.type == _OFPIT_METER:
            meter = inst.meter_id
        elif inst.type == _OFPIT_APPLY_ACTIONS:
            actions.extend(_decode_action(action) for action in inst.actions)
        elif inst.type == _OFPIT_GOTO_TABLE:
            goto = inst.table_id
        else:
            raise _Undecodable(f"instruction type {inst.type}")
    try:
        return FlowSpec(
            entry.table_id, entry.priority, tuple(sorted(match)), tuple(actions), goto, entry.cookie, meter
        )
    except ValueError as exc:
        raise _Undecodable(str(exc)) from None


def decode_flow_stats(body: Iterable[object]) -> list[FlowStats]:
    """os-ken's parsed flow stats entries (``OFPFlowStats``) → FlowStats, in the switch's order.

    Entries that no FlowSpec can describe (masked matches, fields or actions ryu-nsm never uses,
    tables outside the pipeline) are left out: with a warning when the cookie is ours, quietly when
    it is someone else's. Others' flows that do fit a FlowSpec are returned; filter them with
    ``flowspec.is_ours``.
    """
    out = []
    for entry in body:
        if isinstance(entry, RawFlowStats):  # os-ken told to leave flow stats raw (flow_read)
            entry = _parser.OFPFlowStats.parser(entry.buf, 0)
        try:
            spec = _decode_entry(entry)
        except _Undecodable as exc:
            log = LOG.warning if is_ours(entry.cookie) else LOG.debug
            log("flow cookie=%#x table=%d priority=%d left out: %s",
                entry.cookie, entry.table_id, entry.priority, exc)
            continue
        duration = entry.duration_sec + entry.duration_nsec / 1e9
        out.append(FlowStats(spec, entry.packet_count, entry.byte_count, duration))
    return out
