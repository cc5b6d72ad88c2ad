"""Running commands in the root namespace or in a Mininet host, and waiting for a condition: what
the lab's Mininet modules share, with their one error.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mininet.node import Node


class FabricNetError(RuntimeError):
    """A Mininet fabric could not be built, checked or driven as asked."""


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


def run(cmd: list[str], node: Node | None = None, timeout: float = 15.0, check: bool = True,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in the root namespace or, with ``node``, in that host's network namespace."""
    argv = cmd if node is None or not node.inNamespace else ["mnexec", "-a", str(node.pid), *cmd]
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        where = f" in {node.name}" if node is not None else ""
        detail = (proc.stderr or proc.stdout).strip()
        raise FabricNetError(f"`{' '.join(cmd)}`{where} exited {proc.returncode}: {detail}")
    return proc
