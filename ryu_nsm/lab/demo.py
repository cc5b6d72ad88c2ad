"""``ryu-nsm demo``: a Mininet fabric, the controller, and the chain client → firewall → dpi → gateway.

Shows in plain words that the client's traffic passes each service function in order, that the
firewall really filters (telnet is dropped), that a MultiNetworkPolicy allowing only TCP 80 drops
telnet already at the client's switch (its drop flow counts it), that a host without a request
reaches nothing (flow events show its frames dropped), that a service level limits the chain's
rate and keeps its latency bound when a link gets slow (the link s1–s2 runs through an impairment
element), and that deleting the request stops the traffic. Cleans up after itself, also on Ctrl-C.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from ryu_nsm.lab.controller_process import ControllerProcess, free_port, wait_for
from ryu_nsm.lab.flow_sampling import add_collector_set, observe, observed, remove_collector_sets
from ryu_nsm.observe.report import render_text

CLIENT, INTRUDER, GATEWAY, GATEWAY_IP = "client", "intruder", "gateway", "10.0.0.254"
FUNCTIONS = ("firewall", "dpi")
CLIENT_WIRE = f"default/{CLIENT}/nsm-1"
SLOW_LINK = "s1-s2"  # the client's wire to the firewall; it runs through the impairment element
RATE_LIMIT = 20e6
# What the operator adds in step 7: each wire of the chain at most 20 Mbit/s each way, 10 ms of fabric
# latency, EF-marked.
SERVICE_LEVEL = """\
apiVersion: ryu-nsm.io/v1alpha1
kind: ServiceLevel
metadata: {name: secure-internet-gold}
spec:
  networkService: secure-internet
  rateLimit: 20M
  maxLatency: 10ms
  dscp: EF
"""
# What the operator adds in step 4 (examples/policy/tcp-80-only.yaml, without its comments).
POLICY = """\
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata:
  name: tcp-80-only
  annotations: {k8s.v1.cni.cncf.io/policy-for: secure-internet}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
    - ports: [{protocol: TCP, port: 80}]
"""


def say(text: str = "") -> None:
    print(text, flush=True)


def _seen(net) -> dict[str, int]:
    return {f: net.function_counters(f)["seen"].packets for f in FUNCTIONS}


def _dropped(net) -> int:
    return net.function_counters("firewall")["dropped"].packets


def _delta(before: dict[str, int], after: dict[str, int]) -> str:
    return ", ".join(f"{f} +{after[f] - before[f]}" for f in FUNCTIONS)


def run_demo(args) -> int:
    """Run the demo; returns 0 when every step showed what it should."""
    from ryu_nsm.lab.mininet_fabric import build_network, cleanup
    from ryu_nsm.sources.topology import load_topology

    def interrupted(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    work = Path(tempfile.mkdtemp(prefix="ryu-nsm-demo-"))
    requests = work / "requests"
    shutil.copytree(args.requests, requests)
    fabric = load_topology(args.topology)
    tls = _DemoTls(work) if getattr(args, "tls", False) else None
    ipfix, hubble = free_port(), f"127.0.0.1:{free_port()}"
    extra = [*(tls.controller_args if tls else ()), "--ipfix-listen", f"127.0.0.1:{ipfix}",
             "--hubble-listen", hubble]
    controller = ControllerProcess(args.topology, [requests], work / "controller.log", extra_args=extra,
                                   scheme="ssl" if tls else "tcp")
    net = None
    sets: list[str] = []
    failures: list[str] = []

    def check(ok: bool, good: str, bad: str) -> bool:
        say(("  ✔ " + good) if ok else ("  ✘ " + bad))
        if not ok:
            failures.append(bad)
        return ok

    try:
        cleanup()
        say(f"ryu-nsm demo — fabric {fabric.name}: "
            f"{len(fabric.switches)} switches, {len(fabric.links)} links")
        say(f"controller log: {controller.log_path}")
        if tls is not None:
            tls.set_ssl()
        controller.start()
        net = build_network(fabric, controller.of_port, impaired=[SLOW_LINK],
                            controller_protocol="ssl" if tls else "tcp")
        net.set_function_filter("firewall", drop_tcp_ports=[23])
        # Flow events: every bridge exports its samples to the controller's collector.
        sets += [add_collector_set(switch.name, f"127.0.0.1:{ipfix}") for switch in fabric.switches]
        say("waiting for the chain to come up …")
        controller.wait_connections(
            lambda cs: cs and all(c["state"] == "up" for c in cs.values()), timeout=60)
        say(render_text(controller.status()))
        say()
        if tls is not None:
            tls.show(fabric, check)

        _traffic_steps(net, check)
        _policy_step(controller, net, requests, check)
        _intruder_step(net, check, hubble)
        _service_level_steps(controller, net, requests, check)
        _deletion_step(controller, net, requests, check)
        errors = controller.errors()
        check(not errors, "no switch rejected anything the controller sent", f"switch errors: {errors}")
        if args.keep:
            say(f"running until Ctrl-C (ryu-nsm status --url {controller.url}; "
                f"ryu-nsm observe --server {hubble} --follow)")
            signal.pause()
    except KeyboardInterrupt:
        say("\ninterrupted: cleaning up")
        failures.append("interrupted")
    finally:
        remove_collector_sets(sets)  # before the bridges: a collector set holds its bridge
        if net is not None:
            net.stop()
        controller.stop()
        cleanup()
        if tls is not None:
            tls.restore_ssl()
    say()
    say("demo: all steps passed" if not failures else f"demo: {len(failures)} step(s) failed")
    return 0 if not failures else 1


class _DemoTls:
    """OpenFlow over TLS for the demo: a dev CA, SVIDs for the controller and for Open vSwitch under
    ``work``, and Open vSwitch's one (global) SSL configuration, set for the run and put back after."""

    def __init__(self, work: Path):
        from ryu_nsm.trust import devca

        ca = work / "ca"
        devca.init_ca(ca, "demo.ryu-nsm")
        devca.issue(ca, "spiffe://demo.ryu-nsm/controller", work / "controller")
        devca.issue(ca, "spiffe://demo.ryu-nsm/ovs", work / "ovs")
        self.ovs = [str(work / "ovs" / name) for name in (devca.SVID_KEY, devca.SVID, devca.SVID_BUNDLE)]
        files = [str(work / "controller" / name) for name in (devca.SVID, devca.SVID_KEY, devca.SVID_BUNDLE)]
        self.controller_args = ["--tls-cert", files[0], "--tls-key", files[1], "--tls-ca", files[2]]
        self.before: list[str] | None = None
        say(f"OpenFlow over TLS: dev CA and SVIDs in {work} (controller spiffe://demo.ryu-nsm/controller, "
            "Open vSwitch spiffe://demo.ryu-nsm/ovs)")

    def set_ssl(self) -> None:
        shown = dict(line.split(": ", 1) for line in _vsctl("get-ssl").splitlines() if ": " in line)
        keys = ("Private key", "Certificate", "CA Certificate")
        self.before = [shown[key] for key in keys] if all(key in shown for key in keys) else []
        _vsctl("set-ssl", *self.ovs)

    def restore_ssl(self) -> None:
        if self.before is not None:
            _vsctl(*(("set-ssl", *self.before) if self.before else ("del-ssl",)))

    def show(self, fabric, check) -> None:
        """Each switch's controller target and whether Open vSwitch has it connected."""
        from ryu_nsm.lab.controller_process import wait_for

        connected = []
        for switch in fabric.switches:
            # Open vSwitch writes is_connected to its database a few seconds late: poll a while.
            targets = wait_for(lambda name=switch.name: _ssl_targets_up(name), timeout=15.0, interval=0.5)
            shown = targets or _ssl_targets(switch.name)
            up = bool(targets)
            say(f"  {switch.name}: controller {', '.join(shown) or 'none on ssl:'} "
                f"is_connected={str(up).lower()}")
            connected.append(up)
        check(all(connected), "every switch talks to the controller over TLS (ssl: targets, mutual "
              "certificates from the demo CA)", "a switch is not connected over TLS")
        say()


def _controllers(bridge: str) -> dict[str, bool]:
    """A bridge's controller targets and whether each is connected (Mininet may add a ptcp: record)."""
    records = _vsctl("get", "bridge", bridge, "controller").strip("[]\n ").split(", ")
    return {_vsctl("get", "controller", record, "target").strip().strip('"'):
            _vsctl("get", "controller", record, "is_connected").strip() == "true"
            for record in records if record}


def _ssl_targets(bridge: str) -> list[str]:
    return [target for target in _controllers(bridge) if target.startswith("ssl:")]


def _ssl_targets_up(bridge: str) -> list[str]:
    """The bridge's ssl: targets when there are some and every one is connected, else []."""
    shown = _controllers(bridge)
    targets = [target for target in shown if target.startswith("ssl:")]
    return targets if targets and all(shown[target] for target in targets) else []


def _vsctl(*args: str) -> str:
    return subprocess.run(["ovs-vsctl", *args], capture_output=True, text=True, check=False).stdout


def _traffic_steps(net, check) -> None:
    """Steps 1-3: ping and TCP through the chain in order, telnet dropped by the firewall."""
    say(f"1. {CLIENT} pings the gateway {GATEWAY_IP} through the chain")
    before = _seen(net)
    ping = net.ping(CLIENT, GATEWAY_IP, count=5, timeout=10)
    after = _seen(net)
    check(ping.received == ping.sent,
          f"{ping.received}/{ping.sent} replies; frames seen by each function: {_delta(before, after)}",
          f"only {ping.received}/{ping.sent} ping replies")
    check(all(after[f] - before[f] >= 2 * ping.sent for f in FUNCTIONS),
          "both functions saw every echo request and reply",
          "a function did not see the pings")

    say(f"2. {CLIENT} opens a TCP connection to port 80 on the gateway")
    before = _seen(net)
    ok = net.tcp_check(CLIENT, GATEWAY, GATEWAY_IP, 80)
    check(ok, f"connected and exchanged data; {_delta(before, _seen(net))}", "TCP to port 80 failed")

    say(f"3. {CLIENT} tries telnet (TCP port 23): the firewall drops it")
    before, dropped = _seen(net), _dropped(net)
    ok = net.tcp_check(CLIENT, GATEWAY, GATEWAY_IP, 23, timeout=2)
    after = _seen(net)
    check(not ok and _dropped(net) > dropped and after["dpi"] == before["dpi"],
          f"blocked: firewall dropped {_dropped(net) - dropped} frame(s), dpi saw none of them "
          "(so traffic meets the firewall before dpi)",
          "telnet was not stopped by the firewall")


def _policy_step(controller, net, requests: Path, check) -> None:
    """Step 4: a MultiNetworkPolicy allows only TCP 80; telnet is dropped at the client's switch,
    counted by the policy's drop flow there (read with ovs-ofctl); then the policy goes again."""
    say("4. the operator adds a MultiNetworkPolicy on secure-internet: connections to TCP 80 only")
    (requests / "policy.yaml").write_text(POLICY)
    controller.wait_connections(lambda cs: cs.get(CLIENT_WIRE, {}).get("policy") and all(
        c["state"] == "up" for c in cs.values()), timeout=30)
    interface = next(h for h in net.fabric.hosts if h.name == CLIENT).interfaces[0]
    switch, port = interface.switch, interface.port
    web = net.tcp_check(CLIENT, GATEWAY, GATEWAY_IP, 80)
    before, dropped = _seen(net), _policy_drops(switch, port)
    telnet = net.tcp_check(CLIENT, GATEWAY, GATEWAY_IP, 23, timeout=2)
    after, drops = _seen(net), _policy_drops(switch, port) - dropped
    check(web and not telnet and drops > 0 and after["firewall"] == before["firewall"],
          f"TCP 80 still passes; telnet is dropped at {switch}: its policy drop flow (table 2, in_port "
          f"{port}, ovs-ofctl dump-flows {switch}) counted {drops} frame(s), the firewall saw none",
          f"the policy did not act as it should (TCP 80 {'passed' if web else 'failed'}, telnet "
          f"{'passed' if telnet else 'stopped'}, {drops} policy drops at {switch})")
    (requests / "policy.yaml").unlink()
    controller.wait_connections(lambda cs: not any(c.get("policy") for c in cs.values()) and all(
        c["state"] == "up" for c in cs.values()), timeout=30)
    say("  the policy is deleted again: the wires are back to unrestricted")


def _policy_drops(switch: str, port: int) -> int:
    """Packets counted by the policy's drop flows for frames from ``port`` on ``switch`` (tables 2
    and 3, priority 1000: what neither an established connection nor a rule let through)."""
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "--no-names", "dump-flows", switch],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(line.split("n_packets=", 1)[1].split(",", 1)[0]) for line in out.splitlines()
               if "priority=1000," in line and f"in_port={port} " in line + " "
               and ("table=2," in line or "table=3," in line))


def _intruder_step(net, check, hubble: str) -> None:
    """Step 5: a host without a request reaches nothing, and flow events show its frames dropped."""
    say(f"5. {INTRUDER} (no request) pings the gateway")
    ping = net.ping(INTRUDER, GATEWAY_IP, count=3, timeout=4)
    check(ping.received == 0, "no reply: a host without a connection reaches nothing",
          f"the intruder got {ping.received} replies")
    switch = next(h for h in net.fabric.hosts if h.name == INTRUDER).interfaces[0].switch

    def dropped() -> list[dict]:
        return [f for f in observed(hubble) if f["verdict"] == "DROPPED" and f["node_name"] == switch]

    if check(wait_for(dropped, 10, 0.5), f"ryu-nsm observe shows its frames DROPPED (no wire) at {switch}",
             "no flow event shows the intruder's frames dropped"):
        say("  $ ryu-nsm observe --verdict DROPPED --last 2")
        for line in observe(hubble, "--verdict", "DROPPED", "--last", "2").splitlines():
            say(f"  {line}")


def _service_level_steps(controller, net, requests: Path, check) -> None:
    """Steps 6-8: a rate limit measured with iperf3, then a link that gets slow during a ping."""
    say(f"6. {CLIENT} sends TCP to the gateway with iperf3 (no service level yet)")
    free = net.iperf_tcp(CLIENT, GATEWAY, GATEWAY_IP, seconds=3)
    say(f"  {free / 1e6:.0f} Mbit/s")

    say("7. the operator adds a ServiceLevel for secure-internet: 20 Mbit/s, 10 ms per wire, EF")
    (requests / "levels.yaml").write_text(SERVICE_LEVEL)
    conns = controller.wait_connections(
        lambda cs: cs.get(CLIENT_WIRE, {}).get("service_level") and all(
            c["state"] == "up" for c in cs.values()), timeout=30)
    say(f"  {CLIENT_WIRE}: {conns[CLIENT_WIRE]['service_level']['summary']}; meters at "
        f"{', '.join(sorted(conns[CLIENT_WIRE].get('meters', {})))}")
    limited = net.iperf_tcp(CLIENT, GATEWAY, GATEWAY_IP, seconds=3)
    check(limited <= RATE_LIMIT * 1.1 and free > 2 * limited,
          f"{limited / 1e6:.1f} Mbit/s now: the ingress switches' meters hold it under 20 Mbit/s",
          f"{limited / 1e6:.1f} Mbit/s with the limit (free: {free / 1e6:.0f} Mbit/s)")

    before = controller.connections()[CLIENT_WIRE]["path"]
    say(f"8. the link {SLOW_LINK} ({CLIENT} → firewall, path {'-'.join(before)}) gets 30 ms slower "
        "while the client pings")
    ping = net.start_ping(CLIENT, GATEWAY_IP, interval=0.05)
    try:
        net.impairment(SLOW_LINK).set(delay_ms=30)
        moved = controller.wait_connections(
            lambda cs: cs[CLIENT_WIRE]["path"] != before and cs[CLIENT_WIRE]["state"] == "up", timeout=30)
        time.sleep(1)  # a second of echoes on the new path
    finally:
        replies = ping.stop()
    history = [h["what"] for h in controller.status()["history"] if h["connection"] == CLIENT_WIRE]
    why = next((h for h in reversed(history) if "broken" in h), history[-1])
    say(f"  the controller measured it and moved the wire to {'-'.join(moved[CLIENT_WIRE]['path'])}")
    say(f"  ({why})")
    rtts = replies.rtts or [0.0]
    check(replies.lost <= 0.1 * replies.sent and max(rtts) > 60 and min(rtts[-10:]) < 30,
          f"the ping went on: {len(replies.rtts)}/{replies.sent} replies, the slowest {max(rtts):.0f} ms "
          f"(over the slow link), the last {rtts[-1]:.1f} ms",
          f"the ping suffered: {len(replies.rtts)}/{replies.sent} replies, the slowest {max(rtts):.0f} ms")


def _deletion_step(controller, net, requests: Path, check) -> None:
    """Step 9: deleting the client's request removes its connection, and its traffic stops."""
    say(f"9. the {CLIENT} Pod's request is deleted")
    (requests / "pods.yaml").write_text(_without_pod((requests / "pods.yaml").read_text(), CLIENT))
    controller.wait_connections(lambda cs: f"default/{CLIENT}/nsm-1" not in cs, timeout=30)
    deadline = time.monotonic() + 10
    ping = net.ping(CLIENT, GATEWAY_IP, count=2, timeout=3)
    while ping.received and time.monotonic() < deadline:
        ping = net.ping(CLIENT, GATEWAY_IP, count=2, timeout=3)
    check(ping.received == 0, "the connection is gone and so is the traffic",
          "traffic still flows after the request was deleted")


def _without_pod(text: str, name: str) -> str:
    """The YAML documents of ``text`` minus the Pod called ``name``."""
    import yaml

    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    keep = [d for d in docs if not (d.get("kind") == "Pod" and d.get("metadata", {}).get("name") == name)]
    return yaml.safe_dump_all(keep, sort_keys=False)

