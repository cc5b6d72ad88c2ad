"""`plan --dot` / `status --dot`: the fabric with the chains drawn on it, parsed back with pydot."""

from __future__ import annotations

import json
from dataclasses import replace
from itertools import pairwise

import pydot
import pytest

from ryu_nsm import cli
from ryu_nsm.core.model import FrozenMap
from ryu_nsm.core.planner import make_plan
from ryu_nsm.observe.picture import fabric_description, to_dot
from ryu_nsm.observe.report import connection_entry
from ryu_nsm.observe.status_api import StatusServer
from ryu_nsm.qos.service_level import ServiceLevel

from .fabrics import ring
from .test_cli import ryu_nsm
from .test_planner import att, resources_for


def parse(text: str) -> pydot.Dot:
    (graph,) = pydot.graph_from_dot_data(text)
    return graph


def unquote(name: str) -> str:
    return json.loads(name) if name.startswith('"') else name


def edges(graph: pydot.Dot) -> list[tuple[str, str, dict]]:
    """Every edge as (end, end, attributes), a chain a -- b -- c giving one per hop."""
    return [(unquote(e.get_source()), unquote(e.get_destination()),
             {k: unquote(v) for k, v in e.get_attributes().items()}) for e in graph.get_edges()]


def hops(graph: pydot.Dot, tooltip: str) -> tuple[list[tuple[str, str]], set[str]]:
    """The hops drawn for one wire (by its tooltip) and the colours they are drawn in."""
    drawn = [(a, b, attrs) for a, b, attrs in edges(graph) if attrs.get("tooltip") == tooltip]
    return [(a, b) for a, b, _ in drawn], {attrs["color"] for _, _, attrs in drawn}


def test_the_demo_chain_is_drawn_along_its_paths_in_one_colour():
    out = ryu_nsm("plan", "--dot", "topologies/demo-chain.yaml", "examples/demo-chain")
    assert out.returncode == 0, out.stderr
    graph = parse(out.stdout)
    report = json.loads(ryu_nsm("plan", "--json", "topologies/demo-chain.yaml", "examples/demo-chain").stdout)
    nodes = {unquote(n.get_name()) for n in graph.get_nodes()}
    assert {"s1", "s2", "s3", "s4", "default:client", "default:vpn-gateway"} <= nodes
    colours = set()
    for e in report["connections"]:
        drawn, colour = hops(graph, e["id"])
        walk = [f"default:{e['client']}", *e["path"], f"default:{e['endpoint']}"]
        assert sorted(drawn) == sorted(pairwise(walk))  # pydot groups edges by their ends
        colours |= colour
    assert len(colours) == 1  # one chain, one colour
    fabric_links = [(a, b) for a, b, attrs in edges(graph) if attrs.get("color") == "gray50"]
    assert len(fabric_links) == 5


def plan_report(fabric, resources) -> dict:
    plan = make_plan(fabric, resources)
    return {"connections": [connection_entry(pc, pc.state) for pc in plan.connections.values()],
            "reservations": plan.reservations()}


def test_chains_get_their_own_colours_backups_are_dashed_and_failures_listed():
    fabric = ring(4, {"c0": ("s1",), "e0": ("s3",), "c1": ("s2",), "e1": ("s4",), "c2": ("s1",)})
    pairs = [(att(fabric, "c0"), att(fabric, "e0")), (att(fabric, "c1"), att(fabric, "e1")),
             (att(fabric, "c2"), att(fabric, "e1"))]
    level = ServiceLevel("safe", "svc", client_selector=FrozenMap(n="0"), protection="disjoint",
                         guaranteed_bandwidth=5_000_000)
    resources = replace(resources_for(pairs), service_levels=(level,))
    stray = replace(resources.requests[2], service="nowhere")
    resources = replace(resources, requests=(*resources.requests[:2], stray))
    report = plan_report(fabric, resources)
    graph = parse(to_dot(fabric_description(fabric), report))
    _, first = hops(graph, "default/c0/nsm-1")
    _, second = hops(graph, "default/c1/nsm-1")
    assert len(first) == len(second) == 1 and first != second
    backup, colour = hops(graph, "default/c0/nsm-1 backup")
    assert backup and colour == first
    assert all(attrs["style"] == "dashed" for _, _, attrs in edges(graph)
               if attrs.get("tooltip") == "default/c0/nsm-1 backup")
    ((_, _, failed),) = [(a, b, attrs) for a, b, attrs in edges(graph)
                         if attrs.get("tooltip") == "default/c2/nsm-1"]
    assert failed["color"] == "red" and failed["style"] == "dotted"
    title = unquote(graph.get_attributes().get("label") or graph.get_node("graph")[0].get("label"))
    assert "1 failed" in title and "failed default/c2/nsm-1: network service 'nowhere' not found" in title
    reserved = [attrs["label"] for _, _, attrs in edges(graph)
                if attrs.get("color") == "gray50" and "reserved 5M" in attrs.get("label", "")]
    assert reserved, "links holding the guarantee say so"


@pytest.fixture
def served():
    """A status endpoint serving a status with measurements, as a running controller would."""
    fabric = ring(4, {"c0": ("s1",), "e0": ("s3",)})
    report = plan_report(fabric, resources_for([(att(fabric, "c0"), att(fabric, "e0"))]))
    slow, fine = fabric.links[0], fabric.links[1]
    report["links"] = [{"link": slow.name, "latency": slow.latency + 0.030, "loss": 0.0, "samples": 5},
                       {"link": fine.name, "latency": fine.latency, "loss": 0.0, "samples": 5}]
    report["switches"] = [{"name": s.name, "dpid": hex(s.dpid), "connected": s.name != "s4", "flows": 3}
                          for s in fabric.switches]
    server = StatusServer(lambda: report, "127.0.0.1", 0, fabric=fabric_description(fabric)).start()
    try:
        yield f"http://127.0.0.1:{server.address[1]}", fabric
    finally:
        server.stop()


def test_status_dot_marks_slow_links_and_disconnected_switches(served, capsys):
    url, fabric = served
    assert cli.main(["status", "--dot", "--url", url]) == 0
    graph = parse(capsys.readouterr().out)
    by_tooltip = {attrs.get("tooltip"): attrs for _, _, attrs in edges(graph)}
    slow, fine = fabric.links[0], fabric.links[1]
    assert by_tooltip[slow.name]["color"] == "red" and "measured 30.0ms" in by_tooltip[slow.name]["label"]
    assert by_tooltip[fine.name]["color"] == "gray50"
    (s4,) = graph.get_node('"s4"')
    assert s4.get("style") == "dashed"
