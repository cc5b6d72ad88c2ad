"""Prometheus metrics from the controller's status: what `ryu-nsm status` shows, for a time series.

One collector reads ``status()`` at each scrape (the same snapshot `/status` serves), so a metric
can never disagree with the status and the controller keeps no second set of books. Served on the
status endpoint as ``/metrics``.

Per connection (labels ``connection``, ``network_service``, ``service_level`` where one applies):
up, the planned path's latency, measured latency and loss, whether its level is met, throughput
each way, frames its meters dropped over its rate limit each way (since the controller started).
Per link: measured latency and loss, guaranteed bandwidth reserved each way and the capacity.
Per switch: connected, flows. Since start: moves by why, failures, service level breaches.
Per policy rule (summed over the wires it governs): packets allowed; per isolated workload: packets
dropped (both as the switches' flow counters last read: they restart when a gate is replaced).
With leader election: whether this replica leads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from itertools import compress
from operator import itemgetter

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from ryu_nsm.observe.report import Memo

CONTENT_TYPE = CONTENT_TYPE_LATEST
_CONNECTION = ["connection", "network_service"]


class StatusCollector(Collector):
    """Metric families from one ``status()`` snapshot per scrape."""

    def __init__(self, status: Callable[[], dict]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        status = self.status()
        yield from _connections(status.get("connections", []))
        yield from _fabric(status, status.get("connections", []))


def _fabric(status: dict, policed: Iterable[dict]) -> Iterator[Metric]:
    """Every family but the connections' own; ``policed``: the connections whose policy counters
    are summed (rendered whole: they move at every counter read)."""
    yield from _policy(policed)
    yield from _links(status.get("links", []), status.get("reservations", []))
    yield from _switches(status.get("switches", []))
    yield from _counters(status.get("counters", {}))
    if "role" in status:  # with leader election
        leader = _gauge("leader", "1 while this replica leads and programs the switches", [])
        leader.add_metric([], 1.0 if status["role"]["leader"] else 0.0)
        yield leader


def exposition(status: Callable[[], dict], memo: ExpositionMemo | None = None) -> bytes:
    """The text exposition of ``status()`` (a registry of its own: no process-wide state); with a
    ``memo`` kept between scrapes, only the connections that changed are rendered again."""
    if memo is not None:
        return memo.render(status())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status))
    return generate_latest(registry)


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def _text(families: Iterable[Metric]) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry).decode()


def _samples(text: str) -> dict[str, str]:
    """Family name → its sample lines, from the exposition of some families."""
    out: dict[str, str] = {}
    name = ""
    for line in text.splitlines(keepends=True):
        if line.startswith("# TYPE "):
            name = line.split(" ", 3)[2]
            out[name] = ""
        elif not line.startswith("# HELP "):
            out[name] += line
    return out


class ExpositionMemo:
    """Each connection's sample lines, kept while its status entry is the same object
    (``observe.report.StatusRenderer`` keeps unchanged entries) or equal to the last one of its id:
    a scrape renders again the connections that changed and the fabric's families. Lines are
    joined in chunks that end after a connection whose id hashes to a boundary, so a connection
    more or less joins again the chunk it falls in, not those after it; the rest is done at C
    speed. The output is what ``exposition`` without a memo gives. Safe to share between threads."""

    def __init__(self, chunk: int = 64) -> None:
        """``chunk``: connections in a chunk of joined lines, on average."""
        self._chunk = chunk
        self._lock = threading.Lock()
        self._memo = Memo(self._lines)
        self._by_id: dict[str, tuple[dict, tuple]] = {}  # connection id → (entry, its lines)
        self._chunks: dict[int, tuple[list[tuple], tuple[str, ...]]] = {}  # id(last lines) → (lines, joined)
        # (family name, its HELP and TYPE lines), in exposition order: a family without samples
        # is those two lines.
        heads = _text(_connections([])).splitlines(keepends=True)
        self._heads = [(kind.split(" ", 3)[2], doc + kind) for doc, kind in zip(heads[::2], heads[1::2],
                                                                                 strict=True)]

    def _lines(self, entry: dict) -> tuple:
        """(each family's sample lines of ``entry``…, whether it has policy counters, whether a chunk
        ends after it)."""
        held = self._by_id.get(entry["id"])
        if held is None or held[0] != entry:
            samples = _samples(_text(_connections([entry])))
            policy = entry.get("policy") or {}
            lines = (*(samples.get(name, "") for name, _ in self._heads),
                     bool(policy.get("rules") or policy.get("dropped")), hash(entry["id"]) % self._chunk == 0)
            held = self._by_id[entry["id"]] = (entry, lines)
        return held[1]

    def render(self, status: dict) -> bytes:
        entries = status.get("connections", [])
        with self._lock:
            lines = self._memo.all(entries)
            if len(self._by_id) > 2 * len(entries) + 100:
                self._by_id = {e["id"]: (e, line) for e, line in zip(entries, lines, strict=True)}
            chunks = self._joined(lines)
        parts = [head + "".join(map(itemgetter(i), chunks)) for i, (_, head) in enumerate(self._heads)]
        policed = compress(entries, map(itemgetter(-2), lines))
        return ("".join(parts) + _text(_fabric(status, policed))).encode()


    def _joined(self, lines: list[tuple]) -> list[tuple[str, ...]]:
        """Each chunk's lines joined per family, kept while the chunk holds the same lines."""
        ends = [*compress(range(1, len(lines) + 1), map(itemgetter(-1), lines))]
        if lines and (not ends or ends[-1] != len(lines)):
            ends.append(len(lines))
        kept, fresh, out, start = self._chunks, {}, [], 0
        for end in ends:
            part = lines[start:end]
            key = id(part[-1])
            held = kept.get(key)
            if held is None or held[0] != part:  # identity first: unchanged lines are the same tuples
                held = (part, tuple("".join(map(itemgetter(i), part)) for i in range(len(self._heads))))
            fresh[key] = held
            out.append(held[1])
            start = end
        self._chunks = fresh
        return out


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"ryu_nsm_{name}", doc, labels=labels)


def _connections(entries: list[dict]) -> Iterator[Metric]:
    up = _gauge("connection_up", "1 when the connection's flows are installed and its ends are up",
                _CONNECTION + ["state"])
    planned = _gauge("connection_path_latency_seconds", "Declared one-way latency of the planned path",
                     _CONNECTION + ["service_level"])
    latency = _gauge("connection_latency_seconds", "Measured one-way latency of the path",
                     _CONNECTION + ["service_level"])
    loss = _gauge("connection_loss_ratio", "Measured loss along the path", _CONNECTION + ["service_level"])
    met = _gauge("connection_service_level_met", "1 while measurements meet the connection's service level",
                 _CONNECTION + ["service_level"])
    rate = _gauge("connection_throughput_bits_per_second", "Rate entering the fabric at each end",
                  _CONNECTION + ["from"])
    metered = CounterMetricFamily("ryu_nsm_connection_meter_dropped_packets", "Frames the meter at each "
                                  "end dropped over the connection's rate limit",
                                  labels=_CONNECTION + ["from"])
    for e in entries:
        ids = [e["id"], e["network_service"]]
        up.add_metric(ids + [e["state"]], 1.0 if e["state"] == "up" else 0.0)
        level = (e.get("service_level") or {}).get("name")
        if level is not None and e.get("path_latency") is not None:
            planned.add_metric(ids + [level], e["path_latency"])
        measured = e.get("measured")
        if level is not None and measured:
            if measured.get("latency") is not None:
                latency.add_metric(ids + [level], measured["latency"])
            if measured.get("loss") is not None:
                loss.add_metric(ids + [level], measured["loss"])
            met.add_metric(ids + [level], 1.0 if measured["met"] else 0.0)
        for side, bits in (e.get("throughput") or {}).items():
            rate.add_metric(ids + [side.removeprefix("from_")], bits)
        for side, frames in (e.get("meter_drops") or {}).items():
            metered.add_metric(ids + [side.removeprefix("from_")], frames)
    yield from (up, planned, latency, loss, met, rate, metered)


def _policy(entries: Iterable[dict]) -> Iterator[Metric]:
    allowed: dict[tuple[str, ...], int] = {}
    dropped: dict[tuple[str, ...], int] = {}
    for e in entries:
        policy = e.get("policy") or {}
        for r in policy.get("rules", []):
            key = (r["policy"], r["rule"], r["direction"], r["workload"])
            allowed[key] = allowed.get(key, 0) + r["packets"]
        for d in policy.get("dropped", []):
            key = (d["workload"], d["direction"])
            dropped[key] = dropped.get(key, 0) + d["packets"]
    rules = CounterMetricFamily("ryu_nsm_policy_rule_packets", "Packets a MultiNetworkPolicy rule allowed "
                                "(first packets of new connections)", labels=["policy", "rule", "direction",
                                                                              "workload"])
    drops = CounterMetricFamily("ryu_nsm_policy_dropped_packets", "Packets dropped because a workload is "
                                "isolated", labels=["workload", "direction"])
    for key, n in sorted(allowed.items()):
        rules.add_metric(list(key), n)
    for key, n in sorted(dropped.items()):
        drops.add_metric(list(key), n)
    yield from (rules, drops)


def _links(measured: list[dict], reservations: list[dict]) -> Iterator[Metric]:
    latency = _gauge("link_latency_seconds", "Measured one-way latency (the worse direction)", ["link"])
    loss = _gauge("link_loss_ratio", "Measured probe loss (the worse direction)", ["link"])
    for q in measured:
        if q.get("latency") is not None:
            latency.add_metric([q["link"]], q["latency"])
        if q.get("loss") is not None:
            loss.add_metric([q["link"]], q["loss"])
    reserved = _gauge("link_reserved_bits_per_second", "Guaranteed bandwidth reserved", ["link", "direction"])
    capacity = _gauge("link_capacity_bits_per_second", "Capacity of links holding reservations", ["link"])
    for r in reservations:
        capacity.add_metric([r["link"]], r["capacity"])
        for direction, bits in r["reserved"].items():
            reserved.add_metric([r["link"], direction], bits)
    yield from (latency, loss, reserved, capacity)


def _switches(switches: list[dict]) -> Iterator[Metric]:
    connected = _gauge("switch_connected", "1 while the switch's OpenFlow channel is up", ["switch"])
    flows = _gauge("switch_flows", "Flows the controller last read from the switch", ["switch"])
    for s in switches:
        connected.add_metric([s["name"]], 1.0 if s["connected"] else 0.0)
        if s.get("flows") is not None:
            flows.add_metric([s["name"]], s["flows"])
    yield from (connected, flows)


def _counters(counters: dict) -> Iterator[Metric]:
    moves = CounterMetricFamily("ryu_nsm_connection_moves", "Connections moved to another path, by why",
                                labels=["why"])
    for why, count in sorted(counters.get("moves", {}).items()):
        moves.add_metric([why], count)
    failures = CounterMetricFamily("ryu_nsm_connection_failures", "Connections that went to failed")
    failures.add_metric([], counters.get("failures", 0))
    breaches = CounterMetricFamily("ryu_nsm_service_level_breaches",
                                   "Sustained service level breaches the closed loop acted on",
                                   labels=["service_level"])
    for level, count in sorted(counters.get("breaches", {}).items()):
        breaches.add_metric([level], count)
    yield from (moves, failures, breaches)
