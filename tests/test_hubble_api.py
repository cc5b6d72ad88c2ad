"""hubble_api against Hubble's wire format, and the controller's Observer server over loopback.

SPEC is upstream's name, number and type of every field hubble_api writes, transcribed from
cilium/cilium api/v1/flow/flow.proto (d18b576f), api/v1/observer/observer.proto (25972d8e) and
api/v1/relay/relay.proto (a0b419ed) and api/v1/peer/peer.proto (08ccb7b1); the generated descriptors
must agree with it. Golden messages
are hand-built bytes (tests.test_nsm_api's tiny encoder, field numbers from SPEC), read by our classes
and compared with what ryu-nsm serialises.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor

from hubble_api import flow_pb2, observer_pb2, observer_pb2_grpc, peer_pb2, peer_pb2_grpc, relay_pb2
from ryu_nsm.observe.flow_events import Direction, DropKind, DropReason, Verdict
from ryu_nsm.observe.flow_store import FlowStore
from ryu_nsm.observe.hubble_flows import lost_response, read_query, to_flow, to_json, to_response
from ryu_nsm.observe.hubble_server import FOLLOW_POLL, HubbleObserver, HubbleServer
from tests.test_flow_store import DROP, event
from tests.test_nsm_api import canonical, length, msg, num, text

ROOT = Path(__file__).resolve().parent.parent
TS, BOOL = "google.protobuf.Timestamp", "google.protobuf.BoolValue"
U32, I32 = "google.protobuf.UInt32Value", "google.protobuf.Int32Value"
R = "repeated "
SPEC: dict[str, dict[str, tuple[int, str]]] = {
    "flow.Flow": {
        "time": (1, TS), "verdict": (2, "flow.Verdict"), "ethernet": (4, "flow.Ethernet"),
        "IP": (5, "flow.IP"), "l4": (6, "flow.Layer4"), "source": (8, "flow.Endpoint"),
        "destination": (9, "flow.Endpoint"),
        "Type": (10, "flow.FlowType"), "node_name": (11, "string"), "source_service": (20, "flow.Service"),
        "destination_service": (21, "flow.Service"), "traffic_direction": (22, "flow.TrafficDirection"),
        "drop_reason_desc": (25, "flow.DropReason"), "is_reply": (26, BOOL), "uuid": (34, "string"),
        "Summary": (100000, "string"),
    },
    "flow.Layer4": {"TCP": (1, "flow.TCP"), "UDP": (2, "flow.UDP"), "ICMPv4": (3, "flow.ICMPv4"),
                    "ICMPv6": (4, "flow.ICMPv6"), "SCTP": (5, "flow.SCTP")},
    "flow.Endpoint": {"ID": (1, "uint32"), "identity": (2, "uint32"), "namespace": (3, "string"),
                      "labels": (4, R + "string"), "pod_name": (5, "string")},
    "flow.TCP": {"source_port": (1, "uint32"), "destination_port": (2, "uint32"),
                 "flags": (3, "flow.TCPFlags")},
    "flow.IP": {"source": (1, "string"), "destination": (2, "string"), "ipVersion": (3, "flow.IPVersion")},
    "flow.Ethernet": {"source": (1, "string"), "destination": (2, "string")},
    "flow.TCPFlags": {name: (number, "bool") for number, name in
                      enumerate(("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS"), 1)},
    "flow.UDP": {"source_port": (1, "uint32"), "destination_port": (2, "uint32")},
    "flow.SCTP": {"source_port": (1, "uint32"), "destination_port": (2, "uint32")},
    "flow.ICMPv4": {"type": (1, "uint32"), "code": (2, "uint32")},
    "flow.ICMPv6": {"type": (1, "uint32"), "code": (2, "uint32")},
    "flow.FlowFilter": {
        "uuid": (29, R + "string"), "source_ip": (1, R + "string"), "source_pod": (2, R + "string"),
        "source_fqdn": (7, R + "string"), "source_label": (10, R + "string"),
        "source_service": (16, R + "string"), "source_workload": (26, R + "flow.Workload"),
        "destination_ip": (3, R + "string"), "destination_pod": (4, R + "string"),
        "destination_fqdn": (8, R + "string"), "destination_label": (11, R + "string"),
        "destination_service": (17, R + "string"), "destination_workload": (27, R + "flow.Workload"),
        "traffic_direction": (30, R + "flow.TrafficDirection"), "verdict": (5, R + "flow.Verdict"),
        "event_type": (6, R + "flow.EventTypeFilter"), "http_status_code": (9, R + "string"),
        "protocol": (12, R + "string"), "source_port": (13, R + "string"),
        "destination_port": (14, R + "string"), "reply": (15, R + "bool"), "dns_query": (18, R + "string"),
        "source_identity": (19, R + "uint32"), "destination_identity": (20, R + "uint32"),
        "http_method": (21, R + "string"), "http_path": (22, R + "string"),
        "tcp_flags": (23, R + "flow.TCPFlags"), "node_name": (24, R + "string"),
        "ip_version": (25, R + "flow.IPVersion"), "trace_id": (28, R + "string"),
    },
    "flow.EventTypeFilter": {"type": (1, "int32"), "match_sub_type": (2, "bool"), "sub_type": (3, "int32")},
    "flow.Workload": {"name": (1, "string"), "kind": (2, "string")},
    "flow.Service": {"name": (1, "string"), "namespace": (2, "string")},
    "flow.LostEvent": {"source": (1, "flow.LostEventSource"), "num_events_lost": (2, "uint64"),
                       "cpu": (3, I32)},
    "relay.NodeStatusEvent": {"state_change": (1, "relay.NodeState"), "node_names": (2, R + "string"),
                              "message": (3, "string")},
    "observer.ServerStatusRequest": {},
    "observer.ServerStatusResponse": {
        "num_flows": (1, "uint64"), "max_flows": (2, "uint64"), "seen_flows": (3, "uint64"),
        "uptime_ns": (4, "uint64"), "num_connected_nodes": (5, U32), "num_unavailable_nodes": (6, U32),
        "unavailable_nodes": (7, R + "string"), "version": (8, "string"),
    },
    "observer.GetFlowsRequest": {
        "number": (1, "uint64"), "follow": (3, "bool"), "blacklist": (5, R + "flow.FlowFilter"),
        "whitelist": (6, R + "flow.FlowFilter"), "since": (7, TS), "until": (8, TS), "first": (9, "bool"),
    },
    "observer.GetFlowsResponse": {"flow": (1, "flow.Flow"), "node_status": (2, "relay.NodeStatusEvent"),
                                  "lost_events": (3, "flow.LostEvent"), "node_name": (1000, "string"),
                                  "time": (1001, TS)},
    "observer.GetNodesRequest": {},
    "observer.GetNodesResponse": {"nodes": (1, R + "observer.Node")},
    "observer.Node": {
        "name": (1, "string"), "version": (2, "string"), "address": (3, "string"),
        "state": (4, "relay.NodeState"), "tls": (5, "observer.TLS"), "uptime_ns": (6, "uint64"),
        "num_flows": (7, "uint64"), "max_flows": (8, "uint64"), "seen_flows": (9, "uint64"),
    },
    "observer.TLS": {"enabled": (1, "bool"), "server_name": (2, "string")},
    "peer.NotifyRequest": {},
    "peer.ChangeNotification": {"name": (1, "string"), "address": (2, "string"),
                                "type": (3, "peer.ChangeNotificationType"), "tls": (4, "peer.TLS")},
    "peer.TLS": {"server_name": (1, "string")},
}
ENUMS = {
    "flow.FlowType": {"UNKNOWN_TYPE": 0, "L3_L4": 1, "L7": 2, "SOCK": 3},
    "flow.IPVersion": {"IP_NOT_USED": 0, "IPv4": 1, "IPv6": 2},
    "flow.Verdict": {"VERDICT_UNKNOWN": 0, "FORWARDED": 1, "DROPPED": 2, "ERROR": 3, "AUDIT": 4,
                     "REDIRECTED": 5, "TRACED": 6, "TRANSLATED": 7},
    "flow.DropReason": {"DROP_REASON_UNKNOWN": 0, "POLICY_DENIED": 133,
                        "REACHED_EDT_RATE_LIMITING_DROP_HORIZON": 162, "UNKNOWN_SENDER": 172},
    "flow.TrafficDirection": {"TRAFFIC_DIRECTION_UNKNOWN": 0, "INGRESS": 1, "EGRESS": 2},
    "flow.LostEventSource": {"UNKNOWN_LOST_EVENT_SOURCE": 0, "PERF_EVENT_RING_BUFFER": 1,
                             "OBSERVER_EVENTS_QUEUE": 2, "HUBBLE_RING_BUFFER": 3},
    "relay.NodeState": {"UNKNOWN_NODE_STATE": 0, "NODE_CONNECTED": 1, "NODE_UNAVAILABLE": 2, "NODE_GONE": 3,
                        "NODE_ERROR": 4},
    "peer.ChangeNotificationType": {"UNKNOWN": 0, "PEER_ADDED": 1, "PEER_DELETED": 2, "PEER_UPDATED": 3},
}
SCALARS = {FieldDescriptor.TYPE_STRING: "string", FieldDescriptor.TYPE_BOOL: "bool",
           FieldDescriptor.TYPE_UINT32: "uint32", FieldDescriptor.TYPE_UINT64: "uint64",
           FieldDescriptor.TYPE_INT32: "int32"}
MODULES = (flow_pb2, relay_pb2, observer_pb2, peer_pb2)


def _type(field: FieldDescriptor) -> str:
    if field.message_type is not None:
        name = field.message_type.full_name
    elif field.enum_type is not None:
        name = field.enum_type.full_name
    else:
        name = SCALARS[field.type]
    return ("repeated " if field.is_repeated else "") + name


def test_every_message_and_field_is_upstreams():
    ours = {message.full_name: {f.name: (f.number, _type(f)) for f in message.fields}
            for module in MODULES for message in module.DESCRIPTOR.message_types_by_name.values()}
    assert ours == SPEC


def test_every_enum_value_is_upstreams():
    ours = {enum.full_name: {v.name: v.number for v in enum.values}
            for module in MODULES for enum in module.DESCRIPTOR.enum_types_by_name.values()}
    assert ours == ENUMS


def test_the_service_is_observer_observer_with_upstreams_methods():
    (service,) = observer_pb2.DESCRIPTOR.services_by_name.values()
    methods = {m.name: (m.input_type.full_name, m.output_type.full_name, m.server_streaming)
               for m in service.methods}
    assert service.full_name == "observer.Observer"
    assert methods == {
        "GetFlows": ("observer.GetFlowsRequest", "observer.GetFlowsResponse", True),
        "GetNodes": ("observer.GetNodesRequest", "observer.GetNodesResponse", False),
        "ServerStatus": ("observer.ServerStatusRequest", "observer.ServerStatusResponse", False),
    }


# ---- golden bytes

FLAGS_SHAPE = {n: None for n in range(1, 10)}
PORTED_SHAPE = {1: None, 2: None, 3: FLAGS_SHAPE}
ENDPOINT_SHAPE = {1: None, 2: None, 3: None, 4: None, 5: None}
FLOW_SHAPE = {
    1: {1: None, 2: None}, 2: None, 4: {1: None, 2: None}, 5: {1: None, 2: None, 3: None},
    6: {1: PORTED_SHAPE, 2: PORTED_SHAPE, 3: {1: None, 2: None}, 4: {1: None, 2: None}, 5: PORTED_SHAPE},
    8: ENDPOINT_SHAPE, 9: ENDPOINT_SHAPE, 10: None, 11: None, 20: {1: None, 2: None}, 21: {1: None, 2: None},
    22: None, 25: None, 26: {1: None}, 34: None, 100000: None,
}
RESPONSE_SHAPE = {1: FLOW_SHAPE, 3: {1: None, 2: None, 3: {1: None}}, 1000: None, 1001: {1: None, 2: None}}
REQUEST_SUMMARY = "TCP Flags: SYN; nsm/firewall hop 0 (conn-1)"
UUID = "5b0b5a4e-8f3c-4c1e-9a57-0d4f1e6b2c11"
GOLDEN_FLOW = b"".join([
    msg(1, num(1, 1_700_000_000), num(2, 250_000_000)),  # time
    num(2, 1),  # verdict FORWARDED
    msg(4, text(1, "02:00:00:00:00:01"), text(2, "02:00:00:00:00:02")),  # ethernet
    msg(5, text(1, "10.0.0.1"), text(2, "10.0.0.2"), num(3, 1)),  # IP, IPv4
    msg(6, msg(1, num(1, 41234), num(2, 80), msg(3, num(2, 1)))),  # l4 TCP, SYN
    msg(8, text(3, "nsm"), text(4, "k8s:app=client"), text(5, "client-7d9f")),  # source
    msg(9, text(3, "nsm"), text(4, "k8s:app=firewall"), text(5, "fw-1")),  # destination
    num(10, 1),  # Type L3_L4
    text(11, "s1"),  # node_name
    msg(21, text(1, "firewall"), text(2, "nsm")),  # destination_service
    num(22, 2),  # traffic_direction EGRESS
    msg(26),  # is_reply: false, present
    text(34, UUID),
    text(100000, REQUEST_SUMMARY),
])
GOLDEN_DROP_RESPONSE = b"".join([
    msg(1, msg(1, num(1, 100)), num(2, 2), msg(4, text(1, "02:00:00:00:00:01"), text(2, "02:00:00:00:00:02")),
        msg(5, text(1, "10.9.9.9"), text(2, "10.0.0.2"), num(3, 1)),
        msg(6, msg(1, num(1, 41234), num(2, 80), msg(3, num(2, 1)))),
        num(10, 1), text(11, "s1"), num(25, 172), text(34, UUID),
        text(100000, "TCP Flags: SYN; dropped: no wire")),
    text(1000, "s1"),
    msg(1001, num(1, 100)),
])


def test_a_flow_serialises_to_the_golden_bytes_and_parses_back():
    ours = to_flow(event(time=1_700_000_000.25, uuid=UUID)).SerializeToString()
    assert canonical(ours, FLOW_SHAPE) == canonical(GOLDEN_FLOW, FLOW_SHAPE)
    parsed = flow_pb2.Flow.FromString(GOLDEN_FLOW)
    assert parsed.verdict == flow_pb2.FORWARDED and parsed.Type == flow_pb2.L3_L4
    assert parsed.l4.TCP.destination_port == 80 and parsed.l4.TCP.flags.SYN
    assert parsed.source.pod_name == "client-7d9f" and list(parsed.destination.labels) == ["k8s:app=firewall"]
    assert parsed.HasField("is_reply") and not parsed.is_reply.value
    assert parsed.destination_service.name == "firewall" and parsed.Summary == REQUEST_SUMMARY
    assert parsed.uuid == UUID


def test_a_drop_response_serialises_to_the_golden_bytes():
    ours = to_response(dataclasses.replace(DROP, uuid=UUID)).SerializeToString()
    assert canonical(ours, RESPONSE_SHAPE) == canonical(GOLDEN_DROP_RESPONSE, RESPONSE_SHAPE)
    parsed = observer_pb2.GetFlowsResponse.FromString(GOLDEN_DROP_RESPONSE)
    assert parsed.flow.drop_reason_desc == flow_pb2.UNKNOWN_SENDER and parsed.node_name == "s1"


def test_lost_events_response_bytes():
    ours = lost_response(7, "ctl", 100.0).SerializeToString()
    golden = msg(3, num(1, 3), num(2, 7)) + text(1000, "ctl") + msg(1001, num(1, 100))
    assert canonical(ours, RESPONSE_SHAPE) == canonical(golden, RESPONSE_SHAPE)


GOLDEN_REQUEST = b"".join([
    num(1, 5),  # number
    msg(6, text(10, "k8s:app=client"), text(10, "app in (probe)"), text(11, "!canary"), text(29, UUID)),
    msg(5, length(5, bytes([2]))),  # blacklist: verdict DROPPED, packed as proto3 repeats enums
])


def test_a_hubble_request_with_label_and_uuid_filters_reads_into_ours():
    query = read_query(observer_pb2.GetFlowsRequest.FromString(GOLDEN_REQUEST))
    (whitelist,), (blacklist,) = query.whitelist, query.blacklist
    assert whitelist.source_label == ("k8s:app=client", "app in (probe)")
    assert whitelist.destination_label == ("!canary",) and whitelist.uuid == (UUID,)
    assert blacklist.verdict == (Verdict.DROPPED,) and query.number == 5
    ours = observer_pb2.GetFlowsRequest(number=5, whitelist=[flow_pb2.FlowFilter(
        source_label=["k8s:app=client", "app in (probe)"], destination_label=["!canary"], uuid=[UUID])],
        blacklist=[flow_pb2.FlowFilter(verdict=[flow_pb2.DROPPED])])
    shape = {1: None, 5: {5: None}, 6: {10: None, 11: None, 29: None}}
    assert canonical(ours.SerializeToString(), shape) == canonical(GOLDEN_REQUEST, shape)


@pytest.mark.parametrize(("kind", "reason"), [
    (DropKind.POLICY, "POLICY_DENIED"), (DropKind.RATE_LIMIT, "REACHED_EDT_RATE_LIMITING_DROP_HORIZON")])
def test_drop_reasons_map_to_hubbles(kind, reason):
    flow = to_flow(event(verdict=Verdict.DROPPED, drop_reason=DropReason(kind, "deny-telnet")))
    assert flow_pb2.DropReason.Name(flow.drop_reason_desc) == reason


def test_json_is_hubbles_shape():
    reply = event(time=1_700_000_000.25, direction=Direction.TO_CLIENT, sport=80, dport=41234)
    line = to_json(to_response(reply))
    assert line.startswith('{"flow":{"time":"2023-11-14T22:13:20.250Z","verdict":"FORWARDED"')
    for part in ('"IP":{"source":"10.0.0.2","destination":"10.0.0.1","ipVersion":"IPv4"}',
                 '"traffic_direction":"EGRESS"', '"is_reply":true', '"Type":"L3_L4"',
                 '"source_service":{"name":"firewall","namespace":"nsm"}', '"node_name":"s1"'):
        assert part in line, part


def test_committed_modules_equal_a_fresh_generation(tmp_path: Path) -> None:
    subprocess.run(["bash", str(ROOT / "scripts" / "gen-proto"), str(tmp_path)], check=True,
                   capture_output=True, env={**os.environ, "PYTHON": sys.executable})
    suffixes = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "hubble_api").iterdir()}
    committed = {p.name: p.read_bytes() for p in (ROOT / "hubble_api").iterdir() if p.name.endswith(suffixes)}
    assert committed == fresh, "hubble_api is stale: run scripts/gen-proto"


# ---- the server over loopback, with our generated stubs


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def hubble():
    store = FlowStore(capacity=100)
    clock = Clock()
    nodes = {"s1": True, "s2": False}
    server = HubbleServer(HubbleObserver(store, lambda: nodes, "demo", clock=clock)).serve(["127.0.0.1:0"])
    channel = grpc.insecure_channel(server.addresses[0])
    yield store, observer_pb2_grpc.ObserverStub(channel), clock
    channel.close()
    server.stop()


def _times(responses) -> list[float]:
    return [r.flow.time.seconds for r in responses]


def test_get_flows_history_with_number_first_and_time_window(hubble):
    store, stub, _ = hubble
    store.add(event(time=t) for t in range(1, 11))
    assert _times(stub.GetFlows(observer_pb2.GetFlowsRequest(), timeout=5)) == list(range(1, 11))
    assert _times(stub.GetFlows(observer_pb2.GetFlowsRequest(number=3), timeout=5)) == [8, 9, 10]
    assert _times(stub.GetFlows(observer_pb2.GetFlowsRequest(number=2, first=True), timeout=5)) == [1, 2]
    window = observer_pb2.GetFlowsRequest()
    window.since.seconds, window.until.seconds = 4, 6
    assert _times(stub.GetFlows(window, timeout=5)) == [4, 5, 6]


def test_get_flows_whitelist_and_blacklist(hubble):
    store, stub, _ = hubble
    store.add([event(time=1), DROP, event(time=3, direction=Direction.TO_CLIENT, sport=80, dport=41234)])
    dropped = flow_pb2.FlowFilter(verdict=[flow_pb2.DROPPED])
    found = list(stub.GetFlows(observer_pb2.GetFlowsRequest(whitelist=[dropped]), timeout=5))
    assert [r.flow.verdict for r in found] == [flow_pb2.DROPPED]
    found = list(stub.GetFlows(observer_pb2.GetFlowsRequest(blacklist=[dropped]), timeout=5))
    assert _times(found) == [1, 3]
    to_client = flow_pb2.FlowFilter(destination_pod=["nsm/client"], protocol=["TCP"], source_port=["80"])
    found = list(stub.GetFlows(observer_pb2.GetFlowsRequest(whitelist=[to_client]), timeout=5))
    assert _times(found) == [3] and found[0].flow.is_reply.value


@pytest.mark.parametrize(("bad", "said"), [
    (flow_pb2.FlowFilter(source_ip=["nope"]), "not an IP address or CIDR: 'nope'"),
    (flow_pb2.FlowFilter(source_fqdn=["example.com"]), "FlowFilter.source_fqdn is not supported"),
    # Field 31, newer than our flow.proto: a string "x".
    (flow_pb2.FlowFilter.FromString(text(31, "x")), "FlowFilter field 31 is unknown to ryu-nsm"),
])
def test_get_flows_refuses_what_it_cannot_evaluate(hubble, bad, said):
    _, stub, _ = hubble
    with pytest.raises(grpc.RpcError) as raised:
        list(stub.GetFlows(observer_pb2.GetFlowsRequest(whitelist=[bad]), timeout=5))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and said in raised.value.details()


def test_get_flows_follow_streams_history_then_new_matching_events(hubble):
    store, stub, _ = hubble
    store.add([event(time=1), event(time=2)])
    request = observer_pb2.GetFlowsRequest(number=1, follow=True,
                                           whitelist=[flow_pb2.FlowFilter(verdict=[flow_pb2.FORWARDED])])
    stream = stub.GetFlows(request, timeout=10)
    got = [next(stream)]
    threading.Timer(0.1, lambda: store.add([DROP, event(time=3), event(time=4)])).start()
    got += [next(stream), next(stream)]
    stream.cancel()
    assert _times(got) == [2, 3, 4]


def test_a_slow_follow_is_told_what_it_lost(hubble):
    store, stub, _ = hubble
    follow = stub.GetFlows(observer_pb2.GetFlowsRequest(follow=True), timeout=10)
    store.add([event(time=1)])
    assert next(follow).flow.time.seconds == 1
    store.add(event(time=t) for t in range(2, 2000))  # far more than a follower queues
    responses = []
    while sum(1 for r in responses if r.HasField("flow")) < 1 or not responses[-1].HasField("flow") \
            or responses[-1].flow.time.seconds != 1999:
        responses.append(next(follow))
    follow.cancel()
    lost = sum(r.lost_events.num_events_lost for r in responses if r.HasField("lost_events"))
    assert lost > 0 and lost + sum(1 for r in responses if r.HasField("flow")) == 1998


def test_follow_ends_at_until(hubble):
    store, stub, clock = hubble
    request = observer_pb2.GetFlowsRequest(follow=True)
    request.until.seconds = 1500
    stream = stub.GetFlows(request, timeout=10)
    store.add([event(time=1001)])
    assert next(stream).flow.time.seconds == 1001
    clock.now = 1600
    started = time.monotonic()
    assert list(stream) == [] and time.monotonic() - started < 5


def test_server_status_and_nodes(hubble):
    store, stub, clock = hubble
    store.add(event(time=t) for t in range(3))
    clock.now += 2.5
    status = stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5)
    assert (status.num_flows, status.max_flows, status.seen_flows) == (3, 100, 3)
    assert status.uptime_ns == 2_500_000_000 and status.version.startswith("ryu-nsm")
    assert status.num_connected_nodes.value == 1 and status.num_unavailable_nodes.value == 1
    assert list(status.unavailable_nodes) == ["s2"]
    nodes = stub.GetNodes(observer_pb2.GetNodesRequest(), timeout=5).nodes
    assert [(n.name, n.state) for n in nodes] == [("s1", relay_pb2.NODE_CONNECTED),
                                                 ("s2", relay_pb2.NODE_UNAVAILABLE)]
    assert nodes[0].address.startswith("127.0.0.1:") and nodes[0].num_flows == 3


def test_serving_on_a_unix_socket(tmp_path):
    store = FlowStore()
    store.add([event()])
    address = f"unix:{tmp_path}/hubble.sock"
    server = HubbleServer(HubbleObserver(store, dict, "demo")).serve([address])
    try:
        with grpc.insecure_channel(address) as channel:
            found = list(observer_pb2_grpc.ObserverStub(channel).GetFlows(observer_pb2.GetFlowsRequest(),
                                                                         timeout=5))
        assert len(found) == 1 and server.addresses == [address]
    finally:
        server.stop()


@pytest.mark.parametrize(("method", "streams"), [("GetAgentEvents", True), ("GetDebugEvents", True),
                                                 ("GetNamespaces", False)])
def test_upstreams_other_observer_methods_answer_unimplemented(method, streams):
    # What a Hubble client gets for the RPCs ryu-nsm has no data for (docs/observability.md).
    server = HubbleServer(HubbleObserver(FlowStore(), dict, "demo")).serve(["127.0.0.1:0"])
    try:
        with grpc.insecure_channel(server.addresses[0]) as channel:
            call = (channel.unary_stream if streams else channel.unary_unary)(f"/observer.Observer/{method}")
            with pytest.raises(grpc.RpcError) as raised:
                list(call(b"", timeout=5)) if streams else call(b"", timeout=5)
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop()


# ---- Hubble's Peer service: how Relay finds ryu-nsm


def test_a_peer_notification_is_the_golden_bytes():
    ours = peer_pb2.ChangeNotification(name="demo", address="127.0.0.1:4244", type=peer_pb2.PEER_ADDED)
    golden = text(1, "demo") + text(2, "127.0.0.1:4244") + num(3, 1)
    assert ours.SerializeToString() == golden
    assert peer_pb2.ChangeNotification.FromString(golden) == ours


def test_notify_names_this_server_as_the_one_peer_and_holds_the_stream(tmp_path):
    # As Relay does with --peer-service: Notify, then dial the peer's address for the Observer.
    store = FlowStore()
    store.add([event()])
    listen = [f"unix:{tmp_path}/h.sock", "127.0.0.1:0"]
    server = HubbleServer(HubbleObserver(store, dict, "demo")).serve(listen)
    try:
        with grpc.insecure_channel(server.addresses[1]) as channel:
            stream = peer_pb2_grpc.PeerStub(channel).Notify(peer_pb2.NotifyRequest(), timeout=10)
            first = next(stream)
            tcp = server.addresses[1]
            assert (first.name, first.address, first.type) == ("demo", tcp, peer_pb2.PEER_ADDED)
            with grpc.insecure_channel(first.address) as peer:
                flows = list(observer_pb2_grpc.ObserverStub(peer).GetFlows(observer_pb2.GetFlowsRequest(),
                                                                           timeout=5))
            assert len(flows) == 1
            # No change follows: the stream stays open until the client goes (or the server stops).
            ended = []

            def wait() -> None:
                try:
                    ended.append(next(stream, None))
                except grpc.RpcError as error:  # what the client's cancel below ends it with
                    ended.append(error.code())

            waiter = threading.Thread(target=wait, daemon=True)
            waiter.start()
            waiter.join(2 * FOLLOW_POLL + 0.5)
            assert waiter.is_alive()
            stream.cancel()
            waiter.join(5)
            assert ended == [grpc.StatusCode.CANCELLED]
    finally:
        server.stop()
