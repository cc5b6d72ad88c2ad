"""The gate that holds background core calls back while a change is planned or programmed."""

import threading
import time

from ryu_nsm.lab.controller_process import wait_for
from ryu_nsm.openflow.foreground import ForegroundGate


def test_quiet_gate_lets_background_work_go_at_once():
    gate = ForegroundGate(patience=5.0)
    started = time.monotonic()
    assert gate.wait_quiet() is True
    assert time.monotonic() - started < 1.0  # far below the patience: nothing was waited for


def test_background_work_waits_for_every_change_then_goes():
    gate = ForegroundGate(patience=30.0)
    went = threading.Event()

    def background():
        gate.wait_quiet()
        went.set()

    with gate.change():
        with gate.change():  # two changes at once (a source's state, a program being sent)
            worker = threading.Thread(target=background, daemon=True)
            worker.start()
            assert not went.wait(0.2)
        assert not went.wait(0.2)  # one change is still in progress
    assert wait_for(went.is_set, 5.0)  # woken when the last one ends, not after the patience


def test_background_work_is_held_up_once_a_spell_never_stopped():
    gate = ForegroundGate(patience=0.1)
    with gate.change():
        started = time.monotonic()
        assert gate.wait_quiet() is False  # a change that lasts: background work goes on regardless
        assert time.monotonic() - started >= 0.1
        with gate.change():  # a stream of changes: the queue is not held up a patience a call
            started = time.monotonic()
            assert [gate.wait_quiet() for _ in range(50)] == [False] * 50
            assert time.monotonic() - started < 0.1
    with gate.change():  # a new spell: held up again
        started = time.monotonic()
        assert gate.wait_quiet() is False and time.monotonic() - started >= 0.1
