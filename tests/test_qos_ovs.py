"""A service level on real Open vSwitch bridges: meters police the wire, IP frames carry the DSCP mark.

Two netdev bridges, a client and a server namespace, the controller as a child process, and real
TCP through the wire (iperf3): the rate with the level's limit stays under it, the rate without
it is far above it; the server counts the DSCP-marked packets it receives with nftables; a
restarted controller reads the meters back and changes nothing.
"""

import json
import os
import re
import subprocess
import textwrap
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ryu_nsm.core.flowspec import is_our_meter
from ryu_nsm.lab.controller_process import ControllerProcess, wait_for

from .two_bridges import build_echo, remove, sh

pytestmark = pytest.mark.ovs

TAG = f"q{os.getpid() % 10000:04d}"
A, B = f"{TAG}a", f"{TAG}b"
NS_C, NS_S = f"{TAG}-c", f"{TAG}-s"
CONN = "default/client/nsm-1"
LIMIT = 20_000_000  # bit/s
LEVEL = textwrap.dedent(f"""\
    apiVersion: ryu-nsm.io/v1alpha1
    kind: ServiceLevel
    metadata: {{name: echo-limited}}
    spec:
      networkService: echo
      rateLimit: "{LIMIT // 1_000_000}M"
      dscp: EF
    """)


@pytest.fixture
def wire(tmp_path):
    remove(A, B, (NS_C, NS_S))
    try:
        yield build_echo(tmp_path, "qos", A, B, (0xA2, 0xB2), (NS_C, NS_S), "10.9.1")
    finally:
        remove(A, B, (NS_C, NS_S))


def meters(bridge: str) -> dict[int, tuple[int, int]]:
    """Our meters on a bridge: id → (rate kbit/s, burst kbit)."""
    out = {}
    for m in re.finditer(r"meter=(\d+).*?\n?\s*type=drop rate=(\d+) burst_size=(\d+)",
                         sh("ovs-ofctl", "-O", "OpenFlow13", "dump-meters", bridge)):
        if is_our_meter(int(m[1])):
            out[int(m[1])] = (int(m[2]), int(m[3]))
    return out


def throughput(during=None) -> float:
    """TCP bit/s from client to server over 3 s (iperf3; the receiver's count); ``during()`` is
    called every 0.5 s while it runs."""
    server = subprocess.Popen(["ip", "netns", "exec", NS_S, "iperf3", "-s", "-1", "-B", "10.9.1.2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def ran() -> subprocess.CompletedProcess | None:
            client = ["ip", "netns", "exec", NS_C, "iperf3", "-c", "10.9.1.2", "-t", "3", "-J"]
            proc = subprocess.Popen(client, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            while during is not None and proc.poll() is None:
                during()
                try:
                    proc.wait(0.5)
                except subprocess.TimeoutExpired:
                    pass
            out, _ = proc.communicate(timeout=30)
            # iperf3 -J may exit 0 with only an error (e.g. connection refused): that is no run either.
            report = json.loads(out) if proc.returncode == 0 and out.strip() else {"error": "no output"}
            return None if "error" in report else report

        report = wait_for(ran, 10, 0.2)  # until the server listens
        assert report, "iperf3 did not run"
        return report["end"]["sum_received"]["bits_per_second"]
    finally:
        server.kill()
        server.wait()


def scrape(url: str, name: str) -> dict[tuple, float]:
    """The samples of one metric from the controller's /metrics: sorted labels → value."""
    with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples if s.name == name}


def count_ef_packets() -> int:
    text = sh("ip", "netns", "exec", NS_S, "nft", "list", "chain", "inet", "qos", "in")
    return int(re.search(r"counter packets (\d+)", text)[1])


def test_rate_limit_and_dscp_on_real_bridges(wire, tmp_path):
    topo, requests = wire
    for rule in ("add table inet qos", "add chain inet qos in { type filter hook input priority 0; }",
                 "add rule inet qos in ip dscp ef counter"):
        sh("ip", "netns", "exec", NS_S, "nft", rule)
    (requests / "level.yaml").write_text(LEVEL)
    counters_every_second = ["--counter-interval", "1"]
    with ControllerProcess(topo, [requests], tmp_path / "ctl.log", extra_args=counters_every_second) as ctl:
        for br in (A, B):
            sh("ovs-vsctl", "set-controller", br, f"tcp:127.0.0.1:{ctl.of_port}")
        ctl.wait_connections(lambda cs: cs.get(CONN, {}).get("state") == "up", 30)
        # One meter per direction, each at the switch where that direction enters the fabric.
        assert list(meters(A).values()) == [(LIMIT // 1000, LIMIT // 10_000)]  # burst: 0.1 s at the rate
        assert list(meters(B).values()) == [(LIMIT // 1000, LIMIT // 10_000)]
        rates: list[float] = []
        scraped: list[float] = []
        from_client = (("connection", CONN), ("from", "client"), ("network_service", "echo"))

        def sample() -> None:
            for entry in ctl.status()["connections"]:
                rates.append(entry.get("throughput", {}).get("from_client", 0.0))
            rate_metric = scrape(ctl.url, "ryu_nsm_connection_throughput_bits_per_second")
            scraped.append(rate_metric.get(from_client, 0.0))

        limited = throughput(during=sample)
        # A policer never lets TCP above its rate; TCP reaches a good part of it.
        assert 0.1 * LIMIT < limited < 1.1 * LIMIT, limited
        # Meanwhile the controller's own ingress counters saw the policed rate.
        seen = [rate for rate in rates if rate > 0]
        assert seen and max(seen) < 1.2 * LIMIT and max(seen) > 0.05 * LIMIT, rates
        # Prometheus scrapes of /metrics saw the same.
        assert 0.05 * LIMIT < max(scraped) < 1.2 * LIMIT, scraped
        up = (("connection", CONN), ("network_service", "echo"), ("state", "up"))
        assert scrape(ctl.url, "ryu_nsm_connection_up")[up] == 1.0
        assert wait_for(lambda: scrape(ctl.url, "ryu_nsm_link_latency_seconds"), 10), "no link measured"
        assert count_ef_packets() > 100  # the receiver saw EF-marked IP packets

        # Without the level the same wire runs unpoliced, and the meters go.
        (requests / "level.yaml").unlink()
        assert wait_for(lambda: not meters(A) and not meters(B), 15), "meters were not removed"
        before = count_ef_packets()
        free = throughput()
        assert free > 2 * LIMIT, free
        assert count_ef_packets() == before, "packets still marked without a level"

        (requests / "level.yaml").write_text(LEVEL)
        ctl.wait_connections(lambda cs: cs.get(CONN, {}).get("service_level"), 15)
        assert wait_for(lambda: len(meters(A)) == len(meters(B)) == 1, 15)
        port = ctl.of_port
        assert ctl.errors() == []
    installed = {br: meters(br) for br in (A, B)}

    # A restarted controller reads the meters back with the flows and changes nothing.
    with ControllerProcess(topo, [requests], tmp_path / "restart.log", of_port=port) as ctl:
        ctl.wait_connections(lambda cs: cs.get(CONN, {}).get("state") == "up", 30)
        assert not [line for line in ctl.log().splitlines() if "program " in line], ctl.log()
        assert {br: meters(br) for br in (A, B)} == installed
        assert ctl.errors() == []
