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
