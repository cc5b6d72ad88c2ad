"""Per rule counters of MultiNetworkPolicy: which flow of a wire's gate counts what (docs/policy.md).

Pure: ``QualityManager.counters_read`` keeps the packet counts of the gate flows it reads, and
``policy_counters`` turns them into what each rule allowed and what each isolated end dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ryu_nsm.core.flowspec import FlowSpec, Priority, Table
from ryu_nsm.core.plan import PlannedConnection
from ryu_nsm.core.policy import Direction

# Tables whose flows a counter read asks for on a switch where a wire end is gated.
GATE_TABLES = (Table.CLASSIFY, Table.POLICY_EGRESS, Table.POLICY_INGRESS)

# (table, priority, in_port) of one gate flow; a rule's flows in the table share its priority.
GateKey = tuple[int, int, int]


@dataclass(frozen=True)
class RuleCount:
    """Packets one rule let through: new connections' first packets (the rest are established)."""

    policy: str  # namespace/name
    rule: str  # "ingress[0]", "egress[2]"
    direction: str  # "ingress" or "egress"
    workload: str  # the isolated end the rule is for: "client ns/name" or "endpoint ns/name"
    packets: int


@dataclass(frozen=True)
class DropCount:
    """Packets dropped because ``workload`` is isolated for ``direction`` (non-IP frames of a
    restricted sender count as its egress)."""

    workload: str
    direction: str
    packets: int


@dataclass(frozen=True)
class PolicyCounters:
    rules: tuple[RuleCount, ...]
    dropped: tuple[DropCount, ...]


def gate_key(spec: FlowSpec) -> GateKey | None:
    """The key of a gate flow whose packets count (conjunction clauses count nothing), else None."""
    if spec.table not in GATE_TABLES or not Priority.WIRE <= spec.priority < Priority.POLICY_STATE:
        return None
    if any(action[0] == "conjunction" for action in spec.actions):
        return None
    in_port = spec.match_dict().get("in_port")
    return None if in_port is None else (spec.table, spec.priority, in_port)


def policy_counters(pc: PlannedConnection, packets: Mapping[str, Mapping[GateKey, int]]
                    ) -> PolicyCounters | None:
    """What ``pc``'s policy allowed and dropped, from the packet counts of its gates per switch."""
    if pc.policy is None or pc.ends is None:
        return None
    c = pc.connection
    client, endpoint = f"client {c.namespace}/{c.client}", f"endpoint {c.namespace}/{c.endpoint}"
    rules: list[RuleCount] = []
    dropped: dict[tuple[str, str], int] = {}
    ways = ((pc.ends.a_switch, pc.ends.a_port, pc.policy.a_to_b, client, endpoint),
            (pc.ends.b_switch, pc.ends.b_port, pc.policy.b_to_a, endpoint, client))
    for switch, port, direction, sender, receiver in ways:
        if direction is None:
            continue
        counts = packets.get(switch, {})
        rules += _rules(direction, counts, port, sender, receiver)
        for table, who, side in ((Table.CLASSIFY, sender, "egress"), (Table.POLICY_EGRESS, sender, "egress"),
                                 (Table.POLICY_INGRESS, receiver, "ingress")):
            n = counts.get((int(table), int(Priority.WIRE), port), 0)
            dropped[(who, side)] = dropped.get((who, side), 0) + n
    return PolicyCounters(tuple(rules), tuple(DropCount(w, d, n) for (w, d), n in dropped.items()))


def _rules(direction: Direction, counts: Mapping[GateKey, int], port: int, sender: str,
           receiver: str) -> list[RuleCount]:
    out = []
    for table, allowances, owner in ((Table.POLICY_EGRESS, direction.egress, sender),
                                     (Table.POLICY_INGRESS, direction.ingress, receiver)):
        for i, rule in enumerate(allowances or ()):
            n = counts.get((int(table), int(Priority.POLICY_RULE) + i, port), 0)
            rules = f"{rule.side.lower()}[{rule.index}]"
            out.append(RuleCount(rule.policy, rules, rule.side.lower(), owner, n))
    return out
