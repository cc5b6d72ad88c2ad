"""OpenFlow roles on real netdev OVS bridges: two controllers, one leader, the switch as the fence.

Two NsmApps with ``role_election`` share the bridges: A runs in this process (so the test can drive
``set_leader`` and write on A's connection as a deposed leader would), B in a child process (os-ken
runs one set of apps per process) that takes ``leader N`` / ``follower`` lines on stdin. Both are
started by ``controller`` below, as the runner does without a cluster: the Lease is not part of this
test (tests/test_leader.py covers it), set_leader is what the elector calls. What the switch thinks is
read from OVS itself: the Controller table's ``role`` column (OVS refreshes it every few seconds) and
the flow table.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ryu_nsm.core.flowspec import FlowSpec, Priority, Table, wire_cookie
from ryu_nsm.lab.controller_process import free_port, wait_for
from ryu_nsm.observe.status_api import StatusServer, fetch_status
from ryu_nsm.openflow import wire as ofwire
from ryu_nsm.openflow.launch import run_apps, send_bytes
from ryu_nsm.openflow.shell import NsmApp, ShellSettings
from ryu_nsm.sources.files import DirectoryWatcher
from ryu_nsm.sources.topology import load_topology

from .echo_requests import write_echo_requests

pytestmark = pytest.mark.ovs

REPO = Path(__file__).resolve().parent.parent
TAG = f"ro{os.getpid() % 10000:04d}"  # unique names for this run's bridges and ports
BR1, BR2 = f"{TAG}a", f"{TAG}b"
DPID1, DPID2 = 0x7A1, 0x7B1
CONN = "default/client/nsm-1"
AUDIT_S = 2.0
TIMEOUT = 20.0


def sh(*cmd: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{' '.join(cmd)} failed: {done.stderr.strip()}"
    return done.stdout


def write_inputs(tmp: Path) -> tuple[Path, Path, Path]:
    """The topology and one request directory per controller (same content)."""
    topo = tmp / "topo.yaml"
    topo.write_text(textwrap.dedent(f"""\
        name: roles
        switches:
          - {{name: {BR1}, dpid: {DPID1:#x}}}
          - {{name: {BR2}, dpid: {DPID2:#x}}}
        links: []
        hosts:
          - name: client
            interfaces: [{{name: eth0, switch: {BR1}, port: 10, port_name: {BR1}-c}}]
          - name: server
            interfaces: [{{name: eth0, switch: {BR1}, port: 11, port_name: {BR1}-s}}]
        """))
    dirs = []
    for side in ("a", "b"):
        requests = write_echo_requests(tmp / f"requests-{side}", f"{BR1}/{BR1}-c", f"{BR1}/{BR1}-s")
        dirs.append(requests)
    return topo, dirs[0], dirs[1]


def teardown_bridges() -> None:
    for br in (BR1, BR2):
        subprocess.run(["ovs-vsctl", "--if-exists", "del-br", br], capture_output=True)


@pytest.fixture
def bridges() -> Iterator[None]:
    teardown_bridges()
    try:
        for br, dpid in ((BR1, DPID1), (BR2, DPID2)):
            sh("ovs-vsctl", "add-br", br, "--", "set", "bridge", br, "datapath_type=netdev",
               f"other-config:datapath-id={dpid:016x}", "fail_mode=secure", "protocols=OpenFlow13")
        for name, number in ((f"{BR1}-c", 10), (f"{BR1}-s", 11)):
            sh("ovs-vsctl", "add-port", BR1, name, "--", "set", "interface", name, "type=internal",
               f"ofport_request={number}")
        yield
    finally:
        teardown_bridges()


# ---- the two controllers


@contextlib.contextmanager
def controller(topology: Path, requests: Path, of_port: int) -> Iterator[NsmApp]:
    """NsmApp with role_election on ``of_port``, its requests read from a watched directory."""
    watchers: list[DirectoryWatcher] = []

    def attach_sources(push) -> None:
        watcher = DirectoryWatcher([str(requests)], push, interval=0.2)
        watcher.poll_once()
        watcher.start()
        watchers.append(watcher)

    NsmApp.settings = ShellSettings(fabric=load_topology(topology), attach_sources=attach_sources,
                                    audit_interval=AUDIT_S, role_election=True)
    try:
        with run_apps([NsmApp], "127.0.0.1", of_port) as run:
            yield run.app(NsmApp)
    finally:
        for watcher in watchers:
            watcher.stop()


class ChildController:
    """B: an NsmApp with role_election in a child process; ``set_leader`` goes over its stdin."""

    def __init__(self, topology: Path, requests: Path, log_path: Path) -> None:
        self.of_port = free_port()
        self.status_port = free_port()
        self.log_path = log_path
        self.cmd = [sys.executable, "-m", "tests.test_of_role", str(topology), str(requests),
                    str(self.of_port), str(self.status_port)]
        self.proc: subprocess.Popen | None = None

    def start(self) -> ChildController:
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=REPO, text=True)
        if not wait_for(self._answers, TIMEOUT):
            self.stop()
            raise RuntimeError(f"child controller did not come up; log:\n{self.log()}")
        return self

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"child controller exited with {self.proc.returncode}; log:\n{self.log()}")
        try:
            self.status()
            return True
        except OSError:
            return False

    def set_leader(self, generation: int | None) -> None:
        self.proc.stdin.write("follower\n" if generation is None else f"leader {generation}\n")
        self.proc.stdin.flush()

    def status(self) -> dict:
        return fetch_status(f"http://127.0.0.1:{self.status_port}", timeout=2.0)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.stdin.close()  # ends its command loop, and with it the controller
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class LogLines(logging.Handler):
    """The in-process controller's log, as lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lock_ = threading.Lock()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with self.lock_:
            self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")

    def text(self) -> str:
        with self.lock_:
            return "\n".join(self.lines)


@contextlib.contextmanager
def in_process(topology: Path, requests: Path) -> Iterator[tuple[int, object, LogLines]]:
    """A: the same NsmApp in this process; yields (OpenFlow port, app, its log)."""
    logger = logging.getLogger("ryu_nsm")
    lines, level = LogLines(), logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    port = free_port()
    try:
        with controller(topology, requests, port) as app:
            yield port, app, lines
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)


# ---- what the switch says


def roles(bridge: str) -> dict[int, str]:
    """Controller port → role, for the connected controllers of ``bridge`` (OVS's Controller table)."""
    uuids = set(re.findall(r"[0-9a-f-]{36}", sh("ovs-vsctl", "get", "bridge", bridge, "controller")))
    table = json.loads(sh("ovs-vsctl", "--format=json", "--columns=_uuid,target,role,is_connected",
                          "list", "Controller"))
    out = {}
    for (_, uuid), target, role, connected in table["data"]:
        if uuid in uuids and connected is True:
            out[int(target.rpartition(":")[2])] = role if isinstance(role, str) else ""
    return out


_STATS = re.compile(r"\b(duration|n_packets|n_bytes|idle_age|hard_age)=[^,\s]+,?\s*")


def flows(bridge: str) -> dict[str, float]:
    """The bridge's flow table: each flow (without counters) → its age in seconds."""
    out = {}
    for line in sh("ovs-ofctl", "-O", "OpenFlow13", "dump-flows", bridge).splitlines():
        if " actions=" in line:
            out[_STATS.sub("", line.strip())] = float(re.search(r"duration=([\d.]+)s", line)[1])
    return out


def connection_state(status: dict) -> str | None:
    return next((c["state"] for c in status["connections"] if c["id"] == CONN), None)


# ---- the test


def test_roles_follow_the_leader_and_a_deposed_leader_cannot_write(bridges, tmp_path: Path) -> None:
    topology, requests_a, requests_b = write_inputs(tmp_path)
    b = ChildController(topology, requests_b, tmp_path / "b.log").start()
    try:
        with in_process(topology, requests_a) as (a_port, a, a_log):
            b_port = b.of_port

            def expect(check: Callable[[], object], what: str) -> None:
                if not wait_for(check, TIMEOUT, 0.1):
                    raise AssertionError(
                        f"{what} within {TIMEOUT}s; roles {roles(BR1)} / {roles(BR2)}, "
                        f"flows {list(flows(BR1))}\n--- A:\n{a_log.text()[-6000:]}"
                        f"\n--- B:\n{b.log()[-6000:]}")

            # Both start as followers: SLAVE on the switch, and nobody programs it.
            sh("ovs-vsctl", "set-controller", BR1, f"tcp:127.0.0.1:{a_port}", f"tcp:127.0.0.1:{b_port}")
            expect(lambda: roles(BR1) == {a_port: "slave", b_port: "slave"}, "both controllers slave")
            expect(lambda: all(s["flows"] is not None
                               for s in a.status()["switches"] + b.status()["switches"]),
                   "both controllers read the switch's flows")
            assert flows(BR1) == {}
            assert connection_state(a.status()) == connection_state(b.status()) == "pending"
            assert a.role_status() == {"leader": False, "generation": 0, "switches": {BR1: "slave"}}

            # A leads: MASTER on the switch, then it programs the connection.
            a.set_leader(1)
            expect(lambda: roles(BR1) == {a_port: "master", b_port: "slave"}, "A master, B slave")
            expect(lambda: connection_state(a.status()) == "up", "A programmed the connection")
            installed = flows(BR1)
            assert any(f"cookie={wire_cookie(CONN):#x}" in line for line in installed)

            # Hand-over: A follows, B leads with a higher generation. The roles swap; B reads the
            # switch, finds it right and changes nothing.
            a.set_leader(None)
            b.set_leader(2)
            expect(lambda: roles(BR1) == {a_port: "slave", b_port: "master"}, "roles swapped")
            expect(lambda: b.status()["role"]["switches"] == {BR1: "master"}, "B saw MASTER confirmed")
            expect(lambda: connection_state(b.status()) == "up", "B found the connection in place")
            now = flows(BR1)
            assert now.keys() == installed.keys()
            assert all(now[f] >= installed[f] for f in now), "flows were re-installed on hand-over"
            assert not re.search(r"program \d+: ", b.log()), "B changed flows that were already right"

            # A switch that connects while B leads gets MASTER from B first, and only B programs it.
            sh("ovs-vsctl", "set-controller", BR2, f"tcp:127.0.0.1:{a_port}", f"tcp:127.0.0.1:{b_port}")
            expect(lambda: roles(BR2) == {a_port: "slave", b_port: "master"}, "new switch: B master")
            expect(lambda: len(flows(BR2)) == 2, "B installed the new switch's pipeline")
            assert "OFPBRC_IS_SLAVE" not in a_log.text() + b.log()

            # Back to A (generation 3); then B claims generation 4 while nobody tells A: a deposed
            # leader that still believes it leads. The switch demotes A and says so.
            b.set_leader(None)
            a.set_leader(3)
            expect(lambda: a.role_status()["switches"] == {BR1: "master", BR2: "master"}, "A master again")
            b.set_leader(4)
            expect(lambda: roles(BR1) == {a_port: "slave", b_port: "master"}, "B took MASTER from A")
            expect(lambda: a.role_status()["switches"].get(BR1) == "slave", "A learnt it was demoted")
            assert a.role_status()["leader"] is True
            before = flows(BR1)

            # The deposed A now wants the connection gone: it holds the program instead of sending it.
            (requests_a / "client.yaml").unlink()
            expect(lambda: re.search(rf"program \d+ held: not MASTER on .*{BR1}", a_log.text()), "A held it")
            assert flows(BR1).keys() == before.keys()

            # Were A to write anyway (on its own connection), the switch refuses: IS_SLAVE.
            intruder = FlowSpec.make(Table.CLASSIFY, Priority.WIRE, {"in_port": 11}, [("output", 10)],
                                     cookie=wire_cookie("intruder"))
            send_bytes(a.datapaths[DPID1], ofwire.encode_flow_mod(intruder, ofwire.OFPFC_ADD, 0x5EED0001)
                       + ofwire.encode_barrier(0x5EED0002))
            expect(lambda: "OFPET_BAD_REQUEST/OFPBRC_IS_SLAVE" in a_log.text(), "the switch refused A")
            assert flows(BR1).keys() == before.keys()

            # A asks for MASTER again with its old generation: stale, refused; A stays SLAVE there.
            a.set_leader(3)
            expect(lambda: "refused MASTER for generation 3 as stale" in a_log.text(), "stale MASTER refused")
            expect(lambda: a.role_status()["switches"] == {BR1: "slave", BR2: "slave"}, "A SLAVE again")
            assert roles(BR1) == {a_port: "slave", b_port: "master"}
            assert flows(BR1).keys() == before.keys()
            assert connection_state(b.status()) == "up"
            assert " rejected " not in b.log(), b.log()
            rejected = [line for line in a_log.text().splitlines() if " rejected " in line]
            assert rejected and all("OFPBRC_IS_SLAVE" in line for line in rejected), rejected
    finally:
        b.stop()


def _child(topology: str, requests: str, of_port: str, status_port: str) -> None:
    """B's process: the controller with role_election; each stdin line is one ``set_leader`` call."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with controller(Path(topology), Path(requests), int(of_port)) as app:
        status = StatusServer(app.status, "127.0.0.1", int(status_port)).start()
        try:
            for line in sys.stdin:
                word, *args = line.split()
                app.set_leader(int(args[0]) if word == "leader" else None)
        finally:
            status.stop()


if __name__ == "__main__":
    _child(*sys.argv[1:])
