"""A wire's meter drops → DROPPED flow events with the reason "rate limit" (docs/observability.md).

The meter drops a frame before any action of its flow runs, so no IPFIX sample shows it: the
controller reads each meter's drop count with its periodic counters instead (core/meter_drops.py),
and each increase becomes one event that stands for ``frames`` frames. Such an event has the wire,
its ends and the direction, but no frame headers. Pure: the directory and the time are passed in.
"""

from __future__ import annotations

from collections.abc import Iterable

from ryu_nsm.core.meter_drops import MeterDrop
from ryu_nsm.core.sampling import wire_hash
from ryu_nsm.core.units import format_bandwidth
from ryu_nsm.observe.flow_events import Direction, DropKind, DropReason, FlowEvent, Verdict
from ryu_nsm.observe.ipfix_events import WireDirectory, wire_end


def meter_events(drops: Iterable[MeterDrop], directory: WireDirectory, now: float) -> list[FlowEvent]:
    """One DROPPED event per meter that dropped frames since the last read; a drop of a wire the
    directory does not know (it left the plan meanwhile) is left out."""
    out = []
    for drop in drops:
        wire = directory.wires.get(wire_hash(drop.connection))
        if wire is None or wire.connection_id != drop.connection:
            continue
        to_client = drop.side == "from_endpoint"
        out.append(FlowEvent(
            time=now, node=drop.switch, verdict=Verdict.DROPPED, wire=wire,
            direction=Direction.TO_CLIENT if to_client else Direction.TO_ENDPOINT,
            drop_reason=DropReason(DropKind.RATE_LIMIT, format_bandwidth(drop.rate_kbps * 1000)),
            source=wire_end(wire, to_client, directory), destination=wire_end(wire, not to_client, directory),
            frames=drop.frames))
    return out
