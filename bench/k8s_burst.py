"""Kubernetes burst: N Pods at once, the controller's tail from the last Pod's watch event to forwarding.

The fabric, the objects and the controller are bench/k8s_latency.py's (a k=4 fat-tree of netdev
bridges, examples/demo-chain's 3-function chain with ten instances of each function, ``ryu-nsm
controller --kubernetes`` on the API server emulator of the tests); only the timing differs. After
the setup (the 2N function connections up), each of BURSTS bursts creates the N client Pods in one
turn of the emulated API server's loop (its watches then stream them back to back), polls the
controller's ``/status/states`` until every client connection is ``up`` (barrier-confirmed on every
switch of its path), then deletes them and waits until the bridges hold the setup flows again.

A Pod's latency runs from its watch event as the controller received it (its debug log of each
event, ``--log ryu_nsm.sources.kubernetes=debug``) to the first poll that shows its connection up.
Measuring from the receipt leaves the emulator's own create rate and delivery out (it shares this
process and its CPU with the bench): what remains is the controller's. Of every burst the last Pod
created is the tail: its latency says how long the controller takes to catch up with a burst, the
distribution over all Pods of all bursts how the burst is served meanwhile. A latency is late by at
most the time from the previous poll's request to the reply that showed it (logged).

The limit, measured in the same run on the same bridges reset to their setup flows: ``ovs-ofctl
--bundle add-flows`` of the last Pod's planned flows (one process per switch of its path, all at
once), the median of LIMIT_REPEATS. Three figure lines on stdout, details on stderr.

Usage (root, Open vSwitch up): ``k8s_burst.py [--quick] [--pods N] [--bursts B] [--poll-ms MS]``;
``--quick`` is one burst of 100 Pods.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import k8s_latency as kl
import yaml
from _scale_fabric import bridge_names, build_bridges, remove_bridges
from common import (
    BenchFailure,
    bundle_add_flows,
    check_bridges,
    figure,
    log_breakdown,
    percentile,
    planned_flows,
)

from ryu_nsm.lab.controller_process import ControllerProcess, wait_for
from ryu_nsm.sources.topology import load_topology

BURSTS = 3
SETUP_TIMEOUT = 300.0  # 2,000 NetworkServiceConnections written to the emulator on a loaded machine
LIMIT_REPEATS = 5
TAG = "bu"  # bridge names: bu<pid><switch>
LIMIT_LABEL = "ovs-ofctl --bundle of the last pod's flows"


def burst(run: kl.Run, api: kl.Emulator, ctl: ControllerProcess, poll: float, number: int
          ) -> dict[str, float]:
    """Create every client Pod, wait until all are up; each one's latency in seconds."""
    service = kl.service_name()
    bodies = [kl.client_pod(run, i, service) for i in range(run.n)]

    def create_all() -> float:
        # In one turn of the emulator's loop: a burst however slowly this process would create them
        # one call at a time.
        server = api.handler
        kind = server.kind_named("Pod", "v1")
        api.call(lambda: [server.create(kind, None, body) for body in bodies])
        return time.perf_counter()

    with ThreadPoolExecutor(1, thread_name_prefix="bench-create") as pool:
        t0_wall, t0 = time.time(), time.perf_counter()
        creating = pool.submit(create_all)
        watch = kl.watch_until_up(ctl, set(run.client_ids), creating, t0, poll)
        all_created = creating.result()
    arrived = kl.watch_events(ctl.log(), run.pods(), t0_wall - t0, since_wall=t0_wall)
    missing = set(run.client_ids) - arrived.keys()
    if missing:
        raise BenchFailure(f"burst {number}: {len(missing)} Pod watch events are not in the controller's "
                           f"log, e.g. {min(missing)}")
    latency = {cid: watch.first_up[cid] - arrived[cid] for cid in run.client_ids}
    last = run.client_ids[-1]
    print(f"burst {number}: {run.n} Pods created in {(all_created - t0) * 1000:.0f} ms, their events "
          f"received from +{(min(arrived.values()) - t0) * 1000:.0f} ms to "
          f"+{(max(arrived.values()) - t0) * 1000:.0f} ms, all up at "
          f"+{(max(watch.first_up.values()) - t0) * 1000:.0f} ms; last Pod {latency[last] * 1000:.0f} ms, "
          f"all Pods {kl.milliseconds(latency.values())}; {len(watch.status_seconds)} polls, median "
          f"{statistics.median(watch.status_seconds) * 1000:.0f} ms, late by at most "
          f"{max(watch.slack) * 1000:.0f} ms", file=sys.stderr)
    for line in log_breakdown(ctl.log(), t0_wall):
        print(line, file=sys.stderr)
    return latency


def clear(run: kl.Run, api: kl.Emulator, ctl: ControllerProcess, flows: kl.Flows,
          files: Mapping[str, Mapping[str, Path]], bridges: Mapping[str, str]) -> None:
    """Delete the client Pods; wait until only the function connections are left and the bridges hold
    exactly their setup flows again."""
    for i in range(run.n):
        api.delete("Pod", run.client(i), namespace=kl.NAMESPACE)
    want = {sw: len(flows.setup[br]) for sw, br in bridges.items()}

    def cleared() -> bool:
        try:
            status = ctl.status()
        except OSError:  # a status reply slower than its timeout: ask again
            return False
        held = {s["name"]: s["flows"] for s in status["switches"] if s["connected"]}
        connections = status["connections"]
        return len(connections) == 2 * run.n and all(c["state"] == "up" for c in connections) and held == want

    if not wait_for(cleared, kl.TIMEOUT, 0.5):
        raise BenchFailure(f"the client connections not all gone {kl.TIMEOUT:.0f} s after their deletion")
    check_bridges(bridges.values(), files["setup"], flows.setup, "after the client Pods' deletion")


def last_pod_limit(run: kl.Run, flows: kl.Flows, files: Mapping[str, Mapping[str, Path]],
                   bridges: Mapping[str, str], workdir: Path) -> float:
    """Median seconds of ``ovs-ofctl --bundle`` of the last Pod's flows into the bridges as set up."""
    mine = flows.by_client[run.client_ids[-1]]
    times = []
    for _ in range(LIMIT_REPEATS):
        kl.reset(mine, flows, files["setup"])  # only its path: the other bridges are not touched
        times.append(bundle_add_flows(kl.write_files(workdir, "last", mine), kl.TIMEOUT))
    print(f"last Pod by ovs-ofctl ({sum(map(len, mine.values()))} flows on {len(mine)} switches): median "
          f"{statistics.median(times) * 1000:.1f} ms, min {min(times) * 1000:.1f} ms, max "
          f"{max(times) * 1000:.1f} ms over {len(times)}", file=sys.stderr)
    return statistics.median(times)


def measure(n: int, bursts: int, poll: float) -> tuple[list[dict[str, float]], str, float]:
    """(each burst's latencies, the last client's id, the limit in seconds)."""
    run = kl.Run(n)
    with tempfile.TemporaryDirectory(prefix="ryu-nsm-k8s-burst-") as tmp:
        workdir = Path(tmp)
        topology_file = workdir / "topology.yaml"
        topology_file.write_text(yaml.safe_dump(kl.topology(run), sort_keys=False))
        fabric = load_topology(topology_file)
        bridges = bridge_names(fabric, TAG)
        objects = kl.setup_objects(run)
        requests = workdir / "requests"
        requests.mkdir()
        (requests / "setup.yaml").write_text(yaml.safe_dump_all(objects, sort_keys=False))
        clients = [kl.client_pod(run, i, kl.service_name()) for i in range(n)]
        (requests / "clients.yaml").write_text(yaml.safe_dump_all(clients, sort_keys=False))
        with ThreadPoolExecutor(1, thread_name_prefix="bench-plan") as pool:
            planning = pool.submit(planned_flows, topology_file, requests)
            remove_bridges(bridges.values())
            try:
                build_bridges(fabric, bridges, ())  # each bridge gets its controller once it listens
                with kl.Emulator() as api:
                    api.keep_recent_requests()  # kmock's request log slows every request down
                    reports = kl.Reports(api).start()
                    for body in objects:
                        api.create(body)
                    with kl.controller(topology_file, api, bridges.values(), workdir) as ctl:
                        flows = kl.split_flows(run, planning.result(), bridges)
                        files = {what: kl.write_files(workdir, what, getattr(flows, what))
                                 for what in ("full", "setup", "clients")}
                        begun = time.perf_counter()
                        # The status writer is done with the setup before the first burst.
                        kl.set_up(run, ctl, reports, flows, bridges, SETUP_TIMEOUT)
                        print(f"setup: {2 * n} function connections up in "
                              f"{time.perf_counter() - begun:.1f} s; controller pid {ctl.proc.pid}",
                              file=sys.stderr)
                        latencies = []
                        for number in range(1, bursts + 1):
                            latencies.append(burst(run, api, ctl, poll, number))
                            check_bridges(bridges.values(), files["full"], flows.full, f"burst {number}")
                            if ctl.errors():
                                raise BenchFailure(f"switches rejected messages: {ctl.errors()[:3]}")
                            if number < bursts:
                                clear(run, api, ctl, flows, files, bridges)
                limit = last_pod_limit(run, flows, files, bridges, workdir)
            finally:
                remove_bridges(bridges.values())
    return latencies, run.client_ids[-1], limit


def main(argv: list[str] | None = None) -> int:
    """Measure and print the three figure lines; 1 (with the reason on stderr) if a check failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one burst of 100 Pods")
    parser.add_argument("--pods", type=int, default=1000,
                        help="Pods in a burst, a multiple of 10 (default 1000)")
    parser.add_argument("--bursts", type=int, default=BURSTS, help=f"bursts (default {BURSTS})")
    parser.add_argument("--poll-ms", type=float, default=kl.POLL_MS,
                        help=f"pause from a status reply to the next poll (default {kl.POLL_MS})")
    opts = parser.parse_args(argv)
    n, bursts = (100, 1) if opts.quick else (opts.pods, opts.bursts)
    if n < kl.INSTANCES or n % kl.INSTANCES:
        parser.error(f"--pods must be a positive multiple of {kl.INSTANCES}")
    if bursts < 1:
        parser.error("--bursts must be at least 1")
    started = time.perf_counter()
    try:
        latencies, last, limit = measure(n, bursts, opts.poll_ms / 1000)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:  # BenchFailure, or no controller
        print(f"k8s burst benchmark FAILED: {exc}", file=sys.stderr)
        return 1
    tails = [latency[last] for latency in latencies]
    every = [t for latency in latencies for t in latency.values()]
    print(f"last Pod of each burst: {', '.join(f'{t * 1000:.0f} ms' for t in tails)}; every Pod of every "
          f"burst: {kl.milliseconds(every)}; whole benchmark {time.perf_counter() - started:.0f} s",
          file=sys.stderr)
    what = f"{n} pods at once, 3-function chain, fat-tree k={kl.K}"
    many = f", worst of {bursts} bursts" if bursts > 1 else ""
    print(figure(f"k8s burst, last pod's watch event to forwarding, {what}{many}", max(tails) * 1000, "ms",
                 limit * 1000, "ms", LIMIT_LABEL))
    for q in (0.5, 0.99):
        print(figure(f"k8s burst, watch event to forwarding p{q * 100:.0f} of every pod, {what}",
                     percentile(every, q) * 1000, "ms", limit * 1000, "ms", LIMIT_LABEL))
    return 0


if __name__ == "__main__":
    sys.exit(main())
