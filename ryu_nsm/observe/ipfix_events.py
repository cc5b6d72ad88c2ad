"""IPFIX records from Open vSwitch's flow sampling → FlowEvents (docs/observability.md).

The sample actions' ids say where a frame was seen (core/sampling.py): the observation domain
names the switch, the point the stage, the direction and the wire. A ``WireDirectory`` turns those
back into names from the controller's status; the frame's header fields come from the flow keys
OVS exports. Pure: the directory and the time are passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ryu_nsm.core.plan import PlannedConnection
from ryu_nsm.core.policy_model import PolicyInputs
from ryu_nsm.core.sampling import (
    DROP_STAGES,
    FlowSampling,
    Stage,
    domain_id,
    probability,
    read_point,
    sampling_rate,
    wire_hash,
)
from ryu_nsm.observe.flow_events import (
    TCP_FLAGS,
    Direction,
    DropKind,
    DropReason,
    Ethernet,
    FlowEvent,
    IPHeader,
    Layer4,
    ObservationPoint,
    Verdict,
    WireRef,
    Workload,
)
from ryu_nsm.observe.report import chain_entries

_PROTOCOLS = {6: "TCP", 17: "UDP", 132: "SCTP", 1: "ICMPv4", 58: "ICMPv6"}


@dataclass(frozen=True)
class WireDirectory:
    """What the ids name now: switches by domain id, wires by hash, each wire's sampling rate and
    the policies that govern it, and the labels of workloads by (namespace, name)."""

    switches: Mapping[int, str] = field(default_factory=dict)
    wires: Mapping[int, WireRef] = field(default_factory=dict)
    rates: Mapping[int, int] = field(default_factory=dict)
    policies: Mapping[int, str] = field(default_factory=dict)
    drop_rate: int = 1
    labels: Mapping[tuple[str, str], tuple[tuple[str, str], ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, switches: Iterable[str], planned: Iterable[PlannedConnection],
           sampling: FlowSampling, policy: PolicyInputs | None = None) -> WireDirectory:
        """From the fabric's switch names and the plan's connections (their flows say how often
        each wire is sampled); labels from the Pods and NSEs ``policy`` knows (a Pod's win over an
        NSE's of the same name: Hubble shows pods)."""
        by_id = {pc.id: pc for pc in planned}
        entries = [{"id": pc.id, "namespace": pc.connection.namespace, "client": pc.connection.client,
                    "network_service": pc.connection.network_service, "endpoint": pc.connection.endpoint}
                   for pc in by_id.values()]
        wires, rates, policies = {}, {}, {}
        for chain in chain_entries(entries):
            for hop, entry in enumerate(chain):
                pc, key = by_id[entry["id"]], wire_hash(entry["id"])
                wires[key] = WireRef(pc.id, entry["network_service"], entry["namespace"], entry["client"],
                                     entry["endpoint"] or "", hop)
                rates[key] = _wire_rate(pc)
                governed = pc.policy.governed_by if pc.policy is not None else ()
                policies[key] = ", ".join(dict.fromkeys(line.split(" ")[0] for line in governed))
        known = {**policy.endpoints, **policy.pods} if policy is not None else {}
        labels = {key: tuple(sorted(workload.labels.items())) for key, workload in known.items()}
        return cls({domain_id(name): name for name in switches}, wires, rates, policies,
                   sampling_rate(probability(sampling.drops)), labels)


def _wire_rate(pc: PlannedConnection) -> int:
    """One frame in how many its ingress and delivery samples see (0: not sampled)."""
    for _, flow in pc.flows:
        for action in flow.actions:
            if action[0] == "sample" and read_point(action[4]).stage is Stage.INGRESS:
                return sampling_rate(action[1])
    return 0


def events_of(records: Iterable[dict], domain: int, directory: WireDirectory, now: float) -> list[FlowEvent]:
    """The records of one message (observation ``domain``) as events; records that are not from a
    ryu-nsm sample action (no point id, or one ryu-nsm does not write) are left out."""
    out = []
    node = directory.switches.get(domain, f"domain-{domain}")
    for record in records:
        raw_point = record.get("observationPointId")
        point = read_point(raw_point) if raw_point is not None else None
        if point is None:
            continue
        wire = directory.wires.get(point.wire_hash)
        dropped = point.stage in DROP_STAGES
        reason = None
        if point.stage is Stage.NO_WIRE:
            reason = DropReason(DropKind.NO_WIRE)
        elif point.stage is Stage.POLICY_DROP:
            reason = DropReason(DropKind.POLICY, directory.policies.get(point.wire_hash, ""))
        direction = Direction.UNKNOWN
        if wire is not None:
            direction = Direction.TO_CLIENT if point.reverse else Direction.TO_ENDPOINT
        rate = directory.drop_rate if dropped else directory.rates.get(point.wire_hash, 1)
        out.append(FlowEvent(
            time=now, node=node, verdict=Verdict.DROPPED if dropped else Verdict.FORWARDED, wire=wire,
            direction=direction, drop_reason=reason, ethernet=_ethernet(record), ip=_ip(record),
            l4=_l4(record), sampling_rate=rate, observation=ObservationPoint(domain, raw_point),
            source=wire_end(wire, point.reverse, directory),
            destination=wire_end(wire, not point.reverse, directory)))
    return out


def wire_end(wire: WireRef | None, endpoint: bool, directory: WireDirectory) -> Workload | None:
    """The wire's endpoint (else its client) as a workload, with its labels; None without a wire."""
    if wire is None:
        return None
    name = wire.endpoint if endpoint else wire.client
    return Workload(wire.namespace, name, directory.labels.get((wire.namespace, name), ()))


def _ethernet(record: dict) -> Ethernet | None:
    if "sourceMacAddress" not in record:
        return None
    return Ethernet(record["sourceMacAddress"], record.get("destinationMacAddress", ""),
                    record.get("ethernetType", 0))


def _ip(record: dict) -> IPHeader | None:
    for version in (4, 6):
        source = record.get(f"sourceIPv{version}Address")
        if source is not None:
            return IPHeader(source, record.get(f"destinationIPv{version}Address", ""), version)
    return None


def _l4(record: dict) -> Layer4 | None:
    name = _PROTOCOLS.get(record.get("protocolIdentifier", -1))
    if name is None:
        return None
    if name.startswith("ICMP"):
        v = "IPv4" if name == "ICMPv4" else "IPv6"
        code = record.get(f"icmpTypeCode{v}")
        icmp_type = record.get(f"icmpType{v}", code >> 8 if code is not None else 0)
        icmp_code = record.get(f"icmpCode{v}", code & 0xFF if code is not None else 0)
        return Layer4(name, icmp_type=icmp_type, icmp_code=icmp_code)
    bits = record.get("tcpControlBits", 0)
    flags = frozenset(flag for i, flag in enumerate(TCP_FLAGS) if bits >> i & 1 and name == "TCP")
    return Layer4(name, record.get("sourceTransportPort", 0), record.get("destinationTransportPort", 0),
                  tcp_flags=flags)
