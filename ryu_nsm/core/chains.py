"""How a chain continues: a service function's Pod shares its endpoint's name, so the request it makes
for the same network service is the chain's next wire (see examples/README.md)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

T = TypeVar("T", bound=Hashable)


def follow(head: T, next_of: Callable[[T], T | None]) -> tuple[T, ...]:
    """The chain from ``head`` on: each step's successor, until there is none or it would come back to
    a step it passed."""
    chain: list[T] = []
    seen: set[T] = set()
    step: T | None = head
    while step is not None and step not in seen:
        seen.add(step)
        chain.append(step)
        step = next_of(step)
    return tuple(chain)
