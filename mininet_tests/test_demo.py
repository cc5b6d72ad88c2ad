"""The README's first command: ``ryu-nsm demo`` runs every step and says that all passed."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.mininet


def test_the_demo_passes_every_step(clean_mininet):
    proc = subprocess.run([sys.executable, "-m", "ryu_nsm.cli", "demo"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "demo: all steps passed" in proc.stdout
    # Every numbered step ran and was checked.
    assert [f"{n}." for n in range(1, 10)] == [line.split()[0] for line in proc.stdout.splitlines()
                                              if line[:2] in {f"{n}." for n in range(1, 10)}]
    # The policy step: telnet is dropped where the client meets the fabric, and counted there.
    assert "telnet is dropped at s1: its policy drop flow" in proc.stdout, proc.stdout


def test_the_demo_over_tls_connects_every_switch_by_ssl(clean_mininet):
    proc = subprocess.run([sys.executable, "-m", "ryu_nsm.cli", "demo", "--tls"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every switch talks to the controller over TLS" in proc.stdout
    assert proc.stdout.count("is_connected=true") == 4, proc.stdout
