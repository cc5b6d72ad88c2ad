"""ofwire and oskenrun against a real Open vSwitch bridge (userspace datapath).

A netdev bridge connects to a ProbeApp started with oskenrun on a free loopback port. Flows go
in as one bundle of ofwire bytes; ``ovs-ofctl dump-flows`` is parsed back into FlowSpecs and must
be exactly the specs sent, as must ofwire's decoding of a flow stats reply. ``FlowSpec.to_ofctl``
is checked the same way: its lines, given to ``ovs-ofctl add-flows``, must make the same flows.
"""

from __future__ import annotations

import itertools
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ryu_nsm.core.flowspec import (
    COOKIE_OWNER_MASK,
    CT_EST,
    CT_TRK,
    ETH_TYPE_VLAN,
    PIPELINE_COOKIE,
    VID_PRESENT,
    FlowSpec,
    Priority,
    Table,
    is_ours,
    wire_cookie,
)
from ryu_nsm.openflow import wire as ofwire
from ryu_nsm.openflow.flow_read import FlowReader, keep_flow_stats_raw
from ryu_nsm.openflow.launch import OsKenRun, ProbeApp, run_apps, send_bytes
from ryu_nsm.openflow.wire_decode import decode_spec

pytestmark = pytest.mark.ovs

TIMEOUT = 15.0
FOREIGN_COOKIE = 0x1234
METER = 1
GROUP = 1
_xid_counter = itertools.count(1)


def new_xids(n: int = 1) -> range:
    """``n`` consecutive xids not used before in this process."""
    first = next(_xid_counter)
    for _ in range(n - 1):
        next(_xid_counter)
    return range(first, first + n)


def sh(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{' '.join(args)} failed: {done.stderr.strip()}"
    return done.stdout


def ofctl(*args: str) -> str:
    return sh("ovs-ofctl", "-O", "OpenFlow13", *args)


# ---- fixtures


@pytest.fixture
def controller() -> Iterator[OsKenRun]:
    with run_apps([ProbeApp]) as run:
        yield run


@pytest.fixture
def bridge() -> Iterator[str]:
    name = "rnw" + uuid.uuid4().hex[:8]  # Linux names a netdev bridge's port after it: 15 chars at most
    sh("ovs-vsctl", "add-br", name, "--", "set", "bridge", name, "datapath_type=netdev",
       "protocols=OpenFlow13", "fail_mode=secure")
    try:
        yield name
    finally:
        sh("ovs-vsctl", "--if-exists", "del-br", name)


def connect(run: OsKenRun, bridge: str):
    """Point ``bridge`` at the controller and return its os-ken Datapath once the handshake is done.

    Then add the meter and group that sample flows use (the switch's, not ryu-nsm's): not before,
    because OVS flushes flows, groups and meters when a bridge gets its first controller.
    """
    sh("ovs-vsctl", "set-controller", bridge, f"tcp:{run.host}:{run.port}")
    dpid = int(sh("ovs-vsctl", "get", "bridge", bridge, "datapath_id").strip().strip('"'), 16)
    datapath = run.app(ProbeApp).wait_datapath(dpid, timeout=TIMEOUT)
    ofctl("add-meter", bridge, f"meter={METER},kbps,band=type=drop,rate=10000")
    ofctl("add-group", bridge, f"group_id={GROUP},type=all,bucket=output:9")
    return datapath


def exchange(probe: ProbeApp, datapath, data: bytes) -> list:
    """Send ``data``, then a barrier; return the barrier's reply once it comes."""
    [barrier] = new_xids()
    send_bytes(datapath, data + ofwire.encode_barrier(barrier))
    return probe.wait_reply(barrier, timeout=TIMEOUT)


# ---- the flows: every match field, action and instruction ryu-nsm uses, on both tables


def sample_specs() -> list[FlowSpec]:
    c1, c2 = wire_cookie("conn-1"), wire_cookie("conn-2")
    mac_a, mac_b = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
    classify = Table.CLASSIFY
    forward = Table.FORWARD
    specs = [
        FlowSpec.make(classify, Priority.WIRE, {"in_port": 1, "vlan_vid": 0},
                      [("push_vlan", ETH_TYPE_VLAN), ("set_field", "vlan_vid", VID_PRESENT | 100),
                       ("output", 2)], cookie=c1),
        FlowSpec.make(classify, Priority.WIRE + 1,
                      {"in_port": 3, "eth_type": 0x0800, "ip_proto": 6, "eth_src": mac_a},
                      [("set_field", "ip_dscp", 46), ("push_vlan", ETH_TYPE_VLAN),
                       ("set_field", "vlan_vid", VID_PRESENT | 101), ("output", 4)], cookie=c2, meter=METER),
        FlowSpec.make(classify, Priority.WIRE, {"in_port": 5, "eth_dst": mac_b, "eth_type": 0x88CC},
                      [("group", GROUP)], cookie=c2),
        FlowSpec.make(classify, Priority.FABRIC_PORT, {"in_port": 6}, goto=forward),
        FlowSpec.make(classify, Priority.WIRE, {"in_port": 7, "vlan_vid": VID_PRESENT | 10},
                      [("output", ofwire.OFPP_CONTROLLER)], cookie=c1),
        FlowSpec.make(classify, Priority.MISS, {}),
        FlowSpec.make(forward, Priority.WIRE, {"in_port": 2, "vlan_vid": VID_PRESENT | 100},
                      [("set_field", "vlan_vid", VID_PRESENT | 200), ("set_queue", 1), ("output", 3)],
                      cookie=c1),
        FlowSpec.make(forward, Priority.WIRE, {"in_port": 2, "vlan_vid": VID_PRESENT | 101},
                      [("pop_vlan",), ("output", 1)], cookie=c2),
    ]
    specs += [
        FlowSpec.make(forward, Priority.WIRE, {"in_port": 10 + i % 7, "vlan_vid": VID_PRESENT | (300 + i)},
                      [("set_field", "vlan_vid", VID_PRESENT | (1000 + i)), ("output", 20 + i % 5)],
                      cookie=wire_cookie(f"bulk-{i}"))
        for i in range(300)
    ]
    return specs


def policy_specs() -> list[FlowSpec]:
    """The policy tables' and conntrack gates' shapes: networks, masked ports, ct_state, conjunctions,
    conntrack and sampling."""
    ip, ip6 = 0x0800, 0x86DD
    egress, ingress, entry = Table.POLICY_EGRESS, Table.POLICY_INGRESS, Table.WIRE_ENTRY
    rule, passing, tracked = Priority.POLICY_RULE, Priority.POLICY_PASS, CT_TRK | CT_EST
    flows = [
        (Table.CLASSIFY, passing, {"in_port": 11, "eth_type": ip}, [("ct", 7, egress)], None),
        (Table.CLASSIFY, passing, {"in_port": 12, "eth_type": ip6, "ip_proto": 58, "icmpv6_type": 135},
         [("sample", 100, 1, 2, 3), ("output", 13)], None),
        (egress, Priority.POLICY_STATE, {"ct_state": (tracked, tracked)}, [], entry),
        (egress, rule, {"eth_type": ip, "ipv4_dst": "10.1.0.0/16"}, [("conjunction", 9, 1, 2)], None),
        (egress, rule, {"eth_type": ip, "ip_proto": 6, "tcp_dst": (0x1F00, 0xFF00)},
         [("conjunction", 9, 2, 2)], None),
        (egress, rule, {"conj_id": 9, "eth_type": ip}, [], ingress),
        (egress, rule + 1, {"eth_type": ip6, "ipv6_src": "fd00:1::/64", "ip_proto": 17, "udp_dst": 53}, [],
         entry),
        (egress, rule + 2, {"eth_type": ip, "ip_proto": 132, "ipv4_src": "192.0.2.7",
                            "sctp_dst": (0x100, 0xFF00)}, [], entry),
        (ingress, rule, {"eth_type": ip, "ipv4_src": "10.2.3.0/24", "in_port": 3}, [("ct_commit", 7)], entry),
        (entry, Priority.WIRE, {"in_port": 11}, [("output", 12)], None),
    ]
    cookie = wire_cookie("conn-policy")
    return [FlowSpec.make(table, priority, match, actions, goto=goto, cookie=cookie)
            for table, priority, match, actions, goto in flows]


# Shapes ryu-nsm never writes (and two it could), as ovs-ofctl has the switch hold them.
_FOREIGN = f"cookie={FOREIGN_COOKIE:#x},priority=6"
FOREIGN_SHAPES = [
    f"{_FOREIGN},table=0,ip,in_port=97 actions=ct(commit,zone=5,exec(set_field:1->ct_mark))",
    f"{_FOREIGN},table=0,in_port=96,dl_src=02:00:00:00:00:00/ff:ff:ff:00:00:00 actions=output:1",
    f"{_FOREIGN},table=0,in_port=95 actions=output:1,output:2",
    f"{_FOREIGN},table=1,in_port=94,dl_vlan=7 actions=mod_vlan_vid:8,output:2",
    f"{_FOREIGN},table=2,tcp,tp_dst=0x100/0xff00 actions=conjunction(5,1/2)",
    f"{_FOREIGN},table=0,in_port=93 actions=write_actions(output:1)",
    f"{_FOREIGN},table=1,in_port=92 actions=set_field:0x10->tun_id,output:1",
]

FOREIGN_FLOWS = [
    f"cookie={FOREIGN_COOKIE:#x},table=0,priority=5,in_port=99 actions=drop",
    f"cookie={FOREIGN_COOKIE:#x},table=1,priority=7,in_port=98,dl_vlan=9 actions=pop_vlan,output:1",
    f"cookie={FOREIGN_COOKIE:#x},table=3,priority=7,ip,nw_dst=192.0.2.1 actions=output:2",
]


# ---- ovs-ofctl dump-flows, parsed back into FlowSpec terms

_PROTOCOLS = {  # ovs-ofctl's shorthand match keywords → (eth_type, ip_proto or None)
    "ip": (0x0800, None), "icmp": (0x0800, 1), "tcp": (0x0800, 6), "udp": (0x0800, 17), "sctp": (0x0800, 132),
    "ipv6": (0x86DD, None), "icmp6": (0x86DD, 58), "tcp6": (0x86DD, 6), "udp6": (0x86DD, 17),
    "arp": (0x0806, None), "rarp": (0x8035, None),
}
_PORT_NAMES = {"CONTROLLER": ofwire.OFPP_CONTROLLER, "IN_PORT": 0xFFFFFFF8, "LOCAL": 0xFFFFFFFE}


def _match_item(token: str) -> dict:
    if token in _PROTOCOLS:
        eth_type, proto = _PROTOCOLS[token]
        return {"eth_type": eth_type} | ({"ip_proto": proto} if proto is not None else {})
    key, _, value = token.partition("=")
    if key == "vlan_tci" and value == "0x0000/0x1fff":
        return {"vlan_vid": 0}
    if key == "dl_vlan":
        return {"vlan_vid": VID_PRESENT | int(value)}
    simple = {"in_port": "in_port", "dl_type": "eth_type", "nw_proto": "ip_proto",
              "dl_src": "eth_src", "dl_dst": "eth_dst"}
    assert key in simple, f"dump has a match this test does not know: {token!r}"
    name = simple[key]
    return {name: value if name in ("eth_src", "eth_dst") else int(value, 0)}


def _action(token: str) -> tuple:
    kind, _, arg = token.partition(":")
    if kind == "output" or kind in _PORT_NAMES:
        return ("output", _PORT_NAMES[kind] if kind in _PORT_NAMES else int(arg))
    if kind == "push_vlan":
        return ("push_vlan", int(arg, 0))
    if kind == "pop_vlan":
        return ("pop_vlan",)
    if kind in ("group", "set_queue"):
        return (kind, int(arg))
    if kind == "set_field":
        value, _, field = arg.partition("->")
        return ("set_field", field, int(value, 0))
    raise AssertionError(f"dump has an action this test does not know: {token!r}")


def parse_flow(line: str) -> FlowSpec:
    """One line of ``ovs-ofctl dump-flows --no-stats`` as a FlowSpec (OVS leaves defaults out)."""
    head, _, acts = line.strip().partition(" actions=")
    fields = {"cookie": 0, "table": 0, "priority": 0x8000}
    match: dict = {}
    for token in head.replace(", ", ",").split(","):
        key = token.partition("=")[0]
        if key in fields:
            fields[key] = int(token.partition("=")[2], 0)
        else:
            match |= _match_item(token)
    actions, goto, meter = [], None, None
    for token in acts.split(",") if acts != "drop" else []:
        if token.startswith("goto_table:"):
            goto = int(token.partition(":")[2])
        elif token.startswith("meter:"):
            meter = int(token.partition(":")[2])
        else:
            actions.append(_action(token))
    return FlowSpec.make(fields["table"], fields["priority"], match, actions,
                         goto=goto, cookie=fields["cookie"], meter=meter)


def dump_lines(bridge: str) -> list[str]:
    out = ofctl("dump-flows", "--no-stats", bridge)
    return [line.strip() for line in out.splitlines() if " actions=" in line]


def dump(bridge: str) -> list[FlowSpec]:
    return [parse_flow(line) for line in dump_lines(bridge)]


def cookie_of(line: str) -> int:
    head = line.partition(",")[0]
    return int(head.partition("=")[2], 0) if head.startswith("cookie=") else 0


def sorted_specs(specs) -> list[FlowSpec]:
    return sorted(specs, key=repr)


def install(probe: ProbeApp, datapath, specs: list[FlowSpec]) -> None:
    """ADD ``specs`` in one bundle and check the switch took every message."""
    xids = new_xids(1 + len(specs))
    first = xids[0]
    messages = [ofwire.encode_flow_mod(s, ofwire.OFPFC_ADD, x) for s, x in zip(specs, xids[1:], strict=True)]
    exchange(probe, datapath, ofwire.encode_bundle(first, messages, first))
    assert probe.errors_for(xids) == []
    replies = probe.wait_reply(first, timeout=TIMEOUT)
    assert [(r.type, r.bundle_id) for r in replies] == [
        (ofwire.BUNDLE_OPEN_REPLY, first), (ofwire.BUNDLE_COMMIT_REPLY, first)]


# ---- tests


def test_bundle_installs_exactly_the_specs_and_stats_decode_back(controller: OsKenRun, bridge: str) -> None:
    probe = controller.app(ProbeApp)
    datapath = connect(controller, bridge)
    specs = sample_specs()
    install(probe, datapath, specs)

    assert sorted_specs(dump(bridge)) == sorted_specs(specs)

    [xid] = new_xids()
    send_bytes(datapath, ofwire.encode_flow_stats_request(xid, PIPELINE_COOKIE, COOKIE_OWNER_MASK))
    replies = probe.wait_reply(xid, timeout=TIMEOUT)
    stats = ofwire.decode_flow_stats(entry for reply in replies for entry in reply.body)
    assert sorted_specs(s.spec for s in stats) == sorted_specs(specs)
    assert all(s.packets == 0 and s.bytes == 0 and s.duration >= 0 for s in stats)


def test_raw_reads_give_back_the_programmed_objects(controller: OsKenRun, bridge: str) -> None:
    """flow_read: os-ken leaves flow stats raw; what this OVS reports in the bytes it was sent is the
    programmed spec object itself, the rest decodes equal, and a second read decodes nothing again."""
    keep_flow_stats_raw()
    probe = controller.app(ProbeApp)
    datapath = connect(controller, bridge)
    specs = sample_specs()
    install(probe, datapath, specs)
    reader = FlowReader()
    for spec in specs:
        reader.expect(datapath.id, ofwire.encode_flow_mod(spec, ofwire.OFPFC_ADD), spec)

    def read() -> list[ofwire.FlowStats]:
        [xid] = new_xids()
        send_bytes(datapath, ofwire.encode_flow_stats_request(xid, PIPELINE_COOKIE, COOKIE_OWNER_MASK))
        entries = [entry for reply in probe.wait_reply(xid, timeout=TIMEOUT) for entry in reply.body]
        assert all(isinstance(entry, ofwire.RawFlowStats) for entry in entries)
        return reader.read(datapath.id, entries, whole=True)

    first = read()
    assert sorted_specs(s.spec for s in first) == sorted_specs(specs)
    programmed = {id(spec) for spec in specs}
    same = [s.spec for s in first if id(s.spec) in programmed]
    # This OVS reports every flow in the very bytes it was sent (others would be decoded, once).
    assert len(same) == len(specs), f"only {len(same)} of {len(specs)} came back byte for byte"
    again = read()
    assert [id(s.spec) for s in again] == [id(s.spec) for s in first]


def test_what_this_ovs_reports_decodes_straight_from_its_bytes(controller: OsKenRun, bridge: str) -> None:
    """wire_decode on every flow this OVS holds, ours in every shape ryu-nsm writes and others': each
    of ours decodes straight from its bytes, and whatever it decodes the os-ken path decodes the same."""
    keep_flow_stats_raw()
    probe = controller.app(ProbeApp)
    datapath = connect(controller, bridge)
    specs = sample_specs()[:8] + policy_specs()
    install(probe, datapath, specs)
    for line in FOREIGN_FLOWS + FOREIGN_SHAPES:
        ofctl("add-flow", bridge, line)
    [xid] = new_xids()
    send_bytes(datapath, ofwire.encode_flow_stats_request(xid, 0, 0))  # every flow, whoever's
    entries = [entry for reply in probe.wait_reply(xid, timeout=TIMEOUT) for entry in reply.body]
    assert len(entries) == len(specs) + len(FOREIGN_FLOWS) + len(FOREIGN_SHAPES)
    decoded = [decode_spec(entry.buf) for entry in entries]
    for entry, spec in zip(entries, decoded, strict=True):
        if spec is not None:
            assert [stats.spec for stats in ofwire.decode_flow_stats([entry])] == [spec]
    assert sorted_specs(s for s in decoded if s is not None and is_ours(s.cookie)) == sorted_specs(specs)
    foreign = [s for s in decoded if s is not None and not is_ours(s.cookie)]
    assert len(foreign) >= 4, foreign  # in_port=99 drop, pop_vlan, two outputs, set vlan


def test_delete_by_owner_cookie_leaves_foreign_flows(controller: OsKenRun, bridge: str) -> None:
    probe = controller.app(ProbeApp)
    datapath = connect(controller, bridge)
    install(probe, datapath, sample_specs())
    for line in FOREIGN_FLOWS:
        ofctl("add-flow", bridge, line)
    before = dump_lines(bridge)
    foreign = {line for line in before if cookie_of(line) == FOREIGN_COOKIE}
    assert len(foreign) == len(FOREIGN_FLOWS)
    assert len(before) == len(FOREIGN_FLOWS) + len(sample_specs())

    [xid] = new_xids()
    exchange(probe, datapath, ofwire.encode_delete_by_cookie(PIPELINE_COOKIE, COOKIE_OWNER_MASK, xid=xid))

    assert probe.errors_for([xid]) == []
    assert set(dump_lines(bridge)) == foreign


def test_delete_strict_takes_only_the_flow_with_its_key_and_cookie(controller: OsKenRun, bridge: str) -> None:
    probe = controller.app(ProbeApp)
    datapath = connect(controller, bridge)
    target = FlowSpec.make(Table.FORWARD, Priority.WIRE, {"in_port": 2, "vlan_vid": VID_PRESENT | 100},
                           [("output", 3)], cookie=wire_cookie("target"))
    lower = FlowSpec.make(Table.FORWARD, Priority.WIRE - 1, target.match_dict(), [("output", 4)],
                          cookie=target.cookie)
    install(probe, datapath, [target, lower])

    # Same key, another cookie: the switch's flow is not that one, so it stays.
    impostor = FlowSpec.make(target.table, target.priority, target.match_dict(), cookie=wire_cookie("other"))
    xids = new_xids(2)
    exchange(probe, datapath, ofwire.encode_flow_mod(impostor, ofwire.OFPFC_DELETE_STRICT, xids[0]))
    assert sorted_specs(dump(bridge)) == sorted_specs([target, lower])

    exchange(probe, datapath, ofwire.encode_flow_mod(target, ofwire.OFPFC_DELETE_STRICT, xids[1]))
    assert probe.errors_for(xids) == []
    assert dump(bridge) == [lower]


def test_to_ofctl_lines_make_the_same_flows_as_the_wire(
    controller: OsKenRun, bridge: str, tmp_path: Path
) -> None:
    probe = controller.app(ProbeApp)
    datapath = connect(controller, bridge)
    specs = sample_specs()
    install(probe, datapath, specs)
    by_wire = ofctl("dump-flows", "--no-stats", bridge)

    ofctl("del-flows", bridge)
    assert dump(bridge) == []
    flows_file = tmp_path / "flows.txt"
    flows_file.write_text("".join(spec.to_ofctl() + "\n" for spec in specs))
    ofctl("--bundle", "add-flows", bridge, str(flows_file))

    assert sorted_specs(dump(bridge)) == sorted_specs(specs)
    by_ofctl = ofctl("dump-flows", "--no-stats", bridge)
    assert sorted(by_ofctl.splitlines()) == sorted(by_wire.splitlines())


def test_controller_restarts_in_one_process_and_sees_switches_go(bridge: str) -> None:
    for _ in range(3):
        with run_apps([ProbeApp]) as run:
            probe = run.app(ProbeApp)
            datapath = connect(run, bridge)
            [reply] = exchange(probe, datapath, b"")
            assert reply.datapath is datapath
            sh("ovs-vsctl", "del-controller", bridge)
            probe.wait_gone(datapath.id, timeout=TIMEOUT)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((run.host, run.port), timeout=2).close()


def test_one_set_of_apps_per_process_and_a_failed_start_leaves_none_running(
    controller: OsKenRun, bridge: str
) -> None:
    with pytest.raises(RuntimeError, match="already running"):
        run_apps([ProbeApp])
    controller.stop()
    with pytest.raises(TypeError):
        run_apps([ProbeApp, object])
    with run_apps([ProbeApp]) as run:
        datapath = connect(run, bridge)
        assert exchange(run.app(ProbeApp), datapath, b"")[0].datapath is datapath
