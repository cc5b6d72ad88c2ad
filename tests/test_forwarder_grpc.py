"""The forwarder's NSM gRPC server, run as `python -m ovs_forwarder.cli`, on real namespaces and OVS.

Each forwarder is a child process on a unix socket; the tests talk to it over gRPC and check the
system with the standard tools (`ip -j`, `nsenter`, `ovs-vsctl`, `ovs-ofctl`), not through the
module under test. Names carry a random tag so parallel runs do not meet; fixtures remove bridges,
namespaces, ports, veths and processes even when a test fails.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from nsm_api import connection_pb2, connection_pb2_grpc, networkservice_pb2_grpc
from nsm_api.connection_pb2 import Connection, ConnectionEvent, Mechanism, MonitorScopeSelector, PathSegment
from nsm_api.connectioncontext_pb2 import ConnectionContext, EthernetContext, IPContext, Route
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from ovs_forwarder.kernel_request import host_ifname
from ovs_forwarder.ovsdb import Ovsdb
from ovs_forwarder.server import Forwarder
from tests.forwarder_support import (
    attached,
    bridge_ports,
    connection_ids,
    netdev_bridge,
    netns_names,
    ovs_by_connection,
    root_links,
    wait_for,
)
from tests.test_nsm_api import decode, entry, msg, num, text
from tests.two_bridges import sh

pytestmark = pytest.mark.ovs

ROOT = Path(__file__).resolve().parent.parent
TAG = "fg" + uuid.uuid4().hex[:6]
BRIDGE = f"{TAG}br"
RPC_TIMEOUT = 10.0
LIFETIME = 600.0
FORWARDER_NUMBERS = itertools.count()


# ---- system helpers --------------------------------------------------------------------------


@dataclass(frozen=True)
class Netns:
    """A network namespace as a client names it (`url`) and as the tests enter it (`enter`)."""

    url: str
    enter: tuple[str, ...]

    def ip(self, *args: str) -> list[dict]:
        out = sh(*self.enter, "ip", "-j", *args)
        return json.loads(out) if out.strip() else []

    def links(self) -> dict[str, dict]:
        return {link["ifname"]: link for link in self.ip("link", "show")}

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*self.enter, *cmd], check=check, capture_output=True, text=True)


def ping(ns: Netns, address: str) -> bool:
    return ns.run("ping", "-c", "1", "-W", "1", address, check=False).returncode == 0


# ---- gRPC helpers ----------------------------------------------------------------------------


def kernel(netns: str, **params: str) -> Mechanism:
    return Mechanism(cls="LOCAL", type="KERNEL", parameters={"inodeURL": netns, **params})


def request(connection_id: str, netns: str, *, addresses: tuple[str, ...] = (), service: str = "echo",
            mtu: int = 0, routes: tuple[Route, ...] = (), labels: dict[str, str] | None = None,
            mac: str = "", path: connection_pb2.Path | None = None, **params: str) -> NetworkServiceRequest:
    context = ConnectionContext(MTU=mtu, ip_context=IPContext(src_ip_addrs=addresses, dst_routes=routes),
                                ethernet_context=EthernetContext(src_mac=mac))
    connection = Connection(id=connection_id, network_service=service, context=context, labels=labels or {},
                            path=path)
    return NetworkServiceRequest(connection=connection, mechanism_preferences=[kernel(netns, **params)])


def refresh(answer: Connection) -> NetworkServiceRequest:
    """What an NSM client re-sends: the connection it got back, with its mechanism."""
    return NetworkServiceRequest(connection=answer, mechanism_preferences=[answer.mechanism])


def expiry(segment: PathSegment) -> float:
    return segment.expires.seconds + segment.expires.nanos / 1e9


@dataclass
class Client:
    """A running forwarder process and a channel to it."""

    name: str
    socket: Path
    log: Path
    args: tuple[str, ...]
    proc: subprocess.Popen | None = None
    channel: grpc.Channel | None = None
    streams: list = field(default_factory=list)

    @property
    def ns(self) -> networkservice_pb2_grpc.NetworkServiceStub:
        return networkservice_pb2_grpc.NetworkServiceStub(self.channel)

    def request(self, req: NetworkServiceRequest) -> Connection:
        return self.ns.Request(req, timeout=RPC_TIMEOUT)

    def close(self, connection: Connection) -> None:
        self.ns.Close(connection, timeout=RPC_TIMEOUT)

    def refused(self, req: NetworkServiceRequest) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as failed:
            self.request(req)
        return failed.value

    def monitor(self, selector: MonitorScopeSelector | None = None) -> queue.Queue:
        """Events of a MonitorConnections stream, read by a thread into a queue."""
        stream = connection_pb2_grpc.MonitorConnectionStub(self.channel).MonitorConnections(
            selector or MonitorScopeSelector())
        self.streams.append(stream)
        events: queue.Queue = queue.Queue()

        def read() -> None:
            try:
                for event in stream:
                    events.put(event)
            except grpc.RpcError as exc:
                events.put(exc)

        threading.Thread(target=read, daemon=True).start()
        return events

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ovs_forwarder.cli", "--bridge", BRIDGE, "--listen",
             f"unix://{self.socket}", "--name", self.name, *self.args],
            cwd=ROOT, stdout=self.log.open("a"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"forwarder did not come up:\n{self.log.read_text()}")
            time.sleep(0.02)
        self.channel = grpc.insecure_channel(f"unix://{self.socket}")
        grpc.channel_ready_future(self.channel).result(timeout=max(deadline - time.monotonic(), 1))

    def stop(self, sig: int = signal.SIGTERM) -> int:
        for stream in self.streams:
            stream.cancel()
        self.streams.clear()
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is None:
            return 0
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code


def next_event(events: queue.Queue, timeout: float = RPC_TIMEOUT) -> ConnectionEvent:
    try:
        event = events.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError("no monitor event in time") from None
    if isinstance(event, Exception):
        raise event
    return event


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bridge() -> Iterator[str]:
    with netdev_bridge(BRIDGE) as name:
        yield name


@contextmanager
def _forwarders(base: Path) -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def new(*args: str) -> Client:
        number = next(FORWARDER_NUMBERS)
        # A unix socket path must stay under 108 bytes, so the file name is short.
        client = Client(f"{TAG}-fwd{number}", base / f"f{number}.sock", base / f"f{number}.log", args)
        made.append(client)
        client.start()
        return client

    try:
        yield new
    finally:
        for client in made:
            client.stop()


@pytest.fixture(scope="module")
def shared(bridge: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """One forwarder for the tests that do not restart it."""
    with _forwarders(tmp_path_factory.mktemp("shared")) as new:
        yield new()


@pytest.fixture
def forwarders(bridge: str, tmp_path: Path) -> Iterator[Callable[..., Client]]:
    """Start forwarder processes of one's own; all are stopped after the test."""
    with _forwarders(tmp_path) as new:
        yield new


@pytest.fixture
def connections() -> Iterator[Callable[[str], str]]:
    """Unique connection ids; their OVS ports and host veths are removed after the test."""
    with connection_ids(TAG) as new:
        yield new


@pytest.fixture
def namespaces() -> Iterator[Callable[[], Netns]]:
    """Named network namespaces (inodeURL file:///var/run/netns/<name>), deleted after the test."""
    with netns_names(TAG) as new:
        yield lambda: Netns(f"file:///var/run/netns/{(name := new())}", ("ip", "netns", "exec", name))


@pytest.fixture
def process_netns() -> Iterator[Callable[[], Netns]]:
    """Anonymous namespaces held by a sleeping process (inodeURL file:///proc/<pid>/ns/net), as pods have."""
    made: list[subprocess.Popen] = []
    ours = os.stat("/proc/self/ns/net").st_ino

    def new() -> Netns:
        sleeper = subprocess.Popen(["unshare", "--net", "sleep", "600"])
        made.append(sleeper)
        path = f"/proc/{sleeper.pid}/ns/net"
        # unshare makes the namespace and then execs sleep; wait until the pid is inside it.
        wait_for(lambda: os.stat(path).st_ino != ours, "the sleeper's own namespace")
        return Netns(f"file://{path}", ("nsenter", f"--net={path}"))

    yield new
    for sleeper in made:
        sleeper.kill()
        sleeper.wait()


# ---- request, refresh, close -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["process", "named"])
def test_request_refresh_close(shared, connections, namespaces, process_netns, kind):
    ns = process_netns() if kind == "process" else namespaces()
    conn = connections(kind)
    nsc = PathSegment(name="nsc-web", id=str(uuid.uuid4()), token="client-token")
    req = request(conn, ns.url, addresses=("10.81.0.1/24",), mtu=1400, labels={"app": "web"},
                  routes=(Route(prefix="10.82.0.0/16", nextHop="10.81.0.254"),), mac="02:81:00:00:00:01",
                  path=connection_pb2.Path(index=0, path_segments=[nsc]))
    before = time.time()

    answer = shared.request(req)

    assert answer.id == conn and answer.state == connection_pb2.UP
    assert answer.path.index == 1
    first, ours = answer.path.path_segments
    assert first == nsc
    assert ours.name == shared.name and ours.token.startswith("unsigned:") and uuid.UUID(ours.id)
    assert before + LIFETIME - 1 < expiry(ours) <= time.time() + LIFETIME
    host = host_ifname(conn)
    assert (answer.mechanism.cls, answer.mechanism.type) == ("LOCAL", "KERNEL")
    assert answer.mechanism.parameters["ryu-nsm.io/attachment"] == f"{BRIDGE}/{host}"
    assert answer.mechanism.parameters["name"] == "nsm-1"

    link = ns.links()["nsm-1"]
    assert link["mtu"] == 1400 and link["address"] == "02:81:00:00:00:01" and "UP" in link["flags"]
    (addr,) = ns.ip("addr", "show", "dev", "nsm-1")
    assert ("10.81.0.1", 24) in {(a["local"], a["prefixlen"]) for a in addr["addr_info"]}
    routes = {(r["dst"], r.get("gateway")) for r in ns.ip("route", "show", "dev", "nsm-1")}
    assert ("10.82.0.0/16", "10.81.0.254") in routes
    iface = attached(conn)
    assert iface["name"] == host and host in bridge_ports(BRIDGE)
    assert {k: v for k, v in iface["external_ids"].items() if k != "ryu-nsm-expires"} == {
        "ryu-nsm-connection": conn, "ryu-nsm-role": "client", "ryu-nsm-service": "echo",
        "ryu-nsm-labels": '{"app":"web"}', "ryu-nsm-netns": ns.url, "ryu-nsm-owner": shared.name,
        "ryu-nsm-ifname": "nsm-1"}
    assert int(iface["external_ids"]["ryu-nsm-expires"]) == int(expiry(ours))

    again = shared.request(refresh(answer))

    assert again.path.index == 1 and len(again.path.path_segments) == 2
    assert again.path.path_segments[1].id == ours.id
    assert expiry(again.path.path_segments[1]) > expiry(ours)
    (after,) = ovs_by_connection(conn)
    assert (after["uuid"], after["ofport"]) == (iface["uuid"], iface["ofport"])
    assert int(after["external_ids"]["ryu-nsm-expires"]) == int(expiry(again.path.path_segments[1]))
    assert ns.links()["nsm-1"]["ifindex"] == link["ifindex"]
    assert set(ns.links()) == {"lo", "nsm-1"}

    shared.close(again)

    assert set(ns.links()) == {"lo"}
    assert ovs_by_connection(conn) == [] and host not in bridge_ports(BRIDGE) and host not in root_links()
    shared.close(Connection(id=f"{TAG}/never-requested"))
    shared.close(again)


def test_netns_inode_names_the_namespace_without_inode_url(shared, connections, namespaces):
    ns = namespaces()
    conn = connections("inode")
    named = os.stat(ns.url.removeprefix("file://"))
    req = request(conn, "", addresses=("10.80.0.1/24",))
    del req.mechanism_preferences[0].parameters["inodeURL"]
    req.mechanism_preferences[0].parameters["netnsInode"] = str(named.st_ino)

    answer = shared.request(req)

    assert "10.80.0.1" in {a["local"] for a in ns.ip("addr", "show", "dev", "nsm-1")[0]["addr_info"]}
    (iface,) = ovs_by_connection(conn)
    assert iface["external_ids"]["ryu-nsm-netns"] == f"inode://{named.st_dev}/{named.st_ino}"
    shared.close(answer)
    assert set(ns.links()) == {"lo"}


def test_same_id_elsewhere_is_refused_until_closed(shared, connections, namespaces):
    ns, other = namespaces(), namespaces()
    conn = connections("moved")
    answer = shared.request(request(conn, ns.url, addresses=("10.83.0.1/24",)))

    for elsewhere in (request(conn, other.url), request(conn, ns.url, name="nsm-2")):
        failed = shared.refused(elsewhere)
        assert failed.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "Close it" in failed.details() and conn in failed.details()
    assert set(other.links()) == {"lo"} and set(ns.links()) == {"lo", "nsm-1"}
    (iface,) = ovs_by_connection(conn)

    shared.close(answer)
    shared.request(request(conn, other.url, addresses=("10.83.0.1/24",)))
    (moved,) = ovs_by_connection(conn)
    assert moved["external_ids"]["ryu-nsm-netns"] == other.url and set(other.links()) == {"lo", "nsm-1"}


def test_a_port_ovs_refuses_is_reported_down_and_a_refresh_plumbs_it_anew(shared, connections, namespaces):
    ns = namespaces()
    service = f"{TAG}-refused"
    conn = connections("refused")
    events = shared.monitor(MonitorScopeSelector(network_services=[service]))
    assert next_event(events).type == connection_pb2.INITIAL_STATE_TRANSFER
    answer = shared.request(request(conn, ns.url, addresses=("10.89.0.1/24",), service=service))
    assert next_event(events).connections[conn].state == connection_pb2.UP
    iface = attached(conn)

    # ovs-vswitchd cannot open a port of an unknown type: it sets ofport -1 and an error.
    sh("ovs-vsctl", "set", "Interface", iface["name"], "type=no-such-type")
    event = next_event(events)
    assert (event.type, event.connections[conn].state) == (connection_pb2.UPDATE, connection_pb2.DOWN)

    again = shared.request(refresh(answer))
    assert again.state == connection_pb2.UP
    assert next_event(events).connections[conn].state == connection_pb2.UP
    renewed = attached(conn)
    assert renewed["uuid"] != iface["uuid"] and set(ns.links()) == {"lo", "nsm-1"}
    shared.close(again)


# ---- concurrency (a Forwarder in this process) -----------------------------------------------


class MeetingOvsdb(Ovsdb):
    """The real OVSDB client, except that add_port first waits until `parties` callers are inside it
    at once; if they never are (plumbing serialised), the wait breaks after RPC_TIMEOUT."""

    def __init__(self, parties: int) -> None:
        super().__init__()
        self.meeting = threading.Barrier(parties, timeout=RPC_TIMEOUT)

    def add_port(self, *args: object, **kwargs: object) -> int | None:
        self.meeting.wait()
        return super().add_port(*args, **kwargs)


def test_requests_for_different_ids_plumb_at_the_same_time(bridge, connections, namespaces):
    ns = namespaces()
    conns = [connections(f"meet{k}") for k in range(4)]
    with MeetingOvsdb(len(conns)) as db:
        forwarder = Forwarder(db, BRIDGE, f"{TAG}-meet")
        results: dict[str, object] = {}

        def ask(k: int) -> None:
            try:
                results[conns[k]] = forwarder.request(
                    request(conns[k], ns.url, addresses=(f"10.87.0.{k + 1}/24",), name=f"m{k}"))
            except Exception as exc:  # collected and asserted on below
                results[conns[k]] = exc

        threads = [threading.Thread(target=ask, args=(k,)) for k in range(len(conns))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert not db.meeting.broken, results
        assert all(isinstance(r, Connection) and r.state == connection_pb2.UP
                   for r in results.values()), results
        assert set(ns.links()) == {"lo", "m0", "m1", "m2", "m3"}
        assert all(len(ovs_by_connection(c)) == 1 for c in conns)


def test_requests_for_one_id_wait_for_each_other_and_not_for_other_ids(bridge, connections, namespaces):
    ns = namespaces()
    conn, other = connections("one"), connections("other")
    with Ovsdb() as db:
        forwarder = Forwarder(db, BRIDGE, f"{TAG}-one")
        order: list[str] = []
        holding, release = threading.Event(), threading.Event()
        answers: dict[str, Connection] = {}

        def first_gate() -> bool:  # called with the id's lock held
            order.append("first")
            holding.set()
            return release.wait(RPC_TIMEOUT)

        def second_gate() -> bool:
            order.append("second")
            return True

        def ask(key: str, gate: Callable[[], bool]) -> None:
            answers[key] = forwarder.request(request(conn, ns.url, addresses=("10.88.0.1/24",)), gate)

        first = threading.Thread(target=ask, args=("first", first_gate))
        first.start()
        try:
            assert holding.wait(RPC_TIMEOUT)
            second = threading.Thread(target=ask, args=("second", second_gate))
            second.start()
            # The second request queues on the id's lock (it counts as a user of it), and stays there.
            wait_for(lambda: forwarder._ids.users(conn) == 2, "the second request to queue")
            # Meanwhile another id is plumbed and answered at once.
            answered = forwarder.request(request(other, ns.url, addresses=("10.88.1.1/24",), name="nsm-2"))
            assert answered.state == connection_pb2.UP and order == ["first"]
        finally:
            release.set()
            first.join()
        second.join()

        assert order == ["first", "second"]
        attachment = "ryu-nsm.io/attachment"
        assert answers["first"].mechanism.parameters[attachment] == answers["second"].mechanism.parameters[
            attachment]
        assert len(ovs_by_connection(conn)) == 1 and set(ns.links()) == {"lo", "nsm-1", "nsm-2"}
        assert forwarder._ids.users(conn) == forwarder._ids.users(other) == 0


# ---- monitor ---------------------------------------------------------------------------------


def test_monitor_sends_initial_state_then_updates_and_deletes(shared, connections, namespaces):
    ns = namespaces()
    service, elsewhere = f"{TAG}-mon", f"{TAG}-other"
    a, b, c = connections("mon-a"), connections("mon-b"), connections("mon-c")
    shared.request(request(a, ns.url, service=service, name="nsm-a"))
    shared.request(request(b, ns.url, service=elsewhere, name="nsm-b"))

    events = shared.monitor(MonitorScopeSelector(network_services=[service]))
    initial = next_event(events)
    assert initial.type == connection_pb2.INITIAL_STATE_TRANSFER
    assert set(initial.connections) == {a}
    assert initial.connections[a].path.path_segments[-1].name == shared.name

    made = shared.request(request(c, ns.url, service=service, name="nsm-c"))
    update = next_event(events)
    assert update.type == connection_pb2.UPDATE and dict(update.connections) == {c: made}
    refreshed = shared.request(refresh(made))
    update = next_event(events)
    assert update.type == connection_pb2.UPDATE and dict(update.connections) == {c: refreshed}
    assert refreshed.path.path_segments[-1].expires != made.path.path_segments[-1].expires

    shared.close(Connection(id=b))  # another service: this monitor must not hear of it
    shared.close(refreshed)
    delete = next_event(events)
    assert delete.type == connection_pb2.DELETE and set(delete.connections) == {c}

    by_segment = shared.monitor(MonitorScopeSelector(path_segments=[PathSegment(name=shared.name)]))
    assert a in next_event(by_segment).connections
    nobody = shared.monitor(MonitorScopeSelector(path_segments=[PathSegment(name=f"{TAG}-nobody")]))
    assert dict(next_event(nobody).connections) == {}
    shared.close(Connection(id=a))


# ---- bad requests ----------------------------------------------------------------------------


def _memif(conn: str, ns: Netns) -> NetworkServiceRequest:
    req = request(conn, ns.url)
    req.mechanism_preferences[0].type = "MEMIF"
    req.mechanism_preferences.add(cls="REMOTE", type="VXLAN")
    return req


def _no_netns_named(conn: str, ns: Netns) -> NetworkServiceRequest:
    req = request(conn, ns.url)
    del req.mechanism_preferences[0].parameters["inodeURL"]
    return req


BAD = {
    "unknown mechanism": (_memif, grpc.StatusCode.INVALID_ARGUMENT,
                          r"unsupported mechanism\(s\) LOCAL/MEMIF, REMOTE/VXLAN: .*offers LOCAL/KERNEL"),
    "missing netns": (lambda conn, ns: request(conn, f"file:///var/run/netns/{TAG}-missing"),
                      grpc.StatusCode.NOT_FOUND, rf"network namespace .*{TAG}-missing does not exist"),
    "no netns given": (_no_netns_named, grpc.StatusCode.INVALID_ARGUMENT, r"inodeURL"),
    "ifname clash": (lambda conn, ns: request(conn, ns.url, name="taken0", addresses=("10.84.0.1/24",)),
                     grpc.StatusCode.ALREADY_EXISTS, r"interface taken0 already exists"),
    "bad cidr": (lambda conn, ns: request(conn, ns.url, addresses=("10.84.0.300/24",)),
                 grpc.StatusCode.INVALID_ARGUMENT, r"address '10\.84\.0\.300/24'"),
    "bad prefix": (lambda conn, ns: request(conn, ns.url, addresses=("10.84.0.1/33",)),
                   grpc.StatusCode.INVALID_ARGUMENT, r"address '10\.84\.0\.1/33'"),
    "bad route": (lambda conn, ns: request(conn, ns.url, routes=(Route(prefix="10.85.0.0/16",
                                                                       nextHop="fd00::1"),)),
                  grpc.StatusCode.INVALID_ARGUMENT, r"route 10\.85\.0\.0/16 .*another address family"),
    "path index past the path": (lambda conn, ns: request(conn, ns.url, path=connection_pb2.Path(index=3)),
                                 grpc.StatusCode.INVALID_ARGUMENT, r"path\.index 3 is past"),
    "empty id": (lambda conn, ns: request("", ns.url), grpc.StatusCode.INVALID_ARGUMENT,
                 r"connection\.id is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_requests_get_a_clear_status_and_leave_nothing(shared, connections, namespaces, case):
    build, code, message = BAD[case]
    ns = namespaces()
    ns.run("ip", "link", "add", "taken0", "type", "veth", "peer", "name", "taken1")  # no dummy module here
    conn = connections(case.replace(" ", "-"))
    links, ports, host_side = ns.links(), bridge_ports(BRIDGE), root_links()

    failed = shared.refused(build(conn, ns))

    assert failed.code() == code, failed.details()
    assert re.search(message, failed.details()), failed.details()
    assert ns.links() == links
    assert bridge_ports(BRIDGE) == ports and ovs_by_connection(conn) == []
    assert root_links() == host_side


# ---- wire compatibility without our stubs ------------------------------------------------------


def test_raw_wire_request_monitor_and_close(shared, connections, namespaces):
    ns = namespaces()
    conn = connections("raw")
    service = f"{TAG}-raw"
    wire = b"".join([
        msg(1, text(1, conn), text(2, service), msg(4, msg(1, text(1, "10.86.0.1/24")), num(5, 1300)),
            entry(5, "app", "raw")),
        msg(2, text(1, "LOCAL"), text(2, "KERNEL"), entry(3, "name", "nsm-raw"),
            entry(3, "inodeURL", ns.url)),
    ])
    before = time.time()

    answer = shared.channel.unary_unary("/networkservice.NetworkService/Request")(wire, timeout=RPC_TIMEOUT)

    fields = fields_of(answer)
    assert fields[1] == [conn.encode()] and fields[2] == [service.encode()]
    assert fields.get(9, [0]) == [0]  # state UP = 0, the default, so absent on the wire
    path = fields_of(fields[6][0])
    assert path.get(1, [0]) == [0]  # index 0: ours is the first segment
    (segment,) = [fields_of(s) for s in path[2]]
    assert segment[1] == [shared.name.encode()] and segment[3][0].startswith(b"unsigned:")
    assert fields_of(segment[4][0])[1][0] > before
    mechanism = fields_of(fields[3][0])
    params = {fields_of(e)[1][0]: fields_of(e)[2][0] for e in mechanism[3]}
    assert (mechanism[1], mechanism[2]) == ([b"LOCAL"], [b"KERNEL"])
    assert params[b"ryu-nsm.io/attachment"] == f"{BRIDGE}/{host_ifname(conn)}".encode()
    (addr,) = ns.ip("addr", "show", "dev", "nsm-raw")
    assert addr["mtu"] == 1300 and "10.86.0.1" in {a["local"] for a in addr["addr_info"]}

    monitor = shared.channel.unary_stream("/connection.MonitorConnection/MonitorConnections")
    stream = monitor(text(2, service), timeout=RPC_TIMEOUT)
    event = fields_of(next(stream))
    stream.cancel()
    assert event.get(1, [0]) == [0]  # INITIAL_STATE_TRANSFER = 0
    ((key, value),) = [(fields_of(e)[1][0], fields_of(fields_of(e)[2][0])) for e in event[2]]
    assert key == conn.encode() and value[1] == [conn.encode()]

    closed = shared.channel.unary_unary("/networkservice.NetworkService/Close")(text(1, conn),
                                                                                timeout=RPC_TIMEOUT)
    assert closed == b""
    assert set(ns.links()) == {"lo"} and ovs_by_connection(conn) == []


def fields_of(data: bytes) -> dict[int, list]:
    found: dict[int, list] = {}
    for number, _, value in decode(data):
        found.setdefault(number, []).append(value)
    return found


# ---- restart, expiry, orphans --------------------------------------------------------------------


def test_restart_during_traffic_keeps_connections_and_ports(forwarders, connections, namespaces):
    fwd = forwarders()
    ns_a, ns_b = namespaces(), namespaces()
    a, b = connections("restart-a"), connections("restart-b")
    answer_a = fwd.request(request(a, ns_a.url, addresses=("10.87.0.1/24",)))
    endpoint = NetworkServiceRequest(
        connection=Connection(id=b, network_service="echo", context=ConnectionContext(
            ip_context=IPContext(dst_ip_addrs=["10.87.0.2/24"]))),
        mechanism_preferences=[kernel(ns_b.url, **{"ryu-nsm.io/role": "endpoint",
                                                    "ryu-nsm.io/endpoint": "echo-ep"})])
    answer_b = fwd.request(endpoint)
    port_a, port_b = attached(a), attached(b)
    assert port_b["external_ids"]["ryu-nsm-role"] == "endpoint"
    assert port_b["external_ids"]["ryu-nsm-endpoint"] == "echo-ep"
    inside = {ns.url: ns.links()["nsm-1"]["ifindex"] for ns in (ns_a, ns_b)}
    for src, dst in ((port_a, port_b), (port_b, port_a)):
        sh("ovs-ofctl", "add-flow", BRIDGE, f"in_port={src['ofport']},actions=output:{dst['ofport']}")
    try:
        wait_for(lambda: ping(ns_a, "10.87.0.2"), "a first ping from a to b")
        ports = bridge_ports(BRIDGE)
        pinger = subprocess.Popen([*ns_a.enter, "ping", "-i", "0.05", "-c", "60", "-W", "1", "10.87.0.2"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert fwd.stop() == 0
            fwd.start()
            events = fwd.monitor()
            initial = next_event(events)
            out, _ = pinger.communicate(timeout=30)
        finally:
            if pinger.poll() is None:
                pinger.kill()
                pinger.wait()
        sent, received = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", out).groups())
        assert sent == 60 and received == sent, out

        assert initial.type == connection_pb2.INITIAL_STATE_TRANSFER
        assert {a, b} <= set(initial.connections)
        rebuilt = initial.connections[b]
        assert rebuilt.mechanism.parameters["ryu-nsm.io/role"] == "endpoint"
        assert rebuilt.mechanism.parameters["ryu-nsm.io/endpoint"] == "echo-ep"
        assert rebuilt.mechanism.parameters["ryu-nsm.io/attachment"] == f"{BRIDGE}/{host_ifname(b)}"
        assert rebuilt.path.path_segments[-1].name == fwd.name
        assert int(expiry(rebuilt.path.path_segments[-1])) == int(expiry(answer_b.path.path_segments[-1]))
        assert bridge_ports(BRIDGE) == ports
        assert ovs_by_connection(a) == [port_a] and ovs_by_connection(b) == [port_b]

        again = fwd.request(refresh(answer_a))

        assert again.path.path_segments[-1].id == answer_a.path.path_segments[-1].id
        assert ovs_by_connection(a) == [{**port_a, "external_ids": {
            **port_a["external_ids"], "ryu-nsm-expires": str(int(expiry(again.path.path_segments[-1])))}}]
        assert {ns.url: ns.links()["nsm-1"]["ifindex"] for ns in (ns_a, ns_b)} == inside
        assert bridge_ports(BRIDGE) == ports
        assert ping(ns_a, "10.87.0.2")
    finally:
        sh("ovs-ofctl", "del-flows", BRIDGE, check=False)


def test_unrefreshed_connection_is_closed_after_expiry_and_grace(forwarders, connections, namespaces):
    # A grace longer than the lifetime tells "closed after expiry + grace" from "closed at expiry".
    fwd = forwarders("--token-lifetime", "1", "--grace", "2")
    ns = namespaces()
    conn = connections("expires")
    events = fwd.monitor()
    assert next_event(events).type == connection_pb2.INITIAL_STATE_TRANSFER

    answer = fwd.request(request(conn, ns.url, addresses=("10.88.0.1/24",)))
    assert next_event(events).type == connection_pb2.UPDATE
    due = expiry(answer.path.path_segments[-1]) + 2

    delete = next_event(events)
    closed_at = time.time()

    assert delete.type == connection_pb2.DELETE and set(delete.connections) == {conn}
    assert closed_at >= due
    assert set(ns.links()) == {"lo"} and ovs_by_connection(conn) == []


def test_restart_removes_orphans_after_grace_and_keeps_the_rest(forwarders, connections, namespaces):
    fwd = forwarders("--grace", "1")
    gone, kept = namespaces(), namespaces()
    orphan, alive = connections("orphan"), connections("alive")
    fwd.request(request(orphan, gone.url, addresses=("10.89.0.1/24",)))
    fwd.request(request(alive, kept.url, addresses=("10.89.0.2/24",)))
    (orphan_port,) = ovs_by_connection(orphan)
    assert fwd.stop() == 0
    sh("ip", "netns", "del", gone.url.rsplit("/", 1)[1])
    wait_for(lambda: host_ifname(orphan) not in root_links(), "the orphan's veth to go with its netns")

    fwd.start()
    initial = next_event(fwd.monitor())

    assert set(initial.connections) == {alive}
    wait_for(lambda: ovs_by_connection(orphan) == [], "the orphan's OVS port to be removed", timeout=10)
    assert orphan_port["name"] not in bridge_ports(BRIDGE)
    attached(alive)
    assert set(kept.links()) == {"lo", "nsm-1"}
    assert alive in next_event(fwd.monitor()).connections
