"""A replica that joins a sharded set late gets its share handed over, on real netdev OVS bridges and
the emulated Kubernetes API: replica-a starts alone and masters every switch; replica-b starts later
and ends up MASTER of the shard the membership assigns it, while a ping every 50 ms crosses both
shards; the holder hands over gracefully (no switch refuses a message of either replica) and
nothing is programmed by anyone: the flow tables stay as they were.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ryu_nsm.k8s.membership import owners
from ryu_nsm.lab.controller_process import ControllerProcess, wait_for
from tests.echo_requests import write_echo_requests
from tests.k8s_emulator import Emulator
from tests.test_shards_ovs import CONN, LEASE_S, flow_keys, kubeconfig, roles, sh, sharded_square

pytestmark = pytest.mark.ovs

TAG = f"shl{os.getpid() % 100:02d}"
REPLICAS = ("replica-a", "replica-b")


def test_a_late_replica_takes_its_share_while_traffic_flows(tmp_path: Path) -> None:
    share = owners(2, REPLICAS)
    assert share == {0: "replica-a", 1: "replica-b"}, f"the test's identities must split the shards: {share}"
    fabric = sharded_square(TAG, "10.9.63")
    fabric.remove()
    procs: dict[str, ControllerProcess] = {}
    ping = None
    try:
        topo, _ = fabric.build(tmp_path)
        a, b = fabric.bridges[:2]
        requests = write_echo_requests(tmp_path / "requests", f"{a}/{a}-c", f"{b}/{b}-s")
        with Emulator() as api:
            api.keep_recent_requests()
            config = kubeconfig(tmp_path / "kubeconfig", api.url)
            for name in REPLICAS:
                args = ["--kubernetes", "--kubeconfig", str(config), "--leader-elect", "--shards", "2",
                        "--identity", name, "--lease-duration", str(LEASE_S), "--lease-name", TAG]
                procs[name] = ControllerProcess(topo, [requests], tmp_path / f"{name}.log", extra_args=args)
            first, late = procs["replica-a"], procs["replica-b"]
            port_of = {p.of_port: name for name, p in procs.items()}

            def masters() -> dict[str, str | None]:
                return {br: next((port_of[port] for port, role in roles(br).items() if role == "master"),
                                 None) for br in fabric.bridges}

            def diagnose() -> str:
                return "\n".join(f"--- {p.log_path.name}\n{p.log()[-6000:]}" for p in procs.values()
                                 if p.proc is not None)

            first.start()
            for br in fabric.bridges:
                sh("ovs-vsctl", "set-controller", br, f"tcp:127.0.0.1:{first.of_port}")
            assert wait_for(lambda: set(masters().values()) == {"replica-a"}, 30, 0.2), \
                (masters(), diagnose())
            first.wait_connections(lambda c: c.get(CONN, {}).get("state") == "up", 30)
            client = fabric.namespaces[0]
            sh("ip", "netns", "exec", client, "ping", "-c", "3", "-W", "2", fabric.server_ip)
            before = {br: flow_keys(br) for br in fabric.bridges}
            mark = len(first.log())

            # A ping every 50 ms across both shards while replica-b joins and takes its share.
            ping = subprocess.Popen(["ip", "netns", "exec", client, "ping", "-i", "0.05", "-w", "120", "-q",
                                     fabric.server_ip], stdout=subprocess.PIPE, text=True)
            late.start()
            joined = time.monotonic()
            for br in fabric.bridges:  # the same target for replica-a: OVS keeps its connection
                sh("ovs-vsctl", "set-controller", br, *(f"tcp:127.0.0.1:{p.of_port}" for p in procs.values()))
            want = {br: share[0] if i < 2 else share[1] for i, br in enumerate(fabric.bridges)}
            assert wait_for(lambda: masters() == want, LEASE_S * 6 + 10, 0.1), (masters(), diagnose())
            moved = time.monotonic() - joined
            assert wait_for(lambda: "stops leading" in first.log()[mark:], 5, 0.1), diagnose()
            late.wait_connections(lambda c: c.get(CONN, {}).get("state") == "up", 30)
            # The path after the move: 20 probes at 50 ms, every one answered.
            after = subprocess.run(["ip", "netns", "exec", client, "ping", "-c", "20", "-i", "0.05",
                                    "-W", "2", "-q", fabric.server_ip],
                                   capture_output=True, text=True, timeout=30).stdout
            assert " 20 received" in after, after
            ping.send_signal(signal.SIGINT)
            out, _ = ping.communicate(timeout=10)
            ping = None
            sent, received = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", out).groups())
            assert received >= sent - 2, f"traffic stopped while the shard moved: {out}\n{diagnose()}"

            handed = first.log()[mark:]
            assert "hands shard 1 over to replica-b" in handed, diagnose()
            assert "handing the lease over" in handed, diagnose()
            # Nothing programmed by anyone: the flows were right, and neither replica sent a change.
            assert {br: flow_keys(br) for br in fabric.bridges} == before, diagnose()
            for p in procs.values():
                log = p.log()[mark:] if p is first else p.log()
                assert not re.search(r"program \d+: [1-9]\d* flow changes", log), diagnose()
                assert p.errors() == [], p.errors()
            assert masters() == want
            print(f"late replica: MASTER of its share {moved:.1f}s after it started "
                  f"(settle {LEASE_S:.0f}s); ping {received}/{sent}")
    finally:
        if ping is not None:
            ping.kill()
            ping.communicate()
        for p in procs.values():
            p.stop()
        fabric.remove()

