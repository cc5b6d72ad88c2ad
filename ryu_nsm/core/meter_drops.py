"""Frames over a wire's rate limit, from its meters' band drop counts (docs/observability.md).

A meter drop is no flow action, so no ``sample`` action sees it; Open vSwitch counts it in the
meter's drop band instead. Each counter read asks for those counts, and every increase of a
wire's meter is one ``MeterDrop``: how many frames it dropped since the last read. Pure: the plan
and the counts are passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ryu_nsm.core.flowspec import is_our_meter
from ryu_nsm.core.plan import Plan

SIDES = ("from_client", "from_endpoint")  # a wire's meters: at the client's end, then the endpoint's


@dataclass(frozen=True)
class MeterDrop:
    """``frames`` dropped by ``connection``'s meter on ``switch`` since the last read."""

    connection: str
    switch: str
    meter_id: int
    side: str  # "from_client" (frames towards the endpoint) or "from_endpoint"
    rate_kbps: int  # the limit they were over
    frames: int


class MeterDropCounter:
    """Each switch's meter drop counts as last read, and what they added up to per connection."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, int], int] = {}  # (switch, meter id) → packets dropped, as read
        self.totals: dict[str, dict[str, int]] = {}  # connection → side → frames dropped since start

    def read(self, switch: str, dropped: Mapping[int, int], plan: Plan) -> list[MeterDrop]:
        """The increases since the last read of ``switch``'s meters (meter id → packets its band
        dropped). A meter's first reading is where it starts from, not a drop: it may hold the
        drops of an earlier controller. A count that went down is a meter made again since: all of
        it is new."""
        meters = {spec.meter_id: (pc.id, SIDES[i], spec.rate_kbps)
                  for pc in plan.connections.values()
                  for i, (where, spec) in enumerate(pc.meters[:2]) if where == switch}
        out = []
        for meter_id, count in sorted(dropped.items()):
            if not is_our_meter(meter_id):
                continue
            before = self._last.get((switch, meter_id))
            self._last[(switch, meter_id)] = count
            wire = meters.get(meter_id)
            if before is None or wire is None or count == before:
                continue
            frames = count - before if count > before else count
            cid, side, rate = wire
            sides = self.totals.setdefault(cid, {})
            sides[side] = sides.get(side, 0) + frames
            out.append(MeterDrop(cid, switch, meter_id, side, rate, frames))
        for key in [k for k in self._last if k[0] == switch and k[1] not in dropped]:
            del self._last[key]  # deleted meters: an id used again starts afresh
        for cid in [c for c in self.totals if c not in plan.connections]:
            del self.totals[cid]
        return out


def metered_switches(plan: Plan) -> frozenset[str]:
    """The switches whose counter reads ask for meter counts: a wire is policed there."""
    return frozenset(where for pc in plan.connections.values() for where, _ in pc.meters)
