"""What the tests of NSM's gRPC over mTLS share: paths whose tokens earlier hops signed for the next
one, with one token swapped to break one policy; mTLS channels and monitor streams; the certificate a
server serves."""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Sequence

import grpc
from cryptography import x509

from nsm_api import connection_pb2, connection_pb2_grpc
from nsm_api.connection_pb2 import MonitorScopeSelector, Path, PathSegment
from nsm_api.tokens import sign_token
from ryu_nsm.trust import tls
from ryu_nsm.trust.identity import Identity
from tests import pki
from tests.test_trust_tls import StaticSource

LIFETIME = 600.0
BREAKABLE = ("tokens_valid", "prev_token_signed", "tokens_chained")


def chained_path(hops: Sequence[Identity], server: Identity, now: float | None = None,
                 swap: dict[int, str] | None = None) -> Path:
    """The path the last of ``hops`` sends ``server``: each hop's token signed for the next (the last
    for ``server``), the index on the last hop's segment; ``swap`` replaces tokens by position."""
    now = time.time() if now is None else now
    peers = [*hops[1:], server]
    tokens = [sign_token(hop, peer.spiffe_id, peer.not_after, now, LIFETIME)
              for hop, peer in zip(hops, peers, strict=True)]
    for position, token in (swap or {}).items():
        tokens[position] = token
    return Path(index=len(hops) - 1, path_segments=[
        PathSegment(name=hop.spiffe_id.rsplit("/", 1)[-1], id=f"segment-{position}", token=token)
        for position, (hop, token) in enumerate(zip(hops, tokens, strict=True))])


def breaking(policy: str, hops: Sequence[Identity], server: Identity, stranger: Identity) -> Path:
    """A path from ``hops`` to ``server`` that breaks ``policy`` alone, sent as the last hop.

    tokens_expired is not here: the server checks the expiry of its own token (the path from its
    index on, as NSM's policy does), which only a peer certificate that expired mid-connection breaks.
    """
    if policy == "tokens_valid":
        return chained_path(hops, server, swap={0: "not-a-jwt"})
    if policy == "prev_token_signed":  # the right claims, signed by a key that is not the peer's
        forged = Identity(hops[-1].spiffe_id, hops[-1].chain, stranger.key, hops[-1].bundle)
        return chained_path([*hops[:-1], forged], server)
    if policy == "tokens_chained":  # the first hop signed for someone else
        astray = sign_token(hops[0], stranger.spiffe_id, None, time.time(), LIFETIME)
        return chained_path(hops, server, swap={0: astray})
    raise ValueError(policy)


def channel(identity: Identity, target: str) -> grpc.Channel:
    """An mTLS channel presenting ``identity``, checking the servers' DNS SAN of tests/pki.py."""
    return grpc.secure_channel(target, tls.grpc_channel_credentials(identity),
                               options=tls.channel_options(pki.SERVER_NAME))


def served_certificate(client: Identity, target: str) -> x509.Certificate:
    """The leaf a gRPC server at ``target`` (unix:// or host:port) presents to a new handshake."""
    if target.startswith("unix://"):
        raw = socket.socket(socket.AF_UNIX)
        raw.settimeout(5)
        raw.connect(target[len("unix://"):])
    else:
        host, port = target.rsplit(":", 1)
        raw = socket.create_connection((host, int(port)), timeout=5)
    context = tls.client_context(StaticSource(client))
    context.set_alpn_protocols(["h2"])
    with context.wrap_socket(raw) as conn:
        return x509.load_der_x509_certificate(conn.getpeercert(binary_form=True))


class Stream:
    """A MonitorConnections stream as ``identity``, read into a queue by a thread."""

    def __init__(self, identity, target):
        self.channel = channel(identity, target)
        self.call = connection_pb2_grpc.MonitorConnectionStub(self.channel).MonitorConnections(
            MonitorScopeSelector(), timeout=30)
        self.events: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for event in self.call:
                self.events.put(event)
        except grpc.RpcError as error:
            self.events.put(error)

    def next(self) -> connection_pb2.ConnectionEvent:
        event = self.events.get(timeout=10)
        assert not isinstance(event, Exception), event
        return event

    def close(self):
        self.call.cancel()
        self.channel.close()
