"""README's two commands are the ones that work: CI runs the second one verbatim."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```(?:sh|bash)\n(.+?)\n```", text)[:2]


def test_readme_opens_with_setup_demo_and_test_commands():
    demo, tests = readme_commands()
    assert "scripts/setup" in demo and "ryu-nsm demo" in demo
    assert "scripts/setup" in tests and "pytest" in tests


def test_ci_runs_the_readme_test_command_verbatim():
    _, tests = readme_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci


def test_code_is_ruff_clean():
    checked = ["ryu_nsm", "ovs_forwarder", "nsm_api", "hubble_api", "tests", "mininet_tests", "bench"]
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "ruff"), "check", *checked],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_how_it_works_table_matches_the_tree():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## How it works"):text.index("**Pipeline.**")]
    listed: dict[str, set[str]] = {}
    for row in re.findall(r"^\| `ryu_nsm/([\w/]*)` \| ([^|]*) \|", section, re.M):
        package, modules = row
        listed[package.rstrip("/")] = set(re.findall(r"`(\w+\.py)`", modules))
    package_dir = ROOT / "ryu_nsm"
    tree = {"": {p.name for p in package_dir.glob("*.py") if p.name != "__init__.py"}}
    for sub in package_dir.iterdir():
        if (sub / "__init__.py").exists():
            tree[sub.name] = {p.name for p in sub.glob("*.py") if p.name != "__init__.py"}
    assert listed == tree


def test_how_it_works_table_lists_the_other_packages_hand_written_modules():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## How it works"):text.index("**Pipeline.**")]
    for package in ("ovs_forwarder", "nsm_api", "hubble_api"):
        row = re.search(rf"^\| `{package}/` \|([^|]*)\|", section, re.M)
        assert row, f"README's table has no row for {package}/"
        listed = set(re.findall(r"`(\w+\.py)`", row.group(1)))
        tree = {p.name for p in (ROOT / package).glob("*.py")
                if p.name != "__init__.py" and not p.name.endswith(("_pb2.py", "_pb2_grpc.py"))}
        assert listed == tree, package
