"""Flow events from real Open vSwitch: the controller samples every frame of a wire on the triangle of
tests/bridge_fabric.py, the bridges export IPFIX to its collector, and ``ryu-nsm observe`` (through
the controller's Hubble listener) shows each ping FORWARDED at the wire's ingress and delivery, in
order, and an unknown host's frames DROPPED on no wire. Names start with ``fx``.
"""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from ryu_nsm.lab.controller_process import ControllerProcess, free_port, wait_for
from ryu_nsm.lab.flow_sampling import hops, observed
from ryu_nsm.sources.ovsdb_ipfix import remove_collector_sets

from .bridge_fabric import triangle
from .two_bridges import add_host, sh

pytestmark = pytest.mark.ovs

NET = triangle(f"fx{os.getpid() % 10000:04d}")
A, B, C = NET.bridges
CONN = "default/client/nsm-1"
LEVEL = textwrap.dedent("""\
    apiVersion: ryu-nsm.io/v1alpha1
    kind: ServiceLevel
    metadata: {name: echo-sampled}
    spec: {networkService: echo, flowSampling: 1}
    """)
INTRUDER = f"{NET.tag}-x"


def sets() -> set[tuple[str, int, str]]:
    """(bridge, id, target) of the collector sets on this test's bridges."""
    bridges = {sh("ovs-vsctl", "get", "Bridge", br, "_uuid").strip(): br for br in NET.bridges}
    table = json.loads(sh("ovs-vsctl", "--format=json", "--columns=bridge,id,ipfix", "list",
                          "Flow_Sample_Collector_Set"))
    out = set()
    for (_, bridge), set_id, ipfix in table["data"]:
        if bridge in bridges:
            target = json.loads(sh("ovs-vsctl", "--format=json", "--columns=targets", "list", "IPFIX",
                                   ipfix[1]))["data"][0][0]
            out.add((bridges[bridge], set_id, target))
    return out


@pytest.fixture
def fabric(tmp_path):
    with NET.echo(tmp_path, LEVEL) as (topo, requests, _):
        try:
            yield topo, requests
        finally:
            sh("ip", "netns", "del", INTRUDER, check=False)
            # Left by a controller that did not stop cleanly: the sets would hold the bridge rows.
            remove_collector_sets("unix:/var/run/openvswitch/db.sock", NET.bridges, 7)


def test_pings_are_forwarded_at_ingress_and_delivery_and_an_intruder_is_dropped(fabric, tmp_path):
    topo, requests = fabric
    ipfix, hubble = free_port(), f"127.0.0.1:{free_port()}"
    # The controller creates the bridges' collector sets itself through OVSDB, and removes them.
    args = ["--ipfix-listen", f"127.0.0.1:{ipfix}", "--hubble-listen", hubble, "--flow-sampling", "1/64",
            "--ipfix-ovsdb", "--ipfix-collector-set", "7"]
    with ControllerProcess(topo, [requests], tmp_path / "ctl.log", extra_args=args) as ctl:
        expected = {(br, 7, f"127.0.0.1:{ipfix}") for br in NET.bridges}
        assert wait_for(lambda: sets() == expected, 10, 0.2), (sets(), ctl.log())
        NET.connect(ctl.of_port)
        ctl.wait_connections(lambda cs: cs.get(CONN, {}).get("state") == "up", 30)
        ping = sh("ip", "netns", "exec", NET.namespaces[0], "ping", "-c", "3", "-i", "0.2", "-W", "2",
                  NET.server_ip, check=False)
        assert " 0% packet loss" in ping, ping
        # Every echo request: ingress at A then delivery at B; every reply: ingress at B, delivery at A.
        requests_seen = wait_for(lambda: len(hops(observed(hubble), CONN, 8)) >= 6, 15, 0.5)
        flows = observed(hubble)
        assert requests_seen, flows
        assert hops(flows, CONN, 8) == [(A, False), (B, False)] * 3
        assert hops(flows, CONN, 0) == [(B, True), (A, True)] * 3
        assert all(f["verdict"] == "FORWARDED" for f in flows if CONN in f.get("Summary", ""))

        add_host(INTRUDER, f"{A}-x", "10.9.2.9/24", bridge=A, ofport=11, ipv6=False)
        mac = sh("ip", "netns", "exec", INTRUDER, "cat", "/sys/class/net/eth0/address").strip()
        sh("ip", "netns", "exec", INTRUDER, "ping", "-c", "1", "-W", "1", NET.server_ip, check=False)

        def dropped() -> list[dict]:
            """The intruder's frames (other drops: the link interfaces' own chatter, on no wire too)."""
            return [f for f in observed(hubble) if f.get("ethernet", {}).get("source") == mac]

        assert wait_for(dropped, 15, 0.5), observed(hubble)
        assert {f["verdict"] for f in dropped()} == {"DROPPED"}
        assert {(f["node_name"], f.get("drop_reason_desc")) for f in dropped()} == {(A, "UNKNOWN_SENDER")}
        assert all("no wire" in f["Summary"] for f in dropped())
        assert ctl.errors() == []
    assert sets() == set()
