"""Link probes from the shell: packet-outs that come back as packet-ins, timed.

A link probe leaves one switch by a fabric port and comes back from the far switch; a loop probe
goes straight back from the switch it was sent to, which times the control path's own share
(``qos.measure`` subtracts it). A mixin of ``shell.NsmApp``: it uses the app's datapaths, lock,
core and ``_later``.
"""

from __future__ import annotations

import struct
import time

from os_ken.controller import ofp_event
from os_ken.controller.handler import MAIN_DISPATCHER, set_ev_cls
from os_ken.ofproto import ofproto_v1_3 as ofp

from ryu_nsm.core.controller import SendProbe
from ryu_nsm.qos.measure import PROBE_ETH_TYPE

# Probe frames: locally administered addresses, our ethertype, a magic word and the sequence number.
_PROBE_HEAD = bytes.fromhex("024e00000001" "024e00000002") + struct.pack("!H", PROBE_ETH_TYPE)
_PROBE = struct.Struct("!II")
_PROBE_MAGIC = 0x4E50524F  # "NPRO": out of a fabric port, back from the far switch
_LOOP_MAGIC = 0x4E4C4F4F  # "NLOO": straight back from the switch it was sent to


class LinkProbes:
    """Sends probes and takes their packet-ins (``NsmApp`` sets ``_loops`` and ``_loop_seq``)."""

    def _send_probes(self, probes: list[SendProbe]) -> None:
        """Loop a probe through each switch (packet-out straight back as packet-in: the control path's
        own share of a link probe's time), then send the link probes; note when each left."""
        sent = []
        for dpid in sorted({probe.dpid for probe in probes}):
            self._loop_seq = (self._loop_seq + 1) & 0xFFFFFFFF
            if self._packet_out(dpid, ofp.OFPP_CONTROLLER, _LOOP_MAGIC, self._loop_seq):
                self._loops[self._loop_seq] = (dpid, time.monotonic())
        for probe in probes:
            if self._packet_out(probe.dpid, probe.port, _PROBE_MAGIC, probe.seq):
                sent.append((probe.seq, time.monotonic()))
        with self.lock:
            for seq, at in sent:
                self.core.probe_sent(seq, at)
        while len(self._loops) > 10_000:  # answers that never came
            self._loops.pop(next(iter(self._loops)))

    def _packet_out(self, dpid: int, port: int, magic: int, seq: int) -> bool:
        dp = self.datapaths.get(dpid)
        if dp is None:
            return False
        parser = dp.ofproto_parser
        frame = _PROBE_HEAD + _PROBE.pack(magic, seq) + bytes(46 - _PROBE.size)
        dp.send_msg(parser.OFPPacketOut(dp, buffer_id=ofp.OFP_NO_BUFFER, in_port=ofp.OFPP_CONTROLLER,
                                        actions=[parser.OFPActionOutput(port)], data=frame))
        return True

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev):
        now = time.monotonic()
        msg = ev.msg
        data = bytes(msg.data)
        if len(data) < 14 + _PROBE.size or struct.unpack_from("!H", data, 12)[0] != PROBE_ETH_TYPE:
            return
        magic, seq = _PROBE.unpack_from(data, 14)
        dpid = msg.datapath.id
        if magic == _PROBE_MAGIC:
            in_port = msg.match.get("in_port")
            self._later(lambda _: self.core.probe_received(dpid, in_port, seq, now) or [])
        elif magic == _LOOP_MAGIC and seq in self._loops:
            looped, sent = self._loops.pop(seq)
            if looped == dpid:
                self._later(lambda _: self.core.control_rtt(dpid, now - sent) or [])
