"""What the forwarder finds in OVSDB at start: its connections still wired, and orphans.

A connection is live when its host veth is the one we made, its peer sits in the recorded netns
under the recorded name, and ovs-vswitchd did not refuse the port; anything else is an orphan.
"""

from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from pyroute2 import IPRoute

from ovs_forwarder.kernel_request import (
    CONNECTION_KEY,
    EXPIRES_KEY,
    IFNAME_KEY,
    LABELS_KEY,
    NETNS_KEY,
    OWNER_KEY,
    ROLE_KEY,
    SERVICE_KEY,
    PlumbingError,
    host_alias,
)
from ovs_forwarder.netns import find_link, inside_netns, open_netns, root_ipr
from ovs_forwarder.ovsdb import Ovsdb, PortInfo


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
    with root_ipr() as ipr:
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
        outside = find_link(ipr, port.name)
        if outside is None:
            yield found, f"host veth {port.name} is gone"
        elif outside.get("IFLA_IFALIAS") != host_alias(found.connection_id):
            yield found, f"interface {port.name} is not the veth made for this connection"
        elif outside.get("IFLA_LINK_NETNSID") is None:
            yield found, f"the peer of {port.name} is not in another network namespace"
        else:
            outsides[port.name] = outside
    if not outsides:
        return
    try:
        with open_netns(netns) as nsfd, inside_netns(nsfd) as (ns, _):
            insides = {port.name: find_link(ns, found.ifname) if found.ifname else None
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
