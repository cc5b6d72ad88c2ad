"""KERNEL mechanism plumbing: a veth pair from a client's network namespace into an OVS bridge.

`plumb` creates the pair with the peer born in the target namespace under its final name (moving
a link between namespaces costs ~20 ms of kernel time, creating it there ~1 ms), turns tx checksum
offload off on both ends (the userspace datapath does not fill in checksums), configures the peer
and adds the host end to the bridge through OVSDB with the `ryu-nsm-*` external_ids that the
controller watches, in one transaction. Every failure undoes what was made.

It returns once that transaction is committed, without waiting for ovs-vswitchd to attach the port:
ovs-vswitchd goes over every port of every bridge on each database or link change (0.1-0.3 s beside
500 ports on this machine), and a new veth costs two such passes, one for the link and one for the
port. Waiting would serialise a caller's requests on those passes; not waiting lets one pass take
many ports. The port's ofport is None until attached; ovs-vswitchd refusing it (ofport -1, an
error) makes `is_plumbed` false, so a refresh plumbs it anew.

Namespaces and netlink sockets come from `netns`; what to plumb and its marks from `kernel_request`;
what is found at start from `discovery`.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import ipaddress
import logging
import os
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ovs_forwarder.discovery import attach_refused
from ovs_forwarder.kernel_request import (
    CONNECTION_KEY,
    IFNAME_KEY,
    NETNS_KEY,
    ROLE_KEY,
    SERVICE_KEY,
    KernelRequest,
    PlumbingError,
    external_ids,
    host_alias,
    host_ifname,
    validate,
)
from ovs_forwarder.netns import find_link, inside_netns, open_netns, root_ipr
from ovs_forwarder.ovsdb import NoSuchBridge, Ovsdb, OvsdbError, PortExists, PortInfo

log = logging.getLogger(__name__)

_IFF_UP = 0x1
_IFF_PROMISC = 0x100
_NUD_PERMANENT = 0x80
_IFA_F_NODAD = 0x02
_RT_TABLE_MAIN = 254
_SIOCETHTOOL = 0x8946
_ETHTOOL_STXCSUM = 0x17  # the one-flag ioctl behind `ethtool -K <if> tx off`: every tx checksum feature
_IFREQ_SIZE = 40

_KIND_BY_ERRNO = {
    errno.EEXIST: "exists", errno.ENOTEMPTY: "exists", errno.EADDRINUSE: "exists",
    errno.ENOENT: "not-found", errno.ENODEV: "not-found", errno.ESRCH: "not-found",
    errno.EINVAL: "invalid", errno.ERANGE: "invalid", errno.ENETUNREACH: "invalid",
    errno.EADDRNOTAVAIL: "invalid", errno.EAFNOSUPPORT: "invalid", errno.EHOSTUNREACH: "invalid",
}


class IdLocks:
    """A lock per key (a connection id), kept only while someone holds or waits for it: different
    keys never wait for each other."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """Hold the lock of `key` for the body."""
        with self._guard:
            lock, users = self._locks.get(key, (None, 0))
            lock = lock or threading.Lock()
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                users = self._locks[key][1] - 1
                if users:
                    self._locks[key] = (lock, users)
                else:
                    del self._locks[key]

    def users(self, key: str) -> int:
        """How many hold or wait for the lock of `key`."""
        with self._guard:
            return self._locks.get(key, (None, 0))[1]


_plumbing = IdLocks()  # plumbing one connection id is serialised


@dataclass(frozen=True)
class Plumbed:
    """A plumbed connection: the host end's name and OpenFlow port (None until ovs-vswitchd attached
    it), the inside interface's name and MAC; `created` is False on a refresh that found everything
    in place."""

    connection_id: str
    bridge: str
    host_ifname: str
    ofport: int | None
    netns: str
    ifname: str
    mac: str
    created: bool


# ---- netlink helpers -------------------------------------------------------------------------


@contextmanager
def _doing(step: str) -> Iterator[None]:
    """Turn a failure of one step into a PlumbingError whose message names the step."""
    try:
        yield
    except PlumbingError:
        raise
    except NetlinkError as exc:
        kind = _KIND_BY_ERRNO.get(exc.code, "internal")
        raise PlumbingError(kind, f"{step}: {os.strerror(exc.code)}") from exc
    except NoSuchBridge as exc:
        raise PlumbingError("not-found", f"{step}: {exc}") from exc
    except PortExists as exc:
        raise PlumbingError("exists", f"{step}: {exc}") from exc
    except (OvsdbError, OSError) as exc:
        raise PlumbingError("internal", f"{step}: {exc}") from exc


def _tx_checksum_off(sock: socket.socket, ifname: str) -> None:
    """Turn off every tx-checksum feature of `ifname` in `sock`'s namespace, as `ethtool -K <if> tx off`."""
    value = ctypes.create_string_buffer(struct.pack("=II", _ETHTOOL_STXCSUM, 0))
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(value)).ljust(_IFREQ_SIZE, b"\0")
    fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, ifreq)


def _family(ip: ipaddress.IPv4Address | ipaddress.IPv6Address | ipaddress.IPv4Network
            | ipaddress.IPv6Network) -> int:
    return socket.AF_INET if ip.version == 4 else socket.AF_INET6


# ---- plumb / unplumb -------------------------------------------------------------------------


def plumb(req: KernelRequest, ovsdb: Ovsdb) -> Plumbed:
    """Make (or refresh) the kernel interface of `req`; PlumbingError leaves nothing behind.

    Same id, same netns and a correctly configured interface: nothing changes on the data plane
    (only changed labels/expiry/endpoint marks are written) and `created` is False. Same id with a
    different request: the old plumbing is removed and made anew.
    """
    validate(req)
    with _plumbing.hold(req.connection_id), open_netns(req.netns) as nsfd:
        if not ovsdb.has_bridge(req.bridge):
            raise PlumbingError("not-found", f"bridge {req.bridge} does not exist")
        mine = ovsdb.find(CONNECTION_KEY, req.connection_id)
        if mine:
            with _doing(f"checking the existing plumbing of {req.connection_id}"):
                mac = _configured_mac(req, mine, nsfd)
            if mac is not None:
                _refresh_marks(req, mine[0], ovsdb)
                return Plumbed(req.connection_id, req.bridge, mine[0].name, mine[0].ofport, req.netns,
                               req.ifname, mac, created=False)
            log.info("re-plumbing %s: its interface differs from the request", req.connection_id)
            _teardown(req.connection_id, ovsdb)
        return _create(req, nsfd, ovsdb)


def _create(req: KernelRequest, nsfd: int, ovsdb: Ovsdb) -> Plumbed:
    host = host_ifname(req.connection_id)
    if ovsdb.port(host) is not None:
        raise PlumbingError("exists", f"OVS port {host} already exists")
    with root_ipr() as ipr, inside_netns(nsfd) as (ns, ns_ioctl):
        host_made = port_added = False
        try:
            _add_veth(ipr, req, host, nsfd)
            host_made = True
            with _doing(f"marking host interface {host}"):
                ipr.link("set", ifname=host, ifalias=host_alias(req.connection_id))
            with _doing(f"turning tx checksum offload off on {host}"), \
                    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as root_ioctl:
                _tx_checksum_off(root_ioctl, host)
            with _doing(f"turning tx checksum offload off on {req.ifname} in netns {req.netns}"):
                _tx_checksum_off(ns_ioctl, req.ifname)
            with _doing(f"finding {req.ifname} in netns {req.netns}"):
                inside = ns.link("get", ifname=req.ifname)[0]
            index, mac = inside["index"], inside.get("IFLA_ADDRESS")
            _configure_inside(ns, index, req)
            # Every mark goes in with the port: one transaction, one reconfiguration of ovs-vswitchd.
            with _doing(f"adding {host} to bridge {req.bridge}"):
                ofport = ovsdb.add_port(req.bridge, host, external_ids(req), wait=False)
                port_added = True
        except BaseException as exc:
            _undo(ipr, ovsdb, req.bridge, host, host_made, port_added)
            if isinstance(exc, PlumbingError) or not isinstance(exc, Exception):
                raise
            raise PlumbingError("internal", f"plumbing {req.connection_id}: {exc!r}") from exc
    log.info("plumbed %s: %s (on %s) <-> %s in %s", req.connection_id, host, req.bridge, req.ifname,
             req.netns)
    return Plumbed(req.connection_id, req.bridge, host, ofport, req.netns, req.ifname, mac, created=True)


def _add_veth(ipr: IPRoute, req: KernelRequest, host: str, nsfd: int) -> None:
    """Create the pair: `host` up in our namespace, its peer `req.ifname` in the target one. A
    leftover host end of ours is replaced; any other clash is refused."""
    peer: dict[str, Any] = {"ifname": req.ifname, "net_ns_fd": nsfd}
    mtu = {} if req.mtu is None else {"mtu": req.mtu}
    peer.update(mtu)
    if req.mac is not None:
        peer["address"] = req.mac.lower()
    for attempt in range(2):
        try:
            # Promiscuous from the start: ovs-vswitchd turns it on when it attaches the port, and
            # that flag change would cost one more pass over every port.
            ipr.link("add", ifname=host, kind="veth", peer=peer, flags=_IFF_UP | _IFF_PROMISC,
                     change=_IFF_UP | _IFF_PROMISC, **mtu)
            break
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                kind, why = _KIND_BY_ERRNO.get(exc.code, "internal"), os.strerror(exc.code)
                raise PlumbingError(kind, f"creating veth pair {host}/{req.ifname}: {why}") from exc
            # Find out which name clashed: a clash inside is only known by elimination.
            with _doing(f"looking up host interface {host}"):
                leftover = find_link(ipr, host)
            if leftover is None:
                raise PlumbingError("exists", f"interface {req.ifname} already exists in netns {req.netns}") \
                    from exc
            if leftover.get("IFLA_IFALIAS") != host_alias(req.connection_id):
                raise PlumbingError("exists", f"host interface {host} exists and was not made for "
                                              f"connection {req.connection_id}") from exc
            if attempt:
                raise PlumbingError("exists", f"host interface {host} is back after removing it") from exc
            with _doing(f"removing leftover host interface {host}"):
                ipr.link("del", index=leftover["index"])


def _configure_inside(ns: IPRoute, index: int, req: KernelRequest) -> None:
    """Bring the interface up and give it its addresses, routes and neighbours."""
    with _doing(f"bringing {req.ifname} up in {req.netns}"):
        ns.link("set", index=index, state="up")
    for cidr in req.addresses:
        iface = ipaddress.ip_interface(cidr)
        # No duplicate address detection: the address is usable at once, like a static one.
        flags = _IFA_F_NODAD if iface.version == 6 else 0
        with _doing(f"adding address {cidr} to {req.ifname}"):
            ns.addr("add", index=index, family=_family(iface), address=str(iface.ip),
                    prefixlen=iface.network.prefixlen, flags=flags)
    # Routes without a nexthop first: they may be what makes a later nexthop reachable.
    for prefix, nexthop in sorted(req.routes, key=lambda r: r[1] is not None):
        net = ipaddress.ip_network(prefix, strict=False)
        gateway = {} if nexthop is None else {"gateway": str(ipaddress.ip_address(nexthop))}
        with _doing(f"adding route {prefix}" + (f" via {nexthop}" if nexthop else "")):
            ns.route("add", family=_family(net), dst=str(net), oif=index, **gateway)
    for ip, mac in req.neighbours:
        addr = ipaddress.ip_address(ip)
        with _doing(f"adding neighbour {ip} at {mac}"):
            ns.neigh("add", family=_family(addr), dst=str(addr), lladdr=mac.lower(), ifindex=index,
                     state=_NUD_PERMANENT)


def _undo(ipr: IPRoute, ovsdb: Ovsdb, bridge: str, host: str, host_made: bool, port_added: bool) -> None:
    """Remove what a failed plumb made; the peer goes with its host end, wherever it is."""
    if port_added:
        try:
            ovsdb.del_port(bridge, host)
        except OvsdbError:
            log.exception("could not remove OVS port %s while undoing a failed plumb", host)
    if host_made:
        try:
            ipr.link("del", ifname=host)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                log.exception("could not remove %s while undoing a failed plumb", host)


def _refresh_marks(req: KernelRequest, port: PortInfo, ovsdb: Ovsdb) -> None:
    """Write the external_ids that changed on a refresh (typically the expiry)."""
    changed = {k: v for k, v in external_ids(req).items() if port.external_ids.get(k) != v}
    if changed:
        with _doing(f"updating the marks of {port.name}"):
            ovsdb.update_external_ids(port.name, changed)


def unplumb(connection_id: str, ovsdb: Ovsdb) -> bool:
    """Remove the OVS port(s) and the veth of `connection_id`; True if anything was there."""
    with _plumbing.hold(connection_id):
        return _teardown(connection_id, ovsdb)


def _teardown(connection_id: str, ovsdb: Ovsdb) -> bool:
    removed = False
    for port in ovsdb.find(CONNECTION_KEY, connection_id):
        with _doing(f"removing OVS port {port.name} from {port.bridge}"):
            removed |= ovsdb.del_port(port.bridge, port.name)
    host = host_ifname(connection_id)
    with root_ipr() as ipr:
        link = find_link(ipr, host)
        # Never delete a link of that name that we did not make.
        if link is not None and link.get("IFLA_IFALIAS") == host_alias(connection_id):
            try:
                ipr.link("del", index=link["index"])
                removed = True
            except NetlinkError as exc:
                if exc.code != errno.ENODEV:
                    raise PlumbingError("internal", f"removing {host}: {os.strerror(exc.code)}") from exc
    if removed:
        log.info("unplumbed %s", connection_id)
    return removed


# ---- state checks ----------------------------------------------------------------------------


def is_plumbed(req: KernelRequest, ovsdb: Ovsdb) -> bool:
    """True if `req` is plumbed as asked: same id, bridge and netns, interface present and configured."""
    validate(req)
    mine = ovsdb.find(CONNECTION_KEY, req.connection_id)
    if not mine:
        return False
    try:
        with open_netns(req.netns) as nsfd:
            return _configured_mac(req, mine, nsfd) is not None
    except PlumbingError as exc:
        if exc.kind == "not-found":
            return False
        raise


def _configured_mac(req: KernelRequest, mine: list[PortInfo], nsfd: int) -> str | None:
    """The inside interface's MAC if the plumbing found for req.connection_id (its OVS ports `mine`)
    matches `req` exactly, else None."""
    host = host_ifname(req.connection_id)
    if len(mine) != 1:
        return None
    port = mine[0]
    marks = port.external_ids
    if (port.name != host or port.bridge != req.bridge or attach_refused(port)
            or marks.get(NETNS_KEY) != req.netns or marks.get(IFNAME_KEY) != req.ifname
            or marks.get(ROLE_KEY) != req.role or marks.get(SERVICE_KEY) != req.service):
        return None
    with root_ipr() as ipr, inside_netns(nsfd) as (ns, _):
        outside = find_link(ipr, host)
        inside = find_link(ns, req.ifname)
        if outside is None or inside is None:
            return None
        paired = outside.get("IFLA_LINK") == inside["index"] and inside.get("IFLA_LINK") == outside["index"]
        if outside.get("IFLA_IFALIAS") != host_alias(req.connection_id) or not paired:
            return None
        for link in (outside, inside):
            if not link["flags"] & _IFF_UP or (req.mtu is not None and link.get("IFLA_MTU") != req.mtu):
                return None
        mac = inside.get("IFLA_ADDRESS", "").lower()
        if req.mac is not None and mac != req.mac.lower():
            return None
        return mac if _inside_matches(ns, inside["index"], req) else None


def _inside_matches(ns: IPRoute, index: int, req: KernelRequest) -> bool:
    """Are all of req's addresses, routes and neighbours on interface `index`?

    Each dump names the interface in the request, so a strict-checking kernel sends only its
    records; the filters here keep that true should the kernel have ignored the request's filter.
    """
    addresses = {ipaddress.ip_interface(f"{a.get('IFA_LOCAL') or a.get('IFA_ADDRESS')}/{a['prefixlen']}")
                 for a in ns.addr("dump", index=index, dump_filter=lambda m: m["index"] == index)}
    if not {ipaddress.ip_interface(c) for c in req.addresses} <= addresses:
        return False
    routes = set()
    for family, anywhere in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        for r in ns.route("dump", family=family, table=_RT_TABLE_MAIN, oif=index,
                          dump_filter=lambda m: m.get("RTA_OIF") == index
                          and (m.get("RTA_TABLE") or m["table"]) == _RT_TABLE_MAIN):
            gateway = r.get("RTA_GATEWAY")
            routes.add((ipaddress.ip_network(f"{r.get('RTA_DST') or anywhere}/{r['dst_len']}"),
                        None if gateway is None else ipaddress.ip_address(gateway)))
    wanted = {(ipaddress.ip_network(p, strict=False), None if h is None else ipaddress.ip_address(h))
              for p, h in req.routes}
    if not wanted <= routes:
        return False
    neighbours = {(ipaddress.ip_address(n.get("NDA_DST")), (n.get("NDA_LLADDR") or "").lower())
                  for n in ns.neigh("dump", attrs=[("NDA_IFINDEX", index)],
                                    dump_filter=lambda m: m["ifindex"] == index)
                  if n.get("NDA_DST")}
    return {(ipaddress.ip_address(ip), mac.lower()) for ip, mac in req.neighbours} <= neighbours
