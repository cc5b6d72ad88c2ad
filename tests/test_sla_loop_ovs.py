"""The closed loop on real bridges: a link gets slow during traffic, the controller measures it and
moves the connection whose service level it breaks, and the traffic goes on.

Three netdev bridges in a triangle. The direct link A–B runs through the impairment element (a
user-space relay in its own namespace; tc here has no netem), the other way is A–C–B. The
connection from a client namespace on A to a server namespace on B has a 10 ms latency bound and
takes A–B. Then the element delays A–B by 30 ms each way while a ping runs: the controller's probes
see it, the connection moves to A–C–B within a bounded time, and the ping keeps getting answers.
"""

import os
import re
import subprocess
import textwrap

import pytest

from ryu_nsm.controlproc import ControllerProcess, wait_for
from ryu_nsm.impairment import start_in_netns

from .echo_requests import write_echo_requests
from .two_bridges import add_host, sh

pytestmark = pytest.mark.ovs

TAG = f"l{os.getpid() % 10000:04d}"
A, B, C = f"{TAG}a", f"{TAG}b", f"{TAG}c"
NS_C, NS_S, NS_IMP = f"{TAG}-c", f"{TAG}-s", f"{TAG}-i"
CONN = "default/client/nsm-1"
LEVEL = textwrap.dedent("""\
    apiVersion: ryu-nsm.io/v1alpha1
    kind: ServiceLevel
    metadata: {name: echo-fast}
    spec: {networkService: echo, maxLatency: 10ms}
    """)


def veth(here: str, there: str) -> None:
    sh("ip", "link", "add", here, "type", "veth", "peer", "name", there)


def attach(bridge: str, port: str, number: int) -> None:
    sh("ovs-vsctl", "add-port", bridge, port, "--", "set", "interface", port, f"ofport_request={number}")
    sh("ip", "link", "set", port, "up")


def teardown() -> None:
    for br in (A, B, C):
        sh("ovs-vsctl", "--if-exists", "del-br", br, check=False)
    for ns in (NS_C, NS_S, NS_IMP):
        sh("ip", "netns", "del", ns, check=False)
    for link in (f"{A}-2", f"{C}-2", f"{A}-1", f"{B}-1"):
        sh("ip", "link", "del", link, check=False)


@pytest.fixture
def triangle(tmp_path):
    teardown()
    try:
        for br, dpid in ((A, 0xA3), (B, 0xB3), (C, 0xC3)):
            sh("ovs-vsctl", "add-br", br, "--", "set", "bridge", br, "datapath_type=netdev",
               f"other-config:datapath-id={dpid:016x}", "fail_mode=secure", "protocols=OpenFlow13")
        # A:1 - element - B:1; A:2 - C:1; C:2 - B:2.
        sh("ip", "netns", "add", NS_IMP)
        for br, inside in ((A, "ia"), (B, "ib")):
            veth(f"{br}-1", f"{TAG}{inside}")
            sh("ip", "link", "set", f"{TAG}{inside}", "netns", NS_IMP)
            sh("ip", "netns", "exec", NS_IMP, "ip", "link", "set", f"{TAG}{inside}", "up")
            attach(br, f"{br}-1", 1)
        veth(f"{A}-2", f"{C}-1")
        veth(f"{C}-2", f"{B}-2")
        for br, port, number in ((A, f"{A}-2", 2), (C, f"{C}-1", 1), (C, f"{C}-2", 2), (B, f"{B}-2", 2)):
            attach(br, port, number)
        add_host(NS_C, f"{A}-c", "10.9.2.1/24", bridge=A, ofport=10)
        add_host(NS_S, f"{B}-s", "10.9.2.2/24", bridge=B, ofport=10)
        element = start_in_netns(NS_IMP, f"{TAG}ia", f"{TAG}ib", str(tmp_path / "imp.sock"), seed=1)
        topo = tmp_path / "topo.yaml"
        topo.write_text(textwrap.dedent(f"""\
            name: triangle
            switches:
              - {{name: {A}, dpid: 0xa3}}
              - {{name: {B}, dpid: 0xb3}}
              - {{name: {C}, dpid: 0xc3}}
            links:
              - {{a: {A}, b: {B}, a_port: 1, b_port: 1, latency: 1ms}}
              - {{a: {A}, b: {C}, a_port: 2, b_port: 1, latency: 1ms}}
              - {{a: {C}, b: {B}, a_port: 2, b_port: 2, latency: 1ms}}
            hosts:
              - name: client
                interfaces: [{{name: eth0, switch: {A}, port: 10, port_name: {A}-c}}]
              - name: server
                interfaces: [{{name: eth0, switch: {B}, port: 10, port_name: {B}-s}}]
            """))
        requests = write_echo_requests(tmp_path / "requests", f"{A}/{A}-c", f"{B}/{B}-s")
        (requests / "level.yaml").write_text(LEVEL)
        try:
            yield topo, requests, element
        finally:
            element.stop()
    finally:
        teardown()


def path(ctl) -> list[str]:
    return ctl.connections().get(CONN, {}).get("path", [])


def test_a_link_that_gets_slow_during_traffic_loses_the_connection_and_traffic_goes_on(triangle, tmp_path):
    topo, requests, element = triangle
    with ControllerProcess(topo, [requests], tmp_path / "ctl.log") as ctl:
        for br in (A, B, C):
            sh("ovs-vsctl", "set-controller", br, f"tcp:127.0.0.1:{ctl.of_port}")
        ctl.wait_connections(lambda cs: cs.get(CONN, {}).get("state") == "up", 30)
        assert path(ctl) == [A, B]
        # Measured and met before anything happens.
        assert wait_for(lambda: ctl.connections()[CONN].get("measured", {}).get("met") is True, 15)

        pinger = subprocess.Popen(["ip", "netns", "exec", NS_C, "ping", "-i", "0.05", "-W", "1", "10.9.2.2"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert wait_for(lambda: ctl.connections()[CONN]["state"] == "up", 5)
            element.set(delay_ms=30)
            assert wait_for(lambda: path(ctl) == [A, C, B], 30, 0.5), ctl.connections()[CONN]
            after_move = wait_for(lambda: ctl.connections()[CONN]["state"] == "up", 10)
            assert after_move
        finally:
            pinger.terminate()
            out, _ = pinger.communicate(timeout=10)
        replies = [float(m[1]) for m in re.finditer(r"time=([\d.]+) ms", out)]
        sent = int(re.search(r"(\d+) packets transmitted", out)[1]) if "transmitted" in out else len(replies)
        # The replies before the move took the slow link (60 ms more), the last ones the fast way round.
        assert max(replies) > 60 and min(replies[-10:]) < 30, replies
        assert len(replies) >= 0.9 * sent, f"{sent - len(replies)} of {sent} pings lost"
        history = ctl.status()["history"]
        assert any("echo-fast" in h["what"] and "latency" in h["what"] for h in history), history
        assert ctl.errors() == []
