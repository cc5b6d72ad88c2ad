"""The live controller on real netdev OVS bridges, with real frames between network namespaces.

Two bridges joined by a veth pair; a client namespace on one, a server namespace on the other.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ryu_nsm.core.flowspec import PIPELINE_COOKIE, wire_cookie
from ryu_nsm.lab.controller_process import ControllerProcess, wait_for

from .two_bridges import build_echo, remove, sh

pytestmark = pytest.mark.ovs

TAG = f"r{os.getpid() % 10000:04d}"  # unique names: bridges, veths and namespaces of this run
A, B = f"{TAG}a", f"{TAG}b"
NS_C, NS_S = f"{TAG}-c", f"{TAG}-s"
CONN = "default/client/nsm-1"


def build(tmp: Path) -> tuple[Path, Path]:
    """The two bridges with client and server, as (topology, requests); test_controller_grpc too."""
    return build_echo(tmp, "two-bridges", A, B, (0xA1, 0xB1), (NS_C, NS_S), "10.9.0")


def teardown():
    remove(A, B, (NS_C, NS_S))


@pytest.fixture
def bridges(tmp_path):
    teardown()
    try:
        yield build(tmp_path)
    finally:
        teardown()


def flows(bridge: str) -> dict[tuple, dict]:
    """Our flows on a bridge: (cookie, table, priority, match) → {'duration': s, 'actions': str}."""
    out = {}
    for line in sh("ovs-ofctl", "-O", "OpenFlow13", "dump-flows", bridge).splitlines():
        m = re.search(r"cookie=(0x[0-9a-f]+), duration=([\d.]+)s, table=(\d+).*?priority=(\d+),?(\S*) "
                      r"actions=(\S+)", line)
        if m:
            out[(int(m[1], 16), int(m[3]), int(m[4]), m[5])] = {"duration": float(m[2]), "actions": m[6]}
    return out


def ping(count: int = 2) -> bool:
    proc = subprocess.run(["ip", "netns", "exec", NS_C, "ping", "-c", str(count), "-i", "0.2", "-W", "1",
                           "10.9.0.2"], capture_output=True, text=True)
    return proc.returncode == 0


def connect(port: int) -> None:
    for br in (A, B):
        sh("ovs-vsctl", "set-controller", br, f"tcp:127.0.0.1:{port}")


def test_install_restart_without_churn_removal_and_foreign_flows(bridges, tmp_path):
    topo, requests = bridges
    assert not ping(1), "frames must not pass before the controller has programmed the wire"
    foreign = "cookie=0x1234,table=0,priority=50,in_port=99,actions=drop"
    log = tmp_path / "controller.log"
    with ControllerProcess(topo, [requests], log) as ctl:
        connect(ctl.of_port)
        sh("ovs-ofctl", "-O", "OpenFlow13", "add-flow", A, foreign)
        ctl.wait_connections(lambda cs: cs.get(CONN, {}).get("state") == "up", 30)
        assert ctl.states() == {CONN: "up"}  # the cheap endpoint says the same
        assert ctl.states([CONN, "default/nobody/nsm-1"]) == {CONN: "up"}  # only those asked, if known
        assert wait_for(ping, 10, 0.5), "client cannot reach the server through the wire"
        shown = subprocess.run([sys.executable, "-m", "ryu_nsm.cli", "status", "--url", ctl.url],
                               capture_output=True, text=True, timeout=30)
        assert shown.returncode == 0
        row = rf"{CONN}\s+echo\s+{A}/{A}-c → server \({B}/{B}-s\)\s+path {A}-{B}\s+up"
        assert re.search(row, shown.stdout), shown.stdout
        port = ctl.of_port
        assert ctl.errors() == []
    installed = {br: flows(br) for br in (A, B)}
    cookie = wire_cookie(CONN)
    assert any(k[0] == cookie for k in installed[A]) and any(k[0] == cookie for k in installed[B])
    assert ping(), "traffic keeps flowing while the controller is away (fail-mode secure)"

    # A new controller process on the same port: it reads the switches and changes nothing.
    audit = ["--audit-interval", "1"]
    log2 = tmp_path / "restart.log"
    with ControllerProcess(topo, [requests], log2, of_port=port, extra_args=audit) as ctl:
        ctl.wait_connections(lambda cs: cs.get(CONN, {}).get("state") == "up", 30)
        status = ctl.status()
        assert all(s["connected"] and s["flows"] for s in status["switches"])
        assert not [line for line in ctl.log().splitlines() if "program " in line], ctl.log()
        for br in (A, B):
            now = flows(br)
            assert now.keys() == installed[br].keys()
            assert all(now[k]["duration"] >= installed[br][k]["duration"] for k in now), "flows re-installed"
        assert ping()

        # Someone deletes the wire's flows on one bridge: the periodic audit puts them back.
        sh("ovs-ofctl", "-O", "OpenFlow13", "del-flows", B, f"cookie={cookie:#x}/-1")
        assert not any(k[0] == cookie for k in flows(B))
        assert wait_for(lambda: flows(B).keys() == installed[B].keys(), 10), "audit did not repair drift"
        assert wait_for(ping, 10, 0.5)

        # The request goes away: every flow with the wire's cookie goes, pipeline and foreign flows stay.
        (requests / "client.yaml").unlink()
        ctl.wait_connections(lambda cs: CONN not in cs, 15)
        assert wait_for(lambda: all(k[0] != cookie for br in (A, B) for k in flows(br)), 10)
        assert any(k[0] == PIPELINE_COOKIE for k in flows(A))
        assert (0x1234, 0, 50, "in_port=99") in flows(A)
        assert not ping(1)
        assert ctl.errors() == []


def test_probe_interval_zero_sends_no_link_probes(bridges, tmp_path):
    # The link between the bridges is measured within seconds by default (the time it took is the
    # window), and never with --probe-interval 0: links then keep their declared latency.
    topo, requests = bridges
    with ControllerProcess(topo, [requests], tmp_path / "probing.log") as ctl:
        connect(ctl.of_port)
        started = time.monotonic()
        assert wait_for(lambda: bool(ctl.status()["links"]), 20, 0.2)
        window = time.monotonic() - started
    quiet = ["--probe-interval", "0"]
    with ControllerProcess(topo, [requests], tmp_path / "quiet.log", extra_args=quiet) as ctl:
        connect(ctl.of_port)
        ctl.wait_connections(lambda cs: cs.get(CONN, {}).get("state") == "up", 30)
        assert not wait_for(lambda: bool(ctl.status()["links"]), window + 2.0, 0.2)
