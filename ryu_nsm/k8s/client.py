"""The controller's Kubernetes side: API client configuration and the status writer loop."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from kubernetes import client, config

from ryu_nsm.observe.health import Loop, Supervised, supervise

log = logging.getLogger("ryu_nsm.k8s.client")

POOL_SIZE = 32  # status writer workers (8), a watch per kind (4), the Lease, and room to spare


def api_client(kubeconfig: str | None = None, context: str | None = None,
               pool_size: int = POOL_SIZE) -> client.ApiClient:
    """In-cluster configuration when running in a Pod (and nothing else is asked), else a kubeconfig.

    The client keeps up to ``pool_size`` connections (at least): one per concurrent caller, or the
    surplus ones are opened and closed for every request."""
    configuration = client.Configuration()
    if kubeconfig or context or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, pool_size)
    return client.ApiClient(configuration)


class StatusLoop:
    """Writes the controller's status into the cluster when it changes, and every ``resync`` seconds
    from a fresh list of what is stored (the writer otherwise keeps what it wrote, so changes made
    by others are undone at the latest ``resync`` seconds later).

    Only while ``may_write()`` holds (the leader, once the watcher has listed everything): a
    follower or a half-synced watcher would delete objects that are still right. Writing again after
    a pause starts from a fresh list too: another replica may have written meanwhile.
    """

    def __init__(self, writer, status: Callable[[], dict], objects: Callable[[], object],
                 may_write: Callable[[], bool], interval: float = 0.5, resync: float = 30.0):
        self.writer = writer
        self.status = status
        self.objects = objects
        self.may_write = may_write
        self.interval = interval
        self.resync = resync
        self._stop = threading.Event()
        self._thread: Supervised | None = None

    def start(self) -> StatusLoop:
        # A sync may take a while on a big cluster: a resync's time is what a round may take.
        self._thread = supervise("ryu-nsm-k8s-status", self._run, max(self.interval, self.resync), self._stop)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self, loop: Loop) -> None:
        last: tuple[_Seen | None, float | None] = (None, None)  # the status last written; when last listed
        while not self._stop.wait(self.interval):
            last = self._round(*last)
            loop.beat()  # a round done (an exception out of it is a failed round)

    def _round(self, written: _Seen | None, listed: float | None) -> tuple[_Seen | None, float | None]:
        """Write the status if it changed or a resync is due; returns the new (written, listed)."""
        if not self.may_write():
            return None, None
        status = self.status()
        seen = (list(status.get("connections") or ()), list(status.get("problems") or ()))
        relist = listed is None or time.monotonic() - listed >= self.resync
        if written is not None and _same(written, seen) and not relist:
            return written, listed
        started = time.monotonic()
        result = self.writer.sync(status, self.objects(), relist=relist)
        if result.errors:  # the writer lists again by itself after an error
            log.warning("status sync: %d error(s), retrying: %s", len(result.errors), result.errors[:3])
            return written, listed
        return seen, started if relist else listed


_Seen = tuple[list, list]  # what the writer reads of a status: its connections and problems


def _same(before: _Seen, now: _Seen) -> bool:
    """The connections and problems as they were. The status renderer hands an unchanged connection's
    entry over as the very same object, so this is mostly identity checks: a JSON digest of them all
    was a third of an idle controller's CPU at 10,000 connections, twice a second."""
    (old, old_problems), (new, new_problems) = before, now
    return (old_problems == new_problems and len(old) == len(new)
            and all(a is b or a == b for a, b in zip(old, new, strict=True)))
