"""Flow events from IPFIX sampling: what the collector keeps up with, and what sampling costs.

On real netdev bridges: the triangle of the tests (tests/bridge_fabric.py; a client namespace on A,
a server on B, one connection over the direct link A–B) driven by ``ryu-nsm controller`` in a child
process with its IPFIX collector, every bridge exporting to it (ryu_nsm/lab/flow_sampling.py).
Names start with ``fxb``.

1. *collector*: with every frame sampled (``--flow-sampling 1``), iperf3 TCP through the wire; the
   figure is the flow events the collector handed to the flow store per second (Hubble's
   ServerStatus ``seen_flows``, before and after), its limit the IPFIX data records Open vSwitch
   sent in the same seconds (``ovs-ofctl dump-ipfix-flow``: ``tx pkts`` summed over the bridges).
   A ratio under 1 is records lost on the way (the socket's buffer overflowing while the collector
   is behind).
2. *sampling cost*: iperf3 throughput through the same wire with the wires sampled at 1/64 and at
   1, each against no sampling (``--no-flow-sampling``), all in the same run, one controller each
   (the flows are replaced when the next controller connects).

Figure lines on stdout, details on stderr. Usage (root, Open vSwitch up): ``flow_events.py
[--quick]``; the default runs iperf3 for 5 s each time, ``--quick`` for 2 s (about 40 s in all).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common import BenchFailure, figure, print_figures, sh

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the triangle and the echo requests live with the tests
CONN = "default/client/nsm-1"
TIMEOUT = 30.0


@contextmanager
def triangle_fabric() -> Iterator[tuple[object, Path, Path]]:
    """The triangle with the echo requests: (fabric, topology, requests); removed after."""
    from tests.bridge_fabric import triangle
    from tests.echo_requests import write_echo_requests

    net = triangle("fxb")
    net.remove()
    with tempfile.TemporaryDirectory(prefix="flow-events-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            topo, _ = net.build(tmp)
            a, b = net.bridges[:2]
            yield net, topo, write_echo_requests(tmp / "requests", f"{a}/{a}-c", f"{b}/{b}-s")
        finally:
            net.remove()


@contextmanager
def controller(net, topo: Path, requests: Path, args: list[str]) -> Iterator[object]:
    """The controller with ``args``, the bridges connected to it and the connection up."""
    from ryu_nsm.lab.controller_process import ControllerProcess

    with ControllerProcess(topo, [requests], topo.parent / "ctl.log", extra_args=args) as ctl:
        net.connect(ctl.of_port)
        try:
            ctl.wait_connections(lambda cs: cs.get(CONN, {}).get("state") == "up", TIMEOUT)
        except AssertionError as exc:
            raise BenchFailure(f"connection not up: {exc}") from None
        yield ctl


def iperf(net, seconds: float) -> float:
    """TCP bit/s from client to server (the receiver's count)."""
    ns_c, ns_s, _ = net.namespaces
    server = subprocess.Popen(["ip", "netns", "exec", ns_s, "iperf3", "-s", "-1", "-B", net.server_ip],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            if ":5201" in sh("ip", "netns", "exec", ns_s, "ss", "-Hltn"):
                break
            subprocess.run(["sleep", "0.1"], check=True)
        out = subprocess.run(["ip", "netns", "exec", ns_c, "iperf3", "-c", net.server_ip, "-t", str(seconds),
                              "-J"], capture_output=True, text=True, timeout=seconds + 30)
        report = json.loads(out.stdout or "{}")
        if "error" in report or "end" not in report:
            raise BenchFailure(f"iperf3 did not run: {report.get('error', out.stderr)}")
        return report["end"]["sum_received"]["bits_per_second"]
    finally:
        server.kill()
        server.wait()


def exported(bridges) -> int:
    """IPFIX data records Open vSwitch has sent for the bridges' flow samples so far."""
    total = 0
    for bridge in bridges:
        text = sh("ovs-ofctl", "-O", "OpenFlow13", "dump-ipfix-flow", bridge)
        total += sum(int(n) for n in re.findall(r"tx pkts=(\d+)", text))
    return total


def seen(hubble: str) -> int:
    """Flow events the controller's store has taken (Hubble's ServerStatus)."""
    import grpc

    from hubble_api import observer_pb2, observer_pb2_grpc

    with grpc.insecure_channel(hubble) as channel:
        return observer_pb2_grpc.ObserverStub(channel).ServerStatus(observer_pb2.ServerStatusRequest(),
                                                                   timeout=10).seen_flows


def run(net, topo: Path, requests: Path, extra: list[str], seconds: float) -> tuple[float, int, int]:
    """One controller with ``extra`` flags: (iperf3 bit/s, IPFIX messages exported, flow events kept)."""
    from ryu_nsm.lab.controller_process import free_port, wait_for
    from ryu_nsm.lab.flow_sampling import collector_sets

    ipfix, hubble = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    args = ["--ipfix-listen", ipfix, "--hubble-listen", hubble, *extra]
    # New collector sets for each controller: OVS sends its templates when an exporter starts (and
    # then every 10 minutes), and a new collector knows none.
    with controller(net, topo, requests, args), collector_sets(net.bridges, ipfix):
        records, events = exported(net.bridges), seen(hubble)
        rate = iperf(net, seconds)
        # The last datagrams in flight reach the collector within a moment.
        wait_for(lambda: seen(hubble) - events >= exported(net.bridges) - records, 2, 0.1)
        return rate, exported(net.bridges) - records, seen(hubble) - events


def bench(seconds: float) -> list[str]:
    rates: dict[str, float] = {}
    with triangle_fabric() as (net, topo, requests):
        for name, extra in (("none", ["--no-flow-sampling"]), ("1/64", ["--flow-sampling", "1/64"]),
                            ("1", ["--flow-sampling", "1"])):
            rates[name], records, events = run(net, topo, requests, extra, seconds)
            print(f"sampling {name}: {rates[name] / 1e6:.0f} Mbit/s, {records} IPFIX messages exported, "
                  f"{events} flow events", file=sys.stderr)
    if not records:
        raise BenchFailure("Open vSwitch exported no IPFIX message with every frame sampled")
    lines = [figure("flow events, collector vs Open vSwitch export, sampling 1", events / seconds,
                    "records/s", records / seconds, "records/s", "exported")]
    for name in ("1/64", "1"):
        lines.append(figure(f"iperf3 through a sampled wire, sampling {name}", rates[name] / 1e6, "Mbit/s",
                            rates["none"] / 1e6, "Mbit/s", "no sampling"))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="iperf3 for 2 s each time instead of 5")
    opts = parser.parse_args(argv)
    return print_figures("flow events", lambda: bench(2 if opts.quick else 5),
                         (RuntimeError, OSError, subprocess.TimeoutExpired))


if __name__ == "__main__":
    sys.exit(main())
