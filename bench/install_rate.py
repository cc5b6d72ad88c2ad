"""Flow install rate on a real Open vSwitch bridge, against ovs-ofctl --bundle on the same bridge.

On a fresh netdev bridge, N distinct wire flows (table FORWARD: in_port + vlan_vid → set vlan,
output) are installed, the bridge cleared between runs, by:
  (a) ``ovs-ofctl --bundle add-flows`` from a file of ``FlowSpec.to_ofctl()`` lines: the limit;
  (b) ryu-nsm: ofwire encoding + bundles + ``Datapath.send(bytes)``, timed from the start of
      encoding to the barrier reply;
  (c) os-ken's object API: one OFPFlowMod per flow through ``send_msg``, then a barrier.
Each run is checked to leave exactly N flows on the bridge and no switch errors; a failed check
exits 1. The best of ``--repeat`` runs counts. Run as root with Open vSwitch up:

    .venv/bin/python bench/install_rate.py [--flows 20000] [--repeat 3] [--bundle-size 0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Callable

from common import BenchFailure, flow_count, ofctl, sh
from os_ken.ofproto import ofproto_v1_3 as ofp

from ryu_nsm.core.flowspec import VID_PRESENT, FlowSpec, Priority, Table, wire_cookie
from ryu_nsm.openflow import wire as ofwire
from ryu_nsm.openflow.launch import ProbeApp, run_apps, send_bytes

TIMEOUT = 60.0
VIDS = 4000






def wire_flows(first: int, n: int) -> list[FlowSpec]:
    """``n`` distinct transit flows of wires, numbered from ``first`` (so runs do not repeat flows)."""
    specs = []
    for i in range(first, first + n):
        specs.append(FlowSpec.make(
            Table.FORWARD,
            Priority.WIRE,
            {"in_port": 1 + i // VIDS, "vlan_vid": VID_PRESENT | (1 + i % VIDS)},
            [("set_field", "vlan_vid", VID_PRESENT | (1 + i * 7 % VIDS)), ("output", 1 + i % 48)],
            cookie=wire_cookie(f"bench-{i // 2}"),
        ))
    return specs


class Bench:
    """One bridge connected to a ProbeApp, and the three ways to fill it."""

    def __init__(self, bridge: str, probe: ProbeApp, datapath, bundle_size: int) -> None:
        self.bridge = bridge
        self.probe = probe
        self.datapath = datapath
        self.bundle_size = bundle_size
        self.next_xid = 1

    def xids(self, n: int) -> int:
        first = self.next_xid
        self.next_xid += n
        return first

    def by_ofctl(self, specs: list[FlowSpec]) -> float:
        with tempfile.NamedTemporaryFile("w", suffix=".flows") as flows:
            flows.write("".join(spec.to_ofctl() + "\n" for spec in specs))
            flows.flush()
            start = time.perf_counter()
            ofctl("--bundle", "add-flows", self.bridge, flows.name)
            return time.perf_counter() - start

    def by_ryu_nsm(self, specs: list[FlowSpec]) -> float:
        first = self.xids(len(specs) + len(specs) // max(self.bundle_size, 1) + 2)
        start = time.perf_counter()
        messages = ofwire.encode_flow_mods(specs, ofwire.OFPFC_ADD, first)
        size = self.bundle_size or len(messages)
        control = first + len(messages)
        for offset in range(0, len(messages), size):
            send_bytes(self.datapath, ofwire.encode_bundle(control, messages[offset:offset + size], control))
            control += 1
        send_bytes(self.datapath, ofwire.encode_barrier(control))
        self.probe.wait_reply(control, timeout=TIMEOUT)
        elapsed = time.perf_counter() - start
        errors = self.probe.errors_for(range(first, control + 1))
        if errors:
            raise BenchFailure(f"switch errors on the ryu-nsm install: {errors[:3]}")
        return elapsed

    def by_osken_objects(self, specs: list[FlowSpec]) -> float:
        dp = self.datapath
        parser = dp.ofproto_parser
        start = time.perf_counter()
        for spec in specs:
            actions = [parser.OFPActionSetField(vlan_vid=spec.actions[0][2]),
                       parser.OFPActionOutput(spec.actions[1][1], 0)]
            dp.send_msg(parser.OFPFlowMod(
                dp, cookie=spec.cookie, table_id=spec.table, command=ofp.OFPFC_ADD, priority=spec.priority,
                buffer_id=ofp.OFP_NO_BUFFER, out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
                match=parser.OFPMatch(**spec.match_dict()),
                instructions=[parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)],
            ))
        barrier = parser.OFPBarrierRequest(dp)
        dp.send_msg(barrier)
        self.probe.wait_reply(barrier.xid, timeout=TIMEOUT)
        elapsed = time.perf_counter() - start
        if self.probe.errors:
            raise BenchFailure(f"switch errors on the os-ken object install: {self.probe.errors[:3]}")
        return elapsed

    def run(self, method: Callable[[list[FlowSpec]], float], specs: list[FlowSpec]) -> float:
        """Clear the bridge, install ``specs`` with ``method``, check the bridge holds exactly them."""
        ofctl("del-flows", self.bridge)
        if flow_count(self.bridge):
            raise BenchFailure("the bridge still has flows after del-flows")
        elapsed = method(specs)
        held = flow_count(self.bridge)
        if held != len(specs):
            raise BenchFailure(f"{method.__name__}: the bridge holds {held} flows, not {len(specs)}")
        return elapsed


def measure(n: int, repeat: int, bundle_size: int) -> dict[str, float]:
    """Best install rate (flows/s) of each method over ``repeat`` runs, on a bridge of its own."""
    bridge = "rnb" + uuid.uuid4().hex[:8]
    sh("ovs-vsctl", "add-br", bridge, "--", "set", "bridge", bridge, "datapath_type=netdev",
       "protocols=OpenFlow13", "fail_mode=secure")
    try:
        with run_apps([ProbeApp]) as run:
            probe = run.app(ProbeApp)
            sh("ovs-vsctl", "set-controller", bridge, f"tcp:{run.host}:{run.port}")
            dpid = int(sh("ovs-vsctl", "get", "bridge", bridge, "datapath_id").strip().strip('"'), 16)
            bench = Bench(bridge, probe, probe.wait_datapath(dpid, timeout=TIMEOUT), bundle_size)
            methods = {"ovs-ofctl --bundle": bench.by_ofctl, "ryu-nsm bundle": bench.by_ryu_nsm,
                       "os-ken OFPFlowMod objects": bench.by_osken_objects}
            best = dict.fromkeys(methods, 0.0)
            first = 0
            for attempt in range(repeat):
                for name, method in methods.items():
                    rate = n / bench.run(method, wire_flows(first, n))
                    first += n
                    best[name] = max(best[name], rate)
                    print(f"run {attempt + 1} {name}: {rate:.0f} flows/s", file=sys.stderr)
            sh("ovs-vsctl", "del-controller", bridge)
            return best
    finally:
        sh("ovs-vsctl", "--if-exists", "del-br", bridge)


def main(argv: list[str] | None = None) -> int:
    """Measure, print one line per ryu-nsm path against the ovs-ofctl limit; 1 if a check failed."""
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--flows", type=int, default=20000, help="flows per install (default 20000)")
    args.add_argument("--repeat", type=int, default=3, help="runs of each method; the best counts")
    args.add_argument("--bundle-size", type=int, default=0,
                      help="flow mods per bundle for ryu-nsm (default 0: all in one bundle)")
    opts = args.parse_args(argv)
    try:
        best = measure(opts.flows, opts.repeat, opts.bundle_size)
    except (BenchFailure, TimeoutError) as exc:
        print(f"flow install benchmark FAILED: {exc}", file=sys.stderr)
        return 1
    limit = best["ovs-ofctl --bundle"]
    for name in ("ryu-nsm bundle", "os-ken OFPFlowMod objects"):
        print(f"flow install ({name}): {best[name]:.0f} flows/s "
              f"(limit {limit:.0f} flows/s ovs-ofctl --bundle, ratio {best[name] / limit:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
