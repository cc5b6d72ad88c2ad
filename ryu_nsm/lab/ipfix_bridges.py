"""IPFIX export on lab bridges: a Flow_Sample_Collector_Set per bridge pointing at the controller's
collector (the ovs-vsctl lines of docs/observability.md), and their removal.

A collector set holds its bridge: remove the sets before the bridges, or the bridge rows outlive
``del-br``. ``collector_sets`` adds them for its body and removes them after.
"""

from __future__ import annotations

import contextlib
import subprocess
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
