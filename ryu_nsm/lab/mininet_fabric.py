"""Mininet networks built from a ``Fabric``, with service-function hosts and traffic/counter helpers.

Switches are Open vSwitch bridges on the userspace (netdev) datapath, speaking OpenFlow 1.3 with
``fail_mode=secure``; every port gets the exact OpenFlow number and name that the fabric declares.
Hosts with role ``"function"`` bridge their two interfaces with a Linux bridge and count (and
optionally drop) what passes with an nftables bridge-family table, so tests can see that traffic
really went through a service function.

A link named in ``build_network(impaired=...)`` runs through an impairment element (see
``ryu_nsm.lab.impairment``): a Mininet host between the two switches that relays frames in user space
and delays, drops or rate-limits them on command (these kernels have no netem). The switches still
see one link with the declared ports; ``FabricNet.impairment(link)`` returns the element's client.

Everything this module creates is marked with its owner (pid and start time): OVS bridges in
``external_ids``, root-namespace veths in their interface alias. ``cleanup()`` removes only marked
state whose owner is gone (or, on request, this process's own), never anyone else's, and it ends no
processes by name. Processes started inside hosts carry their own deadline, so none outlives a crash.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

from mininet.link import Intf, TCIntf
from mininet.link import Link as MnLink
from mininet.net import Mininet
from mininet.node import Node, OVSSwitch, RemoteController

from ryu_nsm.core.fabric import Fabric, Host, Link
from ryu_nsm.lab.impairment import Impairment, start_in_netns

# Importing Mininet makes every logger created afterwards a MininetLogger at level OUTPUT (25) with a
# console handler of its own, which silences INFO of any module imported later in this process.
logging.setLoggerClass(logging.Logger)

OWNER_KEY = "ryu-nsm-owner"
NFT_TABLE = "ryu_nsm"
FUNCTION_BRIDGE = "br0"
FUNCTION_COUNTERS = ("seen", "in_to_out", "out_to_in", "dropped")
IFNAMSIZ = 15  # longest Linux interface name
OFPP_MAX = 0xFFFFFF00

_LIVE: set[FabricNet] = set()


class FabricNetError(RuntimeError):
    """A Mininet fabric could not be built, checked or driven as asked."""


class PingResult(NamedTuple):
    sent: int
    received: int


class PingReplies(NamedTuple):
    """What a background ping saw: round-trip times (ms) of the replies in order, and echoes sent."""

    rtts: list[float]
    sent: int

    @property
    def lost(self) -> int:
        return self.sent - len(self.rtts)


class CounterValue(NamedTuple):
    packets: int
    bytes: int


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout`` seconds pass; True when it became truthy."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(interval, remaining))


# --- ownership marks -------------------------------------------------------------------------------

def _owner_token(pid: int) -> str | None:
    """``pid:starttime`` of a live process (start time guards against pid reuse), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return f"{pid}:{stat.rsplit(')', 1)[1].split()[19]}"


def _owner_alive(token: str) -> bool:
    pid, _, _start = token.partition(":")
    return pid.isdigit() and _owner_token(int(pid)) == token


def _is_stale(token: str | None, own: bool) -> bool:
    """A mark is stale when its owner is gone, or when it is ours and ``own`` asks to clear ours."""
    if token is None:
        return False
    return not _owner_alive(token) or (own and token == _owner_token(os.getpid()))


# --- running commands ------------------------------------------------------------------------------

def _run(cmd: list[str], node: Node | None = None, timeout: float = 15.0, check: bool = True,
         stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in the root namespace or, with ``node``, in that host's network namespace."""
    argv = cmd if node is None or not node.inNamespace else ["mnexec", "-a", str(node.pid), *cmd]
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        where = f" in {node.name}" if node is not None else ""
        detail = (proc.stderr or proc.stdout).strip()
        raise FabricNetError(f"`{' '.join(cmd)}`{where} exited {proc.returncode}: {detail}")
    return proc


def _vsctl_json(table: str, columns: str) -> list[dict[str, Any]]:
    """Rows of an OVSDB table as dicts (maps and sets decoded), via ``ovs-vsctl --format=json``."""
    out = _run(["ovs-vsctl", "--timeout=10", "--format=json", f"--columns={columns}", "list", table])
    doc = json.loads(out.stdout)
    return [
        {head: _ovsdb_value(value) for head, value in zip(doc["headings"], row, strict=True)}
        for row in doc["data"]
    ]


def _ovsdb_value(value: Any) -> Any:
    if isinstance(value, list) and len(value) == 2 and value[0] == "map":
        return {k: _ovsdb_value(v) for k, v in value[1]}
    if isinstance(value, list) and len(value) == 2 and value[0] == "set":
        return [_ovsdb_value(v) for v in value[1]]
    return value


def _root_links() -> list[dict[str, Any]]:
    return json.loads(_run(["ip", "-j", "-d", "link", "show"]).stdout)


# --- cleanup ---------------------------------------------------------------------------------------

def cleanup(own: bool = False) -> list[str]:
    """Remove Mininet state this module left behind; returns what was removed, e.g. ``["bridge s1"]``.

    Always removes bridges and root-namespace veths whose owning process is gone. With ``own=True``
    it also stops this process's live networks and removes anything still marked as this process's.
    State that belongs to another live process, or that this module did not create, is left alone.
    Unlike ``mn -c`` it deletes no unmarked bridges and ends no processes by name.
    """
    removed: list[str] = []
    if own:
        for fnet in list(_LIVE):
            fnet.stop()
            removed.append(f"network {fnet.fabric.name}")
    stale_ports: set[str] = set()
    for row in _vsctl_json("Bridge", "name,external_ids"):
        if _is_stale(row["external_ids"].get(OWNER_KEY), own):
            ports = _run(["ovs-vsctl", "--timeout=10", "list-ports", row["name"]]).stdout.split()
            stale_ports.update(ports)
            _run(["ovs-vsctl", "--timeout=10", "--if-exists", "del-br", row["name"]])
            removed.append(f"bridge {row['name']}")
    for link in _root_links():
        alias = link.get("ifalias", "")
        token = alias.removeprefix(f"{OWNER_KEY}:") if alias.startswith(f"{OWNER_KEY}:") else None
        if link["ifname"] in stale_ports or _is_stale(token, own):
            # Deleting one end of a veth removes its peer, which may already be gone.
            if _run(["ip", "link", "del", link["ifname"]], check=False).returncode == 0:
                removed.append(f"interface {link['ifname']}")
    return removed


def dump_all_flows() -> str:
    """``ovs-ofctl dump-flows`` of every bridge this process owns, as one text (for failure reports)."""
    mine = _owner_token(os.getpid())
    parts = []
    for row in sorted(_vsctl_json("Bridge", "name,external_ids"), key=lambda r: r["name"]):
        if row["external_ids"].get(OWNER_KEY) == mine:
            out = _run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", row["name"]], check=False)
            parts.append(f"--- {row['name']}\n{(out.stdout or out.stderr).rstrip()}")
    return "\n".join(parts)


# --- Mininet node and interface classes ------------------------------------------------------------

class _OwnedOVSSwitch(OVSSwitch):
    """OVSSwitch whose bridge carries the owner mark from the same ovs-vsctl call that creates it."""

    def __init__(self, name: str, owner: str, **params: Any):
        self.owner = owner
        super().__init__(name, **params)

    def bridgeOpts(self) -> str:  # Mininet's method name
        return super().bridgeOpts() + f" external_ids:{OWNER_KEY}={self.owner}"

    def vsctl(self, *args: Any, **kwargs: Any) -> str:
        # Mininet ignores what ovs-vsctl says; a refused transaction would leave a switch missing.
        out = super().vsctl(*args, **kwargs)
        if out and "ovs-vsctl:" in out:
            raise FabricNetError(f"switch {self.name}: {out.strip()}")
        return out


class _SilentRemoteController(RemoteController):
    """RemoteController without Mininet's telnet probe, which would open a stray controller session."""

    def checkListening(self) -> None:  # Mininet's method name
        return None


class _PreparedMixin:
    """Before an interface comes up: owner alias (root side), no IPv6, no tx checksum offload.

    Veths on the netdev datapath hand OVS frames whose checksum was never filled in unless tx offload
    is off; IPv6 off keeps router/neighbour chatter out of the counters from the very first frame.
    """

    name: str
    node: Node

    def config(self, **params: Any) -> dict[str, Any]:
        if self.node.inNamespace:
            script = f"sysctl -qw net.ipv6.conf.{self.name}.disable_ipv6=1 && ethtool -K {self.name} tx off"
            _run(["sh", "-ec", script], self.node)
        else:
            _run(["ip", "link", "set", "dev", self.name, "alias", f"{OWNER_KEY}:{self.node.owner}"])
            Path(f"/proc/sys/net/ipv6/conf/{self.name}/disable_ipv6").write_text("1\n")
            _run(["ethtool", "-K", self.name, "tx", "off"])
        return super().config(**params)  # type: ignore[misc]


class _PreparedIntf(_PreparedMixin, Intf):
    pass


class _PreparedTCIntf(_PreparedMixin, TCIntf):
    def tc(self, cmd: str, tc: str = "tc") -> str:
        # htb's note that a one-class quantum is "big" is harmless; Mininet would print it as an error.
        out = super().tc(cmd, tc)
        return "\n".join(line for line in out.splitlines() if "Consider r2q change" not in line)


# --- validation ------------------------------------------------------------------------------------

def _switch_side_names(fabric: Fabric) -> list[tuple[str, str, int]]:
    """(switch, interface name, OpenFlow port) for every declared switch port."""
    names = []
    for link in fabric.links:
        names.append((link.a, f"{link.a}-eth{link.a_port}", link.a_port))
        names.append((link.b, f"{link.b}-eth{link.b_port}", link.b_port))
    for host in fabric.hosts:
        names.extend((i.switch, i.port_name, i.port) for i in host.interfaces)
    return names


def find_link(fabric: Fabric, name: str) -> Link:
    """The fabric's link called ``name``: its full name (``s1:3-s3:2``) or, when only one link joins
    the two switches, ``s1-s3`` (either order). Raises FabricNetError naming the choices otherwise."""
    for link in fabric.links:
        if link.name == name:
            return link
    ends = name.split("-")
    pair = [link for link in fabric.links if len(ends) == 2 and {link.a, link.b} == set(ends)]
    if len(pair) == 1:
        return pair[0]
    known = ", ".join(f"{lk.a}-{lk.b}" for lk in fabric.links)
    why = "several links join these switches: use the full name" if pair else f"links: {known}"
    raise FabricNetError(f"fabric {fabric.name}: no single link {name!r} ({why})")


def impairment_host(link: Link) -> str:
    """The name of the Mininet host that carries the impairment element of ``link``."""
    return f"imp-{link.a}-{link.b}-{link.a_port}"


def _validate(fabric: Fabric, impaired: Iterable[Link] = ()) -> None:
    problems = []
    switches = {s.name for s in fabric.switches}
    if len(switches) != len(fabric.switches):
        problems.append("duplicate switch names")
    hosts = [h.name for h in fabric.hosts] + [impairment_host(link) for link in impaired]
    if len(set(hosts)) != len(hosts) or switches & set(hosts):
        problems.append("host names must be unique and differ from switch names")
    seen_names: set[str] = set()
    seen_ports: set[tuple[str, int]] = set()
    for switch, name, port in _switch_side_names(fabric):
        if switch not in switches:
            problems.append(f"{name}: unknown switch {switch}")
        if len(name) > IFNAMSIZ or len(switch) > IFNAMSIZ:
            problems.append(f"{name}: interface names are limited to {IFNAMSIZ} characters")
        if name in seen_names or name in switches:
            problems.append(f"{name}: interface name used twice")
        if (switch, port) in seen_ports:
            problems.append(f"{switch} port {port} used twice")
        if not 1 <= port < OFPP_MAX:
            problems.append(f"{name}: port {port} is not a usable OpenFlow port number")
        seen_names.add(name)
        seen_ports.add((switch, port))
    for host in fabric.hosts:
        inner = [i.name for i in host.interfaces]
        if len(set(inner)) != len(inner) or any(len(n) > IFNAMSIZ for n in inner):
            problems.append(f"{host.name}: interface names must be unique and at most {IFNAMSIZ} long")
        if host.role == "function":
            if len(host.interfaces) != 2 or any(i.ip for i in host.interfaces):
                problems.append(f"{host.name}: a function needs exactly two interfaces without IP")
        elif host.role != "host":
            problems.append(f"{host.name}: unknown role {host.role!r}")
    if problems:
        raise FabricNetError(f"fabric {fabric.name} cannot be built: " + "; ".join(problems))


def _check_free(fabric: Fabric) -> None:
    """Refuse to touch bridges or interfaces with our names that belong to someone else."""
    bridges = {row["name"]: row["external_ids"].get(OWNER_KEY)
               for row in _vsctl_json("Bridge", "name,external_ids")}
    busy = []
    for sw in fabric.switches:
        if sw.name in bridges:
            owner = bridges[sw.name]
            busy.append(f"bridge {sw.name} ({'owned by ' + owner if owner else 'not created by ryu-nsm'})")
    root = {link["ifname"] for link in _root_links()}
    names = [n for _, n, _ in _switch_side_names(fabric)] + [s.name for s in fabric.switches]
    busy.extend(f"interface {n}" for n in names if n in root and n not in bridges)
    if busy:
        raise FabricNetError(
            f"fabric {fabric.name}: already in use: {', '.join(busy)}; another network with these names "
            "is running, or something outside ryu-nsm created them (remove them by hand)"
        )


def _require_ovs() -> None:
    proc = _run(["ovs-vsctl", "--timeout=5", "show"], check=False)
    if proc.returncode != 0:
        raise FabricNetError(f"Open vSwitch is not running (ovs-vsctl show: {proc.stderr.strip()}); "
                             "run scripts/setup")


# --- the network -----------------------------------------------------------------------------------

_TCP_SERVER = """
import socket, sys
ip, port, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((ip, port))
srv.listen(1)
print("listening", flush=True)
srv.settimeout(limit)
try:
    conn, _ = srv.accept()
except TimeoutError:
    sys.exit(3)
conn.settimeout(limit)
data = b""
while len(data) < 32:
    chunk = conn.recv(32 - len(data))
    if not chunk:
        break
    data += chunk
conn.sendall(data[::-1])
conn.close()
"""

_TCP_CLIENT = """
import socket, sys
ip, port, limit, token = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4].encode()
with socket.create_connection((ip, port), timeout=limit) as conn:
    conn.sendall(token)
    data = b""
    while len(data) < len(token):
        chunk = conn.recv(len(token) - len(data))
        if not chunk:
            break
        data += chunk
sys.exit(0 if data == token[::-1] else 1)
"""


class FabricNet:
    """A running Mininet network built from a fabric; stop it (or use ``with``) to remove it all."""

    wait_until = staticmethod(wait_until)

    def __init__(self, fabric: Fabric, net: Mininet, owner: str, impaired: Iterable[Link] = ()):
        self.fabric = fabric
        self.net = net
        self.owner = owner
        self.impaired = tuple(impaired)
        self._elements: dict[str, Impairment] = {}
        self._procs: list[subprocess.Popen[str]] = []
        self._stopped = False
        _LIVE.add(self)

    def __enter__(self) -> FabricNet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def host(self, name: str) -> Node:
        """The Mininet host called ``name``."""
        return self.net.get(name)

    def switch(self, name: str) -> OVSSwitch:
        """The Mininet switch called ``name``."""
        return self.net.get(name)

    # -- building (called once by build_network) --

    def _build(self, controller_port: int | None, controller_ip: str, shape: bool) -> None:
        net = self.net
        if controller_port is not None:
            net.addController(_SilentRemoteController("c0", ip=controller_ip, port=controller_port))
        for sw in self.fabric.switches:
            net.addSwitch(sw.name, cls=_OwnedOVSSwitch, owner=self.owner, datapath="user",
                          protocols="OpenFlow13", failMode="secure", dpid=f"{sw.dpid:016x}")
        for host in self.fabric.hosts:
            node = net.addHost(host.name, ip=None)
            # Interfaces created later inherit "default", so no IPv6 frame ever leaves a host.
            _run(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                  "net.ipv6.conf.default.disable_ipv6=1", "net.ipv6.conf.lo.disable_ipv6=1"], node)
        impaired = {link.name for link in self.impaired}
        for link in self.fabric.links:
            intf_cls, params = _PreparedIntf, {}
            # Mininet's tc shaping stops at 1000 Mbit/s; faster links stay unshaped.
            if shape and link.capacity <= 1e9:
                intf_cls, params = _PreparedTCIntf, {"bw": link.capacity / 1e6}
            side_a, side_b = f"{link.a}-eth{link.a_port}", f"{link.b}-eth{link.b_port}"
            if link.name not in impaired:
                net.addLink(link.a, link.b, port1=link.a_port, port2=link.b_port, cls=MnLink,
                            intfName1=side_a, intfName2=side_b,
                            cls1=intf_cls, cls2=intf_cls, params1=params, params2=dict(params))
                continue
            # switch a – element (a, b) – switch b; each switch keeps its declared port and name.
            element = net.addHost(impairment_host(link), ip=None)
            _run(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                  "net.ipv6.conf.default.disable_ipv6=1"], element)
            for switch, port, side, inner in ((link.a, link.a_port, side_a, "a"),
                                              (link.b, link.b_port, side_b, "b")):
                net.addLink(switch, element.name, port1=port, port2=0 if inner == "a" else 1, cls=MnLink,
                            intfName1=side, intfName2=inner, cls1=intf_cls, cls2=_PreparedIntf,
                            params1=dict(params))
        for host in self.fabric.hosts:
            for index, intf in enumerate(host.interfaces):
                params2 = {"ip": intf.ip} if intf.ip else {}
                extra = {"addr2": intf.mac} if intf.mac else {}
                net.addLink(intf.switch, host.name, port1=intf.port, port2=index, cls=MnLink,
                            intfName1=intf.port_name, intfName2=intf.name,
                            cls1=_PreparedIntf, cls2=_PreparedIntf, params2=params2, **extra)
        net.build()
        for host in self.fabric.hosts:
            if host.role == "function":
                self._make_function(host)
        for link in self.impaired:
            node = self.host(impairment_host(link))
            control = f"/tmp/ryu-nsm-{self.owner.replace(':', '-')}-{node.name}.sock"
            # Before the switches start: frames (the controller's first link probes too) must not
            # meet a link that is not relaying yet. Seeded, so a run's losses repeat; the element
            # stops with this process at the latest.
            self._elements[link.name] = start_in_netns(node, "a", "b", control, seed=1)
        net.start()
        self.check_ports()

    def impairment(self, link: str) -> Impairment:
        """The impairment element on ``link`` (a name ``find_link`` accepts), to delay or drop frames."""
        found = find_link(self.fabric, link)
        if found.name not in self._elements:
            raise FabricNetError(f"link {found.a}-{found.b} has no impairment element "
                                 "(name it in build_network(impaired=...))")
        return self._elements[found.name]

    def set_link(self, link: str, up: bool) -> None:
        """Cut (``up=False``) or restore a link: both switch-side interfaces go down or up, so each
        switch sees its port lose carrier, as on a pulled cable (also through an element)."""
        found = find_link(self.fabric, link)
        for switch, port in ((found.a, found.a_port), (found.b, found.b_port)):
            _run(["ip", "link", "set", "dev", f"{switch}-eth{port}", "up" if up else "down"])

    def _make_function(self, host: Host) -> None:
        node = self.host(host.name)
        side_in, side_out = (i.name for i in host.interfaces)
        bridge_nf = " ".join(f"{p}=0" for p in ("net.bridge.bridge-nf-call-iptables",
                                                 "net.bridge.bridge-nf-call-ip6tables",
                                                 "net.bridge.bridge-nf-call-arptables"))
        script = (
            # Without snooping off the bridge joins 224.0.0.106 and sends IGMP reports into the fabric.
            f"ip link add {FUNCTION_BRIDGE} type bridge mcast_snooping 0"
            f" && ip link set {side_in} master {FUNCTION_BRIDGE}"
            f" && ip link set {side_out} master {FUNCTION_BRIDGE}"
            f" && ip link set {FUNCTION_BRIDGE} up"
            # Bridged frames stay out of the IP hooks (br_netfilter), so the function is plain L2.
            f" && if [ -d /proc/sys/net/bridge ]; then sysctl -qw {bridge_nf}; fi"
        )
        _run(["sh", "-ec", script], node)
        counters = "\n".join(f"  counter {c} {{ }}" for c in FUNCTION_COUNTERS)
        ruleset = (
            f"table bridge {NFT_TABLE} {{\n{counters}\n"
            "  chain filter { }\n"
            "  chain forward {\n"
            "    type filter hook forward priority 0; policy accept;\n"
            '    counter name "seen"\n'
            f'    iifname "{side_in}" counter name "in_to_out"\n'
            f'    iifname "{side_out}" counter name "out_to_in"\n'
            "    jump filter\n"
            "  }\n}\n"
        )
        _run(["nft", "-f", "-"], node, stdin=ruleset)

    def check_ports(self, timeout: float = 10.0) -> None:
        """Raise FabricNetError unless every declared port has its declared OpenFlow number in OVS."""
        declared = {name: port for _, name, port in _switch_side_names(self.fabric)}
        got: dict[str, Any] = {}

        def numbered() -> bool:
            got.clear()
            got.update((r["name"], r["ofport"]) for r in _vsctl_json("Interface", "name,ofport")
                       if r["name"] in declared)
            return all(isinstance(got.get(n), int) for n in declared)

        # ofport is [] until vswitchd has added the port; wait for all before comparing.
        wait_until(numbered, timeout)
        wrong = [f"{n}: declared {p}, got {got.get(n)}" for n, p in declared.items() if got.get(n) != p]
        if wrong:
            raise FabricNetError(f"fabric {self.fabric.name}: OpenFlow ports differ: " + "; ".join(wrong))

    # -- teardown --

    def stop(self) -> None:
        """Stop everything: helper processes, hosts, switches, links; safe to call more than once."""
        if self._stopped:
            return
        self._stopped = True
        _LIVE.discard(self)
        errors: list[str] = []
        for proc in self._procs:
            _reap(proc)
        self._procs.clear()
        for element in self._elements.values():
            element.stop()
        self._elements.clear()
        nodes = self.net.hosts + self.net.switches + self.net.controllers
        shells = [n.shell for n in nodes if n.shell is not None]
        try:
            self.net.stop()
        except Exception as exc:  # the sweep below must run whatever Mininet did
            errors.append(f"mininet stop: {exc}")
        for controller in self.net.controllers:
            # Mininet's stop() leaves a RemoteController's shell running.
            controller.terminate()
        for shell in shells:
            # A host's namespace lives until its shell exits; SIGHUP was sent, make sure it is gone.
            try:
                shell.wait(timeout=5)
            except subprocess.TimeoutExpired:
                shell.kill()
                shell.wait(timeout=5)
        for sw in self.fabric.switches:
            _run(["ovs-vsctl", "--timeout=10", "--if-exists", "del-br", sw.name], check=False)
        root = {link["ifname"] for link in _root_links()}
        for _, name, _ in _switch_side_names(self.fabric):
            if name in root:
                _run(["ip", "link", "del", name], check=False)
        if errors:
            raise FabricNetError("; ".join(errors))

    # -- service functions --

    def function_counters(self, name: str) -> dict[str, CounterValue]:
        """The nftables counters of function ``name``: seen, in_to_out, out_to_in, dropped."""
        out = _run(["nft", "-j", "list", "counters", "table", "bridge", NFT_TABLE], self.host(name))
        return {
            item["counter"]["name"]: CounterValue(item["counter"]["packets"], item["counter"]["bytes"])
            for item in json.loads(out.stdout)["nftables"] if "counter" in item
        }

    def set_function_filter(self, name: str, drop_tcp_ports: Iterable[int] = ()) -> None:
        """Make function ``name`` drop TCP to these ports, counted in ``dropped``; () removes the filter."""
        ports = sorted({int(p) for p in drop_tcp_ports})
        rules = f"flush chain bridge {NFT_TABLE} filter\n"
        if ports:
            rules += (f"add rule bridge {NFT_TABLE} filter tcp dport {{ {', '.join(map(str, ports))} }}"
                      ' counter name "dropped" drop\n')
        _run(["nft", "-f", "-"], self.host(name), stdin=rules)

    # -- traffic --

    def ping(self, src: str, dst_ip: str, count: int = 3, timeout: float = 5.0) -> PingResult:
        """Ping ``dst_ip`` from host ``src``: ``count`` echoes, giving up after ``timeout`` seconds."""
        ipaddress.ip_address(dst_ip)
        deadline = max(1, int(timeout + 0.999))
        proc = _run(["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", "-w", str(deadline),
                     dst_ip], self.host(src), timeout=deadline + 5, check=False)
        match = re.search(r"(\d+) packets transmitted, (\d+) received", proc.stdout)
        if match is None:
            raise FabricNetError(f"ping from {src} to {dst_ip} gave no summary: {proc.stdout}{proc.stderr}")
        return PingResult(int(match[1]), int(match[2]))

    def start_ping(self, src: str, dst_ip: str, interval: float = 0.05,
                   limit: float = 120.0) -> BackgroundPing:
        """Start pinging ``dst_ip`` from ``src`` every ``interval`` seconds (for at most ``limit``);
        ``stop()`` on the result ends it and says what came back."""
        ipaddress.ip_address(dst_ip)
        proc = self._spawn(src, ["timeout", str(limit), "ping", "-n", "-i", str(interval), "-W", "1", dst_ip])
        return BackgroundPing(proc)

    def tcp_check(self, src: str, dst: str, dst_ip: str, port: int, timeout: float = 3.0) -> bool:
        """True when ``src`` connects to ``dst_ip:port`` (listener on host ``dst``) and bytes go both ways."""
        server = self._spawn(dst, [sys.executable, "-c", _TCP_SERVER, dst_ip, str(port), str(timeout + 2)])
        try:
            self._await_line(server, "listening", f"TCP listener on {dst}", timeout=10)
            token = os.urandom(16).hex()
            client = _run([sys.executable, "-c", _TCP_CLIENT, dst_ip, str(port), str(timeout), token],
                          self.host(src), timeout=timeout + 10, check=False)
            return client.returncode == 0
        finally:
            _reap(server)

    def iperf_tcp(self, src: str, dst: str, dst_ip: str, seconds: int = 2, port: int = 5201) -> float:
        """TCP throughput in bit/s from ``src`` to ``dst_ip`` on host ``dst``, measured by iperf3."""
        return self.iperf_tcp_together([(src, dst, dst_ip, port)], seconds)[0]

    def iperf_tcp_together(self, runs: Iterable[tuple[str, str, str, int]], seconds: int = 2) -> list[float]:
        """TCP throughput in bit/s of several iperf3 runs at the same time, each (src, dst, dst_ip,
        port): servers on ``dst`` listen on ``port`` first, then every client starts at once."""
        runs = list(runs)
        limit = str(seconds + 20)
        servers, clients = [], []
        try:
            for _src, dst, dst_ip, port in runs:
                servers.append(self._spawn(dst, ["timeout", limit, "iperf3", "-s", "-1", "-B", dst_ip,
                                                 "-p", str(port)]))
            for (_src, dst, _ip, port), server in zip(runs, servers, strict=True):
                listening = wait_until(
                    lambda d=dst, p=port, s=server: self._listening(d, p) or s.poll() is not None, 10)
                if not listening or server.poll() is not None:
                    raise FabricNetError(f"iperf3 server on {dst} did not start: {_drain(server)}")
            for src, _dst, dst_ip, port in runs:
                clients.append(self._spawn(src, ["timeout", limit, "iperf3", "-c", dst_ip, "-p", str(port),
                                                 "-t", str(seconds), "-J"]))
            rates = []
            for (src, _dst, dst_ip, _port), client in zip(runs, clients, strict=True):
                out, err = client.communicate(timeout=seconds + 25)
                report = json.loads(out or "{}")
                # With -J iperf3 may exit 0 and report only an error.
                if client.returncode != 0 or "error" in report or "end" not in report:
                    raise FabricNetError(f"iperf3 {src} → {dst_ip}: {report.get('error', err.strip())}")
                rates.append(float(report["end"]["sum_received"]["bits_per_second"]))
            return rates
        finally:
            for proc in servers + clients:
                _reap(proc)

    def dump_flows(self) -> dict[str, str]:
        """``ovs-ofctl dump-flows`` text per switch of this network."""
        return {
            sw.name: _run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", sw.name]).stdout
            for sw in self.fabric.switches
        }

    def _listening(self, host: str, port: int) -> bool:
        out = _run(["ss", "-Hltn", f"sport = :{port}"], self.host(host), check=False).stdout
        return bool(out.strip())

    def _spawn(self, host: str, cmd: list[str]) -> subprocess.Popen[str]:
        """Start ``cmd`` in host's namespace as its own process group, remembered for ``stop()``."""
        node = self.host(host)
        proc = subprocess.Popen(["mnexec", "-a", str(node.pid), *cmd], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        self._procs.append(proc)
        return proc

    @staticmethod
    def _await_line(proc: subprocess.Popen[str], line: str, what: str, timeout: float) -> None:
        """Wait for ``proc`` to print ``line`` (its readiness signal) within ``timeout`` seconds."""
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        got = proc.stdout.readline().strip() if ready and proc.stdout else ""
        if got != line:
            raise FabricNetError(f"{what} not ready: {got!r} {_drain(proc)}")


class BackgroundPing:
    """A ping running in a host (see ``FabricNet.start_ping``)."""

    def __init__(self, proc: subprocess.Popen[str]):
        self.proc = proc

    def stop(self) -> PingReplies:
        """End the ping (it sums up on SIGINT) and return its replies."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        out, err = self.proc.communicate(timeout=10)
        sent = re.search(r"(\d+) packets transmitted", out)
        if sent is None:
            raise FabricNetError(f"ping gave no summary: {out}{err}")
        return PingReplies([float(m[1]) for m in re.finditer(r"time=([\d.]+) ms", out)], int(sent[1]))


def _reap(proc: subprocess.Popen[str]) -> None:
    """End a helper process group (started with its own session) and collect it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate(timeout=10)


def _drain(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        return "(still running)"
    _out, err = proc.communicate(timeout=5)
    return (err or "").strip()


def build_network(fabric: Fabric, controller_port: int | None, controller_ip: str = "127.0.0.1",
                  *, shape: bool = False, impaired: Iterable[str] = ()) -> FabricNet:
    """Build and start a Mininet network for ``fabric``; every declared port name and number is checked.

    With ``controller_port`` the switches connect to a remote OpenFlow controller; with None they have
    none (flows can be pushed with ovs-ofctl). ``shape=True`` limits each switch link of at most
    1 Gbit/s to its capacity with tc (htb, both directions). ``impaired`` names links (see
    ``find_link``) that run through an impairment element, which relays frames unchanged until told
    otherwise. On any failure everything built so far is removed before the error is raised.
    """
    links = tuple(dict.fromkeys(find_link(fabric, name) for name in impaired))
    _validate(fabric, links)
    _require_ovs()
    cleanup()
    _check_free(fabric)
    owner = _owner_token(os.getpid())
    assert owner is not None  # our own process is alive
    net = Mininet(topo=None, build=False, controller=None, autoSetMacs=False, autoStaticArp=False,
                  waitConnected=False)
    fnet = FabricNet(fabric, net, owner, links)
    try:
        fnet._build(controller_port, controller_ip, shape)
    except BaseException:
        fnet.stop()
        raise
    return fnet
