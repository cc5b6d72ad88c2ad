"""Three netdev bridges in a triangle (A–B direct, A–C–B the other way), a client namespace on A and a
server on B, and their topology. The direct link may run through the impairment element.

(The Mininet QoS tests use topologies/qos-triangle.yaml; this one serves the netdev tests and
bench/qos_failover.py, which need no Mininet.)"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ryu_nsm.impairment import Impairment, start_in_netns

from .echo_requests import write_echo_requests
from .two_bridges import add_host, sh


@dataclass(frozen=True)
class Triangle:
    tag: str

    @property
    def bridges(self) -> tuple[str, str, str]:
        return (f"{self.tag}a", f"{self.tag}b", f"{self.tag}c")

    @property
    def namespaces(self) -> tuple[str, str, str]:
        """Client, server, impairment element."""
        return (f"{self.tag}-c", f"{self.tag}-s", f"{self.tag}-i")

    @property
    def direct(self) -> tuple[str, str]:
        """The two veth ends of the direct link on the bridges' side (A's port 1, B's port 1)."""
        a, b, _ = self.bridges
        return (f"{a}-1", f"{b}-1")

    def remove(self) -> None:
        for br in self.bridges:
            sh("ovs-vsctl", "--if-exists", "del-br", br, check=False)
        for ns in self.namespaces:
            sh("ip", "netns", "del", ns, check=False)
        a, b, c = self.bridges
        for link in (f"{a}-2", f"{c}-2", f"{a}-1", f"{b}-1"):
            sh("ip", "link", "del", link, check=False)

    @contextmanager
    def echo(self, tmp: Path, level: str, impaired: bool = False
             ) -> Iterator[tuple[Path, Path, Impairment | None]]:
        """The triangle, the echo requests (client on A, server on B) with ``level`` (ServiceLevel
        YAML) beside them: (topology, requests directory, element). Everything is removed after."""
        self.remove()
        element = None
        try:
            topo, element = self.build(tmp, impaired)
            a, b, _ = self.bridges
            requests = write_echo_requests(tmp / "requests", f"{a}/{a}-c", f"{b}/{b}-s")
            (requests / "level.yaml").write_text(level)
            yield topo, requests, element
        finally:
            if element is not None:
                element.stop()
            self.remove()

    def connect(self, of_port: int) -> None:
        """Point every bridge at the controller listening on ``of_port``."""
        for br in self.bridges:
            sh("ovs-vsctl", "set-controller", br, f"tcp:127.0.0.1:{of_port}")

    def build(self, tmp: Path, impaired: bool) -> tuple[Path, Impairment | None]:
        """Bridges, links, the client (A port 10, 10.9.2.1) and server (B port 10, 10.9.2.2), and
        topology.yaml; the element on the direct link if ``impaired``."""
        a, b, c = self.bridges
        ns_c, ns_s, ns_i = self.namespaces
        for br, dpid in ((a, 0xA3), (b, 0xB3), (c, 0xC3)):
            sh("ovs-vsctl", "add-br", br, "--", "set", "bridge", br, "datapath_type=netdev",
               f"other-config:datapath-id={dpid:016x}", "fail_mode=secure", "protocols=OpenFlow13")
        element = None
        if impaired:  # A:1 – element – B:1
            sh("ip", "netns", "add", ns_i)
            for end, inside in zip(self.direct, ("ia", "ib"), strict=True):
                _veth(end, f"{self.tag}{inside}")
                sh("ip", "link", "set", f"{self.tag}{inside}", "netns", ns_i)
                sh("ip", "netns", "exec", ns_i, "ip", "link", "set", f"{self.tag}{inside}", "up")
        else:
            _veth(*self.direct)
        _attach(a, self.direct[0], 1)
        _attach(b, self.direct[1], 1)
        _veth(f"{a}-2", f"{c}-1")
        _veth(f"{c}-2", f"{b}-2")
        for br, port, number in ((a, f"{a}-2", 2), (c, f"{c}-1", 1), (c, f"{c}-2", 2), (b, f"{b}-2", 2)):
            _attach(br, port, number)
        # No IPv6: its own chatter (router solicitations, MLD) would cross the wires unasked.
        add_host(ns_c, f"{a}-c", "10.9.2.1/24", bridge=a, ofport=10, ipv6=False)
        add_host(ns_s, f"{b}-s", "10.9.2.2/24", bridge=b, ofport=10, ipv6=False)
        if impaired:
            element = start_in_netns(ns_i, f"{self.tag}ia", f"{self.tag}ib", str(tmp / "imp.sock"), seed=1)
        topo = tmp / "topo.yaml"
        topo.write_text(textwrap.dedent(f"""\
            name: triangle
            switches:
              - {{name: {a}, dpid: 0xa3}}
              - {{name: {b}, dpid: 0xb3}}
              - {{name: {c}, dpid: 0xc3}}
            links:
              - {{a: {a}, b: {b}, a_port: 1, b_port: 1, latency: 1ms}}
              - {{a: {a}, b: {c}, a_port: 2, b_port: 1, latency: 1ms}}
              - {{a: {c}, b: {b}, a_port: 2, b_port: 2, latency: 1ms}}
            hosts:
              - name: client
                interfaces: [{{name: eth0, switch: {a}, port: 10, port_name: {a}-c}}]
              - name: server
                interfaces: [{{name: eth0, switch: {b}, port: 10, port_name: {b}-s}}]
            """))
        return topo, element


def _veth(here: str, there: str) -> None:
    sh("ip", "link", "add", here, "type", "veth", "peer", "name", there)


def _attach(bridge: str, port: str, number: int) -> None:
    sh("ovs-vsctl", "add-port", bridge, port, "--", "set", "interface", port, f"ofport_request={number}")
    sh("ip", "link", "set", port, "up")
