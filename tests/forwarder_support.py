"""What the forwarder's tests share: reading OVS and the kernel with the standard tools (never through
the forwarder), connection ids and namespaces that are removed after each test, a test bridge."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ovs_forwarder.kernel_request import host_ifname

from .two_bridges import sh


def wait_for(ready: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll ``ready`` until it is truthy; an AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def root_links() -> set[str]:
    """Interface names in the root namespace."""
    return {link["ifname"] for link in json.loads(sh("ip", "-j", "link", "show"))}


def ovs_by_connection(connection_id: str) -> list[dict]:
    """The OVS interfaces marked with ``connection_id``, as {uuid, name, ofport, external_ids}."""
    out = json.loads(sh("ovs-vsctl", "--format=json", "--columns=_uuid,name,ofport,external_ids", "find",
                        "Interface", f'external_ids:ryu-nsm-connection="{connection_id}"'))
    return [{"uuid": u[1], "name": name, "ofport": ofport, "external_ids": dict(marks[1])}
            for u, name, ofport, marks in out["data"]]


def attached(connection_id: str) -> dict:
    """The connection's OVS interface once ovs-vswitchd gave it an ofport (the forwarder does not wait)."""
    found: list[dict] = []

    def ready() -> bool:
        found[:] = ovs_by_connection(connection_id)
        return len(found) == 1 and isinstance(found[0]["ofport"], int) and found[0]["ofport"] > 0

    wait_for(ready, f"ovs-vswitchd to attach the port of {connection_id}")
    return found[0]


def bridge_ports(bridge: str) -> set[str]:
    return set(sh("ovs-vsctl", "list-ports", bridge).split())


@contextmanager
def netdev_bridge(name: str) -> Iterator[str]:
    """A netdev bridge in fail-mode secure, deleted afterwards."""
    sh("ovs-vsctl", "add-br", name, "--", "set", "bridge", name, "datapath_type=netdev", "fail_mode=secure")
    try:
        yield name
    finally:
        sh("ovs-vsctl", "--if-exists", "del-br", name, check=False)


@contextmanager
def connection_ids(tag: str) -> Iterator[Callable[[str], str]]:
    """Unique connection ids ``tag/name/random``; their OVS ports and host veths are removed after."""
    made: list[str] = []

    def new(name: str) -> str:
        made.append(f"{tag}/{name}/{uuid.uuid4().hex[:8]}")
        return made[-1]

    try:
        yield new
    finally:
        for connection in made:
            for iface in ovs_by_connection(connection):
                sh("ovs-vsctl", "--if-exists", "del-port", iface["name"], check=False)
            sh("ip", "link", "del", host_ifname(connection), check=False)


@contextmanager
def netns_names(tag: str) -> Iterator[Callable[[], str]]:
    """Fresh named network namespaces, deleted after."""
    made: list[str] = []

    def new() -> str:
        name = f"{tag}-{len(made)}-{uuid.uuid4().hex[:4]}"
        sh("ip", "netns", "add", name)
        made.append(name)
        return name

    try:
        yield new
    finally:
        for name in made:
            sh("ip", "netns", "del", name, check=False)


def ping_in(netns: str, address: str) -> bool:
    """One echo from a named namespace; True when it was answered within a second."""
    return subprocess.run(["ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "1", address],
                          capture_output=True).returncode == 0
