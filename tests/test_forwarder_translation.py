"""The forwarder's pure parts: mechanism choice, translation, path stamping and monitor scopes."""

from __future__ import annotations

import grpc
import pytest

from nsm_api import connection_pb2
from nsm_api.connection_pb2 import Connection, Mechanism, MonitorScopeSelector, PathSegment
from nsm_api.connectioncontext_pb2 import ConnectionContext, EthernetContext, IPContext, Route
from nsm_api.errors import RequestError
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from ovs_forwarder.monitors import matches
from ovs_forwarder.translation import select_mechanism, stamp_path, translate


def kernel(netns: str, **params: str) -> Mechanism:
    return Mechanism(cls="LOCAL", type="KERNEL", parameters={"inodeURL": netns, **params})


def test_mechanism_choice_takes_the_first_local_kernel_and_falls_back_to_the_connection():
    memif, kernel_any = Mechanism(cls="LOCAL", type="MEMIF"), Mechanism(type="KERNEL", parameters={"a": "1"})
    later = Mechanism(cls="LOCAL", type="KERNEL")
    req = NetworkServiceRequest(mechanism_preferences=[memif, kernel_any, later])
    assert select_mechanism(req) == kernel_any
    refresh_only = NetworkServiceRequest(connection=Connection(mechanism=kernel("ns1")))
    assert select_mechanism(refresh_only) == kernel("ns1")
    with pytest.raises(RequestError, match="no mechanism preferences") as failed:
        select_mechanism(NetworkServiceRequest())
    assert failed.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_translation_reads_the_side_of_the_connection_the_interface_is_on():
    context = ConnectionContext(MTU=1450, ip_context=IPContext(
        src_ip_addrs=["10.90.0.1/24"], dst_ip_addrs=["10.90.0.2/24"],
        src_routes=[Route(prefix="10.91.0.0/16")],
        dst_routes=[Route(prefix="10.92.0.0/16", nextHop="10.90.0.2")]),
        ethernet_context=EthernetContext(src_mac="02:90:00:00:00:01", dst_mac="02:90:00:00:00:02"))
    conn = Connection(id="c1", network_service="echo", context=context, labels={"app": "web"},
                      network_service_endpoint_name="echo-ep-1")

    client = translate(NetworkServiceRequest(connection=conn, mechanism_preferences=[kernel("ns1")]),
                       bridge="br", owner="me", expires=100.0)
    endpoint = translate(NetworkServiceRequest(connection=conn, mechanism_preferences=[
        kernel("ns2", name="eth9", **{"ryu-nsm.io/role": "endpoint"})]), bridge="br", owner="me")

    assert (client.kernel.addresses, client.kernel.routes, client.kernel.mac) == (
        ("10.90.0.1/24",), (("10.92.0.0/16", "10.90.0.2"),), "02:90:00:00:00:01")
    assert (client.kernel.role, client.kernel.ifname, client.kernel.netns, client.kernel.mtu) == (
        "client", "nsm-1", "ns1", 1450)
    assert (client.endpoint, dict(client.kernel.labels), client.kernel.expires) == (
        None, {"app": "web"}, 100.0)
    assert (endpoint.kernel.addresses, endpoint.kernel.routes, endpoint.kernel.mac) == (
        ("10.90.0.2/24",), (("10.91.0.0/16", None),), "02:90:00:00:00:02")
    assert (endpoint.kernel.role, endpoint.kernel.ifname, endpoint.endpoint) == (
        "endpoint", "eth9", "echo-ep-1")
    nameless = Connection(id="c2")
    with pytest.raises(RequestError, match="ryu-nsm.io/endpoint"):
        translate(NetworkServiceRequest(connection=nameless, mechanism_preferences=[
            kernel("ns2", **{"ryu-nsm.io/role": "endpoint"})]), bridge="br", owner="me")


def test_stamp_path_reuses_our_segment_and_appends_after_others():
    nsc = PathSegment(name="nsc", id="nsc-id")
    sent_first = Connection(id="c1", path=connection_pb2.Path(path_segments=[nsc]))
    fresh = stamp_path(sent_first, "fwd", "t1", 60, 1000)
    assert [s.name for s in fresh.path.path_segments] == ["nsc", "fwd"] and fresh.path.index == 1
    ours = fresh.path.path_segments[1]

    for index in (0, 1):  # the client sends its own index (NSM) or ours back (as we answer)
        sent = Connection()
        sent.CopyFrom(fresh)
        sent.path.index = index
        again = stamp_path(sent, "fwd", "t2", 60, 2000)
        assert [(s.name, s.id, s.token) for s in again.path.path_segments] == [
            ("nsc", "nsc-id", ""), ("fwd", ours.id, "t2")]
        assert again.path.index == 1 and again.path.path_segments[1].expires.seconds == 2060

    alone = stamp_path(Connection(id="c1"), "fwd", "t1", 60, 1000)
    assert stamp_path(alone, "fwd", "t2", 60, 1000).path.path_segments[0].id == alone.path.path_segments[0].id


def test_monitor_scope_matches_services_and_contiguous_path_segments():
    conn = Connection(id="c1", network_service="echo", path=connection_pb2.Path(path_segments=[
        PathSegment(name="nsc", id="1"), PathSegment(name="nsmgr", id="2"), PathSegment(name="fwd", id="3")]))
    scope = MonitorScopeSelector

    assert matches(conn, scope())
    assert matches(conn, scope(network_services=["other", "echo"]))
    assert not matches(conn, scope(network_services=["other"]))
    assert matches(conn, scope(path_segments=[PathSegment(name="nsmgr"), PathSegment(id="3")]))
    assert not matches(conn, scope(path_segments=[PathSegment(name="nsc"), PathSegment(name="fwd")]))
    assert not matches(conn, scope(path_segments=[PathSegment(name="fwd", id="9")]))
