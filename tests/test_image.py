"""The images hold what their commands import, checked without a container engine: for each Dockerfile
target, exactly the files its stages COPY from the build context are built into a wheel and installed
into an empty venv, and every console script and the modules its subcommands import run there. Third-
party libraries come from the test environment; ours can only come from that wheel. Offline."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_deploy import ROOT, context_sources

TARGETS = ("controller", "forwarder")
SCRIPTS = ("ryu-nsm", "ovs-forwarder")
OURS = ("ryu_nsm", "nsm_api", "hubble_api", "ovs_forwarder")
# Modules the commands import only when a flag asks for them (--kubernetes, --ovsdb, --nsm-listen,
# --hubble-listen, --flow-log, observe, the OpenFlow shell) or that the forwarder serves with.
# ryu_nsm.lab is not among them: it drives Mininet.
LAZY_IMPORTS = (
    "ryu_nsm.wiring", "ryu_nsm.openflow.shell", "ryu_nsm.openflow.launch", "ryu_nsm.sources.kubernetes",
    "ryu_nsm.sources.ovsdb", "ryu_nsm.sources.nsm_grpc", "ryu_nsm.k8s.client",
    "ryu_nsm.k8s.connection_status", "ryu_nsm.k8s.status_writer", "ryu_nsm.k8s.leader",
    "ryu_nsm.observe.status_api", "ryu_nsm.observe.metrics", "nsm_api.serving",
    "nsm_api.registry_pb2_grpc", "ovs_forwarder.server", "ovs_forwarder.plumbing", "ovs_forwarder.ovsdb",
    "ryu_nsm.observe.hubble_server", "ryu_nsm.observe.flow_log", "ryu_nsm.observe.flow_client",
    "ryu_nsm.trust.identity", "ryu_nsm.trust.tls", "ryu_nsm.trust.devca", "ryu_nsm.trust.workload",
    "nsm_api.tokens", "nsm_api.authorize",
)


def run(argv: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run outside the repository, with nothing of the environment pointing into it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONNOUSERSITE"] = "1"
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def third_party_dirs() -> list[str]:
    """Where this environment's libraries live: its site directories, whose .pth files (the editable
    install of ryu_nsm among them) are not read when they are named in another .pth."""
    return [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]


def install(sources: list[str], where: Path) -> Path:
    """Copy `sources` from the repository, build a wheel of them and install it into a new venv whose
    only other libraries are this environment's; the venv's python."""
    src = where / "src"
    for relpath in sources:
        origin = ROOT / relpath
        if origin.is_dir():
            shutil.copytree(origin, src / relpath, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (src / relpath).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, src / relpath)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    built = run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir",
                 str(where / "wheels"), str(src)], cwd=where, timeout=120)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (where / "wheels").glob("ryu_nsm-*.whl")
    venv = where / "venv"
    made = run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=where)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=where)
    (Path(site.stdout.strip()) / "third_party.pth").write_text("\n".join(third_party_dirs()) + "\n")
    installed = run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
                    cwd=where, timeout=120)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return python


@pytest.fixture(scope="module")
def venvs(tmp_path_factory) -> dict[str, Path]:
    """Each target's venv (one per distinct set of copied files)."""
    made: dict[tuple[str, ...], Path] = {}
    by_target = {}
    for target in TARGETS:
        sources = tuple(sorted(context_sources(target)))
        if sources not in made:
            made[sources] = install(list(sources), tmp_path_factory.mktemp(target))
        by_target[target] = made[sources]
    return by_target


def imports(python: Path, modules: tuple[str, ...], cwd: Path) -> subprocess.CompletedProcess:
    """Import `modules` with `python`, printing where each of our packages came from."""
    code = (f"import importlib\nfor m in {list(modules)!r}: importlib.import_module(m)\n"
            f"import {', '.join(OURS)}\n" + "".join(f"print({p}.__file__)\n" for p in OURS))
    return run([str(python), "-c", code], cwd=cwd)


@pytest.mark.parametrize("target", TARGETS)
def test_every_command_runs_from_the_wheel_alone(target, venvs, tmp_path):
    python = venvs[target]
    venv = python.parent.parent
    for script in SCRIPTS:
        shown = run([str(venv / "bin" / script), "--help"], cwd=tmp_path)
        assert shown.returncode == 0, f"{script} --help: {shown.stderr}"
    listed = run([str(venv / "bin" / "ryu-nsm"), "--help"], cwd=tmp_path).stdout
    # Usage and the list of positional arguments both show the choices.
    (subcommands,) = {tuple(group.split(",")) for group in re.findall(r"\{([a-z,-]+)\}", listed)
                      if "controller" in group.split(",")}
    assert {"plan", "controller", "status"} <= set(subcommands)
    for subcommand in subcommands:
        shown = run([str(venv / "bin" / "ryu-nsm"), subcommand, "--help"], cwd=tmp_path)
        assert shown.returncode == 0, f"ryu-nsm {subcommand} --help: {shown.stderr}"
    found = imports(python, LAZY_IMPORTS, tmp_path)
    assert found.returncode == 0, found.stderr
    for where in found.stdout.split():
        assert Path(where).is_relative_to(venv), f"{where} is not the wheel's"


def test_a_package_left_out_of_the_copy_is_missed(tmp_path):
    # What the image was before: ryu_nsm without nsm_api, which `controller --nsm-listen` imports.
    sources = [src for src in context_sources("controller") if src != "nsm_api"]
    python = install(sources, tmp_path)
    missing = imports(python, ("ryu_nsm.sources.nsm_grpc",), tmp_path)
    assert missing.returncode != 0
    assert "ModuleNotFoundError: No module named 'nsm_api'" in missing.stderr
