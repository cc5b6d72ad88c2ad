"""What to plumb for one connection (`KernelRequest`), checked without touching the system, and
the names and OVSDB marks its interface gets: the contract with the controller's OVSDB source."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import os
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

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

_ALIAS_PREFIX = "ryu-nsm "
_IFNAME = re.compile(r"[^\s/:]{1,15}")
_NETNS_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")
_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
_INODE_URL = re.compile(r"inode://(\d+)/(\d+)")


class PlumbingError(Exception):
    """A request could not be plumbed; `kind` is one of ERROR_KINDS (the gRPC layer maps it)."""

    def __init__(self, kind: str, message: str) -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown PlumbingError kind {kind!r}")
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


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


def host_alias(connection_id: str) -> str:
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
    parse_netns(req.netns)


def _check_mac(mac: object, what: str) -> None:
    if not isinstance(mac, str) or not _MAC.fullmatch(mac):
        raise PlumbingError("invalid", f"{what} {mac!r} is not of the form xx:xx:xx:xx:xx:xx")


def parse_netns(netns: str) -> str | tuple[int, int]:
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
