"""The benchmark figure format, the timing helper, and a quick run of bench/path_compute.py."""

import importlib.util
import re
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ryu_nsm.core.planner import make_plan

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str, path: Path):
    """Import a bench script as module ``name`` (registered: dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


common = _load("bench_common", BENCH / "common.py")


@pytest.fixture
def path_compute(monkeypatch):
    # path_compute.py imports `common` as a sibling script does; give it ours for this test only.
    monkeypatch.setitem(sys.modules, "common", common)
    return _load("bench_path_compute", BENCH / "path_compute.py")


@pytest.fixture
def admission(monkeypatch):
    monkeypatch.setitem(sys.modules, "common", common)
    return _load("bench_admission", BENCH / "admission.py")


def test_figure_prints_the_documented_line():
    line = common.figure("path compute, 3-function chain, fat-tree k=16", 0.84, "ms", 0.31, "ms",
                         "one networkx BFS")
    assert line == (
        "path compute, 3-function chain, fat-tree k=16: 0.84 ms (limit 0.31 ms one networkx BFS, ratio 2.71)"
    )


def test_figure_without_label_and_across_time_units():
    assert common.figure("install", 2, "ms", 500, "us") == "install: 2 ms (limit 500 us, ratio 4)"
    assert common.figure("rate", 300, "flows/s", 1200, "flows/s", "ovs-ofctl") == (
        "rate: 300 flows/s (limit 1200 flows/s ovs-ofctl, ratio 0.25)"
    )


@pytest.mark.parametrize("value, text", [
    (0, "0"), (12.0, "12"), (1.5, "1.5"), (0.000123456, "0.000123"), (2.0 / 3, "0.667"),
    (99.96, "100"), (1234.6, "1235"), (58423.2, "58423"),
])
def test_format_number_keeps_three_significant_digits_without_exponent(value, text):
    assert common.format_number(value) == text


@pytest.mark.parametrize("args", [
    ("a: b", 1, "ms", 1, "ms"),                # a colon would break parsing the line
    ("", 1, "ms", 1, "ms"),
    ("x", 1, "ms", 0, "ms"),                   # no ratio against a zero limit
    ("x", 1, "flows/s", 1, "ms"),              # units that cannot be compared
    ("x", 1, "m s", 1, "m s"),
    ("x", -1, "ms", 1, "ms"),
    ("x", float("nan"), "ms", 1, "ms"),
    ("x", 1, "ms", 1, "ms", "a, b"),
])
def test_figure_refuses_what_it_cannot_print_unambiguously(args):
    with pytest.raises(ValueError):
        common.figure(*args)


@given(
    value=st.floats(min_value=1e-6, max_value=1e7),
    limit=st.floats(min_value=1e-6, max_value=1e7),
    label=st.sampled_from(["", "one networkx BFS", "ovs-ofctl add-flows"]),
)
def test_every_figure_parses_back_to_its_numbers(value, limit, label):
    match = common.FIGURE_RE.match(common.figure("some bench, k=4", value, "ms", limit, "ms", label))
    assert match is not None
    assert match["name"] == "some bench, k=4" and (match["limit_label"] or "") == label
    # Three significant digits: printed numbers are within half a unit of the third digit.
    assert float(match["value"]) == pytest.approx(value, rel=5e-3)
    assert float(match["limit"]) == pytest.approx(limit, rel=5e-3)
    assert float(match["ratio"]) == pytest.approx(value / limit, rel=5e-3)


def test_measure_calibrates_fast_calls_into_rounds():
    calls = []
    timing = common.measure(lambda: calls.append(1), repeats=4, round_seconds=0.005)
    assert timing.number > 1 and len(timing.samples) == 4
    assert len(calls) > 4 * timing.number  # the calibration rounds ran too
    assert 0 < timing.best <= timing.median


def test_measure_times_a_call_that_fills_a_round_on_its_own():
    timing = common.measure(lambda: time.sleep(0.002), repeats=3, round_seconds=0.001)
    assert timing.number == 1 and len(timing.samples) == 3
    assert timing.best >= 0.002


def test_measure_stops_starting_rounds_when_the_budget_is_spent():
    timing = common.measure(lambda: time.sleep(0.01), repeats=1000, round_seconds=0.001, budget_seconds=0.05)
    assert 1 <= len(timing.samples) <= 6


def test_chain_setup_plans_three_connections_across_pods(path_compute):
    setup = path_compute.chain_setup(4)
    plan = make_plan(setup.fabric, setup.resources)
    path_compute.check_plan(setup, plan)
    assert len(setup.hops) == 3
    pods = [sw.split("_")[0] for hop in setup.hops for sw in hop]
    assert len(set(pods)) == 4  # client and three functions, each in its own pod
    for conn in plan.connections.values():
        assert len(conn.path.switches) == 5  # edge, aggregation, core, aggregation, edge


def test_check_plan_refuses_a_chain_that_did_not_plan(path_compute):
    setup = path_compute.chain_setup(4)
    no_gateway = replace(setup.resources, endpoints=setup.resources.endpoints[:2])
    with pytest.raises(RuntimeError, match="not planned as built"):
        path_compute.check_plan(setup, make_plan(setup.fabric, no_gateway))


def test_quick_run_prints_figure_lines_from_any_directory(tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCH / "path_compute.py"), "--quick"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    matches = [common.FIGURE_RE.match(line) for line in lines]
    assert all(matches), lines
    assert [m["name"] for m in matches] == [
        "path compute (cached view), 3-function chain, fat-tree k=4",
        "plan, 3-function chain, fat-tree k=4",
        "latency-bounded path, bounds found anew, 3-function chain, fat-tree k=4",
        "latency-bounded path, bounds kept, 3-function chain, fat-tree k=4",
    ]
    for m in matches:
        assert float(m["value"]) > 0 and float(m["limit"]) > 0
        assert m["limit_label"] in ("one networkx BFS", "3 networkx bidirectional_dijkstra by latency")
        assert float(m["ratio"]) == pytest.approx(float(m["value"]) / float(m["limit"]), rel=1.5e-2)


def test_core_scale_quick_run_prints_request_idle_memory_and_decode_figures(tmp_path):
    # Pure: the core with emulated switches, 200 connections on a k=4 fat-tree, 20 single requests.
    done = subprocess.run(
        [sys.executable, str(BENCH / "core_scale.py"), "--quick"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    matches = [common.FIGURE_RE.match(line) for line in done.stdout.splitlines()]
    assert matches and all(matches), done.stdout
    what = "200 connections, fat-tree k=4"
    assert [m["name"] for m in matches] == [
        f"core work per request p50, {what}", f"core work per request p99, {what}",
        f"core idle CPU, {what}", f"core memory per connection, {what}",
        f"flow stats decode per flow, busiest switch, {what}",
    ]
    p50, p99, idle, memory, decode = matches
    assert 0 < float(p50["value"]) <= float(p99["value"]) and p50["limit"] == p99["limit"]
    assert p50["limit_label"] == "the same request on an empty controller"
    assert idle["unit"] == idle["limit_unit"] == "ms/s" and float(idle["limit"]) == 100
    assert memory["unit"] == memory["limit_unit"] == "bytes" and float(memory["limit"]) > 0
    assert decode["unit"] == decode["limit_unit"] == "us"
    assert decode["limit_label"] == "os-ken's OFPFlowStats.parser"
    for m in matches:
        assert float(m["ratio"]) == pytest.approx(float(m["value"]) / float(m["limit"]), rel=1.5e-2)
    assert "connections up on 20 switches" in done.stderr and "FAILED" not in done.stderr


def test_admission_workload_admits_refuses_every_kind_and_preempts(admission):
    work = admission.workload(8, 1000)
    _, ledger, decisions = admission.admit_once(work)
    assert admission.invariant_violations(work, ledger, decisions) == []
    count = admission.tally(work, decisions)
    # The workload is meant to saturate partway: every outcome the bench reports must occur.
    for what in ("admitted", "protected", "preemptions", "preempted, moved",
                 *(f"refused for {kind}" for kind in admission.KINDS)):
        assert count[what] > 0, (what, count)
    refused = sum(count[f"refused for {kind}"] for kind in admission.KINDS)
    dropped = sum(count[f"preempted, dropped for {kind}"] for kind in admission.KINDS)
    assert count["admitted"] + refused + dropped == len(work.demands) == len(decisions)


def test_admission_invariant_check_finds_oversubscription_and_lost_reservations(admission):
    work = admission.workload(4, 200)
    _, ledger, decisions = admission.admit_once(work)
    assert admission.invariant_violations(work, ledger, decisions) == []
    # The same reservations judged against links of a quarter of the capacity: oversubscribed.
    quarter = replace(work.fabric, links=tuple(replace(link, capacity=link.capacity / 4)
                                               for link in work.fabric.links))
    problems = admission.invariant_violations(replace(work, fabric=quarter), ledger, decisions)
    assert any("reserved, capacity" in p for p in problems), problems
    ledger.release(next(iter(ledger.reservations)))
    problems = admission.invariant_violations(work, ledger, decisions)
    assert any("admitted but" in p for p in problems), problems


def test_admission_refusal_kind_refuses_reasons_it_does_not_know(admission):
    assert admission.refusal_kind("switch e3_1 is down") == "disconnected"
    with pytest.raises(RuntimeError, match="cannot tell"):
        admission.refusal_kind("the moon is in the wrong phase")


def test_admission_quick_run_prints_one_rate_against_plain_shortest_paths(tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCH / "admission.py"), "--quick"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    matches = [common.FIGURE_RE.match(line) for line in lines]
    assert len(matches) == 1 and all(matches), lines
    (m,) = matches
    assert m["name"] == "admission, 1000 guaranteed connections, fat-tree k=8"
    assert m["unit"] == m["limit_unit"] == "conn/s" and float(m["value"]) > 0 and float(m["limit"]) > 0
    assert m["limit_label"] == "FabricView.shortest of the same pairs"
    assert float(m["ratio"]) == pytest.approx(float(m["value"]) / float(m["limit"]), rel=1.5e-2)
    assert "invariant: held" in done.stderr and "FAILED" not in done.stderr


@pytest.mark.ovs
def test_request_latency_quick_run_prints_two_figures_against_one_limit(tmp_path):
    # Drives real netdev bridges and a controller child process; the run itself checks the flows.
    done = subprocess.run(
        [sys.executable, str(BENCH / "request_latency.py"), "--quick"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    matches = [common.FIGURE_RE.match(line) for line in done.stdout.splitlines()]
    assert matches and all(matches), done.stdout
    assert [m["name"] for m in matches] == [
        "request to forwarding, 100 connections",
        "request to forwarding p99, 100 connections",
    ]
    total, p99 = (float(m["value"]) for m in matches)
    assert 0 < p99 <= total
    assert matches[0]["limit"] == matches[1]["limit"] and float(matches[0]["limit"]) > 0
    for m in matches:
        assert m["unit"] == m["limit_unit"] == "s"
        assert m["limit_label"] == "ovs-ofctl --bundle of the same flows"
        assert float(m["ratio"]) == pytest.approx(float(m["value"]) / float(m["limit"]), rel=1.5e-2)
    assert "flows planned" in done.stderr and "FAILED" not in done.stderr


@pytest.mark.ovs
def test_k8s_latency_quick_run_prints_p50_p99_and_total_against_ofctl_limits(tmp_path):
    # The controller child process, the API server emulator and a k=4 fat-tree of netdev bridges; the
    # run itself checks that every bridge ends with exactly the planned flows.
    done = subprocess.run(
        [sys.executable, str(BENCH / "k8s_latency.py"), "--quick"],
        cwd=tmp_path, capture_output=True, text=True, timeout=170,
    )
    assert done.returncode == 0, done.stderr
    matches = [common.FIGURE_RE.match(line) for line in done.stdout.splitlines()]
    assert matches and all(matches), done.stdout
    what = "100 pods, 3-function chain, fat-tree k=4"
    assert [m["name"] for m in matches] == [
        f"k8s request to forwarding p50, {what}",
        f"k8s request to forwarding p99, {what}",
        "k8s 100 pods to forwarding, 3-function chain, fat-tree k=4",
    ]
    p50, p99, total = matches
    assert 0 < float(p50["value"]) <= float(p99["value"])
    assert (p50["unit"], p50["limit_unit"], p99["unit"], p99["limit_unit"]) == ("ms",) * 4
    assert p50["limit"] == p99["limit"] and float(p50["limit"]) > 0
    assert p50["limit_label"] == p99["limit_label"] == "ovs-ofctl --bundle of one request's flows"
    # No request can take longer than all of them: p99 (ms) is within the total (s).
    assert float(p99["value"]) <= float(total["value"]) * 1000 * (1 + 5e-3)
    assert total["unit"] == total["limit_unit"] == "s" and float(total["limit"]) > 0
    assert total["limit_label"] == "ovs-ofctl --bundle of the same flows"
    for m in matches:
        assert float(m["ratio"]) == pytest.approx(float(m["value"]) / float(m["limit"]), rel=1.5e-2)
    assert "flows planned" in done.stderr and "FAILED" not in done.stderr


@pytest.mark.ovs
def test_forwarder_setup_quick_run_prints_rates_and_setup_percentiles(tmp_path):
    # Run from another directory: the script must find common.py and the packages by itself.
    done = subprocess.run(
        [sys.executable, str(BENCH / "forwarder_setup.py"), "--quick"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    found = {m["name"]: m for m in map(common.FIGURE_RE.match, lines) if m}
    assert len(found) == len(lines) == 8, done.stdout
    for label in ("sequential", "8 concurrent"):
        rate = found[f"forwarder requests, {label}, 20 connections"]
        assert rate["unit"] == rate["limit_unit"] == "req/s" and float(rate["value"]) > 0
    p50 = found["forwarder set-up, request to first frame p50"]
    p99 = found["forwarder set-up, request to first frame p99"]
    assert 0 < float(p50["value"]) <= float(p99["value"])
    assert p50["limit_label"] == p99["limit_label"] == "ovs-vsctl add-port + ping"
    # mTLS with NSM's signed tokens against the same over plain gRPC, in the same run.
    for name in ("forwarder request to answer p50, mTLS + signed tokens",
                 "forwarder set-up, request to first frame p50, mTLS + signed tokens"):
        assert found[name]["limit_label"].endswith("the same over plain gRPC")
        assert float(found[name]["value"]) > 0


@pytest.fixture
def qos_failover(monkeypatch):
    monkeypatch.setitem(sys.modules, "common", common)
    return _load("bench_qos_failover", BENCH / "qos_failover.py")


def _trace(qos_failover, arrivals: dict[int, float], total: int):
    """A stream record: sequence → one-way delay (ms), sent every millisecond from t=0."""
    seqs = sorted(arrivals)
    sent = [s * 1_000_000 for s in seqs]
    arrived = [t + int(arrivals[s] * 1e6) for s, t in zip(seqs, sent, strict=True)]
    return qos_failover.Trace(tuple(seqs), tuple(sent), tuple(arrived), total)


def test_qos_failover_loss_window_is_the_lost_stretch_of_the_stream_after_the_cut(qos_failover):
    delivered = {s: 0.5 for s in range(20) if s not in (3, 10, 11, 12, 13)}
    trace = _trace(qos_failover, delivered, total=22)
    assert [(g.before, g.lost, g.span_ns) for g in qos_failover.gaps(trace)] == [
        (2, 1, 1_000_000), (9, 4, 4_000_000)]
    # A cut at 8.5 ms: only the run that ends after it counts.
    assert qos_failover.loss_after(trace, 8_500_000)[:2] == (4.0, 4)
    assert qos_failover.loss_after(trace, 0)[:2] == (5.0, 5)
    assert qos_failover.loss_after(trace, 15_000_000)[:2] == (0, 0)
    assert qos_failover.trailing_loss(trace) == 2  # 20 and 21 never came
    assert qos_failover.largest_arrival_gap(trace, 0, 9_000_000) == 2.0  # 2 → 4


def test_qos_failover_first_fast_datagram_after_the_breach(qos_failover):
    delays = {s: (0.3 if s < 5 else 30.0 if s < 15 else 2.0) for s in range(25)}
    trace = _trace(qos_failover, delays, total=25)
    # Sent after 4.5 ms: 5..14 are slow; 15 is the first under 10 ms, arriving at 17 ms.
    assert qos_failover.first_fast(trace, 4_500_000, 10.0) == (17_000_000, 2_000_000)
    assert qos_failover.first_fast(trace, 4_500_000, 1.0) is None


@pytest.mark.ovs
def test_qos_failover_quick_run_prints_loss_windows_and_sla_reroute_time(tmp_path):
    # Three netdev bridges, namespaces, the impairment element and a controller child process, rebuilt
    # for every cut; the run itself fails when a cut does not fail over or the breach does not move.
    done = subprocess.run(
        [sys.executable, str(BENCH / "qos_failover.py"), "--quick"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    matches = [common.FIGURE_RE.match(line) for line in done.stdout.splitlines()]
    assert matches and all(matches), done.stdout
    names = [m["name"] for m in matches]
    assert names == [
        f"failover loss window, {kind}, {stat} of 2 cuts" for stat in ("median", "max")
        for kind in ("fast-failover", "controller reroute", "fast-failover with the controller gone")
    ] + ["SLA breach to rerouted traffic, 30 ms on a 10 ms bound, median of 1"]
    for m in matches[:6]:
        assert m["unit"] == m["limit_unit"] == "ms" and float(m["limit"]) > 0
        # Heals well within the 1.5 s observed (else the run fails: no failover).
        assert 0 <= float(m["value"]) < 1500
    assert matches[0]["limit_label"] == matches[3]["limit_label"] == "cut to port-down at the controller"
    for median, top in zip(matches[:3], matches[3:6], strict=True):
        # The stream sees the cut: of two cuts at least one loses what was on the wire.
        assert 0 <= float(median["value"]) <= float(top["value"]) and float(top["value"]) > 0
    sla = matches[6]
    assert sla["unit"] == sla["limit_unit"] == "s" and sla["limit_label"].startswith("design bound")
    # The controller waits for the median and the SLA window (3 s) before it moves anything.
    assert 3 < float(sla["value"]) < 30
    for m in matches:
        assert float(m["ratio"]) == pytest.approx(float(m["value"]) / float(m["limit"]), rel=1.5e-2)
    assert "whole benchmark" in done.stderr and "FAILED" not in done.stderr


def quick_figures(script: str, cwd, timeout: float) -> tuple[list, str]:
    """Run ``bench/<script> --quick``: its figure lines matched (every line is one), and its stderr."""
    done = subprocess.run([sys.executable, str(BENCH / script), "--quick"], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    matches = [common.FIGURE_RE.match(line) for line in done.stdout.splitlines()]
    assert matches and all(matches), done.stdout
    return matches, done.stderr


@pytest.mark.ovs
def test_scale_quick_run_prints_steady_state_request_failure_and_restart_figures(tmp_path):
    # A k=4 fat-tree of netdev bridges, 200 connections from files, 10 single requests, a restart and
    # a cut link; every figure's limit is measured in the same run (or is a design bound).
    matches, stderr = quick_figures("scale.py", tmp_path, 170)
    what = "200 connections, fat-tree k=4"
    names = [m["name"] for m in matches]
    assert names[:4] == [
        f"controller memory per connection, {what}", f"controller idle CPU, {what}",
        f"request to forwarding p50 at size, {what}", f"request to forwarding p99 at size, {what}",
    ]
    assert re.fullmatch(rf"link failure to rerouted, \d+ connections moved, {what}", names[4])
    assert names[5] == f"restart, reconnect to serving, {what}"
    memory, idle, p50, p99, cut, restart = matches
    assert memory["unit"] == memory["limit_unit"] == "bytes"
    assert idle["unit"] == idle["limit_unit"] == "ms/s" and float(idle["limit"]) == 100
    assert 0 < float(p50["value"]) <= float(p99["value"]) and p50["limit"] == p99["limit"]
    assert p50["limit_label"] == "ovs-ofctl --bundle of one request's flows"
    assert cut["limit_label"] == "ovs-ofctl --bundle of the moved connections' flows"
    assert restart["unit"] == "s" and float(restart["limit"]) == 3
    for m in matches:
        assert float(m["ratio"]) == pytest.approx(float(m["value"]) / float(m["limit"]), rel=1.5e-2)
    assert "programs sent before it" in stderr and "FAILED" not in stderr


@pytest.mark.ovs
def test_scale_watch_quick_run_times_requests_from_their_watch_events(tmp_path):
    # scale.py's load from the API server emulator: the idle CPU with the Kubernetes source, then
    # single Pods timed from the watch event the controller logged to forwarding.
    matches, stderr = quick_figures("scale_watch.py", tmp_path, 120)
    what = "200 connections, fat-tree k=4"
    assert [m["name"] for m in matches] == [
        f"controller idle CPU with the Kubernetes source, {what}",
        f"request to forwarding from a watch event p50 at size, {what}",
        f"request to forwarding from a watch event p99 at size, {what}",
    ]
    idle, p50, p99 = matches
    assert idle["unit"] == "ms/s" and float(idle["limit"]) == 100
    assert 0 < float(p50["value"]) <= float(p99["value"]) and p50["limit"] == p99["limit"]
    assert p50["limit_label"] == "ovs-ofctl --bundle of one request's flows"
    for m in matches:
        assert float(m["ratio"]) == pytest.approx(float(m["value"]) / float(m["limit"]), rel=1.5e-2)
    # Both clocks are logged: from the create call (the emulator's queueing in it) and from the event.
    assert "from the create call" in stderr and "from the watch event" in stderr
    assert "FAILED" not in stderr


@pytest.fixture
def policy_bench(monkeypatch):
    monkeypatch.setitem(sys.modules, "common", common)
    return _load("bench_policy", BENCH / "policy.py")


def test_policy_pure_figures_compare_with_the_same_wires_without_policies(policy_bench):
    lines = policy_bench.pure_figures(20, 4)
    matches = [common.FIGURE_RE.match(line) for line in lines]
    assert all(matches), lines
    assert [m["name"] for m in matches] == [
        "policy flows, 20 wires × 10 policies of 5 rules, fat-tree k=4",
        "policy plan, 20 wires × 10 policies of 5 rules, fat-tree k=4",
    ]
    flows, plan = matches
    assert flows["unit"] == "flows" and float(flows["ratio"]) > 1  # policies add flows, never remove any
    assert plan["unit"] == plan["limit_unit"] == "ms"
    for m in matches:
        assert m["limit_label"] == "the same wires without policies"


def test_policy_edit_is_strict_deletes_then_adds(policy_bench):
    before = ["cookie=0x4e1,table=3,priority=2000,tcp_dst=80 actions=goto_table:4",
              "cookie=0x4e1,table=0 actions=drop"]
    after = ["cookie=0x4e1,table=3,priority=2000,tcp_dst=8080 actions=goto_table:4", before[1]]
    assert policy_bench.edit_lines(before, after) == [
        "delete_strict table=3,priority=2000,tcp_dst=80",
        "add cookie=0x4e1,table=3,priority=2000,tcp_dst=8080 actions=goto_table:4",
    ]


@pytest.mark.ovs
def test_policy_quick_run_prints_flows_plan_and_edit_latency(tmp_path):
    # Two netdev bridges and a controller child process; the run checks the bridges hold the plan.
    done = subprocess.run([sys.executable, str(BENCH / "policy.py"), "--quick"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stderr
    matches = [common.FIGURE_RE.match(line) for line in done.stdout.splitlines()]
    assert matches and all(matches), done.stdout
    assert [m["name"] for m in matches] == [
        "policy flows, 100 wires × 10 policies of 5 rules, fat-tree k=4",
        "policy plan, 100 wires × 10 policies of 5 rules, fat-tree k=4",
        "policy edit to enforced, 10 wires on OVS",
    ]
    assert matches[2]["limit_label"] == "ovs-ofctl --bundle of the same edit's flows"
    for m in matches:
        assert float(m["ratio"]) == pytest.approx(float(m["value"]) / float(m["limit"]), rel=1.5e-2)


@pytest.fixture
def k8s_burst(monkeypatch):
    monkeypatch.setitem(sys.modules, "common", common)
    monkeypatch.syspath_prepend(str(BENCH))  # k8s_burst imports k8s_latency as a sibling script
    monkeypatch.delitem(sys.modules, "k8s_latency", raising=False)
    return _load("bench_k8s_burst", BENCH / "k8s_burst.py")


def test_k8s_burst_counts_only_the_events_of_its_own_burst(k8s_burst):
    run = k8s_burst.kl.Run(10)
    log = "\n".join([
        "2026-12-07 04:00:00,100 DEBUG ryu_nsm.sources.kubernetes: watch event ADDED Pod "
        "('Pod', 'default', 'pod000')",  # the burst before
        "2026-12-07 04:00:05,250 DEBUG ryu_nsm.sources.kubernetes: watch event ADDED Pod "
        "('Pod', 'default', 'pod000')",
        "2026-12-07 04:00:05,300 DEBUG ryu_nsm.sources.kubernetes: watch event MODIFIED Pod "
        "('Pod', 'default', 'pod001')",
        "2026-12-07 04:00:05,400 DEBUG ryu_nsm.sources.kubernetes: watch event ADDED Pod "
        "('Pod', 'default', 'fw0')",
    ])
    start = datetime(2026, 12, 7, 4, 0, 5).timestamp()
    # What k8s_burst reads of its controller's log: the events since its burst began.
    arrived = k8s_burst.kl.watch_events(log, run.pods(), start - 100.0, since_wall=start)
    assert arrived == {run.client_id(0): pytest.approx(100.25)}


@pytest.mark.ovs
def test_k8s_burst_quick_run_prints_the_tail_and_the_distribution(tmp_path):
    # A k=4 fat-tree of netdev bridges, the API server emulator and a controller child process.
    done = subprocess.run([sys.executable, str(BENCH / "k8s_burst.py"), "--quick"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr
    matches = [common.FIGURE_RE.match(line) for line in done.stdout.splitlines()]
    assert len(matches) == 3 and all(matches), done.stdout
    assert matches[0]["name"].startswith("k8s burst, last pod's watch event to forwarding, 100 pods")
    for m in matches:
        assert m["limit_label"] == "ovs-ofctl --bundle of the last pod's flows"
