"""Debian's Prometheus against a live controller on real bridges: it scrapes /metrics with the shipped
rules loaded, and PromQL answers what the controller says: the connections up, every dashboard query,
and a service level broken (the rule's alert pending) once the impairment element slows the link.

The triangle of tests/bridge_fabric.py with the element on the direct link A–B; Prometheus on a free
loopback port with a temporary store, scraping every second; everything stopped at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from ryu_nsm.lab.controller_process import ControllerProcess, free_port, wait_for

from .bridge_fabric import triangle
from .test_prometheus import METRIC, OBSERVABILITY, dashboard_queries

pytestmark = pytest.mark.ovs

NET = triangle(f"m{os.getpid() % 10000:04d}")
A, B, C = NET.bridges
CONN = "default/client/nsm-1"
FAST = textwrap.dedent("""\
    apiVersion: ryu-nsm.io/v1alpha1
    kind: ServiceLevel
    metadata: {name: echo-fast}
    spec: {networkService: echo, maxLatency: 10ms}
    """)
SLOW_MS = 30.0


class Prometheus:
    """Debian's ``prometheus`` on 127.0.0.1, a free port and a store under ``tmp``, scraping ``target``
    every second with deploy/observability/rules.yml evaluated every second."""

    def __init__(self, tmp: Path, target: str):
        self.tmp = tmp
        self.port = free_port()
        shutil.copy(OBSERVABILITY / "rules.yml", tmp / "rules.yml")
        (tmp / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["rules.yml"],
            "scrape_configs": [{"job_name": "ryu-nsm", "static_configs": [{"targets": [target]}]}]}))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Prometheus:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is missing: scripts/setup installs Debian's prometheus package"
        with open(self.tmp / "prometheus.log", "w") as log:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={self.tmp / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.tmp / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT)
        try:
            assert wait_for(self._ready, 30, 0.2), f"prometheus not ready:\n{self.log()}"
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _ready(self) -> bool:
        assert self.proc.poll() is None, f"prometheus exited with {self.proc.returncode}:\n{self.log()}"
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    def log(self) -> str:
        return (self.tmp / "prometheus.log").read_text()

    def query(self, expr: str) -> list[dict]:
        """The instant vector ``expr`` evaluates to now (raises with Prometheus's error if it fails)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                answer = json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{expr}: {exc.read().decode()}") from None
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def value(self, expr: str) -> float | None:
        """The single value of a scalar-like query, None while it has no sample."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None


def served_names(url: str) -> set[str]:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as reply:
        return set(re.findall(r"^# TYPE (\S+) ", reply.read().decode(), re.M))


@pytest.fixture
def fabric(tmp_path):
    with NET.echo(tmp_path, FAST, impaired=True) as (topo, requests, element):
        yield topo, requests, element


def test_prometheus_scrapes_the_controller_and_sees_a_level_break(fabric, tmp_path):
    topo, requests, element = fabric
    started = time.monotonic()
    with ControllerProcess(topo, [requests], tmp_path / "ctl.log") as ctl:
        NET.connect(ctl.of_port)
        ctl.wait_connections(lambda cs: (cs.get(CONN, {}).get("measured") or {}).get("met") is True, 30)
        (tmp_path / "prom").mkdir()
        with Prometheus(tmp_path / "prom", f"127.0.0.1:{ctl.status_port}") as prom:
            assert wait_for(lambda: prom.value('up{job="ryu-nsm"}') == 1, 15), prom.log()

            # Connections up: what the controller says, through PromQL.
            up = sum(1 for c in ctl.connections().values() if c["state"] == "up")
            assert up == 1
            assert wait_for(lambda: prom.value("sum(ryu_nsm_connection_up)") == up, 10)
            (series,) = prom.query('ryu_nsm_connection_up{state="up"} == 1')
            assert series["metric"]["connection"] == CONN
            assert prom.value(f'ryu_nsm_connection_service_level_met{{connection="{CONN}"}}') == 1

            # Every dashboard query runs here, and names only what this /metrics serves (leader
            # election is off: its one metric is absent, and the queries work without it).
            names = served_names(ctl.url)
            assert "ryu_nsm_leader" not in names
            for title, expr in dashboard_queries():
                prom.query(expr)
                assert set(METRIC.findall(expr)) - {"ryu_nsm_leader"} <= names, title

            # The direct link slows past the level's bound: the level breaks, the rule's alert goes
            # pending, and the closed loop moves the connection the other way.
            element.set(delay_ms=SLOW_MS)
            broken = f'min_over_time(ryu_nsm_connection_service_level_met{{connection="{CONN}"}}[1m]) == 0'
            assert wait_for(lambda: prom.query(broken), 30, 0.5), ctl.status()["connections"]
            alert = f'ALERTS{{alertname="RyuNsmServiceLevelBroken", connection="{CONN}"}}'
            alerted = f"count_over_time({alert}[1m])"
            assert wait_for(lambda: prom.query(alerted), 10, 0.5), prom.log()
            ctl.wait_connections(lambda cs: cs[CONN]["state"] == "up" and cs[CONN]["path"] == [A, C, B], 30)
            met_up = ('ryu_nsm_connection_up{state="up"} * on (connection) '
                      'ryu_nsm_connection_service_level_met')
            assert wait_for(lambda: prom.value(met_up) == 1, 30), ctl.connections()[CONN]
            assert prom.value("sum(ryu_nsm_connection_moves_total)") >= 1
            assert prom.value('ryu_nsm_service_level_breaches_total{service_level="echo-fast"}') >= 1
        assert ctl.errors() == []
    print(f"live Prometheus test: {time.monotonic() - started:.1f} s")
