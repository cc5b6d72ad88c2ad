"""deploy/observability/, checked offline with Debian's promtool (scripts/setup installs it; no skip):
the Prometheus configurations and the rules pass `promtool check` (the TLS one with the certificates its
header makes, and Debian's Prometheus scrapes the HTTPS endpoint with them), the rules' unit tests prove each
alert fires when it should and not otherwise, the cluster job picks the controller's metrics port by
the Deployment's own labels, and the Grafana dashboard is well formed, every expression parses and
names only metrics the controller serves."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from ryu_nsm.observe import health, metrics

ROOT = Path(__file__).resolve().parent.parent
OBSERVABILITY = ROOT / "deploy" / "observability"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
# Grafana's own variable, replaced by Grafana before a query leaves it.
GRAFANA_VARIABLES = {"$__rate_interval": "1m"}
METRIC = re.compile(r"\bryu_nsm_[a-z_]+\b")


def promtool(*args: str, cwd: Path = OBSERVABILITY) -> str:
    """Run promtool; fail with its output unless it succeeds."""
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: scripts/setup installs Debian's prometheus package"
    out = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, cwd=cwd)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title and refId, PromQL as Prometheus gets it) for every target of every panel."""
    queries = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append((f"{panel['title']} {target['refId']}", expr))
    return queries


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load((OBSERVABILITY / "rules.yml").read_text())["groups"]
            for rule in group["rules"]]


def served_metric_names() -> set[str]:
    """Every sample name /metrics can carry: a status with leader election, and the loops."""
    text = metrics.exposition(lambda: {"role": {"leader": True}}) + health.exposition(health.Registry())
    return set(re.findall(r"^# TYPE (\S+) ", text.decode(), re.M))


def test_promtool_checks_the_lab_configuration_and_the_rules():
    assert "SUCCESS" in promtool("check", "config", "prometheus-lab.yml")
    assert f"SUCCESS: {len(rules())} rules found" in promtool("check", "rules", "rules.yml")


def test_promtool_checks_the_cluster_configuration_with_its_discovery_swapped(tmp_path):
    # Debian's Prometheus is built without Kubernetes discovery: everything else of the job is
    # checked with a static target in its place (the discovery is checked in the next test).
    config = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert [sd["role"] for sd in job.pop("kubernetes_sd_configs")] == ["pod"]
    job["static_configs"] = [{"targets": ["127.0.0.1:8181"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(OBSERVABILITY / "rules.yml", tmp_path)
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml", cwd=tmp_path)


def test_the_cluster_job_keeps_exactly_the_controllers_metrics_port():
    manifests = yaml.safe_load_all((ROOT / "deploy" / "controller.yaml").read_text())
    deployment = next(doc for doc in manifests if doc["kind"] == "Deployment")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    # The plain listener of /metrics and /healthz alone: the status port wants a client certificate.
    metrics_port = int(container["args"][container["args"].index("--metrics-listen") + 1].rsplit(":", 1)[1])
    (job,) = yaml.safe_load((OBSERVABILITY / "prometheus.yml").read_text())["scrape_configs"]
    (sd,) = job["kubernetes_sd_configs"]
    assert sd["namespaces"]["names"] == [deployment["metadata"]["namespace"]]
    # Pod discovery: one target per container port, with the pod's labels as meta labels.
    meta = {f"__meta_kubernetes_pod_label_{re.sub(r'[^a-zA-Z0-9_]', '_', k)}": v
            for k, v in pod["metadata"]["labels"].items()}
    kept = []
    for port in container["ports"]:
        labels = {**meta, "__meta_kubernetes_pod_container_port_name": port["name"]}
        if all(re.fullmatch(rule["regex"], ";".join(labels.get(s, "") for s in rule["source_labels"]))
               for rule in job["relabel_configs"] if rule.get("action") == "keep"):
            kept.append(port["containerPort"])
    assert kept == [metrics_port]
    assert job["metrics_path"] == "/metrics"


def lab_tls_certificates(directory: Path) -> None:
    """Run the `ryu-nsm certs` commands that prometheus-lab-tls.yml's header gives, in ``directory``."""
    header = (OBSERVABILITY / "prometheus-lab-tls.yml").read_text().split("global:", 1)[0]
    commands = [shlex.split(line.lstrip("# ")) for line in header.splitlines()
                if line.lstrip("# ").startswith("ryu-nsm certs ")]
    assert len(commands) == 3, header
    for words in commands:
        done = subprocess.run([sys.executable, "-m", "ryu_nsm.cli", *words[1:]], cwd=directory,
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0, done.stderr


def test_promtool_checks_the_tls_lab_configuration_with_the_certificates_its_header_makes(tmp_path):
    # promtool opens the certificate and key files a tls_config names: make them as the header says.
    lab_tls_certificates(tmp_path)
    for name in ("prometheus-lab-tls.yml", "rules.yml"):
        shutil.copy(OBSERVABILITY / name, tmp_path)
    assert "SUCCESS" in promtool("check", "config", "prometheus-lab-tls.yml", cwd=tmp_path)


def test_prometheus_scrapes_the_https_status_endpoint_with_its_client_certificate(tmp_path):
    """Debian's Prometheus with prometheus-lab-tls.yml's tls_config against a StatusServer that allows
    only Prometheus's SPIFFE ID: the target is up, so the handshake both ways and the name check hold."""
    from ryu_nsm.lab.controller_process import free_port, wait_for
    from ryu_nsm.observe.status_access import StatusAccess
    from ryu_nsm.observe.status_api import StatusServer
    from ryu_nsm.trust import devca
    from ryu_nsm.trust.identity import FileIdentitySource

    lab_tls_certificates(tmp_path)
    controller = tmp_path / "certs" / "controller"
    source = FileIdentitySource(*(controller / name
                                  for name in (devca.SVID, devca.SVID_KEY, devca.SVID_BUNDLE)))
    access = StatusAccess(source, allow=frozenset({"spiffe://example.org/prometheus"}))
    server = StatusServer(lambda: {"connections": []}, "127.0.0.1", 0, access=access).start()
    config = yaml.safe_load((OBSERVABILITY / "prometheus-lab-tls.yml").read_text())
    config.pop("rule_files")
    config["global"]["scrape_interval"] = "1s"
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{server.address[1]}"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    web = f"127.0.0.1:{free_port()}"
    prometheus = subprocess.Popen(
        [shutil.which("prometheus"), "--config.file=prometheus.yml", f"--web.listen-address={web}",
         f"--storage.tsdb.path={tmp_path / 'data'}"], cwd=tmp_path, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)

    def target() -> dict | None:
        try:
            with urllib.request.urlopen(f"http://{web}/api/v1/targets", timeout=2) as reply:
                (found,) = json.loads(reply.read())["data"]["activeTargets"]
        except (OSError, ValueError):
            return None
        return found if found["health"] != "unknown" else None

    try:
        found = wait_for(target, 60, 0.5)
        assert found and found["health"] == "up", found
    finally:
        prometheus.terminate()
        prometheus.wait(10)
        server.stop()
        source.close()


def test_every_alert_is_proven_to_fire_and_to_stay_quiet():
    assert "SUCCESS" in promtool("test", "rules", "rules_test.yml")
    cases = [case for test in yaml.safe_load((OBSERVABILITY / "rules_test.yml").read_text())["tests"]
             for case in test.get("alert_rule_test", [])]
    for rule in rules():
        fired = [c for c in cases if c["alertname"] == rule["alert"] and c["exp_alerts"]]
        quiet = [c for c in cases if c["alertname"] == rule["alert"] and not c["exp_alerts"]]
        assert fired and quiet, f"{rule['alert']}: {len(fired)} firing cases, {len(quiet)} quiet ones"
        assert rule["annotations"]["summary"] and rule["labels"]["severity"] in ("warning", "critical")


def test_the_dashboard_is_well_formed():
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    (variable,) = board["templating"]["list"]
    assert [variable[k] for k in ("name", "type", "query")] == ["datasource", "datasource", "prometheus"]
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids repeat"
    cells = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        covered = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                   for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
        if panel["type"] == "row":
            continue
        assert panel["type"] in ("stat", "timeseries", "bargauge"), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(set(refs)) == len(refs), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"] == panel["datasource"], panel["title"]


def test_every_dashboard_expression_parses(tmp_path):
    # promtool has no bare-expression check: each query becomes a recording rule, which it parses.
    recorded = [{"record": f"dashboard:query_{i}", "expr": expr}
                for i, (_, expr) in enumerate(dashboard_queries())]
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump({"groups": [{"name": "q", "rules": recorded}]}))
    checked = promtool("check", "rules", "dashboard.yml", cwd=tmp_path)
    assert f"SUCCESS: {len(recorded)} rules found" in checked


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_only_metrics_the_controller_serves_are_named(source):
    exprs = [r["expr"] for r in rules()] if source == "rules" else [e for _, e in dashboard_queries()]
    named = {name for expr in exprs for name in METRIC.findall(expr)}
    assert named and named <= served_metric_names(), named - served_metric_names()


def test_the_dashboard_shows_what_the_controller_measures():
    named = {name for _, expr in dashboard_queries() for name in METRIC.findall(expr)}
    assert named == served_metric_names(), served_metric_names() - named
