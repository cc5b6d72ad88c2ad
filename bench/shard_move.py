"""Time to move a shard: its holder killed → another replica confirmed MASTER on all its switches.

On real netdev bridges: the square of the tests with dpids split into two shards so that the wire
client → server crosses them (tests/test_shards_ovs.py), two ``ryu-nsm controller --leader-elect
--shards 2`` processes on the emulated Kubernetes API (Leases of ``LEASE_S`` seconds). Each round
kills (SIGKILL) the holder of shard 1 and polls the other replica's status until both bridges of
the shard have confirmed it MASTER (role replies); the killed replica is started again before the
next round. The limit is the Lease duration (a crashed holder's Lease must expire first).
``--quick``: one round (what CI runs); the default: three.

``--full`` (run it alone: three controllers at 10,000 connections fill a small machine) adds one
request at size with 1 and with 3 replicas: ``bench/scale.py``'s fat-tree (k=8, 80 bridges, each
listing every replica) and workload, ``--connections`` (default 10,000) declared in one file and up
on every replica (``/status/states``), their NetworkServiceConnections written into the emulator,
then ``--singles`` more clients (default 200), one file each, one at a time; a request's time is
from its file's rename to the first replica whose states show it up (every switch of its path
confirmed, in every shard). The 3-replica figures are given against the 1-replica ones.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import yaml
from _scale_fabric import Workload, bridge_names, build_bridges, documents, remove_bridges, topology
from common import BenchFailure, figure, milliseconds, percentile, print_figures, sh
from scale import cid
from scale_watch import written_up

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the fabric and the echo requests live with the tests

from ryu_nsm.lab.controller_process import ControllerProcess, wait_for  # noqa: E402
from ryu_nsm.sources.topology import load_topology  # noqa: E402
from tests.echo_requests import write_echo_requests  # noqa: E402
from tests.k8s_emulator import Emulator  # noqa: E402
from tests.test_shards_ovs import TAG, kubeconfig, roles, sharded_square  # noqa: E402

LEASE_S = 3.0
SIZE_LEASE_S = 15.0  # at size: renewals compete with planning 10,000 connections
K = 8  # scale.py's fat-tree: 80 bridges (a line of four cannot carry 10,000 wires: 4,093 tags a link)
LOAD_S = 900.0


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


def _sole_holder(procs: dict[str, ControllerProcess], bridges: list[str], timeout: float) -> str:
    """The one replica that says it is MASTER of every bridge of a shard: by its own word, since OVS's
    role column lags (a replica that just took the shard may still show as slave there, and killing
    the other moved nothing: a 0.24 s "move" was measured so)."""
    holders: list[str] = []

    def one() -> bool:
        holders[:] = [name for name, p in procs.items() if _confirmed(p, bridges)]
        return len(holders) == 1
    if not wait_for(one, timeout, 0.1):
        raise BenchFailure(f"no single replica says it holds the shard of {bridges}: {holders}")
    return holders[0]


def measure(rounds: int) -> list[str]:
    fabric = sharded_square()
    fabric.remove()
    procs: dict[str, ControllerProcess] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp_name, Emulator() as api:
            api.keep_recent_requests()  # kmock's request log slows every later Lease call down
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
                holder = _sole_holder(procs, shard1, 30)
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


def _up_count(replica: ControllerProcess) -> int:
    try:
        states = replica.states(timeout=60)
    except OSError:
        return 0
    return sum(state == "up" for state in states.values())


def _first_up(replicas: list[ControllerProcess], cid: str, timeout: float) -> float:
    """Seconds until some replica's states show ``cid`` up."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        for replica in replicas:
            try:
                state = replica.states((cid,)).get(cid)
            except OSError:
                continue
            if state == "up":
                return time.perf_counter() - start
            if state == "failed":
                reason = replica.connections()[cid].get("reason")
                raise BenchFailure(f"{cid} failed: {reason}")
        time.sleep(0.005)
    raise BenchFailure(f"{cid} not up within {timeout:.0f}s")


def request_latency(n: int, singles: int, replicas: int) -> list[float]:
    """Seconds to forwarding of ``singles`` requests arriving one at a time on ``n`` up connections
    (scale.py's fat-tree k=8 and workload), with ``replicas`` controllers (``--shards replicas``) on
    the emulated Kubernetes API."""
    work = Workload(K, n, singles)
    procs: list[ControllerProcess] = []
    bridges: dict[str, str] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp_name, Emulator(history=4 * (n + singles) + 1000) as api:
            api.keep_recent_requests()  # kmock's request log slows every later Lease call down
            tmp = Path(tmp_name)
            topo = tmp / "topology.yaml"
            topo.write_text(yaml.safe_dump(topology(work), sort_keys=False))
            requests = tmp / "requests"
            requests.mkdir()
            config = kubeconfig(tmp / "kubeconfig", api.url)
            for i in range(replicas):
                args = ["--kubernetes", "--kubeconfig", str(config), "--leader-elect",
                        "--shards", str(replicas), "--identity", f"replica-{i}",
                        "--lease-duration", str(SIZE_LEASE_S), "--watch-interval", "1",
                        "--lease-name", f"{TAG}-size", "--audit-interval", "3600"]
                procs.append(ControllerProcess(topo, [requests], tmp / f"replica-{i}.log", extra_args=args))
            starts = [threading.Thread(target=partial(p.start, 120)) for p in procs]
            for thread in starts:
                thread.start()
            for thread in starts:
                thread.join()
            fabric = load_topology(topo)
            bridges = bridge_names(fabric, "sm")
            build_bridges(fabric, bridges, [f"tcp:127.0.0.1:{p.of_port}" for p in procs])
            staged = tmp / "staged.yaml"
            staged.write_text(yaml.safe_dump_all(documents(work), sort_keys=False))
            os.rename(staged, requests / "loaded.yaml")
            if not wait_for(lambda: all(_up_count(p) >= n for p in procs), LOAD_S, 2.0):
                raise BenchFailure(f"{n} connections not up on {replicas} replicas within {LOAD_S:.0f}s: "
                                   f"{[_up_count(p) for p in procs]} up")
            # The status objects of the N are written into the emulator (in this process) first.
            if not wait_for(lambda: written_up(api) >= n, LOAD_S, 2.0):
                raise BenchFailure(f"{written_up(api)} of {n} NetworkServiceConnections Up in the API")
            times = []
            for j in range(singles):
                pod = work.extra_pod(j)
                staged.write_text(yaml.safe_dump(pod, sort_keys=False))
                os.rename(staged, requests / f"single-{j}.yaml")
                times.append(_first_up(procs, cid(pod), 60))
            errors = [line for p in procs for line in p.errors()]
            if any("OFPBRC_IS_SLAVE" not in line for line in errors):
                raise BenchFailure(f"switches refused messages: {errors[:3]}")
            print(f"{replicas} replicas: {milliseconds(times, 1)}", file=sys.stderr)
            return times
    finally:
        for p in procs:
            p.stop()
        remove_bridges(bridges.values())


def at_size(n: int, singles: int) -> list[str]:
    one, three = (request_latency(n, singles, replicas) for replicas in (1, 3))
    label = f"one request at {n} connections, 3 replicas"
    return [figure(f"{label}, p{q}", percentile(three, q / 100) * 1000, "ms",
                   percentile(one, q / 100) * 1000, "ms", "1 replica") for q in (50, 99)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one move instead of three")
    parser.add_argument("--full", action="store_true",
                        help="also one request at size with 1 and 3 replicas (run it alone)")
    parser.add_argument("--connections", type=int, default=10_000, help="with --full (default 10,000)")
    parser.add_argument("--singles", type=int, default=200, help="with --full (default 200)")
    args = parser.parse_args()

    def produce() -> list[str]:
        figures = measure(1 if args.quick else 3)
        return figures + at_size(args.connections, args.singles) if args.full else figures

    return print_figures("shard move", produce, (BenchFailure, OSError))


if __name__ == "__main__":
    sys.exit(main())
