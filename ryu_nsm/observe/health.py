"""Supervised loops: every long-lived thread of the controller runs under ``supervise``, so a loop
that dies is logged with its traceback and restarted (exponential back-off, counted), never silently
gone; and a loop that stops making progress is seen as stale by ``/healthz``.

A loop reports progress with ``beat()`` each iteration (loops that block on I/O beat when they wake,
so their declared period covers the longest block). It is stale once it has not beaten for
``period * STALE_FACTOR`` seconds, which is also true while it waits to be restarted.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

log = logging.getLogger("ryu_nsm.observe.health")
STALE_FACTOR = 3.0


class Loop:
    """One named loop's progress and restarts (what ``/healthz`` and ``/metrics`` read)."""

    def __init__(self, name: str, period: float, clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.period = period
        self.restarts = 0
        self._clock = clock
        self.last_beat = clock()

    def beat(self) -> None:
        """Progress: the loop went round (or woke from its blocking wait)."""
        self.last_beat = self._clock()

    def age(self) -> float:
        """Seconds since the last progress."""
        return self._clock() - self.last_beat

    def stale(self) -> bool:
        return self.age() > self.period * STALE_FACTOR


class Registry:
    """The loops of one process, by unique name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loops: dict[str, Loop] = {}

    def add(self, name: str, period: float) -> Loop:
        """A new loop; a name already taken gets a ``#n`` suffix (two sources of one kind)."""
        with self._lock:
            unique, n = name, 1
            while unique in self._loops:
                n += 1
                unique = f"{name}#{n}"
            loop = self._loops[unique] = Loop(unique, period)
            return loop

    def remove(self, loop: Loop) -> None:
        with self._lock:
            if self._loops.get(loop.name) is loop:
                del self._loops[loop.name]

    def loops(self) -> list[Loop]:
        with self._lock:
            return sorted(self._loops.values(), key=lambda loop: loop.name)

    def stale(self) -> list[str]:
        """Names of the loops that have not made progress within their period."""
        return [loop.name for loop in self.loops() if loop.stale()]


# The process's loops: components register here (``/healthz`` reads it); tests swap in their own.
LOOPS = Registry()


class Supervised:
    """Runs ``body(loop)`` in a daemon thread until ``stop`` is set; see ``supervise``."""

    def __init__(self, name: str, body: Callable[[Loop], None], period: float, stop: threading.Event,
                 *, registry: Registry | None = None, initial_backoff: float = 0.5,
                 max_backoff: float = 30.0, jitter: bool = True):
        self.registry = registry or LOOPS
        self.loop = self.registry.add(name, period)
        self.body = body
        self.stop_event = stop
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.jitter = jitter
        self.thread = threading.Thread(target=self._run, name=self.loop.name, daemon=True)

    def start(self) -> Supervised:
        self.loop.beat()
        self.thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        if self.thread is not threading.current_thread() and self.thread.ident is not None:
            self.thread.join(timeout)

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def _run(self) -> None:
        delay = self.initial_backoff
        try:
            while not self.stop_event.is_set():
                started = time.monotonic()
                try:
                    self.body(self.loop)
                    return  # a body returns when it sees stop
                except Exception:
                    if time.monotonic() - started > self.max_backoff:
                        delay = self.initial_backoff  # it ran a good while: a new failure, not the same one
                    wait = delay * (1 + random.random() * 0.5) if self.jitter else delay
                    # Logged before it is counted: whoever sees the count finds the log line.
                    log.exception("loop %s failed; restart %d in %.1f s", self.loop.name,
                                  self.loop.restarts + 1, wait)
                    self.loop.restarts += 1
                    delay = min(self.max_backoff, delay * 2)
                    self.stop_event.wait(wait)
        finally:
            self.registry.remove(self.loop)


def supervise(name: str, body: Callable[[Loop], None], period: float, stop: threading.Event,
              **options) -> Supervised:
    """Start ``body(loop)`` in a supervised thread named ``name`` (see ``Supervised``).

    ``body`` loops until ``stop`` is set, calling ``loop.beat()`` at least every ``period`` seconds;
    an exception out of it is logged and the body started again after a back-off.
    """
    return Supervised(name, body, period, stop, **options).start()


def exposition(registry: Registry | None = None) -> bytes:
    """``/metrics`` text for the loops: restarts, seconds since each loop's last progress, and whether
    it is stale (the judgement ``/healthz`` makes)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import CollectorRegistry

    loops = (registry or LOOPS).loops()

    class LoopCollector:
        def collect(self):
            restarts = CounterMetricFamily("ryu_nsm_loop_restarts", "Restarts of a loop after it failed",
                                           labels=["loop"])
            age = GaugeMetricFamily("ryu_nsm_loop_progress_age_seconds",
                                    "Seconds since the loop last made progress", labels=["loop"])
            stale = GaugeMetricFamily("ryu_nsm_loop_stale",
                                      "1 while the loop has made no progress within its period (/healthz)",
                                      labels=["loop"])
            for loop in loops:
                restarts.add_metric([loop.name], loop.restarts)
                age.add_metric([loop.name], loop.age())
                stale.add_metric([loop.name], 1.0 if loop.stale() else 0.0)
            yield from (restarts, age, stale)

    collectors = CollectorRegistry(auto_describe=False)
    collectors.register(LoopCollector())
    return generate_latest(collectors)
