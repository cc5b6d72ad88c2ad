"""Which replicas are alive, from their member Leases, and which shards each should hold.

Every replica holds a member Lease of its own (``member_lease_name``) and renews it as it would a
shard Lease, so the others see a replica that holds no shard yet. ``Membership`` is fed the listed
Leases with a clock reading: a member is *live* while its Lease keeps changing within its duration,
measured with our own clock from when we saw it change (as ``LeaderElector`` measures expiry, never
from the renewTime another host wrote). A shard's *owner* follows from the live members alone
(``owners``: rendezvous hashing bounded to an even share each), so every replica that sees the same
members computes the same owners. Pure: no I/O, the caller lists and passes ``now``. Design and
failure cases: docs/sharding.md.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

MEMBER = "member"


def member_lease_name(base: str, identity: str) -> str:
    """The member Lease of replica ``identity`` (hashed: an identity need not be a valid object name)."""
    return f"{base}-{MEMBER}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


def weight(key: int | str, shard: int) -> int:
    """The rendezvous weight of ``key`` (a dpid or a replica identity) for ``shard``."""
    text = f"{key:016x}" if isinstance(key, int) else key
    digest = hashlib.sha256(f"{text}/{shard}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def owners(shards: int, members: Iterable[str]) -> dict[int, str]:
    """shard → the member that should hold it: shard by shard, the member with the highest weight for
    it among those still below their share (``shards // members``, one more for the first
    ``shards % members`` to reach it). Plain rendezvous hashing would give 2 shards to one of 2
    replicas half the time; the shares keep every load within one of the others, and a member
    joining or leaving still moves few shards. Empty without members."""
    members = sorted(set(members))
    if not members:
        return {}
    base, extra = divmod(shards, len(members))
    load = dict.fromkeys(members, 0)
    out = {}
    for shard in range(shards):
        ranked = sorted(members, key=lambda identity: (weight(identity, shard), identity), reverse=True)
        out[shard] = who = next(m for m in ranked if load[m] < base or (load[m] == base and extra > 0))
        if load[who] == base:
            extra -= 1
        load[who] += 1
    return out


@dataclass(frozen=True)
class MemberLease:
    """A listed member Lease: its name, holder, what changes when it is renewed, and its duration."""

    name: str
    holder: str | None
    version: str | None  # resourceVersion: every renewal changes it
    duration: float


class Membership:
    """Live members as seen from one replica, and the shards it should hand over (see module doc).

    ``settle``: how long a held shard must have belonged to another live member before it is handed
    over, so that a member that appears and vanishes again (a crash loop) never gets one.
    """

    def __init__(self, base: str, shards: int, settle: float) -> None:
        self.prefix = f"{base}-{MEMBER}-"
        self.shards = shards
        self.settle = settle
        self._owners: dict[int, str] = {}
        self._seen: dict[str, tuple[MemberLease, float]] = {}  # name → (Lease, when we saw it change)
        self.members: frozenset[str] = frozenset()
        self._wrong_since: dict[int, float] = {}  # held shard → since when another member owns it

    def observe(self, leases: Iterable[MemberLease], now: float) -> frozenset[str]:
        """Take a listing of Leases (others than member Leases are ignored); returns the live members."""
        seen: dict[str, tuple[MemberLease, float]] = {}
        for lease in leases:
            if not lease.name.startswith(self.prefix) or not lease.holder:
                continue
            old = self._seen.get(lease.name)
            changed = old[1] if old is not None and old[0] == lease else now
            seen[lease.name] = (lease, changed)
        self._seen = seen
        self.members = frozenset(lease.holder for lease, changed in seen.values()
                                 if now - changed < lease.duration)
        self._owners = owners(self.shards, self.members)
        return self.members

    def owner(self, shard: int) -> str | None:
        """The live member that should hold ``shard``; None while no member is known."""
        return self._owners.get(shard)

    def patience(self, identity: str, shard: int) -> float | None:
        """How long ``identity`` waits before taking ``shard`` when it is free: 0 for its own, never
        for another live member's, None (the caller's load-based patience) while members are unknown."""
        who = self.owner(shard)
        if who is None:
            return None
        return 0.0 if who == identity else math.inf

    def hand_overs(self, identity: str, held: Iterable[int], now: float) -> list[int]:
        """The shards ``identity`` holds that have belonged to another live member for ``settle``."""
        wrong = {shard for shard in held if self.owner(shard) not in (None, identity)}
        self._wrong_since = {shard: self._wrong_since.get(shard, now) for shard in wrong}
        return sorted(shard for shard, since in self._wrong_since.items() if now - since >= self.settle)
