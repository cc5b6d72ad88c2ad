"""One more request at size from a Kubernetes watch event: scale.py's load, from the API instead of files.

scale.py measures one controller at 10,000 connections fed by the file source. Here the same fat-tree
and the same objects (_scale_fabric.py) come from the Kubernetes API, as in a cluster: the controller
runs with ``--kubernetes`` against the API server emulator of the tests (``tests/k8s_emulator.py``:
kmock on real HTTP, real list and watch streams, in a thread of this process), and writes every
connection's NetworkServiceConnection status there. The N objects are in the API before it starts
(its first LIST); once all N are up (barrier-confirmed on every switch of their path), and its
writes to the API (NetworkServiceConnections, Events) are done:

- *idle CPU* with the Kubernetes source (its watches and the status writer beside the audit, probes
  and counters), over one audit interval, against the design bound of 10 % of one core;
- *one more request from a watch event*: REQUESTS client Pods created one at a time, each timed from
  its ADDED watch event as the controller logged it (``--log ryu_nsm.sources.kubernetes=debug``, to
  the millisecond) to the first ``/status/states`` reply showing it up, p50 and p99. The time from
  the create call is logged beside: it adds the emulator's own queueing, which a real API server has
  less of. Limit: as scale.py's, the median over SAMPLE requests of ``ovs-ofctl --bundle`` putting
  one request's flows back into its switches, the controller gone.

Usage (root, Open vSwitch up): ``scale_watch.py [--quick] [--k K] [--connections N] [--requests R]
[--keep DIR]``; ``--quick`` is k=4, 200 connections, 10 requests.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from _scale_fabric import (
    Workload,
    bridge_names,
    build_bridges,
    documents,
    proc_usage,
    topology,
)
from common import BenchFailure, figure, milliseconds, percentile
from k8s_latency import kubeconfig, watch_events
from scale import (
    LOAD_TIMEOUT,
    TIMEOUT,
    Run,
    all_connected,
    limits,
    main,
    measured,
    note,
    requests_at_size,
    wait_up,
    work_dir,
)

from ryu_nsm.k8s.connection_status import API_VERSION, KIND, UP
from ryu_nsm.lab.controller_process import ControllerProcess, wait_for
from ryu_nsm.sources.topology import load_topology

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the API server emulator lives with the tests
from tests.k8s_emulator import Emulator  # noqa: E402

PREFIX = "sw"
QUIET_S = 3.0
WRITES_TIMEOUT = 900.0


@dataclass
class WatchRun(Run):
    """scale.py's run with the objects in the API server emulator."""

    api: Emulator | None = None

    def controller(self, log: str, of_port: int | None = None) -> ControllerProcess:
        config = kubeconfig(self.workdir / "kubeconfig", self.api.url)
        return ControllerProcess(self.workdir / "topology.yaml", [], self.workdir / log, of_port=of_port,
                                 extra_args=["--kubernetes", "--kubeconfig", str(config),
                                             "--audit-interval", str(self.audit_s),
                                             "--log", "ryu_nsm.sources.kubernetes=debug"])

    def drop(self, name: str, objects: list[dict]) -> float:
        """Create ``objects`` in the API; perf_counter just before the first create call."""
        t0 = time.perf_counter()
        for body in objects:
            self.api.create(body)
        return t0


def load_and_idle(run: WatchRun) -> str:
    """Start the controller on the loaded API; once every connection is up, its idle CPU figure."""
    work = run.work
    for body in documents(work):
        run.api.create(body)
    started = time.perf_counter()
    run.ctl.start()
    if not wait_for(lambda: all_connected(run), TIMEOUT, 0.1):
        raise BenchFailure(f"switches not all connected in {TIMEOUT:.0f} s")
    wait_up(run, work.n, LOAD_TIMEOUT, 0.5)
    up = time.perf_counter()
    # Idle is once the status writer has written every connection and its Events (kmock, in Python
    # in this process, takes ~20 ms a write): the API's resourceVersion stands still.
    # (A pause in the writes is no end of them: the first sync starts only once the plan is made.)
    if not wait_for(lambda: written_up(run.api) >= work.n, WRITES_TIMEOUT, 5.0):
        raise BenchFailure(f"{written_up(run.api)} of {work.n} NetworkServiceConnections Up in the API "
                           f"{WRITES_TIMEOUT:.0f} s after every connection was up")
    quiet(run.api, QUIET_S, WRITES_TIMEOUT)
    note(f"{work.n} connections from the API up {up - started:.1f} s after the controller started; its "
         f"writes (NetworkServiceConnections, Events) done {time.perf_counter() - up - QUIET_S:.0f} s later")
    _, cpu1 = proc_usage(run.ctl.proc.pid)
    wait_for(lambda: False, run.audit_s)
    rss, cpu2 = proc_usage(run.ctl.proc.pid)
    idle = (cpu2 - cpu1) / run.audit_s
    note(f"idle over {run.audit_s:.0f} s with the Kubernetes source: controller {idle * 100:.1f} % of a "
         f"core, RSS {rss / 2**20:.0f} MiB")
    what = f"{work.n} connections, fat-tree k={work.k}"
    return figure(f"controller idle CPU with the Kubernetes source, {what}", idle * 1000, "ms/s", 100, "ms/s",
                  "design bound 10 % of one core")


def quiet(api: Emulator, still: float, timeout: float) -> None:
    """Until nothing was written to the API for ``still`` seconds; BenchFailure after ``timeout``."""
    last, since, deadline = api.resource_version, time.perf_counter(), time.perf_counter() + timeout
    while time.perf_counter() - since < still:
        if time.perf_counter() > deadline:
            raise BenchFailure(f"the controller still writes to the API {timeout:.0f} s after the load")
        wait_for(lambda: False, 0.5)
        now = api.resource_version
        if now != last:
            last, since = now, time.perf_counter()


def written_up(api: Emulator) -> int:
    """NetworkServiceConnections in the API whose status says Up."""
    return sum(obj.get("status", {}).get("state") == UP for obj in api.objects(KIND, api_version=API_VERSION))


def measure(run: WatchRun) -> list[str]:
    work = run.work
    (run.workdir / "topology.yaml").write_text(yaml.safe_dump(topology(work), sort_keys=False))
    fabric = load_topology(run.workdir / "topology.yaml")
    run.bridges = bridge_names(fabric, PREFIX)
    run.ctl = run.controller("controller.log")
    build_bridges(fabric, run.bridges, f"tcp:127.0.0.1:{run.ctl.of_port}")
    lines = [load_and_idle(run)]
    wall_minus_perf = time.time() - time.perf_counter()
    answers = requests_at_size(run, "the create call")
    pods = {work.extra_pod(j)["metadata"]["name"]: conn for j, conn in enumerate(answers)}
    events = watch_events(run.ctl.log(), pods, wall_minus_perf)
    missing = answers.keys() - events.keys()
    if missing:
        raise BenchFailure(f"no watch event logged for {len(missing)} Pods, e.g. {sorted(missing)[:3]}")
    # A log time is cut to the millisecond: never later than the event, so at most 1 ms too long.
    latencies = [answers[conn].up - events[conn] for conn in answers]
    note(f"{len(latencies)} single requests at size, from the watch event: {milliseconds(latencies, 1)}")
    if run.ctl.errors():
        raise BenchFailure(f"switches rejected messages: {run.ctl.errors()[:3]}")
    run.ctl.stop()
    one, _, _ = limits(run, list(answers), [])
    what = f"{work.n} connections, fat-tree k={work.k}"
    for q in (50, 99):
        lines.append(figure(f"request to forwarding from a watch event p{q} at size, {what}",
                            percentile(latencies, q / 100) * 1000, "ms", one * 1000, "ms",
                            "ovs-ofctl --bundle of one request's flows"))
    return lines


def run_all(k: int, n: int, extra: int, audit_s: float, keep: Path | None = None) -> list[str]:
    started = time.perf_counter()
    with work_dir(keep, "ryu-nsm-scale-watch-") as workdir, Emulator(history=4 * (n + extra) + 1000) as api:
        api.keep_recent_requests()  # kmock's request log slows every request down
        return measured(WatchRun(Workload(k, n, extra), workdir, audit_s, api=api), measure, started)


if __name__ == "__main__":
    sys.exit(main(name="scale_watch", doc=__doc__, run=run_all))
