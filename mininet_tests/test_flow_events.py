"""Flow events on the demo chain in Mininet: with every frame sampled, ``ryu-nsm observe`` shows each
ping FORWARDED at the ingress and delivery of every wire of the chain, in order, and the intruder's
frames DROPPED on no wire."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ryu_nsm.lab.controller_process import ControllerProcess, free_port, wait_for
from ryu_nsm.lab.flow_sampling import collector_sets, observed
from ryu_nsm.lab.mininet_fabric import build_network
from ryu_nsm.sources.topology import load_topology

pytestmark = pytest.mark.mininet

ROOT = Path(__file__).resolve().parents[1]
GATEWAY_IP = "10.0.0.254"
CHAIN = ("default/client/nsm-1", "default/firewall/nsm-1", "default/dpi/nsm-1")
PINGS = 3


@pytest.fixture
def sampled_chain(tmp_path, clean_mininet):
    """The demo chain with the controller sampling every frame and the bridges exporting to it."""
    requests = tmp_path / "requests"
    shutil.copytree(ROOT / "examples" / "demo-chain", requests)
    topology = ROOT / "topologies" / "demo-chain.yaml"
    ipfix, hubble = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    args = ["--ipfix-listen", ipfix, "--hubble-listen", hubble, "--flow-sampling", "1"]
    fabric = load_topology(topology)
    bridges = [switch.name for switch in fabric.switches]
    with ControllerProcess(topology, [requests], tmp_path / "controller.log", extra_args=args) as ctl:
        with build_network(fabric, ctl.of_port) as net, collector_sets(bridges, ipfix):
            ctl.wait_connections(lambda cs: all(cs.get(c, {}).get("state") == "up" for c in CHAIN), 60)
            yield ctl, net, hubble
            assert ctl.errors() == [], "the switches rejected messages"


def chain_hops(flows: list[dict], icmp_type: int) -> list[tuple[str, str]]:
    """(switch, connection) of each ICMPv4 flow of ``icmp_type`` on a wire of the chain, in order."""
    out = []
    for flow in flows:
        l4 = flow.get("l4", {})
        if "ICMPv4" not in l4 or l4["ICMPv4"].get("type", 0) != icmp_type:
            continue
        wire = next((c for c in CHAIN if f"({c})" in flow.get("Summary", "")), None)
        if wire is not None:
            assert flow["verdict"] == "FORWARDED", flow
            out.append((flow["node_name"], wire))
    return out


def test_every_ping_is_forwarded_at_each_hop_in_order(sampled_chain):
    ctl, net, hubble = sampled_chain
    conns = ctl.connections()
    # Each wire is sampled where the frame enters it and where it is delivered: its path's two ends.
    forward = [(conns[c]["path"][i], c) for c in CHAIN for i in (0, -1)]
    result = net.ping("client", GATEWAY_IP, count=PINGS, timeout=10)
    assert result.received == result.sent == PINGS
    assert wait_for(lambda: len(chain_hops(observed(hubble), 0)) >= PINGS * len(forward), 15, 0.5)
    flows = observed(hubble)
    assert chain_hops(flows, 8) == forward * PINGS
    back = [(conns[c]["path"][i], c) for c in reversed(CHAIN) for i in (-1, 0)]
    assert chain_hops(flows, 0) == back * PINGS


def test_the_intruders_frames_are_dropped_on_no_wire(sampled_chain):
    _, net, hubble = sampled_chain
    mac = net.host("intruder").MAC()
    result = net.ping("intruder", GATEWAY_IP, count=2, timeout=4)
    assert result.received == 0

    def dropped() -> list[dict]:
        return [f for f in observed(hubble) if f.get("ethernet", {}).get("source") == mac]

    assert wait_for(dropped, 15, 0.5), observed(hubble)
    assert {(f["verdict"], f["node_name"], f.get("drop_reason_desc")) for f in dropped()} == {
        ("DROPPED", "s1", "UNKNOWN_SENDER")}
    assert all("no wire" in f["Summary"] for f in dropped())
