"""Drops with their reason from real Open vSwitch, read back with ``ryu-nsm observe`` through the
controller's Hubble listener, on the triangle of tests/bridge_fabric.py (names start with ``mt``):

- frames over a wire's rate limit: the meter's drops, read with the counters, appear as DROPPED
  (rate limit) events of that wire, as many frames as the meter dropped; traffic under the limit
  makes none;
- telnet through a MultiNetworkPolicy that allows port 80 only: the SYNs appear as DROPPED with the
  policy's name (sampled on the drop flow, exported over IPFIX), port 80 as FORWARDED.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
import urllib.request

import pytest

from ryu_nsm.lab.controller_process import ControllerProcess, free_port, wait_for
from ryu_nsm.lab.flow_sampling import observe, observed
from ryu_nsm.sources.ovsdb_ipfix import remove_collector_sets

from .bridge_fabric import triangle
from .two_bridges import sh

pytestmark = pytest.mark.ovs

NET = triangle(f"mt{os.getpid() % 10000:04d}")
A, B, C = NET.bridges
NS_C, NS_S, _ = NET.namespaces
CONN = "default/client/nsm-1"
LIMITED = textwrap.dedent("""\
    apiVersion: ryu-nsm.io/v1alpha1
    kind: ServiceLevel
    metadata: {name: echo-limited}
    spec: {networkService: echo, rateLimit: 2M}
    """)
SAMPLED = textwrap.dedent("""\
    apiVersion: ryu-nsm.io/v1alpha1
    kind: ServiceLevel
    metadata: {name: echo-sampled}
    spec: {networkService: echo, flowSampling: 1}
    """)
ALLOW_80 = textwrap.dedent("""\
    apiVersion: k8s.cni.cncf.io/v1beta1
    kind: MultiNetworkPolicy
    metadata:
      name: web
      annotations: {k8s.v1.cni.cncf.io/policy-for: echo}
    spec:
      podSelector: {}
      ingress: [{ports: [{protocol: TCP, port: 80}]}]
    """)
# UDP to the server at ``rate`` bit/s for ``seconds``, in 1000-byte datagrams, paced.
UDP_BLAST = textwrap.dedent("""\
    import socket, sys, time
    rate, seconds = float(sys.argv[1]), float(sys.argv[2])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gap, start, sent = 8000 / rate, time.monotonic(), 0
    while time.monotonic() - start < seconds:
        s.sendto(b"x" * 972, ("{server}", 9))  # 1000 bytes of IP
        sent += 1
        time.sleep(max(0.0, start + sent * gap - time.monotonic()))
    print(sent)
    """).replace("{server}", NET.server_ip)


def in_client(*command: str, timeout: float = 30) -> str:
    return subprocess.run(["ip", "netns", "exec", NS_C, *command], capture_output=True, text=True,
                          timeout=timeout).stdout


def meter_drops(bridge: str) -> int:
    """Packets our meters' drop bands on ``bridge`` dropped, as Open vSwitch counts them."""
    stats = sh("ovs-ofctl", "-O", "OpenFlow13", "meter-stats", bridge)
    return sum(int(n) for n in re.findall(r"0: packet_count:(\d+)", stats))


def rate_limited(hubble: str) -> list[dict]:
    reason = "REACHED_EDT_RATE_LIMITING_DROP_HORIZON"
    return [f for f in observed(hubble) if f.get("drop_reason_desc") == reason]


def frames(events: list[dict]) -> int:
    """The frames the events stand for, as their summaries say (Hubble's Flow has no count)."""
    return sum(int(f["Summary"].split(" ", 1)[0]) for f in events)


@pytest.fixture
def limited(tmp_path):
    with NET.echo(tmp_path, LIMITED) as (topo, requests, _):
        yield topo, requests


def test_frames_over_a_rate_limit_are_dropped_events_of_the_wire(limited, tmp_path):
    topo, requests = limited
    hubble = f"127.0.0.1:{free_port()}"
    args = ["--hubble-listen", hubble, "--counter-interval", "0.5"]
    with ControllerProcess(topo, [requests], tmp_path / "ctl.log", extra_args=args) as ctl:
        NET.connect(ctl.of_port)
        ctl.wait_connections(lambda cs: cs.get(CONN, {}).get("state") == "up", 30)
        # A rate at both ends takes two counter reads there: the meters' first counts are read.
        assert wait_for(lambda: len(ctl.connections()[CONN].get("throughput") or {}) == 2, 15), ctl.status()

        # Under the limit: a few pings pass and no meter drops a frame.
        ping = in_client("ping", "-c", "5", "-i", "0.2", "-w", "10", NET.server_ip)
        assert " 0% packet loss" in ping, ping
        assert not wait_for(lambda: rate_limited(hubble), 2.5, 0.5), observed(hubble)
        assert meter_drops(A) == 0

        # Five times the limit for two seconds: the meter at the client's end drops a share of it
        # (how much is Open vSwitch's: its userspace meter lets more through than the rate).
        sent = int(in_client("python3", "-c", UDP_BLAST, str(10e6), "2"))
        dropped = meter_drops(A)
        assert sent > 2000 and dropped > sent / 10, (sent, dropped)
        # Every frame the meter dropped appears, in events of the wire at A, towards the endpoint.
        assert wait_for(lambda: frames(rate_limited(hubble)) == dropped, 10, 0.5), (
            dropped, rate_limited(hubble))
        events = rate_limited(hubble)
        assert {(f["verdict"], f["node_name"], f["source"]["pod_name"], f["destination"]["pod_name"])
                for f in events} == {("DROPPED", A, "client", "server")}
        said = f"frames over the 2Mbit/s limit of wire default/echo hop 0 ({CONN}), to-endpoint"
        assert all(f["Summary"].split(" ", 1)[1].startswith(said) for f in events), events
        assert ctl.connections()[CONN]["meter_drops"] == {"from_client": dropped}
        with urllib.request.urlopen(ctl.url + "/metrics", timeout=5) as reply:
            metrics = reply.read().decode()
        assert (f'ryu_nsm_connection_meter_dropped_packets_total{{connection="{CONN}",from="client",'
                f'network_service="echo"}} {dropped}.0') in metrics, metrics
        assert ctl.errors() == []


@pytest.fixture
def sampled(tmp_path):
    with NET.echo(tmp_path, SAMPLED) as (topo, requests, _):
        try:
            yield topo, requests
        finally:
            remove_collector_sets("unix:/var/run/openvswitch/db.sock", NET.bridges, 8)


# Port 80 on the server: accepts and closes.
LISTEN_80 = textwrap.dedent(f"""\
    import socket
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("{NET.server_ip}", 80)); s.listen()
    while True:
        s.accept()[0].close()
    """)
# A TCP connection to the server's port argv[1]: "open", or why not.
CONNECT = textwrap.dedent(f"""\
    import socket, sys
    try:
        socket.create_connection(("{NET.server_ip}", int(sys.argv[1])), timeout=2)
        print("open")
    except OSError as e:
        print(e)
    """)


def test_telnet_through_a_policy_is_dropped_with_its_name_and_port_80_forwarded(sampled, tmp_path):
    topo, requests = sampled
    ipfix, hubble = free_port(), f"127.0.0.1:{free_port()}"
    args = ["--ipfix-listen", f"127.0.0.1:{ipfix}", "--hubble-listen", hubble, "--ipfix-ovsdb",
            "--ipfix-collector-set", "8"]
    (requests / "policy.yaml").write_text(ALLOW_80)
    server = subprocess.Popen(["ip", "netns", "exec", NS_S, "python3", "-c", LISTEN_80],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with ControllerProcess(topo, [requests], tmp_path / "ctl.log", extra_args=args) as ctl:
            NET.connect(ctl.of_port)
            ctl.wait_connections(lambda cs: cs.get(CONN, {}).get("state") == "up", 30)
            answers: dict[int, set[str]] = {80: set(), 23: set()}

            def seen(port: int) -> list[dict]:
                """A new connection to ``port``, then the flows to that port observe shows."""
                answers[port].add(in_client("python3", "-c", CONNECT, str(port)).strip())
                flows = [json.loads(line)["flow"] for line in observe(
                    hubble, "--port", str(port), "--last", "1000", "-o", "json").splitlines() if line.strip()]
                return [f for f in flows if f.get("l4", {}).get("TCP", {}).get("destination_port") == port]

            # Connections are made until their frames show (the bridges export samples once the
            # controller has made their collector sets, which it does as it starts).
            assert wait_for(lambda: seen(80), 30, 0.5), (answers, observed(hubble))
            assert wait_for(lambda: seen(23), 30, 0.5), (answers, observed(hubble))
            assert answers[80] == {"open"} and "open" not in answers[23], answers
            telnet, web = seen(23), seen(80)
            assert {(f["verdict"], f.get("drop_reason_desc")) for f in telnet} == {
                ("DROPPED", "POLICY_DENIED")}
            assert all("dropped: policy default/web" in f["Summary"] for f in telnet), telnet
            assert {(f["source"]["pod_name"], f["destination"]["pod_name"]) for f in telnet} == {
                ("client", "server")}
            assert {f["verdict"] for f in web} == {"FORWARDED"}
            assert ctl.errors() == []
    finally:
        server.kill()
        server.wait()
