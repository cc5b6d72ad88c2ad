"""Time to move a shard: its holder killed → another replica confirmed MASTER on all its switches.

On real netdev bridges: the square of the tests with dpids split into two shards so that the wire
client → server crosses them (tests/test_shards_ovs.py), two ``ryu-nsm controller --leader-elect
--shards 2`` processes on the emulated Kubernetes API (Leases of ``LEASE_S`` seconds). Each round
kills (SIGKILL) the holder of shard 1 and polls the other replica's status until both bridges of
the shard have confirmed it MASTER (role replies); the killed replica is started again before the
next round. The limit is the Lease duration (a crashed holder's Lease must expire first).
``--quick``: one round.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

from common import BenchFailure, figure, print_figures, sh

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the fabric and the echo requests live with the tests

from ryu_nsm.lab.controller_process import ControllerProcess, wait_for  # noqa: E402
from tests.echo_requests import write_echo_requests  # noqa: E402
from tests.k8s_emulator import Emulator  # noqa: E402
from tests.test_shards_ovs import TAG, kubeconfig, roles, sharded_square  # noqa: E402

LEASE_S = 3.0


def _master(bridge: str) -> int | None:
    return next((port for port, role in roles(bridge).items() if role == "master"), None)


def _confirmed(replica: ControllerProcess, bridges: list[str]) -> bool:
    """The replica says each bridge confirmed it MASTER (its role reply; OVS's own Controller table
    refreshes the role column only every few seconds)."""
    try:
        switches = replica.status()["role"]["switches"]
    except OSError:
        return False
    return all(switches[br]["role"] == "master" for br in bridges)


def measure(rounds: int) -> list[str]:
    fabric = sharded_square()
    fabric.remove()
    procs: dict[str, ControllerProcess] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp_name, Emulator() as api:
            tmp = Path(tmp_name)
            topo, _ = fabric.build(tmp)
            a, b = fabric.bridges[:2]
            requests = write_echo_requests(tmp / "requests", f"{a}/{a}-c", f"{b}/{b}-s")
            config = kubeconfig(tmp / "kubeconfig", api.url)

            def make(name: str, of_port: int | None = None) -> ControllerProcess:
                args = ["--kubernetes", "--kubeconfig", str(config), "--leader-elect", "--shards", "2",
                        "--identity", name, "--lease-duration", str(LEASE_S), "--lease-name", TAG]
                return ControllerProcess(topo, [requests], tmp / f"{name}.log", of_port, args)

            procs = {name: make(name) for name in ("replica-a", "replica-b")}
            starts = [threading.Thread(target=p.start) for p in procs.values()]
            for thread in starts:
                thread.start()
            for thread in starts:
                thread.join()
            for br in fabric.bridges:  # every bridge lists both replicas as controllers
                sh("ovs-vsctl", "set-controller", br, *(f"tcp:127.0.0.1:{p.of_port}" for p in procs.values()))
            shard1 = fabric.bridges[2:]
            by_port = {p.of_port: name for name, p in procs.items()}
            moves = []
            for _ in range(rounds):
                if not wait_for(lambda: all(_master(br) in by_port for br in fabric.bridges), 30, 0.1):
                    raise BenchFailure("not every bridge has a master")
                holder = by_port[_master(shard1[0])]
                other = next(p for name, p in procs.items() if name != holder)
                procs[holder].proc.send_signal(signal.SIGKILL)
                procs[holder].proc.wait()
                killed = time.monotonic()
                moved = partial(_confirmed, other, shard1)
                if not wait_for(moved, LEASE_S * 5, 0.02):
                    raise BenchFailure(f"shard 1 did not move from {holder} within {LEASE_S * 5}s")
                moves.append(time.monotonic() - killed)
                procs[holder] = make(holder, procs[holder].of_port).start()
            return [figure(f"shard move, kill to MASTER confirmed ({len(moves)} moves, median)",
                           statistics.median(moves), "s", LEASE_S, "s", "lease duration")]
    finally:
        for p in procs.values():
            p.stop()
        fabric.remove()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one move instead of three")
    args = parser.parse_args()
    return print_figures("shard move", lambda: measure(1 if args.quick else 3), (BenchFailure, OSError))


if __name__ == "__main__":
    sys.exit(main())
