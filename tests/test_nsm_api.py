"""nsm_api against NSM's wire format, without trusting our own .proto.

The facts come from nsm-wire.md. Golden messages are written here as raw protobuf bytes with a tiny
encoder (field numbers straight from the spec) and read back with a tiny decoder; our generated
classes must parse the goldens into the right fields and serialise the same content to the same
fields. gRPC round trips use plain grpcio with bytes on the other side, so the full method names and
the message encodings are checked as a peer would see them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from nsm_api import (
    connection_pb2,
    connection_pb2_grpc,
    connectioncontext_pb2,
    networkservice_pb2,
    networkservice_pb2_grpc,
    paths,
    registry_pb2,
    registry_pb2_grpc,
)

ROOT = Path(__file__).resolve().parent.parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
RPC_TIMEOUT = 5.0

# ---- a tiny protobuf wire encoder and decoder, independent of the protobuf library

VARINT, LEN = 0, 2


def varint(value: int) -> bytes:
    """Base-128 varint; negative numbers as 64-bit two's complement (how int32/int64 go on the wire)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def tag(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def num(field: int, value: int) -> bytes:
    """A varint field: integers, bools and enums."""
    return tag(field, VARINT) + varint(value)


def length(field: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return tag(field, LEN) + varint(len(payload)) + payload


def text(field: int, value: str) -> bytes:
    return length(field, value.encode())


def msg(field: int, *parts: bytes) -> bytes:
    """An embedded message made of the given encoded fields."""
    return length(field, b"".join(parts))


def entry(field: int, key: str, value: str | bytes) -> bytes:
    """One map entry: key = 1, value = 2 (a str, or the encoded body of a message)."""
    encoded = text(2, value) if isinstance(value, str) else length(2, value)
    return msg(field, text(1, key), encoded)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def decode(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """(field, wire type, value) in wire order; only the varint and length-delimited types NSM uses."""
    fields: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = read_varint(data, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == VARINT:
            value, pos = read_varint(data, pos)
            fields.append((field, wire_type, value))
        elif wire_type == LEN:
            size, pos = read_varint(data, pos)
            fields.append((field, wire_type, data[pos : pos + size]))
            pos += size
        else:
            raise ValueError(f"unexpected wire type {wire_type} for field {field}")
    return fields


@dataclass(frozen=True)
class MapOf:
    """Shape of a map field; value is the shape of a message value, or None for strings."""

    value: dict | None = None


def canonical(data: bytes, shape: dict) -> tuple:
    """Decode ``data`` into a comparable tree: fields in number order, maps as sorted entry sets.

    ``shape`` maps field number → None (scalar), a nested shape (message) or MapOf; a field the
    shape does not know is an error, so stray fields cannot hide.
    """
    fields: dict[int, list] = {}
    for field, wire_type, value in decode(data):
        if field not in shape:
            raise AssertionError(f"field {field} not in the spec shape")
        sub = shape[field]
        if isinstance(sub, MapOf):
            value = canonical(value, {1: None, 2: sub.value})
        elif sub is not None:
            value = canonical(value, sub)
        fields.setdefault(field, []).append((wire_type, value))
    # Map order on the wire is unspecified; repeated order is meaningful and kept.
    return tuple(
        (field, tuple(sorted(values, key=repr) if isinstance(shape[field], MapOf) else values))
        for field, values in sorted(fields.items())
    )


def test_encoder_matches_the_protobuf_encoding_examples() -> None:
    assert varint(1) == b"\x01"
    assert varint(300) == b"\xac\x02"
    assert varint(-1) == b"\xff" * 9 + b"\x01"
    assert num(1, 150) == bytes.fromhex("089601")
    assert text(2, "testing") == bytes.fromhex("120774657374696e67")


def test_decoder_reads_what_the_encoder_wrote() -> None:
    data = num(1, 150) + text(2, "x") + msg(3, num(1, 2))
    assert decode(data) == [(1, VARINT, 150), (2, LEN, b"x"), (3, LEN, b"\x08\x02")]
    assert canonical(entry(1, "b", "2") + entry(1, "a", "1"), {1: MapOf()}) == canonical(
        entry(1, "a", "1") + entry(1, "b", "2"), {1: MapOf()}
    )
    with pytest.raises(AssertionError, match="field 4"):
        canonical(num(4, 1), {1: None})


# ---- shapes: which spec fields are messages and maps (field numbers from nsm-wire.md)

TIMESTAMP = {1: None, 2: None}
ROUTE = {1: None, 2: None}
IP_CONTEXT = {
    1: None,
    2: None,
    3: None,
    4: None,
    5: ROUTE,
    6: ROUTE,
    7: None,
    8: {1: None, 2: None},
    9: {1: {1: None}, 2: None, 3: None, 4: None},
    10: None,
    11: {1: None, 2: None, 3: None, 4: None, 5: ROUTE},
}
CONTEXT = {1: IP_CONTEXT, 2: {1: {1: None, 2: None}}, 3: {1: None, 2: None, 3: None}, 4: MapOf(), 5: None}
MECHANISM = {1: None, 2: None, 3: MapOf()}
SEGMENT = {1: None, 2: None, 3: None, 4: TIMESTAMP, 5: MapOf()}
CONNECTION = {
    1: None,
    2: None,
    3: MECHANISM,
    4: CONTEXT,
    5: MapOf(),
    6: {1: None, 2: SEGMENT},
    7: None,
    8: None,
    9: None,
}
REQUEST = {1: CONNECTION, 2: MECHANISM}
SELECTOR = {1: SEGMENT, 2: None}
EVENT = {1: None, 2: MapOf(CONNECTION)}
MATCH = {1: MapOf(), 2: {1: MapOf(), 2: None}, 3: None, 4: {1: MapOf()}}
SERVICE = {1: None, 2: None, 3: MATCH, 4: None}
ENDPOINT = {1: None, 2: None, 3: MapOf({1: MapOf()}), 4: None, 5: TIMESTAMP, 6: TIMESTAMP, 7: None}
SERVICE_QUERY = {1: SERVICE, 2: None}
ENDPOINT_QUERY = {1: ENDPOINT, 2: None}

# ---- golden messages: hand-written wire bytes and the same content built by field name


@dataclass(frozen=True)
class Golden:
    """One message: its wire bytes by field number, the same content by field name, and its shape."""

    wire: bytes
    expected: Message
    shape: dict


CC = connectioncontext_pb2
EXPIRES = 1_700_000_060

SEGMENT_NSC = b"".join(
    [text(1, "nsc-web"), text(2, "seg-1"), text(3, "tok-1"), msg(4, num(1, EXPIRES), num(2, 500))]
)
SEGMENT_NSMGR = b"".join(
    [
        text(1, "nsmgr-node1"),
        text(2, "seg-2"),
        text(3, "tok-2"),
        msg(4, num(1, EXPIRES)),
        entry(5, "rtt", "3ms"),
    ]
)
CONNECTION_WIRE = b"".join(
    [
        text(1, "ns1/web-0/nsm-1"),
        text(2, "secure-intranet"),
        msg(
            3,
            text(1, "LOCAL"),
            text(2, "KERNEL"),
            entry(3, "name", "nsm-1"),
            entry(3, "inodeURL", "file:///proc/42/ns/net"),
        ),
        msg(
            4,
            msg(
                1,
                text(1, "10.0.0.1/32"),
                text(2, "10.0.0.2/32"),
                msg(6, text(1, "10.0.0.0/24"), text(2, "10.0.0.2")),
                msg(8, text(1, "10.0.0.2"), text(2, "02:fe:00:00:00:02")),
            ),
            msg(3, text(1, "02:fe:00:00:00:01"), text(2, "02:fe:00:00:00:02"), num(3, 100)),
            num(5, 1450),
        ),
        entry(5, "app", "web"),
        entry(5, "tier", "front"),
        msg(6, num(1, 1), length(2, SEGMENT_NSC), length(2, SEGMENT_NSMGR)),
        text(7, "nse-firewall-1"),
        text(8, "ETHERNET"),
        num(9, 1),
    ]
)
CONNECTION_MSG = connection_pb2.Connection(
    id="ns1/web-0/nsm-1",
    network_service="secure-intranet",
    mechanism=connection_pb2.Mechanism(
        cls="LOCAL", type="KERNEL", parameters={"name": "nsm-1", "inodeURL": "file:///proc/42/ns/net"}
    ),
    context=CC.ConnectionContext(
        ip_context=CC.IPContext(
            src_ip_addrs=["10.0.0.1/32"],
            dst_ip_addrs=["10.0.0.2/32"],
            dst_routes=[CC.Route(prefix="10.0.0.0/24", nextHop="10.0.0.2")],
            ip_neighbors=[CC.IpNeighbor(ip="10.0.0.2", hardware_address="02:fe:00:00:00:02")],
        ),
        ethernet_context=CC.EthernetContext(
            src_mac="02:fe:00:00:00:01", dst_mac="02:fe:00:00:00:02", vlan_tag=100
        ),
        MTU=1450,
    ),
    labels={"app": "web", "tier": "front"},
    path=connection_pb2.Path(
        index=1,
        path_segments=[
            connection_pb2.PathSegment(
                name="nsc-web", id="seg-1", token="tok-1", expires=Timestamp(seconds=EXPIRES, nanos=500)
            ),
            connection_pb2.PathSegment(
                name="nsmgr-node1",
                id="seg-2",
                token="tok-2",
                expires=Timestamp(seconds=EXPIRES),
                metrics={"rtt": "3ms"},
            ),
        ],
    ),
    network_service_endpoint_name="nse-firewall-1",
    payload="ETHERNET",
    state=connection_pb2.DOWN,
)

CONTEXT_WIRE = b"".join(
    [
        msg(
            1,
            text(1, "10.1.0.1/32"),
            text(1, "fd00::1/128"),
            text(2, "10.1.0.2/32"),
            num(3, 1),
            num(4, 1),
            msg(5, text(1, "10.2.0.0/16"), text(2, "10.1.0.1")),
            msg(6, text(1, "0.0.0.0/0"), text(2, "10.1.0.2")),
            text(7, "10.96.0.0/12"),
            msg(8, text(1, "10.1.0.2"), text(2, "02:fe:00:00:00:02")),
            msg(9, msg(1, num(1, 1)), num(2, 64), num(3, 1), num(4, 2)),
            text(10, "10.3.0.0/24"),
            msg(
                11,
                text(1, "10.1.0.1/32"),
                text(2, "6"),
                text(3, "80"),
                text(4, "1024-65535"),
                msg(5, text(1, "10.4.0.0/16"), text(2, "10.1.0.2")),
            ),
        ),
        msg(2, msg(1, text(1, "10.96.0.10"), text(2, "cluster.local"), text(2, "svc.cluster.local"))),
        msg(3, text(1, "02:fe:00:00:00:01"), text(2, "02:fe:00:00:00:02"), num(3, 7)),
        entry(4, "zone", "a"),
        num(5, 9000),
    ]
)
CONTEXT_MSG = CC.ConnectionContext(
    ip_context=CC.IPContext(
        src_ip_addrs=["10.1.0.1/32", "fd00::1/128"],
        dst_ip_addrs=["10.1.0.2/32"],
        src_ip_required=True,
        dst_ip_required=True,
        src_routes=[CC.Route(prefix="10.2.0.0/16", nextHop="10.1.0.1")],
        dst_routes=[CC.Route(prefix="0.0.0.0/0", nextHop="10.1.0.2")],
        excluded_prefixes=["10.96.0.0/12"],
        ip_neighbors=[CC.IpNeighbor(ip="10.1.0.2", hardware_address="02:fe:00:00:00:02")],
        extra_prefix_request=[
            CC.ExtraPrefixRequest(
                addr_family=CC.IpFamily(family=CC.IpFamily.IPV6),
                prefix_len=64,
                required_number=1,
                requested_number=2,
            )
        ],
        extra_prefixes=["10.3.0.0/24"],
        policies=[
            CC.PolicyRoute(
                # "from" is a Python keyword: the field is only reachable by name through kwargs.
                **{"from": "10.1.0.1/32"},
                proto="6",
                dst_port="80",
                src_port="1024-65535",
                routes=[CC.Route(prefix="10.4.0.0/16", nextHop="10.1.0.2")],
            )
        ],
    ),
    dns_context=CC.DNSContext(
        configs=[
            CC.DNSConfig(dns_server_ips=["10.96.0.10"], search_domains=["cluster.local", "svc.cluster.local"])
        ]
    ),
    ethernet_context=CC.EthernetContext(src_mac="02:fe:00:00:00:01", dst_mac="02:fe:00:00:00:02", vlan_tag=7),
    extra_context={"zone": "a"},
    MTU=9000,
)

VXLAN_WIRE = b"".join(
    [text(1, "REMOTE"), text(2, "VXLAN"), entry(3, "vni", "42"), entry(3, "dst_ip", "192.0.2.2")]
)
REQUEST_WIRE = msg(1, CONNECTION_WIRE) + msg(2, text(1, "LOCAL"), text(2, "KERNEL")) + length(2, VXLAN_WIRE)
REQUEST_MSG = networkservice_pb2.NetworkServiceRequest(
    connection=CONNECTION_MSG,
    mechanism_preferences=[
        connection_pb2.Mechanism(cls="LOCAL", type="KERNEL"),
        connection_pb2.Mechanism(cls="REMOTE", type="VXLAN", parameters={"vni": "42", "dst_ip": "192.0.2.2"}),
    ],
)

SELECTOR_WIRE = length(1, SEGMENT_NSMGR) + text(2, "secure-intranet") + text(2, "finance")
SELECTOR_MSG = connection_pb2.MonitorScopeSelector(
    path_segments=[CONNECTION_MSG.path.path_segments[1]], network_services=["secure-intranet", "finance"]
)

SMALL_CONNECTION_WIRE = text(1, "ns1/db-0/nsm-1") + text(2, "finance") + num(9, 2)
SMALL_CONNECTION_MSG = connection_pb2.Connection(
    id="ns1/db-0/nsm-1", network_service="finance", state=connection_pb2.REFRESH_REQUESTED
)
EVENT_WIRE = (
    num(1, 1)
    + entry(2, "ns1/web-0/nsm-1", CONNECTION_WIRE)
    + entry(2, "ns1/db-0/nsm-1", SMALL_CONNECTION_WIRE)
)
EVENT_MSG = connection_pb2.ConnectionEvent(
    type=connection_pb2.UPDATE,
    connections={"ns1/web-0/nsm-1": CONNECTION_MSG, "ns1/db-0/nsm-1": SMALL_CONNECTION_MSG},
)

SERVICE_WIRE = b"".join(
    [
        text(1, "secure-intranet"),
        text(2, "IP"),
        msg(
            3,
            entry(1, "app", "firewall"),
            msg(2, entry(1, "app", "vpn-gateway"), num(2, 10)),
            num(3, 1),
            msg(4, entry(1, "stage", "2")),
        ),
        msg(3, msg(2, entry(1, "app", "firewall"), entry(1, "zone", "a"), num(2, 5)), msg(2, num(2, 1))),
        text(4, "path-a"),
        text(4, "path-b"),
    ]
)
SERVICE_MSG = registry_pb2.NetworkService(
    name="secure-intranet",
    payload="IP",
    matches=[
        registry_pb2.Match(
            source_selector={"app": "firewall"},
            routes=[registry_pb2.Destination(destination_selector={"app": "vpn-gateway"}, weight=10)],
            fallthrough=True,
            metadata=registry_pb2.Metadata(labels={"stage": "2"}),
        ),
        registry_pb2.Match(
            routes=[
                registry_pb2.Destination(destination_selector={"app": "firewall", "zone": "a"}, weight=5),
                registry_pb2.Destination(weight=1),
            ]
        ),
    ],
    path_ids=["path-a", "path-b"],
)

ENDPOINT_WIRE = b"".join(
    [
        text(1, "nse-firewall-1"),
        text(2, "secure-intranet"),
        text(2, "finance"),
        entry(3, "secure-intranet", entry(1, "app", "firewall") + entry(1, "zone", "a")),
        entry(3, "finance", entry(1, "app", "fw")),
        text(4, "tcp://10.0.0.5:5002"),
        msg(5, num(1, EXPIRES)),
        msg(6, num(1, 1_700_000_000), num(2, 123)),
        text(7, "path-a"),
    ]
)
ENDPOINT_MSG = registry_pb2.NetworkServiceEndpoint(
    name="nse-firewall-1",
    network_service_names=["secure-intranet", "finance"],
    network_service_labels={
        "secure-intranet": registry_pb2.NetworkServiceLabels(labels={"app": "firewall", "zone": "a"}),
        "finance": registry_pb2.NetworkServiceLabels(labels={"app": "fw"}),
    },
    url="tcp://10.0.0.5:5002",
    expiration_time=Timestamp(seconds=EXPIRES),
    initial_registration_time=Timestamp(seconds=1_700_000_000, nanos=123),
    path_ids=["path-a"],
)

GOLDENS = {
    "connection": Golden(CONNECTION_WIRE, CONNECTION_MSG, CONNECTION),
    "connection_context": Golden(CONTEXT_WIRE, CONTEXT_MSG, CONTEXT),
    "request": Golden(REQUEST_WIRE, REQUEST_MSG, REQUEST),
    "selector": Golden(SELECTOR_WIRE, SELECTOR_MSG, SELECTOR),
    "event": Golden(EVENT_WIRE, EVENT_MSG, EVENT),
    "service": Golden(SERVICE_WIRE, SERVICE_MSG, SERVICE),
    "endpoint": Golden(ENDPOINT_WIRE, ENDPOINT_MSG, ENDPOINT),
    "service_query": Golden(
        msg(1, SERVICE_WIRE) + num(2, 1),
        registry_pb2.NetworkServiceQuery(network_service=SERVICE_MSG, watch=True),
        SERVICE_QUERY,
    ),
    "endpoint_query": Golden(
        msg(1, ENDPOINT_WIRE) + num(2, 1),
        registry_pb2.NetworkServiceEndpointQuery(network_service_endpoint=ENDPOINT_MSG, watch=True),
        ENDPOINT_QUERY,
    ),
    "service_response": Golden(
        msg(1, SERVICE_WIRE) + num(2, 1),
        registry_pb2.NetworkServiceResponse(network_service=SERVICE_MSG, deleted=True),
        SERVICE_QUERY,
    ),
    "endpoint_response": Golden(
        msg(1, ENDPOINT_WIRE) + num(2, 1),
        registry_pb2.NetworkServiceEndpointResponse(network_service_endpoint=ENDPOINT_MSG, deleted=True),
        ENDPOINT_QUERY,
    ),
    "empty": Golden(b"", empty_pb2.Empty(), {}),
}


@pytest.mark.parametrize("name", sorted(GOLDENS))
def test_golden_wire_parses_into_the_named_fields(name: str) -> None:
    golden = GOLDENS[name]
    parsed = type(golden.expected).FromString(golden.wire)
    assert parsed == golden.expected


@pytest.mark.parametrize("name", sorted(GOLDENS))
def test_serialisation_puts_each_field_at_its_spec_number(name: str) -> None:
    golden = GOLDENS[name]
    assert canonical(golden.expected.SerializeToString(), golden.shape) == canonical(
        golden.wire, golden.shape
    )


def test_connection_fields_read_by_number() -> None:
    conn = connection_pb2.Connection.FromString(CONNECTION_WIRE)
    assert conn.mechanism.parameters["inodeURL"] == "file:///proc/42/ns/net"
    assert conn.context.ip_context.dst_routes[0].nextHop == "10.0.0.2"
    assert conn.context.MTU == 1450
    assert conn.path.index == 1
    assert conn.path.path_segments[0].expires.nanos == 500
    assert conn.path.path_segments[1].metrics == {"rtt": "3ms"}
    assert conn.state == connection_pb2.DOWN


def test_map_free_messages_serialise_to_the_exact_golden_bytes() -> None:
    assert SELECTOR_MSG.SerializeToString() == SELECTOR_WIRE
    assert SMALL_CONNECTION_MSG.SerializeToString() == SMALL_CONNECTION_WIRE
    # vlan_tag is int32: a negative value is a ten-byte two's complement varint, not zigzag.
    negative = CC.EthernetContext(vlan_tag=-2)
    assert negative.SerializeToString() == num(3, -2)
    assert CC.EthernetContext.FromString(num(3, -2)).vlan_tag == -2


# ---- names: packages, messages, fields, enums and methods exactly as nsm-wire.md lists them

# The message list of nsm-wire.md in its own notation (type name = number), one package per block.
SPEC_MESSAGES = {
    "connectioncontext": """
        ConnectionContext { IPContext ip_context = 1; DNSContext dns_context = 2;
            EthernetContext ethernet_context = 3; map<string,string> extra_context = 4; uint32 MTU = 5 }
        IPContext { repeated string src_ip_addrs = 1; repeated string dst_ip_addrs = 2;
            bool src_ip_required = 3; bool dst_ip_required = 4; repeated Route src_routes = 5;
            repeated Route dst_routes = 6; repeated string excluded_prefixes = 7;
            repeated IpNeighbor ip_neighbors = 8; repeated ExtraPrefixRequest extra_prefix_request = 9;
            repeated string extra_prefixes = 10; repeated PolicyRoute policies = 11 }
        Route { string prefix = 1; string nextHop = 2 }
        IpNeighbor { string ip = 1; string hardware_address = 2 }
        EthernetContext { string src_mac = 1; string dst_mac = 2; int32 vlan_tag = 3 }
        DNSContext { repeated DNSConfig configs = 1 }
        DNSConfig { repeated string dns_server_ips = 1; repeated string search_domains = 2 }
        PolicyRoute { string from = 1; string proto = 2; string dst_port = 3; string src_port = 4;
            repeated Route routes = 5 }
        ExtraPrefixRequest { IpFamily addr_family = 1; uint32 prefix_len = 2; uint32 required_number = 3;
            uint32 requested_number = 4 }
        IpFamily { Family family = 1 }
    """,
    "connection": """
        Connection { string id = 1; string network_service = 2; Mechanism mechanism = 3;
            connectioncontext.ConnectionContext context = 4; map<string,string> labels = 5; Path path = 6;
            string network_service_endpoint_name = 7; string payload = 8; State state = 9 }
        Mechanism { string cls = 1; string type = 2; map<string,string> parameters = 3 }
        Path { uint32 index = 1; repeated PathSegment path_segments = 2 }
        PathSegment { string name = 1; string id = 2; string token = 3; google.protobuf.Timestamp expires = 4;
            map<string,string> metrics = 5 }
        MonitorScopeSelector { repeated PathSegment path_segments = 1; repeated string network_services = 2 }
        ConnectionEvent { ConnectionEventType type = 1; map<string,Connection> connections = 2 }
    """,
    "networkservice": """
        NetworkServiceRequest { connection.Connection connection = 1;
            repeated connection.Mechanism mechanism_preferences = 2 }
    """,
    "registry": """
        NetworkService { string name = 1; string payload = 2; repeated Match matches = 3;
            repeated string path_ids = 4 }
        Match { map<string,string> source_selector = 1; repeated Destination routes = 2; bool fallthrough = 3;
            Metadata metadata = 4 }
        Destination { map<string,string> destination_selector = 1; uint32 weight = 2 }
        Metadata { map<string,string> labels = 1 }
        NetworkServiceEndpoint { string name = 1; repeated string network_service_names = 2;
            map<string,NetworkServiceLabels> network_service_labels = 3; string url = 4;
            google.protobuf.Timestamp expiration_time = 5;
            google.protobuf.Timestamp initial_registration_time = 6; repeated string path_ids = 7 }
        NetworkServiceLabels { map<string,string> labels = 1 }
        NetworkServiceQuery { NetworkService network_service = 1; bool watch = 2 }
        NetworkServiceEndpointQuery { NetworkServiceEndpoint network_service_endpoint = 1; bool watch = 2 }
        NetworkServiceResponse { NetworkService network_service = 1; bool deleted = 2 }
        NetworkServiceEndpointResponse { NetworkServiceEndpoint network_service_endpoint = 1;
            bool deleted = 2 }
    """,
}
SCALARS = {"string", "bool", "int32", "uint32"}
SCALAR_NAMES = {getattr(FieldDescriptor, f"TYPE_{name.upper()}"): name for name in SCALARS}
SPEC_ENUMS = {
    "connection.State": {"UP": 0, "DOWN": 1, "REFRESH_REQUESTED": 2, "RESELECT_REQUESTED": 3},
    "connection.ConnectionEventType": {"INITIAL_STATE_TRANSFER": 0, "UPDATE": 1, "DELETE": 2},
    "connectioncontext.IpFamily.Family": {"IPV4": 0, "IPV6": 1},
}
SPEC_METHODS = {
    "/networkservice.NetworkService/Request": (
        "networkservice.NetworkServiceRequest",
        "connection.Connection",
        False,
    ),
    "/networkservice.NetworkService/Close": ("connection.Connection", "google.protobuf.Empty", False),
    "/connection.MonitorConnection/MonitorConnections": (
        "connection.MonitorScopeSelector",
        "connection.ConnectionEvent",
        True,
    ),
    "/registry.NetworkServiceRegistry/Register": (
        "registry.NetworkService",
        "registry.NetworkService",
        False,
    ),
    "/registry.NetworkServiceRegistry/Find": (
        "registry.NetworkServiceQuery",
        "registry.NetworkServiceResponse",
        True,
    ),
    "/registry.NetworkServiceRegistry/Unregister": (
        "registry.NetworkService",
        "google.protobuf.Empty",
        False,
    ),
    "/registry.NetworkServiceEndpointRegistry/Register": (
        "registry.NetworkServiceEndpoint",
        "registry.NetworkServiceEndpoint",
        False,
    ),
    "/registry.NetworkServiceEndpointRegistry/Find": (
        "registry.NetworkServiceEndpointQuery",
        "registry.NetworkServiceEndpointResponse",
        True,
    ),
    "/registry.NetworkServiceEndpointRegistry/Unregister": (
        "registry.NetworkServiceEndpoint",
        "google.protobuf.Empty",
        False,
    ),
}
MODULES = {
    "connectioncontext": connectioncontext_pb2,
    "connection": connection_pb2,
    "networkservice": networkservice_pb2,
    "registry": registry_pb2,
}


def spec_declarations() -> dict[str, dict[str, str]]:
    """Message full name → field name → "type = number", types fully qualified, from SPEC_MESSAGES."""

    def qualify(scope: str, type_name: str) -> str:
        if type_name in SCALARS or type_name.split(".")[0] in {*SPEC_MESSAGES, "google"}:
            return type_name
        # Proto scoping: a type nested in the message (IpFamily.Family) shadows one of the package.
        package = scope.rsplit(".", 1)[0]
        return f"{scope}.{type_name}" if f"{scope}.{type_name}" in SPEC_ENUMS else f"{package}.{type_name}"

    declared: dict[str, dict[str, str]] = {}
    for package, block in SPEC_MESSAGES.items():
        for message, body in re.findall(r"(\w+) \{(.*?)\}", block, re.S):
            scope = f"{package}.{message}"
            fields = declared[scope] = {}
            for field in body.split(";"):
                kind, name, number = re.fullmatch(r"\s*(.+) (\w+) = (\d+)\s*", field).groups()
                if found := re.fullmatch(r"map<(\w+),(\w+)>", kind):
                    kind = f"map<{found[1]},{qualify(scope, found[2])}>"
                elif kind.startswith("repeated "):
                    kind = "repeated " + qualify(scope, kind.removeprefix("repeated "))
                else:
                    kind = qualify(scope, kind)
                fields[name] = f"{kind} = {number}"
    return declared


def declaration(field: FieldDescriptor) -> str:
    """A field of our descriptors in the spec's notation: "[repeated ]type = number" or "map<k,v> = n"."""

    def type_of(f: FieldDescriptor) -> str:
        described = f.message_type or f.enum_type
        return described.full_name if described else SCALAR_NAMES[f.type]

    if field.message_type and field.message_type.GetOptions().map_entry:
        key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
        return f"map<{type_of(key)},{type_of(value)}> = {field.number}"
    return ("repeated " if field.is_repeated else "") + f"{type_of(field)} = {field.number}"


def test_every_message_and_field_is_declared_as_in_the_spec() -> None:
    ours = {}
    for package, module in MODULES.items():
        assert module.DESCRIPTOR.package == package
        for message in module.DESCRIPTOR.message_types_by_name.values():
            ours[message.full_name] = {field.name: declaration(field) for field in message.fields}
    assert ours == spec_declarations()


def test_enums_are_named_and_numbered_as_in_the_spec() -> None:
    enums = [
        connection_pb2.DESCRIPTOR.enum_types_by_name["State"],
        connection_pb2.DESCRIPTOR.enum_types_by_name["ConnectionEventType"],
        CC.IpFamily.DESCRIPTOR.enum_types_by_name["Family"],
    ]
    assert {e.full_name: {v.name: v.number for v in e.values} for e in enums} == SPEC_ENUMS
    assert set(connection_pb2.DESCRIPTOR.enum_types_by_name) == {"State", "ConnectionEventType"}


def test_services_have_the_spec_full_method_names() -> None:
    ours = {}
    for module in MODULES.values():
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                assert not method.client_streaming
                ours[f"/{service.full_name}/{method.name}"] = (
                    method.input_type.full_name,
                    method.output_type.full_name,
                    method.server_streaming,
                )
    assert ours == SPEC_METHODS


# ---- generated code is what the .proto files give


def test_committed_modules_equal_a_fresh_generation(tmp_path: Path) -> None:
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen-proto"), str(tmp_path)],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    fresh = {path.name: path.read_bytes() for path in (tmp_path / "nsm_api").iterdir()}
    committed = {
        path.name: path.read_bytes()
        for path in (ROOT / "nsm_api").iterdir()
        if path.name.endswith(GENERATED_SUFFIXES)
    }
    assert sorted(committed) == sorted(fresh)
    for name, content in fresh.items():
        assert committed[name] == content, f"nsm_api/{name} is stale: run scripts/gen-proto"


# ---- gRPC over plain grpcio: our stubs against a bytes server, our servicers against a bytes client

CALLS = {
    "/networkservice.NetworkService/Request": ("request", "connection"),
    "/networkservice.NetworkService/Close": ("connection", "empty"),
    "/connection.MonitorConnection/MonitorConnections": ("selector", "event"),
    "/registry.NetworkServiceRegistry/Register": ("service", "service"),
    "/registry.NetworkServiceRegistry/Find": ("service_query", "service_response"),
    "/registry.NetworkServiceRegistry/Unregister": ("service", "empty"),
    "/registry.NetworkServiceEndpointRegistry/Register": ("endpoint", "endpoint"),
    "/registry.NetworkServiceEndpointRegistry/Find": ("endpoint_query", "endpoint_response"),
    "/registry.NetworkServiceEndpointRegistry/Unregister": ("endpoint", "empty"),
}
STUBS = {
    "networkservice.NetworkService": networkservice_pb2_grpc.NetworkServiceStub,
    "connection.MonitorConnection": connection_pb2_grpc.MonitorConnectionStub,
    "registry.NetworkServiceRegistry": registry_pb2_grpc.NetworkServiceRegistryStub,
    "registry.NetworkServiceEndpointRegistry": registry_pb2_grpc.NetworkServiceEndpointRegistryStub,
}


def start_server(server: grpc.Server) -> str:
    """Start ``server`` on a free loopback port and return its address."""
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return f"127.0.0.1:{port}"


def open_channel(address: str) -> grpc.Channel:
    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT)
    return channel


@dataclass
class RawServer:
    """A gRPC server that knows only method paths and bytes: it records requests, answers goldens."""

    channel: grpc.Channel
    received: dict[str, list[bytes]]


@pytest.fixture
def raw_server() -> Iterator[RawServer]:
    received: dict[str, list[bytes]] = {}

    def unary(path: str):
        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            received.setdefault(path, []).append(request)
            return GOLDENS[CALLS[path][1]].wire

        return grpc.unary_unary_rpc_method_handler(handle)

    def stream(path: str):
        def handle(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
            received.setdefault(path, []).append(request)
            yield GOLDENS[CALLS[path][1]].wire
            yield GOLDENS[CALLS[path][1]].wire

        return grpc.unary_stream_rpc_method_handler(handle)

    handlers: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
    for path, (_, _, server_streaming) in SPEC_METHODS.items():
        service, method = path.strip("/").split("/")
        handlers.setdefault(service, {})[method] = stream(path) if server_streaming else unary(path)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(service, methods) for service, methods in handlers.items()]
    )
    channel = open_channel(start_server(server))
    yield RawServer(channel, received)
    channel.close()
    server.stop(None).wait()


@pytest.mark.parametrize("path", sorted(CALLS))
def test_our_stub_talks_to_a_bytes_only_server(raw_server: RawServer, path: str) -> None:
    service, method = path.strip("/").split("/")
    request, response = (GOLDENS[name] for name in CALLS[path])
    call = getattr(STUBS[service](raw_server.channel), method)
    if SPEC_METHODS[path][2]:
        answers = list(call(request.expected, timeout=RPC_TIMEOUT))
        assert answers == [response.expected, response.expected]
    else:
        assert call(request.expected, timeout=RPC_TIMEOUT) == response.expected
    [sent] = raw_server.received[path]
    assert canonical(sent, request.shape) == canonical(request.wire, request.shape)


NOW = 1_700_000_000.0


class Forwarder(
    networkservice_pb2_grpc.NetworkServiceServicer, connection_pb2_grpc.MonitorConnectionServicer
):
    """A minimal NSM hop on our generated servicers: appends its segment, remembers what it got."""

    def __init__(self, connections: list[connection_pb2.Connection]) -> None:
        self.connections = connections
        self.closed: list[connection_pb2.Connection] = []

    def Request(self, request, context):  # noqa: N802 (gRPC method name)
        answer = paths.append_segment(request.connection, "forwarder-node1", "fwd-token", 60.0, NOW)
        answer.state = connection_pb2.UP
        return answer

    def Close(self, request, context):  # noqa: N802
        self.closed.append(request)
        return empty_pb2.Empty()

    def MonitorConnections(self, request, context):  # noqa: N802
        chosen = [c for c in self.connections if c.network_service in request.network_services]
        yield connection_pb2.ConnectionEvent(
            type=connection_pb2.INITIAL_STATE_TRANSFER, connections={c.id: c for c in chosen}
        )


@pytest.fixture
def forwarder() -> Iterator[tuple[Forwarder, grpc.Channel]]:
    servicer = Forwarder([CONNECTION_MSG, connection_pb2.Connection(id="other", network_service="elsewhere")])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    networkservice_pb2_grpc.add_NetworkServiceServicer_to_server(servicer, server)
    connection_pb2_grpc.add_MonitorConnectionServicer_to_server(servicer, server)
    channel = open_channel(start_server(server))
    yield servicer, channel
    channel.close()
    server.stop(None).wait()


def test_our_servicer_answers_a_bytes_only_request(forwarder: tuple[Forwarder, grpc.Channel]) -> None:
    _, channel = forwarder
    request = channel.unary_unary("/networkservice.NetworkService/Request")
    raw = request(REQUEST_WIRE, timeout=RPC_TIMEOUT)
    reply, sent = dict(canonical(raw, CONNECTION)), dict(canonical(CONNECTION_WIRE, CONNECTION))
    # All but the path comes back as sent, except state: UP = 0 is the default and so absent.
    assert {f: v for f, v in reply.items() if f != 6} == {f: v for f, v in sent.items() if f not in (6, 9)}
    [(_, _, path_bytes)] = [field for field in decode(raw) if field[0] == 6]
    path = decode(path_bytes)
    assert path[0] == (1, VARINT, 2)
    segments = [value for field, _, value in path if field == 2]
    assert [canonical(s, SEGMENT) for s in segments[:2]] == [
        canonical(SEGMENT_NSC, SEGMENT),
        canonical(SEGMENT_NSMGR, SEGMENT),
    ]
    added = {field: value for field, _, value in decode(segments[2])}
    assert added[1] == b"forwarder-node1"
    assert uuid.UUID(added[2].decode()).version == 4
    assert added[3] == b"fwd-token"
    assert canonical(added[4], TIMESTAMP) == canonical(num(1, int(NOW) + 60), TIMESTAMP)


def test_our_servicer_closes_a_bytes_only_connection(forwarder: tuple[Forwarder, grpc.Channel]) -> None:
    servicer, channel = forwarder
    close = channel.unary_unary("/networkservice.NetworkService/Close")
    assert close(CONNECTION_WIRE, timeout=RPC_TIMEOUT) == b""
    assert servicer.closed == [CONNECTION_MSG]


def test_our_servicer_streams_events_to_a_bytes_only_monitor(
    forwarder: tuple[Forwarder, grpc.Channel],
) -> None:
    _, channel = forwarder
    monitor = channel.unary_stream("/connection.MonitorConnection/MonitorConnections")
    [event] = list(monitor(SELECTOR_WIRE, timeout=RPC_TIMEOUT))
    # INITIAL_STATE_TRANSFER = 0 is the default, so only the connections map is on the wire.
    expected = entry(2, "ns1/web-0/nsm-1", CONNECTION_WIRE)
    assert canonical(event, EVENT) == canonical(expected, EVENT)


# ---- nsm_api.paths


def test_append_segment_starts_an_empty_path_at_index_zero() -> None:
    conn = connection_pb2.Connection(id="c1")
    updated = paths.append_segment(conn, "nsc", "tok", 60.0, 1_700_000_000.25)
    [segment] = updated.path.path_segments
    assert updated.path.index == 0
    assert (segment.name, segment.token) == ("nsc", "tok")
    assert uuid.UUID(segment.id).version == 4
    assert (segment.expires.seconds, segment.expires.nanos) == (1_700_000_060, 250_000_000)
    assert conn == connection_pb2.Connection(id="c1")


def test_append_segment_advances_the_index_with_a_fresh_id_each_hop() -> None:
    first = paths.append_segment(connection_pb2.Connection(id="c1"), "nsc", "t1", 60.0, NOW)
    second = paths.append_segment(first, "nsmgr", "t2", 30.0, NOW)
    assert second.path.index == 1
    assert [s.name for s in second.path.path_segments] == ["nsc", "nsmgr"]
    assert second.path.path_segments[0] == first.path.path_segments[0]
    assert second.path.path_segments[1].id != first.path.path_segments[0].id
    assert len(first.path.path_segments) == 1


def test_append_segment_replaces_segments_past_the_current_index() -> None:
    # A refresh re-sends the whole earlier path with the index back at the sender's own segment.
    earlier = connection_pb2.Connection()
    earlier.CopyFrom(CONNECTION_MSG)
    earlier.path.index = 0
    updated = paths.append_segment(earlier, "nsmgr-node1", "tok-3", 60.0, NOW)
    assert updated.path.index == 1
    assert [s.name for s in updated.path.path_segments] == ["nsc-web", "nsmgr-node1"]
    assert updated.path.path_segments[1].id != "seg-2"


def test_is_expired_follows_the_earliest_segment_expiry() -> None:
    conn = paths.append_segment(connection_pb2.Connection(id="c1"), "nsc", "t1", 60.0, NOW)
    conn = paths.append_segment(conn, "nsmgr", "t2", 30.0, NOW)
    assert paths.earliest_expiry(conn) == NOW + 30
    assert not paths.is_expired(conn, NOW + 29.999)
    assert paths.is_expired(conn, NOW + 30)
    assert paths.is_expired(conn, NOW + 61)


def test_a_connection_without_expiry_never_expires() -> None:
    no_path = connection_pb2.Connection(id="c1")
    no_expiry = connection_pb2.Connection(
        id="c2", path=connection_pb2.Path(path_segments=[connection_pb2.PathSegment(name="nsc")])
    )
    for conn in (no_path, no_expiry):
        assert paths.earliest_expiry(conn) is None
        assert not paths.is_expired(conn, NOW)
