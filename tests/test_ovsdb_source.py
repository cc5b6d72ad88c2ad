"""The OVSDB source: ports marked the way the forwarder marks them → ClientRequests and Endpoints.

Most tests run the source against the real Open vSwitch database with their own netdev bridges;
the last one runs the whole controller with ``--ovsdb`` on two bridges and two namespaces and
checks that frames pass, with nothing but a NetworkService declared in a file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from ryu_nsm.cli import build_parser
from ryu_nsm.core.flowspec import PIPELINE_COOKIE, wire_cookie
from ryu_nsm.core.model import Attachment, ClientRequest, Endpoint, FrozenMap, Problem, Resources
from ryu_nsm.lab.controller_process import ControllerProcess, wait_for
from ryu_nsm.sources.ovsdb import (
    DEFAULT_REMOTE,
    MarkedInterface,
    OvsdbSource,
    derive,
    dns_label,
)

from .echo_requests import echo_service
from .two_bridges import add_host, link_bridges, remove, sh, write_topology

TAG = f"o{os.getpid() % 10000:04d}"  # unique names: bridges, ports and namespaces of this run
BR, OTHER = f"{TAG}x", f"{TAG}y"


def marks(role: str, service: str = "echo", **extra: str) -> dict[str, str]:
    return {"ryu-nsm-role": role, "ryu-nsm-service": service, **extra}


def add_port(bridge: str, port: str, external_ids: dict[str, str]) -> None:
    """An internal port marked with ``external_ids``, in one transaction (as the forwarder does it)."""
    sets = [f"external_ids:{key}={json.dumps(value)}" for key, value in external_ids.items()]
    sh("ovs-vsctl", "add-port", bridge, port, "--", "set", "Interface", port, "type=internal", *sets)


def set_marks(port: str, **external_ids: str) -> None:
    sh("ovs-vsctl", "set", "Interface", port,
       *[f"external_ids:{key}={json.dumps(value)}" for key, value in external_ids.items()])


def remove_bridges(*bridges: str) -> None:
    for br in bridges:
        sh("ovs-vsctl", "--if-exists", "del-br", br, check=False)


@pytest.fixture
def bridges():
    remove_bridges(BR, OTHER)
    for br in (BR, OTHER):
        sh("ovs-vsctl", "add-br", br, "--", "set", "bridge", br, "datapath_type=netdev")
    try:
        yield BR, OTHER
    finally:
        remove_bridges(BR, OTHER)


class Deliveries:
    """Records what the source hands over; waits with a deadline for a state that satisfies a test."""

    def __init__(self) -> None:
        self.items: list[Resources] = []
        self.cond = threading.Condition()

    def __call__(self, resources: Resources) -> None:
        with self.cond:
            self.items.append(resources)
            self.cond.notify_all()

    def wait(self, want: Callable[[Resources], bool], timeout: float = 10.0) -> Resources:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not (self.items and want(self.items[-1])):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no wanted delivery in {timeout}s; last: "
                                         f"{self.items[-1] if self.items else None}")
                self.cond.wait(remaining)
            return self.items[-1]


@pytest.fixture
def source(bridges):
    deliveries = Deliveries()
    src = OvsdbSource(deliveries, bridges={BR})
    src.start()
    try:
        assert src.wait_synced(10), "the source did not deliver the database's first state"
        yield src, deliveries
    finally:
        src.stop()
        assert not src._thread.is_alive()


def ports_of(resources: Resources) -> set[str]:
    return ({r.attachment.port for r in resources.requests}
            | {a.port for e in resources.endpoints for a in e.attachments})


# -- against the real database ---------------------------------------------------------------------


@pytest.mark.ovs
def test_client_port_becomes_a_request_with_its_attachment_and_labels(source):
    src, got = source
    assert got.items[-1].requests == () and src.synced()
    conn = str(uuid.uuid4())
    labels = {"app": "web", "color": "blue"}
    add_port(OTHER, f"{TAG}n", marks("client", **{"ryu-nsm-connection": str(uuid.uuid4())}))
    add_port(BR, f"{TAG}c", marks("client", **{"ryu-nsm-connection": conn, "ryu-nsm-ifname": "eth1",
                                              "ryu-nsm-labels": json.dumps(labels),
                                              "ryu-nsm-netns": "file:///proc/1/ns/net"}))
    state = got.wait(lambda r: r.requests)
    # The port on a bridge outside the source's fabric does not count.
    assert state.requests == (ClientRequest(pod=conn, ifname="eth1", service="echo", namespace="nsm",
                                            labels=FrozenMap(labels), attachment=Attachment(BR, f"{TAG}c")),)
    assert state.endpoints == () and state.problems == ()
    assert src.connection_id_of(f"nsm/{conn}/eth1") == conn

    # Without a recorded interface name, the client's is NSM's default.
    other = "Client #2"
    add_port(BR, f"{TAG}d", marks("client", **{"ryu-nsm-connection": other}))
    state = got.wait(lambda r: len(r.requests) == 2)
    second = next(r for r in state.requests if r.attachment.port == f"{TAG}d")
    assert (second.pod, second.ifname, second.labels) == (dns_label(other), "nsm-1", FrozenMap())
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", second.pod) and second.pod != dns_label("client-2")
    assert src.connection_id_of(second.id) == other


@pytest.mark.ovs
def test_endpoint_ports_merge_into_one_endpoint_and_leave_with_their_ports(source):
    _, got = source
    fw = {"ryu-nsm-endpoint": "firewall", "ryu-nsm-labels": '{"app": "fw"}'}
    add_port(BR, f"{TAG}e1", marks("endpoint", **fw, **{"ryu-nsm-connection": "c1"}))
    add_port(BR, f"{TAG}e2", marks("endpoint", **fw, **{"ryu-nsm-connection": "c2"}))
    add_port(BR, f"{TAG}e3", marks("endpoint", service="dpi", **{"ryu-nsm-netns": "dpi-box"}))
    state = got.wait(lambda r: ports_of(r) == {f"{TAG}e1", f"{TAG}e2", f"{TAG}e3"})
    assert state.endpoints == (
        Endpoint("dpi-box", "nsm", ("dpi",), FrozenMap(dpi=FrozenMap()), (Attachment(BR, f"{TAG}e3"),)),
        Endpoint("firewall", "nsm", ("echo",), FrozenMap(echo=FrozenMap(app="fw")),
                 (Attachment(BR, f"{TAG}e1"), Attachment(BR, f"{TAG}e2"))),
    )
    assert state.requests == () and state.problems == ()

    sh("ovs-vsctl", "del-port", BR, f"{TAG}e1")
    state = got.wait(lambda r: ports_of(r) == {f"{TAG}e2", f"{TAG}e3"})
    assert [e.attachments for e in state.endpoints if e.name == "firewall"] == [(Attachment(BR, f"{TAG}e2"),)]
    sh("ovs-vsctl", "del-port", BR, f"{TAG}e2")
    state = got.wait(lambda r: ports_of(r) == {f"{TAG}e3"})
    assert [e.name for e in state.endpoints] == ["dpi-box"]


@pytest.mark.ovs
def test_removing_the_port_or_its_role_removes_the_request(source):
    src, got = source
    for port in (f"{TAG}r1", f"{TAG}r2"):
        add_port(BR, port, marks("client", **{"ryu-nsm-connection": port}))
    got.wait(lambda r: len(r.requests) == 2)
    sh("ovs-vsctl", "del-port", BR, f"{TAG}r1")
    state = got.wait(lambda r: len(r.requests) == 1)
    assert state.requests[0].attachment == Attachment(BR, f"{TAG}r2")
    assert src.connection_id_of(f"nsm/{TAG}r1/nsm-1") is None
    sh("ovs-vsctl", "remove", "Interface", f"{TAG}r2", "external_ids", "ryu-nsm-role")
    got.wait(lambda r: r.requests == ())


@pytest.mark.ovs
def test_malformed_marks_are_problems_and_the_other_ports_still_apply(source):
    _, got = source
    add_port(BR, f"{TAG}ok", marks("client", **{"ryu-nsm-connection": "good", "ryu-nsm-labels": '{"a":"b"}'}))
    add_port(BR, f"{TAG}bad", marks("client", **{"ryu-nsm-connection": "bad", "ryu-nsm-labels": "{a: b"}))
    add_port(BR, f"{TAG}nosvc", {"ryu-nsm-role": "endpoint", "ryu-nsm-endpoint": "nsvc"})
    state = got.wait(lambda r: len(r.problems) == 2)
    assert [r.attachment.port for r in state.requests] == [f"{TAG}ok"]
    assert state.endpoints == ()
    bad, nosvc = state.problems
    assert (bad.source, bad.index, bad.path) == (
        f"ovsdb:Interface/{TAG}bad", -1, "external_ids.ryu-nsm-labels")
    assert "invalid JSON" in bad.message
    assert (nosvc.source, nosvc.path) == (f"ovsdb:Interface/{TAG}nosvc", "external_ids.ryu-nsm-service")

    # Fixing the labels applies the port and drops its problem.
    set_marks(f"{TAG}bad", **{"ryu-nsm-labels": '{"a": "c"}'})
    state = got.wait(lambda r: len(r.requests) == 2)
    assert [p.source for p in state.problems] == [f"ovsdb:Interface/{TAG}nosvc"]
    assert next(r for r in state.requests if r.pod == "bad").labels == FrozenMap(a="c")


@pytest.mark.ovs
def test_changes_that_do_not_alter_the_declared_state_deliver_nothing(source):
    _, got = source
    add_port(BR, f"{TAG}u", marks("client", **{"ryu-nsm-connection": "u", "ryu-nsm-expires": "1900000000"}))
    got.wait(lambda r: len(r.requests) == 1)
    before = len(got.items)
    set_marks(f"{TAG}u", foo="bar", **{"ryu-nsm-expires": "1900000600", "ryu-nsm-owner": "fwd-2"})
    sh("ovs-vsctl", "set", "Interface", f"{TAG}u", "mtu_request=1400")
    sh("ovs-vsctl", "add-port", BR, f"{TAG}plain", "--", "set", "Interface", f"{TAG}plain", "type=internal")
    sh("ovs-vsctl", "set", "Bridge", BR, "other_config:foo=bar")
    add_port(OTHER, f"{TAG}v", marks("client", **{"ryu-nsm-connection": "v"}))
    # OVSDB reports changes in order: once this marker is seen, everything above has been processed.
    add_port(BR, f"{TAG}mk", marks("client", **{"ryu-nsm-connection": "marker"}))
    got.wait(lambda r: len(r.requests) == 2)
    assert len(got.items) == before + 1, got.items[before:]


def _uuids(value: list) -> list[str]:
    """The uuids of an OVSDB JSON reference column (one ["uuid", u] or ["set", [...]])."""
    return [value[1]] if value[0] == "uuid" else [u for _, u in value[1]]


def database_interfaces(bridges: set[str]) -> list[MarkedInterface]:
    """The marked interfaces on ``bridges``, read with ovs-vsctl (not through the source)."""
    def rows(table: str, columns: str) -> list[list]:
        out = sh("ovs-vsctl", "--format=json", f"--columns=_uuid,{columns}", "list", table)
        return json.loads(out)["data"]

    ports = {u[1]: (name, _uuids(ifaces)) for u, name, ifaces in rows("Port", "name,interfaces")}
    ifaces = {u[1]: (name, dict(marks[1])) for u, name, marks in rows("Interface", "name,external_ids")}
    return [MarkedInterface(bridge, ports[p][0], ifaces[i][0], ifaces[i][1])
            for _, bridge, port_refs in rows("Bridge", "name,ports") if bridge in bridges
            for p in _uuids(port_refs) for i in ports[p][1] if "ryu-nsm-role" in ifaces[i][1]]


@pytest.mark.ovs
def test_the_delivered_state_follows_every_change_as_a_fresh_derivation_would(bridges):
    # The source re-reads only the interfaces that changed; after each change what it delivers must
    # equal deriving everything afresh from what ovs-vsctl reads.
    got = Deliveries()
    src = OvsdbSource(got, bridges={BR, OTHER})
    src.start()

    def settled() -> Resources:
        want = derive(database_interfaces({BR, OTHER}), "nsm")
        state = got.wait(lambda r: r == want.resources and r.problems == want.resources.problems)
        assert {r.id: src.connection_id_of(r.id) for r in state.requests} == want.connection_ids
        return state

    try:
        assert src.wait_synced(10)
        fw = {"ryu-nsm-endpoint": "fw", "ryu-nsm-labels": '{"app": "fw"}'}
        for k in range(3):
            add_port(BR, f"{TAG}c{k}", marks("client", **{"ryu-nsm-connection": f"{TAG}-c{k}"}))
        add_port(BR, f"{TAG}e0", marks("endpoint", **fw))
        add_port(OTHER, f"{TAG}e1", marks("endpoint", **fw))
        state = settled()
        assert len(state.requests) == 3 and [len(e.attachments) for e in state.endpoints] == [2]

        set_marks(f"{TAG}e1", **{"ryu-nsm-labels": '{"app": "other"}'})  # now clashes with e0
        assert [p.path for p in settled().problems] == ["external_ids.ryu-nsm-labels"]
        set_marks(f"{TAG}c2", **{"ryu-nsm-connection": f"{TAG}-c1"})  # now clashes with c1
        assert len(settled().problems) == 2
        # The port (and its interface, same rows) moves to the other bridge in one transaction.
        port = sh("ovs-vsctl", "get", "Port", f"{TAG}c0", "_uuid").strip()
        sh("ovs-vsctl", "remove", "Bridge", BR, "ports", port, "--", "add", "Bridge", OTHER, "ports", port)
        state = settled()
        assert Attachment(OTHER, f"{TAG}c0") in {r.attachment for r in state.requests}
        sh("ovs-vsctl", "del-port", BR, f"{TAG}c1")  # c2 no longer clashes
        set_marks(f"{TAG}e1", **{"ryu-nsm-labels": '{"app": "fw"}'})
        state = settled()
        assert state.problems == () and len(state.requests) == 2
    finally:
        src.stop()


@pytest.mark.ovs
def test_a_failing_consumer_gets_the_state_again(bridges):
    calls: list[Resources] = []

    def flaky(resources: Resources) -> None:
        calls.append(resources)
        if len(calls) == 1:
            raise RuntimeError("consumer not ready")

    add_port(BR, f"{TAG}f", marks("client", **{"ryu-nsm-connection": "f"}))
    src = OvsdbSource(flaky, bridges={BR})
    src.start()
    try:
        assert src.wait_synced(10)
        assert len(calls) == 2 and calls[0] == calls[1]
        assert [r.pod for r in calls[1].requests] == ["f"]
    finally:
        src.stop()


def test_an_unreachable_database_delivers_nothing_and_stops_at_once(tmp_path):
    calls: list[Resources] = []
    src = OvsdbSource(calls.append, f"unix:{tmp_path}/no-such.sock")
    src.start()
    assert not src.wait_synced(0.5)
    started = time.monotonic()
    src.stop()
    assert time.monotonic() - started < 2 and not src._thread.is_alive()
    assert calls == [] and not src.synced()


# -- the pure derivation ---------------------------------------------------------------------------


def iface(port: str, external_ids: dict[str, str], bridge: str = "s1") -> MarkedInterface:
    return MarkedInterface(bridge, port, port, external_ids)


def test_derive_reports_each_bad_mark_at_its_key():
    found = derive([
        iface("p1", marks("server")),
        iface("p2", marks("client", service="Not_A_Name", **{"ryu-nsm-connection": "x"})),
        iface("p3", marks("client")),
        iface("p4", marks("client", **{"ryu-nsm-connection": "y", "ryu-nsm-ifname": "a/b"})),
        iface("p5", marks("client", **{"ryu-nsm-connection": "z", "ryu-nsm-labels": '["a"]'})),
        iface("p6", marks("client", **{"ryu-nsm-connection": "w", "ryu-nsm-labels": '{"n": 1}'})),
        iface("p7", marks("endpoint", **{"ryu-nsm-endpoint": "Bad Name"})),
        iface("p8", marks("endpoint"), bridge="s2/0"),
    ], "team")
    assert found.resources == Resources()
    assert [(p.source, p.path) for p in found.resources.problems] == [
        ("ovsdb:Interface/p1", "external_ids.ryu-nsm-role"),
        ("ovsdb:Interface/p2", "external_ids.ryu-nsm-service"),
        ("ovsdb:Interface/p3", "external_ids.ryu-nsm-connection"),
        ("ovsdb:Interface/p4", "external_ids.ryu-nsm-ifname"),
        ("ovsdb:Interface/p5", "external_ids.ryu-nsm-labels"),
        ("ovsdb:Interface/p6", "external_ids.ryu-nsm-labels"),
        ("ovsdb:Interface/p7", "external_ids.ryu-nsm-endpoint"),
        ("ovsdb:Interface/p8", "name"),
    ]
    assert all(p.index == -1 for p in found.resources.problems)


def test_derive_first_of_two_clashing_interfaces_wins():
    found = derive([
        iface("b", marks("client", **{"ryu-nsm-connection": "same"})),
        iface("a", marks("client", **{"ryu-nsm-connection": "same"})),
        iface("e1", marks("endpoint", **{"ryu-nsm-endpoint": "fw", "ryu-nsm-labels": '{"x": "1"}'})),
        iface("e2", marks("endpoint", **{"ryu-nsm-endpoint": "fw", "ryu-nsm-labels": '{"x": "2"}'})),
        iface("e3", marks("endpoint", service="other", **{"ryu-nsm-endpoint": "fw"})),
    ])
    assert [r.attachment.port for r in found.resources.requests] == ["a"]
    assert found.connection_ids == {"nsm/same/nsm-1": "same"}
    (fw,) = found.resources.endpoints
    assert fw.services == ("echo", "other")
    assert fw.service_labels == FrozenMap(echo=FrozenMap(x="1"), other=FrozenMap())
    assert fw.attachments == (Attachment("s1", "e1"), Attachment("s1", "e3"))
    assert found.resources.problems == (
        Problem("ovsdb:Interface/b", -1, "external_ids.ryu-nsm-connection",
                "client nsm/same/nsm-1 is already marked on interface a"),
        Problem("ovsdb:Interface/e2", -1, "external_ids.ryu-nsm-labels",
                "labels {'x': '2'} differ from {'x': '1'} on interface e1 of the same endpoint fw "
                "for service echo"),
    )


def test_dns_label_keeps_labels_and_keeps_other_names_apart():
    assert dns_label("5f0c6a4e-1b7e-4a3c-9d2f-0e8b7a6c5d4e") == "5f0c6a4e-1b7e-4a3c-9d2f-0e8b7a6c5d4e"
    names = {dns_label(text) for text in ("A", "a-", "a_", "a.b", "/", "x" * 100, "x" * 101)}
    assert len(names) == 7
    assert all(re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", n) for n in names)


def test_controller_flag_without_a_value_watches_the_local_database():
    parse = build_parser().parse_args
    assert parse(["controller", "--topology", "t.yaml"]).ovsdb is None
    args = parse(["controller", "--topology", "t.yaml", "--ovsdb", "--requests", "d"])
    assert (args.ovsdb, args.requests) == (DEFAULT_REMOTE, ["d"])
    assert parse(["controller", "--topology", "t.yaml", "--ovsdb", "tcp:10.0.0.2:6640"]).ovsdb == (
        "tcp:10.0.0.2:6640")


# -- the controller, end to end --------------------------------------------------------------------

A, B = f"{TAG}a", f"{TAG}b"
NS_C, NS_S = f"{TAG}-c", f"{TAG}-s"
CLIENT_PORT, SERVER_PORT = f"{A}-c", f"{B}-s"


def teardown_fabric() -> None:
    remove(A, B, (NS_C, NS_S))


@pytest.fixture
def fabric(tmp_path):
    """Two netdev bridges joined by a veth pair; a client namespace on one, a server namespace on the
    other; a topology that names no hosts, and a requests directory with only the NetworkService."""
    teardown_fabric()
    try:
        link_bridges(A, B, 0xA1, 0xB1)
        add_host(NS_C, CLIENT_PORT, "10.9.1.1/24")  # the test attaches the ports, with their marks
        add_host(NS_S, SERVER_PORT, "10.9.1.2/24")
        topo = write_topology(tmp_path / "topo.yaml", "two-bridges", A, B, 0xA1, 0xB1)
        requests = tmp_path / "requests"
        requests.mkdir()
        (requests / "service.yaml").write_text(echo_service("nsm"))
        yield topo, requests
    finally:
        teardown_fabric()


def flow_cookies(bridge: str) -> set[int]:
    dump = sh("ovs-ofctl", "-O", "OpenFlow13", "dump-flows", bridge)
    return {int(c, 16) for c in re.findall(r"cookie=(0x[0-9a-f]+)", dump)}


def ping(count: int = 2) -> bool:
    proc = subprocess.run(["ip", "netns", "exec", NS_C, "ping", "-c", str(count), "-i", "0.2", "-W", "1",
                           "10.9.1.2"], capture_output=True, text=True)
    return proc.returncode == 0


@pytest.mark.ovs
def test_controller_binds_marked_ports_and_unbinds_them(fabric, tmp_path: Path):
    topo, requests = fabric
    conn = str(uuid.uuid4())
    cid = f"nsm/{conn}/eth0"
    with ControllerProcess(topo, [requests], tmp_path / "controller.log", extra_args=["--ovsdb"]) as ctl:
        for br in (A, B):
            sh("ovs-vsctl", "set-controller", br, f"tcp:127.0.0.1:{ctl.of_port}")
        # Plugged in, as the forwarder would, with the marks added after the ports exist.
        sh("ovs-vsctl", "add-port", A, CLIENT_PORT, "--", "add-port", B, SERVER_PORT)
        assert not ping(1), "frames must not pass before the controller has bound the ports"
        set_marks(CLIENT_PORT, **marks("client", **{"ryu-nsm-connection": conn, "ryu-nsm-ifname": "eth0",
                                                    "ryu-nsm-labels": '{"app": "demo"}'}))
        set_marks(SERVER_PORT, **marks("endpoint", **{"ryu-nsm-endpoint": "server",
                                                      "ryu-nsm-connection": str(uuid.uuid4())}))
        shown = ctl.wait_connections(lambda cs: cs.get(cid, {}).get("state") == "up", 30)[cid]
        assert (shown["client"], shown["endpoint"], shown["namespace"]) == (conn, "server", "nsm")
        assert (shown["client_attachment"], shown["endpoint_attachment"], shown["path"]) == (
            f"{A}/{CLIENT_PORT}", f"{B}/{SERVER_PORT}", [A, B])
        assert wait_for(ping, 10, 0.5), "client cannot reach the server through the wire"
        cookie = wire_cookie(cid)
        assert all(cookie in flow_cookies(br) for br in (A, B))

        # The client's marks go away: so do its connection, its flows and its traffic.
        sh("ovs-vsctl", "remove", "Interface", CLIENT_PORT, "external_ids", "ryu-nsm-role")
        ctl.wait_connections(lambda cs: cid not in cs, 15)
        assert wait_for(lambda: all(cookie not in flow_cookies(br) for br in (A, B)), 10)
        assert PIPELINE_COOKIE in flow_cookies(A)
        assert not ping(1)
        assert ctl.errors() == []
