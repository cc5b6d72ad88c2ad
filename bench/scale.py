"""One controller at size on real Open vSwitch: steady state, one more request, a link failure, a restart.

A fat-tree (k=8: 80 netdev bridges in one Open vSwitch, fail-mode secure, OpenFlow 1.3, built in one
``ovs-vsctl`` transaction) runs N connections from the file source (10,000 by default): clients in
the pods without functions onto a client → firewall → dpi → gateway chain (functions in pods 1–3,
each firewall and dpi asking onwards) and onto eight plain services (servers spread over every pod).
Hosts are only declared (see _scale_fabric.py). The N come in one file renamed into the watched
directory; once all are up (barrier-confirmed on every switch of their path):

- *memory*: the controller's RSS growth per connection, against the size of the flows per
  connection as ``ovs-ofctl dump-flows`` text (ovs-vswitchd's own growth is logged, but earlier
  benchmarks of the same run leave its heap grown);
- *idle CPU*: the controller's CPU over one audit interval of idleness (audit, link probes,
  counters), against the design bound of 10 % of one core;
- *one more request*: REQUESTS single Pods, each in a file of its own renamed in, one at a time; from
  the rename to the first ``/status/states`` reply showing it up (polled every POLL_S), p50 and p99.
  The file source wakes on inotify (its 1 s poll is the fallback), as a deployment's would.
  Limit: the median, over SAMPLE of them, of ``ovs-ofctl --bundle`` putting that request's flows back
  into its switches (one process per switch, all at once) after deleting them;
- *restart*: the controller is stopped (the bridges keep their flows) and started again on the
  same port: from the first switch reconnecting (its log) to serving (every switch connected, every
  connection up, one new request up), against the design bound of 3 s; the programs (flow changes)
  it sent before the new request are counted, and its start-up before the reconnect logged;
- *link failure*: the fabric link that carries most connections is set down at one end
  (its patch port deleted: OVS ignores
  ``mod-port … down`` on patch ports); from then to the first full ``/status`` showing every connection
  that crossed it up on a path without it. Limit: ``ovs-ofctl --bundle`` of those connections' flows.

The limits are measured last, on the loaded bridges, the controller gone. Figure lines on stdout,
details on stderr. Usage (root, Open vSwitch up): ``scale.py [--quick] [--k K] [--connections N]
[--requests R] [--keep DIR]``; ``--quick`` is k=4, 200 connections, 10 requests.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import yaml
from _scale_fabric import (
    Workload,
    bridge_names,
    build_bridges,
    by_cookie,
    documents,
    dump_flows,
    proc_usage,
    reinstall_time,
    remove_bridges,
    topology,
    vswitchd_pid,
)
from common import BenchFailure, figure, milliseconds, percentile, print_figures, sh

from ryu_nsm.core.flowspec import wire_cookie
from ryu_nsm.lab.controller_process import ControllerProcess, wait_for
from ryu_nsm.observe.status_api import fetch_status
from ryu_nsm.sources.topology import load_topology

PREFIX = "sx"
POLL_S = 0.005
SAMPLE = 20
LOAD_TIMEOUT = 600.0
TIMEOUT = 60.0
RESTART_BOUND_S = 3.0


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass
class Run:
    """One benchmark run's files, bridges and controller."""

    work: Workload
    workdir: Path
    audit_s: float
    bridges: dict[str, str] = field(default_factory=dict)
    ctl: ControllerProcess | None = None
    memory_per_connection: float = 0.0  # bytes, from the steady state

    @property
    def requests(self) -> Path:
        return self.workdir / "requests"

    def controller(self, log: str, of_port: int | None = None) -> ControllerProcess:
        return ControllerProcess(self.workdir / "topology.yaml", [self.requests], self.workdir / log,
                                 of_port=of_port, extra_args=["--watch-interval", "1",
                                                              "--audit-interval", str(self.audit_s)])

    def drop(self, name: str, objects: list[dict]) -> float:
        """Write ``objects`` and rename the file into the watched directory; perf_counter then."""
        staged = self.workdir / f"{name}.staged"
        staged.write_text(yaml.safe_dump_all(objects, sort_keys=False))
        t0 = time.perf_counter()
        os.rename(staged, self.requests / f"{name}.yaml")
        return t0

    def status(self, what: str = "/status") -> dict:
        return fetch_status(self.ctl.url, timeout=TIMEOUT, what=what)

    def states(self, ids: tuple[str, ...] = ()) -> dict[str, str]:
        return self.ctl.states(ids, timeout=TIMEOUT)


def wait_up(run: Run, want: int, timeout: float, interval: float) -> None:
    """Until ``want`` connections are up; BenchFailure on a failed one or the timeout."""
    last: dict[str, str] = {}

    def done() -> bool:
        nonlocal last
        try:
            last = run.states()
        except OSError:
            return False
        failed = [cid for cid, state in last.items() if state == "failed"]
        if failed:
            raise BenchFailure(f"{len(failed)} connections failed, e.g. {failed[:3]}")
        return sum(state == "up" for state in last.values()) >= want

    if not wait_for(done, timeout, interval):
        raise BenchFailure(f"{sum(s == 'up' for s in last.values())} of {want} connections up "
                           f"after {timeout:.0f} s (of {len(last)})")


def all_connected(run: Run) -> bool:
    try:
        switches = run.status()["switches"]
    except OSError:
        return False
    return len(switches) == len(run.bridges) and all(s["connected"] for s in switches)


def cid(pod: dict) -> str:
    return f"default/{pod['metadata']['name']}/nsm-1"


class Answer(NamedTuple):
    took: float  # seconds from the drop (rename or create call) to the reply showing it up
    late: float  # the most that can be late by (the previous poll's request to that reply)
    up: float  # perf_counter of that reply


def one_request(run: Run, name: str, pod: dict) -> Answer:
    """One request dropped in, polled until it is up."""
    t0 = run.drop(name, [pod])
    want, asked_before = cid(pod), t0
    while True:
        asked = time.perf_counter()
        if asked - t0 > TIMEOUT:
            raise BenchFailure(f"{want} not up {TIMEOUT:.0f} s after its file came")
        state = run.states((want,)).get(want)  # the one asked about: the poll costs it alone
        replied = time.perf_counter()
        if state == "failed":
            raise BenchFailure(f"{want} failed: {run.status()['problems'][:3]}")
        if state == "up":
            return Answer(replied - t0, replied - asked_before, replied)
        asked_before = asked
        time.sleep(POLL_S)


def steady_state(run: Run) -> list[str]:
    """Load the N, then the memory and idle CPU figures."""
    work, ctl = run.work, run.ctl
    vs = vswitchd_pid()
    rss0, _ = proc_usage(ctl.proc.pid)
    vs0, _ = proc_usage(vs)
    t0 = run.drop("base", documents(work))
    wait_up(run, work.n, LOAD_TIMEOUT, 0.5)
    loaded = time.perf_counter() - t0
    wait_for(lambda: False, 2.0)  # let the last confirmations and status writes settle
    rss1, cpu1 = proc_usage(ctl.proc.pid)
    vs1, vcpu1 = proc_usage(vs)
    switches = run.status()["switches"]
    flows = sorted(s["flows"] for s in switches)
    note(f"{work.n} connections up {loaded:.1f} s after their file came; controller RSS "
         f"{rss0 / 2**20:.0f} MiB → {rss1 / 2**20:.0f} MiB; ovs-vswitchd RSS {vs0 / 2**20:.0f} MiB → "
         f"{vs1 / 2**20:.0f} MiB; flows per switch min {flows[0]}, median {statistics.median(flows):.0f}, "
         f"max {flows[-1]}, total {sum(flows)}")
    wait_for(lambda: False, run.audit_s)
    rss2, cpu2 = proc_usage(ctl.proc.pid)
    _, vcpu2 = proc_usage(vs)
    idle = (cpu2 - cpu1) / run.audit_s
    note(f"idle over {run.audit_s:.0f} s (one audit, probes, counters): controller {idle * 100:.1f} % of a "
         f"core, ovs-vswitchd {(vcpu2 - vcpu1) / run.audit_s * 100:.1f} %; "
         f"controller RSS {rss2 / 2**20:.0f} MiB")
    what = f"{work.n} connections, fat-tree k={work.k}"
    run.memory_per_connection = max(rss1 - rss0, 0) / work.n
    return [figure(f"controller idle CPU, {what}", idle * 1000, "ms/s", 100, "ms/s",
                   "design bound 10 % of one core")]


def requests_at_size(run: Run, since: str = "the drop") -> dict[str, Answer]:
    """The single requests, one at a time: connection id → its answer."""
    answers = {}
    for j in range(run.work.extra):
        pod = run.work.extra_pod(j)
        answers[cid(pod)] = one_request(run, f"x{j:04d}", pod)
    latencies = [a.took for a in answers.values()]
    note(f"{len(latencies)} single requests at size, from {since}: {milliseconds(latencies, 1)}; a time is "
         f"late by at most {max(a.late for a in answers.values()) * 1000:.1f} ms (poll every "
         f"{POLL_S * 1000:.0f} ms)")
    return answers


def restart(run: Run) -> float:
    """Stop the controller, start another on the same port: seconds from the first switch
    reconnecting (its log) to serving."""
    work, old = run.work, run.ctl
    old.stop()
    run.ctl = run.controller("restarted.log", of_port=old.of_port)
    wall_minus_perf = time.time() - time.perf_counter()
    start = time.perf_counter()
    run.ctl.start()
    listening = time.perf_counter()
    # Its whole status is no poll at this size (a render of 10,000 marked connections holds the core):
    # when each switch came back is in its log; every connection is up only once they all have.
    wait_up(run, work.n + work.extra, TIMEOUT, 0.2)  # every state of 10,000 is no 5 ms poll
    ready = time.perf_counter()
    log = run.ctl.log()
    programs = re.findall(r"program \d+: .*", log)
    took = one_request(run, "restart", work.extra_pod(work.extra + 1)).took
    serving = time.perf_counter()
    back = re.findall(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*connected with \d+ ports", log, re.M)
    if not back:
        raise BenchFailure("the restarted controller logged no switch connecting")
    reconnect, connected = (datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f").timestamp() - wall_minus_perf
                            for t in (back[0], back[-1]))
    note(f"restart: listening {listening - start:.2f} s after the start, the first switch back "
         f"+{reconnect - listening:.2f} s, every switch connected +{connected - reconnect:.2f} s, every "
         f"connection up +{ready - connected:.2f} s, a new request up +{serving - ready:.2f} s (its own "
         f"{took * 1000:.0f} ms); programs sent before it: {len(programs)}"
         + (f", e.g. {programs[0]}" if programs else " (no flow-mod)"))
    return serving - reconnect


def link_failure(run: Run) -> tuple[float, list[str]]:
    """Cut the busiest link: (seconds to every crossing connection up elsewhere, their ids)."""
    fabric = load_topology(run.workdir / "topology.yaml")
    paths = {c["id"]: c["path"] for c in run.status()["connections"]}
    crossing: dict[tuple[str, str], list[str]] = {}
    for conn, path in paths.items():
        for hop in zip(path, path[1:], strict=False):
            crossing.setdefault(tuple(sorted(hop)), []).append(conn)
    link = max(fabric.links, key=lambda link: len(crossing.get(tuple(sorted((link.a, link.b))), [])))
    pair = tuple(sorted((link.a, link.b)))
    moved = crossing.get(pair, [])
    t0 = time.perf_counter()
    # A patch port ignores mod-port's PORT_DOWN: the cut removes it (the switch says port deleted).
    sh("ovs-vsctl", "del-port", run.bridges[link.a], f"{run.bridges[link.a]}-{link.a_port}")

    def rerouted() -> bool:
        states = run.states()  # all: thousands of ids do not fit in a URL
        if not all(states.get(m) == "up" for m in moved):
            return False  # the cheap look first: the whole status only once they are all up
        status = {c["id"]: c for c in run.status()["connections"]}
        return all(status[m]["state"] == "up" and not _crosses(status[m]["path"], pair) for m in moved)

    if not wait_for(rerouted, TIMEOUT, 0.1):
        status = run.status()
        stuck = [c for c in status["connections"] if c["id"] in moved
                 and (c["state"] != "up" or _crosses(c["path"], pair))]
        raise BenchFailure(f"{len(stuck)} of the {len(moved)} connections over {link.a}-{link.b} not "
                           f"rerouted {TIMEOUT:.0f} s after it went down, e.g. {stuck[:1]}; "
                           f"problems {status['problems'][:3]}; history {status['history'][-3:]}")
    took = time.perf_counter() - t0
    note(f"link {link.a}:{link.a_port} - {link.b}:{link.b_port} down: {len(moved)} connections rerouted "
         f"and confirmed in {took * 1000:.0f} ms")
    return took, moved


def _crosses(path: list[str], pair: tuple[str, str]) -> bool:
    return any(tuple(sorted(hop)) == pair for hop in zip(path, path[1:], strict=False))


def limits(run: Run, singles: list[str], moved: list[str]) -> tuple[float, float, int]:
    """(median one request, the moved connections (0 without)) by ovs-ofctl --bundle, the controller
    gone; and the bytes of every flow as ``ovs-ofctl dump-flows`` text."""
    dumped = dump_flows(run.bridges.values())
    flows = by_cookie(dumped)

    def of(ids: list[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for conn in ids:
            for br, lines in flows.get(f"{wire_cookie(conn):#x}", {}).items():
                out.setdefault(br, []).extend(lines)
        if not out:
            raise BenchFailure(f"no flows found for {ids[:3]}")
        return out

    picks = singles[:: max(1, len(singles) // SAMPLE)][:SAMPLE]
    one = [reinstall_time(of([conn]), run.workdir, f"one{k}") for k, conn in enumerate(picks)]
    sizes = sorted({sum(map(len, of([conn]).values())) for conn in picks})
    moved_flows = of(moved) if moved else {}
    both = min(reinstall_time(moved_flows, run.workdir, "moved") for _ in range(3)) if moved else 0.0
    note(f"limits: one request ({'/'.join(map(str, sizes))} flows) median "
         f"{statistics.median(one) * 1000:.1f} ms over {len(one)}" + (
             f"; the moved connections' {sum(map(len, moved_flows.values()))} flows on {len(moved_flows)} "
             f"switches best of 3 {both * 1000:.0f} ms" if moved else ""))
    return statistics.median(one), both, sum(len(line) + 1 for lines in dumped.values() for line in lines)


def measure(run: Run) -> list[str]:
    work = run.work
    (run.workdir / "topology.yaml").write_text(yaml.safe_dump(topology(work), sort_keys=False))
    run.requests.mkdir()
    fabric = load_topology(run.workdir / "topology.yaml")
    run.bridges = bridge_names(fabric, PREFIX)
    run.ctl = run.controller("controller.log")
    vs_before, _ = proc_usage(vswitchd_pid())
    built = build_bridges(fabric, run.bridges, f"tcp:127.0.0.1:{run.ctl.of_port}")
    vs_after, _ = proc_usage(vswitchd_pid())
    note(f"{len(run.bridges)} bridges, {2 * len(fabric.links)} patch ports in one ovs-vsctl transaction: "
         f"{built:.2f} s; ovs-vswitchd RSS {vs_before / 2**20:.0f} → {vs_after / 2**20:.0f} MiB")
    run.ctl.start()
    if not wait_for(lambda: all_connected(run), TIMEOUT, 0.1):
        raise BenchFailure(f"switches not all connected in {TIMEOUT:.0f} s")
    lines = steady_state(run)
    answers = requests_at_size(run, "the rename")
    latencies, singles = [a.took for a in answers.values()], list(answers)
    restarted = restart(run)
    cut, moved = link_failure(run)
    if run.ctl.errors():
        raise BenchFailure(f"switches rejected messages: {run.ctl.errors()[:3]}")
    run.ctl.stop()
    one, moved_limit, text = limits(run, singles, moved)
    what = f"{work.n} connections, fat-tree k={work.k}"
    # Not ovs-vswitchd's RSS growth: earlier benchmarks of the same run leave its heap grown.
    per_text = text / (work.n + work.extra + 1)
    lines.insert(0, figure(f"controller memory per connection, {what}", run.memory_per_connection, "bytes",
                           per_text, "bytes", "its flows as ovs-ofctl dump-flows text"))
    for q in (50, 99):
        lines.append(figure(f"request to forwarding p{q} at size, {what}",
                            percentile(latencies, q / 100) * 1000, "ms", one * 1000, "ms",
                            "ovs-ofctl --bundle of one request's flows"))
    lines.append(figure(f"link failure to rerouted, {len(moved)} connections moved, {what}", cut * 1000,
                        "ms", moved_limit * 1000, "ms", "ovs-ofctl --bundle of the moved connections' flows"))
    lines.append(figure(f"restart, reconnect to serving, {what}", restarted, "s", RESTART_BOUND_S, "s",
                        "design bound"))
    return lines


def run_all(k: int, n: int, extra: int, audit_s: float, keep: Path | None = None) -> list[str]:
    started = time.perf_counter()
    with work_dir(keep, "ryu-nsm-scale-") as workdir:
        return measured(Run(Workload(k, n, extra), workdir, audit_s), measure, started)


@contextmanager
def work_dir(keep: Path | None, prefix: str) -> Iterator[Path]:
    """A temporary directory, or ``keep`` (made new, kept afterwards)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        if keep is None:
            yield Path(tmp)
        else:
            keep.mkdir(parents=True, exist_ok=False)
            yield keep


def measured(run: Run, measure: Callable[[Run], list[str]], started: float) -> list[str]:
    """``measure(run)``; then its controller stopped and its bridges removed, whatever happened."""
    try:
        return measure(run)
    finally:
        if run.ctl is not None:
            run.ctl.stop()
        remove_bridges(run.bridges.values())
        note(f"whole benchmark {time.perf_counter() - started:.0f} s")


def main(argv: list[str] | None = None, name: str = "scale", doc: str = __doc__,
         run: Callable[..., list[str]] = run_all) -> int:
    """The command line of scale.py and of the benchmarks built on it (``name``, ``doc``, ``run``)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="k=4, 200 connections, 10 requests (for tests)")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="work in DIR (new) and keep it: the controllers' logs, the files")
    args = parser.parse_args(argv)
    k, n, extra, audit = (4, 200, 10, 5.0) if args.quick else (args.k, args.connections, args.requests, 30.0)
    return print_figures(name, lambda: run(k, n, extra, audit, args.keep), (RuntimeError, OSError))


if __name__ == "__main__":
    sys.exit(main())
