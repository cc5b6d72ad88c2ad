"""Admission of guaranteed connections on a fat-tree, against plain shortest paths of the same pairs.

One process, pure Python, no switches: ``admit_all`` admits 10,000 connections (``--quick``: 1,000)
between edge switches of different pods of a fat-tree k=16 (k=8) into a fresh ledger; the limit is
``FabricView.shortest`` routing the same (src, dst) pairs on a fresh view, with no ledger, no
bandwidth and no latency bound. Each side gets a view built before its clock starts (both remember
per-view work: shortest paths per pair, bounds per destination), and the median of the repetitions
counts. The figure is a rate, so its ratio is the fraction of plain shortest-path speed reached::

    admission, 10000 guaranteed connections, fat-tree k=16: ... conn/s (limit ... conn/s
    FabricView.shortest of the same pairs, ratio ...)

The workload (seeded: every run is the same):

- links of 10 Gbit/s each way; edge–aggregation links of 1–4 µs; the core switches stand in two
  halls, the near half 5–15 µs from the aggregation switches and the far half 40–80 µs, so a
  latency bound restricts a connection to part of the core;
- one edge switch down for maintenance and two aggregation–core links down;
- 30% of the connections go to a few "service" edge switches (one in every other pod) where the
  network service endpoints run, the rest between uniformly random edge switches of two pods;
- each connection is under a ServiceLevel (validated from the document a user would write)
  guaranteeing 100–500 Mbit/s: ``bulk`` (45%, priority 0, preemptible), ``standard`` (35%,
  priority 100), ``interactive`` (10%, priority 300, at most 50 µs one way), ``realtime`` (5%,
  priority 300, at most 16 µs, which the fastest path between some pairs misses) and ``critical``
  (5%, priority 500, at most 200 µs, protection: a disjoint backup reserved as well).

The service edge switches saturate partway through (at k=16, the first refusal for bandwidth is
the 4,640th demand), so later demands are refused for bandwidth or preempt bulk ones; some ``realtime``
demands are refused for latency; demands touching the down switch are refused as disconnected.
Details go to stderr: admitted, refused by kind, preempted (moved or dropped), protected. The run
fails (exit 1) unless, recomputed from the reservations alone, no link direction holds more than its
capacity and the ledger agrees; every admitted path joins its ends over links that are up within its
bound; every backup is link-disjoint from its primary; and every repetition decides the same.

Usage: ``admission.py [--quick]``.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace

from common import figure

from ryu_nsm.core.fabric import Fabric
from ryu_nsm.core.pathing import FabricView, NoPath
from ryu_nsm.qos.admission import Decision, admit_all, demand_for
from ryu_nsm.qos.ledger import Demand, Ledger
from ryu_nsm.qos.routing import meets_latency
from ryu_nsm.qos.service_level import ServiceLevel, parse_service_level
from ryu_nsm.sources.topology import fat_tree

SEED = 6
US = 1e-6
CAPACITY = "10Gbit"
BANDWIDTHS_MBIT = range(100, 501, 50)
SERVICE_SHARE = 0.3
SERVICE = "bench-service"
# Class name → (share of connections, the spec every level of the class has besides its bandwidth).
CLASSES: dict[str, tuple[float, dict]] = {
    "bulk": (0.45, {"priority": 0, "preemptible": True}),
    "standard": (0.35, {"priority": 100}),
    "interactive": (0.10, {"priority": 300, "maxLatency": "50us"}),
    "realtime": (0.05, {"priority": 300, "maxLatency": "16us"}),
    "critical": (0.05, {"priority": 500, "maxLatency": "200us", "protection": "disjoint"}),
}
LIMIT_LABEL = "FabricView.shortest of the same pairs"
KINDS = ("bandwidth", "latency", "disconnected")
# How admission words each kind of refusal (its NoFeasiblePath messages); a reason that matches no
# kind, or more than one, stops the bench rather than being miscounted.
_KIND_PHRASES = {
    "bandwidth": (" free each way on every link",),
    "latency": (": the fastest takes ",),
    "disconnected": (" with the links that are up", " is down", " is not in the fabric"),
}


@dataclass(frozen=True)
class Workload:
    """A fabric, what is down in it, and the demands in the order they arrive."""

    fabric: Fabric
    down_switches: frozenset[str]
    down_links: frozenset[str]
    demands: tuple[Demand, ...]

    def view(self) -> FabricView:
        """A fresh view: nothing remembered from an earlier run."""
        return FabricView(self.fabric, self.down_links, self.down_switches)


def _latencies(fabric: Fabric, k: int, rng: random.Random) -> Fabric:
    """Edge–aggregation links 1–4 µs; core links 5–15 µs to the near half of the core, 40–80 µs to the far."""
    near = (k // 2) ** 2 // 2
    links = []
    for link in fabric.links:
        if link.a.startswith("c"):
            low, high = (5, 15) if int(link.a[1:]) < near else (40, 80)
        else:
            low, high = 1, 4
        links.append(replace(link, latency=round(rng.uniform(low, high), 1) * US))
    return replace(fabric, links=tuple(links))


def service_levels() -> dict[tuple[str, int], ServiceLevel]:
    """(class, Mbit/s) → its ServiceLevel, validated from the document a user would write."""
    levels = {}
    for name, (_, spec) in CLASSES.items():
        for mbit in BANDWIDTHS_MBIT:
            document = {
                "apiVersion": "ryu-nsm.io/v1alpha1", "kind": "ServiceLevel",
                "metadata": {"name": f"{name}-{mbit}m", "namespace": "bench"},
                "spec": {"networkService": SERVICE, "guaranteedBandwidth": f"{mbit}M", **spec},
            }
            level, problems = parse_service_level(document)
            if level is None:
                raise RuntimeError(f"the bench's ServiceLevel {name}-{mbit}m is invalid: {problems}")
            levels[name, mbit] = level
    return levels


def workload(k: int, connections: int, seed: int = SEED) -> Workload:
    """The seeded fabric and ``connections`` demands between edge switches of different pods."""
    rng = random.Random(seed)
    half = k // 2
    fabric = _latencies(fat_tree(k, capacity=CAPACITY, cost=1), k, rng)
    down_switches = frozenset({f"e{k - 1}_{half - 1}"})
    core_links = [link.name for link in fabric.links if link.a.startswith("c")]
    down_links = frozenset(rng.sample(core_links, 2))
    edges = [f"e{pod}_{i}" for pod in range(k) for i in range(half)]
    services = [f"e{pod}_0" for pod in range(0, k, 2)]
    levels = service_levels()
    names = list(CLASSES)
    shares = [CLASSES[name][0] for name in names]
    demands = []
    for i in range(connections):
        dst = rng.choice(services) if rng.random() < SERVICE_SHARE else rng.choice(edges)
        src = rng.choice(edges)
        while src.split("_")[0] == dst.split("_")[0]:
            src = rng.choice(edges)
        level = levels[rng.choices(names, shares)[0], rng.choice(BANDWIDTHS_MBIT)]
        demands.append(demand_for(f"conn-{i:05d}", src, dst, level))
    return Workload(fabric, down_switches, down_links, tuple(demands))


def admit_once(work: Workload) -> tuple[float, Ledger, dict[str, Decision]]:
    """Seconds ``admit_all`` takes on a fresh view and ledger, and what it left."""
    view, ledger = work.view(), Ledger(work.fabric)
    start = time.perf_counter()
    decisions = admit_all(view, ledger, work.demands)
    return time.perf_counter() - start, ledger, decisions


def shortest_once(work: Workload) -> float:
    """Seconds ``FabricView.shortest`` takes for every demand's pair on a fresh view."""
    view = work.view()
    start = time.perf_counter()
    for demand in work.demands:
        try:
            view.shortest(demand.src, demand.dst)
        except NoPath:
            pass  # the pairs that touch the switch that is down: admission refuses them too
    return time.perf_counter() - start


def refusal_kind(reason: str) -> str:
    """The kind of a refusal, from the words admission uses for it."""
    found = [kind for kind, phrases in _KIND_PHRASES.items() if any(p in reason for p in phrases)]
    if len(found) != 1:
        raise RuntimeError(f"cannot tell what kind of refusal this is ({found or 'none'}): {reason}")
    return found[0]


def tally(work: Workload, decisions: dict[str, Decision]) -> Counter[str]:
    """How the demands fared: admitted (protected or not), refused by kind, preempted (moved or dropped).

    A preempted connection's decision is its last one: on another path, or refused for want of one.
    """
    count: Counter[str] = Counter()
    demands = {d.connection_id: d for d in work.demands}
    evictions = [e.connection_id for decision in decisions.values() for e in decision.evicted]
    count["preemptions"] = len(evictions)
    evicted = set(evictions)
    for cid, decision in decisions.items():
        preempted = cid in evicted
        if decision.admitted:
            count["admitted"] += 1
            count["preempted, moved"] += preempted
            if demands[cid].protected:
                count["protected" if decision.backup is not None else "protected, no backup"] += 1
        else:
            kind = refusal_kind(decision.reason)
            count[f"preempted, dropped for {kind}" if preempted else f"refused for {kind}"] += 1
    return count


def invariant_violations(work: Workload, ledger: Ledger, decisions: dict[str, Decision]) -> list[str]:
    """What is wrong with the end state, recomputed from the reservations alone; empty when right."""
    problems = []
    view = work.view()
    demands = {d.connection_id: d for d in work.demands}
    admitted = {cid for cid, decision in decisions.items() if decision.admitted}
    if set(decisions) != set(demands):
        problems.append(f"decisions for {len(decisions)} connections, {len(demands)} demanded")
    if admitted != set(ledger.reservations):
        problems.append(f"{len(admitted)} admitted but {len(ledger.reservations)} reservations held")
    load: Counter[tuple[str, str]] = Counter()
    for cid, reservation in ledger.reservations.items():
        demand = demands[cid]
        if reservation.demand != demand:
            problems.append(f"{cid}: reserved for {reservation.demand}, demanded {demand}")
        for path in reservation.paths:
            hops = zip(path.switches, path.switches[1:], path.links, strict=False)
            if (path.switches[0], path.switches[-1]) != (demand.src, demand.dst) or any(
                {a, b} != {link.a, link.b} for a, b, link in hops
            ):
                problems.append(f"{cid}: path {path.switches} does not join {demand.src} to {demand.dst}")
            if not view.intact(path):
                problems.append(f"{cid}: path {path.switches} crosses a switch or link that is down")
            if not meets_latency(path.latency, demand.max_latency):
                problems.append(f"{cid}: path takes {path.latency} s, bound {demand.max_latency} s")
            for link in path.links:
                load[link.name, link.a] += demand.bandwidth
                load[link.name, link.b] += demand.bandwidth
        if reservation.backup is not None and {x.name for x in reservation.path.links} & {
            x.name for x in reservation.backup.links
        }:
            problems.append(f"{cid}: backup shares a link with its primary")
    for link in work.fabric.links:
        for src in (link.a, link.b):
            held = load[link.name, src]
            if held > link.capacity:
                problems.append(f"link {link.name} from {src}: {held} bit/s reserved, "
                                f"capacity {link.capacity}")
            if held != ledger.reserved(link.name, src):
                problems.append(f"link {link.name} from {src}: the ledger says "
                                f"{ledger.reserved(link.name, src)} bit/s, the reservations add up to {held}")
    return problems


def _outcome(decisions: dict[str, Decision]) -> dict[str, tuple]:
    """What a run decided, to compare repetitions."""
    return {cid: (d.admitted, d.path and d.path.switches, d.backup and d.backup.switches)
            for cid, d in decisions.items()}


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _shares(work: Workload) -> str:
    demands = work.demands
    pairs = len({(d.src, d.dst) for d in demands})
    return (f"{sum(d.max_latency is not None for d in demands)} with a latency bound, "
            f"{sum(d.protected for d in demands)} protected, {sum(d.preemptible for d in demands)} "
            f"preemptible; {pairs} distinct (src, dst) pairs")


def run(k: int, connections: int, repeats: int) -> tuple[list[str], list[str]]:
    """The figure lines of one size, and the invariant violations found (none when all is right)."""
    work = workload(k, connections)
    admit_seconds, limit_seconds, outcomes = [], [], []
    for _ in range(repeats):
        # Garbage left by the run before is not charged to the next.
        gc.collect()
        limit_seconds.append(shortest_once(work))
        gc.collect()
        seconds, ledger, decisions = admit_once(work)
        admit_seconds.append(seconds)
        outcomes.append(_outcome(decisions))
    problems = invariant_violations(work, ledger, decisions)
    if any(outcome != outcomes[0] for outcome in outcomes):
        problems.append("repetitions of the same workload decided differently")
    count = tally(work, decisions)
    size = f"{connections} guaranteed connections, fat-tree k={k}"

    def times(values: list[float]) -> str:
        return ", ".join(f"{v:.3f}" for v in values)

    _log(f"{size}: {len(work.fabric.links)} links of {CAPACITY}, down: {sorted(work.down_switches)} and "
         f"{len(work.down_links)} links; demands: {_shares(work)}")
    _log(f"  admit_all {times(admit_seconds)} s; FabricView.shortest {times(limit_seconds)} s"
         " (the median counts)")
    _log(f"  admitted {count['admitted']} ({count['protected']} with a disjoint backup, "
         f"{count['protected, no backup']} protected demands without one); refused: "
         + ", ".join(f"{kind} {count[f'refused for {kind}']}" for kind in KINDS))
    dropped = ", ".join(f"{kind} {count[f'preempted, dropped for {kind}']}" for kind in KINDS)
    _log(f"  preemptions {count['preemptions']}; preempted connections in the end: "
         f"{count['preempted, moved']} moved to another path, dropped for {dropped}")
    _log(f"  invariant: {'held' if not problems else 'VIOLATED'} "
         f"({len(ledger.reservations)} reservations, {len(work.fabric.links)} links, both directions)")
    for problem in problems[:20]:
        _log(f"  FAILED: {problem}")
    rate = connections / statistics.median(admit_seconds)
    limit = connections / statistics.median(limit_seconds)
    return [figure(f"admission, {size}", rate, "conn/s", limit, "conn/s", LIMIT_LABEL)], problems


def main(argv: list[str] | None = None) -> int:
    """Print the figure line; exit 1 when the end state breaks the ledger's invariant."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 connections on k=8 (for tests)")
    args = parser.parse_args(argv)
    k, connections, repeats = (8, 1000, 3) if args.quick else (16, 10_000, 3)
    lines, problems = run(k, connections, repeats)
    for line in lines:
        print(line, flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
