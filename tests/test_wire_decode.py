"""wire_decode against the os-ken path: the same FlowSpec wherever it answers, os-ken's words elsewhere.

``decode_spec`` reads a raw flow stats entry with ``struct``; ``wire.decode_flow_stats`` parses it with
os-ken first. For the entries ryu-nsm writes the fast path must answer, and equal; for entries built
from foreign parts, or mutated bytes, it may decline, but whatever it answers must be what the os-ken
path gives. ``FlowReader`` uses it on a miss and still leaves out, and logs, what os-ken's path does.
"""

from __future__ import annotations

import logging
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from ryu_nsm.core.flowspec import PIPELINE_COOKIE, FlowSpec, wire_cookie
from ryu_nsm.openflow import wire
from ryu_nsm.openflow.flow_read import FlowReader
from ryu_nsm.openflow.wire_decode import decode_spec
from tests.test_ofwire import ACTIONS, ALL_ONES_64, flow_specs, stats_bytes, undecodable_entries


def raw_of(spec: FlowSpec, packets: int = 0, byte_count: int = 0) -> bytes:
    return stats_bytes(wire.encode_flow_mod(spec, wire.OFPFC_ADD), packets, byte_count)


def osken_specs(buf: bytes) -> list[FlowSpec]:
    return [stats.spec for stats in wire.decode_flow_stats([wire.RawFlowStats(buf)])]


def answers_as_osken(buf: bytes) -> bool:
    """Whatever the fast path answers is what the os-ken path gives; True when it answered."""
    spec = decode_spec(buf)
    if spec is not None:
        assert osken_specs(buf) == [spec]
    return spec is not None


@settings(max_examples=500)
@given(flow_specs())
def test_every_spec_decodes_straight_from_its_bytes(spec: FlowSpec) -> None:
    buf = raw_of(spec)
    assert decode_spec(buf) == spec
    assert osken_specs(buf) == [spec]


def test_mac_case_and_the_vlan_present_bit_as_the_osken_path() -> None:
    match = parser.OFPMatch(in_port=1, eth_dst="AA:BB:CC:DD:EE:0F")
    set_vlan = parser.OFPActionSetField(vlan_vid=5)  # a switch that leaves VID_PRESENT out
    buf = osken_entry(0, 9, PIPELINE_COOKIE, match,
                      [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, [set_vlan])])
    assert decode_spec(buf) == FlowSpec.make(0, 9, {"in_port": 1, "eth_dst": "aa:bb:cc:dd:ee:0f"},
                                             [("set_field", "vlan_vid", 0x1005)])
    assert answers_as_osken(buf)


# ---- mutated bytes: a flip, a cut or an insertion anywhere, the entry's length then kept or fixed

mutations = st.lists(st.tuples(st.sampled_from(["set", "cut", "insert"]), st.integers(0, 400),
                               st.binary(min_size=1, max_size=8)), min_size=1, max_size=3)


@settings(max_examples=1000)
@given(flow_specs(), mutations, st.booleans())
def test_mutated_entries_decode_as_osken_or_not_at_all(spec: FlowSpec, changes: list, fix_length: bool
                                                        ) -> None:
    buf = bytearray(raw_of(spec))
    for kind, at, data in changes:
        at %= len(buf) + 1
        if kind == "set":
            buf[at:at + len(data)] = data[:len(buf) - at]
        elif kind == "cut":
            del buf[at:]
        else:
            buf[at:at] = data
    if fix_length and len(buf) >= 2:
        buf[0:2] = struct.pack("!H", len(buf) & 0xFFFF)
    answers_as_osken(bytes(buf))


# ---- entries built from parts, ours and not: fields, masks, lengths, instructions and actions

def oxm(oxm_class: int, field: int, masked: bool, payload: bytes) -> bytes:
    return struct.pack("!I", oxm_class << 16 | field << 9 | masked << 8 | len(payload)) + payload


# (OXM class, field, value size) of every field a FlowSpec matches (OpenFlow 1.3, Open vSwitch's NXM_NX_),
# then of some it never does
KNOWN = [(0x8000, 0, 4), (0x8000, 3, 6), (0x8000, 4, 6), (0x8000, 5, 2), (0x8000, 6, 2), (0x8000, 10, 1),
         (0x8000, 11, 4), (0x8000, 12, 4), (0x8000, 14, 2), (0x8000, 16, 2), (0x8000, 18, 2),
         (0x8000, 26, 16), (0x8000, 27, 16), (0x8000, 29, 1), (0x0001, 37, 4), (0x0001, 105, 4)]
OTHERS = [(0x8000, 1, 4), (0x8000, 2, 8), (0x8000, 7, 1), (0x8000, 8, 1), (0x8000, 13, 2), (0x8000, 15, 2),
          (0x8000, 17, 2), (0x0001, 106, 2), (0x0000, 1, 6)]


@st.composite
def oxms(draw: st.DrawFn) -> bytes:
    oxm_class, field, size = draw(st.sampled_from(KNOWN + OTHERS))
    masked = draw(st.booleans())
    size = draw(st.sampled_from([size, size, size, max(0, size - 1), size + 1]))
    return oxm(oxm_class, field, masked, draw(st.binary(min_size=size * (1 + masked),
                                                        max_size=size * (1 + masked))))


def headed(kind: int, length: int) -> st.SearchStrategy[bytes]:
    """An action of ``kind`` and ``length`` with any body."""
    head = struct.pack("!HH", kind, length)
    return st.binary(min_size=length - 4, max_size=length - 4).map(lambda body: head + body)


def nicira(vendor: int, subtype: int, body: bytes) -> bytes:
    return struct.pack("!HHIH", 0xFFFF, 10 + len(body), vendor, subtype) + body


# flags, zone source, zone, table, algorithm: ours and the shapes wire._decode_nx_action refuses
ct_actions = st.tuples(st.sampled_from([0, 1, 2]), st.sampled_from([0, 0x80010000]),
                       st.integers(0, 0xFFFF), st.sampled_from([0, 3, 255]), st.sampled_from([0, 21]),
                       ).map(lambda v: wire._NX_CT.pack(0xFFFF, 24, wire.NX_VENDOR_ID, wire._NXAST_CT, *v))
set_fields = st.tuples(st.sampled_from([(6, 2), (8, 1), (3, 6), (13, 2)]), st.booleans()).map(
    lambda v: oxm(0x8000, v[0][0], v[1], bytes(v[0][1] * (1 + v[1])))).map(
    lambda field: struct.pack("!HH", 25, 16) + field.ljust(12, b"\0"))
other_actions = st.one_of(
    st.tuples(st.sampled_from([0, 11, 15, 16, 17, 18, 19, 22, 23, 25, 26, 0xFFFF]),
              st.sampled_from([8, 16, 24])).flatmap(lambda h: headed(*h)),
    st.builds(nicira, st.sampled_from([wire.NX_VENDOR_ID, 0x4F4E4600]), st.sampled_from([29, 34, 35, 38, 41]),
              st.binary(min_size=6, max_size=14)),
    set_fields,
    ct_actions,
    ct_actions,
)
action_blobs = st.one_of(st.sampled_from(sorted(ACTIONS)).flatmap(ACTIONS.__getitem__).map(wire._action_blob),
                         other_actions)


@st.composite
def instructions(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from([1, 2, 3, 4, 4, 4, 5, 6, 7]))
    if kind in (3, 4, 5):
        actions = b"".join(draw(st.lists(action_blobs, max_size=4)))
        return struct.pack("!HH4x", kind, 8 + len(actions)) + actions
    size = 24 if kind == 2 else 8
    return struct.pack("!HH", kind, size) + draw(st.binary(min_size=size - 4, max_size=size - 4))


def entry(table: int, priority: int, cookie: int, fields: list[bytes], insts: list[bytes],
          match_type: int = 1, match_slack: int = 0) -> bytes:
    oxms = b"".join(fields)
    length = 4 + len(oxms)
    match = struct.pack("!HH", match_type, max(0, length + match_slack)) + oxms + bytes(-length % 8)
    tail = match + b"".join(insts)
    return struct.pack(ofp.OFP_FLOW_STATS_0_PACK_STR, 48 + len(tail), table, 1, 2, priority, 0, 0, 0, cookie,
                       3, 4) + tail


@st.composite
def foreign_entries(draw: st.DrawFn) -> bytes:
    """Any parts, in any table."""
    cookie = draw(st.sampled_from([wire_cookie("ours"), 0x1234, draw(st.integers(0, ALL_ONES_64))]))
    fields, insts = draw(st.lists(oxms(), max_size=5)), draw(st.lists(instructions(), max_size=4))
    return entry(draw(st.integers(0, 6)), draw(st.integers(0, 0xFFFF)), cookie, fields, insts,
                 draw(st.sampled_from([1, 1, 1, 0])), draw(st.sampled_from([0, 0, 0, -4, -1, 1, 8])))


@st.composite
def spliced_entries(draw: st.DrawFn) -> bytes:
    """A spec's parts in any order, duplicated or not, and maybe one foreign part among them."""
    spec = draw(flow_specs())
    fields = draw(st.permutations([wire._match_oxm(name, value) for name, value in spec.match]))
    actions = [wire._action_blob(action) for action in spec.actions]
    insts = [wire._instructions_blob(spec.meter, (), None), wire._instructions_blob(None, (), spec.goto)]
    if actions and draw(st.booleans()):  # split over two apply-actions
        cut = draw(st.integers(0, len(actions)))
        insts += [wire._instructions_blob(None, tuple(spec.actions[:cut]), None),
                  wire._instructions_blob(None, tuple(spec.actions[cut:]), None)]
    else:
        insts.append(wire._instructions_blob(None, spec.actions, None))
    insts = draw(st.permutations([inst for inst in insts if inst]))
    foreign = draw(st.sampled_from(["none", "field", "instruction", "action", "action", "copy"]))
    if foreign == "field":
        fields.insert(draw(st.integers(0, len(fields))), draw(oxms()))
    elif foreign == "instruction":
        insts.insert(draw(st.integers(0, len(insts))), draw(instructions()))
    elif foreign == "action":
        extra = draw(other_actions)
        insts.append(struct.pack("!HH4x", 4, 8 + len(extra)) + extra)
    elif foreign == "copy" and fields:
        fields.append(fields[0])
    return entry(spec.table, spec.priority, spec.cookie, fields, insts)


@settings(max_examples=2000)
@given(st.one_of(spliced_entries(), foreign_entries()))
def test_entries_built_from_parts_decode_as_osken_or_not_at_all(buf: bytes) -> None:
    answers_as_osken(buf)


# ---- what no FlowSpec describes: declined here, left out and logged by the os-ken path as before

def osken_entry(table: int, priority: int, cookie: int, match: parser.OFPMatch, insts: list) -> bytes:
    body = bytearray()
    match.serialize(body, 0)
    for inst in insts:
        inst.serialize(body, len(body))
    return struct.pack(ofp.OFP_FLOW_STATS_0_PACK_STR, 48 + len(body), table, 0, 0, priority, 0, 0, 0, cookie,
                       0, 0) + bytes(body)


def raw_undecodable(cookie: int) -> list[wire.RawFlowStats]:
    return [wire.RawFlowStats(osken_entry(e.table_id, e.priority, e.cookie, e.match, e.instructions))
            for e in undecodable_entries(cookie)]


@pytest.mark.parametrize("cookie", [wire_cookie("mine"), 0x1234])
def test_undecodable_entries_are_declined_and_the_reader_logs_as_before(
        cookie: int, caplog: pytest.LogCaptureFixture) -> None:
    entries = raw_undecodable(cookie)
    assert [decode_spec(entry.buf) for entry in entries] == [None] * len(entries)
    with caplog.at_level(logging.DEBUG, logger="ryu_nsm.openflow.wire"):
        assert wire.decode_flow_stats(undecodable_entries(cookie)) == []
        before = [(r.levelno, r.getMessage()) for r in caplog.records]
        caplog.clear()
        assert FlowReader().read(1, entries, whole=True) == []
        assert [(r.levelno, r.getMessage()) for r in caplog.records] == before
    warnings = [level for level, _ in before if level == logging.WARNING]
    assert len(warnings) == (0 if cookie == 0x1234 else len(entries))


@settings(max_examples=50)
@given(st.lists(st.tuples(flow_specs(), st.integers(0, ALL_ONES_64)), max_size=8))
def test_a_cold_reader_gives_what_the_osken_path_gives(flows: list) -> None:
    entries = [wire.RawFlowStats(raw_of(spec, packets, 7)) for spec, packets in flows]
    entries += raw_undecodable(0x1234)
    assert FlowReader().read(1, entries, whole=True) == wire.decode_flow_stats(entries)


def test_a_whole_read_that_finds_the_last_one_hands_back_its_very_list() -> None:
    # The core tells an unchanged switch by identity (SwitchManager.flows_read): the reader may hand
    # back the last whole read's list only while every entry is one of that read's and nothing
    # joined what it has seen since (a seed for a flow just sent, a counter read's new entry).
    cookie = wire_cookie("c")

    def flow(port: int) -> FlowSpec:
        match = {"in_port": port, "vlan_vid": 0x1000 | port}
        return FlowSpec.make(1, 1000, match, [("output", 9)], cookie=cookie)

    def entries(flows: list[FlowSpec], packets: int = 0) -> list[wire.RawFlowStats]:
        return [wire.RawFlowStats(raw_of(spec, packets, packets * 60)) for spec in flows]

    specs, sent, counted = [flow(port) for port in range(1, 4)], flow(7), flow(8)
    reader = FlowReader()
    first = reader.specs(1, entries(specs))
    assert first == specs
    assert reader.specs(1, entries(specs, packets=5)) is first  # counters and age are not the flow
    assert reader.specs(2, entries(specs)) is not first  # another switch
    reader.expect(1, wire.encode_flow_mod(sent, wire.OFPFC_ADD), sent)
    # Every entry is known (one as the seed), as many as are known: still not the last read.
    with_sent = reader.specs(1, entries([*specs, sent]))
    assert with_sent == [*specs, sent]
    assert reader.specs(1, entries([*specs, sent])) is with_sent
    assert reader.read(1, entries([counted]), whole=False)[0].spec == counted  # a counter read's new one
    with_counted = reader.specs(1, entries([*specs, sent, counted]))
    assert with_counted == [*specs, sent, counted]
    fewer = reader.specs(1, entries(specs))
    assert fewer == specs and fewer is not first


@settings(max_examples=60)
@given(st.lists(st.lists(st.integers(0, 9), unique=True), min_size=1, max_size=6), st.booleans())
def test_each_whole_read_says_what_it_found_that_the_last_did_not(reads: list, undecodable: bool) -> None:
    # The core applies only a read's added and gone to its copy of the last read (switch_reads.py):
    # together with that read's flows they must give exactly this read's, whatever came and went.
    pool = [FlowSpec.make(1, 1000, {"in_port": port, "vlan_vid": 0x1000 | port}, [("output", 9)],
                          cookie=wire_cookie(f"c{port % 3}")) for port in range(1, 11)]
    extra = raw_undecodable(0x1234)[:1] if undecodable else []
    reader, last = FlowReader(), None
    for chosen in reads:
        read = reader.specs(1, [wire.RawFlowStats(raw_of(pool[i], 0, 0)) for i in chosen] + extra)
        assert sorted(pool.index(spec) for spec in read) == sorted(chosen)
        if last is not None and read is not last:
            assert read.since == last.serial and read.serial != last.serial
            kept = {id(spec) for spec in last} - {id(spec) for spec in read.gone}
            assert kept | {id(spec) for spec in read.added} == {id(spec) for spec in read}
            assert len(kept) + len(read.added) == len(read)
        last = read  # the last read itself when only the order changed
