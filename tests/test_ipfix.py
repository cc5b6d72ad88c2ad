"""Flow sampling and the IPFIX collector: sample actions in the compiled flows (run through the flow
simulator), the decoder against datagrams captured from this Open vSwitch (tests/ipfix_capture.py),
records → flow events, and the collector over UDP."""

from __future__ import annotations

import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest

from ryu_nsm.core.flowspec import Table
from ryu_nsm.core.model import ClientRequest, Destination, Endpoint, Match, NetworkService, Resources
from ryu_nsm.core.planner import make_plan
from ryu_nsm.core.policy_model import LabelSelector, MultiNetworkPolicy, NetworkRef, PolicyInputs
from ryu_nsm.core.policy_model import Workload as PolicyWorkload
from ryu_nsm.core.sampling import (
    FlowSampling,
    Stage,
    domain_id,
    point_id,
    probability,
    read_point,
    sampling_rate,
    wire_hash,
)
from ryu_nsm.core.values import FrozenMap
from ryu_nsm.observe.flow_events import Direction, DropKind, Verdict, WireRef
from ryu_nsm.observe.flow_store import FlowFilter, FlowQuery, FlowStore
from ryu_nsm.observe.ipfix import IpfixError, TemplateCache, decode
from ryu_nsm.observe.ipfix_collector import IpfixCollector
from ryu_nsm.observe.ipfix_events import WireDirectory, events_of
from ryu_nsm.qos.service_level import ServiceLevel, parse_sampling

from .fabrics import ring
from .flowsim import FabricSim, Frame

CAPTURE = Path(__file__).parent / "fixtures" / "ipfix" / "ovs-3.1.hex"
DATAGRAMS = [bytes.fromhex(line) for line in CAPTURE.read_text().split()]
SAMPLING = FlowSampling(collector_set=7, default=1 / 64, drops=1.0)


def _plan(sampling=SAMPLING, levels=(), policy=None, same_switch=False):
    fab = replace(ring(4, {"client": ("s1",), "server": ("s1",) if same_switch else ("s3",),
                           "intruder": ("s1",)}), flow_sampling=sampling)
    c_att, e_att = (fab.hosts[i].interfaces[0].attachment for i in (0, 1))
    service = NetworkService("net", "a", (Match(routes=(Destination(),)),))
    ep = Endpoint("server", "a", ("net",), attachments=(e_att,))
    req = ClientRequest("client", "nsm-1", "net", "a", attachment=c_att)
    plan = make_plan(fab, Resources((service,), (ep,), (req,), service_levels=tuple(levels), policy=policy))
    ends = {h.name: (h.interfaces[0].switch, h.interfaces[0].port) for h in fab.hosts}
    return fab, plan, ends


def _stages(sim):
    return [(sw, read_point(point).stage, read_point(point).reverse) for sw, _, point in sim.samples]


# ---- sample actions in the flows


def test_a_wire_is_sampled_at_ingress_then_delivery_each_way():
    fab, plan, ends = _plan()
    (pc,) = plan.connections.values()
    sim = FabricSim(fab, plan.flows)
    assert [(d.switch, d.port) for d in sim.send(*ends["client"])] == [ends["server"]]
    assert _stages(sim) == [("s1", Stage.INGRESS, False), ("s3", Stage.DELIVERY, False)]
    assert {read_point(p).wire_hash for _, _, p in sim.samples} == {wire_hash(pc.id)}
    assert [dom for _, dom, _ in sim.samples] == [domain_id("s1"), domain_id("s3")]
    sim.samples.clear()
    sim.send(*ends["server"], Frame(eth_src="02:00:00:00:00:bb"))
    assert _stages(sim) == [("s3", Stage.INGRESS, True), ("s1", Stage.DELIVERY, True)]
    ingress = next(a for _, f in pc.flows for a in f.actions if a[0] == "sample")
    assert ingress[1:3] == (probability(1 / 64), 7) and sampling_rate(ingress[1]) == 64


def test_a_same_switch_wire_samples_both_stages_in_its_one_flow():
    fab, plan, ends = _plan(same_switch=True)
    sim = FabricSim(fab, plan.flows)
    sim.send(*ends["client"])
    assert _stages(sim) == [("s1", Stage.INGRESS, False), ("s1", Stage.DELIVERY, False)]


def test_an_unknown_hosts_frames_are_sampled_as_dropped_on_no_wire():
    fab, plan, ends = _plan()
    sim = FabricSim(fab, plan.flows)
    assert sim.send(*ends["intruder"]) == []
    assert _stages(sim) == [("s1", Stage.NO_WIRE, False)]
    assert [p for _, _, p in sim.samples] == [point_id(Stage.NO_WIRE)]
    miss = next(f for f in plan.flows["s1"] if f.table == Table.CLASSIFY and f.priority == 0)
    assert miss.actions[0][1] == probability(1.0) == 0xFFFF


def test_a_policy_drop_is_sampled_with_its_wire_and_direction():
    deny = MultiNetworkPolicy("deny", "a", (NetworkRef("a", "net"),), LabelSelector(), ("Ingress", "Egress"))
    fab, plan, ends = _plan(policy=PolicyInputs((deny,)))
    sim = FabricSim(fab, plan.flows)
    tcp = Frame(eth_type=0x0800, src_ip="10.0.0.1", dst_ip="10.0.0.2", ip_proto=6, src_port=1, dst_port=80)
    assert sim.send(*ends["client"], tcp) == []
    assert _stages(sim) == [("s1", Stage.POLICY_DROP, False)]
    sim.samples.clear()
    assert sim.send(*ends["client"], Frame(eth_type=0x0806))  # ARP passes: sampled on the wire
    assert _stages(sim) == [("s1", Stage.INGRESS, False), ("s3", Stage.DELIVERY, False)]


def test_a_service_level_sets_its_wires_probability():
    level = ServiceLevel("all", "net", "a", dscp=10, flow_sampling=1.0)
    _, plan, _ = _plan(levels=(level,))
    (pc,) = plan.connections.values()
    assert {a[1] for _, f in pc.flows for a in f.actions if a[0] == "sample"} == {0xFFFF}


def test_sampling_off_adds_no_action_anywhere():
    _, sampled, _ = _plan()
    _, plain, _ = _plan(sampling=None)
    assert not [a for flows in plain.flows.values() for f in flows for a in f.actions if a[0] == "sample"]
    assert {sw: {f.key for f in flows} for sw, flows in plain.flows.items()} == {
        sw: {f.key for f in flows} for sw, flows in sampled.flows.items()}


def test_flow_sampling_values():
    assert parse_sampling("1/64") == 1 / 64 and parse_sampling("1.5%") == 0.015 and parse_sampling(1) == 1.0
    for bad in (0, "0", 1.5, "2/1", "x", True, "1/0"):
        with pytest.raises(ValueError):
            parse_sampling(bad)
    assert probability(1e-9) == 1 and probability(0) == 0


# ---- decoding what this Open vSwitch exports


def _decoded():
    cache = TemplateCache()
    return [decode(data, cache) for data in DATAGRAMS], cache


def test_captured_export_decodes_with_its_templates():
    messages, cache = _decoded()
    records = [r for m in messages for r in m.records if "observationPointId" in r]
    assert len(records) == 51 and cache.templates and not any(m.unknown_sets for m in messages)
    echo = next(r for r in records if r.get("icmpTypeIPv4") == 8)
    assert echo["observationPointId"] == 0x10000123 and echo["sourceIPv4Address"] == "10.9.0.1"
    assert (echo["destinationIPv4Address"], echo["protocolIdentifier"], echo["ethernetType"]) == (
        "10.9.0.2", 1, 0x0800)
    syn = next(r for r in records if r.get("destinationTransportPort") == 8080)
    assert (syn["sourceIPv4Address"], syn["protocolIdentifier"]) == ("10.9.0.1", 6)
    v6 = next(r for r in records if r.get("icmpTypeIPv6") == 128)
    assert (v6["sourceIPv6Address"], v6["destinationIPv6Address"]) == ("fd00:9::1", "fd00:9::2")


def test_data_before_its_template_is_counted_and_skipped():
    cache = TemplateCache()
    data_only = next(d for d in DATAGRAMS[::-1] if decode(d, TemplateCache()).unknown_sets)
    assert decode(data_only, cache).records == ()
    for bad in (b"\x00\x09" + DATAGRAMS[0][2:], DATAGRAMS[0][:-1], b"\x00\x0a"):
        with pytest.raises(IpfixError):
            decode(bad, cache)


# ---- records → events

WIRE = WireRef("a/client/nsm-1", "net", "a", "client", "server", 0)


def _directory():
    return WireDirectory({1: "s1"}, {0x123: WIRE}, {0x123: 64}, {}, 1)


def test_records_become_events_with_wire_direction_and_verdict():
    messages, _ = _decoded()
    events = [e for m in messages for e in events_of(m.records, m.domain, _directory(), 5.0)]
    ping = [e for e in events if e.l4 is not None and e.l4.protocol == "ICMPv4"][:4]
    assert [(read_point(e.observation.point_id).stage, e.direction, e.l4.icmp_type) for e in ping] == [
        (Stage.INGRESS, Direction.TO_ENDPOINT, 8), (Stage.DELIVERY, Direction.TO_ENDPOINT, 8),
        (Stage.INGRESS, Direction.TO_CLIENT, 0), (Stage.DELIVERY, Direction.TO_CLIENT, 0)]
    echo, reply = ping[0], ping[2]
    assert (echo.node, echo.verdict, echo.wire, echo.direction) == ("s1", Verdict.FORWARDED, WIRE,
                                                                   Direction.TO_ENDPOINT)
    assert (echo.ip.source, echo.l4.icmp_type, echo.sampling_rate, echo.time) == ("10.9.0.1", 8, 64, 5.0)
    assert (echo.source.pod_name, echo.destination.pod_name) == ("client", "server")
    assert reply.direction is Direction.TO_CLIENT and reply.l4.icmp_type == 0
    dropped = [e for e in events if e.verdict is Verdict.DROPPED]
    assert dropped and all(e.wire is None and e.drop_reason.kind is DropKind.NO_WIRE for e in dropped)
    tcp = next(e for e in events if e.l4 is not None and e.l4.protocol == "TCP")
    assert tcp.l4.destination_port == 8080 and tcp.l4.source_port > 1023


def test_the_directory_names_a_chain_and_its_sampling_from_the_plan():
    fab, plan, _ = _plan()
    (pc,) = plan.connections.values()
    directory = WireDirectory.of([s.name for s in fab.switches], plan.connections.values(), SAMPLING)
    assert directory.wires[wire_hash(pc.id)] == WireRef(pc.id, "net", "a", "client", "server", 0)
    assert directory.rates[wire_hash(pc.id)] == 64 and directory.switches[domain_id("s2")] == "s2"


def test_events_carry_the_labels_of_their_pods_and_endpoints():
    fab, plan, _ = _plan()
    policy = PolicyInputs(
        pods=FrozenMap({("a", "client"): PolicyWorkload(FrozenMap(app="probe", tier="2"))}),
        endpoints=FrozenMap({("a", "server"): PolicyWorkload(FrozenMap(app="web"))}))
    names = [s.name for s in fab.switches]
    directory = WireDirectory.of(names, plan.connections.values(), SAMPLING, policy)
    assert directory.labels == {("a", "client"): (("app", "probe"), ("tier", "2")),
                                ("a", "server"): (("app", "web"),)}
    messages, _ = _decoded()
    labelled = replace(_directory(), labels=directory.labels)
    events = [e for m in messages for e in events_of(m.records, m.domain, labelled, 5.0)]
    echo = next(e for e in events if e.direction is Direction.TO_ENDPOINT)
    assert echo.source.label_strings == ("k8s:app=probe", "k8s:tier=2")
    assert echo.destination.label_strings == ("k8s:app=web",)
    to_web = FlowFilter(source_label=("tier>1",), destination_label=("k8s:app in (web)",))
    assert to_web.matches(echo) and not FlowFilter(destination_label=("app=probe",)).matches(echo)
    assert WireDirectory.of(names, plan.connections.values(), SAMPLING).labels == {}


# ---- the collector


def test_the_collector_hands_events_to_the_store_over_udp():
    store = FlowStore()
    collector = IpfixCollector(("127.0.0.1", 0), store, _directory).start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for data in [*DATAGRAMS, b"not ipfix"]:
                sender.sendto(data, collector.address)
        deadline = time.monotonic() + 5
        while collector.datagrams <= len(DATAGRAMS) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        collector.stop()
    assert collector.events == 51 and collector.errors == 1
    assert len(store.history(FlowQuery())) == 51


def test_data_before_templates_is_said_once_per_domain(caplog):
    store = FlowStore()
    collector = IpfixCollector(("127.0.0.1", 0), store, _directory)
    try:
        data_only = [d for d in DATAGRAMS if decode(d, TemplateCache()).unknown_sets
                     and decode(d, TemplateCache()).domain == 1]
        with caplog.at_level("WARNING", "ryu_nsm.observe.ipfix"):
            for data in data_only[:3]:
                collector.handle(data, ("127.0.0.1", 1))
        assert len([r for r in caplog.records if "before its templates" in r.message]) == 1
        assert collector.events == 0
    finally:
        collector.stop()


def test_controller_flags_give_the_sampling_or_a_usage_error():
    from argparse import Namespace

    from ryu_nsm.cli import _ipfix_options

    def flags(**kw):
        base = dict(ipfix_listen="127.0.0.1:4739", flow_sampling="1/64", drop_sampling="1",
                    no_flow_sampling=False, ipfix_collector_set=1, ipfix_ovsdb=None, ipfix_target=None)
        return Namespace(**{**base, **kw})

    options = _ipfix_options(flags())
    assert options.listen == ("127.0.0.1", 4739) and options.sampling == FlowSampling(1, 1 / 64, 1.0)
    assert _ipfix_options(flags(no_flow_sampling=True)).sampling is None
    assert _ipfix_options(flags(ipfix_listen=None)) is None
    for bad in (dict(flow_sampling="2"), dict(drop_sampling="0"), dict(ipfix_collector_set=0)):
        with pytest.raises(ValueError):
            _ipfix_options(flags(**bad))
