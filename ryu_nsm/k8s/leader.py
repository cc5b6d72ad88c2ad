"""Leader election over a coordination.k8s.io/v1 Lease, with a generation for OpenFlow roles.

Two controller replicas share one Lease; the one holding it is the leader and programs the switches.
Each term of leadership gets a *generation*: the Lease's ``spec.leaseTransitions`` as written by the
acquire that started the term. Every acquire writes ``leaseTransitions + 1`` (a create writes 0) with
optimistic concurrency (``metadata.resourceVersion`` on replace; 409 means another replica won the
race), so terms are ordered by the Lease's own history and a new leader's generation is always greater
than any earlier leader's. The shell sends it as the OpenFlow role request's generation_id, and a switch
refuses MASTER from a stale generation: a deposed leader that still believes it leads is fenced off
by the switches themselves, whatever its clock or network says.

Why not the official client's ``kubernetes.leaderelection``: its ``run()`` blocks for ever and cannot be
stopped, never releases the lease, uses the default client configuration instead of a given one,
rejects a retry period under one second (by ``sys.exit``), stops electing for good after losing the
lease once, and never bumps ``leaseTransitions``.

Timing follows client-go: a follower measures expiry with its own clock, from when it last saw the
Lease change (never from the renewTime written by another host's clock); the leader steps down when it
could not renew for ``renew_deadline`` seconds, which is shorter than ``lease_duration``, so it stops
before anyone else may take over. Stopping steps down first (``on_stopped``), then releases the Lease
(holder cleared, ``leaseDurationSeconds`` 1) so the other replica takes over at its next retry instead
of waiting out the lease. ``hand_over`` (sharding) does the same while the loop goes on: step down,
wait for what is in flight (``drain``), release, follow. Known limits: an API call that hangs past
its timeout delays the step-down (urllib3 may retry it), and a deleted Lease starts over at
generation 0, which switches that saw a higher generation refuse as stale until an operator restores
the count (their fencing stays safe).
"""

from __future__ import annotations

import datetime
import logging
import math
import random
import threading
import time
from collections.abc import Callable

import urllib3
from kubernetes import client
from kubernetes.client.rest import ApiException

from ryu_nsm.observe.health import Loop, Supervised, supervise

log = logging.getLogger("ryu_nsm.k8s.leader")

_JITTER = 0.2  # followers retry after retry_period × (1 … 1.2), so replicas do not move in lockstep


class LeaderElector:
    """Campaign for one Lease in a background thread; call back when leadership starts and stops.

    ``on_started(generation)`` and ``on_stopped()`` run on the elector's thread and should return
    quickly. ``clock`` (monotonic seconds) measures expiry and deadlines. ``patience()`` is how long
    the Lease must have been seen free before this replica takes it (sharding: ``k8s.shards``).
    ``drain()`` returns once nothing this replica sent under its term is in flight (False: it gave
    up waiting); a hand-over runs it between stepping down and freeing the Lease.
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_started: Callable[[int], None] | None = None,
        on_stopped: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        patience: Callable[[], float] | None = None,
        drain: Callable[[], bool] | None = None,
    ) -> None:
        if not 0 < retry_period < renew_deadline < lease_duration:
            raise ValueError("need 0 < retry_period < renew_deadline < lease_duration, got "
                             f"{retry_period}, {renew_deadline}, {lease_duration}")
        if not identity:
            raise ValueError("identity must not be empty: an empty holder means a free lease")
        self.api = client.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._on_started = on_started or (lambda generation: None)
        self._on_stopped = on_stopped or (lambda: None)
        self._clock = clock
        self._patience = patience or (lambda: 0.0)
        self._drain = drain or (lambda: True)
        self._hand_over = threading.Event()
        self._free_since: float | None = None  # when the Lease was first seen free (absent, empty, expired)
        self._stop = threading.Event()
        self._release_on_stop = True
        self._thread: Supervised | None = None
        self._leading = False
        self._generation: int | None = None
        self._renewed_at = 0.0  # start of the last successful write of the lease as its holder
        self._observed: tuple | None = None  # the Lease as last seen: holder, times, transitions, version
        self._observed_at = 0.0
        self.holder: str | None = None  # the holder in the Lease as last seen
        self._failing = False  # the last API call failed (later failures of a streak log at debug)

    @property
    def is_leader(self) -> bool:
        """True while this replica holds the Lease and its term has not ended."""
        return self._leading

    @property
    def generation(self) -> int | None:
        """The generation of the current (or else the last) term of this replica; None before any."""
        return self._generation

    def start(self) -> LeaderElector:
        """Start campaigning in a daemon thread."""
        if self._thread is not None:
            raise RuntimeError("elector already started")
        # A round waits at most retry_period, and its calls time out within the lease's duration.
        self._thread = supervise(f"leader-{self.name}", self._run, self.lease_duration, self._stop)
        return self

    def stop(self, release: bool = True, timeout: float = 10.0) -> None:
        """Stop campaigning; if leading, step down (``on_stopped``) and, with ``release``, free the Lease.

        ``release=False`` leaves the Lease held as a crashed replica would: the other takes over only
        when it expires.
        """
        self._release_on_stop = release
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"leader elector {self.identity} still running after {timeout}s")

    def hand_over(self) -> None:
        """If leading, step down at the next round, wait for ``drain``, then free the Lease and follow
        (sharding: the shard belongs to another live replica, which takes it at its next retry)."""
        self._hand_over.set()

    # -- the loop -------------------------------------------------------------------------------

    def _run(self, loop: Loop) -> None:
        while not self._stop.is_set():
            if self._hand_over.is_set():
                self._hand_over.clear()
                if self._leading:
                    self._step_down("handing the lease over")
                    try:  # the Lease is freed anyway: the switches fence a late write with IS_SLAVE
                        if not self._drain():
                            log.warning("%s: writes still in flight; handing lease %s over anyway",
                                        self.identity, self.name)
                    except Exception:
                        log.exception("drain before hand-over failed")
                    self._release()
            if self._leading:
                self._renew()
                # After a failed renew, wake by the deadline at the latest to step down in time.
                left = self._renewed_at + self.renew_deadline - self._clock()
                wait = min(self.retry_period, max(0.0, left))
            else:
                self._try_acquire()
                wait = self.retry_period * (1 + random.uniform(0, _JITTER))
            loop.beat()  # a round done: an exception out of it is a failed round
            self._stop.wait(wait)
        if self._leading:
            self._step_down("stopping")
            if self._release_on_stop:
                self._release()

    def _try_acquire(self) -> None:
        started = self._clock()
        try:
            lease = self._read(self.lease_duration)
            spec = lease.spec or client.V1LeaseSpec()
            holder = spec.holder_identity or None
            if holder and holder != self.identity and not self._expired(started, spec):
                self._free_since = None
                return
            if not self._waited(started):
                return
            self._write_term(lease, (spec.lease_transitions or 0) + 1, started, acquire=True)
        except ApiException as e:
            if e.status == 404:
                if self._waited(started):
                    self._create(started)
            else:
                self._failed("acquire", e)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            self._failed("acquire", e)

    def _create(self, started: float) -> None:
        now = _utcnow()
        lease = client.V1Lease(
            metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
            spec=client.V1LeaseSpec(holder_identity=self.identity, lease_duration_seconds=self._seconds(),
                                    acquire_time=now, renew_time=now, lease_transitions=0))
        try:
            self.api.create_namespaced_lease(self.namespace, lease, _request_timeout=self.lease_duration)
        except ApiException as e:
            if e.status != 409:  # 409: another replica created it first; we follow
                self._failed("create", e)
            return
        except (urllib3.exceptions.HTTPError, OSError) as e:
            self._failed("create", e)
            return
        self._start_term(0, started)

    def _renew(self) -> None:
        started = self._clock()
        remaining = self._renewed_at + self.renew_deadline - started
        if remaining <= 0:
            self._step_down(f"could not renew the lease within {self.renew_deadline}s")
            return
        try:
            lease = self._read(remaining)
            holder = lease.spec.holder_identity if lease.spec else None
            if holder != self.identity:
                self._step_down(f"the lease is held by {holder or 'nobody'} now")
                return
            transitions = lease.spec.lease_transitions or 0
            self._write_term(lease, transitions, started, acquire=False, timeout=remaining)
        except ApiException as e:
            if e.status == 404:
                self._step_down("the lease was deleted")
                return
            self._failed("renew", e)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            self._failed("renew", e)
        if self._leading and self._clock() >= self._renewed_at + self.renew_deadline:
            self._step_down(f"could not renew the lease within {self.renew_deadline}s")

    def _write_term(self, lease: client.V1Lease, transitions: int, started: float, acquire: bool,
                    timeout: float | None = None) -> None:
        """Replace the Lease as its holder; the read's resourceVersion makes a concurrent write a 409."""
        now = _utcnow()
        spec = lease.spec or client.V1LeaseSpec()
        spec.holder_identity = self.identity
        spec.lease_duration_seconds = self._seconds()
        spec.renew_time = now
        spec.lease_transitions = transitions
        if acquire:
            spec.acquire_time = now
        lease.spec = spec
        try:
            self.api.replace_namespaced_lease(self.name, self.namespace, lease,
                                              _request_timeout=timeout or self.lease_duration)
        except ApiException as e:
            if e.status == 409 and acquire:
                return  # another replica wrote first: lost the race
            raise
        if acquire:
            self._start_term(transitions, started)
        else:
            self._renewed_at = started

    def _release(self) -> None:
        """Clear the holder (if it is still us) so the other replica need not wait for expiry."""
        try:
            lease = self._read(self.retry_period * 2)
            if lease.spec is None or lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = None
            lease.spec.lease_duration_seconds = 1
            lease.spec.renew_time = _utcnow()
            self.api.replace_namespaced_lease(self.name, self.namespace, lease,
                                              _request_timeout=self.retry_period * 2)
            log.info("%s released lease %s/%s", self.identity, self.namespace, self.name)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as e:
            log.warning("could not release lease %s/%s (it expires on its own): %s",
                        self.namespace, self.name, _describe(e))

    # -- terms ----------------------------------------------------------------------------------

    def _start_term(self, generation: int, started: float) -> None:
        self._leading = True
        self._free_since = None
        self._generation = generation
        self._renewed_at = started
        self.holder = self.identity
        log.info("%s leads (lease %s/%s, generation %d)", self.identity, self.namespace, self.name,
                 generation)
        try:
            self._on_started(generation)
        except Exception:  # a leader that could not start must not keep the other replica out
            log.exception("on_started failed: giving up leadership")
            self._step_down("on_started failed")
            self._release()

    def _step_down(self, why: str) -> None:
        self._leading = False
        log.warning("%s stops leading (generation %s): %s", self.identity, self._generation, why)
        try:
            self._on_stopped()
        except Exception:
            log.exception("on_stopped failed")

    # -- helpers --------------------------------------------------------------------------------

    def _read(self, timeout: float) -> client.V1Lease:
        lease = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=timeout)
        spec = lease.spec or client.V1LeaseSpec()
        seen = (spec.holder_identity, spec.renew_time, spec.acquire_time, spec.lease_transitions,
                lease.metadata.resource_version if lease.metadata else None)
        if self._failing:
            log.info("lease %s/%s is reachable again", self.namespace, self.name)
            self._failing = False
        if seen != self._observed:
            self._observed = seen
            self._observed_at = self._clock()
            holder = spec.holder_identity or None
            if holder != self.holder:
                log.info("lease %s/%s is held by %s", self.namespace, self.name, holder or "nobody")
            self.holder = holder
        return lease

    def _failed(self, what: str, error: Exception) -> None:
        """Log a failed call: the first of a streak as a warning, the rest (every retry) at debug."""
        level = logging.DEBUG if self._failing else logging.WARNING
        self._failing = True
        log.log(level, "cannot %s lease %s/%s: %s", what, self.namespace, self.name, _describe(error))

    def _waited(self, now: float) -> bool:
        """True once the Lease has been seen free for ``patience()`` seconds."""
        if self._free_since is None:
            self._free_since = now
        return now - self._free_since >= self._patience()

    def _expired(self, now: float, spec: client.V1LeaseSpec) -> bool:
        duration = spec.lease_duration_seconds or self._seconds()
        return now - self._observed_at >= duration

    def _seconds(self) -> int:
        return math.ceil(self.lease_duration)  # rounded up: others wait at least as long as we hold


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _describe(error: Exception) -> str:
    return f"{error.status} {error.reason}" if isinstance(error, ApiException) else str(error)
