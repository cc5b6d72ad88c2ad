"""Switches sharded across controller replicas: which shard a switch is in, and one Lease per shard.

A switch's shard is chosen by rendezvous hashing of its dpid, so every replica computes it alone and
a change of the shard count moves few switches. ``ShardElection`` runs one ``LeaderElector`` per
shard and one for this replica's member Lease, and lists the member Leases every retry period
(``k8s.membership``): a free shard is taken at once by its owner among the live members and never
by another replica while that owner is live; a holder hands over a shard that has belonged to
another live member for a Lease duration. Before any member is known, a replica waits longer before
taking a free shard the more shards it holds and the less it prefers that one. Design and failure
cases: docs/sharding.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial

import urllib3
from kubernetes.client.rest import ApiException

from ryu_nsm.k8s.leader import LeaderElector
from ryu_nsm.k8s.membership import MemberLease, Membership, member_lease_name, weight
from ryu_nsm.observe.health import Loop, Supervised, supervise

log = logging.getLogger("ryu_nsm.k8s.shards")


def shard_of(dpid: int, shards: int) -> int:
    """The shard of switch ``dpid`` among ``shards``: the one with the highest hash of (dpid, shard)."""
    if shards < 1:
        raise ValueError(f"need at least one shard, got {shards}")
    return max(range(shards), key=lambda shard: weight(dpid, shard))


def assign(dpids: Iterable[int], shards: int) -> dict[int, int]:
    """dpid → shard for every switch."""
    return {dpid: shard_of(dpid, shards) for dpid in dpids}


def lease_name(base: str, shard: int) -> str:
    """The Lease of ``shard``."""
    return f"{base}-shard-{shard}"


def lease_names(base: str, shards: int, identities: Iterable[str] = ()) -> list[str]:
    """Every Lease a sharded deployment uses: the shard Leases and the member Leases of
    ``identities`` (what RBAC must allow, see deploy/rbac.yaml)."""
    return [lease_name(base, shard) for shard in range(shards)] + [
        member_lease_name(base, identity) for identity in identities]


def preference(identity: str, shards: int) -> list[int]:
    """The shards in the order ``identity`` prefers them (rendezvous hashing again): replicas that
    start together each go first for a different shard, most of the time."""
    return sorted(range(shards), key=lambda shard: weight(identity, shard), reverse=True)


def patience(held: int, rank: int, retry_period: float) -> float:
    """Seconds a free shard Lease must stay free before a replica holding ``held`` shards, for which
    the shard is its ``rank``-th preference, takes it: none for its first choice while it holds
    nothing, so the least loaded replica that prefers a free shard most wins it."""
    return 2 * retry_period * (held + rank)


class ShardElection:
    """One elector per shard, one for the member Lease, and a loop that lists the members and hands
    shards over; ``on_started(generation, shard)`` and ``on_stopped(shard)`` follow the shard electors,
    ``drain()`` runs between a hand-over's step-down and its release of the Lease."""

    def __init__(self, shards: int, identity: str, make: Callable[..., LeaderElector], base_name: str,
                 retry_period: float, on_started: Callable[[int, int], None],
                 on_stopped: Callable[[int], None], drain: Callable[[], bool] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``make(name=…, identity=…, on_started=…, on_stopped=…, patience=…, drain=…)`` builds an
        elector for one Lease."""
        self._lock = threading.Lock()
        self._held: set[int] = set()
        self.identity = identity
        self.retry_period = retry_period
        self._clock = clock
        rank = {shard: i for i, shard in enumerate(preference(identity, shards))}
        self.electors = [
            make(name=lease_name(base_name, shard), identity=identity,
                 on_started=self._started(shard, on_started),
                 on_stopped=self._stopped(shard, on_stopped),
                 patience=partial(self._patience, shard, rank[shard]), drain=drain)
            for shard in range(shards)]
        self.member = make(name=member_lease_name(base_name, identity), identity=identity)
        self.membership = Membership(base_name, shards, settle=self.member.lease_duration)
        self._stop = threading.Event()
        self._thread: Supervised | None = None

    def _patience(self, shard: int, rank: int) -> float:
        by_owner = self.membership.patience(self.identity, shard)
        return patience(self.held_count(), rank, self.retry_period) if by_owner is None else by_owner

    def held_count(self) -> int:
        with self._lock:
            return len(self._held)

    def holders(self) -> dict[int, str | None]:
        """shard → the holder of its Lease as last seen by this replica."""
        return {shard: e.identity if e.is_leader else e.holder for shard, e in enumerate(self.electors)}

    def leads(self, shard: int) -> bool:
        return self.electors[shard].is_leader

    def start(self) -> ShardElection:
        self.member.start()
        for elector in self.electors:
            elector.start()
        self._thread = supervise(f"shards-{self.identity}", self._run, self.member.lease_duration,
                                 self._stop)
        return self

    def stop(self, release: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.member.lease_duration)
        for elector in self.electors:
            elector.stop(release)
        self.member.stop(release)

    # -- membership and hand-over -------------------------------------------------------------

    def _run(self, loop: Loop) -> None:
        while not self._stop.is_set():
            self.rebalance()
            loop.beat()
            self._stop.wait(self.retry_period)

    def rebalance(self) -> list[int]:
        """List the member Leases, then hand over what belongs to another live member; returns the
        shards handed over."""
        api = self.member.api
        try:
            listed = api.list_namespaced_lease(self.member.namespace,
                                               _request_timeout=self.member.lease_duration).items
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as e:
            log.debug("cannot list the member leases (members as last seen): %s", e)
            listed = None
        now = self._clock()
        if listed is not None:
            before = self.membership.members
            members = self.membership.observe((_member_lease(lease) for lease in listed), now)
            if members != before:
                log.info("live replicas: %s", ", ".join(sorted(members)) or "none")
        with self._lock:
            held = set(self._held)
        shards = self.membership.hand_overs(self.identity, held, now)
        for shard in shards:
            log.info("%s hands shard %d over to %s", self.identity, shard, self.membership.owner(shard))
            self.electors[shard].hand_over()
        return shards

    # -- callbacks --------------------------------------------------------------------------------

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


def _member_lease(lease) -> MemberLease:
    spec, meta = lease.spec, lease.metadata
    return MemberLease(meta.name, spec.holder_identity if spec else None, meta.resource_version,
                       float((spec.lease_duration_seconds if spec else None) or 0))
