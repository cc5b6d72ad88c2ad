"""/metrics: the controller core's status as Prometheus metrics, parsed back as a scraper would."""

from __future__ import annotations

from dataclasses import replace

from prometheus_client.parser import text_string_to_metric_families

from ryu_nsm.core.controller import Controller, PortInfo
from ryu_nsm.core.model import ClientRequest
from ryu_nsm.observe.metrics import ExpositionMemo, exposition
from ryu_nsm.observe.report import StatusRenderer, render_text, status_json
from ryu_nsm.qos.service_level import ServiceLevel

from .fabrics import ring
from .test_controller import FakeFabric
from .test_planner import att, resources_for

M = 1_000_000
ID = "default/c0/nsm-1"


def scrape(ctl: Controller) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) → value, from the text a scraper gets."""
    text = exposition(lambda: status_json(ctl.status())).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def running():
    fab = ring(4, {"c0": ("s1",), "e0": ("s3",)})
    level = ServiceLevel("gold", "svc", guaranteed_bandwidth=10 * M)
    res = replace(resources_for([(att(fab, "c0"), att(fab, "e0"))]), service_levels=(level,))
    ctl, sw = Controller(fab), FakeFabric(fab)
    sw.connect_all(ctl)
    sw.run(ctl, ctl.set_resources(res, 1.0))
    return fab, res, ctl, sw


def cut_first_link(fab, ctl: Controller, sw: FakeFabric, now: float) -> None:
    """The first link of the connection's path goes down (its a-end port reports it)."""
    link = ctl.plan.connections[ID].path.links[0]
    name = next(n for (s, n), p in fab.port_names.items() if (s, p) == (link.a, link.a_port))
    sw.run(ctl, ctl.port_changed(fab.switch_by_name[link.a].dpid, PortInfo(link.a_port, name, False), now),
           now)


def test_an_up_connection_its_reservations_and_the_switches():
    fab, _, ctl, _ = running()
    samples = scrape(ctl)
    ends = {"connection": ID, "network_service": "svc"}
    assert value(samples, "ryu_nsm_connection_up", **ends, state="up") == 1.0
    path = ctl.plan.connections[ID].path
    assert value(samples, "ryu_nsm_connection_path_latency_seconds", **ends, service_level="gold") == (
        path.latency)
    for link in path.links:
        for direction in (f"{link.a}->{link.b}", f"{link.b}->{link.a}"):
            assert value(samples, "ryu_nsm_link_reserved_bits_per_second", link=link.name,
                         direction=direction) == 10 * M
        assert value(samples, "ryu_nsm_link_capacity_bits_per_second", link=link.name) == link.capacity
    assert {value(samples, "ryu_nsm_switch_connected", switch=s.name) for s in fab.switches} == {1.0}
    assert value(samples, "ryu_nsm_connection_failures_total") == 0.0


def test_moves_failures_and_a_lost_switch_are_counted():
    fab, res, ctl, sw = running()
    cut_first_link(fab, ctl, sw, 2.0)
    assert value(scrape(ctl), "ryu_nsm_connection_moves_total", why="link_down") == 1.0

    stray = ClientRequest("stray", "nsm-1", "nowhere", attachment=att(fab, "c0"))
    sw.run(ctl, ctl.set_resources(replace(res, requests=(*res.requests, stray)), 3.0), 3.0)
    sw.run(ctl, ctl.switch_disconnected(fab.switch_by_name["s2"].dpid, 4.0), 4.0)
    samples = scrape(ctl)
    assert value(samples, "ryu_nsm_connection_failures_total") == 1.0
    stray_labels = {"connection": "default/stray/nsm-1", "network_service": "nowhere", "state": "failed"}
    assert value(samples, "ryu_nsm_connection_up", **stray_labels) == 0.0
    assert value(samples, "ryu_nsm_switch_connected", switch="s2") == 0.0
    assert value(samples, "ryu_nsm_connection_up", connection=ID, network_service="svc", state="up") == 1.0


def test_a_replica_under_leader_election_says_whether_it_leads():
    _, _, ctl, _ = running()
    assert value(scrape(ctl), "ryu_nsm_leader") is None  # no election: no such metric
    for leading in (True, False):
        status = {**status_json(ctl.status()), "role": {"leader": leading, "generation": 3, "switches": {}}}
        text = exposition(lambda s=status: s).decode()
        (sample,) = [s for family in text_string_to_metric_families(text) for s in family.samples
                     if s.name == "ryu_nsm_leader"]
        assert sample.value == (1.0 if leading else 0.0)


def test_status_text_sums_up_the_counters():
    fab, _, ctl, sw = running()
    text = render_text(status_json(ctl.status()))
    assert "since start: 0 moves, 0 failures, 0 service level breaches" in text
    cut_first_link(fab, ctl, sw, 2.0)
    assert "since start: 1 moves (link_down 1), 0 failures" in render_text(status_json(ctl.status()))


def test_a_memo_gives_the_exposition_a_whole_render_gives():
    """Kept between scrapes, each connection's lines are those of its entry now: after a move, a new
    failed connection, a lost switch, measurements and leader election."""
    fab, res, ctl, sw = running()
    memo = ExpositionMemo()
    renderer = StatusRenderer()

    def same() -> None:
        status = renderer.render(ctl.status())
        assert exposition(lambda: status, memo) == exposition(lambda: status)

    same()
    cut_first_link(fab, ctl, sw, 2.0)
    same()
    stray = ClientRequest("stray", "nsm-1", "nowhere", attachment=att(fab, "c0"))
    sw.run(ctl, ctl.set_resources(replace(res, requests=(*res.requests, stray)), 3.0), 3.0)
    same()
    sw.run(ctl, ctl.switch_disconnected(fab.switch_by_name["s2"].dpid, 4.0), 4.0)
    same()
    status = renderer.render(ctl.status())
    probe = {"latency": 0.001, "loss": 0.0, "complete": True, "met": True}
    measured = {**status, "role": {"leader": True}, "connections": [
        {**e, "measured": probe, "throughput": {"from_a": 1e6}} for e in status["connections"]]}
    assert exposition(lambda: measured, memo) == exposition(lambda: measured)
    sw.run(ctl, ctl.set_resources(res, 5.0), 5.0)  # the stray goes
    same()
