"""Switches sharded across controller replicas: which shard a switch is in, and one Lease per shard.

A switch's shard is chosen by rendezvous hashing of its dpid, so every replica computes it alone and
a change of the shard count moves few switches. ``ShardElection`` runs one ``LeaderElector`` per
shard; a replica waits longer before taking a free shard the more shards it holds and the less it
prefers that one, so the shards spread over the replicas. Design and failure cases: docs/sharding.md.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable
from functools import partial

from ryu_nsm.k8s.leader import LeaderElector


def shard_of(dpid: int, shards: int) -> int:
    """The shard of switch ``dpid`` among ``shards``: the one with the highest hash of (dpid, shard)."""
    if shards < 1:
        raise ValueError(f"need at least one shard, got {shards}")
    return max(range(shards), key=lambda shard: _weight(dpid, shard))


def assign(dpids: Iterable[int], shards: int) -> dict[int, int]:
    """dpid → shard for every switch."""
    return {dpid: shard_of(dpid, shards) for dpid in dpids}


def lease_name(base: str, shard: int) -> str:
    """The Lease of ``shard``."""
    return f"{base}-shard-{shard}"


def preference(identity: str, shards: int) -> list[int]:
    """The shards in the order ``identity`` prefers them (rendezvous hashing again): replicas that
    start together each go first for a different shard, most of the time."""
    return sorted(range(shards), key=lambda shard: _weight(identity, shard), reverse=True)


def patience(held: int, rank: int, retry_period: float) -> float:
    """Seconds a free shard Lease must stay free before a replica holding ``held`` shards, for which
    the shard is its ``rank``-th preference, takes it: none for its first choice while it holds
    nothing, so the least loaded replica that prefers a free shard most wins it."""
    return 2 * retry_period * (held + rank)


def _weight(key: int | str, shard: int) -> int:
    text = f"{key:016x}" if isinstance(key, int) else key
    digest = hashlib.sha256(f"{text}/{shard}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


class ShardElection:
    """One elector per shard; ``on_started(generation, shard)`` and ``on_stopped(shard)`` follow them."""

    def __init__(self, shards: int, identity: str, make: Callable[..., LeaderElector], base_name: str,
                 retry_period: float, on_started: Callable[[int, int], None],
                 on_stopped: Callable[[int], None]) -> None:
        """``make(name=…, identity=…, on_started=…, on_stopped=…, patience=…)`` builds an elector for
        one Lease."""
        self._lock = threading.Lock()
        self._held: set[int] = set()
        rank = {shard: i for i, shard in enumerate(preference(identity, shards))}
        self.electors = [
            make(name=lease_name(base_name, shard), identity=identity,
                 on_started=self._started(shard, on_started),
                 on_stopped=self._stopped(shard, on_stopped),
                 patience=partial(self._patience, rank[shard], retry_period))
            for shard in range(shards)]

    def _patience(self, rank: int, retry_period: float) -> float:
        return patience(self.held_count(), rank, retry_period)

    def held_count(self) -> int:
        with self._lock:
            return len(self._held)

    def holders(self) -> dict[int, str | None]:
        """shard → the holder of its Lease as last seen by this replica."""
        return {shard: e.identity if e.is_leader else e.holder for shard, e in enumerate(self.electors)}

    def leads(self, shard: int) -> bool:
        return self.electors[shard].is_leader

    def start(self) -> ShardElection:
        for elector in self.electors:
            elector.start()
        return self

    def stop(self, release: bool = True) -> None:
        for elector in self.electors:
            elector.stop(release)

    def _started(self, shard: int, then: Callable[[int, int], None]) -> Callable[[int], None]:
        def started(generation: int) -> None:
            with self._lock:
                self._held.add(shard)
            then(generation, shard)
        return started

    def _stopped(self, shard: int, then: Callable[[int], None]) -> Callable[[], None]:
        def stopped() -> None:
            with self._lock:
                self._held.discard(shard)
            then(shard)
        return stopped
