"""The Mininet builder: exact ports and names, service-function hosts, traffic helpers, reliable cleanup.

No controller here: a static chain client → firewall → dpi → gateway is wired with ovs-ofctl, one
bidirectional in_port → output pair per hop, which is enough to prove the function bridges, their
nftables counters and filter, and the traffic helpers against real packets.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ryu_nsm.core.fabric import Fabric, Host, HostInterface, Link, Switch
from ryu_nsm.lab.mininet_commands import FabricNetError, wait_until
from ryu_nsm.lab.mininet_fabric import FabricNet, build_network, cleanup

pytestmark = pytest.mark.mininet

GW_IP = "10.0.0.254"
CLIENT_IP = "10.0.0.1"
NOTHING = {"bridges": [], "interfaces": [], "shells": []}


def sh(*cmd: str, stdin: str | None = None) -> str:
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=True).stdout.strip()


def in_host(fnet: FabricNet, host: str, *cmd: str) -> str:
    return sh("mnexec", "-a", str(fnet.host(host).pid), *cmd)


def attachment(fabric: Fabric, host: str, index: int) -> tuple[str, int]:
    intf = next(h for h in fabric.hosts if h.name == host).interfaces[index]
    return intf.switch, intf.port


def hop_flows(fabric: Fabric, a: tuple[str, int], b: tuple[str, int]) -> dict[str, list[str]]:
    """Flows that wire attachment ``a`` to ``b`` both ways over the direct link between their switches."""
    (sa, pa), (sb, pb) = a, b
    link = next(lk for lk in fabric.links if {lk.a, lk.b} == {sa, sb})
    pairs = {sa: (pa, link.port_on(sa)), sb: (link.port_on(sb), pb)}
    return {
        sw: [f"priority=100,in_port={x},actions=output:{y}", f"priority=100,in_port={y},actions=output:{x}"]
        for sw, (x, y) in pairs.items()
    }


def push_chain(fnet: FabricNet) -> None:
    """Static chain client → firewall (eth0→eth1) → dpi (eth0→eth1) → gateway."""
    f = fnet.fabric
    hops = [
        (attachment(f, "client", 0), attachment(f, "firewall", 0)),
        (attachment(f, "firewall", 1), attachment(f, "dpi", 0)),
        (attachment(f, "dpi", 1), attachment(f, "gateway", 0)),
    ]
    per_switch: dict[str, list[str]] = {}
    for a, b in hops:
        for switch, flows in hop_flows(f, a, b).items():
            per_switch.setdefault(switch, []).extend(flows)
    for switch, flows in per_switch.items():
        sh("ovs-ofctl", "-O", "OpenFlow13", "add-flows", switch, "-", stdin="\n".join(flows) + "\n")


def processes() -> list[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every process."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found.append((int(proc.name), int(stat.rsplit(")", 1)[1].split()[1]), cmdline))
    return found


def owned_state(fabric: Fabric) -> dict[str, list[str]]:
    """What of ``fabric`` exists now: bridges, root-namespace interfaces, Mininet shells of this process."""
    bridges = set(sh("ovs-vsctl", "list-br").split())
    links = {link["ifname"] for link in json.loads(sh("ip", "-j", "link", "show"))}
    switches = {s.name for s in fabric.switches}
    return {
        "bridges": sorted(bridges & switches),
        "interfaces": sorted(links & (switches | {name for (_, name) in fabric.port_names})),
        "shells": [cmd for _, ppid, cmd in processes() if ppid == os.getpid() and "mininet:" in cmd],
    }


def live_netns(inodes: set[str]) -> set[str]:
    """Which of these network namespaces (``net:[inode]``) any process still holds."""
    held = set()
    for proc in Path("/proc").iterdir():
        try:
            held.add(os.readlink(proc / "ns" / "net"))
        except OSError:
            continue
    return held & inodes


def two_switches(prefix: str, capacity: float = 1e9, function: bool = False) -> Fabric:
    """Two switches, one link, a host on each (or a function on the second); unusual names avoid clashes."""
    s1, s2 = f"{prefix}1", f"{prefix}2"
    hosts = [Host(f"{prefix}a", (HostInterface(f"{prefix}a", "eth0", s1, 10, f"{s1}-a", ip="10.0.0.1/24"),))]
    if function:
        hosts.append(Host(f"{prefix}f", (HostInterface(f"{prefix}f", "eth0", s2, 10, f"{s2}-in"),
                                         HostInterface(f"{prefix}f", "eth1", s2, 11, f"{s2}-out")),
                          role="function"))
    else:
        hosts.append(Host(f"{prefix}b", (HostInterface(f"{prefix}b", "eth0", s2, 10, f"{s2}-b",
                                                       ip="10.0.0.2/24"),)))
    links = (Link(s1, 1, s2, 1, capacity=capacity),)
    return Fabric(prefix, (Switch(s1, 1), Switch(s2, 2)), links, tuple(hosts))


def test_ports_names_addresses_and_clean_stop(clean_mininet: None, demo_fabric: Fabric) -> None:
    started = time.monotonic()
    fnet = build_network(demo_fabric, None)
    built = time.monotonic() - started
    with pytest.raises(RuntimeError, match="boom"), fnet:
        for (switch, name), port in demo_fabric.port_names.items():
            assert sh("ovs-vsctl", "get", "Interface", name, "ofport") == str(port)
            assert sh("ovs-vsctl", "port-to-br", name) == switch
        for sw in demo_fabric.switches:
            row = sh("ovs-vsctl", "get", "Bridge", sw.name, "datapath_type", "fail_mode", "protocols",
                     "datapath_id", "controller").splitlines()
            assert row == ["netdev", "secure", "[OpenFlow13]", f'"{sw.dpid:016x}"', "[]"]
        for host in demo_fabric.hosts:
            assert in_host(fnet, host.name, "sysctl", "-n", "net.ipv6.conf.all.disable_ipv6") == "1"
            for intf in host.interfaces:
                (info,) = json.loads(in_host(fnet, host.name, "ip", "-j", "addr", "show", "dev", intf.name))
                addrs = [(a["family"], f"{a['local']}/{a['prefixlen']}") for a in info["addr_info"]]
                assert addrs == ([("inet", intf.ip)] if intf.ip else [])
                if intf.mac:
                    assert info["address"] == intf.mac
                assert info.get("master") == ("br0" if host.role == "function" else None)
                host_side = in_host(fnet, host.name, "ethtool", "-k", intf.name)
                assert "tx-checksumming: off" in host_side.splitlines()
                assert "tx-checksumming: off" in sh("ethtool", "-k", intf.port_name).splitlines()
        assert set(fnet.function_counters("firewall")) == {"seen", "in_to_out", "out_to_in", "dropped"}
        # Functions count with the bridge family alone: br_netfilter's IP hooks are off (or absent).
        bridge_nf = in_host(fnet, "firewall", "sh", "-c",
                            "cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo 0")
        assert bridge_nf == "0"
        fnet.check_ports()
        sh("ovs-vsctl", "set", "Interface", "s1-eth1", "ofport_request=77")
        with pytest.raises(FabricNetError, match="s1-eth1: declared 1, got 77"):
            fnet.check_ports()
        netns = {os.readlink(f"/proc/{fnet.host(h.name).pid}/ns/net") for h in demo_fabric.hosts}
        assert len(netns) == len(demo_fabric.hosts)
        assert all(owned_state(demo_fabric).values())
        stopping = time.monotonic()
        raise RuntimeError("boom")
    stopped = time.monotonic() - stopping
    print(f"\nbuild {built:.2f}s, stop {stopped:.2f}s for {len(demo_fabric.switches)} switches, "
          f"{len(demo_fabric.hosts)} hosts")
    assert owned_state(demo_fabric) == NOTHING
    assert live_netns(netns) == set()


def test_static_chain_through_functions(clean_mininet: None, demo_fabric: Fabric) -> None:
    with build_network(demo_fabric, None) as fnet:
        quiet = {name: fnet.function_counters(name) for name in ("firewall", "dpi")}
        # IPv6 and bridge multicast are off and nothing is wired yet: the functions have seen nothing.
        assert all(c.packets == 0 for counters in quiet.values() for c in counters.values())

        push_chain(fnet)
        assert fnet.ping("client", GW_IP, count=3) == (3, 3)
        for name in ("firewall", "dpi"):
            counters = fnet.function_counters(name)
            # ARP request + 3 echo requests one way, ARP reply + 3 echo replies the other.
            assert counters["in_to_out"].packets >= 4 and counters["out_to_in"].packets >= 4
            assert counters["seen"].packets == counters["in_to_out"].packets + counters["out_to_in"].packets
            assert counters["dropped"].packets == 0

        # Pin ARP so that from here on only the traffic a step sends crosses the chain.
        macs = {h.name: h.interfaces[0].mac for h in demo_fabric.hosts}
        in_host(fnet, "client", "ip", "neigh", "replace", GW_IP, "lladdr", macs["gateway"], "dev", "eth0",
                "nud", "permanent")
        in_host(fnet, "gateway", "ip", "neigh", "replace", CLIENT_IP, "lladdr", macs["client"], "dev",
                "eth0", "nud", "permanent")

        fnet.set_function_filter("firewall", drop_tcp_ports=[23])
        fw0, dpi0 = fnet.function_counters("firewall"), fnet.function_counters("dpi")
        assert not fnet.tcp_check("client", "gateway", GW_IP, 23, timeout=2)
        fw1, dpi1 = fnet.function_counters("firewall"), fnet.function_counters("dpi")
        dropped = fw1["dropped"].packets - fw0["dropped"].packets
        # Every frame of the attempt was a SYN to port 23 from the client side, and none got past.
        assert dropped > 0
        assert dropped == fw1["in_to_out"].packets - fw0["in_to_out"].packets
        assert dpi1 == dpi0

        assert fnet.tcp_check("client", "gateway", GW_IP, 80, timeout=3)
        fw2, dpi2 = fnet.function_counters("firewall"), fnet.function_counters("dpi")
        assert fw2["dropped"] == fw1["dropped"]
        assert dpi2["in_to_out"].packets > dpi1["in_to_out"].packets
        assert dpi2["out_to_in"].packets > dpi1["out_to_in"].packets

        fnet.set_function_filter("firewall", drop_tcp_ports=[])
        assert fnet.tcp_check("client", "gateway", GW_IP, 23, timeout=3)

        bits = fnet.iperf_tcp("client", "gateway", GW_IP, seconds=1)
        print(f"\niperf3 client → gateway through firewall and dpi: {bits / 1e6:.0f} Mbit/s")
        assert bits > 1e6
        assert fnet.function_counters("dpi")["in_to_out"].bytes > bits / 8 * 0.5

        # The intruder has no wire: nothing carries its frames anywhere.
        assert fnet.ping("intruder", GW_IP, count=1, timeout=1).received == 0

        for sw in demo_fabric.switches:
            sh("ovs-ofctl", "-O", "OpenFlow13", "del-flows", sw.name)
        assert all("priority=100" not in flows for flows in fnet.dump_flows().values())
        assert fnet.ping("client", GW_IP, count=2, timeout=2).received == 0


def test_shape_limits_links_to_their_capacity(clean_mininet: None) -> None:
    fabric = two_switches("shp", capacity=20e6)
    rates = {}
    for shape in (False, True):
        with build_network(fabric, None, shape=shape) as fnet:
            for sw in ("shp1", "shp2"):
                sh("ovs-ofctl", "-O", "OpenFlow13", "add-flows", sw, "-",
                   stdin="in_port=10,actions=output:1\nin_port=1,actions=output:10\n")
            rates[shape] = fnet.iperf_tcp("shpa", "shpb", "10.0.0.2", seconds=2)
    unshaped, shaped = rates[False] / 1e6, rates[True] / 1e6
    print(f"\n20 Mbit/s link: unshaped {unshaped:.0f} Mbit/s, shaped {shaped:.1f} Mbit/s")
    assert rates[False] > 2 * 20e6
    assert 0.5 * 20e6 < rates[True] <= 1.1 * 20e6


def test_switches_connect_to_the_remote_controller(clean_mininet: None) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]
        with build_network(two_switches("ctl"), port) as fnet:
            assert sh("ovs-vsctl", "get-controller", "ctl1") == f"tcp:127.0.0.1:{port}"
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(10)
                hello = conn.recv(8)
            # OpenFlow header: version 0x04 (1.3), type 0 (HELLO).
            assert hello[:2] == b"\x04\x00"
            assert fnet.switch("ctl1").dpid == f"{1:016x}"
    assert owned_state(two_switches("ctl")) == NOTHING


def test_port_ovs_cannot_number_fails_build_and_leaves_nothing(clean_mininet: None) -> None:
    # OpenFlow allows port 65300, OVS numbers ports only up to 65279: the build must notice and undo.
    good = two_switches("bad")
    b_host = good.hosts[1]
    bad_intf = HostInterface(b_host.name, "eth0", "bad2", 65300, "bad2-b", ip="10.0.0.2/24")
    fabric = Fabric("bad", good.switches, good.links, (good.hosts[0], Host(b_host.name, (bad_intf,))))
    with pytest.raises(FabricNetError, match="bad2"):
        build_network(fabric, None)
    assert owned_state(fabric) == NOTHING


def test_names_in_use_are_refused_not_destroyed(clean_mininet: None, demo_fabric: Fabric) -> None:
    # A veth that ryu-nsm did not create, with a name the fabric wants: refused, and left as it was.
    sh("ip", "link", "add", "s2-eth2", "type", "veth", "peer", "name", "rnsm-test-peer")
    try:
        with pytest.raises(FabricNetError, match="s2-eth2"):
            build_network(demo_fabric, None)
        assert "s2-eth2" in {link["ifname"] for link in json.loads(sh("ip", "-j", "link", "show"))}
    finally:
        sh("ip", "link", "del", "s2-eth2")
    assert owned_state(demo_fabric) == NOTHING


CRASHING_BUILDER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from test_fabric_builder import two_switches
from ryu_nsm.lab.mininet_fabric import build_network
net = build_network(two_switches("cr", function=True), None)
print("up", flush=True)
time.sleep(30)
"""


def test_state_of_a_killed_process_is_swept(clean_mininet: None) -> None:
    fabric = two_switches("cr", function=True)
    child = subprocess.Popen([sys.executable, "-c", CRASHING_BUILDER, str(Path(__file__).parent)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([child.stdout], [], [], 30)
        line = child.stdout.readline().strip() if ready else ""
    finally:
        child.kill()
        _, err = child.communicate(timeout=10)
    assert line == "up", err
    # Host shells hang up with their parent; bridges and switch-to-switch veths stay behind.
    assert wait_until(lambda: not any(cmd.endswith(("mininet:cra ", "mininet:crf "))
                                      for _, _, cmd in processes()), timeout=5)
    assert {"cr1", "cr2"} <= set(sh("ovs-vsctl", "list-br").split())

    removed = cleanup()
    assert {"bridge cr1", "bridge cr2"} <= set(removed)
    assert owned_state(fabric) == NOTHING
    assert cleanup() == []
