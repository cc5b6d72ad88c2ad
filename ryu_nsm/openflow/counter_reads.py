"""Flow and meter counter reads from the shell, paced by what they cost.

Every ``counter_interval`` the core asks for the counters of each switch's ingress flows (and policy
gates, and meters); the replies are decoded off os-ken's loop and handed to the core. At size a read
of every switch is a fraction of a second of CPU (61,000 flows at 10,000 connections), so the next
read waits until the last one's cost is at most ``COUNTER_SHARE`` of a core: rates come less often
on a big fabric, and the idle load stays bounded. A mixin of ``shell.NsmApp``: it uses the app's
datapaths, lock, core, flow reader and core-calls queue.
"""

from __future__ import annotations

import logging
import time

from os_ken.controller import ofp_event
from os_ken.controller.handler import MAIN_DISPATCHER, set_ev_cls

from ryu_nsm.core.controller import ReadCounters
from ryu_nsm.core.flowspec import COOKIE_OWNER_MASK, PIPELINE_COOKIE
from ryu_nsm.openflow import wire as ofwire

log = logging.getLogger("ryu_nsm.openflow.shell")
COUNTER_SHARE = 0.02  # of a core, at most, for reading flow counters


class CounterReads:
    """Asks for counters and takes the replies (``NsmApp`` sets ``_counter_reads``, ``_meter_reads``,
    ``_counter_cpu`` and ``_counter_interval``)."""

    def _counters(self, msg) -> None:
        now = time.monotonic()
        answered = self._answered(self._counter_reads, "counters", msg)
        if answered is None:
            return
        read, entries = answered
        dpid = msg.datapath.id

        def counters_read() -> None:
            started = time.thread_time()
            read_back = self._flow_reader.read(dpid, entries, whole=False)
            stats = [(s.spec, s.bytes, s.packets) for s in read_back]
            self._call(lambda _: self.core.counters_read(read.switch, stats, now) or [])
            self._counter_cpu += time.thread_time() - started
        self.calls.put(counters_read)

    def _read_counters(self, read: ReadCounters) -> None:
        dp = self.datapaths.get(read.dpid)
        if dp is None:
            return
        for table in read.tables:
            xid = self._xid(f"flow counters request to {read.switch}")
            self._counter_reads[xid] = read
            dp.send(ofwire.encode_flow_stats_request(xid, PIPELINE_COOKIE, COOKIE_OWNER_MASK, table=table))
        if read.meters:
            xid = self._xid(f"meter stats request to {read.switch}")
            self._meter_reads[xid] = read
            dp.send(ofwire.encode_meter_stats_request(xid))
        for pending in (self._counter_reads, self._meter_reads):
            while len(pending) > 10_000:  # answers that never came
                pending.pop(next(iter(pending)))

    @set_ev_cls(ofp_event.EventOFPMeterStatsReply, MAIN_DISPATCHER)
    def _meter_stats(self, ev):
        answered = self._answered(self._meter_reads, "meters", ev.msg)
        if answered is None:
            return
        read, entries = answered

        def meters_read() -> None:  # off os-ken's loop, as every call that takes the lock (_later)
            with self.lock:
                drops = self.core.meters_read(read.switch, ofwire.decode_meter_drops(entries))
            if drops and self.settings.on_meter_drops is not None:
                self.settings.on_meter_drops(drops)
        self.calls.put(meters_read)

    def _counter_pace(self) -> float:
        """Seconds to the next counter read (see ``counter_pace``); the log says when it changes."""
        spent, self._counter_cpu = self._counter_cpu, 0.0
        pace = counter_pace(self.settings.counter_interval, spent)
        if abs(pace - self._counter_interval) > 0.2 * self._counter_interval:
            log.info("reading flow counters every %.1f s (the last read took %.0f ms of CPU)",
                     pace, spent * 1e3)
            self._counter_interval = pace
        return pace


def counter_pace(interval: float, spent: float) -> float:
    """``interval``, or longer where the last read's ``spent`` CPU seconds would be more than
    ``COUNTER_SHARE`` of a core over it."""
    return max(interval, spent / COUNTER_SHARE)
