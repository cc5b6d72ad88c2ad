"""IPFIX (RFC 7011) messages as Open vSwitch exports them: templates and data records, decoded.

Pure: bytes in, records out. A ``TemplateCache`` keeps the templates of each observation domain
(RFC 7011 scopes template ids by domain); a data set whose template is not known yet is counted
and skipped, as the RFC asks. Values of the information elements ryu-nsm reads (``ELEMENTS``) are
decoded to ints, MAC and IP address strings; others stay bytes, named by their id.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

VERSION = 10
_HEADER = struct.Struct("!HHIII")
_SET = struct.Struct("!HH")
TEMPLATE_SET, OPTIONS_TEMPLATE_SET, FIRST_DATA_SET = 2, 3, 256
VARIABLE = 0xFFFF


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _ip(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


def _uint(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


# IANA information elements ryu-nsm reads (id → name, decoder); all unsigned unless they are addresses.
ELEMENTS = {
    4: ("protocolIdentifier", _uint), 6: ("tcpControlBits", _uint), 7: ("sourceTransportPort", _uint),
    8: ("sourceIPv4Address", _ip), 10: ("ingressInterface", _uint), 11: ("destinationTransportPort", _uint),
    12: ("destinationIPv4Address", _ip), 27: ("sourceIPv6Address", _ip), 28: ("destinationIPv6Address", _ip),
    32: ("icmpTypeCodeIPv4", _uint), 56: ("sourceMacAddress", _mac), 60: ("ipVersion", _uint),
    80: ("destinationMacAddress", _mac), 138: ("observationPointId", _uint), 139: ("icmpTypeCodeIPv6", _uint),
    176: ("icmpTypeIPv4", _uint), 177: ("icmpCodeIPv4", _uint), 178: ("icmpTypeIPv6", _uint),
    179: ("icmpCodeIPv6", _uint), 256: ("ethernetType", _uint),
}


class IpfixError(ValueError):
    """A message that is not IPFIX, or whose sets or records do not add up."""


@dataclass(frozen=True)
class FieldSpec:
    element: int  # the IE id, enterprise bit cleared
    length: int  # VARIABLE for variable-length fields
    enterprise: int = 0


@dataclass(frozen=True)
class Message:
    """One export message: its header, and the data records decoded with known templates."""

    export_time: int
    sequence: int
    domain: int
    records: tuple[dict, ...]
    unknown_sets: int = 0  # data sets skipped: their template has not been seen yet


@dataclass
class TemplateCache:
    """Templates seen, by (observation domain, template id)."""

    templates: dict[tuple[int, int], tuple[FieldSpec, ...]] = field(default_factory=dict)


def decode(data: bytes, cache: TemplateCache) -> Message:
    """One IPFIX message; templates it carries go into ``cache`` before its data sets are read."""
    if len(data) < _HEADER.size:
        raise IpfixError("shorter than an IPFIX header")
    version, length, export_time, sequence, domain = _HEADER.unpack_from(data)
    if version != VERSION:
        raise IpfixError(f"version {version}, not IPFIX ({VERSION})")
    if length != len(data):
        raise IpfixError(f"header says {length} bytes, datagram has {len(data)}")
    records: list[dict] = []
    unknown = 0
    offset = _HEADER.size
    while offset < length:
        if offset + _SET.size > length:
            raise IpfixError("truncated set header")
        set_id, set_length = _SET.unpack_from(data, offset)
        if set_length < _SET.size or offset + set_length > length:
            raise IpfixError(f"set {set_id} of length {set_length} does not fit")
        body = data[offset + _SET.size:offset + set_length]
        if set_id == TEMPLATE_SET:
            _read_templates(body, domain, cache, options=False)
        elif set_id == OPTIONS_TEMPLATE_SET:
            _read_templates(body, domain, cache, options=True)
        elif set_id >= FIRST_DATA_SET:
            template = cache.templates.get((domain, set_id))
            if template is None:
                unknown += 1
            else:
                records += _read_data(body, template)
        offset += set_length
    return Message(export_time, sequence, domain, tuple(records), unknown)


def _read_templates(body: bytes, domain: int, cache: TemplateCache, options: bool) -> None:
    offset = 0
    head = 6 if options else 4
    while offset + head <= len(body):
        template_id, count = struct.unpack_from("!HH", body, offset)
        offset += head
        if template_id < FIRST_DATA_SET:  # padding, or a withdrawal's id 2/3
            return
        fields = []
        for _ in range(count):
            if offset + 4 > len(body):
                raise IpfixError(f"template {template_id} truncated")
            element, flen = struct.unpack_from("!HH", body, offset)
            offset += 4
            enterprise = 0
            if element & 0x8000:
                if offset + 4 > len(body):
                    raise IpfixError(f"template {template_id} truncated")
                enterprise = struct.unpack_from("!I", body, offset)[0]
                offset += 4
            fields.append(FieldSpec(element & 0x7FFF, flen, enterprise))
        if count == 0:  # a withdrawal
            cache.templates.pop((domain, template_id), None)
        else:
            cache.templates[(domain, template_id)] = tuple(fields)


def _read_data(body: bytes, template: tuple[FieldSpec, ...]) -> list[dict]:
    """The records of one data set; what is left shorter than a record is padding."""
    records = []
    minimum = sum(1 if f.length == VARIABLE else f.length for f in template)
    offset = 0
    while len(body) - offset >= minimum and minimum:
        record: dict = {}
        for spec in template:
            flen = spec.length
            if flen == VARIABLE:
                flen = body[offset]
                offset += 1
                if flen == 255:
                    flen = struct.unpack_from("!H", body, offset)[0]
                    offset += 2
            raw = body[offset:offset + flen]
            if len(raw) != flen:
                raise IpfixError("data record truncated")
            offset += flen
            known = ELEMENTS.get(spec.element) if spec.enterprise == 0 else None
            if known is None:
                record[(spec.enterprise, spec.element)] = raw
            else:
                record[known[0]] = known[1](raw)
        records.append(record)
    return records
