"""Mininet networks built from a ``Fabric``.

Switches are Open vSwitch bridges on the userspace (netdev) datapath, speaking OpenFlow 1.3 with
``fail_mode=secure``; every port gets the exact OpenFlow number and name that the fabric declares.
Hosts with role ``"function"`` become service functions, and a ``FabricNet`` sends traffic between
hosts, both from ``ryu_nsm.lab.mininet_traffic``.

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

import json
import logging
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mininet.link import Intf, TCIntf
from mininet.link import Link as MnLink
from mininet.net import Mininet
from mininet.node import Node, OVSSwitch, RemoteController

from ryu_nsm.core.fabric import Fabric, Link
from ryu_nsm.lab.impairment import Impairment, start_in_netns
from ryu_nsm.lab.mininet_commands import FabricNetError, run, wait_until
from ryu_nsm.lab.mininet_traffic import FabricTraffic, make_function

# Importing Mininet makes every logger created afterwards a MininetLogger at level OUTPUT (25) with a
# console handler of its own, which silences INFO of any module imported later in this process.
logging.setLoggerClass(logging.Logger)

OWNER_KEY = "ryu-nsm-owner"
IFNAMSIZ = 15  # longest Linux interface name
OFPP_MAX = 0xFFFFFF00

_LIVE: set[FabricNet] = set()


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


# --- OVSDB and links -------------------------------------------------------------------------------

def _vsctl_json(table: str, columns: str) -> list[dict[str, Any]]:
    """Rows of an OVSDB table as dicts (maps and sets decoded), via ``ovs-vsctl --format=json``."""
    out = run(["ovs-vsctl", "--timeout=10", "--format=json", f"--columns={columns}", "list", table])
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
    return json.loads(run(["ip", "-j", "-d", "link", "show"]).stdout)


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
            ports = run(["ovs-vsctl", "--timeout=10", "list-ports", row["name"]]).stdout.split()
            stale_ports.update(ports)
            run(["ovs-vsctl", "--timeout=10", "--if-exists", "del-br", row["name"]])
            removed.append(f"bridge {row['name']}")
    for link in _root_links():
        alias = link.get("ifalias", "")
        token = alias.removeprefix(f"{OWNER_KEY}:") if alias.startswith(f"{OWNER_KEY}:") else None
        if link["ifname"] in stale_ports or _is_stale(token, own):
            # Deleting one end of a veth removes its peer, which may already be gone.
            if run(["ip", "link", "del", link["ifname"]], check=False).returncode == 0:
                removed.append(f"interface {link['ifname']}")
    return removed


def dump_all_flows() -> str:
    """``ovs-ofctl dump-flows`` of every bridge this process owns, as one text (for failure reports)."""
    mine = _owner_token(os.getpid())
    parts = []
    for row in sorted(_vsctl_json("Bridge", "name,external_ids"), key=lambda r: r["name"]):
        if row["external_ids"].get(OWNER_KEY) == mine:
            out = run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", row["name"]], check=False)
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
            run(["sh", "-ec", script], self.node)
        else:
            run(["ip", "link", "set", "dev", self.name, "alias", f"{OWNER_KEY}:{self.node.owner}"])
            Path(f"/proc/sys/net/ipv6/conf/{self.name}/disable_ipv6").write_text("1\n")
            run(["ethtool", "-K", self.name, "tx", "off"])
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
    proc = run(["ovs-vsctl", "--timeout=5", "show"], check=False)
    if proc.returncode != 0:
        raise FabricNetError(f"Open vSwitch is not running (ovs-vsctl show: {proc.stderr.strip()}); "
                             "run scripts/setup")


# --- the network -----------------------------------------------------------------------------------

class FabricNet(FabricTraffic):
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

    def _build(self, controller_port: int | None, controller_ip: str, shape: bool,
               controller_protocol: str = "tcp") -> None:
        net = self.net
        if controller_port is not None:
            net.addController(_SilentRemoteController("c0", ip=controller_ip, port=controller_port,
                                                      protocol=controller_protocol))
        for sw in self.fabric.switches:
            net.addSwitch(sw.name, cls=_OwnedOVSSwitch, owner=self.owner, datapath="user",
                          protocols="OpenFlow13", failMode="secure", dpid=f"{sw.dpid:016x}")
        for host in self.fabric.hosts:
            node = net.addHost(host.name, ip=None)
            # Interfaces created later inherit "default", so no IPv6 frame ever leaves a host.
            run(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
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
            run(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
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
                make_function(self.host(host.name), host)
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
            run(["ip", "link", "set", "dev", f"{switch}-eth{port}", "up" if up else "down"])

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
        self._reap_helpers()
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
            run(["ovs-vsctl", "--timeout=10", "--if-exists", "del-br", sw.name], check=False)
        root = {link["ifname"] for link in _root_links()}
        for _, name, _ in _switch_side_names(self.fabric):
            if name in root:
                run(["ip", "link", "del", name], check=False)
        if errors:
            raise FabricNetError("; ".join(errors))

    def dump_flows(self) -> dict[str, str]:
        """``ovs-ofctl dump-flows`` text per switch of this network."""
        return {
            sw.name: run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", sw.name]).stdout
            for sw in self.fabric.switches
        }

def build_network(fabric: Fabric, controller_port: int | None, controller_ip: str = "127.0.0.1",
                  *, shape: bool = False, impaired: Iterable[str] = (),
                  controller_protocol: str = "tcp") -> FabricNet:
    """Build and start a Mininet network for ``fabric``; every declared port name and number is checked.

    With ``controller_port`` the switches connect to a remote OpenFlow controller; with None they have
    none (flows can be pushed with ovs-ofctl); ``controller_protocol`` "ssl" makes them Open vSwitch
    ``ssl:`` targets (the caller sets Open vSwitch's certificate with ``set-ssl``). ``shape=True``
    limits each switch link of at most 1 Gbit/s to its capacity with tc (htb, both directions).
    ``impaired`` names links (see ``find_link``) that run through an impairment element, which relays
    frames unchanged until told otherwise. On any failure everything built so far is removed before the
    error is raised.
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
        fnet._build(controller_port, controller_ip, shape, controller_protocol)
    except BaseException:
        fnet.stop()
        raise
    return fnet
