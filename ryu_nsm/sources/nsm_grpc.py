"""The controller's NSM gRPC face: `networkservice.NetworkService` (Request, Close) and
`connection.MonitorConnection` (MonitorConnections), so an NSM client or NSMgr can ask the
controller for a connection and watch it.

A Request names where the client's interface meets the fabric in the mechanism parameter
`ryu-nsm.io/attachment` = "bridge/port" (the forwarder answers with it). `GrpcRequests` turns the
connections asked for into ClientRequests in namespace "nsm" and reports its whole state through
the merged sources, so they take the same road as files and Kubernetes. The handler then watches
the controller's status until the connection is "up" (answer UP with our PathSegment, the chosen
endpoint and the path of switch names in the segment's metrics["path"]), "failed" (the request is
withdrawn; NOT_FOUND for an unknown service, else FAILED_PRECONDITION, with the controller's
reason) or the deadline passes (withdrawn; DEADLINE_EXCEEDED). A failure counts only once it has
held for `settle` seconds: a port the forwarder has just plumbed may not have reached the
controller yet. gRPC threads never touch datapath code: they only report to the source and read
`status()`.

Trust (docs/security.md): with an identity the face serves over mTLS, signs its segment's token
(ES256, for the caller's SPIFFE ID) and authorizes every Request and Close with NSM's policies before
anything is declared or withdrawn; a monitor sees only the connections whose path holds its caller's
token. Without one (insecure mode, warned at start) tokens are opaque "unsigned:" strings and nothing
is checked.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import empty_pb2

from nsm_api import connection_pb2, connection_pb2_grpc, networkservice_pb2, networkservice_pb2_grpc
from nsm_api.connection_pb2 import Connection, ConnectionEvent, MonitorScopeSelector
from nsm_api.errors import RequestError
from nsm_api.paths import append_segment
from nsm_api.serving import NO_PEER, HopTrust, NsmServing, Peer
from ryu_nsm.core.model import Attachment, ClientRequest, FrozenMap, ModelError, Resources
from ryu_nsm.sources.ovsdb import dns_label
from ryu_nsm.trust.identity import IdentitySource
from ryu_nsm.trust.tls import peer_certificate, peer_spiffe_id, server_credentials_factory

log = logging.getLogger(__name__)

NAMESPACE = "nsm"
DEFAULT_IFNAME = "nsm-1"
ATTACHMENT_PARAM = "ryu-nsm.io/attachment"
SEGMENT_NAME = "ryu-nsm-controller"
_IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
# The resolver's words for a service that no source declares (ryu_nsm.core.resolver.resolve).
_UNKNOWN_SERVICE = re.compile(r"^network service .* not found")


@dataclass(frozen=True)
class Held:
    """One connection asked for over gRPC: the NSM connection as asked, and its ClientRequest."""

    connection: Connection
    request: ClientRequest


@dataclass(frozen=True)
class HeldChange:
    """A connection put (``held`` is what is held now) or withdrawn (``held`` is None)."""

    connection_id: str
    held: Held | None


def _parameters(request: networkservice_pb2.NetworkServiceRequest) -> dict[str, str]:
    # The connection's own mechanism wins (a refresh or a forwarder's answer carries it); else the
    # first preference that names an attachment.
    if ATTACHMENT_PARAM in request.connection.mechanism.parameters:
        return dict(request.connection.mechanism.parameters)
    for mechanism in request.mechanism_preferences:
        if ATTACHMENT_PARAM in mechanism.parameters:
            return dict(mechanism.parameters)
    return dict(request.connection.mechanism.parameters)


def to_client_request(request: networkservice_pb2.NetworkServiceRequest,
                      namespace: str = NAMESPACE) -> ClientRequest:
    """The ClientRequest an NSM Request asks for; RequestError(INVALID_ARGUMENT) when it cannot."""
    conn = request.connection
    if not conn.id:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "connection.id is missing")
    if not conn.network_service:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "connection.network_service is missing")
    params = _parameters(request)
    text = params.get(ATTACHMENT_PARAM)
    if not text:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"mechanism parameter {ATTACHMENT_PARAM!r} is missing: the controller needs "
                           "'bridge/port' of the client's interface (the forwarder answers with it)")
    try:
        attachment = Attachment.parse(text, ATTACHMENT_PARAM)
    except ModelError as exc:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"mechanism parameter {exc}") from None
    ifname = params.get("name") or DEFAULT_IFNAME
    if not _IFNAME_RE.match(ifname):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"mechanism parameter 'name': expected an interface name, found {ifname!r}")
    return ClientRequest(pod=dns_label(conn.id), ifname=ifname, service=conn.network_service,
                         namespace=namespace, labels=FrozenMap(dict(conn.labels)), attachment=attachment)


class GrpcRequests:
    """The source of connections asked for over gRPC; reports its whole state on every change.

    Reports an empty state at once, so it never holds the merged sources back. Subscribers get
    every change in order, so a connection held for a moment is not missed by a monitor.
    """

    def __init__(self, report: Callable[[Resources], None]) -> None:
        self._report = report
        self._lock = threading.Lock()
        self._held: dict[str, Held] = {}
        self._subscribers: list[queue.SimpleQueue[HeldChange]] = []
        report(Resources())

    def put(self, connection: Connection, request: ClientRequest) -> bool:
        """Hold (or refresh) a connection; True when what is declared changed."""
        with self._lock:
            before = self._held.get(connection.id)
            held = self._held[connection.id] = Held(_copy(connection), request)
            if before is not None and before.request == request:
                return False
            self._publish()
            self._tell(HeldChange(connection.id, held))
            return True

    def withdraw(self, connection_id: str) -> bool:
        """Stop asking for a connection; False when it was not held."""
        with self._lock:
            if self._held.pop(connection_id, None) is None:
                return False
            self._publish()
            self._tell(HeldChange(connection_id, None))
            return True

    def subscribe(self) -> tuple[dict[str, Held], queue.SimpleQueue[HeldChange]]:
        """What is held now and a queue of every change after it (nothing falls between)."""
        changes: queue.SimpleQueue[HeldChange] = queue.SimpleQueue()
        with self._lock:
            self._subscribers.append(changes)
            return dict(self._held), changes

    def unsubscribe(self, changes: queue.SimpleQueue[HeldChange]) -> None:
        with self._lock:
            self._subscribers.remove(changes)

    def held(self) -> dict[str, Held]:
        """Every connection held now, by NSM connection id."""
        with self._lock:
            return dict(self._held)

    def _publish(self) -> None:
        # Under the lock: reports reach the controller in the order the changes happened.
        self._report(Resources(requests=tuple(h.request for h in self._held.values())))

    def _tell(self, change: HeldChange) -> None:
        for changes in self._subscribers:
            changes.put(change)


def stamp(connection: Connection, endpoint: str, switches: Sequence[str], token: str, lifetime: float,
          now: float) -> Connection:
    """The answer: ``connection`` UP at ``endpoint`` with our segment carrying ``token``
    (metrics["path"] = switches).

    A segment of ours at path.index or right after it is replaced (a refresh), as NSM hops do.
    """
    base = _copy(connection)
    segments = base.path.path_segments
    index = base.path.index
    ours = next((i for i in (index, index + 1) if i < len(segments) and segments[i].name == SEGMENT_NAME),
                None)
    if ours is not None:
        del segments[ours:]
        base.path.index = max(ours - 1, 0)
        if not segments:
            base.ClearField("path")
    stamped = append_segment(base, SEGMENT_NAME, token, lifetime, now)
    stamped.path.path_segments[stamped.path.index].metrics["path"] = ",".join(switches)
    stamped.network_service_endpoint_name = endpoint
    stamped.state = connection_pb2.UP
    return stamped


class NsmServer(networkservice_pb2_grpc.NetworkServiceServicer,
                connection_pb2_grpc.MonitorConnectionServicer):
    """NetworkService and MonitorConnection over `GrpcRequests` and the controller's status."""

    def __init__(self, source: GrpcRequests, status: Callable[[], dict], *, default_timeout: float = 10.0,
                 settle: float = 1.0, token_lifetime: float = 600.0, poll: float = 0.02,
                 monitor_interval: float = 0.1, identity: IdentitySource | None = None) -> None:
        self.source = source
        self.trust = HopTrust(identity, token_lifetime)
        self.status = status
        self.default_timeout = default_timeout
        self.settle = settle
        self.token_lifetime = token_lifetime
        self.poll = poll
        self.monitor_interval = monitor_interval
        self._serving = NsmServing(self, "ryu-nsm-grpc", server_credentials_factory(identity))
        self.listening = self._serving.listening
        self._stopping = threading.Event()

    # ---- serving ---------------------------------------------------------------------------------

    def serve(self, listen: Sequence[str], max_workers: int = 32) -> grpc.Server:
        """Serve on each address (`unix:///path` or `host:port`); each monitor stream holds a worker."""
        return self._serving.start(listen, max_workers)

    def stop(self, grace: float | None = 1.0) -> None:
        """End monitor streams and stop serving; held connections stay declared."""
        self._stopping.set()
        self._serving.stop(grace)
        self._serving.clear_sockets()

    # ---- plain API ---------------------------------------------------------------------------------

    def request(self, request: networkservice_pb2.NetworkServiceRequest, timeout: float,
                still_wanted: Callable[[], bool] = lambda: True, peer: Peer = NO_PEER) -> Connection:
        """Declare the connection and wait until the controller has it up; RequestError otherwise,
        PERMISSION_DENIED (before anything is declared) when ``peer`` may not ask for it."""
        client = to_client_request(request)
        conn = request.connection
        signed_at = time.time()
        token, lifetime = self._authorize(conn, peer, signed_at)
        self.source.put(conn, client)
        deadline = time.monotonic() + timeout
        failing_since: float | None = None
        while True:
            entry = self._entry(client.id)
            now = time.monotonic()
            if entry is not None and entry["state"] == "up":
                return stamp(conn, entry["endpoint"] or "", entry["path"], token, lifetime, signed_at)
            failed = entry is not None and entry["state"] == "failed"
            if not failed:
                failing_since = None
            elif failing_since is None:
                failing_since = now
            if failed and (now - failing_since >= self.settle or now >= deadline):
                self.source.withdraw(conn.id)
                reason = entry.get("reason", "failed")
                code = (grpc.StatusCode.NOT_FOUND if _UNKNOWN_SERVICE.match(reason)
                        else grpc.StatusCode.FAILED_PRECONDITION)
                raise RequestError(code, f"connection {conn.id}: {reason}")
            if now >= deadline:
                self.source.withdraw(conn.id)
                state = entry["state"] if entry is not None else "not yet planned"
                raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   f"connection {conn.id} not up after {timeout:.1f}s (state: {state})")
            if not still_wanted():
                self.source.withdraw(conn.id)
                raise RequestError(grpc.StatusCode.CANCELLED, f"connection {conn.id}: request cancelled")
            time.sleep(self.poll)

    def close(self, connection_id: str) -> bool:
        """Withdraw a connection; False when it was not held."""
        return self.source.withdraw(connection_id)

    def _authorize(self, connection: Connection, peer: Peer, now: float) -> tuple[str, float]:
        """Our token for ``peer`` and its lifetime, once NSM's policies pass the path up to our
        segment (as NSM's updatepath, updatetoken and authorize do); RequestError else."""
        token, lifetime = self.trust.token(peer, now)
        self.trust.authorize(stamp(connection, "", (), token, lifetime, now).path, peer, now)
        return token, lifetime

    def _view(self, held: dict[str, Held], selector: MonitorScopeSelector | None,
              peer: Peer = NO_PEER) -> dict[str, Connection]:
        """``held`` connections in scope and visible to ``peer`` as Connection messages, state from
        the controller."""
        by_id = {c["id"]: c for c in self.status()["connections"]}
        return {cid: _as_connection(h, by_id.get(h.request.id) or {})
                for cid, h in held.items()
                if _in_scope(h, selector) and self.trust.visible(h.connection, peer)}

    # ---- gRPC methods ------------------------------------------------------------------------------

    def Request(self, request: networkservice_pb2.NetworkServiceRequest,
                context: grpc.ServicerContext) -> Connection:
        """networkservice.NetworkService/Request."""
        remaining = context.time_remaining()
        timeout = self.default_timeout if remaining is None else remaining
        try:
            return self.request(request, timeout, still_wanted=context.is_active,
                                peer=_peer(context, self.trust))
        except RequestError as exc:
            log.info("refused request %r: %s", request.connection.id, exc.message)
            context.abort(exc.code, exc.message)

    def Close(self, request: Connection, context: grpc.ServicerContext) -> empty_pb2.Empty:
        """networkservice.NetworkService/Close, authorized as a Request is: unknown ids are not an error."""
        if self.trust.secure:
            try:
                self._authorize(request, _peer(context, self.trust), time.time())
            except RequestError as exc:
                log.info("refused close %r: %s", request.id, exc.message)
                context.abort(exc.code, exc.message)
        self.close(request.id)
        return empty_pb2.Empty()

    def MonitorConnections(self, request: MonitorScopeSelector,
                           context: grpc.ServicerContext) -> Iterator[ConnectionEvent]:
        """connection.MonitorConnection/MonitorConnections: initial state, then UPDATE/DELETE.

        Puts and withdrawals arrive as they happen (a connection refused a second after it was
        asked for is still seen, DOWN, then deleted); the controller's state is read every
        `monitor_interval`.
        """
        # Not a supervised loop (observe.health): it lives as long as its client's stream, on a gRPC
        # worker thread, and an exception ends that stream with an error the client sees and retries.
        peer = _peer(context, self.trust)
        held, changes = self.source.subscribe()
        try:
            known = self._view(held, request, peer)
            yield ConnectionEvent(type=connection_pb2.INITIAL_STATE_TRANSFER, connections=known)
            while context.is_active() and not self._stopping.is_set():
                passing: dict[str, Held] = {}  # put and withdrawn again since the last look
                for change in _drain(changes, self.monitor_interval):
                    if change.held is not None:
                        held[change.connection_id] = change.held
                        continue
                    gone = held.pop(change.connection_id, None)
                    if gone is not None and change.connection_id not in known:
                        passing[change.connection_id] = gone
                if passing:
                    seen = self._view(passing, request, peer)
                    if seen:
                        yield ConnectionEvent(type=connection_pb2.UPDATE, connections=seen)
                        known = {**known, **seen}
                now = self._view(held, request, peer)
                gone = {cid: known[cid] for cid in known.keys() - now.keys()}
                changed = {cid: c for cid, c in now.items() if known.get(cid) != c}
                if gone:
                    yield ConnectionEvent(type=connection_pb2.DELETE, connections=gone)
                if changed:
                    yield ConnectionEvent(type=connection_pb2.UPDATE, connections=changed)
                known = now
        finally:
            self.source.unsubscribe(changes)

    def _entry(self, request_id: str) -> dict | None:
        return next((c for c in self.status()["connections"] if c["id"] == request_id), None)


def _peer(context: grpc.ServicerContext, trust: HopTrust) -> Peer:
    """The caller, as far as trust needs it (an insecure server does not look)."""
    return Peer(peer_certificate(context), peer_spiffe_id(context)) if trust.secure else NO_PEER


def _in_scope(held: Held, selector: MonitorScopeSelector | None) -> bool:
    return (selector is None or not selector.network_services
            or held.connection.network_service in selector.network_services)


def _as_connection(held: Held, entry: dict) -> Connection:
    """What monitors see of a held connection: UP when the controller has it up, else DOWN."""
    return Connection(id=held.connection.id, network_service=held.connection.network_service,
                      labels=dict(held.connection.labels),
                      network_service_endpoint_name=entry.get("endpoint") or "",
                      state=connection_pb2.UP if entry.get("state") == "up" else connection_pb2.DOWN)


def _drain(changes: queue.SimpleQueue[HeldChange], wait: float) -> list[HeldChange]:
    """The changes queued now, waiting up to ``wait`` seconds for the first."""
    try:
        out = [changes.get(timeout=wait)]
    except queue.Empty:
        return []
    while True:
        try:
            out.append(changes.get_nowait())
        except queue.Empty:
            return out


def _copy(connection: Connection) -> Connection:
    copied = Connection()
    copied.CopyFrom(connection)
    return copied


