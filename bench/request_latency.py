"""Request to forwarding: declared YAML → barrier-confirmed flows on real OVS bridges, live controller.

Four netdev bridges in a line (1 - 2 - 3 - 4), joined by OVS patch ports, run by ``ryu-nsm
controller`` in a child process. N clients sit on bridge 1 and N endpoints alternate between
bridges 3 and 4, so every wire crosses transit switches. One NetworkService routes client i to
endpoint i by a label template (``n: "{{.n}}"``). Host ports are only declared: flows for absent
ports are accepted and the controller uses the declared numbers; link ports exist and are up.

Once every switch is connected and its flows read, one YAML file with all N Pods, N endpoints and
the service is renamed into the watched directory (t0), and the status endpoint is polled until all
N connections are ``up`` (every switch on the path has confirmed its flows by barrier). A
connection's time is the reply of the first poll that shows it up, so it is late by at most the time
from the previous poll's request to that reply; the largest such slack is logged. Polling is not
free: the controller builds each status under the lock its core runs under, so the figures are what
a client of the status endpoint sees. The controller log's own timings are logged beside them.

The limit, measured in the same run on the same bridges: ``ovs-ofctl --bundle add-flows`` of
exactly the flows ``ryu-nsm plan --json`` plans for the same topology and requests, into the four
cleared bridges one after the other (best of three). Both installs are checked to leave each bridge
with exactly the planned flows (count, and ``ovs-ofctl diff-flows``: cookies, matches, actions), and
every client is checked to be wired to its own endpoint. Two figure lines on stdout, details on stderr.

Usage (root, Open vSwitch up): ``request_latency.py [--quick] [--connections N]``; ``--quick`` is 100.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import (
    BenchFailure,
    check_bridges,
    figure,
    flow_count,
    log_breakdown,
    ofctl,
    percentile,
    planned_flows,
    sh,
)

from ryu_nsm.core.flowspec import PIPELINE_COOKIE
from ryu_nsm.lab.controller_process import ControllerProcess, wait_for

SERVICE = "bench"
LIMIT_LABEL = "ovs-ofctl --bundle of the same flows"
TIMEOUT = 60.0
POLL_SECONDS = 0.02
LIMIT_REPEATS = 3
FIRST_HOST_PORT = 10
# (a, a_port, b, b_port) by bridge index: a line 0 - 1 - 2 - 3.
LINKS = ((0, 1, 1, 1), (1, 2, 2, 1), (2, 2, 3, 1))
DPID_BASE = 0x5E000000





@dataclass(frozen=True)
class Setup:
    """The bridge names of this run and the number of connections."""

    bridges: tuple[str, ...]
    n: int

    def endpoint_bridge(self, i: int) -> str:
        """Endpoints alternate between the last two bridges."""
        return self.bridges[2 + i % 2]


def make_setup(n: int) -> Setup:
    """Bridge names unique to this process, short enough for ``{bridge}-c{i}`` port names."""
    tag = f"rq{os.getpid() % 10000:04d}"
    return Setup(tuple(f"{tag}{k}" for k in range(1, 5)), n)


def topology_yaml(setup: Setup) -> str:
    """The fabric: four switches in a line, one host per client and per endpoint interface."""
    lines = ["name: request-latency", "switches:"]
    lines += [f"  - {{name: {br}, dpid: {DPID_BASE + k:#x}}}" for k, br in enumerate(setup.bridges)]
    lines.append("links:")
    lines += [f"  - {{a: {setup.bridges[a]}, a_port: {ap}, b: {setup.bridges[b]}, b_port: {bp}}}"
              for a, ap, b, bp in LINKS]
    lines.append("hosts:")
    per_bridge: dict[str, int] = {}
    for i in range(setup.n):
        for role, br in (("c", setup.bridges[0]), ("e", setup.endpoint_bridge(i))):
            port = FIRST_HOST_PORT + per_bridge.get(br, 0)
            per_bridge[br] = per_bridge.get(br, 0) + 1
            lines.append(f"  - {{name: {role}{i}, interfaces: "
                         f"[{{name: eth0, switch: {br}, port: {port}, port_name: {br}-{role}{i}}}]}}")
    return "\n".join(lines) + "\n"


def requests_yaml(setup: Setup) -> str:
    """The service, N endpoints labelled n=i and N Pods asking with n=i, as one YAML stream."""
    docs = [
        f"apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {{name: {SERVICE}}}\n"
        f"spec:\n  payload: ETHERNET\n  matches:\n  - source_selector: {{}}\n"
        f"    routes:\n    - destination_selector: {{n: \"{{{{.n}}}}\"}}\n"
    ]
    for i in range(setup.n):
        br = setup.endpoint_bridge(i)
        docs.append(
            f"apiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\n"
            f"metadata:\n  name: e{i}\n  annotations: {{ryu-nsm.io/attachments: {br}/{br}-e{i}}}\n"
            f"spec:\n  network_service_names: [{SERVICE}]\n"
            f"  network_service_labels: {{{SERVICE}: {{labels: {{n: \"w{i}\"}}}}}}\n"
        )
    first = setup.bridges[0]
    for i in range(setup.n):
        docs.append(
            f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: c{i}\n  annotations:\n"
            f"    networkservicemesh.io: kernel://{SERVICE}/nsm-1?n=w{i}\n"
            f"    ryu-nsm.io/attachments: nsm-1={first}/{first}-c{i}\n"
        )
    return "---\n".join(docs)


def build_fabric(setup: Setup) -> None:
    """Netdev bridges (secure, OpenFlow 1.3, fixed dpids) and patch-port links on the declared ports."""
    for k, br in enumerate(setup.bridges):
        sh("ovs-vsctl", "add-br", br, "--", "set", "bridge", br, "datapath_type=netdev",
           f"other-config:datapath-id={DPID_BASE + k:016x}", "fail_mode=secure", "protocols=OpenFlow13")
    for a, ap, b, bp in LINKS:
        ends = ((setup.bridges[a], ap, setup.bridges[b], bp), (setup.bridges[b], bp, setup.bridges[a], ap))
        cmd = ["ovs-vsctl"]
        for br, port, peer_br, peer_port in ends:
            cmd += ["--", "add-port", br, f"{br}-eth{port}", "--", "set", "interface", f"{br}-eth{port}",
                    "type=patch", f"options:peer={peer_br}-eth{peer_port}", f"ofport_request={port}"]
        sh(*cmd)


def remove_fabric(setup: Setup) -> None:
    """Delete this run's bridges (their patch ports go with them)."""
    for br in setup.bridges:
        subprocess.run(["ovs-vsctl", "--if-exists", "del-br", br], capture_output=True, timeout=TIMEOUT)


def connect(setup: Setup, port: int) -> None:
    """Point every bridge at the controller."""
    for br in setup.bridges:
        sh("ovs-vsctl", "set-controller", br, f"tcp:127.0.0.1:{port}")


def pipeline_only(ctl: ControllerProcess, setup: Setup, pipeline: dict[str, int]) -> bool:
    """Every switch connected, its flows read and its pipeline flows confirmed: nothing in flight."""
    try:
        switches = {s["name"]: s for s in ctl.status()["switches"]}
    except OSError:
        return False
    return all(switches.get(br, {}).get("connected") and switches[br]["flows"] == pipeline[br]
               for br in setup.bridges)


@dataclass(frozen=True)
class Watch:
    """What polling the status saw after t0."""

    first_up: dict[str, float]  # connection id → seconds from t0 to the reply that first showed it up
    endpoints: dict[str, str]  # connection id → endpoint it was given
    # Per poll that first showed some connection up: seconds from the previous poll's request to this
    # poll's reply, the most a first-seen time can be late.
    slack: tuple[float, ...]
    polls: int
    status_seconds: tuple[float, ...]


def watch_until_up(ctl: ControllerProcess, n: int, t0: float) -> Watch:
    """Poll the status every POLL_SECONDS until ``n`` connections are up; BenchFailure on a failure."""
    first_up: dict[str, float] = {}
    endpoints: dict[str, str] = {}
    slack: list[float] = []
    durations: list[float] = []
    previous_request = t0
    polls = 0
    while len(first_up) < n:
        asked = time.perf_counter()
        if asked - t0 > TIMEOUT:
            raise BenchFailure(f"only {len(first_up)} of {n} connections up after {TIMEOUT:.0f} s")
        try:
            connections = ctl.status()["connections"]
        except OSError as exc:  # a status reply slower than its timeout: count it, ask again
            print(f"status poll failed: {exc}", file=sys.stderr)
            continue
        replied = time.perf_counter()
        polls += 1
        durations.append(replied - asked)
        failed = [c for c in connections if c["state"] == "failed"]
        if failed:
            raise BenchFailure(f"{len(failed)} connections failed, e.g. {failed[0]}")
        new = [c for c in connections if c["state"] == "up" and c["id"] not in first_up]
        for c in new:
            first_up[c["id"]] = replied - t0
            endpoints[c["id"]] = c["endpoint"]
        if new:
            slack.append(replied - previous_request)
        previous_request = asked
        time.sleep(max(0.0, POLL_SECONDS - (time.perf_counter() - asked)))
    return Watch(first_up, endpoints, tuple(slack), polls, tuple(durations))


def controller_run(setup: Setup, topology: Path, requests: Path, documents: str,
                   flows: dict[str, list[str]], files: dict[str, Path], workdir: Path) -> Watch:
    """Start the controller on the empty ``requests``, connect, drop ``documents`` in, watch to all up.

    The bridges are checked before the controller goes: del-controller flushes their flows.
    """
    pipeline_cookie = f"cookie={PIPELINE_COOKIE:#x},"
    pipeline = {br: sum(line.startswith(pipeline_cookie) for line in flows[br]) for br in setup.bridges}
    log = workdir / "controller.log"
    # No flow audit during the run: it would reread every switch at a random moment of the measurement.
    ctl = ControllerProcess(topology, [requests], log,
                            extra_args=["--watch-interval", "0.05", "--audit-interval", "3600"])
    ctl.start()
    try:
        connect(setup, ctl.of_port)
        if not wait_for(lambda: pipeline_only(ctl, setup, pipeline), TIMEOUT, 0.05):
            raise BenchFailure(f"switches not connected with their pipeline in {TIMEOUT:.0f} s: "
                               f"{ctl.status()['switches']}")
        staged = workdir / "staged.yaml"
        staged.write_text(documents)
        t0_wall = time.time()
        t0 = time.perf_counter()
        os.rename(staged, requests / "bench.yaml")
        watch = watch_until_up(ctl, setup.n, t0)
        for line in log_breakdown(ctl.log(), t0_wall):
            print(line, file=sys.stderr)
        if ctl.errors():
            raise BenchFailure(f"switches rejected messages: {ctl.errors()[:3]}")
        check_bridges(setup.bridges, files, flows, "controller")
        wrong = {cid: ep for cid, ep in watch.endpoints.items()
                 if ep != "e" + cid.split("/")[1].removeprefix("c")}
        if wrong:
            raise BenchFailure(f"{len(wrong)} clients got the wrong endpoint, e.g. {list(wrong.items())[:3]}")
        return watch
    finally:
        ctl.stop()
        for br in setup.bridges:
            subprocess.run(["ovs-vsctl", "del-controller", br], capture_output=True, timeout=TIMEOUT)


def ofctl_limit(setup: Setup, files: dict[str, Path], flows: dict[str, list[str]]) -> float:
    """Best of LIMIT_REPEATS: ``ovs-ofctl --bundle add-flows`` into every cleared bridge in turn."""
    best = float("inf")
    for attempt in range(LIMIT_REPEATS):
        for br in setup.bridges:
            ofctl("del-flows", br)
            if flow_count(br):
                raise BenchFailure(f"{br} still has flows after del-flows")
        start = time.perf_counter()
        for br in setup.bridges:
            ofctl("--bundle", "add-flows", br, str(files[br]))
        elapsed = time.perf_counter() - start
        check_bridges(setup.bridges, files, flows, "ovs-ofctl --bundle")
        print(f"limit run {attempt + 1}: {elapsed * 1000:.0f} ms", file=sys.stderr)
        best = min(best, elapsed)
    return best


def measure(n: int) -> tuple[float, float, float, float]:
    """(total, p50, p99, limit) in seconds for ``n`` connections, every install checked."""
    setup = make_setup(n)
    with tempfile.TemporaryDirectory(prefix="ryu-nsm-latency-") as tmp:
        workdir = Path(tmp)
        topology = workdir / "topology.yaml"
        topology.write_text(topology_yaml(setup))
        requests = workdir / "requests"
        requests.mkdir()
        documents = requests_yaml(setup)
        planned_dir = workdir / "planned"
        planned_dir.mkdir()
        (planned_dir / "bench.yaml").write_text(documents)
        flows = planned_flows(topology, planned_dir)
        files = {}
        for br in setup.bridges:
            files[br] = workdir / f"{br}.flows"
            files[br].write_text("".join(line + "\n" for line in flows[br]))
        print(f"{n} connections, {sum(map(len, flows.values()))} flows planned: "
              + ", ".join(f"{br} {len(flows[br])}" for br in setup.bridges), file=sys.stderr)
        remove_fabric(setup)
        try:
            build_fabric(setup)
            watch = controller_run(setup, topology, requests, documents, flows, files, workdir)
            limit = ofctl_limit(setup, files, flows)
        finally:
            remove_fabric(setup)
    times = list(watch.first_up.values())
    total = max(times)
    print(f"controller: all {n} up at {total * 1000:.0f} ms after t0; {watch.polls} status polls, "
          f"status took median {statistics.median(watch.status_seconds) * 1000:.1f} ms, "
          f"max {max(watch.status_seconds) * 1000:.1f} ms; a first-seen time is late by at most "
          f"{max(watch.slack) * 1000:.0f} ms", file=sys.stderr)
    return total, percentile(times, 0.5), percentile(times, 0.99), limit


def main(argv: list[str] | None = None) -> int:
    """Measure and print the two figure lines; 1 (with the reason on stderr) if a check failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 connections")
    parser.add_argument("--connections", type=int, default=1000, help="connections (default 1000)")
    opts = parser.parse_args(argv)
    n = 100 if opts.quick else opts.connections
    try:
        total, p50, p99, limit = measure(n)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:  # BenchFailure, or no controller
        print(f"request latency benchmark FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"per connection: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms", file=sys.stderr)
    print(figure(f"request to forwarding, {n} connections", total, "s", limit, "s", LIMIT_LABEL))
    print(figure(f"request to forwarding p99, {n} connections", p99, "s", limit, "s", LIMIT_LABEL))
    return 0


if __name__ == "__main__":
    sys.exit(main())
