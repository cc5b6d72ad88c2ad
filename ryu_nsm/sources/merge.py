"""Several sources, one declared state: each source reports its whole part, the union goes on."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from ryu_nsm.core.model import Resources


class MergedSources:
    """Hands ``push`` the union of every source's latest Resources.

    The sources are named up front and nothing is pushed until every one of them has reported
    once: a first state without one source would look as if all of its objects had been deleted
    (a part registered after another source had reported was such a hole: a restart planned
    without the OVSDB source's clients and took their flows away for a moment).
    """

    def __init__(self, push: Callable[[Resources], None], names: Iterable[str]):
        self._push = push
        self._parts: dict[str, Resources | None] = dict.fromkeys(names)
        self._lock = threading.Lock()

    def part(self, name: str) -> Callable[[Resources], None]:
        """The function that takes the whole state of source ``name`` (one named up front)."""
        if name not in self._parts:
            raise ValueError(f"source {name!r} was not named when the sources were merged")

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
