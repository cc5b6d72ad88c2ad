"""The flow store: Hubble-shaped filters and queries (pure), the ring buffer, followers that lose
events instead of holding up the producer, and the rotated flow log."""

from __future__ import annotations

import json
import threading

import pytest

from ryu_nsm.observe.flow_events import (
    Direction,
    DropKind,
    DropReason,
    Ethernet,
    FlowEvent,
    IPHeader,
    Layer4,
    Verdict,
    WireRef,
    Workload,
)
from ryu_nsm.observe.flow_log import FlowLog, RotatingLines
from ryu_nsm.observe.flow_store import FlowFilter, FlowQuery, FlowStore, check_filter, select

WIRE = WireRef("conn-1", "firewall", "nsm", "client", "fw-1", hop=0)
CLIENT = Workload("nsm", "client-7d9f", (("app", "client"),))
FIREWALL = Workload("nsm", "fw-1", (("app", "firewall"),))


def event(time: float = 100.0, verdict: Verdict = Verdict.FORWARDED, direction=Direction.TO_ENDPOINT,
          protocol: str = "TCP", sport: int = 41234, dport: int = 80, node: str = "s1", wire=WIRE,
          **more) -> FlowEvent:
    source, destination = (CLIENT, FIREWALL) if direction is Direction.TO_ENDPOINT else (FIREWALL, CLIENT)
    ips = ("10.0.0.1", "10.0.0.2") if direction is Direction.TO_ENDPOINT else ("10.0.0.2", "10.0.0.1")
    l4 = (Layer4(protocol, icmp_type=8) if protocol.startswith("ICMP")
          else Layer4(protocol, sport, dport, frozenset({"SYN"}) if protocol == "TCP" else frozenset()))
    fields = dict(time=time, node=node, verdict=verdict, wire=wire, direction=direction,
                  ethernet=Ethernet("02:00:00:00:00:01", "02:00:00:00:00:02", 0x0800),
                  ip=IPHeader(*ips, 4), l4=l4, source=source, destination=destination)
    return FlowEvent(**{**fields, **more})


DROP = event(verdict=Verdict.DROPPED, wire=None, direction=Direction.UNKNOWN, source=None, destination=None,
             drop_reason=DropReason(DropKind.NO_WIRE), ip=IPHeader("10.9.9.9", "10.0.0.2", 4))


@pytest.mark.parametrize(("flow_filter", "matching"), [
    (FlowFilter(), {"request", "reply", "drop", "icmp"}),
    (FlowFilter(source_pod=("nsm/client",)), {"request", "icmp"}),
    (FlowFilter(source_pod=("client",)), {"request", "icmp"}),
    (FlowFilter(source_pod=("nsm/",)), {"request", "reply", "icmp"}),
    (FlowFilter(source_pod=("other/client",)), set()),
    (FlowFilter(destination_pod=("nsm/client",)), {"reply"}),
    (FlowFilter(destination_service=("nsm/firewall",)), {"request", "icmp"}),
    (FlowFilter(source_service=("firewall",)), {"reply"}),
    (FlowFilter(verdict=(Verdict.DROPPED,)), {"drop"}),
    (FlowFilter(protocol=("tcp",)), {"request", "reply", "drop"}),
    (FlowFilter(protocol=("icmp",)), {"icmp"}),
    (FlowFilter(destination_port=("80",)), {"request", "drop"}),
    (FlowFilter(source_port=("80",)), {"reply"}),
    (FlowFilter(source_ip=("10.9.0.0/16",)), {"drop"}),
    (FlowFilter(destination_ip=("10.0.0.1",)), {"reply"}),
    (FlowFilter(node_name=("s*",)), {"request", "reply", "drop", "icmp"}),
    (FlowFilter(node_name=("t*",)), set()),
    (FlowFilter(ip_version=(6,)), set()),
    (FlowFilter(traffic_direction=("egress",)), {"request", "reply", "icmp"}),
    (FlowFilter(traffic_direction=("",)), {"drop"}),
    (FlowFilter(source_pod=("nsm/client",), protocol=("tcp",)), {"request"}),
])
def test_a_filter_matches_when_every_field_it_sets_does(flow_filter, matching):
    events = {"request": event(), "reply": event(direction=Direction.TO_CLIENT, sport=80, dport=41234),
              "drop": DROP, "icmp": event(protocol="ICMPv4")}
    assert {name for name, e in events.items() if flow_filter.matches(e)} == matching


def test_a_reply_swaps_ports():
    reply = event(direction=Direction.TO_CLIENT, sport=80, dport=41234)
    assert FlowFilter(destination_port=("41234",)).matches(reply)


def test_query_whitelist_is_any_blacklist_removes_and_time_bounds():
    events = [event(time=t, verdict=Verdict.DROPPED if t % 2 else Verdict.FORWARDED) for t in range(10)]
    dropped = FlowFilter(verdict=(Verdict.DROPPED,))
    assert [e.time for e in select(events, FlowQuery(whitelist=(dropped,)))] == [1, 3, 5, 7, 9]
    assert [e.time for e in select(events, FlowQuery(blacklist=(dropped,)))] == [0, 2, 4, 6, 8]
    either = (dropped, FlowFilter(node_name=("s1",)))
    assert len(select(events, FlowQuery(whitelist=either))) == 10
    assert [e.time for e in select(events, FlowQuery(since=3, until=5))] == [3, 4, 5]
    assert [e.time for e in select(events, FlowQuery(number=3))] == [7, 8, 9]
    assert [e.time for e in select(events, FlowQuery(number=3, first=True))] == [0, 1, 2]
    assert [e.time for e in select(events, FlowQuery(number=2, whitelist=(dropped,)))] == [7, 9]


def test_check_filter_names_a_bad_value():
    with pytest.raises(ValueError, match="not an IP"):
        check_filter(FlowFilter(source_ip=("10.0.0.300",)))
    with pytest.raises(ValueError, match="not a port"):
        check_filter(FlowFilter(destination_port=("http",)))
    check_filter(FlowFilter(source_ip=("10.0.0.0/8", "fd00::1"), destination_port=("443",)))


def test_the_ring_keeps_the_last_capacity_events_and_counts_all():
    store = FlowStore(capacity=3)
    store.add(event(time=t) for t in range(5))
    assert [e.time for e in store.history(FlowQuery())] == [2, 3, 4]
    assert store.counts() == (3, 5)
    with pytest.raises(ValueError):
        FlowStore(capacity=0)


def test_follow_joins_history_and_new_events_without_gap_or_repeat():
    store = FlowStore()
    store.add([event(time=1), event(time=2)])
    history, follower = store.follow(FlowQuery(number=1))
    store.add([event(time=3)])
    events, lost = follower.take(timeout=1)
    assert [e.time for e in history] == [2] and [e.time for e in events] == [3] and lost == 0
    follower.close()
    store.add([event(time=4)])
    assert follower.take(timeout=1) == ([], 0)


def test_a_slow_follower_loses_its_oldest_events_and_is_told_how_many():
    store = FlowStore()
    slow, quick = store.subscribe(max_pending=2), store.subscribe(max_pending=100)
    for t in range(5):
        store.add([event(time=t)])  # returns at once: nobody reads yet
    events, lost = slow.take(timeout=0)
    assert [e.time for e in events] == [3, 4] and lost == 3
    assert len(quick.take(timeout=0)[0]) == 5
    assert slow.take(timeout=0) == ([], 0)


def test_take_waits_for_the_producer():
    store = FlowStore()
    follower = store.subscribe()
    threading.Timer(0.05, lambda: store.add([event()])).start()
    events, _ = follower.take(timeout=5)
    assert len(events) == 1


def test_flow_log_writes_json_lines_and_rotates_by_size(tmp_path):
    path = tmp_path / "flows.log"
    store = FlowStore()
    flow_log = FlowLog(store, RotatingLines(str(path), max_bytes=1500, keep=2), poll=0.05).start()
    for t in range(12):
        store.add([event(time=1_700_000_000 + t)])
    flow_log.stop()
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["flows.log", "flows.log.1", "flows.log.2"]
    assert all(0 < f.stat().st_size <= 1500 for f in files)
    newest = [json.loads(line) for line in path.read_text().splitlines()]
    assert newest[-1]["flow"]["time"] == "2023-11-14T22:13:31Z"
    assert newest[-1]["flow"]["verdict"] == "FORWARDED" and newest[-1]["node_name"] == "s1"
    oldest = json.loads((tmp_path / "flows.log.2").read_text().splitlines()[0])
    assert oldest["flow"]["time"] > "2023-11-14T22:13:20Z"  # the first lines were rotated away


def test_rotating_lines_keeping_none_truncates(tmp_path):
    lines = RotatingLines(str(tmp_path / "f"), max_bytes=10, keep=0)
    lines.write(["12345678", "abcdefgh"])
    lines.close()
    assert [p.name for p in tmp_path.iterdir()] == ["f"] and (tmp_path / "f").read_text() == "abcdefgh\n"
