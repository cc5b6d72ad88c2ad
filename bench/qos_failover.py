"""Failover loss window (fast-failover against controller reroute) and SLA breach to rerouted traffic.

On real netdev bridges: the triangle of the tests (tests/bridge_fabric.py: bridges A, B, C; the direct
link A–B, the other way A–C–B; a client namespace on A, a server namespace on B) driven by
``ryu-nsm controller`` in a child process, one connection (service ``echo``) from client to server.

The traffic is a timestamped datagram stream: a sender in the client namespace sends one UDP
datagram every millisecond carrying its sequence number and send time, a receiver in the server
namespace records each one's arrival time (both are this script, ``--send`` and ``--receive``; both
read CLOCK_MONOTONIC, which every namespace of the host shares). The client has a static neighbour
entry for the server, so ARP plays no part. Before every cut the stream must have been delivered
for a second over the direct link (A's port 1 counts the datagrams).

1. *fast-failover*: the connection has a ServiceLevel with ``protection: disjoint``, so A and B hand
   its frames to fast-failover groups (primary A–B, backup A–C–B). A's end of the direct veth is set
   down by netlink while the stream runs; the controller is running, sees the port go down and moves
   the connection too. A fresh fabric and controller for every cut.
2. *controller reroute*: the same cut, no ServiceLevel: the connection heals when the controller has
   seen the port status, planned A–C–B and installed it (make-before-break).
3. *fast-failover with the controller gone*: the protected connection is installed, the controller
   stopped (fail-mode secure keeps the flows), then the link is cut and restored several times on
   the same fabric (a fast-failover group goes back to the first bucket once its port is up again).

The loss window of a cut is the time of the stream that was lost: for every run of missing
sequence numbers that ends after the cut, the send time of the next datagram that arrived minus
that of the last one before it, less one interval (= lost datagrams × 1 ms when the sender keeps
time), summed over the cut's observation (a stall of the shared machine that drops datagrams later
counts too; stderr lists every run). Its limit is how long the switch took to tell that the port
went down: cut to the port-status line in the controller's log (millisecond stamps), measured for
the very same cuts. Fast-failover and the port status both start from Open vSwitch noticing the
veth's carrier loss, so a ratio near 1 means the data plane healed as soon as the switch knew; a
slow control path shows as a large notice with a small window. The controller reroute is judged
against the fast-failover window of the same run, the cuts without a controller against the notice
of the protected cuts. Stderr also has the stream's own floor: the largest gap between two arrivals
in the second before each cut (scheduling noise of sender, receiver and datapath).

4. *SLA breach to rerouted traffic*: the direct link runs through the impairment element
   (ryu_nsm/lab/impairment.py), the connection has a ServiceLevel with ``maxLatency: 10ms`` and takes
   A–B. At T the element's delay becomes 30 ms each way; the figure is the time from T until the
   first datagram sent after T arrives with a one-way delay under 10 ms (it can only have come the
   other way). The limit is the controller's design bound: a link's latency is the median of its
   last ``probe_window`` probes, one per ``probe_interval``, and a level must stay broken for
   ``sla_window`` before the connection moves, so interval × window + SLA window (defaults read from
   the code). On stderr, from the controller's log: when it decided (which holds the median's and
   the SLA window's share), and how long the move then took.

Figure lines on stdout, details on stderr; exit 1 with the reason when a precondition fails
(connection not up, stream not flowing, no failover, no move).

Usage (root, Open vSwitch up): ``qos_failover.py [--quick]``; the default is 5 cuts of each kind and
3 SLA breaches (about 100 s here), ``--quick`` 2 and 1 (about 40 s).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import re
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from common import BenchFailure, figure, print_figures, sh

# The stream's two ends run this file too, inside the namespaces, on the standard library alone: what
# drives the fabric is imported where it is used (a stream end starts in 0.07 s instead of 0.7 s).
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the triangle and the echo requests live with the tests
if TYPE_CHECKING:
    from ryu_nsm.lab.controller_process import ControllerProcess
    from ryu_nsm.lab.impairment import Impairment
    from tests.bridge_fabric import BridgeFabric

SERVER_IP = "10.9.2.2"
PORT = 5599
INTERVAL_NS = 1_000_000  # one datagram per millisecond
HEADER = struct.Struct("!QQ")  # sequence number, send time (CLOCK_MONOTONIC ns)
PAYLOAD = 64
FLOWING = 100  # datagrams the receiver must have before the stream counts as flowing
END = 2**64 - 1  # the sequence number of the sender's end mark
END_COPIES = 3
DRAIN_S = 0.2  # the receiver stops this long after the end mark with nothing else coming
NO_END_S = 2.0  # without an end mark it stops once nothing has come for this long
BASELINE_S = 1.0  # stream delivered before each cut or breach: the floor is measured in it
OBSERVE_S = 1.0  # stream kept running once the controller has settled
ALONE_OBSERVE_S = 1.5  # after a cut with no controller there is nothing to wait for but the groups
SLOW_MS = 30.0
BOUND_MS = 10.0
TIMEOUT = 30.0
CONN = "default/client/nsm-1"
PROTECTED = textwrap.dedent("""\
    apiVersion: ryu-nsm.io/v1alpha1
    kind: ServiceLevel
    metadata: {name: echo-safe}
    spec: {networkService: echo, protection: disjoint}
    """)
FAST = textwrap.dedent(f"""\
    apiVersion: ryu-nsm.io/v1alpha1
    kind: ServiceLevel
    metadata: {{name: echo-fast}}
    spec: {{networkService: echo, maxLatency: {BOUND_MS:g}ms}}
    """)
NOTICE_LABEL = "cut to port-down at the controller"


# -- the stream's two ends (run inside the namespaces) ---------------------------------------------

def _stop_on_sigterm() -> Callable[[], bool]:
    """Install a SIGTERM handler that only sets a flag; returns a function reading it."""
    stopped = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
    return lambda: bool(stopped)


def run_sender(host: str, port: int, interval_ns: int) -> None:
    """Send datagrams (sequence number, send time) to ``host:port`` every ``interval_ns`` until SIGTERM.

    Then sends END_COPIES end marks (sequence END, the number sent) and prints the number sent. A
    sender that was descheduled goes on from now instead of catching up with a burst, so the stream
    never sends faster than its rate.
    """
    stopped = _stop_on_sigterm()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((host, port))
    pad = bytes(PAYLOAD - HEADER.size)
    seq, due = 0, time.monotonic_ns()
    while not stopped():
        now = time.monotonic_ns()
        if now < due:
            time.sleep((due - now) / 1e9)
        elif now - due > 5 * interval_ns:
            due = now
        sock.send(HEADER.pack(seq, time.monotonic_ns()) + pad)
        seq += 1
        due += interval_ns
    for _ in range(END_COPIES):
        sock.send(HEADER.pack(END, seq) + pad)
        time.sleep(interval_ns / 1e9)  # spaced like the stream, so one lost frame is not all of them
    print(seq, flush=True)


def run_receiver(port: int, out: Path) -> None:
    """Record (sequence, send time, arrival time) of every datagram on ``port``; write them to ``out``.

    Prints ``ready`` once bound and ``flowing`` after FLOWING datagrams. Ends DRAIN_S after the
    sender's end mark went by with nothing else coming (a datagram on a slower path may still be on
    its way), or, if the mark never comes, on SIGTERM once nothing has come for NO_END_S; then
    writes JSON. A stall of Open vSwitch (its main thread forwards these ports) holds datagrams for
    a while without losing them, so giving up sooner would count them lost.
    """
    stopped = _stop_on_sigterm()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("0.0.0.0", port))
    sock.settimeout(0.05)
    seqs: list[int] = []
    sent: list[int] = []
    arrived: list[int] = []
    print("ready", flush=True)
    ended, last = False, time.monotonic_ns()
    while True:
        quiet = (time.monotonic_ns() - last) / 1e9
        if (ended and quiet > DRAIN_S) or (stopped() and quiet > NO_END_S):
            break
        try:
            data = sock.recv(2048)
        except TimeoutError:
            continue
        last = time.monotonic_ns()
        seq, at = HEADER.unpack_from(data)
        if seq == END:
            ended = True
            continue
        seqs.append(seq)
        sent.append(at)
        arrived.append(last)
        if len(seqs) == FLOWING:
            print("flowing", flush=True)
    out.write_text(json.dumps({"seq": seqs, "sent": sent, "arrived": arrived}))


# -- what a stream saw (pure) ----------------------------------------------------------------------

@dataclass(frozen=True)
class Trace:
    """One stream's record: per received datagram (in arrival order) its sequence, send and arrival
    times (ns, CLOCK_MONOTONIC), and how many were sent."""

    seq: tuple[int, ...]
    sent: tuple[int, ...]
    arrived: tuple[int, ...]
    total: int
    interval_ns: int = INTERVAL_NS


@dataclass(frozen=True)
class Gap:
    """A run of missing sequence numbers between two that arrived."""

    before: int  # the sequence number received just before the run
    lost: int
    start_ns: int  # send time of ``before``
    span_ns: int  # send time of the next received one minus start_ns, less one interval


def gaps(trace: Trace) -> list[Gap]:
    """Every run of lost datagrams between two received ones, by sequence (duplicates count once)."""
    sent_at = dict(zip(trace.seq, trace.sent, strict=True))
    order = sorted(sent_at)
    out = []
    for i, j in zip(order, order[1:], strict=False):
        if j > i + 1:
            span = max(0, sent_at[j] - sent_at[i] - trace.interval_ns)
            out.append(Gap(i, j - i - 1, sent_at[i], span))
    return out


def loss_after(trace: Trace, since_ns: int) -> tuple[float, int, list[Gap]]:
    """Loss window (ms), lost datagrams and the gaps of the runs that end after ``since_ns``."""
    after = [g for g in gaps(trace) if g.start_ns + g.span_ns + trace.interval_ns > since_ns]
    return sum(g.span_ns for g in after) / 1e6, sum(g.lost for g in after), after


def largest_arrival_gap(trace: Trace, start_ns: int, end_ns: int) -> float:
    """The longest time (ms) between two consecutive arrivals within [start_ns, end_ns]."""
    times = sorted(t for t in trace.arrived if start_ns <= t <= end_ns)
    if len(times) < 2:
        seconds = (end_ns - start_ns) / 1e9
        raise BenchFailure(f"the stream delivered {len(times)} datagrams in {seconds:.1f} s")
    return max(b - a for a, b in zip(times, times[1:], strict=False)) / 1e6


def trailing_loss(trace: Trace) -> int:
    """Datagrams sent after the last one that arrived (the stream never came back if many)."""
    return trace.total - 1 - max(trace.seq, default=-1)


def first_fast(trace: Trace, sent_after_ns: int, bound_ms: float) -> tuple[int, int] | None:
    """(arrival ns, one-way delay ns) of the first datagram sent after ``sent_after_ns`` that arrived
    within ``bound_ms``, by arrival; None if none did."""
    fast = [(a, a - s) for s, a in zip(trace.sent, trace.arrived, strict=True)
            if s > sent_after_ns and a - s < bound_ms * 1e6]
    return min(fast) if fast else None


# -- driving the stream ----------------------------------------------------------------------------

def _read_line(proc: subprocess.Popen, want: str, timeout: float, what: str) -> None:
    """Wait until ``proc`` prints the line ``want``; BenchFailure on exit or timeout."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchFailure(f"{what}: no {want!r} within {timeout:.0f} s")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            line = proc.stdout.readline()
            if not line:
                raise BenchFailure(f"{what} exited ({proc.wait()}): {proc.stderr.read().strip()}")
            if line.strip() == want:
                return


class Stream:
    """The datagram stream from the client namespace to the server namespace of ``net``."""

    def __init__(self, net: BridgeFabric, tmp: Path):
        self.net = net
        self.out = tmp / "stream.json"
        self.sender: subprocess.Popen | None = None
        self.receiver: subprocess.Popen | None = None

    def _spawn(self, netns: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, str(Path(__file__).resolve()),
                                 *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def start(self) -> None:
        """Start the receiver, then the sender; return once FLOWING datagrams have arrived."""
        self.out.unlink(missing_ok=True)
        client, server, _ = self.net.namespaces
        self.receiver = self._spawn(server, "--receive", str(PORT), "--out", str(self.out))
        _read_line(self.receiver, "ready", TIMEOUT, "the stream's receiver")
        self.sender = self._spawn(client, "--send", f"{SERVER_IP}:{PORT}")
        _read_line(self.receiver, "flowing", 10, "the stream over the connection")

    def stop(self) -> Trace:
        """Stop the sender, let the receiver drain, and return what was sent and received."""
        if self.sender is None or self.receiver is None:
            raise BenchFailure("the stream was not started")
        self.sender.send_signal(signal.SIGTERM)
        out, err = self.sender.communicate(timeout=10)
        self.receiver.send_signal(signal.SIGTERM)
        _, rerr = self.receiver.communicate(timeout=10)
        if self.sender.returncode or self.receiver.returncode:
            raise BenchFailure(f"the stream failed: sender {self.sender.returncode} {err.strip()}; "
                               f"receiver {self.receiver.returncode} {rerr.strip()}")
        self.sender = self.receiver = None
        data = json.loads(self.out.read_text())
        return Trace(tuple(data["seq"]), tuple(data["sent"]), tuple(data["arrived"]), int(out.split()[-1]))

    def kill(self) -> None:
        """Stop whatever of the stream still runs (on the way out after a failure)."""
        for proc in (self.sender, self.receiver):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
        self.sender = self.receiver = None


# -- the fabric ------------------------------------------------------------------------------------

def tx_packets(bridge: str, port: int) -> int:
    """Packets ``bridge`` has sent out of ``port``."""
    found = re.search(r"tx pkts=(\d+)", sh("ovs-ofctl", "-O", "OpenFlow13", "dump-ports", bridge, str(port)))
    if not found:
        raise BenchFailure(f"no tx counter for {bridge} port {port}")
    return int(found[1])


def static_neighbour(net: BridgeFabric) -> None:
    """The client knows the server's MAC for good: no ARP before, during or after a cut."""
    client, server, _ = net.namespaces
    link = json.loads(sh("ip", "-n", server, "-j", "link", "show", "eth0"))
    sh("ip", "-n", client, "neigh", "replace", SERVER_IP, "lladdr", link[0]["address"], "dev", "eth0",
       "nud", "permanent")


def set_link(name: str, up: bool) -> tuple[int, int]:
    """Set interface ``name`` up or down by netlink; CLOCK_MONOTONIC ns just before and after."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise BenchFailure(f"no interface {name}")
        before = time.monotonic_ns()
        ipr.link("set", index=found[0], state="up" if up else "down")
        return before, time.monotonic_ns()


@dataclass
class Fabric:
    """A built triangle with its controller and stream."""

    net: BridgeFabric
    ctl: ControllerProcess
    stream: Stream
    element: Impairment | None

    @property
    def a(self) -> str:
        """Bridge A, the client's."""
        return self.net.bridges[0]

    def connection(self) -> dict:
        """The connection as the controller's status shows it."""
        return self.ctl.connections().get(CONN, {})

    def wait(self, predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
        """Poll ``predicate`` until it holds (True) or ``timeout`` passes (False)."""
        from ryu_nsm.lab.controller_process import wait_for

        return bool(wait_for(predicate, timeout, interval))

    def baseline(self) -> None:
        """Run the stream for BASELINE_S and check that the direct link carried it."""
        before = tx_packets(self.a, 1)
        time.sleep(BASELINE_S)  # the floor is measured over this stretch of undisturbed stream
        sent = tx_packets(self.a, 1) - before
        if sent < 0.5 * BASELINE_S * 1e9 / INTERVAL_NS:
            raise BenchFailure(f"the stream does not take the direct link: {sent} packets out of "
                               f"{self.a} port 1 in {BASELINE_S} s")


@contextmanager
def fabric(tag: str, level: str | None, impaired: bool) -> Iterator[Fabric]:
    """The triangle, the controller with the echo requests (and ``level``), the connection up on A–B."""
    from ryu_nsm.lab.controller_process import ControllerProcess
    from tests.bridge_fabric import triangle
    from tests.echo_requests import write_echo_requests

    net = triangle(tag)
    net.remove()
    element = None
    with tempfile.TemporaryDirectory(prefix="qos-failover-") as tmp_name:
        tmp = Path(tmp_name)
        stream = Stream(net, tmp)
        try:
            topo, element = net.build(tmp, impaired=impaired)
            a, b, c = net.bridges
            requests = write_echo_requests(tmp / "requests", f"{a}/{a}-c", f"{b}/{b}-s")
            if level is not None:
                (requests / "level.yaml").write_text(level)
            static_neighbour(net)
            with ControllerProcess(topo, [requests], tmp / "ctl.log") as ctl:
                for br in net.bridges:
                    sh("ovs-vsctl", "set-controller", br, f"tcp:127.0.0.1:{ctl.of_port}")
                try:
                    ctl.wait_connections(lambda cs: cs.get(CONN, {}).get("state") == "up", TIMEOUT)
                except AssertionError as exc:
                    raise BenchFailure(f"connection not up: {exc}") from None
                shown = ctl.connections()[CONN]
                if shown["path"] != [a, b]:
                    raise BenchFailure(f"the connection takes {shown['path']}, not the direct link")
                yield Fabric(net, ctl, stream, element)
        except subprocess.CalledProcessError as exc:
            raise BenchFailure(f"{' '.join(exc.cmd)} failed: {exc.stderr}") from None
        finally:
            stream.kill()
            if element is not None:
                element.stop()
            net.remove()


def controller_events(log: str, since_wall: float, pattern: str) -> list[tuple[float, str]]:
    """(seconds after ``since_wall``, message) of the controller's log lines matching ``pattern``."""
    out = []
    for line in log.splitlines():
        stamp = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ \S+ (.*)", line)
        if not stamp or not re.search(pattern, line):
            continue
        # A stamp is truncated to its millisecond: take the middle of it.
        at = datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S,%f").timestamp() + 0.0005 - since_wall
        if at >= 0:
            out.append((at, stamp[2]))
    return out


def print_events(events: list[tuple[float, str]]) -> None:
    for at, message in events:
        print(f"    {at * 1000:+.0f} ms {message}", file=sys.stderr)


def settled(f: Fabric, timeout: float) -> None:
    """Wait until the controller shows the connection up on A–C–B; BenchFailure if it does not."""
    a, b, c = f.net.bridges
    if not f.wait(lambda: f.connection().get("path") == [a, c, b] and f.connection().get("state") == "up",
                  timeout):
        raise BenchFailure(f"the controller did not move the connection to {a}-{c}-{b} in {timeout:.0f} s: "
                           f"{f.connection()}")


@dataclass(frozen=True)
class Cut:
    """What one cut cost the stream, and when the controller heard of it (s after the cut, if it ran)."""

    window_ms: float
    lost: int
    floor_ms: float
    port_down_ms: float | None


def one_cut(f: Fabric, wait: Callable[[], None], what: str) -> Cut:
    """Cut A's end of the direct link under the stream, ``wait`` for the fabric to settle, measure."""
    running = f.ctl.proc is not None and f.ctl.proc.poll() is None
    f.stream.start()
    f.baseline()
    wall = time.time()
    cut, cut_done = set_link(f.net.ends[0][0], up=False)
    wait()
    trace = f.stream.stop()
    window, lost, after = loss_after(trace, cut)
    floor = largest_arrival_gap(trace, cut - int(BASELINE_S * 1e9), cut)
    missing = trailing_loss(trace)
    runs = ", ".join(f"{g.lost} from {(g.start_ns - cut) / 1e6:+.1f} ms" for g in after) or "none"
    if missing > 5 or not any(s > cut_done for s in trace.sent):
        last = (max(trace.sent) - cut) / 1e6 if trace.sent else float("nan")
        raise BenchFailure(f"{what}: no failover: the last {missing} datagrams of {trace.total} never came "
                           f"(the last that did was sent {last:+.1f} ms from the cut; runs lost before "
                           f"that: {runs})")
    before = [g for g in gaps(trace) if g not in after]
    print(f"  {what}: loss window {window:.1f} ms ({lost} datagrams; runs {runs}); floor {floor:.2f} ms; "
          f"the cut took {(cut_done - cut) / 1e6:.2f} ms; {len(before)} runs lost before it; "
          f"{trace.total} sent", file=sys.stderr)
    port_down = None
    if running:
        events = controller_events(f.ctl.log(), wall, r"port .* is down|program \d+:|connection ")
        print_events(events)
        port_down = next((at * 1000 for at, message in events if re.search("port .* is down", message)), None)
        if port_down is None:
            raise BenchFailure(f"{what}: the controller moved the connection but logged no port down")
    return Cut(window, lost, floor, port_down)


def settle_and_observe(f: Fabric) -> None:
    """The controller has moved the connection, and the stream ran on for OBSERVE_S."""
    settled(f, TIMEOUT)
    time.sleep(OBSERVE_S)  # traffic on the new path: a second outage would show


def groups(bridge: str) -> int:
    """Fast-failover groups on ``bridge``."""
    return sum("type=ff" in line for line in sh("ovs-ofctl", "-O", "OpenFlow13", "dump-groups", bridge)
               .splitlines())


def check_protected(f: Fabric) -> None:
    """The protected connection has its backup A–C–B and fast-failover groups at both ends."""
    a, b, c = f.net.bridges
    shown = f.connection()
    if shown.get("backup_path") != [a, c, b]:
        raise BenchFailure(f"the protected connection has no backup {a}-{c}-{b}: {shown}")
    if not groups(a) or not groups(b):
        raise BenchFailure(f"no fast-failover groups: {a} {groups(a)}, {b} {groups(b)}")


def cuts_with_controller(tag: str, n: int, protected: bool) -> list[Cut]:
    """``n`` cuts, each on a fresh fabric with the controller running."""
    what = "fast-failover" if protected else "controller reroute"
    out = []
    for i in range(n):
        with fabric(tag, PROTECTED if protected else None, impaired=False) as f:
            if protected:
                check_protected(f)
            out.append(one_cut(f, lambda f=f: settle_and_observe(f), f"{what} {i + 1}"))
            if f.ctl.errors():
                raise BenchFailure(f"a switch rejected something: {f.ctl.errors()}")
    return out


def cuts_without_controller(tag: str, n: int) -> list[Cut]:
    """``n`` cut-and-restore cycles on one fabric whose controller has gone after installing."""
    out = []
    with fabric(tag, PROTECTED, impaired=False) as f:
        check_protected(f)
        f.ctl.stop()
        end = f.net.ends[0][0]
        for i in range(n):
            # Nothing to wait for but the groups: the stream runs on for a fixed time.
            out.append(one_cut(f, lambda: time.sleep(ALONE_OBSERVE_S), f"controller gone {i + 1}"))
            set_link(end, up=True)
            if not f.wait(lambda: sh("ovs-vsctl", "get", "interface", end, "link_state").strip() == "up", 10):
                raise BenchFailure(f"{end} did not come back up")
    return out


# -- SLA breach ------------------------------------------------------------------------------------

def design_bound() -> tuple[float, str]:
    """probe interval × probe window + SLA window from the code's defaults (s), and how it is made."""
    from ryu_nsm.core.controller import Controller
    from ryu_nsm.openflow.shell import ShellSettings

    interval = {f.name: f.default for f in dataclasses.fields(ShellSettings)}["probe_interval"]
    params = inspect.signature(Controller).parameters
    window, sla = params["probe_window"].default, params["sla_window"].default
    return interval * window + sla, f"{window} probes {interval:g} s apart + {sla:g} s SLA window"


@dataclass(frozen=True)
class Breach:
    """One SLA breach: seconds from the delay going up to the first datagram back under the bound, and
    to the controller's decision to move (from its log); datagrams lost on the way."""

    took: float
    decided: float
    lost: int


def one_breach(tag: str, i: int) -> Breach:
    """Slow the direct link under the stream and time the way back under the bound."""
    with fabric(tag, FAST, impaired=True) as f:
        if not f.wait(lambda: f.connection().get("measured", {}).get("met") is True, TIMEOUT, 0.2):
            raise BenchFailure(f"the service level is not measured as met: {f.connection()}")
        f.stream.start()
        f.baseline()
        wall = time.time()
        breach = time.monotonic_ns()
        f.element.set(delay_ms=SLOW_MS)
        applied = time.monotonic_ns()
        settled(f, TIMEOUT)
        time.sleep(OBSERVE_S)  # the stream runs on a while on the new path
        trace = f.stream.stop()
        delays = list(zip(trace.sent, (a - s for s, a in zip(trace.sent, trace.arrived, strict=True)),
                          strict=True))
        slow = [d for s, d in delays if s > applied and d >= BOUND_MS * 1e6]
        if not slow or max(slow) < SLOW_MS * 1e6:
            raise BenchFailure(f"the element's {SLOW_MS:g} ms delay never showed in the stream")
        found = first_fast(trace, applied, BOUND_MS)
        if found is None:
            raise BenchFailure(f"no datagram sent after the breach arrived within {BOUND_MS:g} ms")
        arrival, delay = found
        took = (arrival - breach) / 1e9
        events = controller_events(f.ctl.log(), wall, r"broken for|program \d+:|connection ")
        decided = next((at for at, message in events if "broken for" in message), None)
        if decided is None:
            raise BenchFailure(f"the controller logged no breach; history {f.ctl.status()['history'][-3:]}")
        base = statistics.median(d for s, d in delays if s < breach) / 1e6
        window, lost, after = loss_after(trace, applied)
        runs = ", ".join(f"{g.lost} sent from {(g.start_ns - breach) / 1e9:+.3f} s" for g in after) or "none"
        print(f"  SLA breach {i + 1}: {took:.2f} s to the first datagram under {BOUND_MS:g} ms "
              f"({delay / 1e6:.2f} ms one-way; {base:.2f} ms before the breach); decided after "
              f"{decided:.2f} s, traffic on the new path {(took - decided) * 1000:.0f} ms later; "
              f"{len(slow)} datagrams over the bound, {lost} lost ({runs})", file=sys.stderr)
        # Where frames were lost, if the element saw it: A's side of the direct link is its ``a``.
        a2b = f.element.stats()["a2b"]
        counters = ("received", "relayed", "dropped", "overflow", "failed", "missed")
        print("    element A→B: " + ", ".join(f"{k} {a2b[k]}" for k in counters), file=sys.stderr)
        print_events(events)
        return Breach(took, decided, lost)


# -- main ------------------------------------------------------------------------------------------

def summary(label: str, values: list[float], unit: str) -> str:
    """``label: v1, v2 unit``."""
    return f"{label}: " + ", ".join(f"{v:.1f}" for v in values) + f" {unit}"


def bench(cuts: int, breaches: int) -> list[str]:
    """Run every part and return the figure lines."""
    tag = f"q{os.getpid() % 10000:04d}"
    started = time.monotonic()
    ff = cuts_with_controller(tag, cuts, protected=True)
    rr = cuts_with_controller(tag, cuts, protected=False)
    alone = cuts_without_controller(tag, cuts)
    sla = [one_breach(tag, i) for i in range(breaches)]
    took = [b.took for b in sla]
    bound, how = design_bound()
    for label, series in (("fast-failover", ff), ("controller reroute", rr), ("controller gone", alone)):
        heard = [c.port_down_ms for c in series if c.port_down_ms is not None]
        print(summary(f"{label} loss windows", [c.window_ms for c in series], "ms") + "; "
              + summary("stream floors (largest arrival gap in the second before)",
                        [c.floor_ms for c in series], "ms")
              + ("; " + summary("port down in the controller's log after", heard, "ms") if heard else ""),
              file=sys.stderr)
    print(summary("SLA breach to rerouted traffic", took, "s") + "; "
          + summary("to the decision", [b.decided for b in sla], "s") + "; "
          + summary("lost after the breach", [b.lost for b in sla], "datagrams")
          + f"; design bound {bound:g} s: {how}", file=sys.stderr)
    print(f"whole benchmark {time.monotonic() - started:.0f} s", file=sys.stderr)

    def med(series: list[Cut], key: str) -> float:
        return statistics.median(getattr(c, key) for c in series)

    def top(series: list[Cut], key: str) -> float:
        return max(getattr(c, key) for c in series)

    lines = []
    for stat, pick in ((f"median of {cuts} cuts", med), (f"max of {cuts} cuts", top)):
        ff_window, notice = pick(ff, "window_ms"), pick(ff, "port_down_ms")
        name = f"failover loss window, {{}}, {stat}"
        lines.append(figure(name.format("fast-failover"), ff_window, "ms", notice, "ms", NOTICE_LABEL))
        # Against the fast-failover window of the same run; if that lost nothing, against the notice.
        limit, label = (ff_window, "fast-failover of the same cut") if ff_window > 0 else \
            (pick(rr, "port_down_ms"), NOTICE_LABEL)
        lines.append(figure(name.format("controller reroute"), pick(rr, "window_ms"), "ms",
                            limit, "ms", label))
        lines.append(figure(name.format("fast-failover with the controller gone"), pick(alone, "window_ms"),
                            "ms", notice, "ms", f"{NOTICE_LABEL} of the protected cuts"))
    what = f"{SLOW_MS:g} ms on a {BOUND_MS:g} ms bound"
    lines.append(figure(f"SLA breach to rerouted traffic, {what}, median of {breaches}",
                        statistics.median(took), "s", bound, "s", f"design bound {how}"))
    return lines


def main(argv: list[str] | None = None) -> int:
    """Measure and print the figure lines; 1 (with the reason on stderr) if a check failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 cuts of each kind, 1 SLA breach")
    parser.add_argument("--send", metavar="HOST:PORT", help=argparse.SUPPRESS)
    parser.add_argument("--receive", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.send:
        host, port = opts.send.rsplit(":", 1)
        run_sender(host, int(port), INTERVAL_NS)
        return 0
    if opts.receive:
        run_receiver(opts.receive, opts.out)
        return 0
    return print_figures("qos failover", lambda: bench(2, 1) if opts.quick else bench(5, 3),
                         (RuntimeError, OSError, subprocess.TimeoutExpired))


if __name__ == "__main__":
    sys.exit(main())
