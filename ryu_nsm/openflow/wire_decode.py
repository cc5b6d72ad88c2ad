"""One raw flow stats entry straight into a FlowSpec with ``struct``: the decode of a read that misses.

After a restart ``FlowReader`` has seen nothing, and os-ken's parse (~200 µs a flow) plus the decode
of its objects (~90 µs) made the first read of 177,000 flows ~50 s of CPU. This module reads an
OpenFlow 1.3 ofp_flow_stats entry itself, but only in the shapes ``wire.py`` encodes: its match
fields at their own lengths, masks where FlowSpecs have them, its instructions and actions at their
own lengths. For anything else ``decode_spec`` answers None and the caller decodes with os-ken as
before, so that what no FlowSpec describes is left out and logged as ``wire.decode_flow_stats``
does. Where it answers, the spec equals that path's (tests/test_wire_decode.py).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from functools import lru_cache

from ryu_nsm.core.flows import network_text
from ryu_nsm.core.flowspec import VID_PRESENT, FlowSpec
from ryu_nsm.openflow import wire

# ofp_flow_stats: length, table_id, (pad, duration, duration_nsec), priority, (timeouts, flags, pad),
# cookie; counters follow, then the match at 48.
_ENTRY = struct.Struct("!HB9xH10xQ")
_MATCH_AT = 48
_TYPE_LEN = struct.Struct("!HH")
_U8 = struct.Struct("!B")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_OFPMT_OXM = 1
_NX_HEAD = struct.Struct("!IH")  # experimenter (vendor), subtype: after an action's type and length
_NX_CONJUNCTION = struct.Struct("!BBI")  # clause (from 0), n_clauses, id
_NX_SAMPLE = struct.Struct("!HIII")
_NX_CT = struct.Struct("!HIHB3xH")  # flags, zone_src, zone, recirc table, alg


def _int(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def _mac(raw: bytes) -> str:
    return raw.hex(":")


@lru_cache(maxsize=1 << 14)
def _address(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


@lru_cache(maxsize=1 << 14)
def _network(raw: bytes) -> str:
    """Address and mask → FlowSpec text; as ``wire._decode_match``, the prefix length is the mask's
    count of ones."""
    half = len(raw) // 2
    network = ipaddress.IPv4Network if half == 4 else ipaddress.IPv6Network
    length = bin(_int(raw[half:])).count("1")
    return network_text(network((_int(raw[:half]), length), strict=False))


def _pair(raw: bytes) -> tuple[int, int]:
    half = len(raw) // 2
    return _int(raw[:half]), _int(raw[half:])


def _ct_state(raw: bytes) -> tuple[int, int]:
    return _int(raw), 0xFFFFFFFF


# name → (value size, decode of the value, decode of value + mask or None when never masked)
_FIELDS: dict[str, tuple[int, Callable[[bytes], object], Callable[[bytes], object] | None]] = {
    "in_port": (4, _int, None),
    "eth_dst": (6, _mac, None),
    "eth_src": (6, _mac, None),
    "eth_type": (2, _int, None),
    "vlan_vid": (2, _int, None),
    "ip_proto": (1, _int, None),
    "ipv4_src": (4, _address, _network),
    "ipv4_dst": (4, _address, _network),
    "tcp_dst": (2, _int, _pair),
    "udp_dst": (2, _int, _pair),
    "sctp_dst": (2, _int, _pair),
    "ipv6_src": (16, _address, _network),
    "ipv6_dst": (16, _address, _network),
    "icmpv6_type": (1, _int, None),
    "conj_id": (4, _int, None),
    "ct_state": (4, _ct_state, _pair),
}


def _headers() -> dict[int, tuple[str, Callable[[bytes], object]]]:
    """Every whole OXM header (class, field, mask bit, length) a FlowSpec's match can arrive in."""
    out = {}
    for name, (oxm_class, field, _) in wire._MATCH_FIELDS.items():
        size, plain, masked = _FIELDS[name]
        out[wire._oxm_header(field, size, oxm_class)] = (name, plain)
        if masked is not None:
            out[wire._oxm_header(field, 2 * size, oxm_class, True)] = (name, masked)
    return out


_HEADERS = _headers()
_SET_VLAN = wire._oxm_header(wire._SET_FIELDS["vlan_vid"][0], 2)
_SET_DSCP = wire._oxm_header(wire._SET_FIELDS["ip_dscp"][0], 1)


def _match(buf: bytes, at: int, end: int) -> list[tuple[str, object]] | None:
    match = []
    names = set()
    while at < end:
        if at + 4 > end:
            return None
        header = _U32.unpack_from(buf, at)[0]
        field = _HEADERS.get(header)
        value_end = at + 4 + (header & 0xFF)
        if field is None or value_end > end or field[0] in names:
            return None
        name, decode = field
        names.add(name)
        match.append((name, decode(buf[at + 4:value_end])))
        at = value_end
    return match


def _set_field(buf: bytes, at: int) -> tuple | None:
    header = _U32.unpack_from(buf, at + 4)[0]
    if header == _SET_VLAN:
        return ("set_field", "vlan_vid", _U16.unpack_from(buf, at + 8)[0] | VID_PRESENT)
    if header == _SET_DSCP:
        return ("set_field", "ip_dscp", buf[at + 8])
    return None


def _nicira(buf: bytes, at: int, length: int) -> tuple | None:
    """The Nicira actions ``wire._decode_nx_action`` accepts, at the lengths wire.py encodes them."""
    vendor, subtype = _NX_HEAD.unpack_from(buf, at + 4)
    if vendor != wire.NX_VENDOR_ID:
        return None
    if subtype == wire._NXAST_CONJUNCTION and length == 16:
        clause, n_clauses, conj_id = _NX_CONJUNCTION.unpack_from(buf, at + 10)
        return ("conjunction", conj_id, clause + 1, n_clauses)
    if subtype == wire._NXAST_SAMPLE and length == 24:
        return ("sample", *_NX_SAMPLE.unpack_from(buf, at + 10))
    if subtype == wire._NXAST_CT and length == 24:
        flags, zone_src, zone, table, alg = _NX_CT.unpack_from(buf, at + 10)
        if zone_src or alg:
            return None
        if flags == wire._NX_CT_F_COMMIT and table == wire._NX_CT_RECIRC_NONE:
            return ("ct_commit", zone)
        if flags == 0 and table != wire._NX_CT_RECIRC_NONE:
            return ("ct", zone, table)
    return None


def _action(buf: bytes, at: int, kind: int, length: int) -> tuple | None:
    if kind == wire._OFPAT_OUTPUT:
        return ("output", _U32.unpack_from(buf, at + 4)[0]) if length == 16 else None
    if kind == wire._OFPAT_SET_FIELD:
        return _set_field(buf, at) if length == 16 else None
    if kind == wire._OFPAT_EXPERIMENTER:
        return _nicira(buf, at, length) if length >= 16 else None
    if length != 8:
        return None
    if kind == wire._OFPAT_PUSH_VLAN:
        return ("push_vlan", _U16.unpack_from(buf, at + 4)[0])
    if kind == wire._OFPAT_POP_VLAN:
        return ("pop_vlan",)
    if kind == wire._OFPAT_GROUP:
        return ("group", _U32.unpack_from(buf, at + 4)[0])
    if kind == wire._OFPAT_SET_QUEUE:
        return ("set_queue", _U32.unpack_from(buf, at + 4)[0])
    return None


def _actions(buf: bytes, at: int, end: int, out: list[tuple]) -> bool:
    while at < end:
        if at + 8 > end:
            return False
        kind, length = _TYPE_LEN.unpack_from(buf, at)
        action = _action(buf, at, kind, length) if at + length <= end else None
        if action is None:
            return False
        out.append(action)
        at += length
    return True


def decode_spec(buf: bytes) -> FlowSpec | None:
    """The FlowSpec of one ofp_flow_stats entry (exactly its bytes), or None when the entry is not in
    the shapes wire.py encodes: then decode it with ``wire.decode_flow_stats``."""
    size = len(buf)
    if size < _MATCH_AT + 8:
        return None
    length, table, priority, cookie = _ENTRY.unpack_from(buf)
    match_type, match_length = _TYPE_LEN.unpack_from(buf, _MATCH_AT)
    at = _MATCH_AT + match_length + -match_length % 8  # instructions start after the padded match
    if length != size or match_type != _OFPMT_OXM or match_length < 4 or at > size:
        return None
    match = _match(buf, _MATCH_AT + 4, _MATCH_AT + match_length)
    if match is None:
        return None
    meter = goto = None
    actions: list[tuple] = []
    while at < size:
        if at + 8 > size:
            return None
        kind, length = _TYPE_LEN.unpack_from(buf, at)
        if kind == wire._OFPIT_METER and length == 8:
            meter = _U32.unpack_from(buf, at + 4)[0]
        elif kind == wire._OFPIT_GOTO_TABLE and length == 8:
            goto = _U8.unpack_from(buf, at + 4)[0]
        elif not (kind == wire._OFPIT_APPLY_ACTIONS and 8 <= length <= size - at
                  and _actions(buf, at + 8, at + length, actions)):
            return None
        at += length
    try:
        return FlowSpec.on_sorted(table, priority, tuple(sorted(match)), tuple(actions), goto, cookie, meter)
    except ValueError:  # not a flow of the pipeline: the os-ken path words why
        return None
