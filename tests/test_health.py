"""Supervised loops: a loop that fails is logged, restarted and counted; /healthz says 503 while a
loop makes no progress and 200 once it does again."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request

import pytest

from ryu_nsm.observe import health
from ryu_nsm.observe.status_api import StatusServer
from tests.fabrics import ring


def eventually(condition, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def loops(monkeypatch) -> health.Registry:
    """A registry of this test's own (components register in ``health.LOOPS``)."""
    registry = health.Registry()
    monkeypatch.setattr(health, "LOOPS", registry)
    return registry


@pytest.fixture
def server(loops):
    status = StatusServer(lambda: {}, "127.0.0.1", 0, loops=loops).start()
    yield f"http://127.0.0.1:{status.address[1]}"
    status.stop()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def restarts(url: str, loop: str) -> float:
    """``ryu_nsm_loop_restarts_total{loop=...}`` as /metrics has it (0 when absent)."""
    for line in get(url + "/metrics")[1].splitlines():
        if line.startswith(f'ryu_nsm_loop_restarts_total{{loop="{loop}"}}'):
            return float(line.split()[-1])
    return 0.0


class Fault:
    """Wraps a callable: raises while ``failing`` is set, else calls through."""

    def __init__(self, fn=lambda *a, **k: None):
        self.fn = fn
        self.failing = threading.Event()
        self.failing.set()
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.failing.is_set():
            raise RuntimeError("injected fault")
        return self.fn(*args, **kwargs)


def assert_supervised(url: str, loop: str, fault: Fault, caplog) -> None:
    """While ``fault`` fails: logged, restarted, counted, /healthz 503; once it heals: 200."""
    eventually(lambda: restarts(url, loop) >= 1, what=f"{loop} restarted")
    eventually(lambda: any(r.levelno == logging.ERROR and loop in r.getMessage() and r.exc_info
                           for r in list(caplog.records)), what="failure logged with its traceback")
    code, body = eventually(lambda: (r := get(url + "/healthz"))[0] == 503 and r, what=f"{loop} stale")
    assert loop in json.loads(body)["stale"]
    fault.failing.clear()
    eventually(lambda: get(url + "/healthz")[0] == 200, what=f"{loop} healthy again")


# -- the supervisor itself -----------------------------------------------------------------------


def test_a_failing_body_is_restarted_with_growing_back_off(loops, caplog):
    stop = threading.Event()
    starts: list[float] = []

    def body(loop):
        starts.append(time.monotonic())
        raise RuntimeError("boom")

    supervised = health.supervise("t", body, 1.0, stop, initial_backoff=0.02, max_backoff=0.08,
                                  jitter=False)
    eventually(lambda: len(starts) >= 5, what="restarts")
    stop.set()
    supervised.join(5)
    assert not supervised.is_alive()
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert gaps[0] >= 0.02 and gaps[1] >= 0.04 and gaps[3] >= 0.08
    assert all(gap < 0.08 * 10 for gap in gaps)  # capped
    assert "loop t failed" in caplog.text and "RuntimeError: boom" in caplog.text
    assert loops.loops() == []  # a stopped loop leaves the registry


def test_a_loop_is_stale_when_it_does_not_beat_within_its_period(loops):
    stop = threading.Event()
    beating = threading.Event()
    beating.set()

    def body(loop):
        while not stop.wait(0.01):
            if beating.is_set():
                loop.beat()

    supervised = health.supervise("quiet", body, 0.02, stop)
    assert loops.stale() == []
    beating.clear()
    eventually(lambda: loops.stale() == ["quiet"], what="stale")
    beating.set()
    eventually(lambda: loops.stale() == [], what="fresh")
    stop.set()
    supervised.join(5)
    assert not supervised.is_alive()


def test_names_are_unique_and_metrics_show_every_loop(loops, server):
    first, second = loops.add("k8s", 1.0), loops.add("k8s", 1.0)
    assert (first.name, second.name) == ("k8s", "k8s#2")
    second.restarts = 3
    text = get(server + "/metrics")[1]
    assert 'ryu_nsm_loop_restarts_total{loop="k8s#2"} 3.0' in text
    assert 'ryu_nsm_loop_progress_age_seconds{loop="k8s"}' in text
    assert get(server + "/healthz") == (200, "ok\n")


# -- the os-ken app's loops ----------------------------------------------------------------------


@pytest.fixture
def app(loops):
    from ryu_nsm.openflow.shell import NsmApp, ShellSettings

    NsmApp.settings = ShellSettings(fabric=ring(2), tick_interval=0.02, barrier_timeout=0.05)
    app = NsmApp()
    app.start()
    yield app
    app.stop()
    assert not any(t.is_alive() for t in app.threads)
    NsmApp.settings = None


def test_the_ticker_survives_a_failing_tick(app, server, caplog, monkeypatch):
    fault = Fault(app.core.tick)
    monkeypatch.setattr(app.core, "tick", fault)
    assert_supervised(server, "ryu-nsm-ticker", fault, caplog)
    calls = fault.calls
    eventually(lambda: fault.calls > calls + 2, what="ticks go on")


def test_the_worker_survives_a_failing_queue(app, server, caplog, monkeypatch):
    fault = Fault(app.work.get)
    monkeypatch.setattr(app.work, "get", fault)
    assert_supervised(server, "ryu-nsm-worker", fault, caplog)


def test_switch_events_never_wait_for_the_core_lock(app, monkeypatch):
    # os-ken hands every switch's replies, barrier replies included, to one thread: a handler there
    # that waited for the lock a replan holds would keep the program in flight unconfirmed.
    from types import SimpleNamespace

    from os_ken.ofproto import ofproto_v1_3 as ofp

    seen = []
    monkeypatch.setattr(app.core, "port_changed",
                        lambda dpid, port, now, **_: seen.append((dpid, port)) or [])
    desc = SimpleNamespace(port_no=1, name=b"p1", state=ofp.OFPPS_LINK_DOWN, config=0)
    event = SimpleNamespace(msg=SimpleNamespace(desc=desc, reason=ofp.OFPPR_MODIFY,
                                                datapath=SimpleNamespace(id=1)))
    with app.lock:  # a replan in progress
        handler = threading.Thread(target=app._port_status, args=(event,), daemon=True)
        handler.start()
        handler.join(5)
        assert not handler.is_alive(), "the event handler waited for the core lock"
        assert seen == []  # the core is called only once the replan lets go of the lock
    eventually(lambda: seen, what="the port change reaches the core")
    assert [(dpid, port.up) for dpid, port in seen] == [(1, False)]


# -- sources and the cluster side ----------------------------------------------------------------


def test_the_file_watcher_survives_a_failing_consumer(loops, server, caplog, tmp_path):
    from ryu_nsm.sources.files import DirectoryWatcher

    (tmp_path / "requests.yaml").write_text("")
    fault = Fault()
    watcher = DirectoryWatcher([tmp_path], fault, interval=0.02)
    watcher.start()
    try:
        assert_supervised(server, "ryu-nsm-file-watcher", fault, caplog)
    finally:
        watcher.stop(5)
    assert loops.loops() == []


def test_the_kubernetes_deliver_loop_survives_a_failing_consumer(loops, server, caplog, monkeypatch):
    from ryu_nsm.sources import kubernetes
    from tests.k8s_emulator import Emulator

    monkeypatch.setattr(kubernetes, "_DELIVER_PERIOD", 0.05)
    fault = Fault()
    with Emulator() as api:
        source = kubernetes.KubernetesSource(api.api_client(), fault, watch_timeout=30, coalesce=0.01)
        source.start()
        try:
            assert_supervised(server, "ryu-nsm-k8s-deliver", fault, caplog)
        finally:
            source.stop()
    assert loops.loops() == []


def test_the_ovsdb_source_survives_a_failing_replica(loops, server, caplog, monkeypatch, tmp_path):
    from ryu_nsm.sources import ovsdb

    monkeypatch.setattr(ovsdb, "_BEAT", 0.05)
    fault = Fault(ovsdb.idl.Idl)
    monkeypatch.setattr(ovsdb.idl, "Idl", fault)
    source = ovsdb.OvsdbSource(lambda resources: None, f"unix:{tmp_path}/none.sock")
    source.start()
    try:
        assert_supervised(server, "ryu-nsm-ovsdb", fault, caplog)
    finally:
        source.stop()
    assert not source._thread.is_alive() and loops.loops() == []


def test_the_status_writer_loop_survives_a_failing_writer(loops, server, caplog):
    from ryu_nsm.k8s.client import StatusLoop

    class Writer:
        sync = Fault(lambda status, objects, relist: type("Result", (), {"errors": []})())

    loop = StatusLoop(Writer(), lambda: {}, lambda: {}, lambda: True, interval=0.01, resync=0.01).start()
    try:
        assert_supervised(server, "ryu-nsm-k8s-status", Writer.sync, caplog)
    finally:
        loop.stop()
    assert loops.loops() == []


def test_the_leader_elector_survives_a_failing_round(loops, server, caplog, monkeypatch):
    from kubernetes import client

    from ryu_nsm.k8s.leader import LeaderElector

    elector = LeaderElector(client.ApiClient(), "ns", "lease", "me", lease_duration=0.05,
                            renew_deadline=0.02, retry_period=0.01)
    fault = Fault()
    monkeypatch.setattr(elector, "_try_acquire", fault)
    elector.start()
    try:
        assert_supervised(server, "leader-lease", fault, caplog)
    finally:
        elector.stop()
    assert loops.loops() == []
