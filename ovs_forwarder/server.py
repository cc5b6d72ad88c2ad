"""The forwarder's NSM gRPC face: `networkservice.NetworkService` (Request, Close) and
`connection.MonitorConnection` (MonitorConnections) on top of `plumbing`.

Request reads the NSM request into what to plumb (`translation`), plumbs a veth into the namespace
that the mechanism names and answers the connection UP with this forwarder's PathSegment; monitors
(`monitors`) hear of every change.

Trust (docs/security.md): with an identity the forwarder serves over mTLS, signs its segment's token
(ES256, for the caller's SPIFFE ID) and authorizes every Request and Close with NSM's policies over
the path up to its own segment before anything is plumbed or unplumbed; a monitor sees only the
connections whose path holds its caller's token. Without one (insecure mode, warned at start) the
token is an opaque "unsigned:" string and nothing is checked: use it only where the node is the
trust boundary.

The answer comes once the port is committed to OVSDB; ovs-vswitchd attaches it at its next
reconfiguration (see `plumbing`). Should it refuse the port (ofport -1 or an interface error), or
accept it later, monitors get an UPDATE with the connection DOWN, or UP again; a refresh of a
refused connection plumbs it anew.

Refresh (same id, same namespace, interface name and role) changes nothing on the data plane and
only moves the expiry; a changed context (addresses, routes, MTU, ...) is plumbed anew by
`plumbing.plumb`. The same id with another namespace, interface name or role is refused with
FAILED_PRECONDITION: Close it first. Close of an unknown id is not an error.

Restart safety: `start()` rebuilds the table from OVSDB (`discovery.discover`); a rebuilt connection
keeps its recorded expiry (`ryu-nsm-expires`) but never less than the restart time, so clients get at
least `grace` seconds to refresh with a forwarder that is up again. A connection is closed by the
janitor `grace` seconds after its expiry; orphans (veth or namespace gone) are removed `grace`
seconds after start. A rebuilt connection carries only what OVSDB records (no context) until the
client refreshes it. Stopping the forwarder never unplumbs anything.

Locking: requests, closes and expiries of one connection id are serialised by a lock of that id;
different ids plumb concurrently (netlink and OVSDB serialise what they must themselves, and
concurrent OVSDB transactions reach ovs-vswitchd in one reconfiguration). The table, the orphans and
the monitors are guarded by a short table lock that is never held while plumbing; an event is
published under it as the table changes, so monitors see the events of one id in order.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
from google.protobuf import empty_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from nsm_api import connection_pb2, connection_pb2_grpc, networkservice_pb2, networkservice_pb2_grpc
from nsm_api.connection_pb2 import Connection, ConnectionEvent, Mechanism, MonitorScopeSelector
from nsm_api.errors import RequestError
from nsm_api.serving import NO_PEER, HopTrust, NsmServing, Peer
from ovs_forwarder.discovery import Existing, attach_refused, discover
from ovs_forwarder.kernel_request import CONNECTION_KEY, ENDPOINT_KEY, OWNER_KEY, PlumbingError, host_ifname
from ovs_forwarder.monitors import Subscriber, matches
from ovs_forwarder.ovsdb import Ovsdb, PortInfo
from ovs_forwarder.plumbing import IdLocks, plumb, unplumb
from ovs_forwarder.translation import (
    ATTACHMENT_PARAM,
    ENDPOINT_PARAM,
    IFNAME_PARAM,
    INODE_URL_PARAM,
    KERNEL,
    LOCAL,
    ROLE_PARAM,
    answered_mechanism,
    request_error,
    stamp_path,
    translate,
)
from ryu_nsm.observe.health import Loop, Supervised, supervise
from ryu_nsm.trust.identity import IdentitySource
from ryu_nsm.trust.tls import peer_certificate, peer_spiffe_id, server_credentials_factory

log = logging.getLogger(__name__)

_JANITOR_MAX_SLEEP = 1.0
_JANITOR_MIN_SLEEP = 0.05
_JANITOR_MAX_BACKOFF = 5.0  # a failing sweep is retried at least this often


@dataclass
class _Entry:
    """A connection this forwarder holds: the last answer, where it is plumbed, and until when."""

    connection: Connection
    netns: str
    ifname: str
    role: str
    expires: float


class Forwarder(networkservice_pb2_grpc.NetworkServiceServicer,
                connection_pb2_grpc.MonitorConnectionServicer):
    """NSM NetworkService and MonitorConnection for KERNEL interfaces on one OVS bridge.

    `start()` rebuilds the table and starts the janitor; `serve()` also starts a gRPC server;
    `stop()` stops both without unplumbing anything.
    """

    def __init__(self, ovsdb: Ovsdb, bridge: str, name: str, token_lifetime: float = 600.0,
                 grace: float = 30.0, clock: Callable[[], float] = time.time,
                 identity: IdentitySource | None = None) -> None:
        """`name` is the path segment name and the `ryu-nsm-owner` mark; times are in seconds;
        `identity` (None: insecure mode) is served over mTLS and signs tokens."""
        if not name:
            raise ValueError("the forwarder needs a name")
        if token_lifetime <= 0 or grace < 0:
            raise ValueError("token_lifetime must be > 0 and grace >= 0")
        self.ovsdb = ovsdb
        self.bridge = bridge
        self.name = name
        self.token_lifetime = token_lifetime
        self.grace = grace
        self.clock = clock
        self.trust = HopTrust(identity, token_lifetime)
        self._lock = threading.Lock()  # the table, the orphans and the subscribers; never held while plumbing
        self._ids = IdLocks()
        self._busy = 0  # requests, closes and sweeps under way, which stop() lets finish
        self._idle = threading.Condition(self._lock)
        self._table: dict[str, _Entry] = {}
        self._orphans: dict[str, float] = {}  # connection id -> when to remove it
        self._subscribers: set[Subscriber] = set()
        self._stopping = threading.Event()
        self._janitor: Supervised | None = None
        self._serving = NsmServing(self, "ovs-forwarder-grpc", server_credentials_factory(identity))
        self.listening = self._serving.listening  # the bound addresses, with the ports that TCP port 0 got

    # ---- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Rebuild the connection table from OVSDB and start the janitor thread. Idempotent."""
        with self._lock:
            if self._janitor is not None:
                return
            now = self.clock()
            found = discover(self.ovsdb, owner=self.name)
            for existing in found.live:
                self._table[existing.connection_id] = self._rebuilt(existing, now)
            for orphan in found.orphans:
                log.warning("orphan %s (%s): removing it in %.0f s unless requested again",
                            orphan.connection_id, orphan.reason, self.grace)
                self._orphans[orphan.connection_id] = now + self.grace
            log.info("forwarder %s on %s: %d connection(s) rebuilt, %d orphan(s)", self.name, self.bridge,
                     len(found.live), len(found.orphans))
            self.ovsdb.watch_interfaces(self._attachments_changed)
            self._janitor = supervise(f"ovs-forwarder-janitor:{self.name}", self._run_janitor,
                                      _JANITOR_MAX_SLEEP, self._stopping, max_backoff=_JANITOR_MAX_BACKOFF)

    def serve(self, listen: Sequence[str], max_workers: int = 32) -> grpc.Server:
        """Start (if needed) and serve gRPC on each address: `unix:///path` or `host:port`.

        Every open MonitorConnections stream holds a worker thread, hence the generous default.
        """
        if not listen:
            raise ValueError("nothing to listen on")
        self.start()
        return self._serving.start(listen, max_workers)

    def stop(self, grace: float | None = 1.0) -> None:
        """End monitor streams, stop the gRPC server and the janitor. Connections stay plumbed."""
        self._stopping.set()
        self.ovsdb.unwatch_interfaces(self._attachments_changed)
        with self._lock:
            for subscriber in self._subscribers:
                subscriber.end()
        self._serving.stop(grace)
        with self._idle:
            # A handler cancelled by the server stop may still be plumbing: let it finish.
            self._idle.wait_for(lambda: self._busy == 0)
        self._serving.clear_sockets()
        if self._janitor is not None:
            self._janitor.join()  # not when stop() runs in the janitor itself

    # ---- plain API ---------------------------------------------------------------------------------

    def connections(self) -> dict[str, Connection]:
        """A copy of every connection held now, by id."""
        with self._lock:
            return {cid: _copy(entry.connection) for cid, entry in self._table.items()}

    def request(self, request: networkservice_pb2.NetworkServiceRequest,
                still_wanted: Callable[[], bool] = lambda: True, peer: Peer = NO_PEER) -> Connection:
        """Plumb (or refresh) the requested connection and return it UP; RequestError if refused,
        PERMISSION_DENIED (before anything is plumbed) when `peer` may not ask for it.

        `still_wanted` is asked once the connection's lock is held: a caller that gave up meanwhile
        gets nothing plumbed.
        """
        now = self.clock()
        token, lifetime = self.trust.token(peer, now)
        expires = now + lifetime
        wanted = translate(request, bridge=self.bridge, owner=self.name, expires=expires)
        answer = self._authorized(request.connection, token, lifetime, peer, now)
        kernel = wanted.kernel
        cid = kernel.connection_id
        with self._working(), self._ids.hold(cid):
            if not still_wanted():
                raise RequestError(grpc.StatusCode.CANCELLED, "the client went away before plumbing")
            with self._lock:
                held = self._table.get(cid)
            if held is not None and (held.netns, held.ifname, held.role) != (kernel.netns, kernel.ifname,
                                                                             kernel.role):
                raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"connection {cid} is plumbed as {held.role} interface {held.ifname} in "
                                   f"netns {held.netns}; Close it before asking for {kernel.role} interface "
                                   f"{kernel.ifname} in netns {kernel.netns}")
            for port in self.ovsdb.find(CONNECTION_KEY, cid):
                owner = port.external_ids.get(OWNER_KEY)
                if owner != self.name:
                    raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                                       f"connection {cid} is plumbed by forwarder {owner!r} "
                                       f"(port {port.name} on {port.bridge})")
            try:
                done = plumb(kernel, self.ovsdb)
            except PlumbingError as exc:
                self._forget_if_gone(cid)
                raise request_error(exc) from exc
            answer.mechanism.CopyFrom(answered_mechanism(wanted.mechanism, done))
            answer.state = connection_pb2.UP
            with self._lock:
                self._orphans.pop(cid, None)
                self._table[cid] = _Entry(answer, kernel.netns, kernel.ifname, kernel.role, expires)
                self._publish(connection_pb2.UPDATE, [answer])
                # ovs-vswitchd may have refused the port before the entry was there to hear of it.
                port = self.ovsdb.port(done.host_ifname)
                if port is not None:
                    self._attachment_changed(cid, port)
            log.info("%s %s: %s/%s in %s", "plumbed" if done.created else "refreshed", cid, done.bridge,
                     done.host_ifname, kernel.netns)
            return _copy(answer)

    def close(self, connection_id: str) -> bool:
        """Unplumb `connection_id`; False (not an error) if this forwarder does not know it."""
        if not connection_id:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "connection.id is empty")
        with self._working(), self._ids.hold(connection_id):
            with self._lock:
                known = connection_id in self._table or connection_id in self._orphans
            if not known and not any(p.external_ids.get(OWNER_KEY) == self.name
                                     for p in self.ovsdb.find(CONNECTION_KEY, connection_id)):
                return False
            self._remove(connection_id, "closed")
            return True

    def sweep(self, now: float | None = None) -> list[str]:
        """Close connections `grace` past their expiry and remove due orphans; returns the ids removed."""
        now = self.clock() if now is None else now
        removed = []
        with self._working():
            with self._lock:
                expired = [c for c, e in self._table.items() if e.expires + self.grace <= now]
                due = {c for c, when in self._orphans.items() if when <= now}
            for cid in expired:
                with self._ids.hold(cid):
                    with self._lock:
                        entry = self._table.get(cid)
                    if entry is None or entry.expires + self.grace > now:
                        continue  # closed or refreshed since the table was read
                    try:
                        self._remove(cid, "expired")
                        removed.append(cid)
                    except RequestError as exc:
                        log.error("could not close expired connection %s: %s", cid, exc.message)
            if due:
                removed += self._remove_orphans(due, now)
        return removed

    # ---- gRPC methods ------------------------------------------------------------------------------

    def Request(self, request: networkservice_pb2.NetworkServiceRequest,
                context: grpc.ServicerContext) -> Connection:
        """networkservice.NetworkService/Request."""
        try:
            return self.request(request, still_wanted=context.is_active, peer=_peer(context, self.trust))
        except RequestError as exc:
            log.info("refused request %r: %s", request.connection.id, exc)
            context.abort(exc.code, exc.message)

    def Close(self, request: Connection, context: grpc.ServicerContext) -> empty_pb2.Empty:
        """networkservice.NetworkService/Close, authorized as a Request is."""
        try:
            if self.trust.secure:
                now, peer = self.clock(), _peer(context, self.trust)
                self._authorized(request, *self.trust.token(peer, now), peer, now)
            self.close(request.id)
        except RequestError as exc:
            log.info("refused close %r: %s", request.id, exc)
            context.abort(exc.code, exc.message)
        return empty_pb2.Empty()

    def MonitorConnections(self, request: MonitorScopeSelector,
                           context: grpc.ServicerContext) -> Iterator[ConnectionEvent]:
        """connection.MonitorConnection/MonitorConnections: the initial state, then every change."""
        subscriber = Subscriber(request, _peer(context, self.trust))
        with self._lock:
            if self._stopping.is_set():
                return
            initial = {cid: _copy(e.connection) for cid, e in self._table.items()
                       if matches(e.connection, request)
                       and self.trust.visible(e.connection, subscriber.peer)}
            self._subscribers.add(subscriber)
        try:
            if not context.add_callback(subscriber.end):
                return  # the RPC is already over
            yield ConnectionEvent(type=connection_pb2.INITIAL_STATE_TRANSFER, connections=initial)
            while (event := subscriber.events.get()) is not None:
                yield event
            if subscriber.overflowed:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              "this monitor fell too far behind; subscribe again")
        finally:
            with self._lock:
                self._subscribers.discard(subscriber)

    # ---- internals ---------------------------------------------------------------------------------

    def _authorized(self, connection: Connection, token: str, lifetime: float, peer: Peer,
                    now: float) -> Connection:
        """`connection` with our segment and `token` on its path, once NSM's policies pass the path
        up to that segment (as NSM's updatepath, updatetoken and authorize do); RequestError else."""
        stamped = stamp_path(connection, self.name, token, lifetime, now)
        self.trust.authorize(stamped.path, peer, now)
        return stamped

    @contextmanager
    def _working(self) -> Iterator[None]:
        """Count an operation under way, for stop() to wait on."""
        with self._lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1
                self._idle.notify_all()

    def _remove(self, cid: str, why: str) -> None:
        """Unplumb `cid` and drop it from the table, telling monitors (its id lock held)."""
        try:
            unplumb(cid, self.ovsdb)
        except PlumbingError as exc:
            raise request_error(exc) from exc
        with self._lock:
            self._orphans.pop(cid, None)
            entry = self._table.pop(cid, None)
            if entry is not None:
                self._publish_delete(entry)
        log.info("%s %s", why, cid)

    def _remove_orphans(self, due: set[str], now: float) -> list[str]:
        """Remove the due orphans that are still orphans; adopt any that came back."""
        found = discover(self.ovsdb, owner=self.name)
        verdicts = {e.connection_id: e for e in [*found.live, *found.orphans] if e.connection_id in due}
        removed = []
        for cid in due:
            with self._ids.hold(cid):
                with self._lock:
                    # A request since the discovery made it a connection again: leave it.
                    if self._orphans.pop(cid, None) is None or cid in self._table:
                        continue
                existing = verdicts.get(cid)
                if existing is None:
                    continue  # gone meanwhile
                if existing.reason is None:
                    log.info("orphan %s works again: keeping it", cid)
                    entry = self._rebuilt(existing, now)
                    with self._lock:
                        self._table[cid] = entry
                        self._publish(connection_pb2.UPDATE, [entry.connection])
                    continue
                try:
                    unplumb(cid, self.ovsdb)
                    removed.append(cid)
                    log.info("removed orphan %s (%s)", cid, existing.reason)
                except PlumbingError as exc:
                    log.error("could not remove orphan %s: %s", cid, exc.message)
        return removed

    def _forget_if_gone(self, cid: str) -> None:
        """After a failed (re-)plumb: drop a held connection whose plumbing is no longer there."""
        if self.ovsdb.find(CONNECTION_KEY, cid):
            return
        with self._lock:
            entry = self._table.pop(cid, None)
            if entry is not None:
                self._publish_delete(entry)

    def _rebuilt(self, existing: Existing, now: float) -> _Entry:
        """A table entry for a connection found in OVSDB (see the module docstring for its expiry)."""
        expires = max(existing.expires if existing.expires is not None else now + self.token_lifetime, now)
        params = {IFNAME_PARAM: existing.ifname, INODE_URL_PARAM: existing.netns, ROLE_PARAM: existing.role,
                  ATTACHMENT_PARAM: f"{existing.bridge}/{existing.host_ifname}"}
        port = self.ovsdb.port(existing.host_ifname)
        endpoint = port.external_ids.get(ENDPOINT_KEY) if port is not None else None
        if endpoint:
            params[ENDPOINT_PARAM] = endpoint
        # The segment id is not recorded; a stable one keeps monitors that select by id working.
        segment_id = uuid.uuid5(uuid.NAMESPACE_URL, f"ryu-nsm:{self.name}:{existing.connection_id}")
        token, _ = self.trust.token(NO_PEER, now)
        segment = connection_pb2.PathSegment(name=self.name, id=str(segment_id), token=token,
                                             expires=Timestamp(seconds=int(expires)))
        connection = Connection(
            id=existing.connection_id, network_service=existing.service, labels=dict(existing.labels),
            mechanism=Mechanism(cls=LOCAL, type=KERNEL, parameters=params),
            path=connection_pb2.Path(index=0, path_segments=[segment]), state=connection_pb2.UP)
        return _Entry(connection, existing.netns, existing.ifname, existing.role, expires)

    def _attachments_changed(self, ports: list[PortInfo]) -> None:
        """The watcher of OVSDB interfaces: note ports of ours that ovs-vswitchd refused or took."""
        with self._lock:
            for port in ports:
                cid = port.external_ids.get(CONNECTION_KEY)
                if cid and port.external_ids.get(OWNER_KEY) == self.name:
                    self._attachment_changed(cid, port)

    def _attachment_changed(self, cid: str, port: PortInfo) -> None:
        """Mark `cid` DOWN if ovs-vswitchd refused its port, UP once it has an ofport (table lock held)."""
        entry = self._table.get(cid)
        if entry is None or port.name != host_ifname(cid):
            return
        state = connection_pb2.DOWN if attach_refused(port) else connection_pb2.UP if port.ofport else None
        if state is None or state == entry.connection.state:
            return
        if state == connection_pb2.DOWN:
            log.error("ovs-vswitchd refused port %s of %s: %s", port.name, cid, port.error or "ofport -1")
        else:
            log.info("ovs-vswitchd attached port %s of %s", port.name, cid)
        entry.connection.state = state
        self._publish(connection_pb2.UPDATE, [entry.connection])

    def _publish_delete(self, entry: _Entry) -> None:
        """Tell monitors that `entry` is gone (table lock held)."""
        gone = _copy(entry.connection)
        gone.state = connection_pb2.DOWN
        self._publish(connection_pb2.DELETE, [gone])

    def _publish(self, kind: int, connections: Iterable[Connection]) -> None:
        """Send an event to every monitor whose scope holds some of `connections` (lock held)."""
        connections = list(connections)
        for subscriber in self._subscribers:
            chosen = {c.id: c for c in connections
                      if matches(c, subscriber.selector) and self.trust.visible(c, subscriber.peer)}
            if chosen:
                subscriber.offer(ConnectionEvent(type=kind, connections=chosen))

    def _run_janitor(self, loop: Loop) -> None:
        """Sweep when something is due; a sweep that raises is logged, counted and retried by the
        supervisor (observe.health) after a short back-off."""
        while True:
            loop.beat()
            with self._lock:
                due = [e.expires + self.grace for e in self._table.values()] + list(self._orphans.values())
            wait = min(due, default=float("inf")) - self.clock()
            if self._stopping.wait(min(max(wait, _JANITOR_MIN_SLEEP), _JANITOR_MAX_SLEEP)):
                return
            self.sweep()


def _peer(context: grpc.ServicerContext, trust: HopTrust) -> Peer:
    """The caller, as far as trust needs it (an insecure server does not look)."""
    return Peer(peer_certificate(context), peer_spiffe_id(context)) if trust.secure else NO_PEER


def _copy(connection: Connection) -> Connection:
    copied = Connection()
    copied.CopyFrom(connection)
    return copied
