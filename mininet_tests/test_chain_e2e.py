"""End to end on Mininet: the controller programs real OVS bridges and real traffic goes where it should."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from ryu_nsm.lab.controller_process import ControllerProcess
from ryu_nsm.lab.mininet_commands import wait_until
from ryu_nsm.lab.mininet_fabric import build_network
from ryu_nsm.sources.topology import load_topology

pytestmark = pytest.mark.mininet

ROOT = Path(__file__).resolve().parents[1]
GATEWAY_IP, SERVER_IP = "10.0.0.254", "10.0.0.2"
CHAIN = ("default/client/nsm-1", "default/firewall/nsm-1", "default/dpi/nsm-1")


def all_up(conns: dict) -> bool:
    return bool(conns) and all(c["state"] == "up" for c in conns.values())


@pytest.fixture
def chain(tmp_path, clean_mininet):
    """The demo chain: controller watching a copy of examples/demo-chain, Mininet fabric attached."""
    requests = tmp_path / "requests"
    shutil.copytree(ROOT / "examples" / "demo-chain", requests)
    topology = ROOT / "topologies" / "demo-chain.yaml"
    with ControllerProcess(topology, [requests], tmp_path / "controller.log") as ctl:
        with build_network(load_topology(topology), ctl.of_port) as net:
            ctl.wait_connections(lambda cs: all_up(cs) and set(CHAIN) <= cs.keys(), 60)
            yield ctl, net, requests
            assert ctl.errors() == [], "the switches rejected messages"


def seen(net, function: str) -> int:
    return net.function_counters(function)["seen"].packets


def test_chain_carries_ping_and_tcp_through_every_function_in_order(chain):
    ctl, net, _ = chain
    conns = ctl.connections()
    assert [conns[c]["endpoint"] for c in CHAIN] == ["firewall", "dpi", "vpn-gateway"]

    before = {f: seen(net, f) for f in ("firewall", "dpi")}
    result = net.ping("client", GATEWAY_IP, count=5, timeout=10)
    assert result.received == result.sent == 5
    for f in ("firewall", "dpi"):
        assert seen(net, f) - before[f] >= 10, f"{f} did not see every echo request and reply"
    assert net.tcp_check("client", "gateway", GATEWAY_IP, 80)

    # Order: what the firewall drops never reaches dpi; what dpi drops passed the firewall first.
    net.set_function_filter("firewall", drop_tcp_ports=[23])
    net.set_function_filter("dpi", drop_tcp_ports=[8080])
    fw_forward, dpi = net.function_counters("firewall")["in_to_out"].packets, seen(net, "dpi")
    assert not net.tcp_check("client", "gateway", GATEWAY_IP, 23, timeout=2)
    assert net.function_counters("firewall")["dropped"].packets > 0
    assert seen(net, "dpi") == dpi, "dpi saw telnet that the firewall should have dropped"
    assert not net.tcp_check("client", "gateway", GATEWAY_IP, 8080, timeout=2)
    assert net.function_counters("dpi")["dropped"].packets > 0
    forwarded = net.function_counters("firewall")["in_to_out"].packets
    assert forwarded > fw_forward, "8080 did not pass the firewall before dpi dropped it"


def test_host_without_a_request_cannot_reach_the_gateway(chain):
    _, net, _ = chain
    assert net.ping("client", GATEWAY_IP, count=2, timeout=5).received == 2
    assert net.ping("intruder", GATEWAY_IP, count=3, timeout=4).received == 0


def test_deleting_the_request_stops_the_traffic(chain):
    ctl, net, requests = chain
    assert net.ping("client", GATEWAY_IP, count=2, timeout=5).received == 2
    pods = requests / "pods.yaml"
    docs = [d for d in yaml.safe_load_all(pods.read_text()) if d and d["metadata"]["name"] != "client"]
    pods.write_text(yaml.safe_dump_all(docs))
    ctl.wait_connections(lambda cs: CHAIN[0] not in cs and all_up(cs), 30)
    assert wait_until(lambda: net.ping("client", GATEWAY_IP, count=1, timeout=2).received == 0, 10)
    # The rest of the chain is still there and still up.
    assert set(ctl.connections()) == set(CHAIN[1:])


def test_ring_link_down_moves_the_connection_and_traffic_resumes(tmp_path, clean_mininet):
    topology = ROOT / "topologies" / "ring.yaml"
    conn_id = "default/client/nsm-1"
    with ControllerProcess(topology, [ROOT / "examples" / "ring"], tmp_path / "controller.log") as ctl:
        with build_network(load_topology(topology), ctl.of_port) as net:
            conns = ctl.wait_connections(lambda cs: all_up(cs), 60)
            path = conns[conn_id]["path"]
            assert path[0] == "s1" and path[-1] == "s3" and len(path) == 3
            assert net.ping("client", SERVER_IP, count=3, timeout=5).received == 3

            net.net.configLinkStatus(path[0], path[1], "down")
            moved = ctl.wait_connections(
                lambda cs: cs[conn_id]["state"] == "up" and cs[conn_id]["path"] != path, 30)
            assert path[1] not in moved[conn_id]["path"]
            assert wait_until(lambda: net.ping("client", SERVER_IP, count=1, timeout=2).received == 1, 15)
            assert net.ping("client", SERVER_IP, count=5, timeout=5).received == 5
            history = [h["what"] for h in ctl.status()["history"] if h["connection"] == conn_id]
            assert any("moved" in h and "down" in h for h in history), history
            assert ctl.errors() == []
