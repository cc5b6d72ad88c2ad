"""Mutual TLS from an ``IdentitySource``: ``ssl`` contexts and gRPC credentials that present the
current SVID and accept only peers whose chain ends at the trust bundle.

Rotation: the ssl contexts load each new SVID into themselves (the next handshake presents it, an
established connection keeps its session); the gRPC server asks for the current SVID at every
handshake. SPIFFE IDs, not host names, name peers: ``verify_peer`` checks one after the handshake
(ssl has no hook to check a URI SAN during it); gRPC clients still check a DNS SAN of the server's
SVID (gRPC offers no other check), named by ``channel_options``.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path

import grpc
from cryptography import x509

from ryu_nsm.trust.identity import Identity, IdentitySource, spiffe_id_of


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


def _mutual_context(protocol: int, source: IdentitySource) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False  # SPIFFE IDs name peers (verify_peer), not host names
    context.verify_mode = ssl.CERT_REQUIRED
    identity = source.current()
    context.load_verify_locations(cadata=identity.bundle_pem().decode())
    _load_svid(context, identity)

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


def grpc_channel_credentials(identity: Identity) -> grpc.ChannelCredentials:
    """mTLS channel credentials for ``identity``; a client makes a new channel after a rotation."""
    return grpc.ssl_channel_credentials(root_certificates=identity.bundle_pem(),
                                        private_key=identity.key_pem(),
                                        certificate_chain=identity.chain_pem())


def channel_options(server_name: str) -> list[tuple[str, str]]:
    """gRPC channel options that check ``server_name`` (a DNS SAN of the server's SVID)."""
    return [("grpc.ssl_target_name_override", server_name)]


def peer_certificate(context: grpc.ServicerContext) -> x509.Certificate | None:
    """The client's leaf certificate on an mTLS gRPC call; None on an insecure one."""
    pems = context.auth_context().get("x509_pem_cert")
    return x509.load_pem_x509_certificate(pems[0]) if pems else None


def peer_spiffe_id(context: grpc.ServicerContext) -> str | None:
    """The client's SPIFFE ID on an mTLS gRPC call; None when there is none."""
    cert = peer_certificate(context)
    return spiffe_id_of(cert) if cert is not None else None
