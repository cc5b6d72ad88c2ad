"""The live page's server side without a browser: the scene (layout, links, wires, chains, drops),
the page's flow filters, and /ui, /ui/scene and /ui/events on the status endpoint."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from ryu_nsm.observe.flow_events import (
    DropKind,
    DropReason,
    FlowEvent,
    IPHeader,
    Layer4,
    Verdict,
    WireRef,
    Workload,
)
from ryu_nsm.observe.flow_store import FlowStore
from ryu_nsm.observe.live_page import page_query
from ryu_nsm.observe.live_scene import layout, scene
from ryu_nsm.observe.picture import fabric_description
from ryu_nsm.observe.status_api import StatusServer

from .fabrics import ring
from .test_cli import ryu_nsm
from .test_picture import plan_report
from .test_planner import att, resources_for


def demo_report() -> dict:
    out = ryu_nsm("plan", "--json", "topologies/demo-chain.yaml", "examples/demo-chain")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def event(connection: str | None, verdict: Verdict, node: str = "s1", port: int = 80, rate: int = 1
          ) -> FlowEvent:
    wire = WireRef(connection, "svc", "default", "c0", "e0") if connection else None
    dropped = verdict is Verdict.DROPPED
    return FlowEvent(time=time.time(), node=node, verdict=verdict, wire=wire,
                     drop_reason=DropReason(DropKind.POLICY, "no-telnet") if dropped else None,
                     ip=IPHeader("10.0.0.1", "10.0.0.2", 4), l4=Layer4("TCP", 40000, port),
                     sampling_rate=rate, source=Workload("default", "c0"),
                     destination=Workload("default", "e0"))


def test_layout_is_deterministic_separated_and_in_the_unit_square():
    switches = ["s1", "s2", "s3", "s4"]
    links = [("s1", "s2"), ("s2", "s3"), ("s3", "s4"), ("s4", "s1"), ("s1", "s3")]
    first, again = layout(switches, links), layout(switches, links)
    assert first == again
    assert all(0 <= x <= 1 and 0 <= y <= 1 for x, y in first.values())
    apart = [abs(complex(*first[a]) - complex(*first[b]))
             for i, a in enumerate(switches) for b in switches[i + 1:]]
    assert min(apart) > 0.3
    assert layout(["only"], []) == {"only": (0.5, 0.5)}


def test_the_demo_chain_is_one_chain_of_three_hops_drawn_through_its_switches():
    report = demo_report()
    fabric = {"name": "demo", "switches": ["s1", "s2", "s3", "s4"], "links": []}
    drawn = scene(fabric, layout(fabric["switches"], []), report)
    (chain,) = drawn["chains"]
    assert chain["names"] == ["client", "firewall", "dpi", "vpn-gateway"]
    wires = {w["id"]: w for w in drawn["wires"]}
    assert [wires[c]["hop"] for c in chain["wires"]] == [0, 1, 2]
    assert {w["colour"] for w in wires.values()} == {chain["colour"]}
    for e in report["connections"]:
        assert wires[e["id"]]["nodes"] == [f"default:{e['client']}", *e["path"], f"default:{e['endpoint']}"]
    assert {end["name"] for end in drawn["ends"]} == {"client", "firewall", "dpi", "vpn-gateway"}


def test_links_say_slow_and_busy_in_words_and_wires_their_level_and_drops():
    fabric = ring(4, {"c0": ("s1",), "e0": ("s3",)})
    report = plan_report(fabric, resources_for([(att(fabric, "c0"), att(fabric, "e0"))]))
    (entry,) = report["connections"]
    cid = entry["id"]
    slow, busy = fabric.links[0], fabric.links[1]
    report["links"] = [{"link": slow.name, "latency": slow.latency + 0.030, "loss": 0.0, "samples": 5}]
    report["reservations"] = [{"link": busy.name, "capacity": busy.capacity, "residual": 0.0,
                               "reserved": {"forward": busy.capacity * 0.9, "reverse": 0.0}}]
    report["connections"] = [{**entry, "service_level": {"name": "fast", "summary": "≤ 5ms"},
                              "measured": {"latency": 0.031, "loss": 0.0, "complete": True, "met": False},
                              "throughput": {"from_client": 1e6, "from_endpoint": 2e6}}]
    events = [event(cid, Verdict.DROPPED, rate=64), event(cid, Verdict.FORWARDED),
              event(None, Verdict.DROPPED, node="s2"), event(cid, Verdict.DROPPED)]
    description = fabric_description(fabric)
    drawn = scene(description, layout(description["switches"], []), report, events)
    links = {link["name"]: link for link in drawn["links"]}
    assert links[slow.name]["state"] == "slow" and "SLOW" in links[slow.name]["label"]
    assert "30.0ms measured" in links[slow.name]["label"]
    assert links[busy.name]["state"] == "busy" and links[busy.name]["label"][-2:] == ["load 90%", "BUSY"]
    assert {links[n]["state"] for n in links} - {"slow", "busy"} == {"unmeasured"}
    (wire,) = drawn["wires"]
    assert (wire["sla"], wire["dropped"], wire["throughput"]) == ("broken", 65, {"from_client": 1e6,
                                                                               "from_endpoint": 2e6})
    assert {s["name"]: s["dropped"] for s in drawn["switches"]}["s2"] == 1


def test_the_page_filters_are_observes():
    query = page_query("pod=default/c0&verdict=dropped&protocol=tcp&port=23,80")
    assert query.number == 50 and len(query.whitelist) == 4  # pod and port on either side
    dropped_telnet = event("x", Verdict.DROPPED, port=23)
    assert query.matches(dropped_telnet)
    assert not query.matches(event("x", Verdict.FORWARDED, port=23))
    assert not query.matches(event("x", Verdict.DROPPED, port=22))
    assert page_query("").whitelist == ()
    for bad in ("verdict=maybe", "port=http", "label=app+in+(a"):
        with pytest.raises(ValueError):
            page_query(bad)
    # A selector keeps its commas; either side of the flow, as observe's --label.
    (source_side, destination_side) = page_query("label=app+in+(web,db),tier").whitelist
    assert source_side.source_label == destination_side.destination_label == ("app in (web,db),tier",)


@pytest.fixture
def page():
    fabric = ring(4, {"c0": ("s1",), "e0": ("s3",)})
    report = plan_report(fabric, resources_for([(att(fabric, "c0"), att(fabric, "e0"))]))
    store = FlowStore()
    server = StatusServer(lambda: report, "127.0.0.1", 0, fabric=fabric_description(fabric),
                          flows=store).start()
    try:
        yield f"http://127.0.0.1:{server.address[1]}", store, report
    finally:
        server.stop()


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_the_page_and_its_files_are_served(page):
    url, _, _ = page
    status, kind, body = get(url + "/ui")
    assert status == 200 and kind.startswith("text/html") and b'src="/ui/live.js"' in body
    assert get(url + "/ui/live.js")[:2] == (200, "text/javascript")
    assert get(url + "/ui/live.css")[:2] == (200, "text/css")
    assert get(url + "/ui/nothing")[0] == 404
    status, _, body = get(url + "/ui/scene")
    assert status == 200 and json.loads(body)["chains"][0]["names"] == ["c0", "e0"]
    assert get(url + "/ui/events?port=http")[0] == 400


def read_events(reply, wanted: int) -> list[tuple[str, dict]]:
    """The next ``wanted`` server-sent events of a stream (comments skipped)."""
    found, name = [], None
    while len(found) < wanted:
        line = reply.readline().decode().rstrip("\n")
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            found.append((name, json.loads(line.removeprefix("data: "))))
    return found


def test_events_stream_the_scene_then_new_flows_through_the_filters(page):
    url, store, report = page
    store.add([event("old", Verdict.DROPPED, port=23), event("old", Verdict.FORWARDED)])
    with urllib.request.urlopen(url + "/ui/events?verdict=DROPPED", timeout=5) as reply:
        assert reply.headers["Content-Type"] == "text/event-stream"
        (_, history), (scene_name, drawn) = read_events(reply, 2)
        assert [r["verdict"] for r in history["rows"]] == ["DROPPED (POLICY_DENIED)"]
        assert scene_name == "scene" and drawn["wires"][0]["id"] == report["connections"][0]["id"]
        store.add([event("new", Verdict.FORWARDED), event("new", Verdict.DROPPED, port=23)])
        ((name, flows),) = read_events(reply, 1)
        assert name == "flows" and [(r["connection"], r["destination"]) for r in flows["rows"]] == [
            ("new", "default/e0:23")]
        report["links"] = [{"link": report_link(url), "latency": 0.5, "loss": 0.0, "samples": 3}]
        (name, changed), = read_events(reply, 1)
        assert name == "scene" and "slow" in {link["state"] for link in changed["links"]}


def report_link(url: str) -> str:
    return json.loads(get(url + "/ui/scene")[2])["links"][0]["name"]
