"""NSM end to end: a gRPC client asks the forwarders for kernel interfaces, the controller binds the ports
they mark in OVSDB, programs the path across two bridges, and frames pass between the namespaces; Close
removes interface, OVS port and flows. Restarting the forwarder and the controller keeps the traffic.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from nsm_api import networkservice_pb2_grpc
from nsm_api.connection_pb2 import Connection, Mechanism
from nsm_api.connectioncontext_pb2 import ConnectionContext, IPContext
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from ryu_nsm.core.flowspec import wire_cookie
from ryu_nsm.lab.controller_process import ControllerProcess, wait_for

from .echo_requests import echo_service
from .two_bridges import link_bridges, remove, sh, write_topology

pytestmark = pytest.mark.ovs

ROOT = Path(__file__).resolve().parents[1]
TAG = f"e{os.getpid() % 10000:04d}"
A, B = f"{TAG}a", f"{TAG}b"
NS_C, NS_S = f"{TAG}-c", f"{TAG}-s"
CLIENT_IP, SERVER_IP = "10.78.0.1", "10.78.0.2"


def teardown() -> None:
    remove(A, B, (NS_C, NS_S))


@pytest.fixture
def fabric(tmp_path):
    """Two netdev bridges joined by a veth link, two empty namespaces, and the controller's inputs."""
    teardown()
    try:
        link_bridges(A, B, 0xE1, 0xE2)
        for ns in (NS_C, NS_S):
            sh("ip", "netns", "add", ns)
        topology = write_topology(tmp_path / "topo.yaml", "nsm-e2e", A, B, 0xE1, 0xE2)
        requests = tmp_path / "requests"
        requests.mkdir()
        (requests / "service.yaml").write_text(echo_service("nsm"))
        yield topology, requests
    finally:
        teardown()


@contextmanager
def forwarder(bridge: str, sock: Path, log: Path):
    """``ovs-forwarder`` for one bridge, in a child process; yields a NetworkService stub."""
    def start() -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "ovs_forwarder.cli", "--bridge", bridge,
                                 "--listen", f"unix://{sock}", "--name", f"fwd-{bridge}"],
                                cwd=ROOT, stdout=log.open("a"), stderr=subprocess.STDOUT)
        if not wait_for(lambda: sock.exists() or proc.poll() is not None, 20) or proc.poll() is not None:
            raise AssertionError(f"forwarder did not come up:\n{log.read_text()}")
        return proc

    state = {"proc": start()}

    def restart() -> None:
        state["proc"].send_signal(signal.SIGTERM)
        state["proc"].wait(10)
        state["proc"] = start()

    channel = grpc.insecure_channel(f"unix://{sock}")
    try:
        grpc.channel_ready_future(channel).result(timeout=10)
        yield networkservice_pb2_grpc.NetworkServiceStub(channel), restart
    finally:
        channel.close()
        state["proc"].send_signal(signal.SIGTERM)
        try:
            state["proc"].wait(10)
        except subprocess.TimeoutExpired:
            state["proc"].kill()


def kernel_request(conn_id: str, netns: str, address: str, **params: str) -> NetworkServiceRequest:
    side = {"dst_ip_addrs": [address]} if params.get("ryu-nsm.io/role") == "endpoint" else {
        "src_ip_addrs": [address]}
    context = ConnectionContext(ip_context=IPContext(**side))
    mechanism = Mechanism(cls="LOCAL", type="KERNEL",
                          parameters={"name": "nsm-1", "inodeURL": f"/var/run/netns/{netns}", **params})
    return NetworkServiceRequest(
        connection=Connection(id=conn_id, network_service="echo", context=context),
        mechanism_preferences=[mechanism])


def ping(count: int = 1) -> bool:
    return subprocess.run(["ip", "netns", "exec", NS_C, "ping", "-c", str(count), "-i", "0.2", "-W", "1",
                           SERVER_IP], capture_output=True).returncode == 0


def our_flows(bridge: str, cookie: int) -> list[str]:
    return [line for line in sh("ovs-ofctl", "-O", "OpenFlow13", "dump-flows", bridge).splitlines()
            if f"cookie={cookie:#x}," in line]


def test_grpc_request_to_forwarding_and_close_removes_everything(fabric, tmp_path):
    topology, requests = fabric
    with forwarder(A, tmp_path / "a.sock", tmp_path / "a.log") as (fwd_a, restart_a), \
            forwarder(B, tmp_path / "b.sock", tmp_path / "b.log") as (fwd_b, _), \
            ControllerProcess(topology, [requests], tmp_path / "ctl.log", extra_args=["--ovsdb"]) as ctl:
        for br in (A, B):
            sh("ovs-vsctl", "set-controller", br, f"tcp:127.0.0.1:{ctl.of_port}")

        served = fwd_b.Request(kernel_request("server-1", NS_S, f"{SERVER_IP}/24", **{
            "ryu-nsm.io/role": "endpoint", "ryu-nsm.io/endpoint": "server"}), timeout=20)
        asked = fwd_a.Request(kernel_request("client-1", NS_C, f"{CLIENT_IP}/24"), timeout=20)
        assert served.state == asked.state == 0  # UP
        assert asked.path.path_segments[asked.path.index].name == f"fwd-{A}"
        attachment = asked.mechanism.parameters["ryu-nsm.io/attachment"]
        assert attachment.startswith(f"{A}/")

        conns = ctl.wait_connections(lambda cs: any(c["state"] == "up" for c in cs.values()), 30)
        (conn,) = conns.values()
        assert conn["client_attachment"] == attachment and conn["endpoint"] == "server"
        assert conn["path"] == [A, B]
        assert wait_for(ping, 10, 0.3), "no frames pass between the plumbed namespaces"

        # The forwarder and then the controller restart: traffic keeps flowing, nothing is rebuilt.
        restart_a()
        assert ping(3)
        ctl.stop()
        assert ping(3)
        before = len(ctl.log())
        ctl.start()
        ctl.wait_connections(lambda cs: [c["state"] for c in cs.values()] == ["up"], 30)
        assert ping(3)
        changes = [line for line in ctl.log()[before:].splitlines() if "flow changes" in line]
        assert not changes, f"the restarted controller changed flows: {changes}\n{ctl.log()[before:]}"

        cookie = wire_cookie(conn["id"])
        assert our_flows(A, cookie) and our_flows(B, cookie)
        port = attachment.split("/")[1]
        fwd_a.Close(asked, timeout=20)
        assert port not in sh("ovs-vsctl", "list-ports", A).split()
        assert "nsm-1" not in sh("ip", "netns", "exec", NS_C, "ip", "-br", "link")
        ctl.wait_connections(lambda cs: cs == {}, 30)
        assert wait_for(lambda: not our_flows(A, cookie) and not our_flows(B, cookie), 10)
        assert not ping(1)
        assert ctl.errors() == []
