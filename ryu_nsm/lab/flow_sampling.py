"""Flow sampling in labs: a Flow_Sample_Collector_Set per bridge pointing at the controller's IPFIX
collector (the ovs-vsctl lines of docs/observability.md), their removal, and the flow events read
back with ``ryu-nsm observe``.

A collector set holds its bridge: remove the sets before the bridges, or the bridge rows outlive
``del-br``. ``collector_sets`` adds them for its body and removes them after.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator, Sequence


def _vsctl(*args: str, check: bool = True) -> str:
    return subprocess.run(["ovs-vsctl", *args], check=check, capture_output=True, text=True).stdout


def add_collector_set(bridge: str, target: str, set_id: int = 1) -> str:
    """A collector set (and its IPFIX row) on ``bridge`` exporting to ``target`` (host:port); its UUID."""
    out = _vsctl("--", "--id=@br", "get", "Bridge", bridge, "--", "--id=@i", "create", "IPFIX",
                 f'targets="{target}"', "--", "create", "Flow_Sample_Collector_Set", f"id={set_id}",
                 "bridge=@br", "ipfix=@i")
    return out.split()[-1]


def remove_collector_sets(uuids: Sequence[str]) -> None:
    """Remove them (the IPFIX rows go with them, unreferenced); missing ones are fine."""
    for uuid in uuids:
        _vsctl("--if-exists", "destroy", "Flow_Sample_Collector_Set", uuid, check=False)


@contextlib.contextmanager
def collector_sets(bridges: Sequence[str], target: str, set_id: int = 1) -> Iterator[list[str]]:
    """One collector set per bridge while the body runs (their UUIDs), removed after."""
    uuids: list[str] = []
    try:
        for bridge in bridges:
            uuids.append(add_collector_set(bridge, target, set_id))
        yield uuids
    finally:
        remove_collector_sets(uuids)


def observe(server: str, *args: str) -> str:
    """What ``ryu-nsm observe --server server ARGS`` prints."""
    out = subprocess.run([sys.executable, "-m", "ryu_nsm.cli", "observe", "--server", server, *args],
                         capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(f"ryu-nsm observe failed: {out.stderr}")
    return out.stdout


def observed(server: str, last: int = 1000) -> list[dict]:
    """The last flows ``ryu-nsm observe --server server -o json`` prints: Hubble's Flow as JSON."""
    lines = observe(server, "--last", str(last), "-o", "json").splitlines()
    return [json.loads(line)["flow"] for line in lines if line.strip()]


def hops(flows: list[dict], connection: str, icmp_type: int) -> list[tuple[str, bool]]:
    """(switch, is a reply) of each ICMPv4 flow of ``icmp_type`` on ``connection``, in the order seen."""
    return [(f["node_name"], bool(f.get("is_reply"))) for f in flows
            if "ICMPv4" in f.get("l4", {}) and f["l4"]["ICMPv4"].get("type", 0) == icmp_type
            and f"({connection})" in f.get("Summary", "")]
