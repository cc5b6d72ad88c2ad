"""The forwarder's janitor runs under the supervised-loop mechanism (ryu_nsm/observe/health.py): a
sweep that raises is logged with its traceback, counted as a restart and retried; stop() ends it.
No OVS: OVSDB and the discovery of existing connections are stubbed."""

from __future__ import annotations

import logging
import threading

from ovs_forwarder import server
from ovs_forwarder.discovery import Discovery
from ryu_nsm.observe.health import LOOPS


class NoOvsdb:
    def watch_interfaces(self, callback):
        pass

    def unwatch_interfaces(self, callback):
        pass


def test_a_failing_sweep_is_logged_counted_and_retried(monkeypatch, caplog):
    monkeypatch.setattr(server, "discover", lambda ovsdb, owner: Discovery([], []))
    monkeypatch.setattr(server, "_JANITOR_MAX_SLEEP", 0.02)
    forwarder = server.Forwarder(NoOvsdb(), "br", "jan")
    swept = threading.Event()
    calls = []

    def sweep(now=None):
        calls.append(now)
        if len(calls) == 1:
            raise RuntimeError("injected")
        swept.set()
        return []

    monkeypatch.setattr(forwarder, "sweep", sweep)
    with caplog.at_level(logging.ERROR, logger="ryu_nsm.observe.health"):
        forwarder.start()
        try:
            assert swept.wait(10)
            loop = next(loop for loop in LOOPS.loops() if loop.name == "ovs-forwarder-janitor:jan")
            assert loop.restarts == 1 and not loop.stale()
        finally:
            forwarder.stop()
    assert not forwarder._janitor.is_alive()
    failed = [r for r in caplog.records if "ovs-forwarder-janitor:jan failed" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info[1].args == ("injected",)
    assert "ovs-forwarder-janitor:jan" not in [loop.name for loop in LOOPS.loops()]

