"""NSM's request in this forwarder's terms: the mechanism it takes, what to plumb, our path segment.

Request picks the first LOCAL/KERNEL mechanism preference (an empty cls counts as LOCAL; with no
preferences the connection's own mechanism is used, as a refresh may send it) and reads it into a
`KernelRequest` for `plumbing`. The mechanism parameters read are:

    name               interface name inside the namespace (default nsm-1)
    inodeURL           the namespace: file:///proc/<pid>/ns/net, inode://<dev>/<ino>, a path or a name
    netnsInode         the namespace's inode number, used when inodeURL is absent
    ryu-nsm.io/role    "client" (default) or "endpoint": an endpoint's interface is plumbed the same way
    ryu-nsm.io/endpoint  an endpoint's name (role endpoint); falls back to the connection's
                       network_service_endpoint_name. It is recorded in the OVS Interface's
                       external_ids as `ryu-nsm-endpoint` next to plumbing's marks.

The context is read from the side of the connection the interface is on, as NSM does: a client gets
ip_context.src_ip_addrs, dst_routes and ethernet_context.src_mac; an endpoint gets dst_ip_addrs,
src_routes and dst_mac. Both get ip_neighbors and the MTU. The answer's mechanism carries `name` and
`ryu-nsm.io/attachment` = "<bridge>/<host port name>".

Path: as NSM's hops do, the segment at path.index (or the one after it) that carries our name is
ours and is reused with its id; otherwise a new one is appended and the index advanced.

Pure apart from reading the nsfs device number for a `netnsInode`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import grpc

from nsm_api import networkservice_pb2
from nsm_api.connection_pb2 import Connection, Mechanism
from nsm_api.errors import RequestError
from nsm_api.paths import append_segment
from ovs_forwarder.kernel_request import ROLES, KernelRequest, PlumbingError, validate
from ovs_forwarder.plumbing import Plumbed

LOCAL, KERNEL = "LOCAL", "KERNEL"
DEFAULT_IFNAME = "nsm-1"
IFNAME_PARAM = "name"
INODE_URL_PARAM = "inodeURL"
NETNS_INODE_PARAM = "netnsInode"
ROLE_PARAM = "ryu-nsm.io/role"
ENDPOINT_PARAM = "ryu-nsm.io/endpoint"
ATTACHMENT_PARAM = "ryu-nsm.io/attachment"

_STATUS_BY_KIND = {
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "not-found": grpc.StatusCode.NOT_FOUND,
    "exists": grpc.StatusCode.ALREADY_EXISTS,
    "internal": grpc.StatusCode.INTERNAL,
}


def request_error(exc: PlumbingError) -> RequestError:
    """The gRPC error that tells the caller why plumbing refused."""
    return RequestError(_STATUS_BY_KIND[exc.kind], exc.message)


@dataclass(frozen=True)
class Translation:
    """What a NetworkServiceRequest asks of this forwarder: the chosen mechanism and what to plumb."""

    mechanism: Mechanism
    kernel: KernelRequest
    endpoint: str | None


def select_mechanism(request: networkservice_pb2.NetworkServiceRequest) -> Mechanism:
    """The first LOCAL (or cls-less) KERNEL preference; RequestError(INVALID_ARGUMENT) if none.

    Without preferences the connection's own mechanism is considered (a refresh may carry only that).
    """
    offered = list(request.mechanism_preferences)
    if not offered and request.connection.HasField("mechanism"):
        offered = [request.connection.mechanism]
    for mechanism in offered:
        if mechanism.cls.upper() in (LOCAL, "") and mechanism.type.upper() == KERNEL:
            return mechanism
    if not offered:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"no mechanism preferences: this forwarder offers {LOCAL}/{KERNEL}")
    names = ", ".join(f"{m.cls or '?'}/{m.type or '?'}" for m in offered)
    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"unsupported mechanism(s) {names}: this forwarder offers {LOCAL}/{KERNEL}")


def translate(request: networkservice_pb2.NetworkServiceRequest, *, bridge: str, owner: str,
              expires: float | None = None) -> Translation:
    """Read `request` into a validated KernelRequest (see the module docstring for the fields read).

    Pure apart from reading the nsfs device number for a `netnsInode`; RequestError on bad input.
    """
    conn = request.connection
    if not conn.id:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "connection.id is empty")
    segments = len(conn.path.path_segments)
    if conn.path.index >= max(segments, 1):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"path.index {conn.path.index} is past the path's {segments} segment(s)")
    mechanism = select_mechanism(request)
    params = mechanism.parameters
    role = params.get(ROLE_PARAM) or "client"
    if role not in ROLES:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"mechanism parameter {ROLE_PARAM}={role!r} is not one of {', '.join(ROLES)}")
    netns = params.get(INODE_URL_PARAM) or _inode_url(params.get(NETNS_INODE_PARAM, ""))
    if not netns:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"the KERNEL mechanism names no network namespace: set parameter "
                           f"{INODE_URL_PARAM} (or {NETNS_INODE_PARAM})")
    endpoint = None
    if role == "endpoint":
        endpoint = params.get(ENDPOINT_PARAM) or conn.network_service_endpoint_name
        if not endpoint:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"role endpoint needs the endpoint's name: set parameter {ENDPOINT_PARAM} "
                               f"or connection.network_service_endpoint_name")
    ctx, ip = conn.context, conn.context.ip_context
    client = role == "client"
    addresses = ip.src_ip_addrs if client else ip.dst_ip_addrs
    routes = ip.dst_routes if client else ip.src_routes
    mac = ctx.ethernet_context.src_mac if client else ctx.ethernet_context.dst_mac
    kernel = KernelRequest(
        connection_id=conn.id, netns=netns, bridge=bridge, owner=owner,
        ifname=params.get(IFNAME_PARAM) or DEFAULT_IFNAME, mtu=ctx.MTU, mac=mac,
        addresses=list(addresses), routes=[(r.prefix, r.nextHop) for r in routes],
        neighbours=[(n.ip, n.hardware_address) for n in ip.ip_neighbors],
        role=role, service=conn.network_service, labels=dict(conn.labels), expires=expires,
        endpoint=endpoint)
    try:
        validate(kernel)
    except PlumbingError as exc:
        raise request_error(exc) from None
    chosen = Mechanism()
    chosen.CopyFrom(mechanism)
    chosen.cls = LOCAL
    chosen.type = KERNEL
    return Translation(chosen, kernel, endpoint)


def _inode_url(inode: str) -> str:
    """inode://<dev>/<ino> for NSM's bare `netnsInode` number (every netns lives on the one nsfs)."""
    if not inode:
        return ""
    if not inode.isdigit():
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"mechanism parameter {NETNS_INODE_PARAM}={inode!r} is not an inode number")
    return f"inode://{os.stat('/proc/self/ns/net').st_dev}/{int(inode)}"


def stamp_path(connection: Connection, name: str, token: str, lifetime: float, now: float) -> Connection:
    """A copy of `connection` whose path carries our segment with `token`, expiring `lifetime` after `now`.

    As NSM's hops do: the segment at path.index, or else the one after it, is ours when it carries
    `name`, and keeps its id; otherwise a new segment goes after path.index. The index ends on ours.
    """
    path = connection.path
    segments = path.path_segments
    ours = next((i for i in (path.index, path.index + 1) if i < len(segments) and segments[i].name == name),
                None)
    base = Connection()
    base.CopyFrom(connection)
    if ours is not None:
        kept = segments[ours].id
        if ours == 0:
            base.ClearField("path")
        else:
            base.path.index = ours - 1
    stamped = append_segment(base, name, token, lifetime, now)
    if ours is not None:
        stamped.path.path_segments[stamped.path.index].id = kept
    return stamped


def answered_mechanism(chosen: Mechanism, done: Plumbed) -> Mechanism:
    """The mechanism of the answer: `chosen` with the interface's name and where it is attached."""
    answered = Mechanism()
    answered.CopyFrom(chosen)
    answered.parameters[IFNAME_PARAM] = done.ifname
    answered.parameters[ATTACHMENT_PARAM] = f"{done.bridge}/{done.host_ifname}"
    return answered

