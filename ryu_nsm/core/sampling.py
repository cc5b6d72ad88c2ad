"""Flow sampling: Open vSwitch ``sample`` actions on a wire's ingress and delivery flows and on drops.

A sampled frame is exported by the switch over IPFIX (docs/observability.md) with the action's
observation domain id (the switch) and point id (the stage, the direction and the wire); the
controller's collector reads them back with ``read_point``. Pure: ids, probabilities, and the
post-pass that adds the actions to flows the factory compiled. Wires with sampling off are untouched.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from ryu_nsm.core.flowspec import COOKIE_WIRE_MASK, FlowSpec, Table, wire_cookie

MAX_PROBABILITY = 0xFFFF  # OVS samples ``probability`` frames in 65535
_WIRE_BITS = 27
_WIRE_MASK = (1 << _WIRE_BITS) - 1
_REVERSE = 1 << _WIRE_BITS
_STAGE_SHIFT = 28


class Stage(enum.IntEnum):
    """Where on a wire (or off every wire) a frame was sampled: the top four bits of the point id."""

    INGRESS = 1  # entering the fabric at a wire's end (after its policy, if any)
    DELIVERY = 2  # leaving the fabric at the far end
    NO_WIRE = 3  # the table-miss drop: no wire admits the frame
    POLICY_DROP = 4  # the wire end's policy refused it


DROP_STAGES = (Stage.NO_WIRE, Stage.POLICY_DROP)


@dataclass(frozen=True)
class FlowSampling:
    """Fabric-wide sampling: the IPFIX collector set's id on the bridges, the probability a wire gets
    when its ServiceLevel sets none (``flowSampling``), and the drops' probability; fractions of 1."""

    collector_set: int = 1
    default: float = 1 / 64
    drops: float = 1.0


@dataclass(frozen=True)
class Point:
    """An observation point id, read: the stage, the wire's 27-bit hash (0 off every wire) and the
    direction (False: from the wire's a-end, the client, to its b-end)."""

    stage: Stage
    wire_hash: int
    reverse: bool


def probability(fraction: float) -> int:
    """A fraction of 1 as OVS's probability (out of 65535); at least 1 for anything above 0."""
    return max(1, min(MAX_PROBABILITY, round(fraction * MAX_PROBABILITY))) if fraction > 0 else 0


def sampling_rate(prob: int) -> int:
    """One frame in how many is sampled at an OVS probability."""
    return max(1, round(MAX_PROBABILITY / prob)) if prob else 0


def domain_id(switch: str) -> int:
    """The observation domain id of a switch: 32 bits of a hash of its name (never 0)."""
    return int.from_bytes(hashlib.blake2b(switch.encode(), digest_size=4).digest(), "big") or 1


def wire_hash(connection_id: str) -> int:
    """The part of a wire's point ids that names it: 27 bits of its cookie's hash (never 0)."""
    return (wire_cookie(connection_id) & COOKIE_WIRE_MASK & _WIRE_MASK) or 1


def point_id(stage: Stage, connection_id: str | None = None, reverse: bool = False) -> int:
    wire = wire_hash(connection_id) if connection_id is not None else 0
    return int(stage) << _STAGE_SHIFT | (_REVERSE if reverse else 0) | wire


def read_point(value: int) -> Point | None:
    """The point id's parts, or None when it is not one ryu-nsm writes."""
    try:
        stage = Stage(value >> _STAGE_SHIFT)
    except ValueError:
        return None
    return Point(stage, value & _WIRE_MASK, bool(value & _REVERSE))


def sample_action(prob: int, collector_set: int, switch: str, point: int) -> tuple:
    return ("sample", prob, collector_set, domain_id(switch), point)


def sampled_pipeline(switch: str, flows: Sequence[FlowSpec], sampling: FlowSampling | None) -> list[FlowSpec]:
    """The pipeline's table-miss drops of ``switch`` sampled as NO_WIRE drops."""
    prob = probability(sampling.drops) if sampling is not None else 0
    if not prob:
        return list(flows)
    action = sample_action(prob, sampling.collector_set, switch, point_id(Stage.NO_WIRE))
    return [replace(f, actions=(action,)) if f.priority == 0 and not f.actions and f.goto is None else f
            for f in flows]


def sampled_wire_flows(ends, flows: Iterable[tuple[str, FlowSpec]], fraction: float,
                       sampling: FlowSampling | None) -> list[tuple[str, FlowSpec]]:
    """A wire's flows (``ends``: core.flows.WireEnds) with sample actions: first on the flows that take
    each end's frames onto the wire, just before the output to an end on the flows that deliver, and
    on the policy's drops. ``fraction`` is the wire's probability; off (None, 0): the flows as given."""
    prob = probability(fraction) if sampling is not None else 0
    if not prob:
        return list(flows)
    drops = probability(sampling.drops)
    sides = {(ends.a_switch, ends.a_port): False, (ends.b_switch, ends.b_port): True}

    def sample(switch: str, stage: Stage, reverse: bool, prob: int) -> tuple:
        return sample_action(prob, sampling.collector_set, switch, point_id(stage, ends.id, reverse))

    out = []
    for switch, flow in flows:
        actions = list(flow.actions)
        for i in reversed(range(len(actions))):  # delivery: the frame leaves by an end's port
            end = sides.get((switch, actions[i][1])) if actions[i][0] == "output" else None
            if end is not None:
                actions.insert(i, sample(switch, Stage.DELIVERY, not end, prob))
        reverse = sides.get((switch, flow.match_dict().get("in_port")))
        if reverse is not None and _onto_wire(flow):
            actions.insert(0, sample(switch, Stage.INGRESS, reverse, prob))
        elif reverse is not None and _policy_drop(flow) and drops:
            actions = [sample(switch, Stage.POLICY_DROP, reverse, drops)]
        changed = tuple(actions) != flow.actions
        out.append((switch, replace(flow, actions=tuple(actions)) if changed else flow))
    return out


def _onto_wire(flow: FlowSpec) -> bool:
    return flow.table in (Table.CLASSIFY, Table.WIRE_ENTRY) and any(a[0] in ("output", "group")
                                                                    for a in flow.actions)


def _policy_drop(flow: FlowSpec) -> bool:
    """A policed end's catch-all: no actions, no goto, in its gate's tables."""
    return not flow.actions and flow.goto is None and flow.table in (
        Table.CLASSIFY, Table.POLICY_EGRESS, Table.POLICY_INGRESS)
