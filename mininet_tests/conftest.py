"""Shared set-up for the Mininet end-to-end tests: OVS guard, state cleanup, flow dumps on failure."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ryu_nsm.core.fabric import Fabric
from ryu_nsm.lab.mininet_fabric import cleanup, dump_all_flows
from ryu_nsm.sources.topology import load_topology

DEMO_TOPOLOGY = Path(__file__).resolve().parents[1] / "topologies" / "demo-chain.yaml"

REQUIRED_TOOLS = {
    "ovs-vsctl": "openvswitch-switch", "ovs-ofctl": "openvswitch-switch", "mnexec": "mininet",
    "nft": "nftables", "ethtool": "ethtool", "iperf3": "iperf3", "ping": "iputils-ping",
    "ss": "iproute2", "tc": "iproute2",
}


def pytest_configure(config: pytest.Config) -> None:
    # Debian's Mininet uses distutils' StrictVersion on every OVS call; the warning is not ours.
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:mininet.node")


@pytest.fixture
def demo_fabric() -> Fabric:
    """The shipped demo chain fabric (topologies/demo-chain.yaml)."""
    return load_topology(DEMO_TOPOLOGY)


@pytest.fixture(scope="session", autouse=True)
def mininet_environment() -> Iterator[None]:
    """Fail (never skip) when the machine cannot run Mininet on OVS; sweep stale state around the session."""
    if os.geteuid() != 0:
        pytest.fail("Mininet tests must run as root", pytrace=False)
    missing = sorted({pkg for tool, pkg in REQUIRED_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        pytest.fail(f"Mininet tests need these Debian packages: {' '.join(missing)} (see scripts/setup)",
                    pytrace=False)
    probe = subprocess.run(["ovs-vsctl", "--timeout=5", "get", "Open_vSwitch", ".", "datapath_types"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.fail(f"Open vSwitch is not running ({probe.stderr.strip()}); start it with scripts/setup",
                    pytrace=False)
    if "netdev" not in probe.stdout:
        pytest.fail(f"Open vSwitch has no userspace (netdev) datapath: {probe.stdout.strip()}", pytrace=False)
    cleanup()
    yield
    cleanup(own=True)


def mininet_children() -> dict[int, str]:
    """Mininet node shells that are children of this process: pid → command line."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if ppid == os.getpid() and "mininet:" in cmdline:
            found[int(proc.name)] = cmdline.strip()
    return found


@pytest.fixture
def clean_mininet() -> Iterator[None]:
    """Clean Mininet state before a test; after it, fail if the test left any network of its own behind."""
    cleanup()
    yield
    left = cleanup(own=True)
    for pid, cmdline in mininet_children().items():
        os.kill(pid, signal.SIGKILL)
        left.append(f"shell {cmdline!r}")
    if left:
        pytest.fail(f"test left Mininet state behind (now removed): {', '.join(left)}", pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On a failed test, add every owned switch's flow table to the report while it still exists."""
    report = yield
    if report.failed and call.when in ("setup", "call"):
        flows = dump_all_flows()
        if flows:
            report.sections.append(("OpenFlow tables (ovs-ofctl dump-flows)", flows))
    return report
