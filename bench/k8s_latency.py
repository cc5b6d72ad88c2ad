"""Kubernetes Pods to forwarding: annotated Pods in the API → barrier-confirmed flows on a fat-tree.

The controller runs as in a cluster (``ryu-nsm controller --kubernetes --kubeconfig``, no files)
against the API server emulator of the tests (``tests/k8s_emulator.py``: kmock on real HTTP, real
list and watch streams, in a thread of this process). It drives the 20 netdev bridges of a k=4
fat-tree (``generator: {fat_tree: {k: 4}}``), named uniquely for this run, with the dpids the
topology declares, joined by OVS patch ports on the declared port numbers. Host ports are only
declared: flows for absent ports are accepted and the controller uses the declared numbers.

The chain is examples/demo-chain's NetworkService (client → firewall → dpi → vpn-gateway). Ten
firewalls fw0..fw9 and ten DPIs dpi0..dpi9 each serve N/10 "in" attachments (their endpoint's
``ryu-nsm.io/attachments``) and ask for the next hop from N/10 "out" interfaces (their Pod requests
nsm-1..nsm-N/10 with app=firewall or app=dpi); ten gateways gw0..gw9 serve N/10 attachments each.
An attachment carries one connection, so the N clients fill the firewalls and the functions' 2N
connections fill the DPIs and gateways. Clients sit on the edge switches of fat-tree pod 0,
firewalls in pod 1, DPIs in pod 2, gateways in pod 3: every wire crosses the core.

Setup, not timed: the service, the endpoints and the function Pods are in the API before the
controller starts (its first LIST sees them all), the bridges connect, the 2N function connections
come up and their NetworkServiceConnections say Up. Timed: the N client Pods are created one after
the other as fast as the API server takes them (each one's time is taken just before its create
call) while the controller's ``/status/states`` (each connection's state, nothing else) is polled
until every client connection is ``up`` (every switch on its path has confirmed its flows by
barrier). As the issue defines it, a request's latency runs from the first watch event of its Pod
(the controller logs when each arrives: ``--log ryu_nsm.sources.kubernetes=debug``) to the reply of
the first poll that shows it up; it is late by at most the time from the previous poll's request to
that reply (logged), a bound below which the poll cannot see. The total runs from the first such
event to the last client seen up. The emulated API server (kmock, Python, in this process) is slow
and shared with the controller's status writes, so the time from each create call is logged beside:
it adds the server's own queueing, which a real API server does not have to this degree. Polling is
not free (the states are read under the lock the controller's core runs under, and a reply waits
for any replan in progress), so the next poll waits POLL_MS after the last reply. A watch on the
NetworkServiceConnections (what ``kubectl get nsconn -w`` shows) gives the time to Up as a user of
the cluster sees it, and the controller log's own timings are logged beside.

The reference is ``ryu-nsm plan --json`` of the same topology and the same objects dumped as YAML
files. Names make the controller's incremental order the plan's one-shot order (connections it
already had first, then by id): function Pods (dpi*, fw*) sort before client Pods (pod000…), which
are created in id order, so attachments and tags come out the same. The limits are measured in the
same run on the same bridges reset to their setup flows, with ``ovs-ofctl --bundle add-flows``, one
process per switch, all switches at once: one client request's planned flows (10 flows on the 5
switches of its path; the median over SAMPLE requests is the limit of p50 and p99) and all N client
requests' flows (best of LIMIT_REPEATS; the limit of the total). Every install, the controller's
and ovs-ofctl's, is checked to leave each bridge with exactly the planned flows (count and
``ovs-ofctl diff-flows``). Three figure lines on stdout, details on stderr.

Usage (root, Open vSwitch up): ``k8s_latency.py [--quick] [--pods N] [--poll-ms MS]``; ``--quick``
is 100 Pods.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import kubernetes
import yaml
from _scale_fabric import bridge_names, build_bridges, remove_bridges
from common import (
    BenchFailure,
    bundle_add_flows,
    check_bridges,
    figure,
    flow_count,
    log_breakdown,
    milliseconds,
    ofctl,
    percentile,
    planned_flows,
    sh,
)

from ryu_nsm.core.flowspec import wire_cookie
from ryu_nsm.k8s import connection_status
from ryu_nsm.lab.controller_process import ControllerProcess, wait_for
from ryu_nsm.sources.topology import load_topology

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the API server emulator lives with the tests
from tests.k8s_emulator import Emulator  # noqa: E402

SERVICE_FILE = ROOT / "examples" / "demo-chain" / "service.yaml"
NAMESPACE = "default"
K = 4
INSTANCES = 10  # of each function
CLIENT_POD = 0  # the fat-tree pod whose edge switches the clients hang off
TIMEOUT = 60.0
POLL_MS = 20
SAMPLE = 20
LIMIT_REPEATS = 3
ONE_LABEL = "ovs-ofctl --bundle of one request's flows"
ALL_LABEL = "ovs-ofctl --bundle of the same flows"


@dataclass(frozen=True)
class Function:
    """One kind of service function: name prefix, app label, fat-tree pod, whether it asks onwards."""

    prefix: str
    app: str
    pod: int
    onwards: bool

    def name(self, j: int) -> str:
        """Instance j's name: of its endpoint, its Pod and its topology host alike."""
        return f"{self.prefix}{j}"

    def edge(self, j: int) -> str:
        """Instances alternate between the two edge switches of their pod."""
        return f"e{self.pod}_{j % 2}"


FUNCTIONS = (Function("fw", "firewall", 1, True), Function("dpi", "dpi", 2, True),
             Function("gw", "vpn-gateway", 3, False))


@dataclass(frozen=True)
class Run:
    """The number of client Pods."""

    n: int

    @property
    def per(self) -> int:
        """Attachments of each function instance (and "out" interfaces of those that ask onwards)."""
        return self.n // INSTANCES

    def client(self, i: int) -> str:
        """Zero-padded, so that creation order is id order."""
        return f"pod{i:0{max(3, len(str(self.n - 1)))}d}"

    def client_id(self, i: int) -> str:
        """The connection id of client i's request."""
        return f"{NAMESPACE}/{self.client(i)}/nsm-1"

    @property
    def client_ids(self) -> list[str]:
        """Every client connection id, in creation order."""
        return [self.client_id(i) for i in range(self.n)]

    def pods(self) -> dict[str, str]:
        """Client Pod name → its connection id."""
        return {self.client(i): self.client_id(i) for i in range(self.n)}

    def client_edge(self, i: int) -> str:
        """Clients alternate between the two edge switches of their pod."""
        return f"e{CLIENT_POD}_{i % 2}"


def topology(run: Run) -> dict:
    """The fat-tree, and a host per client and per function instance with its ports on an edge switch."""
    hosts = [{"name": run.client(i), "interfaces": [
        {"name": "eth0", "switch": run.client_edge(i), "port_name": run.client(i)}]} for i in range(run.n)]
    for fn in FUNCTIONS:
        sides = ("i", "o") if fn.onwards else ("i",)
        for j in range(INSTANCES):
            name = fn.name(j)
            interfaces = [{"name": f"{side}{k}", "switch": fn.edge(j), "port_name": f"{name}{side}{k}"}
                          for side in sides for k in range(run.per)]
            hosts.append({"name": name, "role": "function" if fn.onwards else "host",
                          "interfaces": interfaces})
    return {"name": "k8s-latency", "generator": {"fat_tree": {"k": K}}, "hosts": hosts}


def service_name() -> str:
    """The demo chain's NetworkService."""
    return yaml.safe_load(SERVICE_FILE.read_text())["metadata"]["name"]


def setup_objects(run: Run) -> list[dict]:
    """The service, every endpoint and the Pods of the functions that ask for the next hop."""
    service = yaml.safe_load(SERVICE_FILE.read_text())
    name = service["metadata"]["name"]
    objects = [service]
    for fn in FUNCTIONS:
        for j in range(INSTANCES):
            attachments = ",".join(f"{fn.edge(j)}/{fn.name(j)}i{k}" for k in range(run.per))
            objects.append({
                "apiVersion": "networkservicemesh.io/v1", "kind": "NetworkServiceEndpoint",
                "metadata": {"name": fn.name(j), "annotations": {"ryu-nsm.io/attachments": attachments}},
                "spec": {"network_service_names": [name],
                         "network_service_labels": {name: {"labels": {"app": fn.app}}}},
            })
    for fn in FUNCTIONS:
        if not fn.onwards:
            continue
        for j in range(INSTANCES):
            asks = ",".join(f"kernel://{name}/nsm-{k + 1}?app={fn.app}" for k in range(run.per))
            attachments = ",".join(f"nsm-{k + 1}={fn.edge(j)}/{fn.name(j)}o{k}" for k in range(run.per))
            objects.append({"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": fn.name(j),
                "annotations": {"networkservicemesh.io": asks, "ryu-nsm.io/attachments": attachments}}})
    return objects


def client_pod(run: Run, i: int, service: str) -> dict:
    """Client Pod i: asks for the service on nsm-1 from its own port on a pod-0 edge switch."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": run.client(i), "annotations": {
        "networkservicemesh.io": f"kernel://{service}/nsm-1",
        "ryu-nsm.io/attachments": f"nsm-1={run.client_edge(i)}/{run.client(i)}"}}}


@dataclass(frozen=True)
class Flows:
    """The planned flows by bridge: all, the setup's, the clients' (by cookie), and each client's."""

    full: dict[str, list[str]]
    setup: dict[str, list[str]]
    clients: dict[str, list[str]]  # only the bridges that carry some client flow
    by_client: dict[str, dict[str, list[str]]]  # connection id → bridge → its flows there


def split_flows(run: Run, planned: Mapping[str, list[str]], bridges: Mapping[str, str]) -> Flows:
    """Key the plan by bridge and sort every flow into setup or client by its cookie."""
    owner = {f"cookie={wire_cookie(cid):#x}": cid for cid in run.client_ids}
    full, setup, clients = {}, {}, {}
    by_client: dict[str, dict[str, list[str]]] = {cid: {} for cid in run.client_ids}
    for sw, br in bridges.items():
        full[br], setup[br] = list(planned[sw]), []
        for line in planned[sw]:
            cid = owner.get(line.split(",", 1)[0])
            if cid is None:
                setup[br].append(line)
            else:
                clients.setdefault(br, []).append(line)
                by_client[cid].setdefault(br, []).append(line)
    return Flows(full, setup, clients, by_client)


def write_files(workdir: Path, what: str, flows: Mapping[str, list[str]]) -> dict[str, Path]:
    """One ovs-ofctl flow file per bridge."""
    files = {}
    for br, lines in flows.items():
        files[br] = workdir / f"{br}.{what}.flows"
        files[br].write_text("".join(line + "\n" for line in lines))
    return files


class Reports:
    """Watches the NetworkServiceConnections as a user of the cluster would: when each first said Up.

    Runs until the API server goes away: the stream then breaks and the thread ends, keeping why.
    """

    def __init__(self, api: Emulator):
        self.custom = kubernetes.client.CustomObjectsApi(api.api_client())
        self.up: dict[str, float] = {}  # connection id → perf_counter when an event first showed Up
        self.changed = threading.Condition()
        self.ended: Exception | None = None
        self.thread = threading.Thread(target=self._follow, name="bench-reports", daemon=True)

    def start(self) -> Reports:
        """Start watching (from the beginning: every existing object comes as ADDED)."""
        self.thread.start()
        return self

    def _follow(self) -> None:
        stream = kubernetes.watch.Watch(return_type="object")
        try:
            for event in stream.stream(self.custom.list_cluster_custom_object, connection_status.GROUP,
                                       connection_status.VERSION, connection_status.PLURAL):
                seen = time.perf_counter()
                obj = event["object"]
                annotations = obj.get("metadata", {}).get("annotations") or {}
                cid = annotations.get(connection_status.CONNECTION_ANNOTATION)
                up = obj.get("status", {}).get("state") == "Up"
                if event["type"] in ("ADDED", "MODIFIED") and cid and up:
                    with self.changed:
                        self.up.setdefault(cid, seen)
                        self.changed.notify_all()
        except Exception as exc:  # the API server went away, or a bug: said by wait()
            with self.changed:
                self.ended = exc
                self.changed.notify_all()

    def wait(self, done: Callable[[dict[str, float]], bool], timeout: float, what: str) -> None:
        """Until ``done(up)`` holds; BenchFailure naming ``what`` after ``timeout`` or if the watch ended."""
        with self.changed:
            self.changed.wait_for(lambda: done(self.up) or self.ended is not None, timeout)
            if not done(self.up):
                raise BenchFailure(f"{what}: {len(self.up)} NetworkServiceConnections seen Up, "
                                   f"watch {'ended: ' + repr(self.ended) if self.ended else 'still open'}")


def kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig for the emulator: one cluster, no credentials."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "bench",
        "clusters": [{"name": "bench", "cluster": {"server": server}}],
        "users": [{"name": "bench", "user": {}}],
        "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "bench"}}],
    }))
    return path


@contextmanager
def controller(topology_file: Path, api: Emulator, bridges: Iterable[str], workdir: Path
               ) -> Iterator[ControllerProcess]:
    """``ryu-nsm controller --kubernetes`` on the emulator, the bridges pointed at it before it starts
    (they connect as soon as it listens, so fewer statuses are written twice: Pending, then Up).

    No flow audit during the run: it would reread every switch at a random moment of the measurement.
    The controller stops before the bridges let go of it, which it would report as every connection
    going Pending.
    """
    config = kubeconfig(workdir / "kubeconfig", api.url)
    ctl = ControllerProcess(topology_file, [], workdir / "controller.log", extra_args=[
        "--kubernetes", "--kubeconfig", str(config), "--audit-interval", "3600",
        "--log", "ryu_nsm.sources.kubernetes=debug"])  # when each watch event arrived
    bridges = list(bridges)
    try:
        for br in bridges:
            sh("ovs-vsctl", "set-controller", br, f"tcp:127.0.0.1:{ctl.of_port}")
        ctl.start()
        yield ctl
    finally:
        ctl.stop()
        for br in bridges:
            subprocess.run(["ovs-vsctl", "del-controller", br], capture_output=True, timeout=TIMEOUT)


def set_up(run: Run, ctl: ControllerProcess, reports: Reports, flows: Flows, bridges: Mapping[str, str],
           timeout: float = TIMEOUT) -> None:
    """Wait until every switch holds its setup flows and every function connection is up and Up."""
    want = {sw: len(flows.setup[br]) for sw, br in bridges.items()}

    def ready() -> bool:
        try:
            status = ctl.status()
        except OSError:
            return False
        held = {s["name"]: s["flows"] for s in status["switches"] if s["connected"]}
        connections = status["connections"]
        return (len(connections) == 2 * run.n and all(c["state"] == "up" for c in connections)
                and held == want)

    if not wait_for(ready, timeout, 0.5):  # each status costs the controller a tenth of a second
        status = ctl.status()
        states = statistics.multimode(c["state"] for c in status["connections"])
        raise BenchFailure(f"setup not done in {timeout:.0f} s: {len(status['connections'])} "
                           f"connections (mostly {states}), switches {status['switches']}, "
                           f"problems {status['problems'][:3]}")
    reports.wait(lambda up: len(up) == 2 * run.n, timeout,
                 f"the {2 * run.n} function connections not all reported Up in {timeout:.0f} s")


@dataclass(frozen=True)
class Watch:
    """What polling the status saw (perf_counter seconds throughout)."""

    first_up: dict[str, float]  # client connection id → reply time of the first poll showing it up
    slack: tuple[float, ...]  # per poll that first showed some client up: previous request to reply
    status_seconds: tuple[float, ...]


def watch_until_up(ctl: ControllerProcess, clients: set[str], creating: Future, t0: float, pause: float
                   ) -> Watch:
    """Poll the status, ``pause`` seconds from each reply to the next request, until every client
    connection is up; BenchFailure if one fails, if creating the Pods fails, or after TIMEOUT."""
    first_up: dict[str, float] = {}
    slack: list[float] = []
    durations: list[float] = []
    previous_request = t0
    while len(first_up) < len(clients):
        if creating.done() and creating.exception() is not None:
            raise BenchFailure(f"creating the Pods failed: {creating.exception()!r}")
        asked = time.perf_counter()
        if asked - t0 > TIMEOUT:
            raise BenchFailure(f"only {len(first_up)} of {len(clients)} client connections up after "
                               f"{TIMEOUT:.0f} s")
        try:
            states = ctl.states()
        except OSError as exc:  # a status reply slower than its timeout: count it, ask again
            print(f"status poll failed: {exc}", file=sys.stderr)
            continue
        replied = time.perf_counter()
        durations.append(replied - asked)
        new = 0
        for cid, state in states.items():
            if cid not in clients:
                continue
            if state == "failed":
                raise BenchFailure(f"client connection failed: {ctl.connections().get(cid)}")
            if state == "up" and cid not in first_up:
                first_up[cid] = replied
                new += 1
        if new:
            slack.append(replied - previous_request)
        previous_request = asked
        time.sleep(pause)
    return Watch(first_up, tuple(slack), tuple(durations))


_EVENT = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*watch event ADDED Pod "
                    r"\('Pod', '[^']*', '([^']*)'\)", re.M)


def watch_events(log: str, pods: Mapping[str, str], wall_minus_perf: float,
                 since_wall: float = float("-inf")) -> dict[str, float]:
    """Connection id → perf_counter time the controller logged the ADDED watch event of its Pod
    (``pods``: Pod name → connection id), counting only events logged from ``since_wall`` on (the
    log's stamps are wall clock, ms resolution)."""
    out: dict[str, float] = {}
    for m in _EVENT.finditer(log):
        cid = pods.get(m[2])
        if cid is None or cid in out:
            continue
        at = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if at >= since_wall - 0.001:
            out[cid] = at - wall_minus_perf
    return out


def controller_run(run: Run, api: Emulator, ctl: ControllerProcess, reports: Reports, flows: Flows,
                   files: Mapping[str, Mapping[str, Path]], bridges: Mapping[str, str], poll: float
                   ) -> tuple[dict[str, float], float]:
    """Wait for the setup, create the client Pods and watch them come up; check it all.

    Returns each client request's latency and the total, in seconds.
    """
    begun = time.perf_counter()
    set_up(run, ctl, reports, flows, bridges)
    print(f"setup: {2 * run.n} function connections up and reported in "
          f"{time.perf_counter() - begun:.1f} s", file=sys.stderr)
    check_bridges(bridges.values(), files["setup"], flows.setup, "controller, setup")
    service = service_name()
    bodies = [client_pod(run, i, service) for i in range(run.n)]
    created: dict[str, float] = {}

    def create_all() -> float:
        for cid, body in zip(run.client_ids, bodies, strict=True):
            created[cid] = time.perf_counter()
            api.create(body)
        return time.perf_counter()

    with ThreadPoolExecutor(1, thread_name_prefix="bench-create") as pool:
        t0_wall, t0 = time.time(), time.perf_counter()
        creating = pool.submit(create_all)
        watch = watch_until_up(ctl, set(run.client_ids), creating, t0, poll)
        all_created = creating.result()
    from_create = {cid: watch.first_up[cid] - created[cid] for cid in created}
    # The controller's own receipt of each Pod's watch event, from its log (same clock, ms resolution).
    arrived = watch_events(ctl.log(), run.pods(), t0_wall - t0)
    missing = set(created) - arrived.keys()
    if missing:
        raise BenchFailure(f"{len(missing)} Pod watch events are not in the controller's log, "
                           f"e.g. {min(missing)}")
    latency = {cid: watch.first_up[cid] - arrived[cid] for cid in created}
    total = max(watch.first_up.values()) - min(arrived.values())
    print(f"{run.n} Pods created in {(all_created - t0) * 1000:.0f} ms; all client connections up "
          f"{total * 1000:.0f} ms after the first create; {len(watch.status_seconds)} status polls "
          f"{poll * 1000:.0f} ms apart took median {statistics.median(watch.status_seconds) * 1000:.0f} ms, "
          f"max {max(watch.status_seconds) * 1000:.0f} ms; a latency is late by at most "
          f"{max(watch.slack) * 1000:.0f} ms (a pause and two status replies)", file=sys.stderr)
    print("controller log, from the first create:", file=sys.stderr)
    for line in log_breakdown(ctl.log(), t0_wall):
        print(line, file=sys.stderr)
    reports.wait(lambda up: all(cid in up for cid in run.client_ids), TIMEOUT,
                 f"the client connections not all reported Up {TIMEOUT:.0f} s later")
    print(f"from the create call (the emulated API server's own delays included): "
          f"{milliseconds(from_create.values())}; all up {max(watch.first_up.values()) - t0:.2f} s "
          "after the first create", file=sys.stderr)
    print(f"NetworkServiceConnection Up as a watch of the API sees it, from the create call: "
          f"{milliseconds(reports.up[cid] - created[cid] for cid in run.client_ids)}", file=sys.stderr)
    if ctl.errors():
        raise BenchFailure(f"switches rejected messages: {ctl.errors()[:3]}")
    connections = ctl.status()["connections"]
    if len(connections) != 3 * run.n or any(c["state"] != "up" for c in connections):
        raise BenchFailure(f"not every connection is up at the end: "
                           f"{statistics.multimode(c['state'] for c in connections)}")
    check_bridges(bridges.values(), files["full"], flows.full, "controller")
    return latency, total


def install(files: Mapping[str, Path]) -> float:
    """Seconds for ``ovs-ofctl --bundle add-flows`` into every bridge of ``files``, all at once."""
    return bundle_add_flows(files, TIMEOUT)


def reset(bridges: Iterable[str], flows: Flows, setup_files: Mapping[str, Path]) -> None:
    """Every bridge back to its setup flows, checked."""
    bridges = list(bridges)
    for br in bridges:
        ofctl("replace-flows", br, str(setup_files[br]))
    check_bridges(bridges, setup_files, flows.setup, "reset to the setup")


def ofctl_limits(run: Run, flows: Flows, files: Mapping[str, Mapping[str, Path]], bridges: Iterable[str],
                 workdir: Path) -> tuple[float, float]:
    """(one request, all requests) in seconds by ovs-ofctl --bundle into the bridges as set up."""
    bridges = list(bridges)
    reset(bridges, flows, files["setup"])
    picks = sorted({run.client_id(round(k * (run.n - 1) / (SAMPLE - 1))) for k in range(SAMPLE)})
    one = [install(write_files(workdir, f"one{k}", flows.by_client[cid])) for k, cid in enumerate(picks)]
    want = {br: len(flows.setup[br]) + sum(len(flows.by_client[cid].get(br, ())) for cid in picks)
            for br in bridges}
    held = {br: flow_count(br) for br in bridges}
    if held != want:
        raise BenchFailure(f"after the one-request installs the bridges hold {held} flows, not {want}")
    sizes = {(sum(map(len, flows.by_client[cid].values())), len(flows.by_client[cid])) for cid in picks}
    print(f"one request by ovs-ofctl ({' or '.join(f'{f} flows on {s} switches' for f, s in sizes)}): "
          f"median {statistics.median(one) * 1000:.1f} ms over {len(one)} requests, "
          f"min {min(one) * 1000:.1f} ms, max {max(one) * 1000:.1f} ms", file=sys.stderr)
    best = float("inf")
    for attempt in range(LIMIT_REPEATS):
        reset(bridges, flows, files["setup"])
        elapsed = install(files["clients"])
        check_bridges(bridges, files["full"], flows.full, "ovs-ofctl --bundle")
        print(f"all {run.n} requests by ovs-ofctl ({sum(map(len, flows.clients.values()))} flows on "
              f"{len(flows.clients)} switches), run {attempt + 1}: {elapsed * 1000:.0f} ms", file=sys.stderr)
        best = min(best, elapsed)
    return statistics.median(one), best


def measure(n: int, poll: float) -> tuple[dict[str, float], float, float, float]:
    """(latency per client request, total, one-request limit, all-requests limit) in seconds."""
    run = Run(n)
    with tempfile.TemporaryDirectory(prefix="ryu-nsm-k8s-latency-") as tmp:
        workdir = Path(tmp)
        topology_file = workdir / "topology.yaml"
        topology_file.write_text(yaml.safe_dump(topology(run), sort_keys=False))
        fabric = load_topology(topology_file)
        bridges = bridge_names(fabric, "k")
        objects = setup_objects(run)
        requests = workdir / "requests"
        requests.mkdir()
        (requests / "setup.yaml").write_text(yaml.safe_dump_all(objects, sort_keys=False))
        clients = [client_pod(run, i, service_name()) for i in range(n)]
        (requests / "clients.yaml").write_text(yaml.safe_dump_all(clients, sort_keys=False))
        with ThreadPoolExecutor(1, thread_name_prefix="bench-plan") as pool:
            planning = pool.submit(planned_flows, topology_file, requests)
            remove_bridges(bridges.values())
            try:
                build_bridges(fabric, bridges, ())  # each bridge gets its controller once it listens
                with Emulator() as api:
                    api.keep_recent_requests()  # kmock's request log slows every request down
                    reports = Reports(api).start()
                    for body in objects:
                        api.create(body)
                    with controller(topology_file, api, bridges.values(), workdir) as ctl:
                        flows = split_flows(run, planning.result(), bridges)
                        print(f"{n} client Pods, {2 * n} function connections; flows planned: "
                              f"{sum(map(len, flows.setup.values()))} for the setup, "
                              f"{sum(map(len, flows.clients.values()))} for the clients", file=sys.stderr)
                        files = {what: write_files(workdir, what, getattr(flows, what))
                                 for what in ("full", "setup", "clients")}
                        latency, total = controller_run(run, api, ctl, reports, flows, files, bridges, poll)
                one, total_limit = ofctl_limits(run, flows, files, bridges.values(), workdir)
            finally:
                remove_bridges(bridges.values())
    return latency, total, one, total_limit


def main(argv: list[str] | None = None) -> int:
    """Measure and print the three figure lines; 1 (with the reason on stderr) if a check failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 Pods")
    parser.add_argument("--pods", type=int, default=1000, help="client Pods, a multiple of 10 (default 1000)")
    parser.add_argument("--poll-ms", type=float, default=POLL_MS,
                        help=f"pause from a status reply to the next poll (default {POLL_MS})")
    opts = parser.parse_args(argv)
    n = 100 if opts.quick else opts.pods
    if n < INSTANCES or n % INSTANCES:
        parser.error(f"--pods must be a positive multiple of {INSTANCES}")
    started = time.perf_counter()
    try:
        latency, total, one, total_limit = measure(n, opts.poll_ms / 1000)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:  # BenchFailure, or no controller
        print(f"k8s latency benchmark FAILED: {exc}", file=sys.stderr)
        return 1
    times = list(latency.values())
    p50, p99 = percentile(times, 0.5), percentile(times, 0.99)
    print(f"client request to forwarding (status poll): {milliseconds(times)}; "
          f"whole benchmark {time.perf_counter() - started:.0f} s", file=sys.stderr)
    what = f"{n} pods, 3-function chain, fat-tree k={K}"
    print(figure(f"k8s request to forwarding p50, {what}", p50 * 1000, "ms", one * 1000, "ms", ONE_LABEL))
    print(figure(f"k8s request to forwarding p99, {what}", p99 * 1000, "ms", one * 1000, "ms", ONE_LABEL))
    print(figure(f"k8s {n} pods to forwarding, {what.split(', ', 1)[1]}", total, "s", total_limit, "s",
                 ALL_LABEL))
    return 0


if __name__ == "__main__":
    sys.exit(main())
