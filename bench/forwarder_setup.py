"""Forwarder set-up: NSM gRPC Request → veth, OVS port, controller path → frames pass, on real OVS.

Two netdev bridges A and B joined by a veth, one ``ovs-forwarder`` per bridge (child processes on
unix sockets) and ``ryu-nsm controller --ovsdb`` (child process), as in tests/test_nsm_e2e.py. One
client namespace and one server namespace hold one interface per wire: wire i is ``nsm-i`` on both
sides, addresses in its own /30 of 10.80.0.0/16 and static MACs and neighbours from the
ConnectionContext, so no ARP is needed. N endpoints ``srv-i`` (label n=w<i>) are plumbed on B first
(from 8 threads; not a figure); one NetworkService routes a client with n=w<i> to ``srv-i`` by a
label template.

Three rounds, each ending with every client Closed and the controller showing no connection:

- sequential: N client Requests one after the other on one channel (requests/s; the forwarder
  answers once the port is in OVSDB, before ovs-vswitchd attached it), then the time until the
  controller shows all N up, i.e. every path programmed on ports the switches report;
- 8 concurrent: the same with 8 threads, each with its own channel (connected before the clock);
- set-up latency: for a sample of connections one at a time, from sending the Request to the first
  ICMP echo reply through the wire (``ping -i 0.002`` until one reply), p50 and p99.

A second forwarder on bridge A serves over mTLS with a dev-CA SVID (``--tls-cert/--tls-key/--tls-ca``)
and signs its path tokens; the bench asks it as an NSM manager would, with its own SVID and a token
signed for the forwarder on the path, which the forwarder authorizes. The set-up latency sample
alternates between the two forwarders, so both are measured in the same run beside the same ports:
request to answer and request to first frame, mTLS + tokens against plain gRPC as their limit.

Every answer must be UP, the controller must show every client up with its own endpoint, and every
sampled wire must pass frames. Limits, measured in the same run: ``ovs-vsctl add-port`` of a fresh
veth (the floor of making an OVS port; sequential and from 8 threads) and, for set-up latency, that
plus the same ping probe over an already forwarding wire. The add-port limits are taken once the N
endpoints are plumbed, as every round runs beside them: ovs-vswitchd goes over every port of every
bridge on each database or link change, so adding a port costs more the more ports the switch has
(on this machine 20-40 ms beside none, 0.15-0.3 s beside 500). The same limits taken before any
endpoint exists are printed on stderr. The limit is a floor the forwarder cannot quite reach for a
single connection: ovs-vsctl adds a veth that already exists, one pass of ovs-vswitchd, while a
Request creates the veth too, which costs a pass of its own. Figure lines on stdout, details on
stderr.

Usage (root, Open vSwitch up): ``forwarder_setup.py [--quick] [--connections N]``; ``--quick`` is 20,
the default 500 (2-3 minutes here).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from common import BenchFailure, figure, percentile, print_figures, sh

from nsm_api import networkservice_pb2_grpc
from nsm_api.connection_pb2 import Connection, Mechanism, PathSegment
from nsm_api.connection_pb2 import Path as NsmPath
from nsm_api.connectioncontext_pb2 import ConnectionContext, EthernetContext, IPContext, IpNeighbor
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from nsm_api.tokens import sign_token
from ryu_nsm.lab.controller_process import ControllerProcess, wait_for
from ryu_nsm.trust import devca, tls
from ryu_nsm.trust.identity import Identity

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "fwdbench"
NAMESPACE = "nsm"
THREADS = 8
SAMPLE = 50
LIMIT_PORTS = 40
PROBE_REPEATS = 10
TIMEOUT = 60.0
RPC_TIMEOUT = 30.0
UP = 0  # connection.State UP
TRUST_DOMAIN = "bench.test"
SERVER_NAME = "forwarder.bench.test"  # the mTLS forwarder's DNS SAN, which gRPC clients check


class Names:
    """Bridge, namespace and link names unique to this process."""

    def __init__(self) -> None:
        tag = f"fs{os.getpid() % 10000:04d}"
        self.a, self.b = f"{tag}a", f"{tag}b"
        self.ns_c, self.ns_s = f"{tag}-c", f"{tag}-s"
        self.link = (f"{tag}a-eth1", f"{tag}b-eth1")
        self.scratch = f"{tag}x"  # prefix of the veths that time add-port


def address(k: int) -> str:
    """The k-th address of 10.80.0.0/16."""
    return f"10.80.{k >> 8}.{k & 255}"


def mac(side: int, i: int) -> str:
    """A locally administered MAC per side (0 client, 1 server) and wire."""
    return f"02:8{side}:00:00:{i >> 8:02x}:{i & 255:02x}"


def client_ip(i: int) -> str:
    """Wire i's client address: the first host of its /30."""
    return address(4 * i + 1)


def server_ip(i: int) -> str:
    """Wire i's server address: the second host of its /30."""
    return address(4 * i + 2)


def request(conn_id: str, i: int, netns: str, endpoint: bool) -> NetworkServiceRequest:
    """A KERNEL request for wire i: the client or the endpoint side, with MACs and a static neighbour."""
    eth = EthernetContext(src_mac=mac(0, i), dst_mac=mac(1, i))
    if endpoint:
        ip = IPContext(dst_ip_addrs=[f"{server_ip(i)}/30"],
                       ip_neighbors=[IpNeighbor(ip=client_ip(i), hardware_address=mac(0, i))])
        params = {"ryu-nsm.io/role": "endpoint", "ryu-nsm.io/endpoint": f"srv-{i}"}
    else:
        ip = IPContext(src_ip_addrs=[f"{client_ip(i)}/30"],
                       ip_neighbors=[IpNeighbor(ip=server_ip(i), hardware_address=mac(1, i))])
        params = {}
    mechanism = Mechanism(cls="LOCAL", type="KERNEL",
                          parameters={"name": f"nsm-{i}", "inodeURL": f"/var/run/netns/{netns}", **params})
    conn = Connection(id=conn_id, network_service=SERVICE, labels={"n": f"w{i}"},
                      context=ConnectionContext(ip_context=ip, ethernet_context=eth))
    return NetworkServiceRequest(connection=conn, mechanism_preferences=[mechanism])


def asked(stub: networkservice_pb2_grpc.NetworkServiceStub, req: NetworkServiceRequest) -> Connection:
    """Request, and the answer, which must be UP."""
    answer = stub.Request(req, timeout=RPC_TIMEOUT)
    if answer.state != UP:
        raise BenchFailure(f"{req.connection.id} answered in state {answer.state}, not UP")
    return answer


@dataclass(frozen=True)
class Pki:
    """A dev CA's SVIDs: the mTLS forwarder's (as files for its flags) and the client's."""

    forwarder_files: tuple[str, ...]
    forwarder_id: str
    client: Identity


def make_pki(workdir: Path) -> Pki:
    devca.init_ca(workdir / "ca", TRUST_DOMAIN)
    forwarder_id = f"spiffe://{TRUST_DOMAIN}/forwarder"
    devca.issue(workdir / "ca", forwarder_id, workdir / "fwd", dns_names=(SERVER_NAME,))
    client = devca.issue(workdir / "ca", f"spiffe://{TRUST_DOMAIN}/nsmgr", workdir / "client")
    files = ("--tls-cert", workdir / "fwd" / devca.SVID, "--tls-key", workdir / "fwd" / devca.SVID_KEY,
             "--tls-ca", workdir / "fwd" / devca.SVID_BUNDLE)
    return Pki(tuple(map(str, files)), forwarder_id, client)


def signed(req: NetworkServiceRequest, pki: Pki) -> NetworkServiceRequest:
    """``req`` as the client hop sends it to the mTLS forwarder: its own segment, token signed for it."""
    token = sign_token(pki.client, pki.forwarder_id, None, time.time(), 600)
    req.connection.path.CopyFrom(NsmPath(index=0, path_segments=[PathSegment(name="nsmgr", token=token)]))
    return req


def open_channel(sock: Path, pki: Pki | None) -> grpc.Channel:
    if pki is None:
        return grpc.insecure_channel(f"unix://{sock}")
    return grpc.secure_channel(f"unix://{sock}", tls.grpc_channel_credentials(pki.client),
                               options=tls.channel_options(SERVER_NAME))


@contextmanager
def forwarder(bridge: str, sock: Path, log: Path, pki: Pki | None = None
              ) -> Iterator[networkservice_pb2_grpc.NetworkServiceStub]:
    """``ovs-forwarder`` for one bridge in a child process (over mTLS with ``pki``); yields a stub on
    its own channel."""
    proc = subprocess.Popen([sys.executable, "-m", "ovs_forwarder.cli", "--bridge", bridge,
                             "--listen", f"unix://{sock}", "--name", f"fwd-{bridge}{'-tls' if pki else ''}",
                             "--log-level", "WARNING", *(pki.forwarder_files if pki else ())],
                            cwd=ROOT, stdout=log.open("a"), stderr=subprocess.STDOUT)
    channel = open_channel(sock, pki)
    try:
        if not wait_for(lambda: sock.exists() or proc.poll() is not None, 20) or proc.poll() is not None:
            raise BenchFailure(f"forwarder for {bridge} did not come up: {log.read_text()[-2000:]}")
        grpc.channel_ready_future(channel).result(timeout=10)
        yield networkservice_pb2_grpc.NetworkServiceStub(channel)
    finally:
        channel.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def build(names: Names, workdir: Path) -> tuple[Path, Path]:
    """Bridges, their veth link, the two namespaces; the controller's topology and requests directory."""
    for br, dpid in ((names.a, 0xF1), (names.b, 0xF2)):
        sh("ovs-vsctl", "add-br", br, "--", "set", "bridge", br, "datapath_type=netdev",
           f"other-config:datapath-id={dpid:016x}", "fail_mode=secure", "protocols=OpenFlow13")
    sh("ip", "link", "add", names.link[0], "type", "veth", "peer", "name", names.link[1])
    for br, link in zip((names.a, names.b), names.link, strict=True):
        sh("ovs-vsctl", "add-port", br, link, "--", "set", "interface", link, "ofport_request=1")
        sh("ip", "link", "set", link, "up")
    for ns in (names.ns_c, names.ns_s):
        sh("ip", "netns", "add", ns)
    topology = workdir / "topology.yaml"
    topology.write_text(textwrap.dedent(f"""\
        name: forwarder-setup
        switches:
          - {{name: {names.a}, dpid: 0xf1}}
          - {{name: {names.b}, dpid: 0xf2}}
        links:
          - {{a: {names.a}, b: {names.b}, a_port: 1, b_port: 1}}
        """))
    requests = workdir / "requests"
    requests.mkdir()
    (requests / "service.yaml").write_text(textwrap.dedent(f"""\
        apiVersion: networkservicemesh.io/v1
        kind: NetworkService
        metadata: {{name: {SERVICE}, namespace: {NAMESPACE}}}
        spec:
          payload: ETHERNET
          matches:
          - source_selector: {{}}
            routes:
            - destination_selector: {{n: "{{{{.n}}}}"}}
        """))
    return topology, requests


def teardown(names: Names) -> None:
    """Remove bridges, namespaces (their veths go with them), the link and scratch veths."""
    for br in (names.a, names.b):
        subprocess.run(["ovs-vsctl", "--if-exists", "del-br", br], capture_output=True, timeout=TIMEOUT)
    for ns in (names.ns_c, names.ns_s):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=TIMEOUT)
    subprocess.run(["ip", "link", "del", names.link[0]], capture_output=True, timeout=TIMEOUT)
    for k in range(LIMIT_PORTS):
        subprocess.run(["ip", "link", "del", f"{names.scratch}{k}"], capture_output=True, timeout=TIMEOUT)


def leftovers(names: Names) -> list[str]:
    """Whatever of this run is still on the machine."""
    left = [br for br in (names.a, names.b)
            if subprocess.run(["ovs-vsctl", "br-exists", br], capture_output=True).returncode == 0]
    left += [ns for ns in (names.ns_c, names.ns_s) if ns in sh("ip", "netns", "list").split()]
    tag = names.a[:-1]
    left += [line.split(":")[1].strip().split("@")[0] for line in sh("ip", "-o", "link").splitlines()
             if tag in line]
    return left


def add_port_limit(names: Names, bridge: str, threads: int) -> list[float]:
    """Seconds of each ``ovs-vsctl add-port`` of a fresh veth into ``bridge`` from ``threads`` threads;
    the ports are removed again. Also the wall time of all of them as the last item."""
    ends = [f"{names.scratch}{k}" for k in range(LIMIT_PORTS)]
    for k, end in enumerate(ends):
        sh("ip", "link", "add", end, "type", "veth", "peer", "name", f"{names.scratch}p{k}")
        sh("ip", "link", "set", end, "up")
    times: list[float] = []
    lock = threading.Lock()

    def add(end: str) -> None:
        start = time.perf_counter()
        sh("ovs-vsctl", "add-port", bridge, end)
        with lock:
            times.append(time.perf_counter() - start)

    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(add, ends))
        wall = time.perf_counter() - start
    finally:
        for end in ends:
            subprocess.run(["ovs-vsctl", "--if-exists", "del-port", bridge, end], capture_output=True)
            subprocess.run(["ip", "link", "del", end], capture_output=True)
    return [*times, wall]


def probe(names: Names, i: int, deadline: float = 10.0) -> bool:
    """One ICMP echo reply over wire i: ping every 2 ms until the first reply or the deadline."""
    return subprocess.run(["ip", "netns", "exec", names.ns_c, "ping", "-c", "1", "-i", "0.002",
                           "-w", str(int(deadline)), "-I", f"nsm-{i}", server_ip(i)],
                          capture_output=True, timeout=deadline + 5).returncode == 0


def wait_all_up(ctl: ControllerProcess, ids: dict[str, int], t0: float) -> float:
    """Seconds from ``t0`` until the controller shows exactly the clients ``ids`` up, each with its own
    endpoint; BenchFailure on a wrong endpoint or when not all are up by the timeout.

    A connection may show "failed" for a moment: the forwarder's OVSDB mark can reach the controller
    before the switch reports the new port. Only what is still failed at the deadline counts.
    """
    want = {f"{NAMESPACE}/{cid}/nsm-{i}": f"srv-{i}" for cid, i in ids.items()}
    last: dict[str, dict] = {}

    def done() -> bool:
        nonlocal last
        try:
            last = ctl.connections()
        except OSError:
            return False
        return set(last) == set(want) and all(c["state"] == "up" for c in last.values())

    if not wait_for(done, TIMEOUT, 0.05):
        up = sum(c["state"] == "up" for c in last.values())
        failed = [c for c in last.values() if c["state"] == "failed"]
        example = f"; failed, e.g. {failed[0]}" if failed else ""
        raise BenchFailure(f"controller shows {up} of {len(want)} up after {TIMEOUT:.0f} s{example}")
    elapsed = time.perf_counter() - t0
    wrong = {cid: c["endpoint"] for cid, c in last.items() if c["endpoint"] != want[cid]}
    if wrong:
        raise BenchFailure(f"{len(wrong)} clients got the wrong endpoint, e.g. {list(wrong.items())[:3]}")
    return elapsed


def close_all(stub: networkservice_pb2_grpc.NetworkServiceStub, answers: list[Connection],
              ctl: ControllerProcess | None) -> None:
    """Close every answer (from 8 threads: not a figure) and wait until the controller, if given,
    shows no connection."""
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda answer: stub.Close(answer, timeout=RPC_TIMEOUT), answers))
    if ctl is not None:
        ctl.wait_connections(lambda cs: cs == {}, TIMEOUT)


def run_round(sock: Path, names: Names, prefix: str, n: int, threads: int,
              ) -> tuple[float, float, list[Connection]]:
    """``n`` client Requests from ``threads`` threads, each on its own channel, connected before the
    clock starts: (perf_counter at the start, seconds, answers)."""
    answers: list[Connection | None] = [None] * n
    channels = [grpc.insecure_channel(f"unix://{sock}") for _ in range(threads)]
    try:
        for channel in channels:
            grpc.channel_ready_future(channel).result(timeout=10)
        stubs = [networkservice_pb2_grpc.NetworkServiceStub(channel) for channel in channels]

        def worker(w: int) -> None:
            for i in range(w, n, threads):
                answers[i] = asked(stubs[w], request(f"{prefix}-{i}", i, names.ns_c, endpoint=False))

        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(worker, range(threads)))
        return start, time.perf_counter() - start, [a for a in answers if a is not None]
    finally:
        for channel in channels:
            channel.close()


def timed(what: str, fn: Callable[[], object]) -> float:
    """Seconds ``fn`` takes, logged on stderr."""
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    print(f"{what}: {elapsed * 1000:.0f} ms", file=sys.stderr)
    return elapsed


ByKind = dict[bool, list]  # False: plain gRPC, True: mTLS + signed tokens


def sample_setup(names: Names, sample: int, stubs: dict[bool, networkservice_pb2_grpc.NetworkServiceStub],
                 pki: Pki) -> tuple[ByKind, ByKind, ByKind]:
    """Wires 1..``sample`` one at a time, alternately over plain gRPC (False) and mTLS + tokens (True):
    by kind, seconds from Request to answer, seconds from Request to the first frame, the answers."""
    answered: ByKind = {False: [], True: []}
    setup: ByKind = {False: [], True: []}
    answers: ByKind = {False: [], True: []}
    for i in range(1, sample + 1):
        secure = i % 2 == 0
        req = request(f"l-{i}", i, names.ns_c, endpoint=False)
        req = signed(req, pki) if secure else req  # the client's own signing is not the forwarder's
        start = time.perf_counter()
        answers[secure].append(asked(stubs[secure], req))
        answered[secure].append(time.perf_counter() - start)
        if not probe(names, i):
            raise BenchFailure(f"no frame over wire {i} within the probe's deadline")
        setup[secure].append(time.perf_counter() - start)
    return answered, setup, answers


def trust_figures(answered: ByKind, setup: ByKind) -> list[str]:
    """mTLS + signed tokens against plain gRPC, both measured in this run: p50 of request to answer
    and of request to first frame."""
    for what, times in (("request to answer", answered), ("request to first frame", setup)):
        print(f"{what}: plain p50 {percentile(times[False], 0.5) * 1000:.1f} ms, mTLS + tokens p50 "
              f"{percentile(times[True], 0.5) * 1000:.1f} ms ({len(times[True])} each way)", file=sys.stderr)
    label = "the same over plain gRPC"
    return [figure(f"forwarder {what} p50, mTLS + signed tokens", percentile(times[True], 0.5) * 1000, "ms",
                   percentile(times[False], 0.5) * 1000, "ms", label)
            for what, times in (("request to answer", answered), ("set-up, request to first frame", setup))]


def bench(n: int, sample: int) -> list[str]:
    """Run everything on ``n`` connections, ``sample`` of them timed to the first frame; figure lines."""
    names = Names()
    workdir = Path(tempfile.mkdtemp(prefix="ryu-nsm-fwd-"))
    teardown(names)
    lines: list[str] = []
    try:
        topology, requests = build(names, workdir)
        empty_seq, empty_conc = add_port_limit(names, names.a, 1), add_port_limit(names, names.a, THREADS)
        print(f"beside no ports, ovs-vsctl add-port: p50 {percentile(empty_seq[:-1], 0.5) * 1000:.1f} ms, "
              f"p99 {percentile(empty_seq[:-1], 0.99) * 1000:.1f} ms; {LIMIT_PORTS} from {THREADS} threads "
              f"in {empty_conc[-1] * 1000:.0f} ms", file=sys.stderr)
        sock_a, sock_b = workdir / "a.sock", workdir / "b.sock"
        pki = make_pki(workdir)
        ctl = ControllerProcess(topology, [requests], workdir / "ctl.log",
                                extra_args=["--ovsdb", "--audit-interval", "3600"])
        with forwarder(names.a, sock_a, workdir / "a.log") as fwd_a, \
                forwarder(names.a, workdir / "t.sock", workdir / "t.log", pki) as fwd_t, \
                forwarder(names.b, sock_b, workdir / "b.log") as fwd_b, ctl:
            for br in (names.a, names.b):
                sh("ovs-vsctl", "set-controller", br, f"tcp:127.0.0.1:{ctl.of_port}")
            endpoints: list[Connection] = []
            with ThreadPoolExecutor(THREADS) as pool:
                timed(f"{n} endpoint Requests from {THREADS} threads", lambda: endpoints.extend(pool.map(
                    lambda i: asked(fwd_b, request(f"e-{i}", i, names.ns_s, endpoint=True)), range(n))))
            seq_limit = add_port_limit(names, names.a, 1)
            conc_limit = add_port_limit(names, names.a, THREADS)
            add_p50, add_p99 = percentile(seq_limit[:-1], 0.5), percentile(seq_limit[:-1], 0.99)
            print(f"beside {n} ports, ovs-vsctl add-port: p50 {add_p50 * 1000:.1f} ms, p99 "
                  f"{add_p99 * 1000:.1f} ms; {LIMIT_PORTS} from {THREADS} threads in "
                  f"{conc_limit[-1] * 1000:.0f} ms", file=sys.stderr)

            for label, prefix, threads in (("sequential", "s", 1), (f"{THREADS} concurrent", "p", THREADS)):
                t0, seconds, answers = run_round(sock_a, names, prefix, n, threads)
                all_up = wait_all_up(ctl, {f"{prefix}-{i}": i for i in range(n)}, t0)
                print(f"{label}: {n} Requests in {seconds * 1000:.0f} ms, controller all up at "
                      f"{all_up * 1000:.0f} ms", file=sys.stderr)
                limit_rate = (1 / statistics.mean(seq_limit[:-1]) if threads == 1
                              else LIMIT_PORTS / conc_limit[-1])
                lines.append(figure(f"forwarder requests, {label}, {n} connections", n / seconds, "req/s",
                                    limit_rate, "req/s", "ovs-vsctl add-port"))
                lines.append(figure(f"forwarder requests, {label}, {n} connections, all up in controller",
                                    all_up, "s", n / limit_rate, "s", "ovs-vsctl add-port"))
                if not probe(names, n - 1):
                    raise BenchFailure(f"{label}: no frame passes over the last wire")
                start = time.perf_counter()
                close_all(fwd_a, answers, ctl)
                print(f"{label}: Close of {n} from {THREADS} threads and controller empty in "
                      f"{(time.perf_counter() - start) * 1000:.0f} ms", file=sys.stderr)

            # Set-up latency, one connection at a time; the first wire, kept up, gives the probe's floor.
            kept = asked(fwd_a, request("l-0", 0, names.ns_c, endpoint=False))
            if not wait_for(lambda: probe(names, 0, 2), TIMEOUT, 0.05):
                raise BenchFailure("no frame passes over wire 0")
            probe_times = []
            for _ in range(PROBE_REPEATS):
                start = time.perf_counter()
                if not probe(names, 0):
                    raise BenchFailure("a probe over a forwarding wire failed")
                probe_times.append(time.perf_counter() - start)
            answered, setup, latency_answers = sample_setup(names, sample, {False: fwd_a, True: fwd_t}, pki)
            latency_answers[False].append(kept)
            wait_all_up(ctl, {f"l-{i}": i for i in range(sample + 1)}, time.perf_counter())
            close_all(fwd_t, latency_answers[True], None)
            close_all(fwd_a, latency_answers[False], ctl)
            close_all(fwd_b, endpoints, None)
            ports = {br: sh("ovs-vsctl", "list-ports", br).split() for br in (names.a, names.b)}
            if ports != {names.a: [names.link[0]], names.b: [names.link[1]]}:
                raise BenchFailure(f"ports left after Close: {ports}")
            inside = [sh("ip", "netns", "exec", ns, "ip", "-o", "link").count("nsm-")
                      for ns in (names.ns_c, names.ns_s)]
            if any(inside):
                raise BenchFailure(f"interfaces left in the namespaces after Close: {inside}")
            if ctl.errors():
                raise BenchFailure(f"switches rejected messages: {ctl.errors()[:3]}")
        floor = statistics.median(probe_times)
        lines += trust_figures(answered, setup)
        setup = setup[False]
        p50, p99 = percentile(setup, 0.5), percentile(setup, 0.99)
        print(f"set-up, {len(setup)} connections over plain gRPC: p50 {p50 * 1000:.1f} ms, p99 "
              f"{p99 * 1000:.1f} ms, max "
              f"{max(setup) * 1000:.1f} ms; probe over a forwarding wire median {floor * 1000:.1f} ms",
              file=sys.stderr)
        label = "ovs-vsctl add-port + ping"
        lines.append(figure("forwarder set-up, request to first frame p50", p50 * 1000, "ms",
                            (add_p50 + floor) * 1000, "ms", label))
        lines.append(figure("forwarder set-up, request to first frame p99", p99 * 1000, "ms",
                            (add_p99 + floor) * 1000, "ms", label))
    finally:
        teardown(names)
        shutil.rmtree(workdir, ignore_errors=True)
    left = leftovers(names)
    if left:
        raise BenchFailure(f"left behind: {left}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Measure and print the figure lines; 1 (with the reason on stderr) if a check failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 connections")
    parser.add_argument("--connections", type=int, default=500, help="connections (default 500)")
    opts = parser.parse_args(argv)
    n = 20 if opts.quick else opts.connections
    return print_figures("forwarder set-up", lambda: bench(n, min(SAMPLE, n - 1)),
                         (RuntimeError, OSError, AssertionError, grpc.RpcError, subprocess.TimeoutExpired))


if __name__ == "__main__":
    sys.exit(main())
