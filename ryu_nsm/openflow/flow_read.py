"""Flow stats replies read at size: raw entries, each distinct flow decoded once.

An audit reads every flow of every switch and counters read table 0 every few seconds. os-ken's
parser costs ~200 µs a flow and the FlowSpec decode another ~90, so at 10,000 connections (180,000
flows) one audit was a minute of CPU and the switches' echo requests went unanswered. Here os-ken
leaves each flow stats entry as bytes (``keep_flow_stats_raw``) and ``FlowReader`` decodes an entry
only when its bytes, less the counters and the age, were not in that switch's previous read: an
audit that finds what it expects costs a slice and a dictionary hit per flow, and hands the core
the same FlowSpec objects as last time; the flows it programmed, the very objects of its plan.
An entry it has not seen (the first read after a restart) is decoded by ``wire_decode`` straight
from its bytes, and by os-ken only when it is in none of the shapes ryu-nsm writes. A whole read
whose every entry is one of the last whole read's gets that read's very list back, and the core
skips a switch it knows unchanged by that identity (an idle audit's core work at 10,000
connections went from 0.29 s to 3 ms a round). Any other whole read says what it found that the last
did not and what it no longer found (``FlowsRead``), and the core takes only those
(``core/switch_reads.py``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from os_ken.ofproto import ofproto_v1_3_parser as parser

from ryu_nsm.core.flowspec import FlowSpec
from ryu_nsm.core.switch_reads import FlowsRead
from ryu_nsm.openflow.wire import FlowStats, RawFlowStats, decode_flow_stats
from ryu_nsm.openflow.wire_decode import decode_spec

# ofp_flow_stats: length, table_id, pad, duration (sec, nsec) at 4, priority … cookie at 12..32,
# packet and byte counts at 32..48, then match and instructions.
_DURATION = struct.Struct("!II")
_COUNTS = struct.Struct("!QQ")


def keep_flow_stats_raw() -> None:
    """Make os-ken hand flow stats bodies over as RawFlowStats (this process, from now on)."""
    parser.OFPFlowStatsReply.cls_stats_body_cls = RawFlowStats


def _identity(buf: bytes) -> bytes:
    """The entry without what changes while the flow stays the same (its age and counters)."""
    return buf[2:4] + buf[12:32] + buf[48:]


class FlowReader:
    """Per switch, the decode of each entry seen in its last read, by the entry's identity bytes."""

    def __init__(self) -> None:
        self._seen: dict[int, dict[bytes, FlowSpec | None]] = {}
        # Per switch, bumped whenever an entry joins what was seen other than by a whole read (a seed,
        # a counter read's new entry): while unchanged, the seen entries are exactly the last whole
        # read's, whose specs are kept as (generation, list).
        self._generation: dict[int, int] = {}
        # Per switch, the last whole read: (generation, its specs, what it saw by identity).
        self._whole: dict[int, tuple[int, FlowsRead, dict[bytes, FlowSpec | None]]] = {}
        self._serial = 0

    def specs(self, dpid: int, entries: Iterable[RawFlowStats]) -> FlowsRead:
        """The FlowSpecs of a whole read, in the switch's order: the very list of the last whole read
        when every entry is one of that read's and nothing was seeded since, so the core can tell
        an unchanged switch by identity (``Controller.flows_read``); else with the specs it found
        that the last whole read did not, and those it no longer found."""
        generation = self._generation.get(dpid, 0)
        known, now, taken, decoded = self._look_up(dpid, entries)
        last = self._whole.get(dpid)
        if not decoded and len(now) == len(known) and last is not None and last[0] == generation:
            self._seen[dpid] = now
            return last[1]  # every entry was known, and as many as were known: the last read's
        self._seen[dpid] = now.copy()  # seeds and counter reads add to it; the delta needs it as read
        self._serial += 1
        specs = [spec for _, spec in taken]
        if last is None:
            out = FlowsRead(specs, self._serial)
        else:
            before = last[2]
            new = [spec for ident, spec in now.items() if ident not in before]
            added, gone = tuple(spec for spec in new if spec is not None), ()
            if len(now) - len(new) != len(before):  # some of the last read's entries are not here
                gone = tuple(spec for ident, spec in before.items() if ident not in now and spec is not None)
            out = FlowsRead(specs, self._serial, last[1].serial, added, gone)
        self._whole[dpid] = (generation, out, now)
        return out

    def read(self, dpid: int, entries: Iterable[RawFlowStats], whole: bool) -> list[FlowStats]:
        """The entries as FlowStats, in the switch's order (undecodable ones left out, as
        ``decode_flow_stats`` does). ``whole``: this read holds every flow of the switch, so what it
        lacks is forgotten; a read of some tables only adds to what is known."""
        known, now, taken, _ = self._look_up(dpid, entries)
        out = []
        for buf, spec in taken:
            seconds, nanos = _DURATION.unpack_from(buf, 4)
            packets, byte_count = _COUNTS.unpack_from(buf, 32)
            out.append(FlowStats(spec, packets, byte_count, seconds + nanos / 1e9))
        if whole:
            self._seen[dpid] = now
            self._bump(dpid)  # not ``specs``: its kept list no longer matches what was seen
        else:
            if not now.keys() <= known.keys():
                self._bump(dpid)
            known.update(now)
            self._seen[dpid] = known
        return out

    def _look_up(self, dpid: int, entries: Iterable[RawFlowStats]) -> tuple[
            dict[bytes, FlowSpec | None], dict[bytes, FlowSpec | None], list[tuple[bytes, FlowSpec]], int]:
        """(what was seen of the switch, what this read saw, (entry bytes, spec) of the entries that
        have one in the read's order, how many entries were decoded afresh)."""
        known = self._seen.get(dpid, {})
        now: dict[bytes, FlowSpec | None] = {}
        taken = []
        decoded = 0
        for entry in entries:
            buf = entry.buf
            ident = _identity(buf)
            spec = known.get(ident, _UNKNOWN)
            if spec is _UNKNOWN:
                decoded += 1
                spec = _decode(entry)
            now[ident] = spec
            if spec is not None:
                taken.append((buf, spec))
        return known, now, taken, decoded

    def expect(self, dpid: int, flow_mod: bytes, spec: FlowSpec) -> None:
        """``flow_mod`` (an add of ``spec``) was sent to the switch: when it reads back in the same
        bytes, it is ``spec`` itself (decode(encode(spec)) == spec, tests/test_ofwire.py), so the core
        compares it to its plan by identity. The worker calls this while the core-calls thread reads:
        a seed put in a dict that a whole read then replaces is lost, which costs one decode, never a
        wrong result."""
        body = memoryview(flow_mod)[8:]  # after the OpenFlow header: ofp_flow_mod's fields
        ident = b"".join((body[16:17], b"\0", body[22:24], body[18:22], body[36:38], b"\0\0\0\0", body[0:8],
                          body[40:]))
        self._seen.setdefault(dpid, {})[ident] = spec
        self._bump(dpid)

    def _bump(self, dpid: int) -> None:
        self._generation[dpid] = self._generation.get(dpid, 0) + 1


def _decode(entry: RawFlowStats) -> FlowSpec | None:
    spec = decode_spec(entry.buf)
    if spec is None:  # not in wire.py's shapes: os-ken's path decodes it or words why not
        decoded = decode_flow_stats([entry])
        spec = decoded[0].spec if decoded else None
    return spec


_UNKNOWN = object()
