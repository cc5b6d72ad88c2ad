"""A chain across three shards held by three controller processes, on real netdev OVS bridges and the
emulated Kubernetes API: client → function → server, one bridge a shard, so both wires of the chain
cross shards. The holder of the function's shard is killed (SIGKILL): a survivor takes the shard
within the Lease period, a ping runs throughout, and the switches hold exactly the flows they held
(nothing programmed twice, no flow mod refused). (A late replica getting a shard handed over is
tested on the emulator alone, tests/test_shards.py.)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from ryu_nsm.k8s.shards import shard_of
from ryu_nsm.lab.controller_process import ControllerProcess, wait_for
from tests.bridge_fabric import BridgeFabric
from tests.k8s_emulator import Emulator
from tests.test_shards_ovs import flow_keys, kubeconfig, roles
from tests.two_bridges import sh

pytestmark = pytest.mark.ovs

TAG = f"sy{os.getpid() % 1000:03d}"
LEASE_S = 6.0  # three replicas on one busy emulator: renewals need the slack
SHARDS = 3
CONNS = ("default/client/nsm-1", "default/fw/nsm-1")
REPLICAS = ("replica-a", "replica-b", "replica-c")


def chain_line() -> BridgeFabric:
    """a (client) – c (function) – b (server), bridge i in shard i of three."""
    found, dpid = [], 0x5C0
    for shard in range(SHARDS):
        while shard_of(dpid, SHARDS) != shard:
            dpid += 1
        found.append(dpid)
        dpid += 1
    return BridgeFabric("sharded-chain", TAG, tuple(found),
                        ((0, 1, 2, 1, "cost: 1"), (2, 2, 1, 1, "cost: 1")), "10.9.62")


FUNCTION_NS = f"{TAG}-f"


def add_function(fabric: BridgeFabric, topo: Path) -> tuple[str, str]:
    """The function: a namespace whose two interfaces (ports 10 and 11 of bridge c) a Linux bridge
    joins, added to the topology; returns its two attachments."""
    c = fabric.bridges[2]
    ports = (f"{c}-fi", f"{c}-fo")
    sh("ip", "netns", "add", FUNCTION_NS)
    inside = "ip link add fb type bridge mcast_snooping 0 && ip link set fb up"
    for number, (port, name) in enumerate(zip(ports, ("eth0", "eth1"), strict=True), start=10):
        sh("ip", "link", "add", port, "type", "veth", "peer", "name", name, "netns", FUNCTION_NS)
        sh("ovs-vsctl", "add-port", c, port, "--", "set", "interface", port, f"ofport_request={number}")
        sh("ip", "link", "set", port, "up")
        inside += f" && ip link set {name} master fb && ip link set {name} up"
    sh("ip", "netns", "exec", FUNCTION_NS, "sh", "-ec", inside)
    doc = yaml.safe_load(topo.read_text())
    doc["hosts"].append({"name": "fw", "role": "function", "interfaces": [
        {"name": "eth0", "switch": c, "port": 10, "port_name": ports[0]},
        {"name": "eth1", "switch": c, "port": 11, "port_name": ports[1]}]})
    topo.write_text(yaml.safe_dump(doc))
    return f"{c}/{ports[0]}", f"{c}/{ports[1]}"


def write_chain_requests(directory: Path, client: str, fw_in: str, fw_out: str, server: str) -> Path:
    """Service ``chained``: the client enters at the function, whose outgoing side reaches the server."""
    directory.mkdir(parents=True, exist_ok=True)
    service = {"apiVersion": "networkservicemesh.io/v1", "kind": "NetworkService",
               "metadata": {"name": "chained"},
               "spec": {"payload": "ETHERNET", "matches": [
                   {"source_selector": {"app": "fw"},
                    "routes": [{"destination_selector": {"app": "server"}}]},
                   {"source_selector": {}, "routes": [{"destination_selector": {"app": "fw"}}]}]}}

    def endpoint(name: str, at: str) -> dict:
        return {"apiVersion": "networkservicemesh.io/v1", "kind": "NetworkServiceEndpoint",
                "metadata": {"name": name, "annotations": {"ryu-nsm.io/attachments": at}},
                "spec": {"network_service_names": ["chained"],
                         "network_service_labels": {"chained": {"labels": {"app": name}}}}}

    def pod(name: str, url: str, at: str) -> dict:
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "annotations": {
            "networkservicemesh.io": url, "ryu-nsm.io/attachments": f"nsm-1={at}"}}}

    (directory / "service.yaml").write_text(yaml.safe_dump_all(
        [service, endpoint("fw", fw_in), endpoint("server", server)]))
    (directory / "pods.yaml").write_text(yaml.safe_dump_all(
        [pod("client", "kernel://chained/nsm-1", client),
         pod("fw", "kernel://chained/nsm-1?app=fw", fw_out)]))
    return directory


def chain_up(connections: dict[str, dict]) -> bool:
    return all(connections.get(conn, {}).get("state") == "up" for conn in CONNS)


def forwarded(function_ns: str) -> int:
    """Frames the function received on its two interfaces (requests on one, replies on the other)."""
    return sum(int(sh("ip", "netns", "exec", function_ns, "cat",
                          f"/sys/class/net/{name}/statistics/rx_packets"))
               for name in ("eth0", "eth1"))


def confirmed(replica: ControllerProcess, bridge: str) -> bool:
    """The replica says ``bridge`` confirmed it MASTER (its role reply: OVS's Controller table
    refreshes its role column only every few seconds)."""
    try:
        return replica.status()["role"]["switches"][bridge]["role"] == "master"
    except (OSError, KeyError):
        return False


def ping_during(client_ns: str, ip: str, seconds: float) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", client_ns, "ping", "-i", "0.05", "-w",
                             str(int(seconds)), "-q", ip], stdout=subprocess.PIPE, text=True)


def lost(ping: subprocess.Popen, timeout: float) -> tuple[int, str]:
    out, _ = ping.communicate(timeout=timeout)
    sent, received = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", out).groups())
    return sent - received, out


def test_a_chain_across_three_shards_survives_a_killed_replica(tmp_path: Path) -> None:
    fabric = chain_line()
    fabric.remove()
    sh("ip", "netns", "del", FUNCTION_NS, check=False)
    procs: dict[str, ControllerProcess] = {}
    try:
        topo, _ = fabric.build(tmp_path)
        a, b, c = fabric.bridges
        fw_in, fw_out = add_function(fabric, topo)
        requests = write_chain_requests(tmp_path / "requests", f"{a}/{a}-c", fw_in, fw_out, f"{b}/{b}-s")
        with Emulator() as api:
            config = kubeconfig(tmp_path / "kubeconfig", api.url)

            def make(name: str) -> ControllerProcess:
                args = ["--kubernetes", "--kubeconfig", str(config), "--leader-elect", "--shards",
                        str(SHARDS), "--identity", name, "--lease-duration", str(LEASE_S),
                        "--lease-name", TAG]
                return ControllerProcess(topo, [requests], tmp_path / f"{name}.log", extra_args=args)

            procs = {name: make(name) for name in REPLICAS}
            starts = [threading.Thread(target=p.start) for p in procs.values()]
            for thread in starts:
                thread.start()
            for thread in starts:
                thread.join()
            assert all(p.proc is not None and p.proc.poll() is None for p in procs.values())
            for br in fabric.bridges:
                sh("ovs-vsctl", "set-controller", br, *(f"tcp:127.0.0.1:{p.of_port}" for p in procs.values()))
            by_port = {p.of_port: name for name, p in procs.items()}

            def masters() -> dict[str, str | None]:
                return {br: next((by_port.get(port) for port, role in roles(br).items() if role == "master"),
                                 None) for br in fabric.bridges}

            def spread() -> dict | None:
                """Bridge → its master, when each replica masters one (by the replicas' role replies)."""
                live = {name: p for name, p in procs.items() if p.proc.poll() is None}
                now = {br: next((name for name, p in live.items() if confirmed(p, br)), None)
                       for br in fabric.bridges}
                return now if None not in now.values() and len(set(now.values())) == SHARDS else None

            def diagnose() -> str:
                return "\n".join(f"--- {p.log_path.name}\n{p.log()[-4000:]}" for p in procs.values())

            # Each replica masters one bridge (a late loser of a race gets a shard handed over).
            held = wait_for(spread, LEASE_S * 10, 0.2)
            assert held, f"shards not one a replica: {masters()}\n{diagnose()}"
            for p in procs.values():
                p.wait_connections(chain_up, 30)
            client = fabric.namespaces[0]
            through = forwarded(FUNCTION_NS)
            sh("ip", "netns", "exec", client, "ping", "-c", "3", "-W", "2", fabric.server_ip)
            assert forwarded(FUNCTION_NS) - through >= 6, "the echoes did not pass the function"
            before = {br: flow_keys(br) for br in fabric.bridges}

            # The function's shard holder is killed: its Lease expires, a survivor takes the shard.
            victim = held[c]
            survivors = [p for name, p in procs.items() if name != victim]
            marks = {p: len(p.log()) for p in survivors}
            ping = ping_during(client, fabric.server_ip, LEASE_S * 4)
            procs[victim].proc.send_signal(signal.SIGKILL)
            procs[victim].proc.wait()
            killed = time.monotonic()
            assert wait_for(lambda: any(confirmed(p, c) for p in survivors), LEASE_S * 4, 0.1), \
                (masters(), diagnose())
            moved = time.monotonic() - killed
            # Expiry, then the survivor's patience: 2 × retry_period (lease / 7.5) × (held + rank) at most.
            assert moved <= LEASE_S * (1 + 2 * SHARDS / 7.5) + 3, f"the shard took {moved:.1f}s to move"
            missed, out = lost(ping, LEASE_S * 5)
            assert missed <= 2, f"traffic stopped while the shard moved: {out}"
            time.sleep(1.0)
            assert {br: flow_keys(br) for br in fabric.bridges} == before, "a flow changed"
            for p in survivors:
                assert not re.search(r"program \d+: \d+ flow changes", p.log()[marks[p]:]), diagnose()
                assert p.errors() == [], f"a switch refused {p.log_path.name}'s messages"

            rejected = [line for p in procs.values() for line in p.errors()]
            assert all("OFPBRC_IS_SLAVE" in line for line in rejected), rejected
    finally:
        for p in procs.values():
            p.stop()
        fabric.remove()
        sh("ip", "netns", "del", FUNCTION_NS, check=False)
