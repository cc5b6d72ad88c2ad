"""The Kubernetes source: NSM's CRDs, Pods, Namespaces, ServiceLevels and MultiNetworkPolicies from an
API server → Resources, live.

One thread per watched kind (and namespace, when the scope is a chosen set) runs the usual
reflector loop: LIST, remember the list's resourceVersion, WATCH from it (with bookmarks and a
server-side timeout), and apply each event to an in-memory store keyed like ``documents.ObjectKey``
((kind, namespace, name), or (kind, name) for a Namespace). A watch that ends normally is resumed
from the last resourceVersion seen (an event's or a bookmark's). A 410 Gone (the HTTP answer or an
ERROR event), a broken stream or any other error leads to a new LIST that replaces that kind's part
of the store: what the list lacks was deleted meanwhile, so no delete is lost and nothing is
doubled. Errors back off exponentially with jitter; every wait ends at once on ``stop``. An optional
kind whose list answers 404 (its CRD is not installed: MultiNetworkPolicy) is no error: it has no
objects, counts as listed, and is listed again rarely (``absent_retry``) and whenever another kind
lists again after a failure.

The store becomes Kubernetes-shaped documents parsed by the same code as the file source
(``assembly.parse_keeping``): an object whose new version is invalid keeps its last valid
version, and each Problem names its object as ``<Kind>/<namespace>/<name>`` (``Namespace/<name>``).
``on_change`` gets the whole state (level-triggered), at once after a quiet spell, then at most
once per ``coalesce`` seconds (a burst is gathered, a lone change does not wait); only once every
kind has been listed (a partial first state would look like deletions) and only when it differs
from what was delivered last. While the API server is unreachable the last state simply stands.

Pods are selected on the client side: NSM's client annotation cannot be selected by the API
server (selectors see labels and a few fields, never annotations), and a pod without it still
matters when its Namespace carries it. So every pod is kept, trimmed to what is read, and only
pods with our annotations, in an annotated Namespace or named like an endpoint (whose labels policies
may select) become documents; Namespaces with the client annotation or labels (namespaceSelector).
"""

from __future__ import annotations

import bisect
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from ryu_nsm.core.model import DEFAULT_NAMESPACE, Resources
from ryu_nsm.core.policy_model import POLICY_API_VERSION, POLICY_FOR_ANNOTATION, POLICY_KIND
from ryu_nsm.observe.health import Loop, Supervised, supervise
from ryu_nsm.qos.service_level import API_VERSION as SLA_API_VERSION
from ryu_nsm.qos.service_level import KIND as SLA_KIND
from ryu_nsm.sources.assembly import ObjectKey, ParseMemo, parse_keeping
from ryu_nsm.sources.kube_objects import CLIENT_ANNOTATION, NSM_API_VERSION, Document

log = logging.getLogger("ryu_nsm.sources.kubernetes")

# Annotations under these prefixes are ours (NSM's client annotation, ryu-nsm's own); others are
# dropped from documents, so that an unrelated annotation change costs no re-parse.
_DELIVER_PERIOD = 5.0  # the deliver loop wakes this often when nothing changes, to show it is alive
_OUR_ANNOTATIONS = ("networkservicemesh.io", "ryu-nsm.io/")
_ABSENT_RETRY = 300.0  # seconds between lists of an optional kind the server does not serve


@dataclass(frozen=True)
class WatchedKind:
    """A kind the source lists and watches."""

    kind: str
    api_version: str
    plural: str
    namespaced: bool = True
    optional: bool = False  # its CRD may be missing: a 404 is logged once, not retried as an error

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]


NAMESPACE = WatchedKind("Namespace", "v1", "namespaces", namespaced=False)
NETWORK_SERVICE = WatchedKind("NetworkService", NSM_API_VERSION, "networkservices")
NETWORK_SERVICE_ENDPOINT = WatchedKind("NetworkServiceEndpoint", NSM_API_VERSION, "networkserviceendpoints")
POD = WatchedKind("Pod", "v1", "pods")
SERVICE_LEVEL = WatchedKind(SLA_KIND, SLA_API_VERSION, "servicelevels")  # ours; optional like NSM's
MULTI_NETWORK_POLICY = WatchedKind(POLICY_KIND, POLICY_API_VERSION, "multi-networkpolicies", optional=True)
KINDS = (NAMESPACE, NETWORK_SERVICE, NETWORK_SERVICE_ENDPOINT, POD, SERVICE_LEVEL, MULTI_NETWORK_POLICY)
# Kinds whose labels policies select (docs/policy.md): kept in their documents.
_LABELLED = (NAMESPACE, NETWORK_SERVICE_ENDPOINT, POD)


def object_key(kind: WatchedKind, obj: Mapping) -> ObjectKey | None:
    """The store key of a raw object: (kind, namespace, name), (kind, name) for a Namespace."""
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not name:
        return None
    if not kind.namespaced:
        return (kind.kind, name)
    return (kind.kind, meta.get("namespace") or DEFAULT_NAMESPACE, name)


def document_source(key: ObjectKey) -> str:
    """How a Problem names its object: ``<Kind>/<namespace>/<name>``, or ``Namespace/<name>``."""
    return "/".join(key)


def _ours(kind: WatchedKind, annotations: object) -> dict:
    if not isinstance(annotations, dict):
        return {}
    return {k: v for k, v in annotations.items() if isinstance(k, str) and (
        k.startswith(_OUR_ANNOTATIONS) or (kind is MULTI_NETWORK_POLICY and k == POLICY_FOR_ANNOTATION))}


def _document(kind: WatchedKind, obj: Mapping) -> dict:
    """The part of an object that parsing reads: identity, our annotations (and a policy's policy-for),
    the labels of what policies select, the spec of custom kinds."""
    meta = obj.get("metadata") or {}
    kept: dict[str, Any] = {"name": meta.get("name")}
    if kind.namespaced:
        kept["namespace"] = meta.get("namespace")
    annotations = _ours(kind, meta.get("annotations"))
    if annotations:
        kept["annotations"] = annotations
    if kind in _LABELLED and meta.get("labels"):
        kept["labels"] = meta["labels"]
    # Core lists carry no kind/apiVersion on their items; the watched kind is known anyway.
    doc: dict[str, Any] = {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": kept}
    if kind.group and "spec" in obj:
        doc["spec"] = obj["spec"]
    return doc


def _kept(kind: WatchedKind, obj: Mapping) -> dict:
    """What ``objects()`` shows: the object without managedFields; a Pod without its spec and status
    (kept for every pod in scope, so only identity, annotations and node are worth the memory)."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    kept: dict[str, Any] = {**obj, "apiVersion": kind.api_version, "kind": kind.kind, "metadata": meta}
    if kind is POD:
        spec = obj.get("spec") or {}
        kept = {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": meta}
        if spec.get("nodeName"):
            kept["spec"] = {"nodeName": spec["nodeName"]}
    return kept


class _Gone(Exception):
    """The resourceVersion to resume from is too old: only a new list helps."""


class _Absent(Exception):
    """An optional kind is not served (404 on its list): its CRD is not installed."""


class Backoff:
    """Exponential backoff with jitter: ``initial`` · 2ⁿ capped at ``cap``, each delay drawn from
    [½, 1] of that so that many clients do not retry in step."""

    def __init__(self, initial: float, cap: float, rng: random.Random | None = None):
        self.initial = initial
        self.cap = cap
        self.attempts = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        """The delay before the next attempt."""
        delay = min(self.cap, self.initial * 2 ** min(self.attempts, 32))
        self.attempts += 1
        return delay * self._rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        """After a success: the next failure waits ``initial`` again."""
        self.attempts = 0


class _Reflector:
    """LIST + WATCH of one kind in one scope (all namespaces, one namespace, or one Namespace)."""

    def __init__(self, source: KubernetesSource, kind: WatchedKind, namespace: str | None):
        self.source = source
        self.kind = kind
        self.namespace = namespace
        self.synced = False
        self.resource_version: str | None = None
        self.fresh = False  # listed, and no watch event since
        self.current: watch.Watch | None = None
        self.name = kind.kind + (f"/{namespace}" if namespace else "")
        self.thread: Supervised | None = None
        self.absent = False  # an optional kind found not served: waiting to list it again
        self.recheck = threading.Event()  # set: list an absent kind now (another kind listed again)

    def in_scope(self, key: ObjectKey) -> bool:
        if key[0] != self.kind.kind:
            return False
        return self.namespace is None or key[1] == self.namespace

    def call(self) -> tuple[Callable, tuple, dict]:
        """The list function (also used to watch) with its arguments."""
        source, kind = self.source, self.kind
        if kind is POD:
            if self.namespace is None:
                return source.core.list_pod_for_all_namespaces, (), {}
            return source.core.list_namespaced_pod, (self.namespace,), {}
        if kind is NAMESPACE:
            if self.namespace is None:
                return source.core.list_namespace, (), {}
            return source.core.list_namespace, (), {"field_selector": f"metadata.name={self.namespace}"}
        if self.namespace is None:
            return source.custom.list_cluster_custom_object, (kind.group, kind.version, kind.plural), {}
        return (source.custom.list_namespaced_custom_object,
                (kind.group, kind.version, self.namespace, kind.plural), {})

    def start(self) -> None:
        source = self.source
        # Wakes at least when a watch times out, or after a failed call and its back-off.
        period = max(source.watch_timeout + 10 + source.request_timeout, source.max_backoff)
        self.thread = supervise(f"ryu-nsm-k8s-{self.name}", self.run, period, source._stopping)

    def run(self, loop: Loop) -> None:
        stopping = self.source._stopping
        backoff = Backoff(self.source.initial_backoff, self.source.max_backoff)
        while not stopping.is_set():
            loop.beat()  # a failure handled here is the loop working, not stuck
            try:
                if self.resource_version is None:
                    self.relist()
                    self.fresh = True
                self.follow(backoff, loop)
                continue  # a watch that ended normally resumes from where it was
            except _Absent:
                self.wait_absent(loop)
                continue
            except _Gone:
                log.info("kubernetes source: %s: resourceVersion %s is gone, listing again",
                         self.name, self.resource_version)
                self.resource_version = None
                if not self.fresh:
                    continue
                what = "410 Gone right after a list"  # not worth an immediate list again
            except ApiException as e:
                what = f"HTTP {e.status} {e.reason}"
            except Exception as e:  # a broken stream, a refused connection, a timeout, a bad answer
                what = f"{type(e).__name__}: {e}"
            if stopping.is_set():
                break
            self.resource_version = None
            delay = backoff.next()
            log.warning("kubernetes source: %s: %s; listing again in %.1f s", self.name, what, delay)
            stopping.wait(delay)

    def wait_absent(self, loop: Loop) -> None:
        """Until the next list of a kind not served: ``absent_retry`` seconds, or a recheck."""
        if not self.absent:
            log.info("kubernetes source: %s is not served (its CRD is not installed): none, looking "
                     "again every %.0f s", self.name, self.source.absent_retry)
            self.absent = True
        end = time.monotonic() + self.source.absent_retry
        while not self.source._stopping.is_set() and not self.recheck.is_set():
            left = end - time.monotonic()
            if left <= 0:
                break
            loop.beat()
            self.recheck.wait(min(left, _DELIVER_PERIOD))
        self.recheck.clear()

    def relist(self) -> None:
        fn, args, kwargs = self.call()
        if self.synced and not self.kind.optional:
            self.source._recheck_absent()  # the server may have changed (a restart, a CRD installed)
        try:
            response = fn(*args, **kwargs, _preload_content=False,
                          _request_timeout=self.source.request_timeout)
        except ApiException as e:
            if e.status == 404:
                # The kind is not served (its CRD is not installed): no objects until it is.
                self.source._replace(self, [])
                if self.kind.optional:
                    raise _Absent() from e
            raise
        try:
            answer = json.loads(response.data)
        finally:
            response.release_conn()
        if self.absent:
            log.info("kubernetes source: %s is served now", self.name)
            self.absent = False
        items = answer.get("items") or []
        self.resource_version = (answer.get("metadata") or {}).get("resourceVersion") or None
        self.source._replace(self, [item for item in items if isinstance(item, dict)])

    def follow(self, backoff: Backoff, loop: Loop) -> None:
        fn, args, kwargs = self.call()
        timeout = self.source.watch_timeout
        stream = watch.Watch(return_type="object")  # raw dicts, for core and custom kinds alike
        self.current = stream
        if self.source._stopping.is_set():
            return
        kwargs |= dict(resource_version=self.resource_version, allow_watch_bookmarks=True,
                       timeout_seconds=timeout,
                       # A stream silent for longer than its own timeout is dead.
                       _request_timeout=(self.source.request_timeout, timeout + 10))
        try:
            for event in stream.stream(fn, *args, **kwargs):
                self.apply(event["type"], event["raw_object"])
                loop.beat()
                self.fresh = False
                backoff.reset()
                if self.source._stopping.is_set():
                    return
        except ApiException as e:
            if e.status == 410:
                raise _Gone() from e
            raise
        finally:
            self.current = None
        self.fresh = False
        backoff.reset()

    def apply(self, type_: str, obj: object) -> None:
        if not isinstance(obj, dict):
            return
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if log.isEnabledFor(logging.DEBUG):  # when each event arrived: benchmarks measure from here
            log.debug("watch event %s %s %s", type_, self.kind.kind, object_key(self.kind, obj))
        if type_ in ("ADDED", "MODIFIED"):
            self.source._put(self.kind, obj)
        elif type_ == "DELETED":
            self.source._delete(self.kind, obj)
        if version:
            self.resource_version = version

    def stop_watch(self) -> None:
        current = self.current
        if current is not None:
            current.stop()


class KubernetesSource:
    """Lists and watches NSM's NetworkServices and NetworkServiceEndpoints, Pods, Namespaces,
    ServiceLevels and (when served) MultiNetworkPolicies, and
    calls ``on_change(resources)`` with the whole state whenever it changes (see the module doc).

    ``namespaces``: watch only these (None: all). ``watch_timeout``: seconds a watch stream may last
    before it is resumed. ``coalesce``: the least time between two deliveries' starts: a change
    after a quiet spell is delivered at once, the ones that follow within it together at its end.
    ``initial_backoff``/``max_backoff``: the retry delays after errors. ``request_timeout``:
    connect and list read timeout in seconds. ``absent_retry``: seconds between lists of an optional
    kind the server does not serve.
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        on_change: Callable[[Resources], None],
        namespaces: Sequence[str] | None = None,
        *,
        watch_timeout: int = 300,
        coalesce: float = 0.05,
        initial_backoff: float = 0.2,
        max_backoff: float = 30.0,
        request_timeout: float = 30.0,
        absent_retry: float = _ABSENT_RETRY,
    ):
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.namespaces = None if namespaces is None else tuple(dict.fromkeys(namespaces))
        self.watch_timeout = watch_timeout
        self.coalesce = coalesce
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.request_timeout = request_timeout
        self.absent_retry = absent_retry
        self._on_change = on_change
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._store: dict[ObjectKey, dict] = {}
        self._documents: dict[ObjectKey, dict] = {}
        # Each stored document as parsing takes it, and the keys in order: kept, so that a delivery
        # after one change does not build and sort them all again.
        self._parts: dict[ObjectKey, Document] = {}
        self._order: list[ObjectKey] = []
        self._dirty = True  # the first complete state is delivered even when it is empty
        self._last_delivery = float("-inf")  # time.monotonic() when the last delivery started
        self._delivered: tuple | None = None
        self._last_valid: dict[ObjectKey, dict] = {}
        self._memo = ParseMemo()  # unchanged objects are not validated again
        scopes: Sequence[str | None] = self.namespaces if self.namespaces is not None else (None,)
        self._reflectors = [_Reflector(self, kind, scope) for kind in KINDS for scope in scopes]
        self._thread: Supervised | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """List and watch in background threads; deliver from another."""
        if self._thread is not None:
            raise RuntimeError("kubernetes source already started")
        for reflector in self._reflectors:
            reflector.start()
        # A failed delivery is offered again after a second, then less often.
        self._thread = supervise("ryu-nsm-k8s-deliver", self._deliver_loop, _DELIVER_PERIOD, self._stopping,
                                 initial_backoff=1.0)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every thread: open watch streams are closed, waits end at once."""
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()
        for reflector in self._reflectors:
            reflector.recheck.set()
        end = time.monotonic() + timeout
        for reflector in self._reflectors:
            # A watch that is just being opened has no socket to close yet: close it again.
            while reflector.thread is not None and reflector.thread.is_alive() and time.monotonic() < end:
                reflector.stop_watch()
                reflector.thread.join(0.05)
        if self._thread is not None:
            self._thread.join(max(0.0, end - time.monotonic()))

    def synced(self) -> bool:
        """True once every kind in scope has been listed at least once."""
        return all(r.synced for r in self._reflectors)

    def objects(self) -> Mapping[ObjectKey, dict]:
        """A read-only snapshot of the store (key → object as last seen; do not mutate the objects).

        Pods in scope are all there, without spec (but ``spec.nodeName``) and status.
        """
        with self._lock:
            return MappingProxyType(dict(self._store))

    def _recheck_absent(self) -> None:
        for reflector in self._reflectors:
            if reflector.absent:
                reflector.recheck.set()

    # -- the store (called by the reflector threads) -----------------------------------------------

    def _annotated(self, namespace: str) -> bool:
        doc = self._documents.get((NAMESPACE.kind, namespace))
        return doc is not None and CLIENT_ANNOTATION in (doc["metadata"].get("annotations") or {})

    def _counts(self, key: ObjectKey, doc: dict | None) -> bool:
        """Whether a document takes part in parsing: a Pod only with our annotations, in an annotated
        Namespace or named like an endpoint (its labels are the endpoint's when the NSE has none), a
        Namespace only with the client annotation or labels."""
        if doc is None:
            return False
        annotations = doc["metadata"].get("annotations") or {}
        if key[0] == POD.kind:
            return bool(annotations) or self._annotated(key[1]) or (
                (NETWORK_SERVICE_ENDPOINT.kind, *key[1:]) in self._documents)
        if key[0] == NAMESPACE.kind:
            return CLIENT_ANNOTATION in annotations or "labels" in doc["metadata"]
        return True

    def _set(self, key: ObjectKey, obj: dict | None, doc: dict | None) -> None:
        """Store (or with None remove) one object; mark a change when its document counts."""
        old = self._documents.get(key)
        if obj is None:
            self._store.pop(key, None)
            if self._documents.pop(key, None) is not None:
                del self._parts[key]
                del self._order[bisect.bisect_left(self._order, key)]
        elif old == doc:
            self._store[key] = obj  # the same document: the parse memo still knows it
        else:
            self._store[key] = obj
            self._documents[key] = doc
            self._parts[key] = Document(document_source(key), 0, doc)
            if old is None:
                bisect.insort(self._order, key)
        if old != doc and (self._counts(key, old) or self._counts(key, doc)):
            self._dirty = True
            self._lock.notify_all()

    def _put(self, kind: WatchedKind, obj: dict) -> None:
        key = object_key(kind, obj)
        if key is not None:
            with self._lock:
                self._set(key, _kept(kind, obj), _document(kind, obj))

    def _delete(self, kind: WatchedKind, obj: dict) -> None:
        key = object_key(kind, obj)
        if key is not None:
            with self._lock:
                self._set(key, None, None)

    def _replace(self, reflector: _Reflector, items: list[dict]) -> None:
        """A list result replaces the reflector's part of the store: what it lacks is gone."""
        with self._lock:
            listed = set()
            for obj in items:
                key = object_key(reflector.kind, obj)
                if key is not None:
                    listed.add(key)
                    self._set(key, _kept(reflector.kind, obj), _document(reflector.kind, obj))
            for key in [k for k in self._store if reflector.in_scope(k) and k not in listed]:
                self._set(key, None, None)
            reflector.synced = True
            self._lock.notify_all()

    # -- delivery ----------------------------------------------------------------------------------

    def documents(self) -> list[Document]:
        """The store as documents for ``parse_keeping``, in key order (so equal states parse equal)."""
        with self._lock:
            parts = self._parts
            return [parts[key] for key in self._order if self._counts(key, parts[key].body)]

    def _deliver_loop(self, loop: Loop) -> None:
        while not self._stopping.is_set():
            with self._lock:
                while not (self._dirty and self.synced()) and not self._stopping.is_set():
                    loop.beat()
                    self._lock.wait(_DELIVER_PERIOD)
            # As a rate limiter, not a debounce: a single watch event is planned at once (a fixed
            # wait was half of a lone request's latency at 10,000 connections), a burst in steps.
            if self._stopping.wait(max(0.0, self._last_delivery + self.coalesce - time.monotonic())):
                return
            with self._lock:
                self._dirty = False
            self._last_delivery = time.monotonic()
            try:
                self._deliver()
            except Exception:
                with self._lock:
                    self._dirty = True  # the same state is offered again when the loop restarts
                raise
            loop.beat()

    def _deliver(self) -> None:
        resources, valid = parse_keeping(self.documents(), self._last_valid, self._memo)
        # Problems do not take part in Resources equality, but a new or fixed one is news.
        delivered = (resources, resources.problems)
        if delivered != self._delivered:
            self._on_change(resources)
            self._delivered = delivered
        # Only what was delivered counts as a last valid version.
        self._last_valid = valid
