"""Bridge ports through the OVSDB IDL of the Python `ovs` package (no ovs-vsctl).

One `Ovsdb` keeps a replica of the Bridge, Port and Interface tables (only the columns the
forwarder needs), refreshed by its own thread. Callers build transactions under a lock, and
wait on a condition that the thread signals after every batch it processed. Watchers
(`watch_interfaces`) hear of every interface whose ofport or error changed, so a caller that does
not wait for ovs-vswitchd to attach a port still learns whether it did.

Reading a column of an IDL row converts it afresh each time (~20 us; a bridge's `ports` column of
500 references takes ~8 ms, as the library builds and sorts a row object for each), so reads go
through a plain view of names, marks and parent links that the IDL's row notifications keep up to
date, with indexes by name and by external_ids key and value: lookups stay O(1) with hundreds of
ports, and a port added to a big bridge costs no more than one added to a small one.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

with warnings.catch_warnings():
    # ovs.poller probes for eventlet at import; eventlet (an os-ken dependency) warns on import.
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    import ovs.db.idl as idl
    import ovs.timeval

log = logging.getLogger(__name__)

DEFAULT_REMOTE = "unix:/var/run/openvswitch/db.sock"
DEFAULT_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"

_COLUMNS = {
    "Bridge": ["name", "ports"],
    "Port": ["name", "interfaces"],
    "Interface": ["name", "type", "ofport", "ofport_request", "external_ids", "error"],
}

T = TypeVar("T")


class OvsdbError(Exception):
    """An OVSDB request failed or timed out."""


class NoSuchBridge(OvsdbError):
    """The named bridge is not in the database."""


class PortExists(OvsdbError):
    """A Port or Interface of that name is already in the database."""


@dataclass(frozen=True)
class PortInfo:
    """One port as the database sees it: where it is, its OpenFlow number and its marks."""

    bridge: str
    name: str
    ofport: int | None
    external_ids: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None


class _Poll:
    """The poller interface the `ovs` library calls, over select.poll (no 1024-fd limit of select)."""

    def __init__(self) -> None:
        self._events: dict[int, int] = {}
        self._timeout_ms = -1

    def fd_wait(self, fd: Any, events: int) -> None:
        """Wake when `fd` has any of `events`; registrations for one fd add up."""
        number = fd if isinstance(fd, int) else fd.fileno()
        self._events[number] = self._events.get(number, 0) | events

    def timer_wait(self, msec: int) -> None:
        """Wake after at most `msec` milliseconds."""
        msec = max(0, int(msec))
        if self._timeout_ms < 0 or msec < self._timeout_ms:
            self._timeout_ms = msec

    def timer_wait_until(self, msec: int) -> None:
        """Wake at `msec` on the ovs.timeval clock."""
        self.timer_wait(msec - ovs.timeval.msec())

    def immediate_wake(self) -> None:
        """Do not block at all."""
        self._timeout_ms = 0

    def block(self) -> None:
        """Wait for the first registered event or timer."""
        poller = select.poll()
        for fd, events in self._events.items():
            poller.register(fd, events)
        poller.poll(None if self._timeout_ms < 0 else self._timeout_ms)


@dataclass
class _View:
    """What the forwarder reads from the replica, as plain Python, keyed by row uuid."""

    names: dict[str, dict[uuid.UUID, str]] = field(
        default_factory=lambda: {table: {} for table in _COLUMNS})
    by_name: dict[str, dict[str, set[uuid.UUID]]] = field(
        default_factory=lambda: {table: {} for table in _COLUMNS})
    ifaces: dict[uuid.UUID, tuple[int | None, dict[str, str], str | None]] = field(default_factory=dict)
    by_mark: dict[tuple[str, str], set[uuid.UUID]] = field(default_factory=dict)  # interfaces
    children: dict[uuid.UUID, frozenset[uuid.UUID]] = field(default_factory=dict)
    parent: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)
    attach_changed: set[uuid.UUID] = field(default_factory=set)  # interfaces: ofport or error changed

    def update(self, event: str, row: Any) -> None:
        """Apply one row notification of the IDL."""
        table, key = row._table.name, row.uuid  # a Row names its table only through _table
        if table not in self.names:
            return  # the IDL also reports rows of the server's own _Server database
        for child in self.children.pop(key, ()):
            if self.parent.get(child) == key:
                del self.parent[child]
        _discard(self.by_name[table], self.names[table].pop(key, None), key)
        attached = None
        if table == "Interface" and key in self.ifaces:
            ofport, marks, error = self.ifaces.pop(key)
            attached = ofport, error
            for mark in marks.items():
                _discard(self.by_mark, mark, key)
        if event == idl.ROW_DELETE:
            return
        self.names[table][key] = row.name
        self.by_name[table].setdefault(row.name, set()).add(key)
        if table == "Interface":
            marks = dict(row.external_ids)
            self.ifaces[key] = (_first(row.ofport), marks, _first(row.error))
            for mark in marks.items():
                self.by_mark.setdefault(mark, set()).add(key)
            if (self.ifaces[key][0], self.ifaces[key][2]) != (attached or (None, None)):
                self.attach_changed.add(key)
            return
        self.children[key] = frozenset(_refs(row, "ports" if table == "Bridge" else "interfaces"))
        for child in self.children[key]:
            self.parent[child] = key

    def named(self, table: str, name: str, rows: Mapping[uuid.UUID, Any]) -> uuid.UUID | None:
        """The uuid of the live row of `table` called `name`."""
        return next((k for k in self.by_name[table].get(name, ()) if k in rows), None)


def _discard(index: dict[Any, set[uuid.UUID]], value: Any, key: uuid.UUID) -> None:
    """Drop `key` from the set that `index` keeps for `value`, and the set once it is empty."""
    keys = index.get(value)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[value]


def _refs(row: Any, column: str) -> list[uuid.UUID]:
    """The uuids a reference column holds, read from the row's datum: the public attribute would
    build (and sort) a row object per reference."""
    return [atom.value for atom in row._data[column].values]


class _Replica(idl.Idl):
    """The IDL, passing each row change to a callback (called inside run(), under the Ovsdb lock)."""

    def __init__(self, remote: str, helper: idl.SchemaHelper, on_change: Callable[[str, Any], None]):
        super().__init__(remote, helper)
        self._on_change = on_change

    def notify(self, event: str, row: Any, updates: Any = None) -> None:
        self._on_change(event, row)


class Ovsdb:
    """A live replica of the switch database's ports, with port add/remove transactions.

    Thread-safe. Use as a context manager or call `close()`.
    """

    def __init__(self, remote: str = DEFAULT_REMOTE, schema: str = DEFAULT_SCHEMA,
                 timeout: float = 10.0) -> None:
        """Connect to `remote` and wait (up to `timeout` seconds) for the first copy of the tables."""
        try:
            helper = idl.SchemaHelper(location=schema)
        except Exception as exc:  # the ovs library raises bare OSError/ovs.db.error.Error here
            raise OvsdbError(f"cannot read OVSDB schema {schema}: {exc}") from exc
        for table, columns in _COLUMNS.items():
            helper.register_columns(table, columns)
        self.remote = remote
        self.timeout = timeout
        self._view = _View()
        self._idl = _Replica(remote, helper, self._view.update)
        self._cond = threading.Condition()
        self._closing = False
        self._failure: BaseException | None = None
        self._watchers: list[Callable[[list[PortInfo]], None]] = []
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._loop, name="ovsdb-idl", daemon=True)
        self._thread.start()
        try:
            with self._cond:
                self._wait_until(self._idl.has_ever_connected, time.monotonic() + timeout,
                                 f"connecting to OVSDB at {remote}")
        except OvsdbError:
            self.close()
            raise

    def __enter__(self) -> Ovsdb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the IDL thread and drop the connection. Idempotent."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        self._wake()
        self._thread.join()
        self._idl.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # ---- reads -------------------------------------------------------------------------------

    def bridges(self) -> list[str]:
        """Names of all bridges."""
        with self._cond:
            return sorted(self._live("Bridge").values())

    def has_bridge(self, name: str) -> bool:
        """Is there a bridge called `name`?"""
        with self._cond:
            return self._view.named("Bridge", name, self._idl.tables["Bridge"].rows) is not None

    def ports(self, bridge: str | None = None) -> list[PortInfo]:
        """All ports, or those of one bridge, with their interface's ofport and external_ids."""
        with self._cond:
            bridges = self._live("Bridge")
            found = [self._port_info(port) for br, name in bridges.items() if bridge in (None, name)
                     for port in self._view.children.get(br, ())]
            return sorted((p for p in found if p is not None), key=lambda p: (p.bridge, p.name))

    def port(self, name: str) -> PortInfo | None:
        """The port called `name`, on whichever bridge it is."""
        with self._cond:
            key = self._view.named("Port", name, self._idl.tables["Port"].rows)
            return None if key is None else self._port_info(key)

    def find(self, external_id_key: str, value: str) -> list[PortInfo]:
        """Ports whose interface has external_ids[`external_id_key`] == `value`."""
        with self._cond:
            marked = self._view.by_mark.get((external_id_key, value), ())
            ports = {self._view.parent.get(iface) for iface in marked}
            found = [self._port_info(port) for port in ports if port is not None]
            return sorted((p for p in found if p is not None), key=lambda p: (p.bridge, p.name))

    def watch_interfaces(self, callback: Callable[[list[PortInfo]], None]) -> None:
        """Call `callback` with the ports whose interface's ofport or error changed, after each batch
        of changes, from the IDL thread with no lock held. It must return quickly."""
        with self._cond:
            self._watchers.append(callback)

    def unwatch_interfaces(self, callback: Callable[[list[PortInfo]], None]) -> None:
        """Stop calling `callback` (no error if it was not watching)."""
        with self._cond:
            if callback in self._watchers:
                self._watchers.remove(callback)

    # ---- writes ------------------------------------------------------------------------------

    def add_port(self, bridge: str, port_name: str, external_ids: Mapping[str, str],
                 ofport_request: int | None = None, timeout: float | None = None,
                 wait: bool = True) -> int | None:
        """Add a system port (Port + Interface) to `bridge` and return its assigned ofport.

        Waits for the commit, then, with `wait`, for ovs-vswitchd to assign the ofport: if the switch
        cannot open the device (ofport -1 or an interface error) the port is removed again and
        OvsdbError raised. Without `wait` it returns None once committed; ovs-vswitchd attaches the
        port at its next reconfiguration, which `watch_interfaces` reports.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        marks = {str(k): str(v) for k, v in external_ids.items()}

        def build(txn: idl.Transaction, retry: bool) -> tuple[uuid.UUID, bool]:
            br = self._bridge_row(bridge)
            port, iface = self._row_named("Port", port_name), self._row_named("Interface", port_name)
            if (retry and port is not None and iface is not None and dict(iface.external_ids) == marks
                    and self._view.parent.get(port.uuid) == br.uuid):
                return iface.uuid, False  # the reply to our first attempt was lost, but it committed
            if port is not None or iface is not None:
                raise PortExists(f"port {port_name} already exists in OVSDB")
            iface = txn.insert(self._idl.tables["Interface"])
            iface.name = port_name
            iface.external_ids = marks
            if ofport_request is not None:
                iface.ofport_request = ofport_request
            port = txn.insert(self._idl.tables["Port"])
            port.name = port_name
            port.interfaces = [iface]
            br.addvalue("ports", port)
            txn.add_comment(f"ryu-nsm: add port {port_name} to {bridge}")
            return iface.uuid, True

        try:
            (row_uuid, inserted), txn = self._transact(build, deadline, f"adding {port_name} to {bridge}")
        except OvsdbError as exc:
            # The unique index on names is the last word when two writers race past the check.
            if "constraint violation" in str(exc):
                raise PortExists(f"port {port_name} already exists in OVSDB") from exc
            raise
        if not wait:
            return None
        iface_uuid = txn.get_insert_uuid(row_uuid) if inserted else row_uuid
        with self._cond:
            try:
                self._wait_until(lambda: _ofport_settled(self._idl, iface_uuid), deadline,
                                 f"ovs-vswitchd to assign an ofport to {port_name}")
                row = self._idl.tables["Interface"].rows[iface_uuid]
                ofport, error = _first(row.ofport), _first(row.error)
            except OvsdbError as exc:
                ofport, error = None, str(exc)
        if ofport is None or ofport < 0:
            self.del_port(bridge, port_name)
            raise OvsdbError(f"ovs-vswitchd could not add {port_name} to {bridge}: {error or 'no ofport'}")
        return ofport

    def del_port(self, bridge: str, port_name: str, timeout: float | None = None) -> bool:
        """Remove port `port_name` (and its interfaces) from `bridge`; False if it was not there."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)

        def build(txn: idl.Transaction, retry: bool) -> bool:
            br = self._bridge_row(bridge)
            port = self._row_named("Port", port_name)
            if port is None or self._view.parent.get(port.uuid) != br.uuid:
                # A retry follows an attempt that found the port: if it is gone, that attempt committed.
                return retry
            br.delvalue("ports", port)
            for iface in port.interfaces:
                iface.delete()
            port.delete()
            txn.add_comment(f"ryu-nsm: delete port {port_name} from {bridge}")
            return True

        try:
            removed, _ = self._transact(build, deadline, f"deleting port {port_name} from {bridge}")
        except NoSuchBridge:
            return False
        return removed

    def update_external_ids(self, port_name: str, values: Mapping[str, str],
                            timeout: float | None = None) -> None:
        """Set the given external_ids keys on interface `port_name`, leaving other keys alone."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)

        def build(txn: idl.Transaction, retry: bool) -> None:
            iface = self._row_named("Interface", port_name)
            if iface is None:
                raise OvsdbError(f"no interface {port_name} in OVSDB")
            for key, value in values.items():
                iface.setkey("external_ids", str(key), str(value))

        self._transact(build, deadline, f"updating external_ids of {port_name}")

    # ---- machinery ---------------------------------------------------------------------------

    def _loop(self) -> None:
        """Run the IDL until closed: process what arrived, tell waiters and watchers, sleep until more."""
        while True:
            poll = _Poll()
            with self._cond:
                if self._closing:
                    return
                try:
                    self._idl.run()
                except BaseException as exc:
                    # Fail every waiter now rather than let them run into their deadlines.
                    self._failure = exc
                    raise
                finally:
                    self._cond.notify_all()
                self._idl.wait(poll)
                changed = self._view.attach_changed
                self._view.attach_changed = set()
                watchers = list(self._watchers)
                ports = [] if not (changed and watchers) else [
                    p for p in (self._port_info(self._view.parent.get(i)) for i in changed) if p is not None]
            for watcher in watchers if ports else ():
                try:
                    watcher(ports)
                except Exception:
                    log.exception("an interface watcher failed")
            poll.fd_wait(self._wake_r, select.POLLIN)
            poll.block()
            try:
                while os.read(self._wake_r, 512):
                    pass
            except BlockingIOError:
                pass

    def _wake(self) -> None:
        """Make the IDL thread run now (a transaction was sent, or we are closing)."""
        try:
            os.write(self._wake_w, b"!")
        except BlockingIOError:
            pass  # the pipe is full, so the thread will wake anyway

    def _wait_until(self, ready: Callable[[], bool], deadline: float, what: str) -> None:
        """With the lock held, wait for `ready()` until `deadline`; OvsdbError on timeout."""
        while not ready():
            if self._closing:
                raise OvsdbError(f"closed while {what}")
            if self._failure is not None:
                raise OvsdbError(f"the OVSDB client failed ({self._failure!r}) while {what}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OvsdbError(f"timed out {what}")
            self._cond.wait(remaining)

    def _transact(self, build: Callable[[idl.Transaction, bool], T], deadline: float,
                  what: str) -> tuple[T, idl.Transaction]:
        """Build and commit a transaction, retrying on TRY_AGAIN after the replica changed.

        `build(txn, retry)` is told whether an earlier attempt was sent: TRY_AGAIN after a dropped
        connection does not prove that the server did not commit it.
        """
        retry = False
        while True:
            with self._cond:
                seqno = self._idl.change_seqno
                txn = idl.Transaction(self._idl)
                try:
                    result = build(txn, retry)
                except BaseException:
                    txn.abort()
                    raise
                txn.commit()
                self._wake()
                # After the first call, commit() only reports the status that the IDL thread updates.
                self._wait_until(lambda t=txn: t.commit() != idl.Transaction.INCOMPLETE, deadline, what)
                status = txn.commit()
                if status in (idl.Transaction.SUCCESS, idl.Transaction.UNCHANGED):
                    return result, txn
                if status != idl.Transaction.TRY_AGAIN:
                    raise OvsdbError(f"{what} failed: {txn.get_error()}")
                retry = True
                self._wait_until(lambda s=seqno: self._idl.change_seqno != s, deadline, what)

    def _bridge_row(self, name: str) -> Any:
        row = self._row_named("Bridge", name)
        if row is None:
            raise NoSuchBridge(f"no bridge {name} in OVSDB")
        return row

    def _row_named(self, table: str, name: str) -> Any:
        rows = self._idl.tables[table].rows
        key = self._view.named(table, name, rows)
        return None if key is None else rows[key]

    def _live(self, table: str) -> dict[uuid.UUID, str]:
        """uuid -> name of the rows of `table` that the replica holds now.

        The view can keep rows that vanished while the connection was down (a reconnection that
        reloads the tables notifies the rows it loads, not the ones it dropped), so check each.
        """
        rows = self._idl.tables[table].rows
        return {k: n for k, n in self._view.names[table].items() if k in rows}

    def _port_info(self, port: uuid.UUID) -> PortInfo | None:
        """PortInfo of a port, from its interface of the same name (or its first one)."""
        view, tables = self._view, self._idl.tables
        bridge = view.parent.get(port)
        if port not in tables["Port"].rows or bridge not in tables["Bridge"].rows:
            return None
        name = view.names["Port"][port]
        ifaces = sorted((i for i in view.children.get(port, ()) if i in view.ifaces),
                        key=lambda i: (view.names["Interface"][i] != name, view.names["Interface"][i]))
        if not ifaces:
            return PortInfo(view.names["Bridge"][bridge], name, None)
        ofport, marks, error = view.ifaces[ifaces[0]]
        return PortInfo(view.names["Bridge"][bridge], name, ofport, dict(marks), error)


def _first(values: list[Any]) -> Any:
    """The value of an optional column (the IDL gives it as a list of zero or one)."""
    return values[0] if values else None


def _ofport_settled(replica: idl.Idl, iface_uuid: uuid.UUID) -> bool:
    """True once ovs-vswitchd wrote an ofport or an error for the interface."""
    row = replica.tables["Interface"].rows.get(iface_uuid)
    return row is not None and bool(row.ofport or row.error)

