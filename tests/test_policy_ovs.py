"""MultiNetworkPolicy on real Open vSwitch bridges, with the controller as a child process: a TCP
connection opened before any policy stays up while a policy allowing it comes, and while it is
replaced by one that denies every new connection; a new connection is then refused."""

import os
import subprocess
import textwrap

import pytest

from ryu_nsm.lab.controller_process import ControllerProcess, wait_for

from .two_bridges import build_echo, remove, sh

pytestmark = pytest.mark.ovs

TAG = f"pz{os.getpid() % 1000:03d}"
A, B = f"{TAG}a", f"{TAG}b"
NS_C, NS_S = f"{TAG}-c", f"{TAG}-s"
CONN = "default/client/nsm-1"
SERVER = "10.9.14.2"
POLICY = textwrap.dedent("""\
    apiVersion: k8s.cni.cncf.io/v1beta1
    kind: MultiNetworkPolicy
    metadata:
      name: web
      annotations: {k8s.v1.cni.cncf.io/policy-for: echo}
    spec:
      podSelector: {}
    """)
ALLOW_80 = POLICY + "  ingress: [{ports: [{protocol: TCP, port: 80}]}]\n"
DENY_ALL = POLICY + "  policyTypes: [Ingress]\n"

ECHO_SERVER = textwrap.dedent(f"""\
    import socket, threading
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("{SERVER}", 80)); s.listen()
    def serve(c):
        while (data := c.recv(100)):
            c.sendall(data)
    while True:
        threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
    """)
# One line in: one round trip on the connection it opened at start; "ok" or what went wrong.
ECHO_CLIENT = textwrap.dedent(f"""\
    import socket, sys
    c = socket.create_connection(("{SERVER}", 80), timeout=5)
    print("open", flush=True)
    for line in sys.stdin:
        try:
            c.sendall(b"x"); print("ok" if c.recv(1) == b"x" else "closed", flush=True)
        except OSError as e:
            print(f"error {{e}}", flush=True)
    """)


@pytest.fixture
def wire(tmp_path):
    remove(A, B, (NS_C, NS_S))
    try:
        yield build_echo(tmp_path, "policy", A, B, (0xA14, 0xB14), (NS_C, NS_S), "10.9.14")
    finally:
        remove(A, B, (NS_C, NS_S))


def in_netns(ns: str, script: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, "python3", "-c", script], text=True, **kw)


def connects() -> bool:
    probe = f"import socket; socket.create_connection(('{SERVER}', 80), timeout=2); print('yes')"
    done = subprocess.run(["ip", "netns", "exec", NS_C, "python3", "-c", probe], capture_output=True,
                          text=True, timeout=10)
    return done.stdout.strip() == "yes"


def policy_flows(bridge: str) -> int:
    """Our flows in the policy tables (2 and 3) of a bridge."""
    return sum(sh("ovs-ofctl", "-O", "OpenFlow13", "dump-flows", bridge, f"table={t}").count("cookie=")
               for t in (2, 3))


def dropped(status: dict) -> dict[tuple[str, str], int]:
    return {(d["workload"], d["direction"]): d["packets"] for e in status["connections"]
            for d in e.get("policy", {}).get("dropped", [])}


def test_an_open_connection_outlives_policy_changes(wire, tmp_path):
    topo, requests = wire
    server = in_netns(NS_S, ECHO_SERVER, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    clients: list[subprocess.Popen] = []
    try:
        counters_every_second = ["--counter-interval", "1"]
        with ControllerProcess(topo, [requests], tmp_path / "ctl.log", extra_args=counters_every_second
                               ) as ctl:
            for br in (A, B):
                sh("ovs-vsctl", "set-controller", br, f"tcp:127.0.0.1:{ctl.of_port}")
            ctl.wait_connections(lambda cs: cs.get(CONN, {}).get("state") == "up", 30)
            assert wait_for(connects, 10), "no TCP through the wire without policy"
            # Two connections opened before any policy: the first is used all along; the second
            # sends nothing until new connections are denied (conntrack must have known it since
            # its first packet: picked up mid-stream then, it would be new, and refused).
            for _ in range(2):
                clients.append(in_netns(NS_C, ECHO_CLIENT, stdin=subprocess.PIPE, stdout=subprocess.PIPE))
                assert clients[-1].stdout.readline().strip() == "open"

            def round_trip(client: subprocess.Popen) -> str:
                client.stdin.write("\n")
                client.stdin.flush()
                return client.stdout.readline().strip()

            busy, idle = clients
            assert round_trip(busy) == "ok" and round_trip(idle) == "ok"
            (requests / "policy.yaml").write_text(ALLOW_80)
            assert wait_for(lambda: policy_flows(A) > 0, 15), "the policy was not installed"
            assert round_trip(busy) == "ok", "the open connection was cut when the policy came"
            assert connects(), "a new connection the policy allows was refused"

            (requests / "policy.yaml").write_text(DENY_ALL)
            assert wait_for(lambda: "tcp" not in sh("ovs-ofctl", "-O", "OpenFlow13", "dump-flows", A,
                                                     "table=3"), 15), "the rule was not removed"
            assert round_trip(busy) == "ok", "the open connection was cut when new ones were denied"
            assert round_trip(idle) == "ok", "a connection opened before any policy was cut"
            assert not connects(), "a new connection was let through a deny-all policy"
            # The refused SYNs are counted where they were dropped: the endpoint is isolated for ingress.
            endpoint = ("endpoint default/server", "ingress")
            assert wait_for(lambda: dropped(ctl.status()).get(endpoint, 0) > 0, 10), ctl.status()
            assert round_trip(busy) == "ok"
            assert ctl.errors() == []
    finally:
        for proc in (*clients, server):
            proc.kill()
            proc.wait()
