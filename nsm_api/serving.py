"""What the forwarder's and the controller's NSM gRPC servers share: serving (``NsmServing``) on unix
sockets and TCP, with mTLS credentials or (insecure mode, with a warning) without; and ``HopTrust``,
what a server hop does with its identity on each call: sign its path segment's token for the peer,
run NSM's authorize policies over the path's left side, show a monitor only the connections its
SPIFFE ID is on.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import stat
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from cryptography import x509

from . import connection_pb2_grpc, networkservice_pb2_grpc
from .authorize import authorize, monitor_visible
from .connection_pb2 import Connection, Path
from .tokens import sign_token, token_expiry

if TYPE_CHECKING:
    from ryu_nsm.trust.identity import IdentitySource

log = logging.getLogger(__name__)


def unix_path(address: str) -> str | None:
    """The socket path of a `unix:` address (unix:///abs, unix:/abs or unix:rel), else None."""
    if not address.startswith("unix:"):
        return None
    rest = address[len("unix:"):]
    return "/" + rest.lstrip("/") if rest.startswith("//") else rest


def clear_stale_socket(path: str) -> None:
    """Remove a socket file nobody listens on; refuse to take one that is in use."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(f"{path} is in use by another process")


Credentials = Callable[[], grpc.ServerCredentials]


def bind(server: grpc.Server, listen: Sequence[str], credentials: Credentials | None = None
         ) -> tuple[list[str], list[str]]:
    """Add every address to ``server`` (not yet started), over mTLS when ``credentials`` makes the
    server credentials (one per port: a dynamic one hands its initial SVID to one port only):
    (addresses as bound, unix socket paths).

    A TCP port 0 is reported as the port actually bound. An address that cannot be bound stops
    the server and raises OSError naming it.
    """
    listening, sockets = [], []
    for address in listen:
        path = unix_path(address)
        if path is not None:
            clear_stale_socket(path)
        try:
            port = (server.add_insecure_port(address) if credentials is None
                    else server.add_secure_port(address, credentials()))
        except RuntimeError as exc:
            server.stop(None)
            raise OSError(f"cannot listen on {address}: {exc}") from exc
        if path is None and port == 0:
            server.stop(None)
            raise OSError(f"cannot listen on {address}")
        if path is not None:
            sockets.append(path)
        listening.append(address if path is not None else f"{address.rsplit(':', 1)[0]}:{port}")
    return listening, sockets


def serve_nsm(servicer: object, listen: Sequence[str], max_workers: int, thread_name_prefix: str,
              credentials: Credentials | None = None) -> tuple[grpc.Server, list[str], list[str]]:
    """A started server offering ``servicer`` as NSM's NetworkService and MonitorConnection on every
    address, over mTLS with ``credentials`` (see ``bind``): (server, addresses as bound, unix socket
    paths). Every open MonitorConnections stream holds a worker thread, so ``max_workers`` should be
    generous. Without credentials it says, as a WARNING, what goes unauthenticated."""
    pool = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
    server = grpc.server(pool)
    networkservice_pb2_grpc.add_NetworkServiceServicer_to_server(servicer, server)
    connection_pb2_grpc.add_MonitorConnectionServicer_to_server(servicer, server)
    listening, sockets = bind(server, listen, credentials)
    server.start()
    if credentials is None:
        log.warning("%s: NSM gRPC on %s WITHOUT TLS (no identity: give --spiffe-socket or --tls-cert/"
                    "--tls-key/--tls-ca): callers are not authenticated, Request and Close are not "
                    "authorized, path tokens are unsigned and every caller monitors every connection",
                    thread_name_prefix, ", ".join(listening))
    return server, listening, sockets


def remove_sockets(paths: Iterable[str]) -> None:
    """Remove the socket files of a stopped server; one another process has taken is left, and said."""
    for path in paths:
        try:
            clear_stale_socket(path)
        except OSError as exc:
            log.warning("leaving socket %s: %s", path, exc)


class NsmServing:
    """One servicer's NSM gRPC serving over its life: `start` serves it (see ``serve_nsm``), `stop`
    stops the server and `clear_sockets` then removes the unix socket files it made. `credentials`
    (None: insecure mode) makes each port's mTLS credentials (see ``bind``)."""

    def __init__(self, servicer: object, thread_name_prefix: str, credentials: Credentials | None) -> None:
        self._servicer = servicer
        self._thread_name_prefix = thread_name_prefix
        self._credentials = credentials
        self.listening: list[str] = []  # the bound addresses, with the ports that TCP port 0 got
        self._server: grpc.Server | None = None
        self._sockets: list[str] = []

    def start(self, listen: Sequence[str], max_workers: int) -> grpc.Server:
        """Serve on each address (`unix:///path` or `host:port`); each monitor stream holds a worker."""
        server, listening, sockets = serve_nsm(self._servicer, listen, max_workers, self._thread_name_prefix,
                                               self._credentials)
        self.listening.extend(listening)
        self._sockets.extend(sockets)
        self._server = server
        return server

    def stop(self, grace: float | None) -> None:
        """Stop the server, giving the calls under way `grace` seconds."""
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None

    def clear_sockets(self) -> None:
        """Remove the socket files of the stopped server."""
        remove_sockets(self._sockets)
        self._sockets.clear()


UNSIGNED_PREFIX = "unsigned:"


@dataclass(frozen=True)
class Peer:
    """The caller of an mTLS call: its leaf certificate and SPIFFE ID (None on an insecure call)."""

    certificate: x509.Certificate | None = None
    spiffe_id: str | None = None


NO_PEER = Peer()  # an in-process call, or an insecure one

class HopTrust:
    """A server hop's side of NSM's trust, from ``identity`` (an ``IdentitySource``; None: insecure
    mode, where tokens are opaque ``unsigned:`` strings and nothing is checked or filtered).

    As NSM's server chain does (updatepath, updatetoken, authorize): the hop's own segment is put on
    the path first, with a token for the peer, then the path up to and with it is authorized.
    """

    def __init__(self, identity: IdentitySource | None, max_lifetime: float) -> None:
        self.identity = identity
        self.max_lifetime = max_lifetime

    @property
    def secure(self) -> bool:
        return self.identity is not None

    def token(self, peer: Peer, now: float) -> tuple[str, float]:
        """This hop's token for ``peer`` and the seconds it lasts: ES256 for the peer's SPIFFE ID,
        ``exp`` capped by both certificates' NotAfter; unsigned for ``max_lifetime`` when insecure."""
        if self.identity is None:
            return UNSIGNED_PREFIX + secrets.token_urlsafe(18), self.max_lifetime
        own = self.identity.current()
        not_after = peer.certificate.not_valid_after_utc if peer.certificate is not None else None
        token = sign_token(own, peer.spiffe_id, not_after, now, self.max_lifetime)
        return token, token_expiry(own, not_after, now, self.max_lifetime) - now

    def authorize(self, path: Path, peer: Peer, now: float) -> None:
        """RequestError(PERMISSION_DENIED) naming the policy the path breaks; nothing when insecure."""
        if self.identity is not None:
            authorize(path, peer.certificate, now)

    def visible(self, connection: Connection, peer: Peer) -> bool:
        """Whether a monitor of ``peer`` may see ``connection`` (always, when insecure)."""
        return self.identity is None or (peer.spiffe_id is not None
                                          and monitor_visible(connection, peer.spiffe_id))
