"""Frames over a wire's rate limit: meter drop counts → per-read drops, status, /metrics and DROPPED
flow events with the reason "rate limit" (the OVS side is in tests/test_meter_drops_ovs.py)."""

from dataclasses import replace

from hubble_api import flow_pb2
from ryu_nsm.core.controller import Controller
from ryu_nsm.core.meter_drops import MeterDrop
from ryu_nsm.core.model import FrozenMap
from ryu_nsm.core.sampling import FlowSampling
from ryu_nsm.observe.flow_events import Direction, DropKind, Verdict
from ryu_nsm.observe.flow_store import FlowFilter, FlowQuery, FlowStore
from ryu_nsm.observe.hubble_flows import to_flow, to_json, to_response
from ryu_nsm.observe.ipfix_events import WireDirectory
from ryu_nsm.observe.meter_events import meter_events
from ryu_nsm.observe.metrics import exposition
from ryu_nsm.observe.report import status_json
from ryu_nsm.openflow import wire as ofwire
from ryu_nsm.qos.service_level import ServiceLevel

from .test_controller import FakeFabric, setup

LIMIT = ServiceLevel("limited", "svc", client_selector=FrozenMap(), rate_limit=10_000_000)


def limited():
    """A controller with one wire (client on s1, server on s3) limited to 10 Mbit/s each way."""
    fab, res = setup()
    res = replace(res, service_levels=(LIMIT,))
    ctl, sw = Controller(fab), FakeFabric(fab)
    sw.connect_all(ctl)
    sw.run(ctl, ctl.set_resources(res, 1.0))
    (pc,) = ctl.plan.connections.values()
    return fab, ctl, pc


def test_a_counter_read_asks_for_meters_only_where_a_wire_is_policed():
    _, ctl, pc = limited()
    asks = {read.switch: read.meters for read in ctl.counters_due()}
    assert asks == {"s1": True, "s2": False, "s3": True, "s4": False}
    assert [switch for switch, _ in pc.meters] == ["s1", "s3"]


def test_each_increase_of_a_wires_meter_is_one_drop_the_first_reading_none():
    _, ctl, pc = limited()
    (_, client_meter), (_, server_meter) = pc.meters
    assert ctl.meters_read("s1", {client_meter.meter_id: 500}) == []  # where it starts: maybe an old count
    assert ctl.meters_read("s1", {client_meter.meter_id: 500}) == []
    assert ctl.meters_read("s1", {client_meter.meter_id: 912}) == [
        MeterDrop(pc.id, "s1", client_meter.meter_id, "from_client", 10_000, 412)]
    ctl.meters_read("s3", {server_meter.meter_id: 0})
    (drop,) = ctl.meters_read("s3", {server_meter.meter_id: 7})
    assert (drop.side, drop.frames) == ("from_endpoint", 7)
    # Made again (a count that went down): all of it is new.
    assert ctl.meters_read("s1", {client_meter.meter_id: 30})[0].frames == 30
    # Another owner's meter, and our id on a switch that has no such wire meter: no drops.
    ctl.meters_read("s1", {5: 1})
    assert ctl.meters_read("s1", {5: 100}) == []
    assert ctl.meters_read("s2", {client_meter.meter_id: 1}) == []
    assert ctl.meters_read("s2", {client_meter.meter_id: 9}) == []


def test_drops_add_up_in_the_status_and_on_metrics():
    _, ctl, pc = limited()
    (_, meter), _ = pc.meters
    for count in (100, 150, 400):
        ctl.meters_read("s1", {meter.meter_id: count})
    (entry,) = status_json(ctl.status())["connections"]
    assert entry["meter_drops"] == {"from_client": 300}
    text = exposition(lambda: status_json(ctl.status())).decode()
    assert (f'ryu_nsm_connection_meter_dropped_packets_total{{connection="{pc.id}",from="client",'
            f'network_service="svc"}} 300.0') in text


def test_a_wire_without_drops_has_none_in_its_status():
    _, ctl, pc = limited()
    (_, meter), _ = pc.meters
    ctl.meters_read("s1", {meter.meter_id: 3})
    ctl.meters_read("s1", {meter.meter_id: 3})
    (entry,) = status_json(ctl.status())["connections"]
    assert "meter_drops" not in entry


def directory(fab, ctl) -> WireDirectory:
    return WireDirectory.of([s.name for s in fab.switches], ctl.plan.connections.values(), FlowSampling())


def test_a_drop_is_a_dropped_rate_limit_event_of_the_wire_with_its_count():
    fab, ctl, pc = limited()
    drops = [MeterDrop(pc.id, "s1", 1, "from_client", 10_000, 412),
             MeterDrop(pc.id, "s3", 2, "from_endpoint", 10_000, 3)]
    to_server, to_client = meter_events(drops, directory(fab, ctl), 1000.0)
    assert (to_server.verdict, to_server.node, to_server.frames, to_server.time) == (
        Verdict.DROPPED, "s1", 412, 1000.0)
    assert to_server.drop_reason.kind is DropKind.RATE_LIMIT
    assert str(to_server.drop_reason) == "rate limit 10Mbit/s"
    assert to_server.wire.connection_id == pc.id and to_server.direction is Direction.TO_ENDPOINT
    assert (to_server.source.pod_name, to_server.destination.pod_name) == ("c0", "e0")
    assert (to_client.direction, to_client.source.pod_name, to_client.frames) == (
        Direction.TO_CLIENT, "e0", 3)
    assert to_server.ethernet is None and to_server.ip is None and to_server.l4 is None


def test_hubble_and_the_flow_log_say_how_many_frames_were_over_which_limit():
    fab, ctl, pc = limited()
    (event,) = meter_events([MeterDrop(pc.id, "s1", 1, "from_client", 10_000, 412)], directory(fab, ctl), 5.0)
    flow = to_flow(event)
    assert flow.verdict == flow_pb2.DROPPED
    assert flow.drop_reason_desc == flow_pb2.REACHED_EDT_RATE_LIMITING_DROP_HORIZON
    assert flow.Summary.startswith(f"412 frames over the 10Mbit/s limit of wire default/svc hop 0 ({pc.id})")
    assert "412 frames over the 10Mbit/s limit" in to_json(to_response(event))


def test_the_store_keeps_them_for_observers_filtering_on_drops():
    fab, ctl, pc = limited()
    store = FlowStore(16)
    store.add(meter_events([MeterDrop(pc.id, "s1", 1, "from_client", 10_000, 9)], directory(fab, ctl), 5.0))
    (kept,) = store.history(FlowQuery(whitelist=(FlowFilter(verdict=(Verdict.DROPPED,),
                                                          destination_pod=("default/e0",)),)))
    assert kept.frames == 9


def test_a_drop_of_a_wire_that_left_the_plan_makes_no_event():
    fab, ctl, _ = limited()
    gone = MeterDrop("gone", "s1", 1, "from_client", 10_000, 9)
    assert meter_events([gone], directory(fab, ctl), 5.0) == []


def test_meter_stats_request_and_reply_as_os_ken_writes_and_parses_them():
    from os_ken.ofproto import ofproto_v1_3 as ofp
    from os_ken.ofproto import ofproto_v1_3_parser as parser

    from .test_ofwire import DP, serialised

    msg = parser.OFPMeterStatsRequest(DP, 0, ofp.OFPM_ALL)
    msg.set_xid(77)
    assert ofwire.encode_meter_stats_request(77) == serialised(msg)
    entries = [parser.OFPMeterStats(meter_id=0x4E000001, band_stats=[parser.OFPMeterBandStats(412, 600_000)]),
               parser.OFPMeterStats(meter_id=3, band_stats=[])]
    assert ofwire.decode_meter_drops(entries) == {0x4E000001: 412, 3: 0}
