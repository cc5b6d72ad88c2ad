"""What MultiNetworkPolicy costs: flows and plan time at size (pure), and one edit on real OVS.

Pure: a fat-tree carries N wires, client i → endpoint i of one service; ten policies of five rules
each (pod selectors, an ipBlock with except, a port range, a named port, SCTP) isolate the
endpoints for ingress, each governing a tenth of the wires. Two figures against the same wires
planned without any policy: the flows of the plan, and ``make_plan``'s time (best of a few).

OVS: two netdev bridges (patch-port link) run by ``ryu-nsm controller`` in a child process, W wires
across them, one policy in force. The policy file is then replaced by an edit (its TCP port 80
becomes 8080) and both bridges are polled until they hold exactly what ``ryu-nsm plan`` plans for
the edit (``ovs-ofctl diff-flows`` empty): the change-to-enforced latency. The limit, on the same
bridges put back to the flows before the edit: ``ovs-ofctl --bundle`` of only the flows the edit
adds and deletes, bridge after bridge (best of three).

Usage: ``policy.py [--quick]`` (root, Open vSwitch up); ``--quick`` is 100 wires and 10 on OVS,
else 1,000 and 100.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from common import BenchFailure, figure, measure, ofctl, planned_flows, print_figures, sh

from ryu_nsm.core.fabric import Fabric, Host, HostInterface
from ryu_nsm.core.model import ClientRequest, Destination, Endpoint, Match, NetworkService, Resources
from ryu_nsm.core.planner import PLANNED, make_plan
from ryu_nsm.core.policy_model import (
    IPBlock,
    LabelSelector,
    MultiNetworkPolicy,
    NetworkRef,
    Peer,
    PolicyInputs,
    PolicyPort,
    PolicyRule,
    Workload,
)
from ryu_nsm.core.values import FrozenMap
from ryu_nsm.lab.controller_process import ControllerProcess, wait_for
from ryu_nsm.sources.topology import fat_tree

POLICIES, RULES = 10, 5
TIMEOUT = 60.0
LIMIT_LABEL = "ovs-ofctl --bundle of the same edit's flows"


# -- pure: flows and plan time at size --------------------------------------------------------------

def wires(k: int, n: int) -> tuple[Fabric, Resources]:
    """Fat-tree ``k`` with ``n`` clients wired to ``n`` endpoints (client i → endpoint i)."""
    fabric = fat_tree(k)
    edges = [f"e{pod}_{i}" for pod in range(k) for i in range(k // 2)]
    hosts, endpoints, requests = [], [], []
    for i in range(n):
        client = HostInterface(f"c{i}", "nsm0", edges[i % len(edges)], 100 + i, f"c{i}")
        far = edges[(i + len(edges) // 2) % len(edges)]
        server = HostInterface(f"e{i}", "nsm0", far, 100 + n + i, f"e{i}")
        hosts += [Host(f"c{i}", (client,)), Host(f"e{i}", (server,))]
        labels = FrozenMap(n=str(i))
        endpoints.append(Endpoint(f"e{i}", services=("web",), service_labels=FrozenMap(web=labels),
                                  attachments=(server.attachment,)))
        requests.append(ClientRequest(f"c{i}", "nsm0", "web", labels=labels, attachment=client.attachment))
    service = NetworkService("web", matches=(Match(routes=(Destination(FrozenMap(n="{{.n}}")),)),))
    return replace(fabric, hosts=tuple(hosts)), Resources((service,), tuple(endpoints), tuple(requests))


def policies(n: int) -> PolicyInputs:
    """Ten policies of five rules, policy j isolating the endpoints of tier j (every tenth wire)."""
    web = (NetworkRef("default", "web"),)
    out = []
    for j in range(POLICIES):
        block = IPBlock(ipaddress.ip_network(f"10.{j}.0.0/16"), (ipaddress.ip_network(f"10.{j}.1.0/24"),))
        other = IPBlock(ipaddress.ip_network(f"172.{j}.0.0/16"))
        rules = (
            PolicyRule((Peer(LabelSelector(FrozenMap(role=f"r{j}"))),), (PolicyPort("TCP", 80),)),
            PolicyRule((Peer(ip_block=block), Peer(ip_block=other)),
                       (PolicyPort("UDP", 53), PolicyPort("TCP", 53))),
            PolicyRule((Peer(namespace_selector=LabelSelector()),), (PolicyPort("TCP", 8000, 8080),)),
            PolicyRule((), (PolicyPort("TCP", "http"),)),
            PolicyRule((Peer(LabelSelector(FrozenMap(role=f"r{(j + 1) % POLICIES}"))),),
                       (PolicyPort("SCTP", 9),)),
        )
        assert len(rules) == RULES
        out.append(MultiNetworkPolicy(f"p{j}", "default", web, LabelSelector(FrozenMap(tier=f"t{j}")),
                                      ("Ingress",), rules))
    pods = {("default", f"c{i}"): Workload(FrozenMap(role=f"r{i % POLICIES}")) for i in range(n)}
    http = FrozenMap(http=("TCP", 8443))
    served = {("default", f"e{i}"): Workload(FrozenMap(tier=f"t{i % POLICIES}"), http) for i in range(n)}
    return PolicyInputs(tuple(out), FrozenMap(pods), FrozenMap(served))


def pure_figures(n: int, k: int) -> list[str]:
    fabric, plain = wires(k, n)
    policed = replace(plain, policy=policies(n))
    plans = {}
    for name, resources in (("plain", plain), ("policed", policed)):
        plans[name] = make_plan(fabric, resources)
        bad = [pc.id for pc in plans[name].connections.values() if pc.state != PLANNED]
        if bad:
            raise BenchFailure(f"{len(bad)} wires did not plan ({name}), e.g. {bad[:3]}")
    if sum(pc.policy is not None for pc in plans["policed"].connections.values()) != n:
        raise BenchFailure("not every wire is governed by a policy")
    flows = {name: sum(len(specs) for specs in plan.flows.values()) for name, plan in plans.items()}
    times = {name: measure(lambda r=r: make_plan(fabric, r), repeats=3, round_seconds=0.0,
                           budget_seconds=30).best for name, r in (("plain", plain), ("policed", policed))}
    what = f"{n} wires × {POLICIES} policies of {RULES} rules, fat-tree k={k}"
    return [figure(f"policy flows, {what}", flows["policed"], "flows", flows["plain"], "flows",
                   "the same wires without policies"),
            figure(f"policy plan, {what}", times["policed"] * 1000, "ms", times["plain"] * 1000, "ms",
                   "the same wires without policies")]


# -- OVS: one policy edit, file to enforced ---------------------------------------------------------

def topology_yaml(bridges: tuple[str, str], w: int) -> str:
    a, b = bridges
    lines = ["name: policy-bench", "switches:", f"  - {{name: {a}, dpid: 0x706d1001}}",
             f"  - {{name: {b}, dpid: 0x706d1002}}", f"links: [{{a: {a}, a_port: 1, b: {b}, b_port: 1}}]",
             "hosts:"]
    for i in range(w):
        lines.append(f"  - {{name: c{i}, interfaces: [{{name: eth0, switch: {a}, port: {10 + i}, "
                     f"port_name: {a}-c{i}}}]}}")
        lines.append(f"  - {{name: e{i}, interfaces: [{{name: eth0, switch: {b}, port: {10 + i}, "
                     f"port_name: {b}-e{i}}}]}}")
    return "\n".join(lines) + "\n"


def requests_yaml(bridges: tuple[str, str], w: int) -> str:
    a, b = bridges
    docs = ["apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: web}\n"
            "spec:\n  matches: [{routes: [{destination_selector: {n: \"{{.n}}\"}}]}]\n"]
    for i in range(w):
        docs.append(f"apiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata:\n"
                    f"  name: e{i}\n  labels: {{app: srv}}\n"
                    f"  annotations: {{ryu-nsm.io/attachments: {b}/{b}-e{i}}}\n"
                    f"spec:\n  network_service_names: [web]\n"
                    f"  network_service_labels: {{web: {{labels: {{n: \"w{i}\"}}}}}}\n")
        docs.append(f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: c{i}\n  labels: {{role: web-client}}\n"
                    f"  annotations:\n    networkservicemesh.io: kernel://web/nsm-1?n=w{i}\n"
                    f"    ryu-nsm.io/attachments: nsm-1={a}/{a}-c{i}\n")
    return "---\n".join(docs)


def policy_yaml(port: int) -> str:
    return ("apiVersion: k8s.cni.cncf.io/v1beta1\nkind: MultiNetworkPolicy\nmetadata:\n  name: web-in\n"
            "  annotations: {k8s.v1.cni.cncf.io/policy-for: web}\n"
            "spec:\n  podSelector: {matchLabels: {app: srv}}\n"
            "  ingress:\n  - from: [{podSelector: {matchLabels: {role: web-client}}}]\n"
            f"    ports: [{{protocol: TCP, port: {port}}}, {{protocol: UDP, port: 53}}]\n")


def held(bridge: str, flows: Path) -> bool:
    done = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "diff-flows", bridge, str(flows)],
                          capture_output=True, text=True, timeout=TIMEOUT)
    return done.returncode == 0 and not done.stdout.strip()


def edit_lines(before: list[str], after: list[str]) -> list[str]:
    """An ``add-flows`` file that turns ``before`` into ``after``: strict deletes, then adds."""
    gone, new = set(before) - set(after), set(after) - set(before)
    deletes = [("delete_strict " + line.split(" actions=")[0].split(",", 1)[1]) for line in sorted(gone)]
    return deletes + ["add " + line for line in sorted(new)]


def ovs_figure(w: int, workdir: Path) -> str:
    tag = f"pm{os.getpid() % 10000:04d}"
    bridges = (f"{tag}a", f"{tag}b")
    topology, requests, staged = workdir / "topology.yaml", workdir / "requests", workdir / "staged"
    topology.write_text(topology_yaml(bridges, w))
    for d in (requests, staged):
        d.mkdir()
    (requests / "web.yaml").write_text(requests_yaml(bridges, w))
    plans = {}
    for port in (80, 8080):
        (staged / "policy.yaml").write_text(policy_yaml(port))
        (staged / "web.yaml").write_text(requests_yaml(bridges, w))
        plans[port] = planned_flows(topology, staged)
    files = {(port, br): workdir / f"{br}-{port}.flows" for port in plans for br in bridges}
    for (port, br), path in files.items():
        path.write_text("".join(line + "\n" for line in plans[port][br]))
    (requests / "policy.yaml").write_text(policy_yaml(80))
    for br in bridges:
        subprocess.run(["ovs-vsctl", "--if-exists", "del-br", br], capture_output=True, timeout=TIMEOUT)
    try:
        for k, br in enumerate(bridges):
            sh("ovs-vsctl", "add-br", br, "--", "set", "bridge", br, "datapath_type=netdev",
               f"other-config:datapath-id={0x706d1001 + k:016x}", "fail_mode=secure", "protocols=OpenFlow13")
        a, b = bridges
        sh("ovs-vsctl", "--", "add-port", a, f"{a}-eth1", "--", "set", "interface", f"{a}-eth1", "type=patch",
           f"options:peer={b}-eth1", "ofport_request=1", "--", "add-port", b, f"{b}-eth1", "--", "set",
           "interface", f"{b}-eth1", "type=patch", f"options:peer={a}-eth1", "ofport_request=1")
        latency = controller_edit(topology, requests, bridges, files, workdir)
        limit = bundle_limit(bridges, plans, files, workdir)
    finally:
        for br in bridges:
            subprocess.run(["ovs-vsctl", "--if-exists", "del-br", br], capture_output=True, timeout=TIMEOUT)
    return figure(f"policy edit to enforced, {w} wires on OVS", latency * 1000, "ms", limit * 1000, "ms",
                  LIMIT_LABEL)


def controller_edit(topology: Path, requests: Path, bridges, files, workdir: Path) -> float:
    """Seconds from renaming the edited policy into the watched directory to both bridges holding it."""
    ctl = ControllerProcess(topology, [requests], workdir / "controller.log",
                            extra_args=["--watch-interval", "0.05", "--audit-interval", "3600"])
    ctl.start()
    try:
        for br in bridges:
            sh("ovs-vsctl", "set-controller", br, f"tcp:127.0.0.1:{ctl.of_port}")
        if not wait_for(lambda: all(held(br, files[80, br]) for br in bridges), TIMEOUT, 0.1):
            raise BenchFailure(f"the bridges never held the planned flows; log:\n{ctl.log()[-2000:]}")
        (workdir / "policy.yaml").write_text(policy_yaml(8080))
        t0 = time.perf_counter()
        os.rename(workdir / "policy.yaml", requests / "policy.yaml")
        if not wait_for(lambda: all(held(br, files[8080, br]) for br in bridges), TIMEOUT, 0.005):
            raise BenchFailure("the edit was not enforced in time")
        elapsed = time.perf_counter() - t0
        if ctl.errors():
            raise BenchFailure(f"switches rejected messages: {ctl.errors()[:3]}")
        return elapsed
    finally:
        ctl.stop()
        for br in bridges:
            subprocess.run(["ovs-vsctl", "del-controller", br], capture_output=True, timeout=TIMEOUT)


def bundle_limit(bridges, plans, files, workdir: Path) -> float:
    """Best of three: the edit's deletes and adds by ``ovs-ofctl --bundle``, from the flows before it."""
    best = float("inf")
    for _ in range(3):
        for br in bridges:
            ofctl("replace-flows", br, str(files[80, br]))
        start = time.perf_counter()
        for br in bridges:
            edit = workdir / f"{br}.edit"
            edit.write_text("".join(line + "\n" for line in edit_lines(plans[80][br], plans[8080][br])))
            ofctl("--bundle", "add-flows", br, str(edit))
        best = min(best, time.perf_counter() - start)
        if not all(held(br, files[8080, br]) for br in bridges):
            raise BenchFailure("ovs-ofctl --bundle did not leave the bridges with the edit's flows")
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 wires, 10 on OVS")
    opts = parser.parse_args(argv)
    n, k, w = (100, 4, 10) if opts.quick else (1000, 8, 100)

    def produce() -> list[str]:
        lines = pure_figures(n, k)
        with tempfile.TemporaryDirectory(prefix="ryu-nsm-policy-") as tmp:
            lines.append(ovs_figure(w, Path(tmp)))
        return lines

    return print_figures("policy", produce, (RuntimeError, OSError, subprocess.TimeoutExpired))


if __name__ == "__main__":
    sys.exit(main())
