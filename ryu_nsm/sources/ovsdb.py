"""The OVSDB source: interfaces that the forwarder plumbed into Open vSwitch → Resources, live.

The forwarder (``ovs_forwarder``) marks every OVS Interface it creates with ``ryu-nsm-*``
external_ids: the NSM connection id, the role, the network service, the request labels as JSON,
the network namespace and the interface name inside it. This source keeps a read-only replica of
the Bridge, Port and Interface tables (names, the references between them, external_ids) through
the OVSDB IDL of the Python ``ovs`` package, and turns every interface marked with a
``ryu-nsm-role`` into model objects:

- role ``client`` → a ClientRequest in ``namespace``: the pod is named after the NSM connection id
  (as a DNS-1123 label: the id itself when it is one, which NSM's UUIDs are), the ifname is the one
  the forwarder recorded (``ryu-nsm-ifname``) or ``nsm-1``, service and labels come from the marks
  and the attachment is (bridge, port). ``OvsdbSource.connection_id_of`` maps the request's id
  (``namespace/pod/ifname``) back to the NSM connection id.
- role ``endpoint`` → an Endpoint named by ``ryu-nsm-endpoint`` (else after the interface's network
  namespace, else its connection, else the interface), serving the marked service with the marked
  labels; the interfaces of one endpoint make one Endpoint with one attachment each.

An interface with a bad mark is skipped with a Problem (source ``ovsdb:Interface/<name>``, path
``external_ids.<key>``); the others still count. Delivery is level-triggered like the other
sources: ``on_change`` gets the whole state once the first copy of the tables has arrived, and
again only when what the marks declare has changed, so churn elsewhere in the database
(statistics, other keys, ports without marks, a refreshed expiry) delivers nothing. While the
database is unreachable the IDL reconnects with backoff and the last state stands.

A change costs little more than what changed: the watcher reads each interface's marks once per
change of that interface (the model objects of the others are reused as they were), and reads the
references of bridges and ports from the rows' data rather than through the IDL's row objects,
which build and sort a row per reference (~8 ms for a bridge of 500 ports). Checking the interfaces
against each other and handing the state on still take time in proportion to their number (~10 ms
for 1,000 here), so a burst of changes is taken in batches: after a derivation the watcher lets
changes gather for as long as it took, and the first change after a quiet spell goes at once.

NetworkServices do not come from here: NSM keeps them in its registry, so they are declared in
files or on Kubernetes, in the same namespace.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import select
import threading
import time
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ryu_nsm.core.model import (
    EMPTY,
    Attachment,
    ClientRequest,
    Endpoint,
    FrozenMap,
    ModelError,
    Problem,
    Resources,
)
from ryu_nsm.core.validation import field_path
from ryu_nsm.observe.health import Loop, Supervised, supervise
from ryu_nsm.sources.kube_objects import is_dns1123_label, is_dns1123_subdomain

with warnings.catch_warnings():
    # ovs.poller probes for eventlet at import; eventlet (an os-ken dependency) warns on import.
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    import ovs.db.idl as idl
    import ovs.poller

log = logging.getLogger("ryu_nsm.sources.ovsdb")

DEFAULT_REMOTE = "unix:/var/run/openvswitch/db.sock"
DEFAULT_NAMESPACE = "nsm"
_BEAT = 5.0  # the watcher wakes at least this often (seconds), to show it is alive
DEFAULT_IFNAME = "nsm-1"  # NSM's default interface name in a client

# The marks of the forwarder's contract.
CONNECTION_KEY = "ryu-nsm-connection"
ROLE_KEY = "ryu-nsm-role"
SERVICE_KEY = "ryu-nsm-service"
LABELS_KEY = "ryu-nsm-labels"
NETNS_KEY = "ryu-nsm-netns"
IFNAME_KEY = "ryu-nsm-ifname"
# Not written by the forwarder: lets whoever plumbs an endpoint's interfaces name the endpoint.
ENDPOINT_KEY = "ryu-nsm-endpoint"
ROLES = ("client", "endpoint")

_IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")


def _refs(table: str, least: int) -> dict:
    return {"type": {"key": {"type": "uuid", "refTable": table}, "min": least, "max": "unlimited"}}


# The columns read, as the Open_vSwitch schema declares them (unchanged since OVS 1.x): no schema
# file is needed where the controller runs, which may watch another node's database.
_SCHEMA = {
    "name": "Open_vSwitch",
    "tables": {
        "Bridge": {"columns": {"name": {"type": "string"}, "ports": _refs("Port", 0)}, "isRoot": True},
        "Port": {"columns": {"name": {"type": "string"}, "interfaces": _refs("Interface", 1)}},
        "Interface": {"columns": {
            "name": {"type": "string"},
            "external_ids": {"type": {"key": "string", "value": "string", "min": 0, "max": "unlimited"}},
        }},
    },
}


@dataclass(frozen=True)
class MarkedInterface:
    """An OVS Interface with a ``ryu-nsm-role`` mark, and the bridge and port it belongs to."""

    bridge: str
    port: str
    name: str
    external_ids: Mapping[str, str]


@dataclass(frozen=True)
class Derived:
    """What marked interfaces declare: the Resources, and each request's NSM connection id."""

    resources: Resources
    connection_ids: Mapping[str, str]  # ClientRequest.id → NSM connection id


def dns_label(text: str) -> str:
    """``text`` as a DNS-1123 label: itself when it is one, else a lowercase slug of it with a hash
    of the whole text appended, so that different texts keep different names."""
    if is_dns1123_label(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    stem = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:52].rstrip("-")
    return f"{stem}-{digest}" if stem else f"x-{digest}"


def _at(key: str) -> str:
    return field_path("external_ids", key)


def _labels(text: str | None) -> FrozenMap:
    if text is None:
        return EMPTY
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelError(_at(LABELS_KEY), f"expected a JSON object of labels, found invalid JSON "
                                          f"({e.msg} at column {e.colno}): {text!r}") from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ModelError(_at(LABELS_KEY), f"expected a JSON object of string labels, found {text!r}")
    return FrozenMap(value)


@dataclass(frozen=True)
class _Marks:
    """The marks every role needs, checked."""

    role: str
    service: str
    labels: FrozenMap
    attachment: Attachment


def _common(iface: MarkedInterface) -> _Marks:
    marks = iface.external_ids
    role = marks.get(ROLE_KEY)
    if role not in ROLES:
        raise ModelError(_at(ROLE_KEY), f"expected 'client' or 'endpoint', found {role!r}")
    service = marks.get(SERVICE_KEY)
    if not service:
        raise ModelError(_at(SERVICE_KEY), "missing: the network service the interface was plumbed for")
    if not is_dns1123_subdomain(service):
        raise ModelError(_at(SERVICE_KEY), f"expected a network service name (a DNS-1123 subdomain), "
                                           f"found {service!r}")
    labels = _labels(marks.get(LABELS_KEY))
    try:
        attachment = Attachment.parse(f"{iface.bridge}/{iface.port}", "name")
    except ModelError:
        raise ModelError("name", f"bridge {iface.bridge!r} and port {iface.port!r} cannot name an "
                                 "attachment (letters, digits, '_', '.', ':' and '-')") from None
    return _Marks(role, service, labels, attachment)


def _client(iface: MarkedInterface, marks: _Marks, namespace: str) -> tuple[ClientRequest, str]:
    connection = iface.external_ids.get(CONNECTION_KEY)
    if not connection:
        raise ModelError(_at(CONNECTION_KEY), "missing: a client is named after its NSM connection id")
    ifname = iface.external_ids.get(IFNAME_KEY) or DEFAULT_IFNAME
    if not _IFNAME_RE.match(ifname):
        raise ModelError(_at(IFNAME_KEY), f"expected an interface name (at most 15 letters, digits, '_', "
                                          f"'.' and '-'), found {ifname!r}")
    request = ClientRequest(pod=dns_label(connection), ifname=ifname, service=marks.service,
                            namespace=namespace, labels=marks.labels, attachment=marks.attachment)
    return request, connection


def _endpoint_name(iface: MarkedInterface) -> str:
    marks = iface.external_ids
    name = marks.get(ENDPOINT_KEY)
    if name is None:
        return dns_label(marks.get(NETNS_KEY) or marks.get(CONNECTION_KEY) or iface.name)
    if not is_dns1123_subdomain(name):
        raise ModelError(_at(ENDPOINT_KEY), f"expected an endpoint name (a DNS-1123 subdomain), "
                                            f"found {name!r}")
    return name


@dataclass(frozen=True)
class _Parsed:
    """What one interface declares on its own, before it is checked against the others."""

    attachment: Attachment | None = None
    service: str = ""
    labels: FrozenMap = EMPTY
    request: ClientRequest | None = None  # role client
    connection: str = ""  # role client: the NSM connection id
    endpoint: str = ""  # role endpoint: the endpoint's name
    error: ModelError | None = None  # in the marks every role needs
    role_error: ModelError | None = None  # in the marks of its role (reported only if it claims its port)


def _parse(iface: MarkedInterface, namespace: str) -> _Parsed:
    """Read one interface's marks (see the module doc)."""
    try:
        marks = _common(iface)
    except ModelError as e:
        return _Parsed(error=e)
    common = {"attachment": marks.attachment, "service": marks.service, "labels": marks.labels}
    try:
        if marks.role == "client":
            request, connection = _client(iface, marks, namespace)
            return _Parsed(**common, request=request, connection=connection)
        return _Parsed(**common, endpoint=_endpoint_name(iface))
    except ModelError as e:
        return _Parsed(**common, role_error=e)


@dataclass
class _EndpointParts:
    """One endpoint being gathered from its interfaces."""

    labels: dict[str, FrozenMap] = field(default_factory=dict)  # service → labels
    first: dict[str, str] = field(default_factory=dict)  # service → the interface that set its labels
    attachments: list[Attachment] = field(default_factory=list)

    def key(self) -> tuple:
        """Everything the Endpoint is made of, hashable."""
        return tuple(sorted(self.labels.items())), tuple(self.attachments)


def derive(interfaces: Iterable[MarkedInterface], namespace: str = DEFAULT_NAMESPACE) -> Derived:
    """ClientRequests and Endpoints in ``namespace`` from marked interfaces (see the module doc).

    Interfaces are taken in (bridge, port, name) order, so equal sets give equal results and the
    first of two clashing interfaces wins; the other gets a Problem.
    """
    return _assemble([(iface, _parse(iface, namespace)) for iface in interfaces], namespace, {})


def _assemble(parsed: Iterable[tuple[MarkedInterface, _Parsed]], namespace: str,
              endpoint_cache: dict[tuple, Endpoint]) -> Derived:
    """The checks across interfaces, and the Resources. ``endpoint_cache`` maps what an Endpoint is
    made of to the Endpoint built from it last time (it is replaced with what this call used)."""
    requests: dict[str, tuple[ClientRequest, str]] = {}  # request id → (request, interface)
    connection_ids: dict[str, str] = {}
    endpoints: dict[str, _EndpointParts] = {}
    ports: dict[Attachment, str] = {}  # attachment → the interface that claimed it
    problems: list[Problem] = []
    for iface, one in sorted(parsed, key=lambda item: (item[0].bridge, item[0].port, item[0].name)):
        # Stored errors are reported, not raised again: a re-raised exception keeps growing its traceback.
        error = one.error
        if error is None and one.attachment in ports:
            error = ModelError("name", f"port {one.attachment} already carries the marked interface "
                                       f"{ports[one.attachment]}")
        error = error or one.role_error
        if error is None and one.request is not None:
            if one.request.id in requests:
                error = ModelError(_at(CONNECTION_KEY), f"client {one.request.id} is already marked on "
                                                        f"interface {requests[one.request.id][1]}")
            else:
                requests[one.request.id] = (one.request, iface.name)
                connection_ids[one.request.id] = one.connection
        elif error is None:
            parts = endpoints.get(one.endpoint) or _EndpointParts()
            known = parts.labels.get(one.service)
            if known is not None and known != one.labels:
                error = ModelError(_at(LABELS_KEY), f"labels {dict(one.labels)} differ from "
                                   f"{dict(known)} on interface {parts.first[one.service]} of the "
                                   f"same endpoint {one.endpoint} for service {one.service}")
            else:
                endpoints[one.endpoint] = parts
                parts.labels.setdefault(one.service, one.labels)
                parts.first.setdefault(one.service, iface.name)
                parts.attachments.append(one.attachment)
        if error is not None:
            problems.append(Problem(f"ovsdb:Interface/{iface.name}", -1, error.path, error.message))
        else:
            ports[one.attachment] = iface.name
    built = []
    used: dict[tuple, Endpoint] = {}
    for name, parts in sorted(endpoints.items()):
        key = (name, *parts.key())
        endpoint = endpoint_cache.get(key) or Endpoint(
            name, namespace, tuple(sorted(parts.labels)), FrozenMap(parts.labels), tuple(parts.attachments))
        used[key] = endpoint
        built.append(endpoint)
    endpoint_cache.clear()
    endpoint_cache.update(used)
    resources = Resources(
        endpoints=tuple(built),
        requests=tuple(request for _, (request, _) in sorted(requests.items())),
        problems=tuple(problems),
    )
    return Derived(resources, connection_ids)


class _Tables:
    """Names, references and marks of the watched rows, kept up to date by the IDL's row notifications:
    reading an IDL column converts it afresh each time, too slow to rescan every row on each change.
    Each marked interface keeps its MarkedInterface and what it declares until it changes."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        # Rows by the integer of their uuid: hashing a uuid.UUID runs Python code, an int's does not.
        self.rows: dict[str, dict[int, tuple[str, Any]]] = {table: {} for table in _SCHEMA["tables"]}
        self._loaded: dict[str, Any] = {}  # the IDL's row set of each table when last checked
        self._parsed: dict[int, tuple[MarkedInterface, _Parsed]] = {}
        self._endpoints: dict[tuple, Endpoint] = {}

    def update(self, event: str, row: Any, updates: Any = None) -> None:
        """The IDL's ``notify`` hook: apply one row change."""
        table = row._table.name  # a Row names its table only through _table
        if table not in self.rows:
            return  # the IDL also reports the rows of the server's own _Server database
        key = row.uuid.int
        if event == idl.ROW_DELETE:
            self.rows[table].pop(key, None)
        elif table == "Interface":
            self.rows[table][key] = (row.name, dict(row.external_ids))
            self._parsed.pop(key, None)
        else:
            self.rows[table][key] = (row.name, _refs(row, "ports" if table == "Bridge" else "interfaces"))

    def derive(self, replica: idl.Idl, bridges: Collection[str] | None) -> Derived:
        """What the interfaces with a role mark on ``bridges`` (None: all) declare."""
        # A reload after a reconnection notifies the rows it loads, not those it dropped; it starts
        # from a new row set, so only then is there anything to drop.
        for table, rows in self.rows.items():
            loaded = replica.tables[table].rows
            if loaded is not self._loaded.get(table):
                live = {k.int for k in loaded}
                for key in [k for k in rows if k not in live]:
                    del rows[key]
                self._loaded[table] = loaded
        ports, ifaces = self.rows["Port"], self.rows["Interface"]
        parsed: dict[int, tuple[MarkedInterface, _Parsed]] = {}
        for bridge, port_keys in self.rows["Bridge"].values():
            if bridges is not None and bridge not in bridges:
                continue
            for port, iface_keys in (ports[k] for k in port_keys if k in ports):
                for key in iface_keys:
                    if key not in ifaces or ROLE_KEY not in ifaces[key][1]:
                        continue
                    known = self._parsed.get(key)
                    if known is None or (known[0].bridge, known[0].port) != (bridge, port):
                        name, marks = ifaces[key]
                        iface = MarkedInterface(bridge, port, name, MappingProxyType(marks))
                        known = (iface, _parse(iface, self.namespace))
                    parsed[key] = known
        self._parsed = parsed
        return _assemble(parsed.values(), self.namespace, self._endpoints)


def _refs(row: Any, column: str) -> tuple[int, ...]:
    """The uuids (as integers) a reference column holds, read from the row's datum: the public
    attribute would build (and sort) a row object per reference."""
    return tuple(atom.value.int for atom in row._data[column].values)


class OvsdbSource:
    """Watches an OVSDB server and calls ``on_change(resources)`` with what the interfaces marked by
    the forwarder declare (see the module doc).

    ``remote``: an OVSDB remote (``unix:PATH`` or ``tcp:HOST:PORT``); any server of a
    cluster will do, the source only reads. ``namespace``: the namespace of every request and
    endpoint. ``bridges``: only interfaces on these bridges count (None: all), so a controller binds
    the ports of its own fabric and nothing else in a shared database.
    """

    def __init__(
        self,
        on_change: Callable[[Resources], None],
        remote: str = DEFAULT_REMOTE,
        namespace: str = DEFAULT_NAMESPACE,
        *,
        bridges: Collection[str] | None = None,
    ):
        if not is_dns1123_label(namespace):
            raise ValueError(f"namespace {namespace!r} is not a DNS-1123 label")
        self.remote = remote
        self.namespace = namespace
        self.bridges = None if bridges is None else frozenset(bridges)
        self._on_change = on_change
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._wake_w: int | None = None
        self._connection_ids: Mapping[str, str] = {}
        self._delivered: tuple | None = None
        self._synced = threading.Event()
        self._thread: Supervised | None = None

    def start(self) -> None:
        """Connect and watch in a background thread (which also calls ``on_change``)."""
        if self._thread is not None:
            raise RuntimeError("ovsdb source already started")
        # Starting over from a fresh replica is always correct (the state is level-triggered).
        self._thread = supervise("ryu-nsm-ovsdb", self._run, _BEAT, self._stopping, initial_backoff=1.0)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching and wait for the thread to end (unless called from ``on_change`` itself)."""
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)

    def synced(self) -> bool:
        """True once a complete state of the database has been delivered."""
        return self._synced.is_set()

    def wait_synced(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the first delivery; return ``synced()``."""
        return self._synced.wait(timeout)

    def connection_id_of(self, request_id: str) -> str | None:
        """The NSM connection id of the client request ``request_id`` (``namespace/pod/ifname``)."""
        return self._connection_ids.get(request_id)

    # -- the watcher thread ------------------------------------------------------------------------

    def _wake(self) -> None:
        with self._lock:
            if self._wake_w is not None:
                try:
                    os.write(self._wake_w, b"!")
                except BlockingIOError:
                    pass  # the pipe is full, so the thread wakes anyway

    def _run(self, loop: Loop) -> None:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with self._lock:
            self._wake_w = wake_w
        try:
            self._watch(wake_r, loop)
        finally:
            with self._lock:
                os.close(wake_w)
                self._wake_w = None
            os.close(wake_r)

    def _watch(self, wake_r: int, loop: Loop) -> None:
        helper = idl.SchemaHelper(schema_json=_SCHEMA)
        helper.register_all()
        tables = _Tables(self.namespace)
        # Only reads: any server of a cluster will do, not just the leader.
        replica = idl.Idl(self.remote, helper, leader_only=False)
        replica.notify = tables.update  # the IDL's documented notification hook, on this instance
        seen = 0  # change_seqno stays 0 until the first copy of the tables has arrived
        dirty = False  # changed since the last derivation
        pending: Derived | None = None
        retry_at = derive_at = 0.0
        try:
            while not self._stopping.is_set():
                replica.run()
                if replica.change_seqno != seen:
                    seen = replica.change_seqno
                    dirty = True
                started = time.monotonic()
                derived = dirty and started >= derive_at
                if derived:
                    dirty = False
                    pending = tables.derive(replica, self.bridges)
                if pending is not None and time.monotonic() >= retry_at:
                    try:
                        self._deliver(pending)
                        pending = None
                    except Exception:
                        # The consumer's failure must not end the watch; the same state is offered again.
                        log.exception("ovsdb source: reporting a change failed")
                        retry_at = time.monotonic() + 1.0
                if derived:
                    # A burst of changes is taken in batches: at most half of the time goes to deriving
                    # and handing on, and the first change after a quiet spell goes at once.
                    derive_at = 2 * time.monotonic() - started
                poller = ovs.poller.Poller()
                replica.wait(poller)
                poller.fd_wait(wake_r, select.POLLIN)
                poller.timer_wait(int(_BEAT * 1000))  # wake to beat when the database is quiet
                for due, waiting in ((derive_at, dirty), (retry_at, pending is not None)):
                    if waiting:
                        poller.timer_wait(max(0, math.ceil((due - time.monotonic()) * 1000)))
                poller.block()
                loop.beat()
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
        finally:
            replica.close()

    def _deliver(self, derived: Derived) -> None:
        resources = derived.resources
        # Problems do not take part in Resources equality, but a new or fixed one is news.
        delivered = (resources, resources.problems)
        self._connection_ids = derived.connection_ids
        if delivered != self._delivered:
            self._on_change(resources)
            self._delivered = delivered
        self._synced.set()
