"""Mutual TLS over loopback with dev-CA SVIDs: ssl contexts and a gRPC server, each refusing a
foreign CA and serving a rotated SVID to the next handshake while established connections go on."""

from __future__ import annotations

import queue
import socket
import ssl
import threading
from concurrent import futures

import grpc
import pytest
from cryptography import x509

from nsm_api import connection_pb2, connection_pb2_grpc
from ryu_nsm.trust import tls
from ryu_nsm.trust.identity import FileIdentitySource
from tests import pki


class StaticSource:
    """An IdentitySource that holds one identity until the test rotates it."""

    def __init__(self, identity):
        self.identity, self.callbacks = identity, []

    def current(self):
        return self.identity

    def subscribe(self, callback):
        self.callbacks.append(callback)

    def close(self):
        pass

    def rotate(self, identity):
        self.identity = identity
        for callback in self.callbacks:
            callback(identity)


class EchoServer:
    """A TLS echo server on 127.0.0.1; records each accepted peer's SPIFFE ID or handshake error."""

    def __init__(self, context: ssl.SSLContext):
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.results: queue.Queue = queue.Queue()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw):
        try:
            with self.context.wrap_socket(raw, server_side=True) as conn:
                self.results.put(tls.verify_peer(conn))
                while data := conn.recv(1024):
                    conn.sendall(data)
        except (ssl.SSLError, OSError) as error:
            self.results.put(error)

    def close(self):
        self.listener.close()


def _connect(context: ssl.SSLContext, address) -> ssl.SSLSocket:
    conn = context.wrap_socket(socket.create_connection(address, timeout=5))
    conn.sendall(b"ping")
    assert conn.recv(4) == b"ping"
    return conn


@pytest.fixture
def authority():
    return pki.ca()


def test_mutual_tls_between_svids_of_one_ca(authority):
    server = EchoServer(tls.server_context(StaticSource(pki.svid(authority, "controller"))))
    try:
        with _connect(tls.client_context(StaticSource(pki.svid(authority, "forwarder"))),
                      server.address) as conn:
            assert tls.verify_peer(conn, "spiffe://example.org/controller")
            with pytest.raises(tls.PeerRefused):
                tls.verify_peer(conn, "spiffe://example.org/someone-else")
            assert tls.verify_peer(conn, lambda spiffe_id: spiffe_id.endswith("/controller"))
        assert server.results.get(timeout=5) == "spiffe://example.org/forwarder"
    finally:
        server.close()


def test_a_client_of_another_ca_is_refused(authority):
    server = EchoServer(tls.server_context(StaticSource(pki.svid(authority, "controller"))))
    stranger = pki.svid(pki.ca(), "forwarder")
    context = tls.client_context(StaticSource(stranger))
    # the stranger trusts the server; the server does not trust the stranger
    context.load_verify_locations(cadata=pki.pem(authority.cert).decode())
    try:
        with pytest.raises((ssl.SSLError, OSError, AssertionError)):
            _connect(context, server.address)
        assert isinstance(server.results.get(timeout=5), ssl.SSLError)
    finally:
        server.close()


def test_a_server_of_another_ca_is_refused(authority):
    server = EchoServer(tls.server_context(StaticSource(pki.svid(pki.ca(), "impostor"))))
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            _connect(tls.client_context(StaticSource(pki.svid(authority, "forwarder"))), server.address)
    finally:
        server.close()


def _served_serial(conn: ssl.SSLSocket) -> int:
    return x509.load_der_x509_certificate(conn.getpeercert(binary_form=True)).serial_number


def test_a_rotated_svid_serves_the_next_handshake(tmp_path, authority):
    first, second = pki.svid(authority, "controller"), pki.svid(authority, "controller")
    source = FileIdentitySource(*pki.files(first, tmp_path), interval=60)
    server = EchoServer(tls.server_context(source))
    client = tls.client_context(StaticSource(pki.svid(authority, "forwarder")))
    try:
        with _connect(client, server.address) as established:
            assert _served_serial(established) == first.chain[0].serial_number
            pki.files(second, tmp_path)
            assert source.reload()
            with _connect(client, server.address) as fresh:
                assert _served_serial(fresh) == second.chain[0].serial_number
            established.sendall(b"more")
            assert established.recv(4) == b"more"
    finally:
        server.close()
        source.close()


class Monitor(connection_pb2_grpc.MonitorConnectionServicer):
    """Streams one event naming the caller's SPIFFE ID, then one per item put in ``more``."""

    def __init__(self):
        self.more: queue.Queue = queue.Queue()

    def MonitorConnections(self, request, context):
        caller = tls.peer_spiffe_id(context)
        yield connection_pb2.ConnectionEvent(connections={"caller": connection_pb2.Connection(id=caller)})
        while context.is_active():
            try:
                name = self.more.get(timeout=0.1)
            except queue.Empty:
                continue
            yield connection_pb2.ConnectionEvent(connections={name: connection_pb2.Connection(id=name)})


@pytest.fixture
def grpc_server(tmp_path, authority):
    source = FileIdentitySource(*pki.files(pki.svid(authority, "controller"), tmp_path), interval=60)
    monitor = Monitor()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    connection_pb2_grpc.add_MonitorConnectionServicer_to_server(monitor, server)
    port = server.add_secure_port("127.0.0.1:0", tls.grpc_server_credentials(source))
    server.start()
    yield source, monitor, f"127.0.0.1:{port}"
    server.stop(None)
    source.close()


def _channel(identity, target):
    return grpc.secure_channel(target, tls.grpc_channel_credentials(identity),
                               options=tls.channel_options(pki.SERVER_NAME))


def _stream(channel):
    return connection_pb2_grpc.MonitorConnectionStub(channel).MonitorConnections(
        connection_pb2.MonitorScopeSelector(), timeout=10)


def test_grpc_mtls_names_the_caller(grpc_server, authority):
    _, _, target = grpc_server
    with _channel(pki.svid(authority, "forwarder"), target) as channel:
        event = next(_stream(channel))
    assert event.connections["caller"].id == "spiffe://example.org/forwarder"


def test_grpc_refuses_a_client_of_another_ca(grpc_server, authority):
    _, _, target = grpc_server
    stranger = pki.svid(pki.ca(), "forwarder")
    credentials = grpc.ssl_channel_credentials(pki.pem(authority.cert), stranger.key_pem(),
                                               stranger.chain_pem())
    with grpc.secure_channel(target, credentials, options=tls.channel_options(pki.SERVER_NAME)) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            next(_stream(channel))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_grpc_serves_a_rotated_svid_while_a_stream_goes_on(grpc_server, authority, tmp_path):
    source, monitor, target = grpc_server
    client = pki.svid(authority, "forwarder")
    rotated = pki.svid(authority, "controller")
    with _channel(client, target) as channel:
        stream = _stream(channel)
        next(stream)
        pki.files(rotated, tmp_path)
        assert source.reload()
        host, port = target.rsplit(":", 1)
        probe = tls.client_context(StaticSource(client))
        probe.set_alpn_protocols(["h2"])
        with probe.wrap_socket(socket.create_connection((host, int(port)), timeout=5)) as fresh:
            assert _served_serial(fresh) == rotated.chain[0].serial_number
        monitor.more.put("after-rotation")
        assert "after-rotation" in next(stream).connections
        stream.cancel()


def test_nsm_serving_gets_credentials_made_per_port_and_none_without_an_identity(tmp_path, authority):
    assert tls.server_credentials_factory(None) is None
    source = FileIdentitySource(*pki.files(pki.svid(authority, "controller"), tmp_path), interval=60)
    try:
        make = tls.server_credentials_factory(source)
        first, second = make(), make()
        assert isinstance(first, grpc.ServerCredentials) and first is not second
    finally:
        source.close()
