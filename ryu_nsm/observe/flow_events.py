"""Flow events: one sampled frame seen at one observation point of the fabric, with its verdict
(or the frames a wire's meter dropped since the last counter read).

Producers (the IPFIX collector, the meters' drop counts; docs/observability.md) build them; the
flow store keeps them, and ``observe``, the Hubble API and the flow log show them. Plain frozen data, no I/O.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from uuid import uuid4


class Verdict(enum.Enum):
    FORWARDED = "FORWARDED"
    DROPPED = "DROPPED"


class DropKind(enum.Enum):
    """Why a frame was dropped; POLICY carries the policy's name in DropReason.name."""

    NO_WIRE = "no wire"  # no connection admits this frame: the table-miss drop
    POLICY = "policy"
    RATE_LIMIT = "rate limit"  # over a connection's meter
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class DropReason:
    kind: DropKind
    name: str = ""  # the policy's name, for POLICY; the limit ("10Mbit/s"), for RATE_LIMIT

    def __str__(self) -> str:
        return f"{self.kind.value} {self.name}" if self.name else self.kind.value


class Direction(enum.Enum):
    TO_ENDPOINT = "to-endpoint"  # client → endpoint: the request direction
    TO_CLIENT = "to-client"  # endpoint → client: the reply direction
    UNKNOWN = "unknown"  # a frame on no wire


@dataclass(frozen=True)
class WireRef:
    """The connection a frame travelled on, as far as the observation point names it."""

    connection_id: str
    network_service: str
    namespace: str
    client: str
    endpoint: str
    hop: int = 0  # index of the chain hop (0: the first endpoint the client reaches)


@dataclass(frozen=True)
class Workload:
    """A frame's source or destination: a pod (or NSM client/endpoint) and its Kubernetes labels."""

    namespace: str
    pod_name: str
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def label_strings(self) -> tuple[str, ...]:
        """Labels as Hubble writes a pod's, with their source: "k8s:key=value"."""
        return tuple(f"k8s:{key}={value}" for key, value in self.labels)


@dataclass(frozen=True)
class Ethernet:
    source: str
    destination: str
    ethertype: int = 0


@dataclass(frozen=True)
class IPHeader:
    source: str
    destination: str
    version: int  # 4 or 6


TCP_FLAGS = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")


@dataclass(frozen=True)
class Layer4:
    """protocol is one of TCP, UDP, SCTP, ICMPv4, ICMPv6; ports for the first three, type and
    code for ICMP, flags (names from TCP_FLAGS) for TCP."""

    protocol: str
    source_port: int = 0
    destination_port: int = 0
    tcp_flags: frozenset[str] = frozenset()
    icmp_type: int = 0
    icmp_code: int = 0


@dataclass(frozen=True)
class ObservationPoint:
    """Where the sample came from: the IPFIX observation domain and point ids of the sample action."""

    domain_id: int
    point_id: int


# Event uuids: a random version-4 UUID drawn once per process, its last 48 bits replaced by a count
# of events: unique, shaped like Hubble's, and a fifth of uuid4()'s cost per event.
_UUID_PREFIX = str(uuid4())[:24]
_UUID_COUNT = itertools.count()


def new_uuid() -> str:
    """A uuid for a new event, unique in this process and, at random, across processes."""
    return f"{_UUID_PREFIX}{next(_UUID_COUNT) & 0xFFFF_FFFF_FFFF:012x}"


@dataclass(frozen=True)
class FlowEvent:
    time: float  # unix seconds
    node: str  # the switch that sampled the frame
    verdict: Verdict
    wire: WireRef | None = None
    direction: Direction = Direction.UNKNOWN
    drop_reason: DropReason | None = None
    ethernet: Ethernet | None = None
    ip: IPHeader | None = None
    l4: Layer4 | None = None
    sampling_rate: int = 1  # one frame in this many was sampled
    observation: ObservationPoint | None = None
    source: Workload | None = None
    destination: Workload | None = None
    # Frames the event stands for: 1 for a sampled frame; for a meter's drops (no headers, no
    # sample), how many it dropped since the last counter read.
    frames: int = 1
    # Hubble's Flow.uuid: drawn once, when the event is made, so every reader sees the same one.
    # An identity, not content: two samples of equal frames are still equal events.
    uuid: str = field(default_factory=new_uuid, compare=False)

    @property
    def protocol(self) -> str:
        """The L4 protocol's name in lower case ("tcp", "icmpv4"), else "ip" or "ethernet"."""
        if self.l4 is not None:
            return self.l4.protocol.lower()
        return "ip" if self.ip is not None else "ethernet"
