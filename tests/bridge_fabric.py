"""Small fabrics of netdev bridges joined by veths, without Mininet: an echo client namespace on the first
bridge and a server on the second (both port 10), and their topology file.

``triangle``: A–B direct (which may run through the impairment element), A–C–B the other way.
``square``: A–D–B (cost 1 a link) and A–C–B (cost 2 a link), so a protected connection's primary
has a transit switch. Every name starts with the tag, so runs of different tests do not meet.
(The Mininet QoS tests use topologies/qos-triangle.yaml; these serve the OVS tests and
bench/qos_failover.py, which need no Mininet.)
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ryu_nsm.lab.impairment import Impairment, start_in_netns

from .echo_requests import write_echo_requests
from .two_bridges import add_host, sh


@dataclass(frozen=True)
class BridgeFabric:
    name: str
    tag: str
    dpids: tuple[int, ...]  # bridge i is tag + "abcd…"[i]
    # (bridge index, port, bridge index, port, YAML attributes) per link; veth ends are bridge-port.
    links: tuple[tuple[int, int, int, int, str], ...]
    subnet: str  # client .1, server .2, /24
    impairable: int | None = None  # the link that may run through the impairment element

    @property
    def bridges(self) -> tuple[str, ...]:
        return tuple(f"{self.tag}{chr(ord('a') + i)}" for i in range(len(self.dpids)))

    @property
    def namespaces(self) -> tuple[str, str, str]:
        """Client, server, impairment element."""
        return (f"{self.tag}-c", f"{self.tag}-s", f"{self.tag}-i")

    @property
    def ends(self) -> tuple[tuple[str, str], ...]:
        """Each link's two veth ends on the bridges' side, in the order of ``links``."""
        br = self.bridges
        return tuple((f"{br[i]}-{p}", f"{br[j]}-{q}") for i, p, j, q, _ in self.links)

    @property
    def client_ip(self) -> str:
        return f"{self.subnet}.1"

    @property
    def server_ip(self) -> str:
        return f"{self.subnet}.2"

    def remove(self) -> None:
        """Remove whatever of it exists."""
        for br in self.bridges:
            sh("ovs-vsctl", "--if-exists", "del-br", br, check=False)
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)
        for end, _ in self.ends:
            sh("ip", "link", "del", end, check=False)

    def connect(self, of_port: int) -> None:
        """Point every bridge at the controller listening on ``of_port``."""
        for br in self.bridges:
            sh("ovs-vsctl", "set-controller", br, f"tcp:127.0.0.1:{of_port}")

    @contextmanager
    def echo(self, tmp: Path, level: str, impaired: bool = False
             ) -> Iterator[tuple[Path, Path, Impairment | None]]:
        """It built, with the echo requests (client on the first bridge, server on the second) and
        ``level`` (ServiceLevel YAML) beside them: (topology, requests directory, element or None).
        Everything is removed after."""
        self.remove()
        element = None
        try:
            topo, element = self.build(tmp, impaired)
            a, b = self.bridges[:2]
            requests = write_echo_requests(tmp / "requests", f"{a}/{a}-c", f"{b}/{b}-s")
            (requests / "level.yaml").write_text(level)
            yield topo, requests, element
        finally:
            if element is not None:
                element.stop()
            self.remove()

    def build(self, tmp: Path, impaired: bool = False) -> tuple[Path, Impairment | None]:
        """Bridges, links, hosts and topology.yaml; with ``impaired`` the element on its link."""
        if impaired and self.impairable is None:
            raise ValueError(f"{self.name} has no link for an impairment element")
        bridges = self.bridges
        for br, dpid in zip(bridges, self.dpids, strict=True):
            sh("ovs-vsctl", "add-br", br, "--", "set", "bridge", br, "datapath_type=netdev",
               f"other-config:datapath-id={dpid:016x}", "fail_mode=secure", "protocols=OpenFlow13")
        ns_c, ns_s, ns_i = self.namespaces
        inner = (f"{self.tag}ia", f"{self.tag}ib")
        for index, (here, there) in enumerate(self.ends):
            if impaired and index == self.impairable:  # here – element – there
                sh("ip", "netns", "add", ns_i)
                for end, name in zip((here, there), inner, strict=True):
                    sh("ip", "link", "add", end, "type", "veth", "peer", "name", name, "netns", ns_i)
                    sh("ip", "netns", "exec", ns_i, "ip", "link", "set", name, "up")
            else:
                sh("ip", "link", "add", here, "type", "veth", "peer", "name", there)
            for end in (here, there):
                bridge, number = end.rsplit("-", 1)
                sh("ovs-vsctl", "add-port", bridge, end, "--", "set", "interface", end,
                   f"ofport_request={number}")
                sh("ip", "link", "set", end, "up")
        a, b = bridges[:2]
        # No IPv6: its own chatter (router solicitations, MLD) would cross the wires unasked.
        add_host(ns_c, f"{a}-c", f"{self.client_ip}/24", bridge=a, ofport=10, ipv6=False)
        add_host(ns_s, f"{b}-s", f"{self.server_ip}/24", bridge=b, ofport=10, ipv6=False)
        element = None
        if impaired:
            element = start_in_netns(ns_i, *inner, str(tmp / "imp.sock"), seed=1)
        switches = "".join(f"\n  - {{name: {br}, dpid: {dpid:#x}}}" for br, dpid in zip(
            bridges, self.dpids, strict=True))
        links = "".join(f"\n  - {{a: {bridges[i]}, b: {bridges[j]}, a_port: {p}, b_port: {q}, {attrs}}}"
                        for i, p, j, q, attrs in self.links)
        topo = tmp / "topo.yaml"
        topo.write_text(f"name: {self.name}\nswitches:{switches}\nlinks:{links}\n" + textwrap.dedent(f"""\
            hosts:
              - name: client
                interfaces: [{{name: eth0, switch: {a}, port: 10, port_name: {a}-c}}]
              - name: server
                interfaces: [{{name: eth0, switch: {b}, port: 10, port_name: {b}-s}}]
            """))
        return topo, element


def triangle(tag: str) -> BridgeFabric:
    """A–B direct through ports 1 (the impairable link), A:2–C:1 and C:2–B:2; 10.9.2.0/24."""
    return BridgeFabric("triangle", tag, (0xA3, 0xB3, 0xC3),
                        ((0, 1, 1, 1, "latency: 1ms"), (0, 2, 2, 1, "latency: 1ms"),
                         (2, 2, 1, 2, "latency: 1ms")),
                        "10.9.2", impairable=0)


def square(tag: str) -> BridgeFabric:
    """A:1–D:1 and D:2–B:1 (the primary, cost 1 each), A:2–C:1 and C:2–B:2 (cost 2 each); 10.9.3.0/24."""
    return BridgeFabric("square", tag, (0xA4, 0xB4, 0xC4, 0xD4),
                        ((0, 1, 3, 1, "cost: 1"), (3, 2, 1, 1, "cost: 1"), (0, 2, 2, 1, "cost: 2"),
                         (2, 2, 1, 2, "cost: 2")),
                        "10.9.3")
