"""Several sources, one declared state: each source reports its whole part, the union goes on."""

from __future__ import annotations

import threading
from collections.abc import Callable

from ryu_nsm.core.model import Resources


class MergedSources:
    """Hands ``push`` the union of every source's latest Resources.

    Nothing is pushed until every registered source has reported once: a first state without
    one source would look as if all of its objects had been deleted.
    """

    def __init__(self, push: Callable[[Resources], None]):
        self._push = push
        self._parts: dict[str, Resources | None] = {}
        self._lock = threading.Lock()

    def part(self, name: str) -> Callable[[Resources], None]:
        """Register source ``name``; the returned function takes its whole state."""
        with self._lock:
            self._parts[name] = None

        def update(resources: Resources) -> None:
            with self._lock:
                self._parts[name] = resources
                if any(part is None for part in self._parts.values()):
                    return
                merged = Resources()
                for part in self._parts.values():
                    merged = merged.merged(part)
                self._push(merged)

        return update
