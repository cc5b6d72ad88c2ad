"""Switches sharded over two controller processes, on real netdev OVS bridges and the emulated
Kubernetes API (Leases): a wire whose path crosses shards carries traffic between two namespaces; a
replica that stops (SIGSTOP: dead to its Lease, and a deposed holder once it wakes) loses its shard
to the other within the Lease period, traffic flows throughout, and nothing is programmed again.
"""

from __future__ import annotations

import json
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
from tests.bridge_fabric import BridgeFabric, square
from tests.echo_requests import write_echo_requests
from tests.k8s_emulator import Emulator

pytestmark = pytest.mark.ovs

TAG = f"sh{os.getpid() % 1000:03d}"
LEASE_S = 3.0
CONN = "default/client/nsm-1"


def sharded_square(tag: str = TAG, subnet: str = "10.9.61") -> BridgeFabric:
    """The square (A–D–B primary, A–C–B backup) with dpids such that A and B are in shard 0, C and D
    in shard 1: the wire's path crosses shards twice."""
    want = (0, 0, 1, 1)
    found: list[int] = []
    dpid = 0x5A0
    for shard in want:
        while shard_of(dpid, 2) != shard:
            dpid += 1
        found.append(dpid)
        dpid += 1
    base = square(tag)
    return BridgeFabric("sharded", tag, tuple(found), base.links, subnet)


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulated",
        "clusters": [{"name": "emulated", "cluster": {"server": server}}],
        "users": [{"name": "nobody", "user": {}}],
        "contexts": [{"name": "emulated", "context": {"cluster": "emulated", "user": "nobody"}}]}))
    return path


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout


def roles(bridge: str) -> dict[int, str]:
    """Controller port → role for the bridge's connected controllers (OVS's Controller table)."""
    uuids = set(re.findall(r"[0-9a-f-]{36}", sh("ovs-vsctl", "get", "bridge", bridge, "controller")))
    table = json.loads(sh("ovs-vsctl", "--format=json", "--columns=_uuid,target,role,is_connected",
                          "list", "Controller"))
    return {int(target.rpartition(":")[2]): role if isinstance(role, str) else ""
            for (_, uuid), target, role, connected in table["data"] if uuid in uuids and connected is True}


def flow_keys(bridge: str) -> set[str]:
    out = sh("ovs-ofctl", "-O", "OpenFlow13", "--no-stats", "dump-flows", bridge)
    return {line.strip() for line in out.splitlines() if "actions=" in line}


def test_a_wire_across_shards_survives_its_transit_shards_holder(tmp_path: Path) -> None:
    fabric = sharded_square()
    fabric.remove()
    procs: list[ControllerProcess] = []
    try:
        topo, _ = fabric.build(tmp_path)
        a, b = fabric.bridges[:2]
        requests = write_echo_requests(tmp_path / "requests", f"{a}/{a}-c", f"{b}/{b}-s")
        with Emulator() as api:
            config = kubeconfig(tmp_path / "kubeconfig", api.url)
            for name in ("replica-a", "replica-b"):
                args = ["--kubernetes", "--kubeconfig", str(config), "--leader-elect", "--shards", "2",
                        "--identity", name, "--lease-duration", str(LEASE_S), "--lease-name", TAG]
                procs.append(ControllerProcess(topo, [requests], tmp_path / f"{name}.log", extra_args=args))
            # Together, as a Deployment's replicas start (test_shards_late_ovs.py starts one later).
            starts = [threading.Thread(target=p.start) for p in procs]
            for thread in starts:
                thread.start()
            for thread in starts:
                thread.join()
            assert all(p.proc is not None and p.proc.poll() is None for p in procs)
            ports = {p.of_port: p for p in procs}
            for br in fabric.bridges:
                sh("ovs-vsctl", "set-controller", br, *(f"tcp:127.0.0.1:{p}" for p in ports))

            def masters() -> dict[str, int | None]:
                return {br: next((port for port, role in roles(br).items() if role == "master"), None)
                        for br in fabric.bridges}

            def diagnose() -> str:
                return "\n".join(f"--- {p.log_path.name}\n{p.log()[-5000:]}" for p in procs)

            # One master per bridge, shard by shard, and the two shards held by different replicas.
            assert wait_for(lambda: None not in masters().values(), 30, 0.2), (masters(), diagnose())
            held = masters()
            assert held[fabric.bridges[0]] == held[fabric.bridges[1]]
            assert held[fabric.bridges[2]] == held[fabric.bridges[3]]
            def spread() -> dict | None:
                now = masters()
                ends = {now[fabric.bridges[0]], now[fabric.bridges[3]]}
                return now if None not in now.values() and len(ends) == 2 else None

            held = wait_for(spread, 30, 0.2)
            assert held, f"both shards on one replica: {masters()}\n{diagnose()}"
            for p in procs:
                p.wait_connections(lambda c: c.get(CONN, {}).get("state") == "up", 30)
            client, server = fabric.namespaces[:2]
            sh("ip", "netns", "exec", client, "ping", "-c", "3", "-W", "2", fabric.server_ip)

            # Which replica programmed each hop: the status names the holder of each switch's shard.
            status = procs[0].status()["role"]["switches"]
            transit = ports[held[fabric.bridges[3]]]
            assert {sw: info["shard"] for sw, info in status.items()} == {
                fabric.bridges[0]: 0, fabric.bridges[1]: 0, fabric.bridges[2]: 1, fabric.bridges[3]: 1}
            before = {br: flow_keys(br) for br in fabric.bridges}

            # The transit shard's holder stops dead; ping runs meanwhile (5 s, a probe every 50 ms).
            ping = subprocess.Popen(["ip", "netns", "exec", client, "ping", "-i", "0.05", "-w",
                                     str(int(LEASE_S * 3)), "-q", fabric.server_ip],
                                    stdout=subprocess.PIPE, text=True)
            survivor = next(p for p in procs if p is not transit)
            mark = len(survivor.log())
            transit.proc.send_signal(signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                assert wait_for(lambda: set(masters().values()) == {survivor.of_port}, LEASE_S * 4, 0.1), \
                    (masters(), diagnose())
                moved = time.monotonic() - stopped
                assert moved <= LEASE_S * 2 + 2, f"the shard took {moved:.1f}s to move"
            finally:
                transit.proc.send_signal(signal.SIGCONT)
            out, _ = ping.communicate(timeout=LEASE_S * 4)
            sent, received = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", out).groups())
            assert received >= sent - 2, f"traffic stopped while the shard moved: {out}"

            # The woken, deposed holder learns it and writes nothing; the new master found every flow
            # right and sent none; the switches hold exactly what they held.
            assert wait_for(lambda: "stops leading" in transit.log(), LEASE_S * 3, 0.2), diagnose()
            time.sleep(1.0)
            assert {br: flow_keys(br) for br in fabric.bridges} == before
            assert not re.search(r"program \d+: \d+ flow changes", survivor.log()[mark:]), diagnose()
            assert set(masters().values()) == {survivor.of_port}
            rejected = [line for p in procs for line in p.errors()]
            assert all("OFPBRC_IS_SLAVE" in line for line in rejected), rejected
            survivor.wait_connections(lambda c: c.get(CONN, {}).get("state") == "up", 10)
            sh("ip", "netns", "exec", client, "ping", "-c", "2", "-W", "2", fabric.server_ip)
    finally:
        for p in procs:
            if p.proc is not None and p.proc.poll() is None:
                p.proc.send_signal(signal.SIGCONT)
            p.stop()
        fabric.remove()
