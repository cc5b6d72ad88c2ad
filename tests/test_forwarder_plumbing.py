"""The forwarder's KERNEL plumbing on real network namespaces and a real netdev OVS bridge.

Every check reads the system with the standard tools (`ip -j`, `ovs-vsctl`, `ethtool`), not through
the module under test. Names carry a random tag so parallel runs do not meet.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest

from ovs_forwarder.discovery import discover
from ovs_forwarder.kernel_request import KernelRequest, PlumbingError, host_ifname, validate
from ovs_forwarder.ovsdb import Ovsdb, OvsdbError
from ovs_forwarder.plumbing import is_plumbed, plumb, unplumb

from .forwarder_support import (
    attached,
    bridge_ports,
    connection_ids,
    netdev_bridge,
    netns_names,
    ovs_by_connection,
    wait_for,
)
from .forwarder_support import ping_in as ping
from .two_bridges import sh

pytestmark = pytest.mark.ovs

TAG = "fp" + uuid.uuid4().hex[:6]
BRIDGE = f"{TAG}br"
OWNER = f"{TAG}-forwarder"


# ---- helpers ---------------------------------------------------------------------------------


def ip_json(netns: str | None, *args: str) -> list[dict]:
    prefix = ("ip", "-n", netns) if netns else ("ip",)
    out = sh(*prefix, "-j", *args)
    return json.loads(out) if out.strip() else []


def link_names(netns: str | None) -> set[str]:
    return {link["ifname"] for link in ip_json(netns, "link", "show")}


def root_link(name: str) -> dict | None:
    found = [link for link in ip_json(None, "link", "show") if link["ifname"] == name]
    return found[0] if found else None


def ovs_interfaces(**where: str) -> list[dict]:
    """Interfaces matching column=value conditions, as {name, ofport, external_ids, uuid}."""
    conditions = [f"{k}={v}" for k, v in where.items()]
    out = json.loads(sh("ovs-vsctl", "--format=json", "--columns=_uuid,name,ofport,external_ids",
                        "find", "Interface", *conditions))
    rows = []
    for row_uuid, name, ofport, marks in out["data"]:
        rows.append({"uuid": row_uuid[1], "name": name, "ofport": ofport, "external_ids": dict(marks[1])})
    return rows


def tx_checksum(netns: str | None, ifname: str) -> str:
    prefix = ("ip", "netns", "exec", netns) if netns else ()
    out = sh(*prefix, "ethtool", "-k", ifname)
    return next(line.split(":")[1].strip() for line in out.splitlines()
                if line.strip().startswith("tx-checksum-ip-generic:"))


def request(connection: str, netns: str, **fields: object) -> KernelRequest:
    return KernelRequest(connection_id=connection, netns=netns, bridge=BRIDGE, owner=OWNER, **fields)


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bridge() -> Iterator[str]:
    with netdev_bridge(BRIDGE) as name:
        yield name


@pytest.fixture
def ovsdb(bridge: str) -> Iterator[Ovsdb]:
    with Ovsdb() as db:
        yield db


@pytest.fixture
def connections() -> Iterator[Callable[[str], str]]:
    """Unique connection ids; their host veths and OVS ports are removed after the test."""
    with connection_ids(TAG) as new:
        yield new


@pytest.fixture
def namespaces() -> Iterator[Callable[[], str]]:
    """Fresh named network namespaces, deleted after the test."""
    with netns_names(TAG) as new:
        yield new


# ---- plumbing --------------------------------------------------------------------------------


def test_plumb_into_named_netns_configures_interface_and_ovs_port(ovsdb, namespaces, connections):
    ns = namespaces()
    conn = connections("full")
    req = request(conn, ns, mtu=1400, mac="02:aa:00:00:00:01", addresses=["10.61.0.1/24", "fd61::1/64"],
                  routes=[("10.62.0.0/16", "10.61.0.254"), ("10.63.0.0/16", None), ("fd62::/64", "fd61::fe")],
                  neighbours=[("10.61.0.2", "02:aa:00:00:00:02")], role="client", service="echo",
                  labels={"app": "web"}, expires=1900000000)

    done = plumb(req, ovsdb)

    assert done.created and done.ifname == "nsm-1" and done.host_ifname == host_ifname(conn)
    assert done.mac == "02:aa:00:00:00:01"
    assert len(done.host_ifname) <= 15
    (link,) = ip_json(ns, "addr", "show", "dev", "nsm-1")
    assert link["mtu"] == 1400
    assert link["address"] == "02:aa:00:00:00:01"
    assert "UP" in link["flags"]
    addrs = {(a["local"], a["prefixlen"]) for a in link["addr_info"]}
    assert {("10.61.0.1", 24), ("fd61::1", 64)} <= addrs
    routes = {(r["dst"], r.get("gateway")) for r in ip_json(ns, "route", "show", "dev", "nsm-1")}
    assert {("10.62.0.0/16", "10.61.0.254"), ("10.63.0.0/16", None)} <= routes
    routes6 = {(r["dst"], r.get("gateway")) for r in ip_json(ns, "-6", "route", "show", "dev", "nsm-1")}
    assert ("fd62::/64", "fd61::fe") in routes6
    (neigh,) = ip_json(ns, "neigh", "show", "dev", "nsm-1", "10.61.0.2")
    assert neigh["lladdr"] == "02:aa:00:00:00:02" and "PERMANENT" in neigh["state"]

    host = root_link(done.host_ifname)
    assert host is not None and "UP" in host["flags"] and host["mtu"] == 1400
    assert tx_checksum(None, done.host_ifname).startswith("off")
    assert tx_checksum(ns, "nsm-1").startswith("off")

    assert done.ofport is None  # committed, not yet attached: plumb does not wait for ovs-vswitchd
    iface = attached(conn)
    assert iface["name"] == done.host_ifname
    assert iface["external_ids"] == {
        "ryu-nsm-connection": conn, "ryu-nsm-role": "client", "ryu-nsm-service": "echo",
        "ryu-nsm-labels": '{"app":"web"}', "ryu-nsm-netns": ns, "ryu-nsm-owner": OWNER,
        "ryu-nsm-expires": "1900000000", "ryu-nsm-ifname": "nsm-1",
    }
    assert sh("ovs-vsctl", "port-to-br", done.host_ifname).strip() == BRIDGE
    assert is_plumbed(req, ovsdb)


def _connect_with_flows(a_port: int, b_port: int) -> None:
    for src, dst in ((a_port, b_port), (b_port, a_port)):
        sh("ovs-ofctl", "add-flow", BRIDGE, f"in_port={src},actions=output:{dst}")


def test_frames_pass_between_two_plumbed_namespaces(ovsdb, namespaces, connections):
    ns_a, ns_b = namespaces(), namespaces()
    a = plumb(request(connections("a"), ns_a, addresses=["10.64.0.1/24"]), ovsdb)
    b = plumb(request(connections("b"), ns_b, addresses=["10.64.0.2/24"], role="endpoint"), ovsdb)
    try:
        _connect_with_flows(attached(a.connection_id)["ofport"], attached(b.connection_id)["ofport"])
        wait_for(lambda: ping(ns_a, "10.64.0.2"), "ping from a to b")

        # TCP is what breaks on the userspace datapath when tx checksum offload stays on.
        server = textwrap.dedent("""
            import socket
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("10.64.0.2", 7777)); s.listen(1)
            c, _ = s.accept(); c.sendall(c.recv(100).upper()); c.close()
            """)
        client = textwrap.dedent("""
            import socket, sys
            c = socket.create_connection(("10.64.0.2", 7777), timeout=2)
            c.sendall(b"hello over tcp"); sys.stdout.write(c.recv(100).decode())
            """)
        proc = subprocess.Popen(["ip", "netns", "exec", ns_b, sys.executable, "-c", server])
        try:
            answers: list[str] = []

            def exchange() -> bool:
                run = subprocess.run(["ip", "netns", "exec", ns_a, sys.executable, "-c", client],
                                     capture_output=True, text=True)
                answers.append(run.stdout)
                return run.returncode == 0

            wait_for(exchange, "a TCP exchange from a to b")
            assert answers[-1] == "HELLO OVER TCP"
        finally:
            proc.kill()
            proc.wait()
    finally:
        sh("ovs-ofctl", "del-flows", BRIDGE)


def test_refresh_with_the_same_request_changes_nothing_but_the_marks(ovsdb, namespaces, connections):
    ns = namespaces()
    req = request(connections("refresh"), ns, addresses=["10.65.0.1/24"], expires=1900000000)
    first = plumb(req, ovsdb)
    host_index = root_link(first.host_ifname)["ifindex"]
    (peer,) = ip_json(ns, "link", "show", "dev", "nsm-1")
    iface = attached(req.connection_id)
    wait_for(lambda: ovsdb.port(first.host_ifname).ofport == iface["ofport"], "this client to see the ofport")

    again = plumb(req, ovsdb)
    later = plumb(request(req.connection_id, ns, addresses=["10.65.0.1/24"], expires=1900000600), ovsdb)

    assert not again.created and not later.created
    assert first.ofport is None and again.ofport == later.ofport == iface["ofport"]
    assert first.mac == again.mac == peer["address"]
    assert root_link(first.host_ifname)["ifindex"] == host_index
    assert ip_json(ns, "link", "show", "dev", "nsm-1")[0]["ifindex"] == peer["ifindex"]
    (after,) = ovs_by_connection(req.connection_id)
    assert after["uuid"] == iface["uuid"] and after["ofport"] == iface["ofport"]
    assert after["external_ids"]["ryu-nsm-expires"] == "1900000600"
    assert link_names(ns) == {"lo", "nsm-1"}


def test_a_changed_request_with_the_same_id_is_plumbed_anew(ovsdb, namespaces, connections):
    ns = namespaces()
    conn = connections("changed")
    plumb(request(conn, ns, addresses=["10.66.0.1/24"]), ovsdb)
    changed = request(conn, ns, addresses=["10.66.1.1/24"])
    assert not is_plumbed(changed, ovsdb)

    done = plumb(changed, ovsdb)

    assert done.created
    addrs = {a["local"] for a in ip_json(ns, "addr", "show", "dev", "nsm-1")[0]["addr_info"]}
    assert "10.66.1.1" in addrs and "10.66.0.1" not in addrs
    assert len(ovs_by_connection(conn)) == 1
    assert is_plumbed(changed, ovsdb)


def test_the_check_of_a_plumbing_reads_only_its_own_interface(ovsdb, namespaces, connections):
    # Addresses, routes and neighbours are read with the kernel filtering by interface: what sits on
    # another interface of the same namespace must not count, however many interfaces there are.
    ns = namespaces()
    mine = request(connections("own"), ns, ifname="own", addresses=["10.75.0.1/24"],
                   routes=[("10.76.0.0/16", "10.75.0.254")], neighbours=[("10.75.0.2", "02:75:00:00:00:02")])
    other = request(connections("other"), ns, ifname="other", addresses=["10.75.1.1/24"],
                    routes=[("10.77.0.0/16", "10.75.1.254")], neighbours=[("10.75.1.2", "02:75:00:00:01:02")])
    plumb(mine, ovsdb)
    plumb(other, ovsdb)
    assert is_plumbed(mine, ovsdb) and is_plumbed(other, ovsdb)

    for extra in ({"addresses": [*mine.addresses, *other.addresses]},
                  {"routes": [*mine.routes, *other.routes]},
                  {"neighbours": [*mine.neighbours, *other.neighbours]}):
        asks_for_more = request(mine.connection_id, ns, **{**_fields(mine), **extra})
        assert not is_plumbed(asks_for_more, ovsdb), extra


def _fields(req: KernelRequest) -> dict[str, object]:
    return {"ifname": req.ifname, "addresses": req.addresses, "routes": req.routes,
            "neighbours": req.neighbours}


def test_an_endpoint_is_named_in_the_marks_it_is_added_with(ovsdb, namespaces, connections):
    ns = namespaces()
    req = request(connections("endpoint"), ns, role="endpoint", endpoint="fw-1", addresses=["10.78.0.1/24"])
    done = plumb(req, ovsdb)
    (iface,) = ovs_by_connection(req.connection_id)
    assert iface["external_ids"]["ryu-nsm-endpoint"] == "fw-1"
    assert iface["external_ids"]["ryu-nsm-role"] == "endpoint"

    renamed = plumb(dataclasses.replace(req, endpoint="fw-2"), ovsdb)
    assert not renamed.created and renamed.host_ifname == done.host_ifname
    (after,) = ovs_by_connection(req.connection_id)
    assert after["uuid"] == iface["uuid"] and after["external_ids"]["ryu-nsm-endpoint"] == "fw-2"


def test_unplumb_removes_port_and_veth_and_is_idempotent(ovsdb, namespaces, connections):
    ns = namespaces()
    req = request(connections("gone"), ns, addresses=["10.67.0.1/24"])
    done = plumb(req, ovsdb)
    assert done.host_ifname in bridge_ports(BRIDGE)

    assert unplumb(req.connection_id, ovsdb) is True

    assert root_link(done.host_ifname) is None
    assert done.host_ifname not in bridge_ports(BRIDGE)
    assert ovs_by_connection(req.connection_id) == []
    assert link_names(ns) == {"lo"}
    assert not is_plumbed(req, ovsdb)
    assert unplumb(req.connection_id, ovsdb) is False
    assert unplumb(f"{TAG}/never-plumbed", ovsdb) is False


def test_plumb_into_pid_namespace_paths(ovsdb, namespaces, connections):
    ns = namespaces()
    sleeper = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "600"])
    try:
        named = os.stat(f"/var/run/netns/{ns}")
        # `ip netns exec` enters the namespace and then execs sleep; wait until the pid is inside.
        wait_for(lambda: os.stat(f"/proc/{sleeper.pid}/ns/net").st_ino == named.st_ino,
                 "the sleeper to enter its namespace")
        forms = {
            "nsm-path": f"/proc/{sleeper.pid}/ns/net",
            "nsm-url": f"file:///proc/{sleeper.pid}/ns/net",
            "nsm-inode": f"inode://{named.st_dev}/{named.st_ino}",
        }
        reqs = [request(connections(ifname), where, ifname=ifname, addresses=[f"10.68.0.{i}/24"])
                for i, (ifname, where) in enumerate(forms.items(), start=1)]
        for req in reqs:
            plumb(req, ovsdb)

        assert link_names(ns) == {"lo", *forms}
        for i, ifname in enumerate(forms, start=1):
            addrs = {a["local"] for a in ip_json(ns, "addr", "show", "dev", ifname)[0]["addr_info"]}
            assert f"10.68.0.{i}" in addrs
        for req in reqs:
            (iface,) = ovs_by_connection(req.connection_id)
            assert iface["external_ids"]["ryu-nsm-netns"] == req.netns
            assert is_plumbed(req, ovsdb)
    finally:
        sleeper.send_signal(signal.SIGKILL)
        sleeper.wait()


def test_concurrent_plumbs_of_different_connections_all_succeed(ovsdb, namespaces, connections):
    ns = namespaces()
    reqs = [request(connections(f"par{i}"), ns, ifname=f"par{i}", addresses=[f"10.69.0.{i + 1}/24"])
            for i in range(8)]
    results: dict[str, object] = {}

    def run(req: KernelRequest) -> None:
        try:
            results[req.connection_id] = plumb(req, ovsdb)
        except Exception as exc:  # collected and asserted on below
            results[req.connection_id] = exc

    threads = [threading.Thread(target=run, args=(req,)) for req in reqs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert all(not isinstance(r, Exception) for r in results.values()), results
    assert link_names(ns) == {"lo", *(f"par{i}" for i in range(8))}
    ofports = {attached(req.connection_id)["ofport"] for req in reqs}
    assert len(ofports) == 8


# ---- bad requests ----------------------------------------------------------------------------


def _state(ns: str | None, connection: str) -> tuple:
    """What a failed plumb must not change: the netns's links, the bridge's ports, our marks."""
    return (link_names(ns) if ns else None, bridge_ports(BRIDGE), ovs_by_connection(connection),
            root_link(host_ifname(connection)))


@pytest.mark.parametrize(("case", "kind"), [
    ("missing-netns", "not-found"),
    ("not-a-netns", "invalid"),
    ("bad-netns-name", "invalid"),
    ("ifname-clash", "exists"),
    ("bad-cidr", "invalid"),
    ("cidr-without-prefix", "invalid"),
    ("mtu-too-big", "invalid"),
    ("mtu-too-small", "invalid"),
    ("multicast-mac", "invalid"),
    ("bad-ifname", "invalid"),
    ("unreachable-nexthop", "invalid"),
    ("missing-bridge", "not-found"),
])
def test_bad_requests_fail_cleanly(ovsdb, namespaces, connections, case, kind):
    ns = namespaces()
    conn = connections(case)
    fields: dict[str, object] = {"addresses": ["10.70.0.1/24"]}
    where = ns
    if case == "missing-netns":
        where = f"{TAG}-no-such-netns"
    elif case == "not-a-netns":
        where = "/etc/hostname"
    elif case == "bad-netns-name":
        where = "bad name!"
    elif case == "ifname-clash":
        sh("ip", "-n", ns, "link", "add", "nsm-1", "type", "veth", "peer", "name", "other")
    elif case == "bad-cidr":
        fields["addresses"] = ["10.70.0.300/24"]
    elif case == "cidr-without-prefix":
        fields["addresses"] = ["10.70.0.1"]
    elif case == "mtu-too-big":
        fields["mtu"] = 70000
    elif case == "mtu-too-small":
        fields["mtu"] = 50
    elif case == "multicast-mac":
        fields["mac"] = "01:00:5e:00:00:01"
    elif case == "bad-ifname":
        fields["ifname"] = "much-too-long-name"
    elif case == "unreachable-nexthop":
        # Only the kernel finds this one, after the veth exists: the undo path must run.
        fields["routes"] = [("10.71.0.0/16", "10.99.0.1")]
    req = request(conn, where, **fields)
    if case == "missing-bridge":
        req = KernelRequest(connection_id=conn, netns=ns, bridge=f"{TAG}nobr", owner=OWNER,
                            addresses=["10.70.0.1/24"])
    before = _state(ns, conn)

    with pytest.raises(PlumbingError) as caught:
        plumb(req, ovsdb)

    assert caught.value.kind == kind, caught.value
    assert caught.value.message
    assert _state(ns, conn) == before
    assert root_link(host_ifname(conn)) is None


def test_a_host_name_taken_by_someone_else_is_refused_and_left_alone(ovsdb, namespaces, connections):
    ns = namespaces()
    conn = connections("squatted")
    squatter = host_ifname(conn)
    sh("ip", "link", "add", squatter, "type", "veth", "peer", "name", f"{TAG}sq")
    try:
        before = _state(ns, conn)
        with pytest.raises(PlumbingError) as caught:
            plumb(request(conn, ns, addresses=["10.72.0.1/24"]), ovsdb)
        assert caught.value.kind == "exists"
        assert _state(ns, conn) == before
        assert root_link(squatter) is not None
        assert unplumb(conn, ovsdb) is False
        assert root_link(squatter) is not None
    finally:
        sh("ip", "link", "del", squatter, check=False)


def test_validate_rejects_malformed_requests_without_touching_the_system():
    good = dict(connection_id="c", netns="ns", bridge="br", owner="me")
    validate(KernelRequest(**good))
    bad = [
        {"connection_id": ""},
        {"owner": ""},
        {"netns": "file://remote-host/proc/1/ns/net"},
        {"netns": "inode://12"},
        {"mac": "02:00:00:00:00"},
        {"mac": "00:00:00:00:00:00"},
        {"routes": [("10.0.0.0/8", "fd00::1")]},
        {"routes": [("10.0.0.0/33", None)]},
        {"neighbours": [("10.0.0.1", "zz:00:00:00:00:01")]},
        {"addresses": ["10.0.0.1/24", "10.0.0.1/24"]},
        {"role": "bystander"},
        {"labels": {"app": 1}},
        {"expires": -1},
        {"mtu": True},
    ]
    for change in bad:
        with pytest.raises(PlumbingError) as caught:
            validate(KernelRequest(**{**good, **change}))
        assert caught.value.kind == "invalid", change


def test_host_names_are_deterministic_short_and_distinct():
    ids = [f"ns/pod-{i}/nsm-1" for i in range(2000)]
    names = [host_ifname(i) for i in ids]
    assert names == [host_ifname(i) for i in ids]
    assert len(set(names)) == len(ids)
    assert all(len(n) <= 15 and n.startswith("nsm") for n in names)


# ---- restart ---------------------------------------------------------------------------------


def test_discover_after_restart_finds_live_connections_and_flags_orphans(bridge, namespaces, connections):
    ns_live, ns_doomed = namespaces(), namespaces()
    live_id, doomed_id = connections("live"), connections("doomed")
    with Ovsdb() as first:
        plumb(request(live_id, ns_live, addresses=["10.73.0.1/24"], service="echo", labels={"a": "b"},
                      expires=1900000000), first)
        doomed = plumb(request(doomed_id, ns_doomed, ifname="eth7", addresses=["10.73.0.2/24"]), first)
        attached(live_id)

    # The namespace dies while the forwarder is down: the kernel takes the veth pair with it.
    sh("ip", "netns", "del", ns_doomed)
    wait_for(lambda: root_link(doomed.host_ifname) is None, "the doomed veth to vanish")

    with Ovsdb() as restarted:
        found = discover(restarted, OWNER)
        mine = [e for e in found.live if e.connection_id in (live_id, doomed_id)]
        orphans = [e for e in found.orphans if e.connection_id in (live_id, doomed_id)]
        assert [e.connection_id for e in mine] == [live_id]
        (live,) = mine
        assert (live.netns, live.ifname, live.service, dict(live.labels), live.expires, live.owner) == (
            ns_live, "nsm-1", "echo", {"a": "b"}, 1900000000.0, OWNER)
        assert live.bridge == BRIDGE and live.host_ifname == host_ifname(live_id)
        assert live.ofport == ovs_by_connection(live_id)[0]["ofport"]
        assert live.reason is None
        assert [e.connection_id for e in orphans] == [doomed_id]
        assert orphans[0].ifname == "eth7" and "gone" in orphans[0].reason

        assert discover(restarted, f"{TAG}-someone-else").live == []
        assert is_plumbed(request(live_id, ns_live, addresses=["10.73.0.1/24"], service="echo"), restarted)

        assert unplumb(doomed_id, restarted) is True
        assert ovs_by_connection(doomed_id) == []
        assert len(ovs_by_connection(live_id)) == 1


def test_discover_flags_a_peer_that_left_its_namespace(ovsdb, namespaces, connections):
    ns = namespaces()
    conn = connections("moved")
    plumb(request(conn, ns, addresses=["10.74.0.1/24"]), ovsdb)
    sh("ip", "-n", ns, "link", "set", "nsm-1", "name", "renamed")

    (orphan,) = [e for e in discover(ovsdb, OWNER).orphans if e.connection_id == conn]
    assert "nsm-1" in orphan.reason


# ---- the OVSDB client itself -----------------------------------------------------------------


def test_ovsdb_add_port_honours_ofport_request_and_refuses_missing_devices(ovsdb):
    name = f"{TAG}q"
    sh("ip", "link", "add", name, "type", "veth", "peer", "name", f"{TAG}r")
    try:
        ofport = ovsdb.add_port(BRIDGE, name, {"k": "v"}, ofport_request=77)
        assert ofport == 77
        (iface,) = ovs_interfaces(name=name)
        assert iface["ofport"] == 77 and iface["external_ids"] == {"k": "v"}
        assert [p.name for p in ovsdb.find("k", "v")] == [name]
        assert ovsdb.del_port(BRIDGE, name) is True
        assert ovsdb.del_port(BRIDGE, name) is False
        assert ovs_interfaces(name=name) == []
    finally:
        sh("ip", "link", "del", name, check=False)
        sh("ovs-vsctl", "--if-exists", "del-port", name, check=False)

    missing = f"{TAG}none"
    with pytest.raises(OvsdbError, match="could not"):
        ovsdb.add_port(BRIDGE, missing, {})
    assert ovs_interfaces(name=missing) == []
    assert missing not in bridge_ports(BRIDGE)


def test_ovsdb_find_follows_marks_written_by_others_and_a_fresh_client_sees_them(ovsdb):
    names = [f"{TAG}i{k}" for k in range(3)]
    for name in names:
        sh("ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p")
    try:
        for k, name in enumerate(names):
            sh("ovs-vsctl", "add-port", BRIDGE, name, "--", "set", "Interface", name,
               f"external_ids:{TAG}-key=v{k % 2}")

        def found(value: str, db: Ovsdb = ovsdb) -> list[str]:
            return [p.name for p in db.find(f"{TAG}-key", value)]

        wait_for(lambda: found("v0") == [names[0], names[2]] and found("v1") == [names[1]], "the marks")
        sh("ovs-vsctl", "set", "Interface", names[0], f"external_ids:{TAG}-key=v1")
        wait_for(lambda: found("v0") == [names[2]] and found("v1") == [names[0], names[1]], "a changed mark")
        sh("ovs-vsctl", "remove", "Interface", names[1], "external_ids", f"{TAG}-key")
        sh("ovs-vsctl", "del-port", names[2])
        wait_for(lambda: found("v0") == [] and found("v1") == [names[0]], "a removed mark and port")
        assert ovsdb.port(names[2]) is None and ovsdb.port(names[1]).external_ids == {}

        with Ovsdb() as fresh:
            assert found("v1", fresh) == [names[0]] and found("v0", fresh) == []
            assert fresh.port(names[0]).bridge == BRIDGE and fresh.has_bridge(BRIDGE)
            assert not fresh.has_bridge(f"{TAG}nobr")
    finally:
        for name in names:
            sh("ovs-vsctl", "--if-exists", "del-port", name, check=False)
            sh("ip", "link", "del", name, check=False)


def test_ovsdb_writes_survive_a_dropped_connection(ovsdb, monkeypatch):
    import ovs.db.idl

    statuses: list[str] = []
    commit = ovs.db.idl.Transaction.commit

    def recording_commit(txn):  # observe the statuses the real commit returns
        statuses.append(commit(txn))
        return statuses[-1]

    monkeypatch.setattr(ovs.db.idl.Transaction, "commit", recording_commit)

    def drop_connection() -> None:
        # No outside tool drops one client's OVSDB session, so ask this client's IDL to.
        with ovsdb._cond:
            ovsdb._idl.force_reconnect()

    name = f"{TAG}t"
    sh("ip", "link", "add", name, "type", "veth", "peer", "name", f"{TAG}u")
    try:
        drop_connection()
        ofport = ovsdb.add_port(BRIDGE, name, {"k": "retried"})
        assert "try again" in statuses
        (iface,) = ovs_interfaces(name=name)
        assert iface["ofport"] == ofport > 0 and iface["external_ids"] == {"k": "retried"}

        statuses.clear()
        drop_connection()
        assert ovsdb.del_port(BRIDGE, name) is True
        assert "try again" in statuses
        assert ovs_interfaces(name=name) == []
    finally:
        sh("ip", "link", "del", name, check=False)
        sh("ovs-vsctl", "--if-exists", "del-port", name, check=False)
