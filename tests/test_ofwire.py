"""ofwire's hand-packed bytes against os-ken's own serialiser, and flow stats decoding.

os-ken builds each message from objects; ofwire packs it with ``struct``. For every valid spec
both must give the same bytes, and os-ken's parse of those bytes must decode back to the spec.
"""

from __future__ import annotations

import ipaddress
import logging
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from os_ken.ofproto import ofproto_common, ofproto_protocol
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from ryu_nsm.core.flows import network_text
from ryu_nsm.core.flowspec import (
    COOKIE_OWNER_MASK,
    PIPELINE,
    PIPELINE_COOKIE,
    VID_PRESENT,
    FlowSpec,
    GroupSpec,
    MeterSpec,
    Table,
    wire_cookie,
)
from ryu_nsm.openflow import wire as ofwire

DP = ofproto_protocol.ProtocolDesc(ofp.OFP_VERSION)
ALL_ONES_64 = 2**64 - 1

# ---- strategies: valid FlowSpecs for every table of the pipeline

ports = st.one_of(
    st.integers(1, ofp.OFPP_MAX),
    st.sampled_from([ofp.OFPP_CONTROLLER, ofp.OFPP_IN_PORT, ofp.OFPP_LOCAL, ofp.OFPP_FLOOD]),
)
macs = st.binary(min_size=6, max_size=6).map(lambda raw: ":".join(f"{b:02x}" for b in raw))
vids = st.integers(0, 4095).map(lambda vid: VID_PRESENT | vid)
MATCH_VALUES = {
    "in_port": ports,
    "vlan_vid": st.one_of(st.just(0), vids),
    "eth_type": st.integers(0, 0xFFFF),
    "eth_src": macs,
    "eth_dst": macs,
    "ip_proto": st.integers(0, 255),
    "icmpv6_type": st.integers(0, 255),
    "conj_id": st.integers(0, 2**32 - 1),
    "ct_state": st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)).map(
        lambda v: (v[0] & v[1], v[1])),
}


def _networks(version: int) -> st.SearchStrategy[str]:
    bits = 32 if version == 4 else 128
    return st.tuples(st.integers(0, 2**bits - 1), st.integers(0, bits)).map(
        lambda a: network_text((ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network)(
            (a[0], a[1]), strict=False)))


for _side in ("src", "dst"):
    MATCH_VALUES[f"ipv4_{_side}"] = _networks(4)
    MATCH_VALUES[f"ipv6_{_side}"] = _networks(6)
for _name in ("tcp_dst", "udp_dst", "sctp_dst"):
    # A masked value has no bits outside its mask (OpenFlow refuses it; os-ken clears them).
    MATCH_VALUES[_name] = st.one_of(st.integers(0, 0xFFFF), st.tuples(st.integers(0, 0xFFFF), st.integers(
        0, 0xFFFF)).map(lambda v: (v[0] & v[1], v[1])))
ACTIONS = {
    "output": ports.map(lambda port: ("output", port)),
    "push_vlan": st.sampled_from([0x8100, 0x88A8]).map(lambda et: ("push_vlan", et)),
    "pop_vlan": st.just(("pop_vlan",)),
    "set_field": st.one_of(
        vids.map(lambda v: ("set_field", "vlan_vid", v)),
        st.integers(0, 63).map(lambda v: ("set_field", "ip_dscp", v)),
    ),
    "group": st.integers(0, ofp.OFPG_MAX).map(lambda g: ("group", g)),
    "set_queue": st.integers(0, 0xFFFFFFFE).map(lambda q: ("set_queue", q)),
    "ct": st.tuples(st.integers(0, 0xFFFF), st.integers(0, 254)).map(lambda z: ("ct", *z)),
    "ct_commit": st.integers(0, 0xFFFF).map(lambda z: ("ct_commit", z)),
    "conjunction": st.integers(2, 64).flatmap(lambda n: st.tuples(
        st.integers(0, 2**32 - 1), st.integers(1, n), st.just(n))).map(lambda c: ("conjunction", *c)),
    "sample": st.tuples(st.integers(1, 0xFFFF), *[st.integers(0, 2**32 - 1)] * 3).map(
        lambda s: ("sample", *s)),
}


@st.composite
def flow_specs(draw: st.DrawFn) -> FlowSpec:
    table = draw(st.sampled_from(list(Table)))
    rule = PIPELINE[table]
    fields = draw(st.sets(st.sampled_from(sorted(rule.match_fields))))
    match = {name: draw(MATCH_VALUES[name]) for name in fields}
    actions = draw(st.lists(st.sampled_from(sorted(rule.actions)).flatmap(ACTIONS.__getitem__), max_size=5))
    goto = draw(st.one_of(st.none(), st.sampled_from(sorted(rule.may_goto)))) if rule.may_goto else None
    return FlowSpec.make(
        table,
        draw(st.integers(0, 0xFFFF)),
        match,
        actions,
        goto=goto,
        cookie=draw(st.integers(0, ALL_ONES_64)),
        meter=draw(st.one_of(st.none(), st.integers(1, ofp.OFPM_MAX))),
    )


# ---- reference: the same messages built from os-ken objects


def osken_action(action: tuple) -> parser.OFPAction:
    kind = action[0]
    if kind == "output":
        max_len = ofp.OFPCML_NO_BUFFER if action[1] == ofp.OFPP_CONTROLLER else 0
        return parser.OFPActionOutput(action[1], max_len)
    if kind == "push_vlan":
        return parser.OFPActionPushVlan(action[1])
    if kind == "pop_vlan":
        return parser.OFPActionPopVlan()
    if kind == "group":
        return parser.OFPActionGroup(action[1])
    if kind == "set_queue":
        return parser.OFPActionSetQueue(action[1])
    if kind == "ct":
        return parser.NXActionCT(0, "", action[1], action[2], 0, [])
    if kind == "ct_commit":
        return parser.NXActionCT(1, "", action[1], 255, 0, [])
    if kind == "conjunction":
        return parser.NXActionConjunction(action[2] - 1, action[3], action[1])
    if kind == "sample":
        return parser.NXActionSample(*action[1:])
    _, name, value = action
    if name == "vlan_vid":
        value |= ofp.OFPVID_PRESENT
    return parser.OFPActionSetField(**{name: value})


def osken_value(name: str, value: object) -> object:
    """A match value as os-ken takes it: addresses with a mask as (address, netmask)."""
    if name.startswith("ipv") and "/" in str(value):
        net = ipaddress.ip_network(value)
        return (str(net.network_address), str(net.netmask))
    return value


def osken_instructions(spec: FlowSpec) -> list:
    out = []
    if spec.meter is not None:
        out.append(parser.OFPInstructionMeter(spec.meter, ofp.OFPIT_METER))
    if spec.actions:
        actions = [osken_action(a) for a in spec.actions]
        out.append(parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions))
    if spec.goto is not None:
        out.append(parser.OFPInstructionGotoTable(spec.goto))
    return out


def osken_flow_mod(spec: FlowSpec, command: int, xid: int) -> parser.OFPFlowMod:
    add = command == ofp.OFPFC_ADD
    msg = parser.OFPFlowMod(
        DP,
        cookie=spec.cookie,
        cookie_mask=0 if add else ALL_ONES_64,
        table_id=spec.table,
        command=command,
        idle_timeout=0,
        hard_timeout=0,
        priority=spec.priority,
        buffer_id=ofp.OFP_NO_BUFFER,
        out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY,
        flags=0,
        match=parser.OFPMatch(**{name: osken_value(name, value) for name, value in spec.match}),
        instructions=osken_instructions(spec) if add else [],
    )
    msg.set_xid(xid)
    return msg


def serialised(msg: parser.MsgBase) -> bytes:
    msg.serialize()
    return bytes(msg.buf)


# ---- encoding


@settings(max_examples=400)
@given(flow_specs(), st.integers(0, 2**32 - 1))
def test_flow_mod_add_is_byte_identical_to_osken(spec: FlowSpec, xid: int) -> None:
    assert ofwire.encode_flow_mod(spec, ofwire.OFPFC_ADD, xid) == serialised(
        osken_flow_mod(spec, ofp.OFPFC_ADD, xid)
    )


@settings(max_examples=200)
@given(flow_specs(), st.integers(0, 2**32 - 1))
def test_flow_mod_delete_strict_is_byte_identical_to_osken(spec: FlowSpec, xid: int) -> None:
    assert ofwire.encode_flow_mod(spec, ofwire.OFPFC_DELETE_STRICT, xid) == serialised(
        osken_flow_mod(spec, ofp.OFPFC_DELETE_STRICT, xid)
    )


def test_encoding_a_spec_twice_gives_the_same_bytes_from_the_cache() -> None:
    spec = FlowSpec.make(Table.FORWARD, 1000, {"in_port": 3, "vlan_vid": VID_PRESENT | 7},
                         [("set_field", "vlan_vid", VID_PRESENT | 9), ("output", 4)], cookie=wire_cookie("c"))
    first = ofwire.encode_flow_mod(spec, ofwire.OFPFC_ADD, 1)
    assert ofwire.encode_flow_mod(spec, ofwire.OFPFC_ADD, 1) == first
    assert ofwire.encode_flow_mod(spec, ofwire.OFPFC_ADD, 2) == first[:4] + struct.pack("!I", 2) + first[8:]


def test_other_commands_and_bad_values_are_refused() -> None:
    spec = FlowSpec.make(Table.FORWARD, 1, {"in_port": 1})
    with pytest.raises(ValueError, match="ADD and DELETE_STRICT"):
        ofwire.encode_flow_mod(spec, ofp.OFPFC_MODIFY)
    untagged_without_present_bit = FlowSpec.make(Table.FORWARD, 1, {"vlan_vid": 5})
    with pytest.raises(ValueError, match="VID_PRESENT"):
        ofwire.encode_flow_mod(untagged_without_present_bit, ofwire.OFPFC_ADD)
    with pytest.raises(ValueError, match="in_port"):
        ofwire.encode_flow_mod(FlowSpec.make(Table.FORWARD, 1, {"in_port": -1}), ofwire.OFPFC_ADD)


cookies = st.integers(0, ALL_ONES_64)
xids = st.integers(0, 2**32 - 1)


@given(cookies, cookies, st.integers(0, 0xFF), xids)
def test_delete_by_cookie_is_byte_identical_to_osken(cookie: int, mask: int, table: int, xid: int) -> None:
    msg = parser.OFPFlowMod(
        DP, cookie=cookie, cookie_mask=mask, table_id=table, command=ofp.OFPFC_DELETE, priority=0,
        buffer_id=ofp.OFP_NO_BUFFER, out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY, match=parser.OFPMatch(),
    )
    msg.set_xid(xid)
    assert ofwire.encode_delete_by_cookie(cookie, mask, table, xid) == serialised(msg)


def test_delete_by_cookie_defaults_to_all_tables() -> None:
    assert ofwire.encode_delete_by_cookie(PIPELINE_COOKIE, COOKIE_OWNER_MASK)[24] == ofp.OFPTT_ALL


@given(st.integers(0, 2**32 - 1))
def test_barrier_is_byte_identical_to_osken(xid: int) -> None:
    msg = parser.OFPBarrierRequest(DP)
    msg.set_xid(xid)
    assert ofwire.encode_barrier(xid) == serialised(msg)


@given(st.integers(0, 2**32 - 1), st.integers(0, ALL_ONES_64), st.integers(0, ALL_ONES_64))
def test_flow_stats_request_is_byte_identical_to_osken(xid: int, cookie: int, mask: int) -> None:
    msg = parser.OFPFlowStatsRequest(
        DP, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY, cookie, mask, parser.OFPMatch()
    )
    msg.set_xid(xid)
    assert ofwire.encode_flow_stats_request(xid, cookie, mask) == serialised(msg)


@settings(max_examples=50)
@given(
    st.integers(0, 2**32 - 1),
    st.lists(st.tuples(flow_specs(), st.integers(0, 2**32 - 1)), max_size=6),
    st.integers(0, 2**32 - 1),
)
def test_bundle_is_byte_identical_to_osken(bundle_id: int, flows: list, xid: int) -> None:
    flags = ofp.ONF_BF_ATOMIC | ofp.ONF_BF_ORDERED
    expected = serialised_ctrl(bundle_id, ofp.ONF_BCT_OPEN_REQUEST, flags, xid)
    for spec, inner_xid in flows:
        add = parser.ONFBundleAddMsg(DP, bundle_id, flags, osken_flow_mod(spec, ofp.OFPFC_ADD, inner_xid), [])
        add.set_xid(inner_xid)
        expected += serialised(add)
    expected += serialised_ctrl(bundle_id, ofp.ONF_BCT_COMMIT_REQUEST, flags, xid)
    messages = [ofwire.encode_flow_mod(spec, ofwire.OFPFC_ADD, inner_xid) for spec, inner_xid in flows]
    assert ofwire.encode_bundle(bundle_id, messages, xid) == expected


def serialised_ctrl(bundle_id: int, ctrl_type: int, flags: int, xid: int) -> bytes:
    msg = parser.ONFBundleCtrlMsg(DP, bundle_id, ctrl_type, flags, [])
    msg.set_xid(xid)
    return serialised(msg)


def test_bundle_constants_are_onf_ext_230() -> None:
    assert ofwire.ONF_EXPERIMENTER_ID == ofproto_common.ONF_EXPERIMENTER_ID
    assert (ofwire.ONF_ET_BUNDLE_CONTROL, ofwire.ONF_ET_BUNDLE_ADD_MESSAGE) == (
        ofp.ONF_ET_BUNDLE_CONTROL, ofp.ONF_ET_BUNDLE_ADD_MESSAGE)
    assert (ofwire.BUNDLE_OPEN_REPLY, ofwire.BUNDLE_COMMIT_REPLY) == (
        ofp.ONF_BCT_OPEN_REPLY, ofp.ONF_BCT_COMMIT_REPLY)


# ---- decoding: os-ken's parse of a flow stats entry → FlowStats


def stats_bytes(flow_mod: bytes, packets: int = 0, byte_count: int = 0) -> bytes:
    """The flow stats entry a switch would report for ``flow_mod`` (an ADD), 12.5 s after it."""
    fixed = struct.unpack_from("!BBHIQQBBHHHIIIH2x", flow_mod)
    cookie, table, priority = fixed[4], fixed[6], fixed[10]
    tail = flow_mod[48:]  # match and instructions, exactly as sent
    head = struct.pack(ofp.OFP_FLOW_STATS_0_PACK_STR, ofp.OFP_FLOW_STATS_0_SIZE + len(tail), table,
                       12, 500_000_000, priority, 0, 0, 0, cookie, packets, byte_count)
    return head + tail


def stats_entry(flow_mod: bytes, packets: int = 0, byte_count: int = 0) -> parser.OFPFlowStats:
    """os-ken's parse of ``stats_bytes``."""
    return parser.OFPFlowStats.parser(stats_bytes(flow_mod, packets, byte_count), 0)


@settings(max_examples=300)
@given(flow_specs(), st.integers(0, ALL_ONES_64), st.integers(0, ALL_ONES_64))
def test_decode_of_parsed_encoding_is_the_spec(spec: FlowSpec, packets: int, byte_count: int) -> None:
    entry = stats_entry(ofwire.encode_flow_mod(spec, ofwire.OFPFC_ADD), packets, byte_count)
    assert ofwire.decode_flow_stats([entry]) == [ofwire.FlowStats(spec, packets, byte_count, 12.5)]


def test_decode_normalises_mac_case_and_set_vlan_present_bit() -> None:
    match = parser.OFPMatch(in_port=1, eth_dst="AA:BB:CC:DD:EE:0F")
    set_vlan = parser.OFPActionSetField(vlan_vid=5)  # a switch that leaves VID_PRESENT out
    entry = parser.OFPFlowStats(
        table_id=0, duration_sec=1, duration_nsec=0, priority=9, cookie=PIPELINE_COOKIE, packet_count=0,
        byte_count=0, match=match,
        instructions=[parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, [set_vlan])],
    )
    [decoded] = ofwire.decode_flow_stats([entry])
    assert decoded.spec == FlowSpec.make(0, 9, {"in_port": 1, "eth_dst": "aa:bb:cc:dd:ee:0f"},
                                         [("set_field", "vlan_vid", VID_PRESENT | 5)], cookie=PIPELINE_COOKIE)


def undecodable_entries(cookie: int) -> list[parser.OFPFlowStats]:
    def entry(match: parser.OFPMatch, instructions: list, table: int = 0) -> parser.OFPFlowStats:
        return parser.OFPFlowStats(table_id=table, duration_sec=0, duration_nsec=0, priority=5, cookie=cookie,
                                   packet_count=0, byte_count=0, match=match, instructions=instructions)
    out = parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, [parser.OFPActionOutput(1, 0)])
    return [
        entry(parser.OFPMatch(vlan_vid=(VID_PRESENT, VID_PRESENT)), [out]),  # masked
        entry(parser.OFPMatch(ipv4_dst="10.0.0.1"), [out]),  # field outside the pipeline
        entry(parser.OFPMatch(in_port=1), [parser.OFPInstructionActions(
            ofp.OFPIT_APPLY_ACTIONS, [parser.OFPActionSetMplsTtl(5)])]),  # action ryu-nsm never uses
        entry(parser.OFPMatch(in_port=1), [parser.OFPInstructionActions(ofp.OFPIT_WRITE_ACTIONS, [])]),
        entry(parser.OFPMatch(in_port=1), [out], table=7),  # table outside the pipeline
        entry(parser.OFPMatch(eth_src="02:00:00:00:00:01"), [out], table=1),  # field not allowed in FORWARD
    ]


def test_undecodable_flows_of_ours_are_left_out_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    entries = undecodable_entries(wire_cookie("mine"))
    with caplog.at_level(logging.DEBUG, logger="ryu_nsm.openflow.wire"):
        assert ofwire.decode_flow_stats(entries) == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(entries)


def test_undecodable_foreign_flows_are_left_out_quietly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="ryu_nsm.openflow.wire"):
        assert ofwire.decode_flow_stats(undecodable_entries(0x1234)) == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_foreign_flows_that_fit_a_spec_are_returned() -> None:
    foreign = FlowSpec.make(Table.CLASSIFY, 10, {"in_port": 2}, [("output", 3)], cookie=0x1234)
    [decoded] = ofwire.decode_flow_stats([stats_entry(ofwire.encode_flow_mod(foreign, ofwire.OFPFC_ADD))])
    assert decoded.spec == foreign


# ---- meters

UINT32 = st.integers(1, 2**32 - 1)
meter_specs = st.builds(MeterSpec, st.integers(1, 0xFFFF0000), UINT32, UINT32)


@given(meter_specs, st.sampled_from([ofp.OFPMC_ADD, ofp.OFPMC_MODIFY, ofp.OFPMC_DELETE]), UINT32)
def test_meter_mod_is_byte_identical_to_osken(spec: MeterSpec, command: int, xid: int) -> None:
    if command == ofp.OFPMC_DELETE:
        msg = parser.OFPMeterMod(DP, command, 0, spec.meter_id, [])
    else:
        band = parser.OFPMeterBandDrop(rate=spec.rate_kbps, burst_size=spec.burst_kbits)
        flags = ofp.OFPMF_KBPS | ofp.OFPMF_BURST | ofp.OFPMF_STATS
        msg = parser.OFPMeterMod(DP, command, flags, spec.meter_id, [band])
    msg.set_xid(xid)
    assert ofwire.encode_meter_mod(spec, command, xid) == serialised(msg)


@given(st.integers(0, 2**32 - 1))
def test_meter_config_request_is_byte_identical_to_osken(xid: int) -> None:
    msg = parser.OFPMeterConfigStatsRequest(DP, 0, ofp.OFPM_ALL)
    msg.set_xid(xid)
    assert ofwire.encode_meter_config_request(xid) == serialised(msg)


@given(meter_specs)
def test_decode_of_a_parsed_meter_config_is_the_spec(spec: MeterSpec) -> None:
    mod = ofwire.encode_meter_mod(spec, ofwire.OFPMC_ADD)
    flags, meter_id = struct.unpack_from("!HI", mod, 10)
    bands = mod[16:]
    entry = parser.OFPMeterConfigStats.parser(struct.pack("!HHI", 8 + len(bands), flags, meter_id) + bands, 0)
    assert ofwire.decode_meter_configs([entry]) == [spec]


def test_a_meter_of_another_shape_is_read_so_that_it_is_replaced() -> None:
    entry = parser.OFPMeterConfigStats(flags=ofp.OFPMF_PKTPS, meter_id=7,
                                       bands=[parser.OFPMeterBandDrop(rate=5, burst_size=1)])
    assert ofwire.decode_meter_configs([entry]) == [MeterSpec(7, -1, -1)]


# ---- fast-failover groups

BUCKET_ACTIONS = [("push_vlan", 0x8100), ("pop_vlan",), ("set_field", "vlan_vid", 0x1005), ("output", 3),
                  ("output", 7)]
bucket_actions = st.lists(st.sampled_from(BUCKET_ACTIONS), min_size=1, max_size=4).map(tuple)
buckets = st.lists(st.tuples(st.integers(1, 0xFFFFFF00), bucket_actions), min_size=1, max_size=3)
group_specs = st.builds(GroupSpec, st.integers(1, 0xFFFFFF00), buckets.map(tuple))


@given(group_specs, st.sampled_from([ofp.OFPGC_ADD, ofp.OFPGC_MODIFY, ofp.OFPGC_DELETE]), UINT32)
def test_group_mod_is_byte_identical_to_osken(spec: GroupSpec, command: int, xid: int) -> None:
    wanted = [] if command == ofp.OFPGC_DELETE else [
        parser.OFPBucket(0, port, ofp.OFPG_ANY, [osken_action(a) for a in actions])
        for port, actions in spec.buckets]
    msg = parser.OFPGroupMod(DP, command, ofp.OFPGT_FF, spec.group_id, wanted)
    msg.set_xid(xid)
    assert ofwire.encode_group_mod(spec, command, xid) == serialised(msg)


@given(UINT32)
def test_group_desc_request_is_byte_identical_to_osken(xid: int) -> None:
    msg = parser.OFPGroupDescStatsRequest(DP, 0)
    msg.set_xid(xid)
    assert ofwire.encode_group_desc_request(xid) == serialised(msg)


@given(group_specs)
def test_decode_of_a_parsed_group_desc_is_the_spec(spec: GroupSpec) -> None:
    mod = ofwire.encode_group_mod(spec, ofwire.OFPGC_ADD)
    kind, group_id = struct.unpack_from("!BxI", mod, 10)
    body = mod[16:]
    head = struct.pack("!HBxI", 8 + len(body), kind, group_id)
    entry = parser.OFPGroupDescStats.parser(head + body, 0)
    assert ofwire.decode_group_descs([entry]) == [spec]
