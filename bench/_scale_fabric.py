"""bench/scale.py's fabric and workload: a fat-tree of netdev bridges in one Open vSwitch, the
declared state of N connections as Kubernetes-shaped documents, and what is read from the processes.

Hosts are only declared: their ports do not exist on the bridges (OVS accepts flows for absent
ports, the controller uses the declared numbers), so 10,000 connections need no namespaces, veths
or internal ports and the figures are the controller's and the switches' flow tables', not traffic.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from common import bundle_add_flows, sh

from ryu_nsm.core.fabric import Fabric

CHAIN = "secure-internet"
FUNCTIONS = (("fw", "firewall", 1, True), ("dpi", "dpi", 2, True), ("gw", "gateway", 3, False))
INSTANCES = 10  # of each function
PLAIN = tuple(f"plain{i}" for i in range(8))
SERVERS = 4  # of each plain service
# Asked for, but Open vSwitch 3.1 still backs off 1, 2, 4, 8 s from a refused connection (seen in
# its log): after a restart the bridges come back over up to 8 s, which the restart figure starts after.
MAX_BACKOFF_MS = 1000
# OVS drops a controller that leaves its echo unanswered for twice this; 5 s (the default) is short
# for a Python controller that decodes a 20,000-flow table on a shared 2-core machine (OVN raises its
# probe interval at size the same way; README, "Sizing").
INACTIVITY_PROBE_MS = 30_000
TIMEOUT = 60.0


@dataclass(frozen=True)
class Workload:
    """N connections on fat-tree k: chain clients, the chain's function wires, plain clients; and
    ``extra`` single requests (half onto the chain, half onto a plain service) that come later."""

    k: int
    n: int
    extra: int

    @property
    def per(self) -> int:
        """Attachments of each function instance, and onward asks of each firewall and dpi."""
        return -(-self.n // 6 // INSTANCES)

    @property
    def chain_clients(self) -> int:
        return INSTANCES * self.per - self.extra // 2

    @property
    def plain_clients(self) -> int:
        return self.n - self.chain_clients - 2 * INSTANCES * self.per

    def edges(self, pods: Iterable[int]) -> list[str]:
        return [f"e{pod}_{i}" for pod in pods for i in range(self.k // 2)]

    def client_edge(self, i: int) -> str:
        """Clients hang off the pods that hold no function (pod 0 only at k=4)."""
        edges = self.edges(p for p in range(self.k) if p not in (1, 2, 3))
        return edges[i % len(edges)]

    def client(self, i: int) -> str:
        return f"c{i:05d}"

    def extra_pod(self, j: int) -> dict:
        """Single request j: a client onto the chain (even j) or a plain service (odd j)."""
        i = self.chain_clients + self.plain_clients + j
        service = CHAIN if j % 2 == 0 else PLAIN[j // 2 % len(PLAIN)]
        return client_pod(self.client(i), service, self.client_edge(i))


def client_pod(name: str, service: str, edge: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "annotations": {
        "networkservicemesh.io": f"kernel://{service}/nsm-1",
        "ryu-nsm.io/attachments": f"nsm-1={edge}/{name}"}}}


def topology(work: Workload) -> dict:
    """The fat-tree with every client, function and server interface declared on an edge switch."""
    hosts = []
    for i in range(work.chain_clients + work.plain_clients + work.extra + 2):  # +2: restart's request
        name = work.client(i)
        hosts.append({"name": name, "interfaces": [
            {"name": "eth0", "switch": work.client_edge(i), "port_name": name}]})
    for prefix, _, pod, onwards in FUNCTIONS:
        for j in range(INSTANCES):
            sides = ("i", "o") if onwards else ("i",)
            edge = f"e{pod}_{j % (work.k // 2)}"
            hosts.append({"name": f"{prefix}{j}", "role": "function" if onwards else "host", "interfaces": [
                {"name": f"{s}{m}", "switch": edge, "port_name": f"{prefix}{j}{s}{m}"}
                for s in sides for m in range(work.per)]})
    for _, server, edge, count in _servers(work):
        hosts.append({"name": server, "interfaces": [
            {"name": f"i{m}", "switch": edge, "port_name": f"{server}i{m}"} for m in range(count)]})
    return {"name": f"scale-k{work.k}", "generator": {"fat_tree": {"k": work.k}}, "hosts": hosts}


def _servers(work: Workload) -> list[tuple[str, str, str, int]]:
    """(service, server, edge, attachments) of every plain server, spread over every pod's edges."""
    edges = work.edges(range(work.k))
    count = -(-(work.plain_clients + work.extra + 2) // (len(PLAIN) * SERVERS))
    return [(service, f"{service}-{j}", edges[(s * SERVERS + j) * 3 % len(edges)], count)
            for s, service in enumerate(PLAIN) for j in range(SERVERS)]


def documents(work: Workload) -> list[dict]:
    """Services, endpoints, the function Pods that ask onwards and the N's client Pods."""
    def to(app: str) -> list[dict]:
        return [{"destination_selector": {"app": app}}]

    chain = {"apiVersion": "networkservicemesh.io/v1", "kind": "NetworkService", "metadata": {"name": CHAIN},
             "spec": {"payload": "ETHERNET", "matches": [
                 {"source_selector": {"app": "firewall"}, "routes": to("dpi")},
                 {"source_selector": {"app": "dpi"}, "routes": to("gateway")},
                 {"routes": to("firewall")}]}}
    out = [chain] + [{"apiVersion": "networkservicemesh.io/v1", "kind": "NetworkService",
                      "metadata": {"name": s}, "spec": {"payload": "ETHERNET"}} for s in PLAIN]
    for prefix, app, pod, onwards in FUNCTIONS:
        for j in range(INSTANCES):
            name, edge = f"{prefix}{j}", f"e{pod}_{j % (work.k // 2)}"
            out.append(_endpoint(name, CHAIN, {"app": app}, [f"{edge}/{name}i{m}" for m in range(work.per)]))
            if onwards:
                out.append({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "annotations": {
                    "networkservicemesh.io": ",".join(f"kernel://{CHAIN}/nsm-{m + 1}?app={app}"
                                                      for m in range(work.per)),
                    "ryu-nsm.io/attachments": ",".join(f"nsm-{m + 1}={edge}/{name}o{m}"
                                                       for m in range(work.per))}}})
    for service, server, edge, count in _servers(work):
        out.append(_endpoint(server, service, {}, [f"{edge}/{server}i{m}" for m in range(count)]))
    for i in range(work.chain_clients + work.plain_clients):
        service = CHAIN if i < work.chain_clients else PLAIN[i % len(PLAIN)]
        out.append(client_pod(work.client(i), service, work.client_edge(i)))
    return out


def _endpoint(name: str, service: str, labels: dict, attachments: list[str]) -> dict:
    return {"apiVersion": "networkservicemesh.io/v1", "kind": "NetworkServiceEndpoint",
            "metadata": {"name": name, "annotations": {"ryu-nsm.io/attachments": ",".join(attachments)}},
            "spec": {"network_service_names": [service],
                     "network_service_labels": {service: {"labels": labels}}}}


def bridge_names(fabric: Fabric, prefix: str) -> dict[str, str]:
    """Switch → bridge, unique to this process: ``{prefix}{pid}{switch}``."""
    tag = f"{prefix}{os.getpid() % 10000:04d}"
    return {sw.name: f"{tag}{sw.name}" for sw in fabric.switches}


def build_bridges(fabric: Fabric, bridges: Mapping[str, str], target: str | Sequence[str]) -> float:
    """One ovs-vsctl transaction: netdev bridges (declared dpids, secure, OpenFlow 1.3, pointed at
    ``target``, or at each of several: none leaves the controller to be set later), patch ports on
    the declared port numbers. Its duration in seconds."""
    targets = [target] if isinstance(target, str) else list(target)
    cmd = ["ovs-vsctl"]
    for n, sw in enumerate(fabric.switches):
        br = bridges[sw.name]
        refs = [f"@c{n}_{i}" for i in range(len(targets))]
        cmd += ["--", "add-br", br, "--", "set", "bridge", br, "datapath_type=netdev",
                f"other-config:datapath-id={sw.dpid:016x}", "fail_mode=secure", "protocols=OpenFlow13",
                *([f"controller={','.join(refs)}"] if refs else [])]
        for ref, each in zip(refs, targets, strict=True):
            cmd += ["--", f"--id={ref}", "create", "controller", f"target=\"{each}\"",
                    f"max_backoff={MAX_BACKOFF_MS}", f"inactivity_probe={INACTIVITY_PROBE_MS}"]
    for link in fabric.links:
        for here, port, there, peer in ((link.a, link.a_port, link.b, link.b_port),
                                        (link.b, link.b_port, link.a, link.a_port)):
            name = f"{bridges[here]}-{port}"
            cmd += ["--", "add-port", bridges[here], name, "--", "set", "interface", name, "type=patch",
                    f"options:peer={bridges[there]}-{peer}", f"ofport_request={port}"]
    start = time.perf_counter()
    sh(*cmd)
    return time.perf_counter() - start


def remove_bridges(bridges: Iterable[str]) -> None:
    """Delete this run's bridges (their ports and controller records go with them), never others."""
    cmd = ["ovs-vsctl"]
    for br in bridges:
        cmd += ["--", "--if-exists", "del-br", br]
    subprocess.run(cmd, capture_output=True, timeout=TIMEOUT)


def proc_usage(pid: int) -> tuple[int, float]:
    """(RSS bytes, CPU seconds user + system) of a process, from /proc."""
    rss = int(re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())[1]) * 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return rss, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vswitchd_pid() -> int:
    return int(Path("/var/run/openvswitch/ovs-vswitchd.pid").read_text().strip())


def dump_flows(bridges: Iterable[str]) -> dict[str, list[str]]:
    """Every bridge's flows as ovs-ofctl lines without statistics."""
    return {br: [line.strip() for line in sh("ovs-ofctl", "-O", "OpenFlow13", "--no-stats", "dump-flows",
                                                 br).splitlines() if "actions=" in line]
            for br in bridges}


def by_cookie(flows: Mapping[str, list[str]]) -> dict[str, dict[str, list[str]]]:
    """cookie text ('0x…') → bridge → its flows there."""
    out: dict[str, dict[str, list[str]]] = {}
    for br, lines in flows.items():
        for line in lines:
            found = re.match(r"cookie=(0x[0-9a-f]+)", line)
            if found:
                out.setdefault(found[1], {}).setdefault(br, []).append(line)
    return out


def _delete_line(flow: str) -> str:
    match = re.sub(r"^cookie=0x[0-9a-f]+, ?", "", flow).split(" actions=")[0]
    return f"delete_strict {match}"


def _bundle(files: Mapping[str, Path]) -> float:
    """Seconds for ``ovs-ofctl --bundle add-flows`` into every bridge of ``files``, all at once."""
    return bundle_add_flows(files, TIMEOUT)


def reinstall_time(flows: Mapping[str, list[str]], workdir: Path, tag: str) -> float:
    """Delete ``flows`` (bridge → lines) from their bridges, then time ``ovs-ofctl --bundle`` putting
    them back, one process per bridge, all at once."""
    deletes, adds = {}, {}
    for br, lines in flows.items():
        deletes[br] = workdir / f"{tag}-{br}.del"
        deletes[br].write_text("".join(_delete_line(f) + "\n" for f in lines))
        adds[br] = workdir / f"{tag}-{br}.add"
        adds[br].write_text("".join(f + "\n" for f in lines))
    _bundle(deletes)
    return _bundle(adds)
