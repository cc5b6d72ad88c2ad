"""The forwarder's NSM gRPC over mTLS with NSM's signed path tokens, on a real OVS bridge and real
namespaces: a valid chain is plumbed; a request that breaks one policy is PERMISSION_DENIED naming it
and leaves nothing in OVS or the kernel; Close is authorized too; a client of another CA is refused at
the handshake; a monitor sees only its own connections. Names start with "tg"."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest

from nsm_api import connection_pb2, networkservice_pb2_grpc
from nsm_api.connection_pb2 import Connection, Mechanism
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_api.tokens import claims_of, verify_signature
from ovs_forwarder.kernel_request import host_ifname
from ovs_forwarder.ovsdb import Ovsdb
from ovs_forwarder.server import Forwarder
from tests import pki
from tests.forwarder_support import connection_ids, netdev_bridge, netns_names, ovs_by_connection, root_links
from tests.nsm_trust_support import BREAKABLE, Stream, breaking, chained_path, channel
from tests.test_trust_tls import StaticSource

pytestmark = pytest.mark.ovs

TAG = "tg" + uuid.uuid4().hex[:6]
BRIDGE = f"{TAG}br"
DAY = 86400.0


@pytest.fixture(scope="module")
def hops():
    authority = pki.ca()
    return {name: pki.svid(authority, name) for name in ("nsc", "nsmgr", "nsmgr2", "forwarder", "other")}


@pytest.fixture(scope="module")
def bridge() -> Iterator[str]:
    with netdev_bridge(BRIDGE) as name:
        yield name


@pytest.fixture
def serve(bridge, hops, tmp_path) -> Iterator[Callable[..., tuple[Forwarder, str, str]]]:
    """Start a forwarder with the forwarder's SVID (unix socket and loopback TCP); stopped after."""
    made: list[Forwarder] = []

    def start(clock: Callable[[], float] = time.time) -> tuple[Forwarder, str, str]:
        db = Ovsdb().__enter__()
        forwarder = Forwarder(db, BRIDGE, f"{TAG}-fwd{len(made)}", clock=clock,
                              identity=StaticSource(hops["forwarder"]))
        made.append(forwarder)
        forwarder.serve([f"unix://{tmp_path}/f{len(made)}.sock", "127.0.0.1:0"])
        return forwarder, *forwarder.listening

    yield start
    for forwarder in made:
        forwarder.stop()
        forwarder.ovsdb.__exit__(None, None, None)


@pytest.fixture
def ids() -> Iterator[Callable[[str], str]]:
    with connection_ids(TAG) as new:
        yield new


@pytest.fixture
def netns() -> Iterator[Callable[[], str]]:
    with netns_names(TAG) as new:
        yield lambda: f"file:///var/run/netns/{new()}"


def kernel_request(cid: str, netns_url: str, path) -> NetworkServiceRequest:
    connection = Connection(id=cid, network_service="echo", path=path)
    return NetworkServiceRequest(connection=connection, mechanism_preferences=[
        Mechanism(cls="LOCAL", type="KERNEL", parameters={"inodeURL": netns_url})])


def call(identity, target, method: str, message):
    with channel(identity, target) as chan:
        return getattr(networkservice_pb2_grpc.NetworkServiceStub(chan), method)(message, timeout=10)


def refused(identity, target, method: str, message) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refusal:
        call(identity, target, method, message)
    return refusal.value


def plumbed(cid: str) -> bool:
    return bool(ovs_by_connection(cid)) or host_ifname(cid) in root_links()


def test_a_valid_chain_is_plumbed_and_answered_with_a_signed_token(serve, hops, ids, netns):
    forwarder, unix, tcp = serve()
    for target in (unix, tcp):
        cid = ids("ok")
        path = chained_path([hops["nsc"], hops["nsmgr"]], hops["forwarder"])
        answer = call(hops["nsmgr"], target, "Request", kernel_request(cid, netns(), path))
        assert answer.state == connection_pb2.UP and answer.path.index == 2 and plumbed(cid)
        ours = answer.path.path_segments[2].token
        verify_signature(ours, hops["forwarder"].key.public_key())
        assert claims_of(ours)["aud"] == ["spiffe://example.org/nsmgr"]
        call(hops["nsmgr"], target, "Close", answer)
        assert not plumbed(cid)


@pytest.mark.parametrize("policy", BREAKABLE)
def test_each_policy_broken_alone_is_denied_and_plumbs_nothing(serve, hops, ids, netns, policy):
    forwarder, unix, _ = serve()
    cid = ids(policy.replace("_", ""))
    path = breaking(policy, [hops["nsc"], hops["nsmgr"]], hops["forwarder"], hops["other"])
    refusal = refused(hops["nsmgr"], unix, "Request", kernel_request(cid, netns(), path))
    assert refusal.code() == grpc.StatusCode.PERMISSION_DENIED and f"policy {policy}" in refusal.details()
    assert not plumbed(cid) and forwarder.connections() == {}


def test_a_peer_certificate_past_its_notafter_is_denied_tokens_expired(serve, hops, ids, netns):
    """Our token's exp is capped by the peer's NotAfter; on a clock two days ahead it is past."""
    forwarder, unix, _ = serve(clock=lambda: time.time() + 2 * DAY)
    cid = ids("expired")
    path = chained_path([hops["nsc"], hops["nsmgr"]], hops["forwarder"])
    refusal = refused(hops["nsmgr"], unix, "Request", kernel_request(cid, netns(), path))
    assert refusal.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "policy tokens_expired" in refusal.details() and not plumbed(cid)


def test_close_is_authorized_and_a_refused_close_unplumbs_nothing(serve, hops, ids, netns):
    forwarder, unix, _ = serve()
    cid = ids("close")
    path = chained_path([hops["nsc"], hops["nsmgr"]], hops["forwarder"])
    answer = call(hops["nsmgr"], unix, "Request", kernel_request(cid, netns(), path))
    refusal = refused(hops["other"], unix, "Close", answer)
    assert refusal.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "policy prev_token_signed" in refusal.details() and plumbed(cid)
    call(hops["nsmgr"], unix, "Close", answer)
    assert not plumbed(cid)


def test_a_client_of_another_ca_is_refused_at_the_handshake(serve, hops, ids, netns):
    forwarder, unix, tcp = serve()
    stranger = pki.svid(pki.ca(), "nsmgr")
    trusting = pki.pem(hops["forwarder"].bundle[0])
    credentials = grpc.ssl_channel_credentials(trusting, stranger.key_pem(), stranger.chain_pem())
    cid = ids("stranger")
    request = kernel_request(cid, netns(), chained_path([hops["nsc"], stranger], hops["forwarder"]))
    for target in (unix, tcp):
        with grpc.secure_channel(target, credentials,
                                 options=[("grpc.ssl_target_name_override", pki.SERVER_NAME)]) as chan:
            with pytest.raises(grpc.RpcError) as refusal:
                networkservice_pb2_grpc.NetworkServiceStub(chan).Request(request, timeout=10)
        assert refusal.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not plumbed(cid)


def test_a_monitor_sees_only_connections_its_spiffe_id_is_on(serve, hops, ids, netns):
    forwarder, unix, _ = serve()
    mine, theirs = ids("mine"), ids("theirs")
    call(hops["nsmgr"], unix, "Request",
         kernel_request(mine, netns(), chained_path([hops["nsc"], hops["nsmgr"]], hops["forwarder"])))
    streams = {name: Stream(hops[name], unix) for name in ("nsc", "nsmgr", "nsmgr2", "other")}
    try:
        seen = {name: set(stream.next().connections) for name, stream in streams.items()}
        assert seen == {"nsc": {mine}, "nsmgr": {mine}, "nsmgr2": set(), "other": set()}
        call(hops["nsmgr2"], unix, "Request",
             kernel_request(theirs, netns(), chained_path([hops["nsmgr2"]], hops["forwarder"])))
        assert set(streams["nsmgr2"].next().connections) == {theirs}
        assert streams["nsmgr"].events.empty()
    finally:
        for stream in streams.values():
            stream.close()
