"""Two netdev OVS bridges joined by a veth on port 1, hosts in network namespaces, and their topology."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

from .echo_requests import write_echo_requests


def sh(*cmd: str, check: bool = True) -> str:
    return subprocess.run(cmd, check=check, capture_output=True, text=True).stdout


def link_bridges(a: str, b: str, dpid_a: int, dpid_b: int) -> None:
    """Bridges ``a`` and ``b`` (netdev, OpenFlow 1.3, fail-mode secure) joined by ``a-eth1``/``b-eth1``."""
    for br, dpid in ((a, dpid_a), (b, dpid_b)):
        sh("ovs-vsctl", "--may-exist", "add-br", br, "--", "set", "bridge", br, "datapath_type=netdev",
           f"other-config:datapath-id={dpid:016x}", "fail_mode=secure", "protocols=OpenFlow13")
    sh("ip", "link", "add", f"{a}-eth1", "type", "veth", "peer", "name", f"{b}-eth1")
    for br in (a, b):
        link = f"{br}-eth1"
        sh("ovs-vsctl", "add-port", br, link, "--", "set", "interface", link, "ofport_request=1")
        sh("ip", "link", "set", link, "up")


def add_host(netns: str, port: str, cidr: str, bridge: str | None = None, ofport: int | None = None,
             ipv6: bool = True) -> None:
    """A new namespace whose eth0 (address ``cidr``, tx offload off) is the veth peer of ``port``.

    With ``bridge``, ``port`` joins it (at ``ofport`` if given); else the caller attaches it.
    Without ``ipv6`` the namespace sends no IPv6 of its own (solicitations, MLD) to count against.
    """
    sh("ip", "netns", "add", netns)
    if not ipv6:
        for scope in ("default", "all"):
            sh("ip", "netns", "exec", netns, "sysctl", "-qw", f"net.ipv6.conf.{scope}.disable_ipv6=1")
    sh("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns)
    sh("ip", "netns", "exec", netns, "ip", "addr", "add", cidr, "dev", "eth0")
    sh("ip", "netns", "exec", netns, "ip", "link", "set", "eth0", "up")
    sh("ip", "netns", "exec", netns, "ethtool", "-K", "eth0", "tx", "off")
    if bridge is not None:
        request = ["--", "set", "interface", port, f"ofport_request={ofport}"] if ofport else []
        sh("ovs-vsctl", "add-port", bridge, port, *request)
    sh("ip", "link", "set", port, "up")


def remove(a: str, b: str, namespaces: tuple[str, ...] = ()) -> None:
    """Remove the bridges, their link and the namespaces (whatever of them exists)."""
    for br in (a, b):
        sh("ovs-vsctl", "--if-exists", "del-br", br, check=False)
    for ns in namespaces:
        sh("ip", "netns", "del", ns, check=False)
    sh("ip", "link", "del", f"{a}-eth1", check=False)


def write_topology(path: Path, name: str, a: str, b: str, dpid_a: int, dpid_b: int, hosts: str = "") -> Path:
    """The topology YAML of the two bridges; ``hosts`` is YAML for its ``hosts:`` list, if any."""
    text = textwrap.dedent(f"""\
        name: {name}
        switches:
          - {{name: {a}, dpid: {dpid_a:#x}}}
          - {{name: {b}, dpid: {dpid_b:#x}}}
        links:
          - {{a: {a}, b: {b}, a_port: 1, b_port: 1}}
        """)
    if hosts:
        text += "hosts:\n" + textwrap.indent(textwrap.dedent(hosts), "  ")
    path.write_text(text)
    return path


def build_echo(tmp: Path, name: str, a: str, b: str, dpids: tuple[int, int], namespaces: tuple[str, str],
               subnet: str) -> tuple[Path, Path]:
    """The two bridges with a client namespace on ``a`` (``subnet``.1) and a server on ``b`` (.2),
    both at port 10, their topology and the echo requests: (topology, requests directory)."""
    link_bridges(a, b, *dpids)
    add_host(namespaces[0], f"{a}-c", f"{subnet}.1/24", bridge=a, ofport=10)
    add_host(namespaces[1], f"{b}-s", f"{subnet}.2/24", bridge=b, ofport=10)
    topo = write_topology(tmp / "topo.yaml", name, a, b, *dpids, f"""\
        - name: client
          interfaces: [{{name: eth0, switch: {a}, port: 10, port_name: {a}-c}}]
        - name: server
          interfaces: [{{name: eth0, switch: {b}, port: 10, port_name: {b}-s}}]
        """)
    return topo, write_echo_requests(tmp / "requests", f"{a}/{a}-c", f"{b}/{b}-s")
