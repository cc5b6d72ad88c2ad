"""Shared by every benchmark: the one figure line format and timing with time.perf_counter.

A figure is a measured value next to the limit it is judged against, both measured in the same run
and the same process, so the ratio says how far the code is from what the machine can do right now::

    path compute, 3-function chain, fat-tree k=16: 0.84 ms (limit 0.31 ms one networkx BFS, ratio 2.71)

The ratio is value / limit in the value's unit: for a time, how many times slower than the limit;
for a rate, what fraction of the limit is reached.
"""

from __future__ import annotations

import json
import math
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

# Seconds per unit: a value and its limit may be given in different time units.
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}

_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
FIGURE_RE = re.compile(
    rf"^(?P<name>[^:\n]+): (?P<value>{_NUMBER}) (?P<unit>\S+) "
    rf"\(limit (?P<limit>{_NUMBER}) (?P<limit_unit>\S+)(?: (?P<limit_label>[^,()\n]+))?, "
    rf"ratio (?P<ratio>{_NUMBER})\)$"
)


def format_number(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits in plain notation (never an exponent).

    Numbers of ``10**digits`` or more are rounded to whole units; trailing zeros are dropped.
    """
    if not math.isfinite(value):
        raise ValueError(f"cannot format {value!r} as a figure")
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def ratio(value: float, unit: str, limit: float, limit_unit: str) -> float:
    """value / limit, converting between time units; other units must be the same on both sides."""
    if unit != limit_unit:
        if unit not in TIME_UNITS or limit_unit not in TIME_UNITS:
            raise ValueError(f"cannot compare {unit!r} with {limit_unit!r}")
        limit = limit * TIME_UNITS[limit_unit] / TIME_UNITS[unit]
    if not limit > 0:
        raise ValueError(f"limit must be positive, got {limit!r} {limit_unit}")
    return value / limit


def figure(name: str, value: float, unit: str, limit: float, limit_unit: str, limit_label: str = "") -> str:
    """One figure line: ``<name>: <value> <unit> (limit <limit> <limit_unit> <label>, ratio <x>)``."""
    if not name.strip() or ":" in name or "\n" in name:
        raise ValueError(f"a figure name must be non-empty and hold no ':' or newline, got {name!r}")
    for what, text in (("unit", unit), ("limit unit", limit_unit)):
        if not text or any(c.isspace() for c in text):
            raise ValueError(f"{what} must be one word, got {text!r}")
    if not value >= 0:
        raise ValueError(f"value must be a number of at least 0, got {value!r}")
    if any(c in limit_label for c in ",()\n"):
        raise ValueError(f"limit label must hold no ',', '(', ')' or newline, got {limit_label!r}")
    label = f" {limit_label}" if limit_label else ""
    x = ratio(value, unit, limit, limit_unit)
    return (
        f"{name}: {format_number(value)} {unit} "
        f"(limit {format_number(limit)} {limit_unit}{label}, ratio {format_number(x)})"
    )


@dataclass(frozen=True)
class Timing:
    """Seconds per call, one sample per round of ``number`` calls."""

    samples: tuple[float, ...]
    number: int

    @property
    def best(self) -> float:
        return min(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def _round(fn: Callable[[], object], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return time.perf_counter() - start


def measure(
    fn: Callable[[], object],
    repeats: int = 7,
    round_seconds: float = 0.02,
    budget_seconds: float = 10.0,
) -> Timing:
    """Time ``fn`` in rounds of as many calls as fill ``round_seconds``; up to ``repeats`` samples.

    Shorter rounds that calibrate the number of calls warm ``fn`` up and are not kept; the first
    round that fills ``round_seconds`` is the first sample, so a call that alone takes that long is
    timed cold (warm its caches beforehand if that matters). No further round starts once
    ``budget_seconds`` have gone by, so a slow ``fn`` gives fewer samples instead of a slow run.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    start = time.perf_counter()
    number = 1
    while (elapsed := _round(fn, number)) < round_seconds:
        # Aim a little past the target so that calibration rarely needs a third round.
        number = max(number * 2, math.ceil(number * 1.2 * round_seconds / max(elapsed, 1e-9)))
    samples = [elapsed / number]
    while len(samples) < repeats and time.perf_counter() - start < budget_seconds:
        samples.append(_round(fn, number) / number)
    return Timing(tuple(samples), number)


COMMAND_TIMEOUT = 60.0


class BenchFailure(RuntimeError):
    """A run that did not leave the switches as it should, or a command that failed."""


def sh(*args: str) -> str:
    """Run a command; its stdout, or BenchFailure with its stderr."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    if done.returncode:
        raise BenchFailure(f"{' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def ofctl(*args: str) -> str:
    """``ovs-ofctl -O OpenFlow13 ...``."""
    return sh("ovs-ofctl", "-O", "OpenFlow13", *args)


def flow_count(bridge: str) -> int:
    """Flows on ``bridge`` (all tables), from dump-aggregate."""
    found = re.search(r"flow_count=(\d+)", ofctl("dump-aggregate", bridge))
    if not found:
        raise BenchFailure("ovs-ofctl dump-aggregate gave no flow_count")
    return int(found.group(1))


def planned_flows(topology: Path, requests: Path) -> dict[str, list[str]]:
    """The ``flows`` map of ``ryu-nsm plan --json``: per switch, one ovs-ofctl line per flow."""
    cmd = [sys.executable, "-m", "ryu_nsm.cli", "plan", str(topology), str(requests), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    if done.returncode:
        raise BenchFailure(f"ryu-nsm plan failed ({done.returncode}): {done.stderr.strip()}")
    report = json.loads(done.stdout)
    failed = [c["id"] for c in report["connections"] if c["state"] != "planned"]
    if failed:
        raise BenchFailure(f"{len(failed)} connections did not plan, e.g. {failed[:3]}")
    return report["flows"]


def check_bridges(bridges: Iterable[str], files: Mapping[str, Path], flows: Mapping[str, list[str]],
                  what: str) -> None:
    """Each bridge holds exactly the planned flows: the count, and no difference by ``diff-flows``."""
    for br in bridges:
        held, want = flow_count(br), len(flows[br])
        if held != want:
            raise BenchFailure(f"{what}: {br} holds {held} flows, the plan has {want}")
        done = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "diff-flows", br, str(files[br])],
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        if done.returncode or done.stdout.strip():
            raise BenchFailure(f"{what}: {br} differs from the plan: {done.stdout[:500]}{done.stderr[:500]}")


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by the nearest-rank method: a value that was actually seen."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def milliseconds(values: Iterable[float], digits: int = 0) -> str:
    """p50 / p99 / max of seconds, in ms with ``digits`` decimals."""
    values = list(values)
    p50, p99, top = (v * 1000 for v in (percentile(values, 0.5), percentile(values, 0.99), max(values)))
    return f"p50 {p50:.{digits}f} ms, p99 {p99:.{digits}f} ms, max {top:.{digits}f} ms"


def log_breakdown(log: str, t0_wall: float) -> list[str]:
    """Where the controller's time went, from its log: when it planned, and each program's report."""
    out: list[str] = []
    created = []
    for line in log.splitlines():
        stamp = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", line)
        if not stamp:
            continue
        at = datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S,%f").timestamp() - t0_wall
        if at < 0:
            continue
        if " created: " in line:
            created.append(at)
        if re.search(r"program \d+: ", line):
            out.append(f"  +{at * 1000:.0f} ms {line.split(': ', 1)[1]}")
    if created:
        out.insert(0, f"  +{created[0] * 1000:.0f} ms to +{created[-1] * 1000:.0f} ms: {len(created)} "
                      "connections logged as created (read, parsed, resolved, routed, compiled before)")
    return out


def print_figures(name: str, produce: Callable[[], list[str]],
                  failures: tuple[type[BaseException], ...]) -> int:
    """Run ``produce`` and print its figure lines: 0; or the reason on stderr when it raises one of
    ``failures``: 1. bench/run's timeout sends SIGTERM: it exits through the finally blocks, so the
    benchmark leaves nothing behind."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(f"{name} benchmark: terminated"))
    try:
        lines = produce()
    except failures as exc:
        print(f"{name} benchmark FAILED: {exc}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 0


def bundle_add_flows(files: Mapping[str, Path], timeout: float) -> float:
    """Seconds for ``ovs-ofctl --bundle add-flows`` into every bridge of ``files``, all at once: the
    limit several benchmarks measure themselves against."""
    start = time.perf_counter()
    procs = {br: subprocess.Popen(["ovs-ofctl", "-O", "OpenFlow13", "--bundle", "add-flows", br, str(f)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for br, f in files.items()}
    failed = []
    for br, proc in procs.items():
        _, err = proc.communicate(timeout=timeout)
        if proc.returncode:
            failed.append(f"{br}: {err.strip()}")
    elapsed = time.perf_counter() - start
    if failed:
        raise BenchFailure(f"ovs-ofctl --bundle add-flows failed: {failed[:3]}")
    return elapsed
