"""Desired vs actual flows per switch → the minimal, ordered, idempotent set of changes.

Only flows whose cookie carries ryu-nsm's owner byte are ever changed; everything else on a
switch belongs to someone else. Changes are ordered make-before-break across the whole fabric:

1. ADD flows whose key (table, priority, match) is new — nothing points at them yet;
2. MODIFY flows whose key exists with other actions or cookie — this redirects traffic onto
   what phase 1 built (an OpenFlow ADD replaces the flow in place, without a gap);
3. DELETE flows that are no longer desired.

Meters (the policers of rate-limited connections) and groups (the fast-failover of protected
ones) are added and changed before the flows that use them and removed after the flows that used
them are gone (deleting either would take the flows that still use it with it).
Each phase is confirmed by a barrier on every switch before the next starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from operator import attrgetter

from ryu_nsm.core.flowspec import FlowSpec, GroupSpec, MeterSpec, is_ours

METER_ADD = "meter-add"
METER_MODIFY = "meter-modify"
GROUP_ADD = "group-add"
GROUP_MODIFY = "group-modify"
ADD = "add"
MODIFY = "modify"
DELETE = "delete"
GROUP_DELETE = "group-delete"
METER_DELETE = "meter-delete"
PHASES = (METER_ADD, METER_MODIFY, GROUP_ADD, GROUP_MODIFY, ADD, MODIFY, DELETE, GROUP_DELETE, METER_DELETE)
OBJECT_KINDS = ("meter", "group")  # what a switch holds besides flows, each kind keyed by id
_FIELD_OF_PHASE = {ADD: "adds", MODIFY: "modifies", DELETE: "deletes"} | {
    f"{kind}-{verb}": f"{kind}_{verb}s".replace("modifys", "modifies")
    for kind in OBJECT_KINDS for verb in ("add", "modify", "delete")}


@dataclass(frozen=True)
class SwitchDiff:
    adds: tuple[FlowSpec, ...] = ()
    modifies: tuple[FlowSpec, ...] = ()
    deletes: tuple[FlowSpec, ...] = ()
    meter_adds: tuple[MeterSpec, ...] = ()
    meter_modifies: tuple[MeterSpec, ...] = ()
    meter_deletes: tuple[MeterSpec, ...] = ()
    group_adds: tuple[GroupSpec, ...] = ()
    group_modifies: tuple[GroupSpec, ...] = ()
    group_deletes: tuple[GroupSpec, ...] = ()

    def __bool__(self) -> bool:
        return self.size > 0

    def ops(self, phase: str) -> tuple:
        """The operations of one phase."""
        return getattr(self, _FIELD_OF_PHASE[phase])

    @property
    def size(self) -> int:
        return sum(len(self.ops(phase)) for phase in PHASES)


class ConflictingFlows(ValueError):
    """Two desired flows share a key: a compiler bug, never sent to a switch."""


FlowKey = tuple  # FlowSpec.key: (table, priority, match)


def diff(
    desired: Iterable[FlowSpec], actual: Iterable[FlowSpec], keep: frozenset[int] = frozenset()
) -> SwitchDiff:
    """The changes that turn the switch's flows (``actual``, ours and others') into ``desired``.

    Flows whose cookie is in ``keep`` are never deleted (their connection's state is not known yet).
    """
    want: dict[FlowKey, FlowSpec] = {}
    for flow in desired:
        other = want.setdefault(flow.key, flow)
        if other != flow:
            raise ConflictingFlows(f"two desired flows share {flow.key}: {other} and {flow}")
    have = {flow.key: flow for flow in actual if is_ours(flow.cookie)}
    return diff_keyed(want, have, None, keep)


def diff_keyed(
    desired: Mapping[FlowKey, FlowSpec],
    actual: Mapping[FlowKey, FlowSpec],
    keys: Iterable[FlowKey] | None = None,
    keep: frozenset[int] = frozenset(),
) -> SwitchDiff:
    """Like ``diff`` over flows indexed by key (``actual`` only ours), limited to ``keys`` if given.

    The controller passes the keys a change touched, so its cost follows the change, not the table.
    """
    adds, modifies, deletes = [], [], []
    if keys is None:  # whole: each key hashed twice, not five times (a union, then two looks)
        for key, want in desired.items():
            have = actual.get(key)
            if have is None:
                adds.append(want)
            elif have is not want and have != want:
                modifies.append(want)
        deletes = [have for key, have in actual.items() if key not in desired and have.cookie not in keep]
        return SwitchDiff(_in_key_order(adds), _in_key_order(modifies), _in_key_order(deletes))
    for key in keys:
        want, have = desired.get(key), actual.get(key)
        if want is None:
            if have is not None and have.cookie not in keep:
                deletes.append(have)
        elif have is None:
            adds.append(want)
        elif have is not want and have != want:  # a flow read back is often the planned object
            modifies.append(want)
    return SwitchDiff(_in_key_order(adds), _in_key_order(modifies), _in_key_order(deletes))


_KEY = attrgetter("table", "priority", "match")


def _in_key_order(flows: list[FlowSpec]) -> tuple[FlowSpec, ...]:
    """``flows`` (distinct keys) as ``sorted`` orders them: a key leads FlowSpec's order, and
    comparing keys built once each costs a third of comparing the flows (a reroute at size sorts
    40,000)."""
    return tuple(sorted(flows, key=_KEY))


def diff_fabric(
    desired: Mapping[str, Iterable[FlowSpec]],
    actual: Mapping[str, Iterable[FlowSpec]],
    keep: frozenset[int] = frozenset(),
) -> dict[str, SwitchDiff]:
    """Per-switch diffs for the switches in ``actual`` (those whose flows are known); empty ones left out."""
    out = {}
    for switch, flows in actual.items():
        d = diff(desired.get(switch, ()), flows, keep)
        if d:
            out[switch] = d
    return out


def diff_objects(
    kind: str, desired: Mapping[int, object], actual: Mapping[int, object], ids: Iterable[int] | None = None
) -> dict[str, tuple]:
    """The ``kind`` (meter, group) fields of a SwitchDiff that turn ``actual`` (ours) into ``desired``."""
    if ids is None:
        ids = desired.keys() | actual.keys()
    adds, modifies, deletes = [], [], []
    for meter_id in ids:
        want, have = desired.get(meter_id), actual.get(meter_id)
        if want is not None and have is None:
            adds.append(want)
        elif want is not None and want != have:
            modifies.append(want)
        elif want is None and have is not None:
            deletes.append(have)
    return {f"{kind}_adds": tuple(sorted(adds)), f"{kind}_modifies": tuple(sorted(modifies)),
            f"{kind}_deletes": tuple(sorted(deletes))}


def apply_keyed(actual: dict[FlowKey, FlowSpec], change: SwitchDiff,
                objects: Mapping[str, dict[int, object]] | None = None) -> None:
    """Apply ``change`` in place to flows indexed by key (and ``objects``: kind → id → spec)."""
    for flow in change.adds + change.modifies:
        actual[flow.key] = flow
    for flow in change.deletes:
        actual.pop(flow.key, None)
    for kind, held in (objects or {}).items():
        for spec in getattr(change, f"{kind}_adds") + getattr(change, f"{kind}_modifies"):
            held[spec.key] = spec
        for spec in getattr(change, f"{kind}_deletes"):
            held.pop(spec.key, None)


def apply(actual: Iterable[FlowSpec], change: SwitchDiff) -> frozenset[FlowSpec]:
    """What a switch holds after ``change`` is applied: used to track state once a barrier confirms it."""
    by_key = {f.key: f for f in actual}
    for flow in change.adds + change.modifies:
        by_key[flow.key] = flow
    for flow in change.deletes:
        by_key.pop(flow.key, None)
    return frozenset(by_key.values())
