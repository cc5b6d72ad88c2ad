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

Netlink goes through pyroute2. Sockets inside another namespace are opened by a short-lived thread
that enters the namespace with setns(2) (network namespaces are per thread), so nothing forks; they
are closed after each call, as an open socket would keep a deleted namespace alive. Sockets in the
forwarder's own namespace are pooled. Reads of addresses, routes and neighbours ask the kernel to
filter by interface (strict checking), so checking one interface does not dump the whole namespace.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import fcntl
import hashlib
import ipaddress
import json
import logging
import math
import os
import re
import socket
import struct
import threading
import types
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ovs_forwarder.ovsdb import NoSuchBridge, Ovsdb, OvsdbError, PortExists, PortInfo

log = logging.getLogger(__name__)

# external_ids keys on every OVS Interface the forwarder makes (the contract with the controller).
CONNECTION_KEY = "ryu-nsm-connection"
ROLE_KEY = "ryu-nsm-role"
SERVICE_KEY = "ryu-nsm-service"
LABELS_KEY = "ryu-nsm-labels"
NETNS_KEY = "ryu-nsm-netns"
OWNER_KEY = "ryu-nsm-owner"
EXPIRES_KEY = "ryu-nsm-expires"
IFNAME_KEY = "ryu-nsm-ifname"  # additive to the contract: the interface's name inside the netns
ENDPOINT_KEY = "ryu-nsm-endpoint"  # additive to the contract: an endpoint's name

ROLES = ("client", "endpoint")
ERROR_KINDS = ("invalid", "not-found", "exists", "internal")
NETNS_RUN_DIR = "/var/run/netns"

_CLONE_NEWNET = 0x40000000
_NS_GET_NSTYPE = 0xB703  # ioctl on a namespace file: which kind of namespace it is
_IFF_UP = 0x1
_IFF_PROMISC = 0x100
_NUD_PERMANENT = 0x80
_IFA_F_NODAD = 0x02
_RT_TABLE_MAIN = 254
_ALIAS_PREFIX = "ryu-nsm "
_SIOCETHTOOL = 0x8946
_ETHTOOL_STXCSUM = 0x17  # the one-flag ioctl behind `ethtool -K <if> tx off`: every tx checksum feature
_IFREQ_SIZE = 40
_ROOT_POOL_SIZE = 16  # idle netlink sockets kept for reuse; more are closed after use

_IFNAME = re.compile(r"[^\s/:]{1,15}")
_NETNS_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")
_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
_INODE_URL = re.compile(r"inode://(\d+)/(\d+)")

_KIND_BY_ERRNO = {
    errno.EEXIST: "exists", errno.ENOTEMPTY: "exists", errno.EADDRINUSE: "exists",
    errno.ENOENT: "not-found", errno.ENODEV: "not-found", errno.ESRCH: "not-found",
    errno.EINVAL: "invalid", errno.ERANGE: "invalid", errno.ENETUNREACH: "invalid",
    errno.EADDRNOTAVAIL: "invalid", errno.EAFNOSUPPORT: "invalid", errno.EHOSTUNREACH: "invalid",
}

_libc = ctypes.CDLL(None, use_errno=True)
_root_pool: list[IPRoute] = []
_root_pool_lock = threading.Lock()


class PlumbingError(Exception):
    """A request could not be plumbed; `kind` is one of ERROR_KINDS (the gRPC layer maps it)."""

    def __init__(self, kind: str, message: str) -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown PlumbingError kind {kind!r}")
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


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


@dataclass(frozen=True, kw_only=True)
class KernelRequest:
    """What to plumb for one connection: a kernel interface in `netns`, wired to `bridge`.

    `netns` is a path (/proc/<pid>/ns/net, /var/run/netns/<name>), a URL (file:///proc/<pid>/ns/net,
    inode://<dev>/<ino>) or a plain netns name. `mtu` None or 0 and `mac` None or "" keep the kernel's
    choice. `routes` are (prefix, nexthop or None); `neighbours` are (ip, mac). `endpoint`, for role
    endpoint, is recorded as the `ryu-nsm-endpoint` mark.
    """

    connection_id: str
    netns: str
    bridge: str
    owner: str
    ifname: str = "nsm-1"
    mtu: int | None = None
    mac: str | None = None
    addresses: Sequence[str] = ()
    routes: Sequence[tuple[str, str | None]] = ()
    neighbours: Sequence[tuple[str, str]] = ()
    role: str = "client"
    service: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    expires: float | None = None
    endpoint: str | None = None

    def __post_init__(self) -> None:
        # Freeze the containers, and read protobuf's "unset" (0, "") as None.
        set_ = object.__setattr__
        set_(self, "addresses", tuple(self.addresses))
        set_(self, "routes", tuple((r[0], r[1] or None) if len(r) == 2 else tuple(r) for r in self.routes))
        set_(self, "neighbours", tuple(tuple(n) for n in self.neighbours))
        set_(self, "labels", types.MappingProxyType(dict(self.labels)))
        set_(self, "mtu", self.mtu or None)
        set_(self, "mac", self.mac or None)
        set_(self, "endpoint", self.endpoint or None)


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


@dataclass(frozen=True)
class Existing:
    """A connection found in OVSDB at start-up; `reason` says why it is an orphan (None: alive)."""

    connection_id: str
    bridge: str
    host_ifname: str
    ofport: int | None
    netns: str
    ifname: str
    role: str
    service: str
    labels: Mapping[str, str]
    owner: str
    expires: float | None
    reason: str | None = None


@dataclass(frozen=True)
class Discovery:
    """What `discover` found: connections still wired, and orphans whose veth or netns is gone."""

    live: list[Existing]
    orphans: list[Existing]


# ---- names and marks -------------------------------------------------------------------------


def host_ifname(connection_id: str) -> str:
    """The host end's interface (and OVS port) name: 'nsm' + 10 hex of the id's sha256 (13 chars)."""
    return "nsm" + _digest(connection_id)[:10]


def external_ids(req: KernelRequest) -> dict[str, str]:
    """The OVS Interface external_ids that mark `req`'s host end for the controller."""
    marks = {
        CONNECTION_KEY: req.connection_id,
        ROLE_KEY: req.role,
        SERVICE_KEY: req.service,
        LABELS_KEY: json.dumps(dict(req.labels), sort_keys=True, separators=(",", ":")),
        NETNS_KEY: req.netns,
        OWNER_KEY: req.owner,
        IFNAME_KEY: req.ifname,
    }
    if req.expires is not None:
        marks[EXPIRES_KEY] = str(int(req.expires))
    if req.endpoint is not None:
        marks[ENDPOINT_KEY] = req.endpoint
    return marks


def _digest(connection_id: str) -> str:
    return hashlib.sha256(connection_id.encode()).hexdigest()


def _alias(connection_id: str) -> str:
    """The ifalias the host end carries, so a leftover of ours is told from someone else's link."""
    return _ALIAS_PREFIX + _digest(connection_id)


# ---- validation ------------------------------------------------------------------------------


def validate(req: KernelRequest) -> None:
    """Check `req` without touching the system; PlumbingError('invalid') names the first problem."""

    def bad(message: str) -> PlumbingError:
        return PlumbingError("invalid", message)

    for name in ("connection_id", "netns", "bridge", "owner"):
        value = getattr(req, name)
        if not isinstance(value, str) or not value or not value.isprintable():
            raise bad(f"{name} must be a non-empty printable string, got {value!r}")
    if not _IFNAME.fullmatch(req.ifname) or req.ifname in (".", ".."):
        raise bad(f"interface name {req.ifname!r} is not a Linux name (1-15 chars, no '/', ':' or space)")
    if req.mtu is not None and (isinstance(req.mtu, bool) or not isinstance(req.mtu, int)
                                or not 68 <= req.mtu <= 65535):
        raise bad(f"MTU {req.mtu!r} is outside 68..65535")
    if req.mac is not None:
        _check_mac(req.mac, "MAC address")
        if int(req.mac[:2], 16) & 1 or req.mac.replace(":", "").strip("0") == "":
            raise bad(f"MAC address {req.mac} is not a unicast address")
    seen = set()
    for cidr in req.addresses:
        if not isinstance(cidr, str) or "/" not in cidr:
            raise bad(f"address {cidr!r} must be in CIDR form (address/prefix)")
        try:
            iface = ipaddress.ip_interface(cidr)
        except ValueError as exc:
            raise bad(f"address {cidr!r}: {exc}") from None
        if iface in seen:
            raise bad(f"address {cidr} is listed twice")
        seen.add(iface)
    for route in req.routes:
        if len(route) != 2:
            raise bad(f"route {route!r} must be (prefix, nexthop or None)")
        prefix, nexthop = route
        try:
            net = ipaddress.ip_network(prefix, strict=False)
            hop = None if nexthop is None else ipaddress.ip_address(nexthop)
        except (ValueError, TypeError) as exc:
            raise bad(f"route {prefix!r} via {nexthop!r}: {exc}") from None
        if hop is not None and hop.version != net.version:
            raise bad(f"route {prefix} has a nexthop {nexthop} of another address family")
    for neighbour in req.neighbours:
        if len(neighbour) != 2:
            raise bad(f"neighbour {neighbour!r} must be (ip, mac)")
        try:
            ipaddress.ip_address(neighbour[0])
        except ValueError as exc:
            raise bad(f"neighbour {neighbour[0]!r}: {exc}") from None
        _check_mac(neighbour[1], f"neighbour {neighbour[0]} MAC")
    if req.role not in ROLES:
        raise bad(f"role {req.role!r} is not one of {', '.join(ROLES)}")
    if not isinstance(req.service, str):
        raise bad(f"service must be a string, got {req.service!r}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in req.labels.items()):
        raise bad("labels must map strings to strings")
    if req.expires is not None and (isinstance(req.expires, bool) or not isinstance(req.expires, int | float)
                                    or not math.isfinite(req.expires) or req.expires < 0):
        raise bad(f"expires {req.expires!r} is not a unix time")
    if req.endpoint is not None and (not isinstance(req.endpoint, str) or not req.endpoint.isprintable()):
        raise bad(f"endpoint must be a printable string, got {req.endpoint!r}")
    _parse_netns(req.netns)


def _check_mac(mac: object, what: str) -> None:
    if not isinstance(mac, str) or not _MAC.fullmatch(mac):
        raise PlumbingError("invalid", f"{what} {mac!r} is not of the form xx:xx:xx:xx:xx:xx")


# ---- namespaces ------------------------------------------------------------------------------


def netns_path(netns: str) -> str:
    """The file that names the network namespace `netns` (see KernelRequest for the accepted forms)."""
    where = _parse_netns(netns)
    return where if isinstance(where, str) else _path_of_inode(netns, where)


def _parse_netns(netns: str) -> str | tuple[int, int]:
    """The path that `netns` names, or the (device, inode) of an inode:// URL; no system access."""
    if netns.startswith("file://"):
        parts = urlsplit(netns)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise PlumbingError("invalid", f"namespace URL {netns!r} is not a local file URL")
        return unquote(parts.path)
    if netns.startswith("inode://"):
        match = _INODE_URL.fullmatch(netns)
        if not match:
            raise PlumbingError("invalid", f"namespace URL {netns!r} is not inode://<dev>/<ino>")
        return int(match.group(1)), int(match.group(2))
    if netns.startswith("/"):
        return netns
    if _NETNS_NAME.fullmatch(netns) and netns not in (".", ".."):
        return os.path.join(NETNS_RUN_DIR, netns)
    raise PlumbingError("invalid", f"{netns!r} is neither a netns name, a path nor a file:// or inode:// URL")


def _path_of_inode(url: str, wanted: tuple[int, int]) -> str:
    """Find a file for the namespace with (device, inode) `wanted`: a named netns or a process's ns/net."""
    named = [os.path.join(NETNS_RUN_DIR, n) for n in _listdir(NETNS_RUN_DIR)]
    procs = [f"/proc/{p}/ns/net" for p in _listdir("/proc") if p.isdigit()]
    for path in named + procs:
        try:
            st = os.stat(path)
        except OSError:
            continue  # the process ended or the name went away while we looked
        if (st.st_dev, st.st_ino) == wanted:
            return path
    raise PlumbingError("not-found", f"no network namespace has inode {url}")


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


@contextmanager
def _netns(netns: str) -> Iterator[int]:
    """Open the namespace `netns` and yield its fd; PlumbingError if it is missing or not a netns."""
    path = netns_path(netns)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError, ProcessLookupError):
        raise PlumbingError("not-found", f"network namespace {netns} does not exist ({path})") from None
    except OSError as exc:
        raise PlumbingError("internal", f"cannot open network namespace {netns} ({path}): {exc}") from None
    try:
        try:
            kind = fcntl.ioctl(fd, _NS_GET_NSTYPE)
        except OSError:
            kind = None
        if kind != _CLONE_NEWNET:
            raise PlumbingError("invalid", f"{netns} ({path}) is not a network namespace")
        yield fd
    finally:
        os.close(fd)


@contextmanager
def _inside(nsfd: int) -> Iterator[tuple[IPRoute, socket.socket]]:
    """A netlink socket (strict checking) and an ioctl socket that live in the namespace `nsfd`."""
    made: list[socket.socket] = []
    failed: list[OSError] = []

    def enter() -> None:
        # This thread alone moves into the namespace; the sockets stay there after it exits.
        if _libc.setns(nsfd, _CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            failed.append(OSError(code, f"setns: {os.strerror(code)}"))
            return
        try:
            made.append(socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE))
            made.append(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        except OSError as exc:
            failed.append(exc)

    thread = threading.Thread(target=enter, name="netns-enter")
    thread.start()
    thread.join()
    if failed:
        for sock in made:
            sock.close()
        raise PlumbingError("internal", f"cannot enter network namespace: {failed[0]}")
    netlink, ioctl_sock = made
    try:
        ipr = IPRoute(fileno=netlink.fileno(), groups=0, strict_check=True)
    except BaseException:
        netlink.close()
        ioctl_sock.close()
        raise
    netlink.detach()  # the IPRoute owns the descriptor now
    try:
        yield ipr, ioctl_sock
    finally:
        ipr.close()
        ioctl_sock.close()


@contextmanager
def _root_ipr() -> Iterator[IPRoute]:
    """A netlink socket (strict checking) in the forwarder's own namespace, from a pool: opening one
    costs more than most requests on it."""
    with _root_pool_lock:
        ipr = _root_pool.pop() if _root_pool else None
    if ipr is None:
        ipr = IPRoute(groups=0, strict_check=True)
    reusable = False
    try:
        yield ipr
        reusable = True
    except Exception:
        reusable = True  # a refused request leaves the socket in order; an interrupt may not
        raise
    finally:
        with _root_pool_lock:
            if reusable and len(_root_pool) < _ROOT_POOL_SIZE:
                _root_pool.append(ipr)
                ipr = None
        if ipr is not None:
            ipr.close()


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


def _link(ipr: IPRoute, ifname: str) -> Any:
    """The link named `ifname`, or None (a kernel lookup by name, not a dump of every link)."""
    try:
        links = ipr.link("get", ifname=ifname)
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise
    return links[0] if links else None


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
    with _plumbing.hold(req.connection_id), _netns(req.netns) as nsfd:
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
    with _root_ipr() as ipr, _inside(nsfd) as (ns, ns_ioctl):
        host_made = port_added = False
        try:
            _add_veth(ipr, req, host, nsfd)
            host_made = True
            with _doing(f"marking host interface {host}"):
                ipr.link("set", ifname=host, ifalias=_alias(req.connection_id))
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
                leftover = _link(ipr, host)
            if leftover is None:
                raise PlumbingError("exists", f"interface {req.ifname} already exists in netns {req.netns}") \
                    from exc
            if leftover.get("IFLA_IFALIAS") != _alias(req.connection_id):
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
    with _root_ipr() as ipr:
        link = _link(ipr, host)
        # Never delete a link of that name that we did not make.
        if link is not None and link.get("IFLA_IFALIAS") == _alias(connection_id):
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
        with _netns(req.netns) as nsfd:
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
    with _root_ipr() as ipr, _inside(nsfd) as (ns, _):
        outside = _link(ipr, host)
        inside = _link(ns, req.ifname)
        if outside is None or inside is None:
            return None
        paired = outside.get("IFLA_LINK") == inside["index"] and inside.get("IFLA_LINK") == outside["index"]
        if outside.get("IFLA_IFALIAS") != _alias(req.connection_id) or not paired:
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


def attach_refused(port: PortInfo) -> bool:
    """Did ovs-vswitchd fail to attach `port`? (No ofport yet is no failure: it is on its way.)"""
    return bool(port.error) or (port.ofport is not None and port.ofport < 0)


def discover(ovsdb: Ovsdb, owner: str) -> Discovery:
    """Rebuild `owner`'s connections from OVSDB marks, checking each veth and its netns still exist.

    A connection is live when its host veth is the one we made, its peer sits in the recorded netns
    under the recorded name, and ovs-vswitchd did not refuse the port. Anything else is an orphan, with the
    reason; `unplumb(orphan.connection_id, ovsdb)` clears it. Each namespace is entered once.
    """
    by_netns: dict[str, list[tuple[PortInfo, Existing]]] = {}
    for port in ovsdb.find(OWNER_KEY, owner):
        connection_id = port.external_ids.get(CONNECTION_KEY)
        if connection_id:
            found = _existing(port, connection_id)
            by_netns.setdefault(found.netns, []).append((port, found))
    live, orphans = [], []
    with _root_ipr() as ipr:
        for netns, ports in by_netns.items():
            for found, reason in _orphan_reasons(ipr, netns, ports):
                if reason is None:
                    live.append(found)
                else:
                    orphans.append(dataclasses.replace(found, reason=reason))
    return Discovery(live, orphans)


def _existing(port: PortInfo, connection_id: str) -> Existing:
    marks = port.external_ids
    try:
        labels = json.loads(marks.get(LABELS_KEY, "{}"))
    except ValueError:
        labels = {}
    try:
        expires = float(marks[EXPIRES_KEY]) if EXPIRES_KEY in marks else None
    except ValueError:
        expires = None
    return Existing(connection_id=connection_id, bridge=port.bridge, host_ifname=port.name,
                    ofport=port.ofport, netns=marks.get(NETNS_KEY, ""), ifname=marks.get(IFNAME_KEY, ""),
                    role=marks.get(ROLE_KEY, ""), service=marks.get(SERVICE_KEY, ""),
                    labels=types.MappingProxyType(labels if isinstance(labels, dict) else {}),
                    owner=marks.get(OWNER_KEY, ""), expires=expires)


def _orphan_reasons(ipr: IPRoute, netns: str, ports: list[tuple[PortInfo, Existing]],
                    ) -> Iterator[tuple[Existing, str | None]]:
    """For each connection recorded in `netns`: why it no longer works, or None if it still does."""
    outsides = {}
    for port, found in ports:
        outside = _link(ipr, port.name)
        if outside is None:
            yield found, f"host veth {port.name} is gone"
        elif outside.get("IFLA_IFALIAS") != _alias(found.connection_id):
            yield found, f"interface {port.name} is not the veth made for this connection"
        elif outside.get("IFLA_LINK_NETNSID") is None:
            yield found, f"the peer of {port.name} is not in another network namespace"
        else:
            outsides[port.name] = outside
    if not outsides:
        return
    try:
        with _netns(netns) as nsfd, _inside(nsfd) as (ns, _):
            insides = {port.name: _link(ns, found.ifname) if found.ifname else None
                       for port, found in ports if port.name in outsides}
    except PlumbingError as exc:
        for port, found in ports:
            if port.name in outsides:
                yield found, f"network namespace {netns} cannot be entered ({exc.message})"
        return
    for port, found in ports:
        if port.name not in outsides:
            continue
        inside = insides[port.name]
        if inside is None or inside.get("IFLA_LINK") != outsides[port.name]["index"]:
            yield found, f"the peer of {port.name} is not {found.ifname!r} in netns {netns}"
        elif attach_refused(port):
            yield found, f"ovs-vswitchd refused OVS port {port.name} ({port.error or 'ofport -1'})"
        else:
            yield found, None
