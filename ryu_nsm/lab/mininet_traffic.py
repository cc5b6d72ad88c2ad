"""Service-function hosts and traffic for a Mininet fabric (``ryu_nsm.lab.mininet_fabric``).

A host with role ``"function"`` bridges its two interfaces with a Linux bridge and counts (and
optionally drops) what passes with an nftables bridge-family table, so tests can see that traffic
really went through a service function. ``FabricTraffic`` gives a ``FabricNet`` its counters and
filters and its ways to send traffic between hosts (ping, a TCP exchange, iperf3); every helper
process runs in its own session with a deadline of its own and is reaped when the network stops.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import select
import signal
import subprocess
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

from ryu_nsm.lab.mininet_commands import FabricNetError, run, wait_until

if TYPE_CHECKING:
    from mininet.node import Node

    from ryu_nsm.core.fabric import Host

NFT_TABLE = "ryu_nsm"
FUNCTION_BRIDGE = "br0"
FUNCTION_COUNTERS = ("seen", "in_to_out", "out_to_in", "dropped")


class PingResult(NamedTuple):
    sent: int
    received: int


class PingReplies(NamedTuple):
    """What a background ping saw: round-trip times (ms) of the replies in order, and echoes sent."""

    rtts: list[float]
    sent: int

    @property
    def lost(self) -> int:
        return self.sent - len(self.rtts)


class CounterValue(NamedTuple):
    packets: int
    bytes: int


def make_function(node: Node, host: Host) -> None:
    """Turn ``node`` into service function ``host``: a Linux bridge between its two interfaces, and an
    nftables bridge table that counts what passes (and filters, see ``set_function_filter``)."""
    side_in, side_out = (i.name for i in host.interfaces)
    bridge_nf = " ".join(f"{p}=0" for p in ("net.bridge.bridge-nf-call-iptables",
                                             "net.bridge.bridge-nf-call-ip6tables",
                                             "net.bridge.bridge-nf-call-arptables"))
    script = (
        # Without snooping off the bridge joins 224.0.0.106 and sends IGMP reports into the fabric.
        f"ip link add {FUNCTION_BRIDGE} type bridge mcast_snooping 0"
        f" && ip link set {side_in} master {FUNCTION_BRIDGE}"
        f" && ip link set {side_out} master {FUNCTION_BRIDGE}"
        f" && ip link set {FUNCTION_BRIDGE} up"
        # Bridged frames stay out of the IP hooks (br_netfilter), so the function is plain L2.
        f" && if [ -d /proc/sys/net/bridge ]; then sysctl -qw {bridge_nf}; fi"
    )
    run(["sh", "-ec", script], node)
    counters = "\n".join(f"  counter {c} {{ }}" for c in FUNCTION_COUNTERS)
    ruleset = (
        f"table bridge {NFT_TABLE} {{\n{counters}\n"
        "  chain filter { }\n"
        "  chain forward {\n"
        "    type filter hook forward priority 0; policy accept;\n"
        '    counter name "seen"\n'
        f'    iifname "{side_in}" counter name "in_to_out"\n'
        f'    iifname "{side_out}" counter name "out_to_in"\n'
        "    jump filter\n"
        "  }\n}\n"
    )
    run(["nft", "-f", "-"], node, stdin=ruleset)


_TCP_SERVER = """
import socket, sys
ip, port, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((ip, port))
srv.listen(1)
print("listening", flush=True)
srv.settimeout(limit)
try:
    conn, _ = srv.accept()
except TimeoutError:
    sys.exit(3)
conn.settimeout(limit)
data = b""
while len(data) < 32:
    chunk = conn.recv(32 - len(data))
    if not chunk:
        break
    data += chunk
conn.sendall(data[::-1])
conn.close()
"""

_TCP_CLIENT = """
import socket, sys
ip, port, limit, token = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4].encode()
with socket.create_connection((ip, port), timeout=limit) as conn:
    conn.sendall(token)
    data = b""
    while len(data) < len(token):
        chunk = conn.recv(len(token) - len(data))
        if not chunk:
            break
        data += chunk
sys.exit(0 if data == token[::-1] else 1)
"""


class FabricTraffic:
    """A FabricNet's service-function counters and filters and its traffic between hosts (a mixin:
    the network provides ``host(name)`` and the list ``_procs`` of helpers to reap on stop)."""

    _procs: list[subprocess.Popen[str]]

    def function_counters(self, name: str) -> dict[str, CounterValue]:
        """The nftables counters of function ``name``: seen, in_to_out, out_to_in, dropped."""
        out = run(["nft", "-j", "list", "counters", "table", "bridge", NFT_TABLE], self.host(name))
        return {
            item["counter"]["name"]: CounterValue(item["counter"]["packets"], item["counter"]["bytes"])
            for item in json.loads(out.stdout)["nftables"] if "counter" in item
        }

    def set_function_filter(self, name: str, drop_tcp_ports: Iterable[int] = ()) -> None:
        """Make function ``name`` drop TCP to these ports, counted in ``dropped``; () removes the filter."""
        ports = sorted({int(p) for p in drop_tcp_ports})
        rules = f"flush chain bridge {NFT_TABLE} filter\n"
        if ports:
            rules += (f"add rule bridge {NFT_TABLE} filter tcp dport {{ {', '.join(map(str, ports))} }}"
                      ' counter name "dropped" drop\n')
        run(["nft", "-f", "-"], self.host(name), stdin=rules)

    # -- traffic --

    def ping(self, src: str, dst_ip: str, count: int = 3, timeout: float = 5.0) -> PingResult:
        """Ping ``dst_ip`` from host ``src``: ``count`` echoes, giving up after ``timeout`` seconds."""
        ipaddress.ip_address(dst_ip)
        deadline = max(1, int(timeout + 0.999))
        proc = run(["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", "-w", str(deadline),
                    dst_ip], self.host(src), timeout=deadline + 5, check=False)
        match = re.search(r"(\d+) packets transmitted, (\d+) received", proc.stdout)
        if match is None:
            raise FabricNetError(f"ping from {src} to {dst_ip} gave no summary: {proc.stdout}{proc.stderr}")
        return PingResult(int(match[1]), int(match[2]))

    def start_ping(self, src: str, dst_ip: str, interval: float = 0.05,
                   limit: float = 120.0) -> BackgroundPing:
        """Start pinging ``dst_ip`` from ``src`` every ``interval`` seconds (for at most ``limit``);
        ``stop()`` on the result ends it and says what came back."""
        ipaddress.ip_address(dst_ip)
        proc = self._spawn(src, ["timeout", str(limit), "ping", "-n", "-i", str(interval), "-W", "1", dst_ip])
        return BackgroundPing(proc)

    def tcp_check(self, src: str, dst: str, dst_ip: str, port: int, timeout: float = 3.0) -> bool:
        """True when ``src`` connects to ``dst_ip:port`` (listener on host ``dst``) and bytes go both ways."""
        server = self._spawn(dst, [sys.executable, "-c", _TCP_SERVER, dst_ip, str(port), str(timeout + 2)])
        try:
            self._await_line(server, "listening", f"TCP listener on {dst}", timeout=10)
            token = os.urandom(16).hex()
            client = run([sys.executable, "-c", _TCP_CLIENT, dst_ip, str(port), str(timeout), token],
                         self.host(src), timeout=timeout + 10, check=False)
            return client.returncode == 0
        finally:
            _reap(server)

    def iperf_tcp(self, src: str, dst: str, dst_ip: str, seconds: int = 2, port: int = 5201) -> float:
        """TCP throughput in bit/s from ``src`` to ``dst_ip`` on host ``dst``, measured by iperf3."""
        return self.iperf_tcp_together([(src, dst, dst_ip, port)], seconds)[0]

    def iperf_tcp_together(self, runs: Iterable[tuple[str, str, str, int]], seconds: int = 2,
                           omit: int = 0) -> list[float]:
        """TCP throughput in bit/s of several iperf3 runs at the same time, each (src, dst, dst_ip,
        port): servers on ``dst`` listen on ``port`` first, then every client starts at once. The
        first ``omit`` seconds (TCP's slow start) are left out of the figure, as iperf3 -O does."""
        runs = list(runs)
        limit = str(seconds + omit + 20)
        servers, clients = [], []
        try:
            for _src, dst, dst_ip, port in runs:
                servers.append(self._spawn(dst, ["timeout", limit, "iperf3", "-s", "-1", "-B", dst_ip,
                                                 "-p", str(port)]))
            for (_src, dst, _ip, port), server in zip(runs, servers, strict=True):
                listening = wait_until(
                    lambda d=dst, p=port, s=server: self._listening(d, p) or s.poll() is not None, 10)
                if not listening or server.poll() is not None:
                    raise FabricNetError(f"iperf3 server on {dst} did not start: {_drain(server)}")
            for src, _dst, dst_ip, port in runs:
                clients.append(self._spawn(src, ["timeout", limit, "iperf3", "-c", dst_ip,
                                                 "-p", str(port), "-t", str(seconds), "-O", str(omit), "-J"]))
            rates = []
            for (src, _dst, dst_ip, _port), client in zip(runs, clients, strict=True):
                out, err = client.communicate(timeout=seconds + omit + 25)
                report = json.loads(out or "{}")
                # With -J iperf3 may exit 0 and report only an error.
                if client.returncode != 0 or "error" in report or "end" not in report:
                    raise FabricNetError(f"iperf3 {src} → {dst_ip}: {report.get('error', err.strip())}")
                rates.append(float(report["end"]["sum_received"]["bits_per_second"]))
            return rates
        finally:
            for proc in servers + clients:
                _reap(proc)

    def _listening(self, host: str, port: int) -> bool:
        out = run(["ss", "-Hltn", f"sport = :{port}"], self.host(host), check=False).stdout
        return bool(out.strip())

    def _spawn(self, host: str, cmd: list[str]) -> subprocess.Popen[str]:
        """Start ``cmd`` in host's namespace as its own process group, remembered for ``stop()``."""
        node = self.host(host)
        proc = subprocess.Popen(["mnexec", "-a", str(node.pid), *cmd], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        self._procs.append(proc)
        return proc

    @staticmethod
    def _await_line(proc: subprocess.Popen[str], line: str, what: str, timeout: float) -> None:
        """Wait for ``proc`` to print ``line`` (its readiness signal) within ``timeout`` seconds."""
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        got = proc.stdout.readline().strip() if ready and proc.stdout else ""
        if got != line:
            raise FabricNetError(f"{what} not ready: {got!r} {_drain(proc)}")

    def _reap_helpers(self) -> None:
        """End every helper process still running in a host."""
        for proc in self._procs:
            _reap(proc)
        self._procs.clear()


class BackgroundPing:
    """A ping running in a host (see ``FabricNet.start_ping``)."""

    def __init__(self, proc: subprocess.Popen[str]):
        self.proc = proc

    def stop(self) -> PingReplies:
        """End the ping (it sums up on SIGINT) and return its replies."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        out, err = self.proc.communicate(timeout=10)
        sent = re.search(r"(\d+) packets transmitted", out)
        if sent is None:
            raise FabricNetError(f"ping gave no summary: {out}{err}")
        return PingReplies([float(m[1]) for m in re.finditer(r"time=([\d.]+) ms", out)], int(sent[1]))


def _reap(proc: subprocess.Popen[str]) -> None:
    """End a helper process group (started with its own session) and collect it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate(timeout=10)


def _drain(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        return "(still running)"
    _out, err = proc.communicate(timeout=5)
    return (err or "").strip()
