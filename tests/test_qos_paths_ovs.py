"""Admission on real bridges: guarantees that do not both fit on the short path are split across
paths, and a latency bound keeps a connection off a slow link; frames follow the planned paths."""

import os
import re
import subprocess
import textwrap

import pytest

from ryu_nsm.controlproc import ControllerProcess, wait_for

from .triangle import Triangle
from .two_bridges import sh

pytestmark = pytest.mark.ovs

NET = Triangle(f"a{os.getpid() % 10000:04d}")
A, B, C = NET.bridges
NS_C = NET.namespaces[0]


def requests(directory, pairs: int, level: str):
    """Service echo, one endpoint per server, one client Pod per client, and ``level``."""
    directory.mkdir()
    docs = ["apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: echo}\n"
            "spec: {payload: ETHERNET}\n"]
    for i in range(pairs):
        suffix = str(i) if i else ""
        docs.append(textwrap.dedent(f"""\
            apiVersion: networkservicemesh.io/v1
            kind: NetworkServiceEndpoint
            metadata:
              name: server{suffix}
              annotations: {{ryu-nsm.io/attachments: {B}/{B}-s{suffix}}}
            spec: {{network_service_names: [echo]}}
            """))
        docs.append(textwrap.dedent(f"""\
            apiVersion: v1
            kind: Pod
            metadata:
              name: client{suffix}
              annotations:
                networkservicemesh.io: kernel://echo/nsm-1
                ryu-nsm.io/attachments: nsm-1={A}/{A}-c{suffix}
            """))
    docs.append(level)
    (directory / "all.yaml").write_text("---\n".join(docs))
    return directory


@pytest.fixture
def build(tmp_path):
    NET.remove()
    try:
        yield lambda **kw: NET.build(tmp_path, impaired=False, **kw)[0]
    finally:
        NET.remove()


def ping(client: str, server: str) -> int:
    """Echo replies from three pings of client<i> to the server<j> it is wired to (addresses as
    tests/triangle.py gives them)."""
    i, j = (int(name.removeprefix(role) or 0) for name, role in ((client, "client"), (server, "server")))
    command = ["ip", "netns", "exec", f"{NS_C}{i or ''}", "ping", "-c", "3", "-i", "0.2", "-W", "1",
               f"10.9.2.{2 * j + 2}"]
    out = subprocess.run(command, capture_output=True, text=True).stdout
    found = re.search(r"(\d+) received", out)
    return int(found[1]) if found else 0


def carried(bridge: str, in_port: int | None = None) -> int:
    """Frames a bridge's wire flows of table 1 took in (from ``in_port`` only, if given): connections'
    frames arriving over fabric links, not the controller's probes."""
    out = sh("ovs-ofctl", "-O", "OpenFlow13", "dump-flows", bridge, "table=1")
    where = rf"priority=1000,in_port={in_port}\b" if in_port is not None else r"priority=1000"
    return sum(int(n) for n in re.findall(rf"n_packets=(\d+),.*{where}", out))


def packets_through_c() -> int:
    return carried(C)


def over_direct_link() -> int:
    """Frames that arrived over the A–B link, at either end."""
    return carried(A, 1) + carried(B, 1)


def start(ctl: ControllerProcess) -> dict:
    NET.connect(ctl.of_port)
    return ctl.wait_connections(lambda cs: len(cs) >= 1 and all(c["state"] == "up" for c in cs.values()), 30)


def test_two_guarantees_that_do_not_both_fit_the_short_path_are_split(build, tmp_path):
    topo = build(direct="latency: 1ms, capacity: 100M", pairs=2)
    level = ("apiVersion: ryu-nsm.io/v1alpha1\nkind: ServiceLevel\nmetadata: {name: echo-60m}\n"
             "spec: {networkService: echo, guaranteedBandwidth: 60M}\n")
    with ControllerProcess(topo, [requests(tmp_path / "req", 2, level)], tmp_path / "ctl.log") as ctl:
        shown = start(ctl)
        assert len(shown) == 2
        assert sorted(c["path"] for c in shown.values()) == [[A, B], [A, C, B]]
        short, long = sorted(shown.values(), key=lambda c: len(c["path"]))
        assert all(r["residual"] >= 0 for r in ctl.status()["reservations"])
        # Every answered echo crosses its path twice (request and reply). Counters reach the flows a
        # little after the frames (the datapath's revalidation), hence the waits.
        before, before_direct = packets_through_c(), over_direct_link()
        answered = wait_for(lambda: ping(short["client"], short["endpoint"]), 10, 0.5)
        assert wait_for(lambda: over_direct_link() - before_direct >= 2 * answered > 0, 5), "A–B unused"
        assert packets_through_c() - before < 3, "the connection on the short path went through C"
        before = packets_through_c()
        answered = wait_for(lambda: ping(long["client"], long["endpoint"]), 10, 0.5)
        assert wait_for(lambda: packets_through_c() - before >= 2 * answered > 0, 5), "long path missed C"
        assert ctl.errors() == []


def test_a_latency_bound_keeps_the_connection_off_a_slow_link(build, tmp_path):
    topo = build(direct="latency: 20ms")  # declared: shortest by hops, too slow for the bound
    level = ("apiVersion: ryu-nsm.io/v1alpha1\nkind: ServiceLevel\nmetadata: {name: echo-fast}\n"
             "spec: {networkService: echo, maxLatency: 10ms}\n")
    with ControllerProcess(topo, [requests(tmp_path / "req", 1, level)], tmp_path / "ctl.log") as ctl:
        (shown,) = start(ctl).values()
        assert shown["path"] == [A, C, B] and shown["path_latency"] < 0.010
        before = packets_through_c()
        answered = wait_for(lambda: ping("client", "server"), 10, 0.5)
        assert wait_for(lambda: packets_through_c() - before >= 2 * answered > 0, 5)
        assert ctl.errors() == []
