"""Immutable base values every layer shares: the default namespace and FrozenMap (labels, selectors).

A data module with no imports of its own in the package, so the model and the QoS levels can both
build on it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

DEFAULT_NAMESPACE = "default"


class FrozenMap(Mapping):
    """An immutable, hashable str → value mapping (labels, selectors)."""

    __slots__ = ("_items", "_hash")

    def __init__(self, items: Mapping | None = None, /, **kwargs: Any):
        merged = dict(items or {}, **kwargs)
        self._items = dict(sorted(merged.items()))
        self._hash = hash(tuple(self._items.items()))

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenMap):
            return self._items == other._items
        return isinstance(other, Mapping) and self._items == dict(other)

    def __repr__(self) -> str:
        return f"FrozenMap({self._items!r})"

    def to_dict(self) -> dict:
        return {k: (v.to_dict() if isinstance(v, FrozenMap) else v) for k, v in self._items.items()}


EMPTY = FrozenMap()
