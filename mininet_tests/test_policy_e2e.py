"""MultiNetworkPolicy end to end on Mininet: real TCP, UDP and ICMP against a truth table.

One fabric for the module (switches pm1 – pm2): clients ``front`` (role=front) and ``back``
(role=back) on pm1 ask for network service ``web`` of namespace ``shop`` (labels team=shop); the
service sends front to endpoint ``srv-a`` (tier=a) and back to ``srv-b`` (tier=b), both app=srv on
pm2, each running an echo listener on TCP and UDP 80 and 81. Each scenario replaces the policy
file the controller watches, waits until the status shows the policies that govern the wires, then
probes every client on TCP 80/81, UDP 80/81 and ICMP until the table holds or a deadline passes.
Clients in another namespace than their service are not in the model (docs/policy.md), so the
namespace scenarios tell the service's namespace apart by its labels.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ryu_nsm.lab.controller_process import ControllerProcess
from ryu_nsm.lab.mininet_commands import wait_until
from ryu_nsm.lab.mininet_fabric import FabricNet, build_network, cleanup
from ryu_nsm.sources.topology import load_topology

pytestmark = pytest.mark.mininet

NAMESPACE = "shop"
CLIENTS = {"front": ("pmc1", "10.0.0.11"), "back": ("pmc2", "10.0.0.12")}  # pod → (host, its server's IP)
SERVERS = {"pms1": "10.0.0.11", "pms2": "10.0.0.12"}
WIRES = {f"{NAMESPACE}/{pod}/nsm-1" for pod in CLIENTS}
PROBES = ("tcp/80", "tcp/81", "udp/80", "udp/81", "icmp")
APPLY_WITHIN, HOLD_WITHIN = 30.0, 8.0

TOPOLOGY = """\
name: policy-e2e
defaults: {capacity: 1Gbit, latency: 1ms, cost: 1}
switches: [{name: pm1, dpid: 0x706d0001}, {name: pm2, dpid: 0x706d0002}]
links: [[pm1, pm2]]
hosts:
  - {name: pmc1, interfaces: [{name: eth0, switch: pm1, ip: 10.0.0.1/24, port_name: pm1-c1}]}
  - {name: pmc2, interfaces: [{name: eth0, switch: pm1, ip: 10.0.0.2/24, port_name: pm1-c2}]}
  - {name: pms1, interfaces: [{name: eth0, switch: pm2, ip: 10.0.0.11/24, port_name: pm2-s1}]}
  - {name: pms2, interfaces: [{name: eth0, switch: pm2, ip: 10.0.0.12/24, port_name: pm2-s2}]}
"""

REQUESTS = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: shop}}
---
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata: {name: web, namespace: shop}
spec:
  payload: ETHERNET
  matches:
    - {source_selector: {role: front}, routes: [{destination_selector: {tier: a}}]}
    - {source_selector: {role: back}, routes: [{destination_selector: {tier: b}}]}
""" + "".join(f"""\
---
apiVersion: networkservicemesh.io/v1
kind: NetworkServiceEndpoint
metadata:
  name: srv-{tier}
  namespace: shop
  labels: {{app: srv, tier: {tier}}}
  annotations: {{ryu-nsm.io/attachments: pm2/pm2-s{n}, ryu-nsm.io/ports: "http=81/TCP"}}
spec:
  network_service_names: [web]
  network_service_labels: {{web: {{labels: {{tier: {tier}}}}}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: {role}
  namespace: shop
  labels: {{role: {role}}}
  annotations:
    networkservicemesh.io: kernel://web/nsm-1?role={role}
    ryu-nsm.io/attachments: nsm-1=pm1/pm1-c{n}
""" for n, tier, role in ((1, "a", "front"), (2, "b", "back")))

# Echo on TCP and UDP 80 and 81, every TCP connection served until its client closes it.
_LISTENER = """
import socket, sys, threading
ip = sys.argv[1]
def tcp(port):
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((ip, port)); srv.listen(16); ready.release()
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()
def echo(conn):
    with conn:
        while (data := conn.recv(4096)):
            conn.sendall(data)
def udp(port):
    srv = socket.socket(type=socket.SOCK_DGRAM); srv.bind((ip, port)); ready.release()
    while True:
        data, peer = srv.recvfrom(4096); srv.sendto(data, peer)
ready = threading.Semaphore(0)
for port in (80, 81):
    for serve in (tcp, udp):
        threading.Thread(target=serve, args=(port,), daemon=True).start()
for _ in range(4):
    ready.acquire()
print("listening", flush=True)
threading.Event().wait()
"""

# Every probe at once, each with its own deadline: {"tcp/80": true, ...} on stdout.
_PROBE = """
import json, os, socket, subprocess, sys, threading
ip, limit = sys.argv[1], float(sys.argv[2])
got = {}
def tcp(port):
    token = os.urandom(8)
    try:
        with socket.create_connection((ip, port), timeout=limit) as c:
            c.sendall(token); got[f"tcp/{port}"] = c.recv(64) == token
    except OSError:
        got[f"tcp/{port}"] = False
def udp(port):
    token = os.urandom(8)
    with socket.socket(type=socket.SOCK_DGRAM) as s:
        s.settimeout(limit)
        try:
            s.sendto(token, (ip, port)); got[f"udp/{port}"] = s.recv(64) == token
        except OSError:
            got[f"udp/{port}"] = False
def icmp():
    done = subprocess.run(["ping", "-n", "-q", "-c", "1", "-W", str(int(limit + 0.5)), ip],
                          capture_output=True)
    got["icmp"] = done.returncode == 0
threads = [threading.Thread(target=f, args=a) for f, a in
           ((tcp, (80,)), (tcp, (81,)), (udp, (80,)), (udp, (81,)), (icmp, ()))]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(got))
"""

# A TCP connection that stays up: one echo exchange per line on stdin, "ok" or "fail" for each.
_KEEP = """
import os, socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
print("connected", flush=True)
for _ in sys.stdin:
    token = os.urandom(8)
    try:
        c.sendall(token); data = b""
        while len(data) < len(token):
            chunk = c.recv(len(token) - len(data))
            if not chunk:
                break
            data += chunk
        print("ok" if data == token else "fail", flush=True)
    except OSError:
        print("fail", flush=True)
"""


def policy(name: str, selector: str, **spec: str) -> str:
    """A MultiNetworkPolicy for web in shop; ``spec`` fields as YAML flow text."""
    body = "".join(f"\n  {key}: {value}" for key, value in spec.items())
    return textwrap.dedent(f"""\
        apiVersion: k8s.cni.cncf.io/v1beta1
        kind: MultiNetworkPolicy
        metadata:
          name: {name}
          namespace: shop
          annotations: {{k8s.v1.cni.cncf.io/policy-for: web}}
        spec:
          podSelector: {selector}""") + body + "\n"


SERVERS_SEL, ALL = "{matchLabels: {app: srv}}", set(PROBES)


@dataclass(frozen=True)
class Scenario:
    name: str
    policies: tuple[str, ...]  # documents
    front: frozenset[str]  # probes that pass for each client
    back: frozenset[str]

    @property
    def names(self) -> set[str]:
        return {f"{NAMESPACE}/{doc.split('name: ', 1)[1].split()[0]}" for doc in self.policies}


def scenario(name: str, front, back, *policies: str) -> Scenario:
    return Scenario(name, policies, frozenset(front), frozenset(back))


SCENARIOS = [
    scenario("no policy", ALL, ALL),
    scenario("deny all ingress", (), (),
             policy("deny-in", SERVERS_SEL, policyTypes="[Ingress]")),
    scenario("allow from a namespace, TCP 80", {"tcp/80"}, {"tcp/80"},
             policy("from-shop", SERVERS_SEL,
                    ingress="[{from: [{namespaceSelector: {matchLabels: {team: shop}}}], "
                            "ports: [{port: 80}]}]")),
    scenario("allow from a namespace it is not", (), (),
             policy("from-else", SERVERS_SEL,
                    ingress="[{from: [{namespaceSelector: {matchLabels: {team: other}}}]}]")),
    scenario("allow from pods in a namespace (AND)", ALL, (),
             policy("and", SERVERS_SEL, ingress="[{from: [{namespaceSelector: {matchLabels: {team: shop}}, "
                                               "podSelector: {matchLabels: {role: front}}}]}]")),
    scenario("ipBlock with except", ALL, (),
             policy("block", SERVERS_SEL,
                    ingress="[{from: [{ipBlock: {cidr: 10.0.0.0/24, except: [10.0.0.2/32]}}]}]")),
    scenario("named port", {"tcp/81"}, {"tcp/81"},
             policy("named", SERVERS_SEL, ingress="[{ports: [{port: http}]}]")),
    scenario("endPort range", {"udp/80", "udp/81"}, {"udp/80", "udp/81"},
             policy("range", SERVERS_SEL, ingress="[{ports: [{protocol: UDP, port: 80, endPort: 81}]}]")),
    scenario("egress deny", ALL, (),
             policy("back-out", "{matchLabels: {role: back}}", policyTypes="[Egress]")),
    scenario("egress allow to one endpoint", ALL, (),
             policy("to-a", "{matchExpressions: [{key: role, operator: Exists}]}",
                    egress="[{to: [{podSelector: {matchLabels: {tier: a}}}]}]")),
    scenario("policies add up", {"tcp/80"}, {"udp/81"},
             policy("add-1", SERVERS_SEL, ingress="[{from: [{podSelector: {matchLabels: {role: front}}}], "
                                                 "ports: [{port: 80}]}]"),
             policy("add-2", SERVERS_SEL, ingress="[{from: [{podSelector: {matchLabels: {role: back}}}], "
                                                 "ports: [{protocol: UDP, port: 81}]}]")),
    scenario("egress and ingress both must allow", {"tcp/80", "tcp/81"}, (),
             policy("in-tcp", SERVERS_SEL, ingress="[{ports: [{port: 80, endPort: 81}]}]"),
             policy("out-udp", "{matchLabels: {role: back}}", egress="[{ports: [{protocol: UDP}]}]")),
    scenario("policy removed again", ALL, ALL),
]


class PolicyLab:
    """The module's controller and network, and the policy file the controller watches."""

    def __init__(self, ctl: ControllerProcess, net: FabricNet, requests: Path, work: Path):
        self.ctl, self.net, self.requests, self.work = ctl, net, requests, work

    def apply(self, docs: tuple[str, ...], names: set[str]) -> None:
        """Replace the policy file (atomically) and wait until the status shows exactly ``names``
        governing the wires, both up."""
        staged = self.work / "policies.yaml"
        staged.write_text("---\n".join(docs))
        staged.rename(self.requests / "policies.yaml")
        self.ctl.wait_connections(lambda cs: WIRES <= cs.keys() and all(
            cs[w]["state"] == "up" for w in WIRES) and governing(cs) == names, APPLY_WITHIN)

    def probe(self) -> dict[str, dict[str, bool]]:
        """Every probe of every client at once: pod → probe → passed."""
        procs = {pod: subprocess.Popen(
            ["mnexec", "-a", str(self.net.host(host).pid), sys.executable, "-c", _PROBE, ip, "1.5"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for pod, (host, ip) in CLIENTS.items()}
        out = {}
        for pod, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=30)
            assert proc.returncode == 0, f"probe from {pod} failed: {stderr}"
            out[pod] = json.loads(stdout)
        return out

    def holds(self, want: Scenario, within: float = HOLD_WITHIN) -> tuple[bool, dict]:
        """Probe until the table is ``want``'s or ``within`` passes; (held, last table)."""
        expected = {"front": want.front, "back": want.back}
        last: dict = {}

        def matches() -> bool:
            nonlocal last
            last = self.probe()
            return all({p for p, ok in last[pod].items() if ok} == expected[pod] for pod in CLIENTS)

        return wait_until(matches, within, 0.2), last


def stop(proc: subprocess.Popen) -> None:
    """End a helper started in its own session: its whole group (``timeout`` and its child)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate(timeout=10)


def governing(connections: dict) -> set[str]:
    """The policies (namespace/name) the status says govern some wire."""
    return {why.split()[0] for c in connections.values()
            for why in c.get("policy", {}).get("governed_by", ())}


def truth_table(rows: list[tuple[Scenario, dict]]) -> str:
    """Expected vs got, one line per scenario and client; mismatches marked."""
    head = f"{'scenario':40} {'client':6} " + " ".join(f"{p:7}" for p in PROBES)
    lines = [head, "-" * len(head)]
    for want, got in rows:
        for pod in CLIENTS:
            expected = want.front if pod == "front" else want.back
            cells = []
            for p in PROBES:
                e, g = p in expected, bool(got.get(pod, {}).get(p))
                cells.append(f"{'✔' if e else '✘'}/{'✔' if g else '✘'}{'!' if e != g else ' '}".ljust(7))
            lines.append(f"{want.name[:40]:40} {pod:6} " + " ".join(cells))
    return "expected/got per probe (! = differs)\n" + "\n".join(lines)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[PolicyLab]:
    """One controller and fabric for every scenario of the module; echo listeners on both servers."""
    work = tmp_path_factory.mktemp("policy-e2e")
    topology, requests = work / "topology.yaml", work / "requests"
    topology.write_text(TOPOLOGY)
    requests.mkdir()
    (requests / "web.yaml").write_text(REQUESTS)
    (requests / "policies.yaml").write_text("")
    cleanup()
    listeners: list[subprocess.Popen] = []
    try:
        with ControllerProcess(topology, [requests], work / "controller.log",
                               extra_args=["--watch-interval", "0.1"]) as ctl:
            with build_network(load_topology(topology), ctl.of_port) as net:
                for host, ip in SERVERS.items():
                    proc = subprocess.Popen(["mnexec", "-a", str(net.host(host).pid), "timeout", "600",
                                             sys.executable, "-c", _LISTENER, ip], stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True, start_new_session=True)
                    listeners.append(proc)
                    assert proc.stdout.readline().strip() == "listening", proc.stderr.read()
                ctl.wait_connections(lambda cs: WIRES <= cs.keys() and all(
                    cs[w]["state"] == "up" for w in WIRES), 60)
                yield PolicyLab(ctl, net, requests, work)
                assert ctl.errors() == [], "the switches rejected messages"
    finally:
        for proc in listeners:
            stop(proc)
        cleanup(own=True)


def test_scenarios_give_the_expected_reachability(lab):
    rows: list[tuple[Scenario, dict]] = []
    failed = []
    started = time.monotonic()
    for want in SCENARIOS:
        lab.apply(want.policies, want.names)
        held, got = lab.holds(want)
        rows.append((want, got))
        if not held:
            failed.append(want.name)
    assert not failed, f"{len(failed)} scenario(s) differ: {failed}\n{truth_table(rows)}"
    assert time.monotonic() - started < 180, "the scenarios took too long"


def test_an_established_connection_survives_a_policy_added_and_removed(lab):
    lab.apply((), set())
    host = lab.net.host(CLIENTS["front"][0])
    keep = subprocess.Popen(["mnexec", "-a", str(host.pid), "timeout", "120", sys.executable, "-c", _KEEP,
                             CLIENTS["front"][1], "80"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)

    def exchange() -> str:
        keep.stdin.write("\n")
        keep.stdin.flush()
        return keep.stdout.readline().strip()

    try:
        assert keep.stdout.readline().strip() == "connected", keep.stderr.read()
        assert exchange() == "ok"
        allow = policy("keep-80", SERVERS_SEL,
                       ingress="[{from: [{podSelector: {matchLabels: {role: front}}}], ports: [{port: 80}]}]")
        lab.apply((allow,), {f"{NAMESPACE}/keep-80"})
        held, got = lab.holds(scenario("allowed: TCP 80 from front", {"tcp/80"}, ()))
        assert held, truth_table([(scenario("allowed: TCP 80 from front", {"tcp/80"}, ()), got)])
        assert exchange() == "ok", "the connection up before the policy was cut by it"
        lab.apply((), set())
        assert exchange() == "ok", "the connection was cut when the policy went away"
    finally:
        stop(keep)
