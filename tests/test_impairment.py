"""The impairment element between real namespaces: nsA --veth-- nsI (element) --veth-- nsB.

No OVS and no Mininet. IPv6 is off and the neighbours are static in every namespace, so the only
frames the element sees are the test's own: its counters can be checked exactly.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ryu_nsm.lab.impairment import Impairment, start_in_netns
from ryu_nsm.lab.impairment_relay import COUNTERS, ImpairmentError, Schedule, Settings

IP_A, IP_B = "10.66.0.1", "10.66.0.2"
REPLY = re.compile(r"(?:\[(?P<ts>[\d.]+)\] )?\d+ bytes from [\d.]+: icmp_seq=\d+ .*time=(?P<rtt>[\d.]+) ms")


def sh(*cmd: str, check: bool = True, timeout: float = 30.0) -> str:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout).stdout


def wait_for(ready: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


@dataclass
class Net:
    ns_a: str
    ns_i: str
    ns_b: str

    def run(self, ns: str, *cmd: str, **kwargs: object) -> str:
        return sh("ip", "netns", "exec", ns, *cmd, **kwargs)

    def mac(self, ns: str, ifname: str) -> str:
        return json.loads(sh("ip", "-n", ns, "-j", "link", "show", ifname))[0]["address"]

    def offloads_off(self) -> None:
        """Per-packet frames from the senders (no TSO/GSO super-frames, complete checksums)."""
        for ns, ifname in ((self.ns_a, "a0"), (self.ns_b, "b0")):
            self.run(ns, "ethtool", "-K", ifname, "tso", "off", "gso", "off", "gro", "off", "tx", "off")


@dataclass
class PingRun:
    sent: int
    received: int
    rtts: list[float]  # ms, in reply order
    lines: list[str]


def parse_ping(out: str) -> PingRun:
    summary = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert summary, out
    lines = [line for line in out.splitlines() if REPLY.search(line)]
    rtts = [float(REPLY.search(line)["rtt"]) for line in lines]
    return PingRun(int(summary[1]), int(summary[2]), rtts, lines)


def ping(net: Net, count: int, interval: float = 0.01, wait: float = 1.0) -> PingRun:
    """Ping from nsA; ping's exit status is ignored because lost replies are what some tests want."""
    out = net.run(net.ns_a, "ping", "-n", "-c", str(count), "-i", str(interval), "-W", str(wait),
                  IP_B, check=False, timeout=count * interval + 30)
    return parse_ping(out)


def delta(after: dict, before: dict) -> dict[str, dict[str, int]]:
    return {d: {k: after[d][k] - before[d][k] for k in after[d] if k != "queued"} for d in ("a2b", "b2a")}


def assert_balanced(stats: dict[str, dict[str, int]]) -> None:
    for counts in stats.values():
        assert set(counts) == set(COUNTERS)
        parts = sum(counts[k] for k in ("relayed", "dropped", "overflow", "failed", "queued"))
        assert counts["received"] == parts, counts


def namespace_pids(ns: str) -> list[int]:
    return [int(pid) for pid in sh("ip", "netns", "pids", ns, check=False).split()]


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def net() -> Iterator[Net]:
    suffix = secrets.token_hex(3)
    net = Net(f"impA-{suffix}", f"impI-{suffix}", f"impB-{suffix}")
    made: list[str] = []
    try:
        for ns in (net.ns_a, net.ns_i, net.ns_b):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            # No IPv6 (no router solicitations, no DAD), set before the links exist so they inherit it.
            net.run(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for ns, ifname, ns2, peer in ((net.ns_a, "a0", net.ns_i, "ia"), (net.ns_i, "ib", net.ns_b, "b0")):
            sh("ip", "link", "add", ifname, "netns", ns, "type", "veth", "peer", "name", peer, "netns", ns2)
        for ns, ifname, addr in ((net.ns_a, "a0", IP_A), (net.ns_b, "b0", IP_B)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", ifname)
            sh("ip", "-n", ns, "link", "set", ifname, "up")
        mac_a, mac_b = net.mac(net.ns_a, "a0"), net.mac(net.ns_b, "b0")
        # Static neighbours: no ARP frames besides the test's own traffic.
        sh("ip", "-n", net.ns_a, "neigh", "replace", IP_B, "lladdr", mac_b, "dev", "a0", "nud", "permanent")
        sh("ip", "-n", net.ns_b, "neigh", "replace", IP_A, "lladdr", mac_a, "dev", "b0", "nud", "permanent")
        yield net
    finally:
        leftovers = {}
        for ns in made:
            # Only processes this test started can be in its namespaces; a leftover is a failure below.
            leftovers[ns] = namespace_pids(ns)
            for pid in leftovers[ns]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            sh("ip", "netns", "del", ns, check=False)
        assert not any(leftovers.values()), f"processes left behind: {leftovers}"


@pytest.fixture
def control() -> Iterator[str]:
    # A short path of our own: unix socket paths are limited to 107 bytes.
    folder = tempfile.mkdtemp(prefix="imp-", dir="/tmp")
    try:
        yield os.path.join(folder, "control.sock")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def element(net: Net, control: str) -> Iterator[Impairment]:
    imp = start_in_netns(net.ns_i, "ia", "ib", control, seed=7, lifetime=300)
    try:
        yield imp
    finally:
        imp.stop()


# ---- the pure schedule -----------------------------------------------------------------------


def test_schedule_keeps_arrival_order_when_the_delay_is_lowered():
    schedule = Schedule("a2b", Settings(delay_ms=100))
    first = schedule.admit(100, now=0.0)
    schedule.settings = Settings(delay_ms=10)
    second = schedule.admit(100, now=0.001)
    assert first == pytest.approx(0.1)
    assert second >= first


def test_schedule_rate_cap_spaces_frames_by_their_serialisation_time():
    schedule = Schedule("a2b", Settings(delay_ms=5, rate_bps=8_000))  # 1 byte per ms
    releases = [schedule.admit(100, now=0.0) for _ in range(3)]
    assert releases == pytest.approx([0.105, 0.205, 0.305])


def test_schedule_jitter_stays_within_bounds_and_loss_is_repeatable_per_seed():
    jittery = Schedule("a2b", Settings(delay_ms=20, jitter_ms=5), seed=3)
    releases = [jittery.admit(100, now=1.0) for _ in range(500)]
    assert all(1.015 <= r <= 1.025 for r in releases)
    assert len(set(releases)) > 400

    def decisions(seed: int) -> list[bool]:
        lossy = Schedule("a2b", Settings(loss=0.5), seed=seed)
        return [lossy.admit(100, now=0.0) is None for _ in range(200)]

    assert decisions(11) == decisions(11)
    assert decisions(11) != decisions(12)
    assert 60 < sum(decisions(11)) < 140


def test_settings_refuse_bad_values_with_the_field_named():
    for change, field in (({"loss": 1.5}, "loss"), ({"delay_ms": -1}, "delay_ms"), ({"limit": 0}, "limit"),
                          ({"delay_ms": True}, "delay_ms"), ({"delay": 5}, "delay")):
        with pytest.raises(ImpairmentError, match=field):
            Settings().updated(change)


# ---- the element between namespaces ----------------------------------------------------------


def test_ping_passes_unimpaired_and_every_frame_is_counted(net, element):
    before = element.stats()
    run = ping(net, 20)
    assert (run.sent, run.received) == (20, 20)
    after = element.stats()
    assert_balanced(after)
    moved = delta(after, before)
    for direction in ("a2b", "b2a"):
        assert moved[direction]["received"] == 20
        assert moved[direction]["relayed"] == 20
        assert moved[direction]["relayed_bytes"] == 20 * 98  # 14 Ethernet + 20 IP + 8 ICMP + 56 data
        assert moved[direction]["dropped"] == 0


def test_delay_adds_to_the_round_trip_per_direction(net, element):
    baseline = ping(net, 10)
    assert baseline.received == 10

    applied = element.set(delay_ms=50)
    assert applied["a2b"]["delay_ms"] == applied["b2a"]["delay_ms"] == 50
    both = ping(net, 10, interval=0.02)
    assert both.received == 10
    # A frame is never released early: the lower bound is strict; the machine is noisy, so the upper is not.
    assert min(both.rtts) >= 100.0
    assert max(both.rtts) < 100.0 + max(baseline.rtts) + 150.0

    element.set(delay_ms=0, direction="b2a")
    one_way = ping(net, 10, interval=0.02)
    assert one_way.received == 10
    assert min(one_way.rtts) >= 50.0
    assert max(one_way.rtts) < 100.0


def test_total_loss_in_one_direction_stops_pings_and_clearing_it_restores_them(net, element):
    before = element.stats()
    element.set(loss=1.0, direction="a2b")
    assert ping(net, 10, wait=0.5).received == 0
    moved = delta(element.stats(), before)
    assert moved["a2b"]["dropped"] == 10 and moved["a2b"]["relayed"] == 0
    assert moved["b2a"]["received"] == 0

    element.set(loss=0.0, direction="a2b")
    element.set(loss=1.0, direction="b2a")
    before = element.stats()
    assert ping(net, 10, wait=0.5).received == 0
    moved = delta(element.stats(), before)
    assert moved["a2b"]["relayed"] == 10  # the requests got through; the replies did not
    assert moved["b2a"]["dropped"] == 10

    element.set(loss=0.0)
    assert ping(net, 10).received == 10


def test_seeded_loss_is_binomial_counted_exactly_and_repeatable(net, element):
    def lossy_run() -> tuple[int, dict[str, dict[str, int]]]:
        element.set(loss=0.3, seed=1234, direction="a2b")
        before = element.stats()
        run = ping(net, 300, interval=0.005, wait=1.0)
        assert run.sent == 300
        return run.received, delta(element.stats(), before)

    received, moved = lossy_run()
    # 300 trials at p=0.7: mean 210, sd 7.9; four sd either side.
    assert abs(received - 210) <= 32
    assert moved["a2b"]["dropped"] == 300 - received
    assert moved["a2b"]["relayed"] == received
    assert moved["b2a"]["relayed"] == received and moved["b2a"]["dropped"] == 0
    again, _ = lossy_run()
    assert again == received


def test_a_refused_request_changes_nothing(net, element):
    element.set(delay_ms=5)
    with pytest.raises(ImpairmentError, match="loss"):
        element.request({"delay_ms": 40, "loss": 2})
    with pytest.raises(ImpairmentError, match="direction"):
        element.set(delay_ms=40, direction="sideways")
    with pytest.raises(ImpairmentError, match="unknown setting"):
        element.request({"delay": 40})
    settings = element.settings()
    assert settings["a2b"]["delay_ms"] == settings["b2a"]["delay_ms"] == 5
    assert settings["a2b"]["loss"] == 0


def test_a_delay_change_during_traffic_takes_effect(net, element):
    proc = subprocess.Popen(["ip", "netns", "exec", net.ns_a, "ping", "-n", "-D", "-c", "150", "-i", "0.02",
                             "-W", "1", IP_B], stdout=subprocess.PIPE, text=True)
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 10
        while sum(bool(REPLY.search(line)) for line in seen) < 20:
            assert time.monotonic() < deadline, f"ping did not get going: {seen}"
            if select.select([proc.stdout], [], [], 0.5)[0]:
                seen.append(proc.stdout.readline())
        asked = time.time()
        element.set(delay_ms=40)
        applied = time.time()
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    run = parse_ping("".join(seen) + out)
    replies = [REPLY.search(line) for line in run.lines]
    before = [float(m["rtt"]) for m in replies if float(m["ts"]) < asked]
    # A reply's send time is its arrival stamp minus its round trip.
    after = [float(m["rtt"]) for m in replies if float(m["ts"]) - float(m["rtt"]) / 1000 > applied + 0.005]
    assert len(before) >= 20 and len(after) >= 20, (len(before), len(after))
    assert max(before) < 80.0
    assert min(after) >= 80.0


# Run inside a namespace: send each (hex frame, ethertype, vnet header) of stdin's JSON on argv[1].
SEND_FRAMES = """
import json, socket, sys
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
sock.setsockopt(263, 15, 1)  # PACKET_VNET_HDR: the frames may carry a partial checksum
sock.bind((sys.argv[1], 0))
for frame, ethertype, vnet in json.load(sys.stdin):
    sock.sendto(bytes.fromhex(vnet + frame), (sys.argv[1], ethertype))
"""

# Run inside a namespace: print each UDP frame that argv[1] receives (tag from aux data put back), up
# to argv[2] of them.
RECEIVE_FRAMES = """
import json, socket, struct, sys
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
sock.setsockopt(263, 8, 1)  # PACKET_AUXDATA
sock.bind((sys.argv[1], 3))
sock.settimeout(10)
print("ready", flush=True)
seen = 0
while seen < int(sys.argv[2]):
    data, ancillary, _flags, _addr = sock.recvmsg(65536, 64)
    status, _, _, _, _, tci, tpid = struct.unpack("=IIIHHHH", ancillary[0][2][:20])
    if status & 0x10:
        data = data[:12] + struct.pack("!HH", tpid if status & 0x40 else 0x8100, tci) + data[12:]
    if b"impairment-check" in data:
        seen += 1
        print(data.hex(), flush=True)
"""

UDP_PAYLOAD = b"impairment-check:" + bytes(range(64))


def ones_sum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def udp_frame(dst: bytes, src: bytes, tags: list[tuple[int, int]]) -> tuple[bytes, int]:
    """A (possibly tagged) IPv4/UDP frame with a partial checksum (pseudo-header sum only), and its
    checksum start: what a kernel hands a device that offloads checksums."""
    sip, dip = bytes([10, 66, 0, 1]), bytes([10, 66, 0, 2])
    length = 8 + len(UDP_PAYLOAD)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 1, 0, 64, 17, 0, sip, dip))
    ip[10:12] = struct.pack("!H", 0xFFFF - ones_sum(bytes(ip)))
    pseudo = sip + dip + struct.pack("!BBH", 0, 17, length)
    udp = struct.pack("!HHHH", 4000, 4001, length, ones_sum(pseudo)) + UDP_PAYLOAD
    head = dst + src + b"".join(struct.pack("!HH", tpid, tci) for tpid, tci in tags) + b"\x08\x00"
    return head + bytes(ip) + udp, len(head) + 20


def udp_checksum_ok(frame: bytes) -> bool:
    ip_at = frame.index(b"\x08\x00\x45", 12) + 2
    ip, udp = frame[ip_at:ip_at + 20], frame[ip_at + 20:]
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, len(udp))
    return ones_sum(pseudo + udp) == 0xFFFF


def test_vlan_tags_and_partial_checksums_survive_the_element(net, element):
    """The kernel moves the outer tag out of a received frame; the element must put it back, and move
    the start of a not-yet-computed checksum along with it (no 8021q module here: raw frames)."""
    mac_a = bytes.fromhex(net.mac(net.ns_a, "a0").replace(":", ""))
    mac_b = bytes.fromhex(net.mac(net.ns_b, "b0").replace(":", ""))
    sent = [([(0x8100, 0x6064)], 0x8100), ([(0x88A8, 200), (0x8100, 300)], 0x88A8), ([], 0x0800)]
    frames = []
    for tags, ethertype in sent:
        frame, csum_start = udp_frame(mac_b, mac_a, tags)
        vnet = struct.pack("=BBHHHH", 1, 0, 0, 0, csum_start, 6)  # NEEDS_CSUM at the UDP checksum
        frames.append((frame.hex(), ethertype, vnet.hex()))
    receiver = subprocess.Popen(["ip", "netns", "exec", net.ns_b, sys.executable, "-c", RECEIVE_FRAMES, "b0",
                                 str(len(sent))], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert select.select([receiver.stdout], [], [], 10)[0], "receiver did not start"
        assert receiver.stdout.readline().strip() == "ready"
        subprocess.run(["ip", "netns", "exec", net.ns_a, sys.executable, "-c", SEND_FRAMES, "a0"],
                       input=json.dumps(frames), text=True, check=True, timeout=30)
        out, err = receiver.communicate(timeout=30)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.communicate()
    got = [bytes.fromhex(line) for line in out.split()]
    assert len(got) == len(sent), err
    for (tags, _), frame in zip(sent, got, strict=True):
        tag_bytes = b"".join(struct.pack("!HH", tpid, tci) for tpid, tci in tags)
        assert frame[:12] == mac_b + mac_a
        assert frame[12:12 + len(tag_bytes) + 2] == tag_bytes + b"\x08\x00"
        assert frame.endswith(UDP_PAYLOAD)
        assert udp_checksum_ok(frame)
    assert element.stats()["a2b"]["relayed"] == len(sent)


def iperf_mbit(net: Net, server_ip: str, seconds: int = 2) -> float:
    """TCP goodput from nsA to nsB in Mbit/s, as the receiver measured it."""
    server = subprocess.Popen(["ip", "netns", "exec", net.ns_b, "iperf3", "-s", "-1", "-B", server_ip],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: ":5201" in net.run(net.ns_b, "ss", "-Hltn"), "iperf3 server")
        out = net.run(net.ns_a, "iperf3", "-c", server_ip, "-t", str(seconds), "-J", timeout=seconds + 30)
        server.wait(timeout=10)
    finally:
        if server.poll() is None:
            server.kill()
        server.communicate()
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6


def test_tcp_bulk_passes_with_and_without_sender_offloads(net, element):
    assert iperf_mbit(net, IP_B) > 20  # super-frames relayed whole
    net.offloads_off()
    before = element.stats()
    assert iperf_mbit(net, IP_B) > 20  # frame by frame
    moved = delta(element.stats(), before)
    assert moved["a2b"]["failed"] == moved["a2b"]["overflow"] == 0


def test_rate_cap_limits_tcp_goodput(net, element):
    net.offloads_off()
    element.set(rate_bps=10e6, limit=100)
    goodput = iperf_mbit(net, IP_B, seconds=3)
    # On the wire 1514 bytes carry 1448 of payload: at most 9.6 Mbit/s of goodput.
    assert 6.0 < goodput < 10.0


def test_the_element_outlives_a_link_cut_and_relays_again_after_it(net, element):
    assert ping(net, 3).received == 3
    sh("ip", "-n", net.ns_i, "link", "set", "ia", "down")
    assert ping(net, 3, wait=0.5).received == 0
    sh("ip", "-n", net.ns_i, "link", "set", "ia", "up")
    wait_for(lambda: ping(net, 1, wait=0.5).received == 1, "pings through the element again")
    assert element.process is not None and element.process.poll() is None
    assert ping(net, 10).received == 10


def test_sigterm_ends_the_element_cleanly_and_leaves_nothing(net, element, control):
    element.set(delay_ms=500, direction="a2b")
    pinger = subprocess.Popen(["ip", "netns", "exec", net.ns_a, "ping", "-n", "-c", "20", "-i", "0.02", IP_B],
                              stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: element.stats()["a2b"]["queued"] > 0, "frames queued in the element")
        assert element.process is not None
        pid = element.process.pid
        assert element.stop() == 0
    finally:
        pinger.kill()
        pinger.wait()
    assert not Path(control).exists()
    assert pid not in namespace_pids(net.ns_i)
    for ifname in ("ia", "ib"):
        link = json.loads(sh("ip", "-n", net.ns_i, "-d", "-j", "link", "show", ifname))[0]
        assert link["promiscuity"] == 0  # promiscuity belonged to the element's sockets
    assert "stopped" in element.log
    with pytest.raises(ImpairmentError):
        element.stats()


def test_the_element_stops_by_itself_when_its_launcher_is_gone(net, control):
    launcher = subprocess.Popen(["sleep", "600"])
    command = [sys.executable, "-m", "ryu_nsm.lab.impairment", "--a", "ia", "--b", "ib", "--control", control,
               "--watch-pid", str(launcher.pid)]
    proc = subprocess.Popen(["ip", "netns", "exec", net.ns_i, *command],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        client = Impairment(control)

        def answers() -> bool:
            try:
                return bool(client.stats())
            except ImpairmentError:
                return False

        wait_for(answers, "the element to answer")
        launcher.kill()
        launcher.wait()
        wait_for(lambda: proc.poll() is not None, "the element to notice", timeout=10)
        assert proc.returncode == 0
        assert not Path(control).exists()
    finally:
        for p in (proc, launcher):
            if p.poll() is None:
                p.kill()
            p.communicate()


class NetnsHost:
    """Stands in for a Mininet host: its popen runs a command inside the host's namespace."""

    def __init__(self, ns: str):
        self.ns = ns

    def popen(self, cmd: list[str], **kwargs: object) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.ns, *cmd], start_new_session=True, **kwargs)


def test_start_in_a_host_object_that_has_popen(net, control):
    imp = start_in_netns(NetnsHost(net.ns_i), "ia", "ib", control, lifetime=60)
    try:
        assert ping(net, 5).received == 5
        assert imp.stats()["a2b"]["relayed"] == 5
    finally:
        assert imp.stop() == 0


def test_a_second_element_on_a_live_control_socket_is_refused(net, element, control):
    with pytest.raises(ImpairmentError, match="another process answers"):
        start_in_netns(net.ns_i, "ia", "ib", control, timeout=5)
    assert ping(net, 5).received == 5  # the first one still relays
