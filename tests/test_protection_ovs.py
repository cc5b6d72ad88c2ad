"""A protected connection on real bridges survives a cut of its primary link with the controller gone:
the fast-failover groups switch to the backup in the data plane, at an end or by cranking back."""

import os
import re
import signal
import subprocess
import textwrap

import pytest

from ryu_nsm.core.flows import CRANKBACK
from ryu_nsm.lab.controller_process import ControllerProcess, wait_for

from .bridge_fabric import square, triangle
from .two_bridges import sh

pytestmark = pytest.mark.ovs

NET = triangle(f"p{os.getpid() % 10000:04d}")
A, B, C = NET.bridges
SQUARE = square(f"q{os.getpid() % 10000:04d}")
CONN = "default/client/nsm-1"
LEVEL = textwrap.dedent("""\
    apiVersion: ryu-nsm.io/v1alpha1
    kind: ServiceLevel
    metadata: {name: echo-safe}
    spec: {networkService: echo, protection: disjoint}
    """)


@pytest.fixture
def triangle(tmp_path):
    with NET.echo(tmp_path, LEVEL) as (topo, requests, _):
        yield topo, requests


@pytest.fixture
def square_fabric(tmp_path):
    with SQUARE.echo(tmp_path, LEVEL) as (topo, requests, _):
        yield topo, requests


def groups(bridge: str) -> list[str]:
    return [line for line in sh("ovs-ofctl", "-O", "OpenFlow13", "dump-groups", bridge).splitlines()
            if "type=ff" in line]


def test_a_cut_primary_link_heals_in_the_data_plane_without_the_controller(triangle, tmp_path):
    topo, requests = triangle
    with ControllerProcess(topo, [requests], tmp_path / "ctl.log") as ctl:
        NET.connect(ctl.of_port)
        shown = ctl.wait_connections(lambda cs: cs.get(CONN, {}).get("state") == "up", 30)[CONN]
        assert shown["path"] == [A, B] and shown["backup_path"] == [A, C, B]
        assert len(groups(A)) == len(groups(B)) == 1
        assert ctl.errors() == []
    assert packets(C, 1, "dl_vlan=") == 0

    def on_backup() -> None:
        assert wait_for(lambda: packets(C, 1, "dl_vlan=") >= 10, 5), "no frame took the backup through C"

    # The controller is gone (fail-mode secure keeps everything); now the primary link is cut.
    ping_through_cut(NET, lambda: sh("ip", "link", "set", NET.ends[0][0], "down"), on_backup)


def ping_through_cut(net, cut, after_cut=lambda: None) -> None:
    """Ping every 10 ms from the client while ``cut()`` cuts a link (and ``after_cut()`` checks what
    it will): a 20-ping run after the cut loses nothing, and the stream lost at most 20 echoes."""
    client = ["ip", "netns", "exec", net.namespaces[0], "ping", "-W", "1"]
    warm = subprocess.run([*client, "-c", "3", "-i", "0.2", net.server_ip], capture_output=True, text=True)
    assert warm.returncode == 0, warm.stdout
    pinger = subprocess.Popen([*client, "-i", "0.01", net.server_ip], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        client_port = (net.bridges[0], 0, "in_port=10")
        sent_before = packets(*client_port)
        assert wait_for(lambda: packets(*client_port) >= sent_before + 10, 5)  # it is pinging
        cut()
        after_cut()
        result = subprocess.run([*client, "-c", "20", "-i", "0.05", net.server_ip], capture_output=True,
                                text=True)
    finally:
        pinger.send_signal(signal.SIGINT)  # ping sums up on SIGINT
        out, _ = pinger.communicate(timeout=10)
    assert result.returncode == 0 and " 0% packet loss" in result.stdout, result.stdout
    sent = int(re.search(r"(\d+) packets transmitted", out)[1])
    received = int(re.search(r"(\d+) received", out)[1])
    # The switch-over is the datapath noticing its port went down: a handful of 10 ms pings at most.
    assert sent > 20 and sent - received <= 20, out


def packets(bridge: str, table: int, flows: str) -> int:
    """The packets counted by ``bridge``'s flows in ``table`` whose line contains ``flows``."""
    out = sh("ovs-ofctl", "-O", "OpenFlow13", "dump-flows", bridge, f"table={table}")
    return sum(int(re.search(r"n_packets=(\d+)", line)[1]) for line in out.splitlines() if flows in line)


def test_a_cut_further_along_the_primary_heals_by_cranking_back_without_the_controller(
        square_fabric, tmp_path):
    topo, requests = square_fabric
    a, b, c, d = SQUARE.bridges
    with ControllerProcess(topo, [requests], tmp_path / "ctl.log") as ctl:
        SQUARE.connect(ctl.of_port)
        shown = ctl.wait_connections(lambda cs: cs.get(CONN, {}).get("state") == "up", 30)[CONN]
        assert shown["path"] == [a, d, b] and shown["backup_path"] == [a, c, b]
        # A group where each direction leaves along the primary: A and D one way, D and B the other.
        assert [len(groups(br)) for br in (a, b, c, d)] == [1, 1, 0, 2]
        assert ctl.errors() == []
    crankback = (a, 1, f"priority={CRANKBACK},")
    assert packets(*crankback) == 0
    # The controller is gone (fail-mode secure keeps everything). Cut D–B, the primary's second
    # link, at D: D cranks A's frames back, A puts them on the backup; B sees its port to D lose
    # carrier and sends the replies on the backup itself.

    def cranked_back() -> None:
        assert wait_for(lambda: packets(*crankback) >= 10, 5), "no frame came back to A from D"

    ping_through_cut(SQUARE, lambda: sh("ip", "link", "set", SQUARE.ends[1][0], "down"), cranked_back)
