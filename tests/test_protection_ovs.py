"""A protected connection on real bridges survives a cut of its primary link with the controller gone:
the fast-failover groups switch to the backup in the data plane."""

import os
import re
import signal
import subprocess
import textwrap

import pytest

from ryu_nsm.controlproc import ControllerProcess, wait_for

from .triangle import Triangle
from .two_bridges import sh

pytestmark = pytest.mark.ovs

NET = Triangle(f"p{os.getpid() % 10000:04d}")
A, B, C = NET.bridges
NS_C = NET.namespaces[0]
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
    # The controller is gone (fail-mode secure keeps everything); now the primary link is cut.
    pinger = subprocess.Popen(["ip", "netns", "exec", NS_C, "ping", "-i", "0.01", "-W", "1", "10.9.2.2"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert wait_for(lambda: pinger.poll() is None, 2)  # running
        sh("ip", "link", "set", NET.direct[0], "down")
        result = subprocess.run(["ip", "netns", "exec", NS_C, "ping", "-c", "20", "-i", "0.05", "-W", "1",
                                 "10.9.2.2"], capture_output=True, text=True)
    finally:
        pinger.send_signal(signal.SIGINT)  # ping sums up on SIGINT
        out, _ = pinger.communicate(timeout=10)
    assert result.returncode == 0 and " 0% packet loss" in result.stdout, result.stdout
    sent = int(re.search(r"(\d+) packets transmitted", out)[1])
    received = int(re.search(r"(\d+) received", out)[1])
    # The switch-over is the datapath noticing its port went down: a handful of 10 ms pings at most.
    assert sent - received <= 20, out
