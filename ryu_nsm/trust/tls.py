"""Mutual TLS from an ``IdentitySource``: ``ssl`` contexts and gRPC credentials that present the
current SVID and accept only peers whose chain ends at the trust bundle.

Rotation: the ssl contexts load each new SVID into themselves (the next handshake presents it, an
established connection keeps its session); the gRPC server asks for the current SVID at every
handshake; a gRPC client's ``FollowingChannel`` makes a new channel. SPIFFE IDs, not host names,
name peers: ``verify_peer`` checks one after the handshake (ssl has no hook to check a URI SAN during
it); gRPC clients check a DNS SAN of the server's SVID (``channel_options``), as gRPC Python offers
no other check, and may check the server's SPIFFE ID on a handshake of their own
(``grpc_server_spiffe_id``).
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
from cryptography import x509

from ryu_nsm.trust.identity import Identity, IdentitySource, spiffe_id_of

log = logging.getLogger("ryu_nsm.trust.tls")


class PeerRefused(ssl.SSLError):
    """The peer's chain verified but its SPIFFE ID is not the one expected."""


def _load_svid(context: ssl.SSLContext, identity: Identity) -> None:
    # ssl loads a chain only from files: a private directory that lives for the call.
    with tempfile.TemporaryDirectory(prefix="ryu-nsm-svid-") as private:
        chain, key = Path(private) / "svid.pem", Path(private) / "svid_key.pem"
        chain.write_bytes(identity.chain_pem())
        fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(identity.key_pem())
        context.load_cert_chain(chain, key)


def _identity_context(protocol: int, identity: Identity) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False  # SPIFFE IDs name peers (verify_peer), not host names
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=identity.bundle_pem().decode())
    _load_svid(context, identity)
    return context


def _mutual_context(protocol: int, source: IdentitySource) -> ssl.SSLContext:
    context = _identity_context(protocol, source.current())

    def rotate(new: Identity) -> None:
        context.load_verify_locations(cadata=new.bundle_pem().decode())
        _load_svid(context, new)

    source.subscribe(rotate)
    return context


def server_context(source: IdentitySource) -> ssl.SSLContext:
    """A TLS server context that requires a client SVID from the trust bundle."""
    return _mutual_context(ssl.PROTOCOL_TLS_SERVER, source)


def client_context(source: IdentitySource) -> ssl.SSLContext:
    """A TLS client context that presents the SVID and verifies the server's chain (not its name)."""
    return _mutual_context(ssl.PROTOCOL_TLS_CLIENT, source)


def verify_peer(connection: ssl.SSLSocket | ssl.SSLObject,
                expected: str | Callable[[str], bool] | None = None) -> str:
    """The peer's SPIFFE ID after the handshake; PeerRefused when it has none or ``expected`` (an ID,
    or a predicate over IDs) refuses it."""
    der = connection.getpeercert(binary_form=True)
    spiffe_id = spiffe_id_of(x509.load_der_x509_certificate(der)) if der else None
    if spiffe_id is None:
        raise PeerRefused("the peer presented no SPIFFE ID")
    if expected is not None and not (expected(spiffe_id) if callable(expected) else spiffe_id == expected):
        raise PeerRefused(f"peer {spiffe_id} is not the one expected")
    return spiffe_id


def _server_configuration(identity: Identity) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(identity.key_pem(), identity.chain_pem())],
                                                     root_certificates=identity.bundle_pem())


def grpc_server_credentials(source: IdentitySource) -> grpc.ServerCredentials:
    """mTLS server credentials: clients need an SVID from the bundle; each handshake serves the
    source's current SVID."""
    served = [source.current()]

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        identity = source.current()
        if identity is served[0]:
            return None  # gRPC keeps the configuration it has
        served[0] = identity
        return _server_configuration(identity)

    return grpc.dynamic_ssl_server_credentials(_server_configuration(served[0]), fetch,
                                               require_client_authentication=True)


def server_credentials_factory(source: IdentitySource | None) -> Callable[[], grpc.ServerCredentials] | None:
    """What NSM's gRPC serving (``nsm_api.serving``) takes: a maker of mTLS server credentials, called
    once a port, as a dynamic one serves one port only; None without an identity (insecure mode)."""
    if source is None:
        return None
    return lambda: grpc_server_credentials(source)


def grpc_channel_credentials(identity: Identity) -> grpc.ChannelCredentials:
    """mTLS channel credentials for ``identity``; a client makes a new channel after a rotation."""
    return grpc.ssl_channel_credentials(root_certificates=identity.bundle_pem(),
                                        private_key=identity.key_pem(),
                                        certificate_chain=identity.chain_pem())


def channel_options(server_name: str) -> list[tuple[str, str]]:
    """gRPC channel options that check ``server_name`` (a DNS SAN of the server's SVID)."""
    return [("grpc.ssl_target_name_override", server_name)]


def _connect(target: str, timeout: float) -> socket.socket:
    """A TCP or unix stream socket to a gRPC target: unix:PATH (unix:///abs too) or HOST:PORT."""
    if target.startswith("unix:"):
        rest = target[len("unix:"):]
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.settimeout(timeout)
        try:
            raw.connect("/" + rest.lstrip("/") if rest.startswith("//") else rest)
        except OSError:
            raw.close()
            raise
        return raw
    host, _, port = target.removeprefix("dns:").lstrip("/").rpartition(":")
    return socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)


def grpc_server_spiffe_id(target: str, identity: Identity, expected: str | None = None,
                          timeout: float = 5.0) -> str:
    """The SPIFFE ID of the gRPC server at ``target``, from a TLS handshake of its own presenting
    ``identity`` (gRPC Python shows a client nothing of the server's certificate); PeerRefused when
    it is not ``expected``. ssl.SSLCertVerificationError: the server's chain is not from the bundle;
    another ssl.SSLError: the server refused ``identity``; OSError: unreachable."""
    context = _identity_context(ssl.PROTOCOL_TLS_CLIENT, identity)
    # TLS 1.2: the server judges the client's certificate within the handshake, so a refusal
    # shows here; under TLS 1.3 it would come after, as an alert on the first read.
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    with context.wrap_socket(_connect(target, timeout)) as connection:
        return verify_peer(connection, expected)


class FollowingChannel:
    """A gRPC client channel to ``target`` that follows the identity: on each rotation a new mTLS
    channel with the new SVID replaces the old one, which is closed (its calls end CANCELLED; a
    caller that sees ``generation`` move on opens them again on ``channel``). Each new channel's
    server is first met on a handshake of its own (``grpc_server_spiffe_id``), so a refusal is told
    as such, not as gRPC's UNAVAILABLE; with ``expected_server`` it must hold that SPIFFE ID. Without
    a source, one plain channel (insecure mode)."""

    def __init__(self, target: str, source: IdentitySource | None, server_name: str | None = None,
                 expected_server: str | None = None) -> None:
        self.target, self.server_name, self.expected_server = target, server_name, expected_server
        self.generation = 0
        self.closed = False
        self._lock = threading.Lock()
        self.channel = (self._build(source.current()) if source is not None
                        else grpc.insecure_channel(target))
        if source is not None:
            source.subscribe(self._rotate)

    def _build(self, identity: Identity) -> grpc.Channel:
        grpc_server_spiffe_id(self.target, identity, self.expected_server)
        options = channel_options(self.server_name) if self.server_name else []
        return grpc.secure_channel(self.target, grpc_channel_credentials(identity), options=options)

    def _rotate(self, identity: Identity) -> None:
        fresh = self._build(identity)  # a failed check raises here: the old channel stays
        with self._lock:
            if self.closed:
                fresh.close()
                return
            old, self.channel = self.channel, fresh
            self.generation += 1
        log.info("identity rotated to %s: new channel to %s", identity.spiffe_id, self.target)
        old.close()

    def close(self) -> None:
        with self._lock:
            self.closed = True
        self.channel.close()


def peer_certificate(context: grpc.ServicerContext) -> x509.Certificate | None:
    """The client's leaf certificate on an mTLS gRPC call; None on an insecure one."""
    pems = context.auth_context().get("x509_pem_cert")
    return _parsed(pems[0])[0] if pems else None


def peer_spiffe_id(context: grpc.ServicerContext) -> str | None:
    """The client's SPIFFE ID on an mTLS gRPC call; None when there is none."""
    pems = context.auth_context().get("x509_pem_cert")
    return _parsed(pems[0])[1] if pems else None


@functools.lru_cache(maxsize=256)
def _parsed(pem: bytes) -> tuple[x509.Certificate, str | None]:
    # Every call on a connection carries the same (already verified) certificate: parse it once.
    cert = x509.load_pem_x509_certificate(pem)
    return cert, spiffe_id_of(cert)
