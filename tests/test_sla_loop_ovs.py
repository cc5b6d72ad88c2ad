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
import signal
import subprocess
import textwrap

import pytest

from ryu_nsm.controlproc import ControllerProcess, wait_for

from .triangle import Triangle

pytestmark = pytest.mark.ovs

NET = Triangle(f"l{os.getpid() % 10000:04d}")
A, B, C = NET.bridges
NS_C = NET.namespaces[0]
CONN = "default/client/nsm-1"
LEVEL = textwrap.dedent("""\
    apiVersion: ryu-nsm.io/v1alpha1
    kind: ServiceLevel
    metadata: {name: echo-fast}
    spec: {networkService: echo, maxLatency: 10ms}
    """)


@pytest.fixture
def triangle(tmp_path):
    with NET.echo(tmp_path, LEVEL, impaired=True) as built:
        yield built


def path(ctl) -> list[str]:
    return ctl.connections().get(CONN, {}).get("path", [])


def test_a_link_that_gets_slow_during_traffic_loses_the_connection_and_traffic_goes_on(triangle, tmp_path):
    topo, requests, element = triangle
    with ControllerProcess(topo, [requests], tmp_path / "ctl.log") as ctl:
        NET.connect(ctl.of_port)
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
            pinger.send_signal(signal.SIGINT)  # ping sums up on SIGINT
            out, _ = pinger.communicate(timeout=10)
        replies = [float(m[1]) for m in re.finditer(r"time=([\d.]+) ms", out)]
        sent = int(re.search(r"(\d+) packets transmitted", out)[1])
        # The replies before the move took the slow link (60 ms more), the last ones the fast way round.
        assert max(replies) > 60 and min(replies[-10:]) < 30, replies
        assert len(replies) >= 0.9 * sent, f"{sent - len(replies)} of {sent} pings lost"
        history = ctl.status()["history"]
        assert any("echo-fast" in h["what"] and "latency" in h["what"] for h in history), history
        assert ctl.errors() == []
