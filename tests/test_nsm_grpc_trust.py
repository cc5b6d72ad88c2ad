"""The controller's NSM gRPC face over mTLS with NSM's signed path tokens: real gRPC on a unix socket
and loopback TCP, SVIDs from tests/pki.py, the controller's status faked (every held connection up).
Also the insecure mode's warning and the identity flags."""

from __future__ import annotations

import argparse
import logging
import time

import grpc
import pytest

from nsm_api import connection_pb2, networkservice_pb2, networkservice_pb2_grpc
from nsm_api.connection_pb2 import Connection, Mechanism
from nsm_api.serving import UNSIGNED_PREFIX
from nsm_api.tokens import claims_of, verify_signature
from ryu_nsm.sources.nsm_grpc import ATTACHMENT_PARAM, GrpcRequests, NsmServer
from ryu_nsm.trust.identity import FileIdentitySource
from ryu_nsm.trust.options import add_identity_arguments, identity_source
from ryu_nsm.trust.workload import WorkloadApiSource
from tests import pki
from tests.nsm_trust_support import BREAKABLE, Stream, breaking, chained_path, channel, served_certificate
from tests.spiffe_emulator import WorkloadApiEmulator
from tests.test_trust_tls import StaticSource


@pytest.fixture(scope="module")
def authority():
    return pki.ca()


@pytest.fixture(scope="module")
def hops(authority):
    return {name: pki.svid(authority, name) for name in ("nsc", "nsmgr", "nsmgr2", "controller", "other")}


class Face:
    """An NsmServer serving ``identity`` on a unix socket and loopback TCP; ``reports`` holds what its
    source declared to the controller, latest last."""

    def __init__(self, directory, identity):
        self.reports: list = []
        self.source = GrpcRequests(self.reports.append)
        self.server = NsmServer(self.source, self._status, identity=identity, default_timeout=5, settle=0.1,
                                monitor_interval=0.02)
        self.server.serve([f"unix://{directory}/c.sock", "127.0.0.1:0"])
        self.unix, self.tcp = self.server.listening

    def _status(self) -> dict:
        return {"connections": [{"id": held.request.id, "state": "up", "endpoint": "server",
                                 "path": ["a", "b"]} for held in self.source.held().values()]}

    def declared(self) -> int:
        return len(self.reports[-1].requests)


@pytest.fixture
def face(tmp_path, hops):
    served = Face(tmp_path, StaticSource(hops["controller"]))
    yield served
    served.server.stop()


def nsm_request(cid: str, path) -> networkservice_pb2.NetworkServiceRequest:
    return networkservice_pb2.NetworkServiceRequest(connection=Connection(
        id=cid, network_service="echo", path=path,
        mechanism=Mechanism(cls="LOCAL", type="KERNEL", parameters={ATTACHMENT_PARAM: "br/p1"})))


def ask(identity, target, request) -> Connection:
    with channel(identity, target) as chan:
        return networkservice_pb2_grpc.NetworkServiceStub(chan).Request(request, timeout=10)


def denied(identity, target, request, call: str = "Request") -> grpc.RpcError:
    with channel(identity, target) as chan, pytest.raises(grpc.RpcError) as refusal:
        message = request if call == "Request" else request.connection
        getattr(networkservice_pb2_grpc.NetworkServiceStub(chan), call)(message, timeout=10)
    return refusal.value


@pytest.mark.parametrize("where", ["unix", "tcp"])
def test_a_valid_three_hop_chain_is_answered_with_a_signed_token(face, hops, where):
    path = chained_path([hops["nsc"], hops["nsmgr"]], hops["controller"])
    answer = ask(hops["nsmgr"], getattr(face, where), nsm_request(f"c-{where}", path))
    assert answer.state == connection_pb2.UP and answer.path.index == 2
    ours = answer.path.path_segments[2].token
    verify_signature(ours, hops["controller"].key.public_key())
    claims = claims_of(ours)
    assert claims["sub"] == "spiffe://example.org/controller"
    assert claims["aud"] == ["spiffe://example.org/nsmgr"]
    assert claims["exp"] <= time.time() + 600
    assert face.declared() == 1


@pytest.mark.parametrize("policy", BREAKABLE)
def test_each_policy_broken_alone_is_denied_and_declares_nothing(face, hops, policy):
    path = breaking(policy, [hops["nsc"], hops["nsmgr"]], hops["controller"], hops["other"])
    refusal = denied(hops["nsmgr"], face.unix, nsm_request("c", path))
    assert refusal.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"policy {policy}" in refusal.details()
    assert face.source.held() == {} and face.declared() == 0


def test_a_valid_path_sent_by_another_peer_is_denied(face, hops):
    path = chained_path([hops["nsc"], hops["nsmgr"]], hops["controller"])
    refusal = denied(hops["other"], face.unix, nsm_request("c", path))
    assert refusal.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "policy prev_token_signed" in refusal.details() and face.declared() == 0


def test_a_peer_whose_svid_expired_mid_connection_is_denied(face, authority, hops):
    """tokens_expired: our token's exp is capped by the peer's NotAfter, now past."""
    brief = pki.svid(authority, "nsmgr", days=3 / 86400)
    request = nsm_request("c", chained_path([hops["nsc"], brief], hops["controller"]))
    with channel(brief, face.tcp) as chan:
        grpc.channel_ready_future(chan).result(timeout=10)
        time.sleep(max(brief.not_after.timestamp() - time.time(), 0) + 1.1)
        with pytest.raises(grpc.RpcError) as refusal:
            networkservice_pb2_grpc.NetworkServiceStub(chan).Request(request, timeout=10)
    assert refusal.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "policy tokens_expired" in refusal.value.details() and face.declared() == 0


def test_close_is_authorized_too(face, hops):
    path = chained_path([hops["nsc"], hops["nsmgr"]], hops["controller"])
    ask(hops["nsmgr"], face.unix, nsm_request("c", path))
    forged = breaking("tokens_chained", [hops["nsc"], hops["nsmgr"]], hops["controller"], hops["other"])
    refusal = denied(hops["nsmgr"], face.unix, nsm_request("c", forged), call="Close")
    assert refusal.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "policy tokens_chained" in refusal.details() and face.declared() == 1
    with channel(hops["nsmgr"], face.unix) as chan:
        networkservice_pb2_grpc.NetworkServiceStub(chan).Close(Connection(id="c", path=path), timeout=10)
    assert face.declared() == 0


def test_a_client_of_another_ca_is_refused_at_the_handshake(face, authority, hops):
    stranger = pki.svid(pki.ca(), "nsmgr")
    credentials = grpc.ssl_channel_credentials(pki.pem(authority.cert), stranger.key_pem(),
                                               stranger.chain_pem())
    path = chained_path([hops["nsc"], stranger], hops["controller"])
    for target in (face.unix, face.tcp):
        with grpc.secure_channel(target, credentials, options=[("grpc.ssl_target_name_override",
                                                                pki.SERVER_NAME)]) as chan:
            with pytest.raises(grpc.RpcError) as refusal:
                networkservice_pb2_grpc.NetworkServiceStub(chan).Request(nsm_request("c", path), timeout=10)
        assert refusal.value.code() == grpc.StatusCode.UNAVAILABLE
    assert face.declared() == 0


def test_a_plain_client_is_refused(face):
    with grpc.insecure_channel(face.tcp) as chan, pytest.raises(grpc.RpcError) as refusal:
        networkservice_pb2_grpc.NetworkServiceStub(chan).Close(Connection(id="c"), timeout=5)
    assert refusal.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_monitor_sees_only_connections_its_spiffe_id_is_on(face, hops):
    ask(hops["nsmgr"], face.unix, nsm_request("mine", chained_path([hops["nsc"], hops["nsmgr"]],
                                                                   hops["controller"])))
    ask(hops["nsmgr2"], face.unix, nsm_request("theirs", chained_path([hops["nsmgr2"]], hops["controller"])))
    streams = {name: Stream(hops[name], face.unix) for name in ("nsc", "nsmgr", "nsmgr2", "other")}
    try:
        seen = {name: set(stream.next().connections) for name, stream in streams.items()}
        assert seen == {"nsc": {"mine"}, "nsmgr": {"mine"}, "nsmgr2": {"theirs"}, "other": set()}
        later = chained_path([hops["nsmgr2"]], hops["controller"])
        ask(hops["nsmgr2"], face.unix, nsm_request("later", later))
        assert "later" in streams["nsmgr2"].next().connections
        ask(hops["nsmgr"], face.unix, nsm_request("last", chained_path([hops["nsc"], hops["nsmgr"]],
                                                                       hops["controller"])))
        assert set(streams["nsmgr"].next().connections) == {"last"}  # "later" never reached it
    finally:
        for stream in streams.values():
            stream.close()


def test_a_rotation_keeps_the_stream_and_serves_the_next_handshake(tmp_path, authority, hops):
    first, second = pki.svid(authority, "controller"), pki.svid(authority, "controller")
    source = FileIdentitySource(*pki.files(first, tmp_path / "svid"), interval=60)
    served = Face(tmp_path, source)
    stream = Stream(hops["nsmgr"], served.unix)
    try:
        assert stream.next().type == connection_pb2.INITIAL_STATE_TRANSFER
        pki.files(second, tmp_path / "svid")
        assert source.reload()
        for target in (served.unix, served.tcp):
            assert served_certificate(hops["nsmgr"], target).serial_number == second.chain[0].serial_number
        answer = ask(hops["nsmgr"], served.tcp, nsm_request("after", chained_path([hops["nsmgr"]], second)))
        verify_signature(answer.path.path_segments[1].token, second.key.public_key())
        assert "after" in stream.next().connections  # the stream opened before the rotation goes on
    finally:
        stream.close()
        served.server.stop()
        source.close()


def test_without_an_identity_it_warns_and_issues_unsigned_tokens(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="nsm_api.serving"):
        served = Face(tmp_path, None)
    try:
        warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
        assert "WITHOUT TLS" in warning.getMessage() and served.unix in warning.getMessage()
        assert "not authenticated" in warning.getMessage() and "unsigned" in warning.getMessage()
        with grpc.insecure_channel(served.unix) as chan:
            answer = networkservice_pb2_grpc.NetworkServiceStub(chan).Request(nsm_request("c", None),
                                                                              timeout=10)
        assert answer.path.path_segments[0].token.startswith(UNSIGNED_PREFIX)
    finally:
        served.server.stop()


# ---- the identity flags ----------------------------------------------------------------------


def _flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_identity_arguments(parser)
    return parser.parse_args(argv)


def test_identity_flags_name_files_a_socket_or_nothing(tmp_path, authority, hops):
    cert, key, ca = pki.files(hops["controller"], tmp_path)
    assert identity_source(_flags(), environ={}) is None
    source = identity_source(_flags("--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(ca)),
                             environ={"SPIFFE_ENDPOINT_SOCKET": "unix:///nowhere"})
    try:
        assert source.current().spiffe_id == "spiffe://example.org/controller"
    finally:
        source.close()
    with pytest.raises(ValueError, match="go together"):
        identity_source(_flags("--tls-cert", str(cert)), environ={})
    with pytest.raises(ValueError, match="not both"):
        identity_source(_flags("--spiffe-socket", "unix:///x", "--tls-cert", str(cert), "--tls-key", str(key),
                               "--tls-ca", str(ca)), environ={})


def test_the_workload_api_socket_comes_from_the_environment_as_spiffe_tools_read_it(tmp_path, hops):
    emulator = WorkloadApiEmulator(tmp_path / "agent.sock", hops["controller"])
    try:
        source = identity_source(_flags(), environ={"SPIFFE_ENDPOINT_SOCKET": emulator.address})
        try:
            assert isinstance(source, WorkloadApiSource)
            assert source.current().spiffe_id == "spiffe://example.org/controller"
        finally:
            source.close()
    finally:
        emulator.stop()
