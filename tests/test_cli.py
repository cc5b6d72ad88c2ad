"""The ``ryu-nsm`` command line as a user meets it: output shape and exit status."""

import json
import subprocess
import sys
from pathlib import Path

from ryu_nsm import cli

ROOT = Path(__file__).resolve().parent.parent


def ryu_nsm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ryu_nsm.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def test_plan_json_has_connections_paths_chains_and_flows():
    out = ryu_nsm("plan", "--json", "topologies/demo-chain.yaml", "examples/demo-chain")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    conns = {c["id"]: c for c in report["connections"]}
    client = conns["default/client/nsm-1"]
    assert client["network_service"] == "secure-internet"
    assert client["client"] == "client" and client["endpoint"] == "firewall"
    assert client["path"] == ["s1", "s2"] and client["state"] == "planned"
    assert report["chains"] == [["client", "firewall", "dpi", "vpn-gateway"]]
    assert set(report["flows"]) == {"s1", "s2", "s3", "s4"}
    # Every flow line is in ovs-ofctl syntax and names the table and cookie.
    assert all(line.startswith("cookie=0x4e") and " actions=" in line
               for lines in report["flows"].values() for line in lines)


def test_plan_text_shows_the_chain():
    out = ryu_nsm("plan", "topologies/demo-chain.yaml", "examples/demo-chain")
    assert out.returncode == 0
    assert "client → firewall → dpi → vpn-gateway" in out.stdout


def test_plan_of_the_policy_example_shows_every_wire_of_the_chain_governed():
    out = ryu_nsm("plan", "--json", "topologies/demo-chain.yaml", "examples/demo-chain", "examples/policy")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["problems"] == []
    conns = {c["id"]: c for c in report["connections"]}
    assert len(conns) == 3 and all(c["state"] == "planned" for c in conns.values())
    client = conns["default/client/nsm-1"]["policy"]
    assert client["governed_by"] == ["default/tcp-80-only isolates client default/client for Egress",
                                     "default/tcp-80-only isolates endpoint default/firewall for Egress"]
    # At s1 (the client's port 4): new TCP to port 80 is the only rule, the rest is dropped.
    s1 = report["flows"]["s1"]
    assert [line for line in s1 if "table=2,priority=2000" in line and "dl_type=0x0800" in line] == [
        line for line in s1 if "in_port=4,nw_proto=6,tcp_dst=80 actions=goto_table:3" in line
        and "dl_type=0x0800" in line]
    assert any("table=2,priority=1000,in_port=4 actions=drop" in line for line in s1)


def test_plan_with_invalid_documents_exits_nonzero_and_still_plans_the_rest():
    out = ryu_nsm("plan", "--json", "topologies/demo-chain.yaml", "examples/demo-chain", "examples/bad")
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert report["problems"], "invalid documents must be listed"
    assert "examples/bad/" in out.stderr and "invalid" in out.stderr
    assert {c["id"] for c in report["connections"]} >= {"default/client/nsm-1"}


def test_failed_connections_carry_a_reason():
    out = ryu_nsm("plan", "--json", "topologies/ring.yaml", "examples/demo-chain")
    report = json.loads(out.stdout)
    failed = [c for c in report["connections"] if c["state"] == "failed"]
    assert failed and all(c["reason"] for c in failed)
    assert any("no port 's2-fw-in' on s2" in c["reason"] for c in failed)


def test_unreadable_topology_is_a_usage_error():
    out = ryu_nsm("plan", "topologies/nope.yaml", "examples/demo-chain")
    assert out.returncode == 2 and "nope.yaml" in out.stderr


def test_status_without_a_controller_says_so():
    out = ryu_nsm("status", "--url", "http://127.0.0.1:9")
    assert out.returncode == 2 and "cannot reach the controller" in out.stderr


def test_controller_options_are_not_taken_for_the_global_log_options():
    args = cli.build_parser().parse_args(["--log-format", "json", "controller", "--topology", "t.yaml",
                                          "--log", "ryu_nsm.sources.kubernetes=debug"])
    assert args.log == ["ryu_nsm.sources.kubernetes=debug"] and args.log_format == "json"


def test_plan_warns_of_links_without_latency_and_still_exits_zero(tmp_path):
    doc = json.loads((ROOT / "topologies" / "europe.json").read_text())
    for item in doc["nodes"] + doc["links"]:
        item.pop("pos", None)
        item.pop("dist", None)
    topology = tmp_path / "europe.json"
    topology.write_text(json.dumps(doc))
    requests = tmp_path / "requests"
    requests.mkdir()
    out = ryu_nsm("plan", "--json", str(topology), str(requests))
    assert out.returncode == 0, out.stderr
    assert "ryu-nsm: warning: fabric europe: 12 link(s) without latency" in out.stderr
    assert "London:1-Paris:1" in out.stderr and out.stderr.rstrip().endswith("and 2 more")
    shipped = ryu_nsm("plan", "topologies/europe.json", str(requests))
    assert shipped.returncode == 0 and "warning" not in shipped.stderr


# -- issue 12: endpoint selection as NSM's MatchEndpoint, seen from `plan` ------------------------


def _plan_of(tmp_path, matches: str, client_labels: str = "", extra: str = "",
             firewall_spec: str = "") -> tuple[subprocess.CompletedProcess, dict]:
    """`plan --json` of one service ``svc`` with ``matches``, endpoints fw (app: node[1]) and dpi
    (app: dpi), and one client asking with ``client_labels`` (a query string)."""
    nse = ("apiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\nmetadata: {{name: {name}, "
           "annotations: {{ryu-nsm.io/attachments: {att}}}}}\nspec: {{network_service_names: [svc], "
           "network_service_labels: {{svc: {{labels: {{app: '{app}'}}}}}}{more}}}\n")
    (tmp_path / "r.yaml").write_text(
        f"apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {{name: svc}}\n"
        f"spec: {{matches: {matches}}}\n---\n"
        + nse.format(name="fw", att="s2/s2-fw-in", app="node[1]", more=firewall_spec) + "---\n"
        + nse.format(name="dpi", att="s3/s3-dpi-in", app="dpi", more="") + "---\n"
        "apiVersion: v1\nkind: Pod\nmetadata: {name: client, annotations: {networkservicemesh.io: "
        f"'kernel://svc/nsm-1{client_labels}', ryu-nsm.io/attachments: nsm-1=s1/s1-client}}}}\n" + extra)
    out = ryu_nsm("plan", "--json", "topologies/demo-chain.yaml", str(tmp_path))
    (conn,) = json.loads(out.stdout)["connections"]
    return out, conn


def test_plan_missing_template_label_selects_nothing(tmp_path):
    out, conn = _plan_of(tmp_path, "[{routes: [{destination_selector: {app: '{{.app}}'}}]}]")
    assert out.returncode == 0 and conn["state"] == "failed"
    assert "match #0 of 'svc': destination selector template needs label(s) ['app']" in conn["reason"]
    out, conn = _plan_of(tmp_path, "[{routes: [{destination_selector: {app: '{{.app}}'}}], "
                                   "fallthrough: true}, {routes: [{destination_selector: {app: dpi}}]}]")
    assert conn["endpoint"] == "dpi"


def test_plan_metadata_without_routes_selects_every_endpoint(tmp_path):
    out, conn = _plan_of(tmp_path, "[{metadata: {}}]")
    assert out.returncode == 0 and conn["state"] == "planned" and conn["endpoint"] in ("fw", "dpi")
    out, conn = _plan_of(tmp_path, "[{source_selector: {}}]")
    assert conn["state"] == "failed" and "no endpoint matches" in conn["reason"]


def test_plan_drops_expired_endpoints_by_the_wall_clock(tmp_path):
    matches = "[{routes: [{destination_selector: {app: 'node[1]'}}]}]"
    out, conn = _plan_of(tmp_path, matches, firewall_spec=", expiration_time: '2001-01-01T00:00:00Z'")
    assert out.returncode == 0 and conn["state"] == "failed" and "endpoint expired: fw" in conn["reason"]
    out, conn = _plan_of(tmp_path, matches, firewall_spec=", expiration_time: {seconds: 32503680000}")
    assert conn["endpoint"] == "fw"


def test_plan_accepts_the_label_values_nsm_accepts(tmp_path):
    out, conn = _plan_of(tmp_path, "[{routes: [{destination_selector: {app: '{{.app}}'}}]}]",
                         client_labels="?app=node%5B1%5D")
    assert out.returncode == 0, out.stderr
    assert conn["endpoint"] == "fw"


def test_plan_warns_of_documents_it_does_not_read_without_failing(tmp_path):
    extra = ("---\napiVersion: networkservicemesh.io/v1\nkind: NetworkServce\nmetadata: {name: typo}\n"
             "---\napiVersion: nsm.example/v1\nkind: NetworkService\nmetadata: {name: elsewhere}\n")
    out, conn = _plan_of(tmp_path, "[{metadata: {}}]", extra=extra)
    assert out.returncode == 0 and conn["state"] == "planned"
    assert f"ryu-nsm: warning: {tmp_path / 'r.yaml'}[4]: skipped: kind 'NetworkServce' of apiVersion " \
           "'networkservicemesh.io/v1'" in out.stderr
    assert "[5]: skipped: kind 'NetworkService' of apiVersion 'nsm.example/v1'" in out.stderr
