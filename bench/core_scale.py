"""One more request at size, in the controller's pure core: no OVS, no sockets, what the core costs.

A fat-tree (k=8 by default: 80 switches) carries N connections, up and confirmed: a sixth of them
are clients across pods onto a client → firewall → dpi → gateway chain (each client wire brings a
firewall → dpi and a dpi → gateway wire), the other half clients onto eight plain services. The
switches are emulated the way the shell drives the core (connect, read flows, program, confirm).
Then REQUESTS single client requests arrive one at a time, each on the full declared state plus
itself, and the core's work for each is timed: plan and diff (``set_resources``), the barrier
confirmation (``program_done``), the status (``status()`` rendered by a long-lived
``StatusRenderer``), the metrics exposition of that status and the Kubernetes desired status
(``desired_connections``), each with a long-lived memo as the status endpoint and writer keep. The limit is
the same request, the same steps, on a controller that holds nothing else (the same fabric,
services and endpoints): the ratio says how much of a change's cost comes from the connections
already there.

Also: the memory per connection (tracemalloc of the controller loading N, against its flows'
OpenFlow flow-mod bytes), and the CPU of the core's idle work per second of wall time at that size
(a tick and a probe round every second, counters every 5 s, an audit every 30 s, as the shell runs
them, after a first audit that plans with the tags it reads back) against the design bound of 10 %
of one core. Times are CPU time of this process (``time.process_time``): the machine is shared.
The garbage collector is set as the controller process sets it (``wiring.tune_gc``).

Usage: ``core_scale.py [--quick] [--connections N] [--k K]``; ``--quick`` is k=4, 200 connections.
"""

from __future__ import annotations

import argparse
import gc
import struct
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, replace

from common import figure, percentile, print_figures
from os_ken.ofproto import ofproto_v1_3_parser

from ryu_nsm.core.controller import Controller, PortInfo, Program, ReadFlows
from ryu_nsm.core.fabric import Fabric, Host, HostInterface
from ryu_nsm.core.flowspec import FlowSpec
from ryu_nsm.core.model import (
    ClientRequest,
    Destination,
    Endpoint,
    Match,
    NetworkService,
    Resources,
)
from ryu_nsm.core.reconcile import SwitchDiff, apply
from ryu_nsm.core.values import FrozenMap
from ryu_nsm.k8s.connection_status import DesiredMemo, desired_connections
from ryu_nsm.observe.metrics import ExpositionMemo, exposition
from ryu_nsm.observe.report import StatusRenderer
from ryu_nsm.openflow.wire import OFPFC_ADD, decode_flow_stats, encode_flow_mod
from ryu_nsm.openflow.wire_decode import decode_spec
from ryu_nsm.sources.topology import fat_tree
from ryu_nsm.wiring import tune_gc

CHAIN = "secure-internet"
FUNCTIONS = ("firewall", "dpi", "gateway")
PLAIN = tuple(f"plain{i}" for i in range(8))
INSTANCES = 4  # of each function and each plain server
REQUESTS = 200
FIRST_HOST_PORT = 100
FIELD_OF = {"add": "adds", "modify": "modifies", "delete": "deletes"}
STEPS = ("plan and diff", "confirm", "status", "metrics", "k8s status")


@dataclass
class Workload:
    fabric: Fabric
    base: Resources  # the N connections
    setup: Resources  # services and endpoints only
    extra: tuple[ClientRequest, ...]  # the single requests, in arrival order


def _app(name: str) -> FrozenMap:
    return FrozenMap(app=name)


class _Ports:
    """Host interfaces, each on the next free port of its switch."""

    def __init__(self) -> None:
        self.next: dict[str, int] = {}
        self.interfaces: dict[str, list[HostInterface]] = {}

    def add(self, host: str, switch: str, ifname: str) -> HostInterface:
        port = self.next.get(switch, FIRST_HOST_PORT)
        self.next[switch] = port + 1
        intf = HostInterface(host, ifname, switch, port, f"p{port}")
        self.interfaces.setdefault(host, []).append(intf)
        return intf


def workload(k: int, n: int, extra: int) -> Workload:
    """N connections and ``extra`` single requests on fat-tree ``k`` (see the module docstring)."""
    fabric = fat_tree(k)
    edges = [f"e{pod}_{i}" for pod in range(k) for i in range(k // 2)]
    ports = _Ports()
    chain_clients = n // 6
    plain_clients = n - 3 * chain_clients
    per_function = -(-(chain_clients + extra) // INSTANCES)
    per_plain = -(-(plain_clients + extra) // (INSTANCES * len(PLAIN)))
    endpoints, requests = [], []
    # Functions in pods 1..3, plain servers on every edge in turn: every wire crosses switches.
    for f, name in enumerate(FUNCTIONS):
        for j in range(INSTANCES):
            host, switch = f"{name}{j}", f"e{f + 1}_{j % (k // 2)}"
            served = tuple(ports.add(host, switch, f"in{i}").attachment for i in range(per_function))
            endpoints.append(Endpoint(host, services=(CHAIN,), service_labels=FrozenMap({CHAIN: _app(name)}),
                                      attachments=served))
    for s, service in enumerate(PLAIN):
        for j in range(INSTANCES):
            host, switch = f"{service}-{j}", edges[(s * INSTANCES + j) * 3 % len(edges)]
            served = tuple(ports.add(host, switch, f"in{i}").attachment for i in range(per_plain))
            endpoints.append(Endpoint(host, services=(service,), attachments=served))
    # Each firewall and dpi asks for its next hop from one interface per client wire it serves.
    for i in range(chain_clients + extra):
        for f, name in enumerate(FUNCTIONS[:2]):
            host = f"{name}{i % INSTANCES}"
            intf = ports.add(host, f"e{f + 1}_{i % INSTANCES % (k // 2)}", f"out{i}")
            request = ClientRequest(host, intf.name, CHAIN, labels=_app(name), attachment=intf.attachment)
            (requests if i < chain_clients else []).append(request)
    client_edges = [e for e in edges if not e.startswith(("e1_", "e2_", "e3_"))]

    def client(i: int, service: str) -> ClientRequest:
        intf = ports.add(f"c{i:06d}", client_edges[i % len(client_edges)], "nsm0")
        return ClientRequest(intf.host, "nsm0", service, attachment=intf.attachment)

    half = extra // 2
    chained = [client(i, CHAIN) for i in range(chain_clients + half)]
    plain = [client(len(chained) + i, PLAIN[i % len(PLAIN)]) for i in range(plain_clients + extra - half)]
    requests += chained[:chain_clients] + plain[:plain_clients]
    # The single requests: alternately onto the chain (their functions' wires are declared with
    # them, as a function Pod's interface comes with the client it serves) and a plain service.
    extras = [c for pair in zip(chained[chain_clients:], plain[plain_clients:], strict=False) for c in pair]
    hosts = tuple(Host(h, tuple(i)) for h, i in ports.interfaces.items())
    fabric = replace(fabric, hosts=hosts)
    services = (NetworkService(CHAIN, matches=(
        Match(_app("firewall"), (Destination(_app("dpi")),)),
        Match(_app("dpi"), (Destination(_app("gateway")),)),
        Match(FrozenMap(), (Destination(_app("firewall")),)),
    )), *(NetworkService(s) for s in PLAIN))
    base = Resources(services, tuple(endpoints), tuple(requests))
    return Workload(fabric, base, Resources(services, tuple(endpoints)), tuple(extras[:extra]))


class Switches:
    """Each switch's flows, changed as a program's phases say; confirms every program whole."""

    def __init__(self, fabric: Fabric):
        self.fabric = fabric
        self.tables: dict[str, frozenset[FlowSpec]] = {s.name: frozenset() for s in fabric.switches}

    def ports(self, switch: str) -> list[PortInfo]:
        return [PortInfo(p, name, True) for (sw, name), p in self.fabric.port_names.items() if sw == switch]

    def run(self, ctl: Controller, commands: list, now: float) -> None:
        queue = list(commands)
        while queue:
            cmd = queue.pop(0)
            if isinstance(cmd, ReadFlows):
                queue += ctl.flows_read(cmd.switch, self.tables[cmd.switch], now, cmd.epoch)
            elif isinstance(cmd, Program):
                self.carry_out(cmd)
                queue += ctl.program_done(cmd.id, cmd.diffs.keys(), now)

    def carry_out(self, program: Program) -> None:
        for phase, step in program.phases():
            if phase in FIELD_OF:
                for sw, ops in step.items():
                    self.tables[sw] = apply(self.tables[sw], SwitchDiff(**{FIELD_OF[phase]: ops}))

    def connect_all(self, ctl: Controller, now: float) -> None:
        for s in self.fabric.switches:
            self.run(ctl, ctl.switch_connected(s.dpid, self.ports(s.name), now), now)


def loaded(work: Workload, resources: Resources) -> tuple[Controller, Switches]:
    """A controller with ``resources`` up and confirmed on every switch."""
    ctl, switches = Controller(work.fabric), Switches(work.fabric)
    switches.connect_all(ctl, 0.0)
    switches.run(ctl, ctl.set_resources(resources, 1.0), 1.0)
    states = ctl.connection_states()
    down = [cid for cid, state in states.items() if state != "up"]
    if down:
        raise RuntimeError(f"{len(down)} of {len(states)} connections are not up, e.g. {down[:3]}")
    return ctl, switches


def one_request(ctl: Controller, switches: Switches, renderer: StatusRenderer, memos: tuple,
                resources: Resources, cid: str, now: float) -> dict[str, float]:
    """The core's work for one changed declared state, by step (seconds)."""
    took: dict[str, float] = {}
    t = time.process_time()
    commands = ctl.set_resources(resources, now)
    took["plan and diff"] = time.process_time() - t
    programs = [c for c in commands if isinstance(c, Program)]
    if len(programs) != 1 or len(commands) != 1:
        raise RuntimeError(f"one request gave {commands!r:.300}")
    switches.carry_out(programs[0])
    t = time.process_time()
    more = ctl.program_done(programs[0].id, programs[0].diffs.keys(), now)
    took["confirm"] = time.process_time() - t
    if more:
        raise RuntimeError(f"confirming the request gave {more!r:.300}")
    t = time.process_time()
    status = renderer.render(ctl.status())
    took["status"] = time.process_time() - t
    t = time.process_time()
    exposition(lambda: status, memos[0])
    took["metrics"] = time.process_time() - t
    t = time.process_time()
    desired_connections(status, "2026-01-01T00:00:00Z", memo=memos[1])
    took["k8s status"] = time.process_time() - t
    if ctl.connection_state(cid) != "up":
        raise RuntimeError(f"{cid} is {ctl.connection_state(cid)} after its program was confirmed")
    return took


def requests_one_by_one(ctl: Controller, switches: Switches, resources: Resources,
                        extra: tuple[ClientRequest, ...], cumulative: bool) -> list[dict[str, float]]:
    """Each extra request on top of ``resources`` (and, ``cumulative``, of those before it)."""
    renderer, memos = StatusRenderer(), (ExpositionMemo(), DesiredMemo())
    # A long-lived renderer, status endpoint and status writer have seen the state before.
    status = renderer.render(ctl.status())
    exposition(lambda: status, memos[0])
    desired_connections(status, "2026-01-01T00:00:00Z", memo=memos[1])
    out = []
    held = resources.requests
    for i, request in enumerate(extra):
        held = (*held, request) if cumulative else (*resources.requests, request)
        declared = replace(resources, requests=held)
        out.append(one_request(ctl, switches, renderer, memos, declared, request.id, 2.0 + i))
    return out


def idle_cpu(ctl: Controller, switches: Switches, seconds: int = 30) -> float:
    """CPU seconds of the core's periodic work over ``seconds`` of wall time, as the shell paces it."""
    # The first audit after loading finds the tags the switches now hold and plans with them once;
    # the idle state is what follows.
    switches.run(ctl, ctl.audit(), 999.0)
    fabric = switches.fabric
    dpids = {s.name: s.dpid for s in fabric.switches}
    peer = {(sw, port): link.peer_of(sw) for link in fabric.links for sw, port in
            ((link.a, link.a_port), (link.b, link.b_port))}
    start = time.process_time()
    now = 1000.0
    for second in range(seconds):
        now += 1.0
        if ctl.tick(now):
            raise RuntimeError("an idle tick changed something")
        for probe in ctl.probes(now):
            ctl.probe_sent(probe.seq, now)
            back, port = peer[(probe.switch, probe.port)]
            ctl.probe_received(dpids[back], port, probe.seq, now + 1e-4)
        if second % 5 == 0:
            for read in ctl.counters_due():
                stats = [(f, 0, 0) for f in switches.tables[read.switch] if f.table in read.tables]
                ctl.counters_read(read.switch, stats, now)
        if second == seconds - 1:
            switches.run(ctl, ctl.audit(), now)
    return time.process_time() - start


def memory_per_connection(work: Workload) -> tuple[float, float]:
    """(bytes the core holds per connection, OpenFlow flow-mod bytes of a connection's flows)."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    ctl, _ = loaded(work, work.base)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    n = len(ctl.plan.connections)
    wire = sum(len(encode_flow_mod(flow, OFPFC_ADD))
               for pc in ctl.plan.connections.values() for _, flow in pc.flows)
    return held / n, wire / n


def stats_entry(flow_mod: bytes) -> bytes:
    """The flow stats entry a switch reports for an added flow: its fields, counters, match and
    instructions as sent."""
    cookie, table, priority = struct.unpack_from("!8xQ8xB5xH", flow_mod)  # ofp_flow_mod's
    tail = flow_mod[48:]
    head = struct.pack("!HBxIIHHHH4xQQQ", 48 + len(tail), table, 30, 0, priority, 0, 0, 0, cookie, 1, 64)
    return head + tail


def decode_cost(switches: Switches) -> tuple[int, float, float, float]:
    """(flows, then CPU seconds a flow) to decode the busiest switch's flow stats as a restarted
    controller does, each entry afresh: ``wire_decode``; os-ken's parse alone; its parse and
    ``decode_flow_stats`` (the path before wire_decode)."""
    flows = list(max(switches.tables.values(), key=len))
    entries = [stats_entry(encode_flow_mod(flow, OFPFC_ADD)) for flow in flows]

    def timed(work: Callable[[], object]) -> tuple[object, float]:
        """The result and the best CPU time of 3 runs (the machine is shared), each without the
        collector: a full collection walks the whole loaded core, whichever step triggers it."""
        times = []
        for _ in range(3):
            gc.collect()
            gc.disable()
            try:
                t = time.process_time()
                out = work()
                times.append(time.process_time() - t)
            finally:
                gc.enable()
        return out, min(times)

    specs, fast = timed(lambda: [decode_spec(entry) for entry in entries])
    parsed, parse = timed(lambda: [ofproto_v1_3_parser.OFPFlowStats.parser(entry, 0) for entry in entries])
    decoded, decode = timed(lambda: decode_flow_stats(parsed))
    both = parse + decode
    if specs != flows or [stats.spec for stats in decoded] != flows:
        raise RuntimeError("a switch's flows did not decode back to themselves")
    return len(flows), fast / len(flows), parse / len(flows), both / len(flows)


def run(k: int, n: int, extra: int) -> list[str]:
    work = workload(k, n, extra)
    t = time.process_time()
    ctl, switches = loaded(work, work.base)
    size = len(ctl.plan.connections)
    flows = sum(len(t) for t in switches.tables.values())
    print(f"{size} connections up on {len(work.fabric.switches)} switches in "
          f"{time.process_time() - t:.1f} s of CPU, "
          f"{flows} flows ({flows // len(switches.tables)} per switch)", file=sys.stderr)
    at_size = requests_one_by_one(ctl, switches, work.base, work.extra, cumulative=True)
    empty, empty_switches = loaded(work, work.setup)
    alone = requests_one_by_one(empty, empty_switches, work.setup, work.extra, cumulative=False)

    def total(samples: list[dict[str, float]]) -> list[float]:
        return [sum(s.values()) * 1e3 for s in samples]

    for step in STEPS:
        ms = [s[step] * 1e3 for s in at_size]
        base = [s[step] * 1e3 for s in alone]
        print(f"  {step}: p50 {percentile(ms, 0.5):.2f} ms p99 {percentile(ms, 0.99):.2f} ms at {size}; "
              f"p50 {percentile(base, 0.5):.2f} ms alone", file=sys.stderr)
    limit = percentile(total(alone), 0.5)
    what = f"{size} connections, fat-tree k={k}"
    label = "the same request on an empty controller"
    lines = [figure(f"core work per request p{q}, {what}", percentile(total(at_size), q / 100), "ms",
                    limit, "ms", label) for q in (50, 99)]
    cpu = idle_cpu(ctl, switches)
    lines.append(figure(f"core idle CPU, {what}", cpu / 30 * 1e3, "ms/s", 100, "ms/s",
                        "design bound 10 % of one core"))
    held, wire = memory_per_connection(work)
    lines.append(figure(f"core memory per connection, {what}", held, "bytes", wire, "bytes",
                        "its flows as OpenFlow flow-mods"))
    count, fast, parse, both = decode_cost(switches)
    print(f"  decode of {count} flow stats entries: {fast * 1e6:.1f} us a flow; before, os-ken's parse "
          f"{parse * 1e6:.1f} us + decode = {both * 1e6:.1f} us ({both / fast:.0f}x)", file=sys.stderr)
    lines.append(figure(f"flow stats decode per flow, busiest switch, {what}", fast * 1e6, "us", parse * 1e6,
                        "us", "os-ken's OFPFlowStats.parser"))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="k=4, 200 connections, 20 requests (for tests)")
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=8)
    args = parser.parse_args(argv)
    tune_gc()  # as the controller process has it
    k, n, extra = (4, 200, 20) if args.quick else (args.k, args.connections, REQUESTS)
    return print_figures("core scale", lambda: run(k, n, extra), (RuntimeError,))


if __name__ == "__main__":
    sys.exit(main())
