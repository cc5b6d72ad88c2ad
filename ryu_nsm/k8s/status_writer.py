"""Keeps the NetworkServiceConnection objects and Events in the cluster in step with the controller.

``StatusWriter.sync`` is the level-triggered shell over ``ryu_nsm.k8s.connection_status`` (what the
objects say): it compares with the objects it manages (listed once, then kept from the answers to its
own writes), creates, patches (spec, then the status subresource) and deletes only what differs,
several objects at a time, and posts core/v1 Events for what happened. Call it only on the leader,
and only once the sources have listed everything once (an empty status means "delete every object").
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from kubernetes import client

from ryu_nsm.k8s.api_calls import MERGE_PATCH, ApiCaller, ApiError, SyncResult, utc_now
from ryu_nsm.k8s.connection_status import (
    API_VERSION,
    CONNECTION_ANNOTATION,
    FAILED,
    GROUP,
    KIND,
    MANAGED_BY,
    MANAGER,
    PENDING,
    PLURAL,
    UP,
    VERSION,
    DesiredMemo,
    desired_connections,
    merge_conditions,
    stamp_generation,
)
from ryu_nsm.k8s.events import EventRecorder, involved

# The name the status writer has always logged under, so log-level settings keep working.
log = logging.getLogger("ryu_nsm.k8s.status")

__all__ = ["StatusWriter", "SyncResult"]


@dataclass
class _Outcome:
    """What applying one object did, and what the server now stores of it (for the cache)."""

    result: SyncResult = field(default_factory=SyncResult)
    stored: dict | None = None  # the server's last answer about the object
    gone: bool = False  # the object is not stored (any more)
    stale: bool = False  # someone else changed things: the cache cannot be trusted
    told_before: dict | None = None  # written: the status stored before, for the Events to compare

    def remember(self, answer: Any) -> None:
        if isinstance(answer, dict) and (answer.get("metadata") or {}).get("name"):
            self.stored = answer
        else:  # an answer without the object: only a list can tell what is stored
            self.stale = True


_T = TypeVar("_T")
_UNTOLD = ("", "", "")  # a connection whose first Event failed: any state is news
# Desired objects are made with this time in their conditions; the time is set as they are written.
_UNSTAMPED = "1970-01-01T00:00:00Z"


def _rank(body: dict, old: dict | None) -> int:
    """Which writes a user waits for most: 0 a connection now Up or Failed, 1 now Pending (new
    objects included), 2 deletes, 3 the rest (metadata, conditions, hops; most need no write)."""
    state = body["status"]["state"]
    if state == ((old or {}).get("status") or {}).get("state"):
        return 3
    return 1 if state == PENDING else 0


class StatusWriter:
    """Keeps NetworkServiceConnections and Events in step with the controller's status.

    What is stored is listed on the first ``sync``, when asked (``relist``), and after an error, a
    404 or a 409 (someone else changed things); in between it is kept from the answers to the
    writer's own creates, patches and deletes, so an object changed or deleted by someone else is
    only seen at the next list: call ``sync(..., relist=True)`` now and then (``StatusLoop`` does).
    Objects are written by up to ``workers`` threads at once, the ones whose state changed first,
    and the Events about them after all of them. The ApiClient's
    ``configuration.connection_pool_maxsize`` should be at least ``workers`` (plus whatever else
    shares the client), else connections are opened and dropped for each call.

    Events go through ``EventRecorder`` (core/v1, a recurring one counted). What was told is
    remembered in memory (bounded by ``remembered``); after a restart the stored status stands in
    for it. ``sync`` may be called from several threads: one runs at a time.
    """

    def __init__(self, api_client: client.ApiClient, events_component: str = MANAGER, *,
                 namespaces: Iterable[str] | None = None, instance: str | None = None,
                 clock: Callable[[], str] = utc_now, timeout: float = 10.0, remembered: int = 4096,
                 workers: int = 8):
        """``namespaces``: the namespaces managed (None: all). ``clock`` gives RFC 3339 times.
        ``workers``: how many API calls for objects may be in flight at once (1: one after the other)."""
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.namespaces = sorted(set(namespaces)) if namespaces is not None else None
        self.instance = instance or socket.gethostname()
        self.clock = clock
        self.workers = workers
        pool = getattr(api_client.configuration, "connection_pool_maxsize", None)
        if pool is not None and pool < workers:
            log.warning("the Kubernetes client keeps %d connections for %d status workers: the rest are "
                        "opened and closed for every call (set connection_pool_maxsize)", pool, workers)
        self._stored: dict[tuple[str, str], dict] | None = None  # None: list before the next sync
        self._known: dict[tuple[str, str], dict] | None = None  # the last stored, even when not trusted
        self._syncing = threading.Lock()
        self._call = ApiCaller(timeout)
        self.events = EventRecorder(self.core, self._call, events_component, self.instance, remembered,
                                    self.namespaces)
        self._last_state: dict[str, tuple[str, str, str]] = {}
        self._desired = DesiredMemo()  # unchanged connections keep their desired objects
        self._generations: dict[tuple[str, str], int] = {}  # stored generations other than 1
        self._last_desired: dict[tuple[str, str], dict] = {}
        # Object key → (the desired object, the stored one, its Pod, the Pod's key) when found in step.
        self._in_step: dict[tuple[str, str], tuple[dict, dict, object, tuple]] = {}

    # -- API calls ------------------------------------------------------------------------------

    def _list(self, result: SyncResult) -> dict[tuple[str, str], dict] | None:
        """Our stored objects by (namespace, name), or None when they could not be listed."""
        selector = f"{MANAGED_BY}={MANAGER}"
        found: dict[tuple[str, str], dict] = {}
        for namespace in self.namespaces if self.namespaces is not None else [None]:
            token = None
            while True:
                page_args = {"label_selector": selector, "limit": 500}
                if token:
                    page_args["_continue"] = token
                where = f"namespace {namespace}" if namespace else "all namespaces"
                try:
                    if namespace is None:
                        page = self._call(result, f"list {PLURAL} in {where}",
                                          self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL,
                                          **page_args)
                    else:
                        page = self._call(result, f"list {PLURAL} in {where}",
                                          self.custom.list_namespaced_custom_object, GROUP, VERSION,
                                          namespace, PLURAL, **page_args)
                except ApiError:
                    return None
                for item in page.get("items", []):
                    meta = item.get("metadata", {})
                    # The server filters by label; checked again so nothing of others is ever touched.
                    if meta.get("labels", {}).get(MANAGED_BY) == MANAGER:
                        found[(meta.get("namespace", ""), meta.get("name", ""))] = item
                token = (page.get("metadata") or {}).get("continue")
                if not token:
                    break
        return found

    # -- sync -----------------------------------------------------------------------------------

    def sync(self, status: Mapping, objects: Mapping | None = None, *, relist: bool = False) -> SyncResult:
        """Make the cluster tell what ``status`` (``Controller.status()``) says; never raises.

        ``objects`` ((kind, namespace, name) → raw object, from the watcher) give the Pods' uids: an
        ownerReference to its Pod lets Kubernetes collect an object with the Pod, and Events carry
        the uid ``kubectl describe`` looks for. An unchanged status makes no write at all, and no
        request unless ``relist`` asks to list the stored objects again (see the class).
        """
        result = SyncResult()
        objects = objects or {}
        with self._syncing:
            try:
                self._sync(status, objects, relist, result)
            except Exception as exc:  # a bug in reporting must not stop the controller
                log.exception("status sync failed")
                result.errors.append(f"sync: {type(exc).__name__}: {exc}")
            if result.errors:  # what failed may have been written or not: ask the server next time
                self._stored = None
        return result

    def _sync(self, status: Mapping, objects: Mapping, relist: bool, result: SyncResult) -> None:
        now = self.clock()
        if relist or self._stored is None:
            self._stored = _kept_alike(self._list(result), self._known)
            self._known = self._stored if self._stored is not None else self._known
            self._generations = _generations(self._stored or {})
        stored = self._stored
        if stored is not None:
            # Stamped when written (``_with_kept_times``): made once, an unchanged object stays the
            # same object, and a sync costs the connections that changed, not a restamp of all.
            desired = desired_connections(status, _UNSTAMPED, self._generations, self._desired)
            if self.namespaces is not None:
                desired = {k: v for k, v in desired.items() if k[0] in self.namespaces}
            in_step, get, pod_of = self._in_step, stored.get, objects.get
            # Found in step before, the same object desired, against the same stored object and Pod:
            # in step still, without a look (identity checks only).
            looks = [key for key, body in desired.items() if (was := in_step.get(key)) is None
                     or was[0] is not body or was[1] is not get(key) or was[2] is not pod_of(was[3])]
            for key in in_step.keys() - desired.keys():
                del in_step[key]
            tasks: list[tuple[int, tuple[str, str], Callable[[], _Outcome]]] = []
            found = []  # in step now, not before: need no write, only maybe an Event
            for key in looks:
                body, old = desired[key], get(key)
                pod_key = ("Pod", key[0], body["spec"]["client"]["pod"])
                if old is not None and _in_step(body, old, objects, now):
                    in_step[key] = (body, old, pod_of(pod_key), pod_key)
                    found.append((key, body, old.get("status") or {}))
                    continue
                in_step.pop(key, None)
                tasks.append((_rank(body, old), key, partial(self._apply, key, body, old, objects, now)))
            tasks += [(2, key, partial(self._delete, key)) for key in sorted(stored.keys() - desired.keys())]
            tasks.sort(key=lambda task: task[0])  # stable: in each rank, the order of the connection ids
            stale, written = False, []
            for (_, key, _), outcome in zip(tasks, self._run([task for _, _, task in tasks]), strict=True):
                result.extend(outcome.result)
                if outcome.gone:
                    self._store(key, None)
                elif outcome.stored is not None:
                    self._store(key, outcome.stored)
                stale = stale or outcome.stale
                if outcome.told_before is not None:
                    written.append((key, desired[key], outcome.told_before))
            if stale:
                self._stored = None
            self._forget_gone(desired)
            self._tell_connections(written + found, objects, now, result)
        self.events.tell_problems(status.get("problems", []), objects, now, result)

    def _store(self, key: tuple[str, str], obj: dict | None) -> None:
        """What the server now stores of ``key`` (None: nothing), and its generation."""
        if obj is None:
            self._stored.pop(key, None)
        else:
            self._stored[key] = obj
        generation = _generation(obj) if obj is not None else 1
        if self._generations.get(key, 1) != generation:  # a new mapping: the memo compares by identity
            self._generations = {k: g for k, g in self._generations.items() if k != key}
            if generation != 1:
                self._generations[key] = generation

    def _forget_gone(self, desired: dict[tuple[str, str], dict]) -> None:
        """Forget the last state told of the connections no longer desired."""
        before, self._last_desired = self._last_desired, desired
        gone = before.keys() - desired.keys()
        if gone:
            ids = {_cid(desired[key]) for key in desired.keys() - before.keys()}
            for key in gone:
                if _cid(before[key]) not in ids:
                    self._last_state.pop(_cid(before[key]), None)

    def _run(self, tasks: list[Callable[[], _T]]) -> list[_T]:
        """Every task's answer, in the order given; up to ``workers`` run at once, started in that order."""
        if self.workers == 1 or len(tasks) < 2:
            return [task() for task in tasks]
        with ThreadPoolExecutor(min(self.workers, len(tasks)), thread_name_prefix="ryu-nsm-status") as pool:
            futures = [pool.submit(task) for task in tasks]
            return [future.result() for future in futures]

    def _apply(self, key: tuple[str, str], body: dict, old: dict | None, objects: Mapping,
               now: str) -> _Outcome:
        outcome = _Outcome()
        result = outcome.result
        namespace, name = key
        what = f"{KIND} {namespace}/{name}"
        pod = body["spec"]["client"]["pod"]
        pod_object = objects.get(("Pod", namespace, pod)) or {}
        owner = _owner_reference(pod_object)
        desired = body["status"]
        try:
            if old is None:
                meta = dict(body["metadata"])
                if owner:
                    meta["ownerReferences"] = [owner]
                # The status subresource ignores .status on create: it is patched right after.
                fresh = {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta, "spec": body["spec"]}
                outcome.remember(self._call(result, f"create {what}",
                                            self.custom.create_namespaced_custom_object, GROUP, VERSION,
                                            namespace, PLURAL, fresh, expected=(409,)))
                result.created.append(f"{namespace}/{name}")
                old_status: dict = {}
            else:
                generation = _generation(old)
                patch = _metadata_patch(body, old, owner)
                if patch:
                    answer = self._call(result, f"patch {what}", self.custom.patch_namespaced_custom_object,
                                        GROUP, VERSION, namespace, PLURAL, name, patch, expected=(404,),
                                        _content_type=MERGE_PATCH)
                    outcome.remember(answer)
                    result.updated.append(f"{namespace}/{name}")
                    generation = ((answer or {}).get("metadata") or {}).get("generation") or generation
                desired = stamp_generation(desired, generation)
                old_status = old.get("status") or {}
            desired = _with_kept_times(desired, old_status, now)
            if desired != old_status:
                # A merge patch: keys we no longer write are removed with null.
                patch = {"status": {**{k: None for k in old_status.keys() - desired.keys()}, **desired}}
                outcome.remember(self._call(result, f"patch status of {what}",
                                            self.custom.patch_namespaced_custom_object_status, GROUP, VERSION,
                                            namespace, PLURAL, name, patch, expected=(404,),
                                            _content_type=MERGE_PATCH))
                result.status_patched.append(f"{namespace}/{name}")
        except ApiError as exc:
            if exc.status == 409:
                log.info("%s already exists: it is reconciled after the next list", what)
                outcome.stale = True
            elif exc.status == 404:
                log.info("%s vanished: it is created again after the next list", what)
                outcome.gone = outcome.stale = True
            return outcome
        outcome.told_before = old_status
        return outcome

    def _delete(self, key: tuple[str, str]) -> _Outcome:
        namespace, name = key
        outcome = _Outcome(gone=True)
        try:
            self._call(outcome.result, f"delete {KIND} {namespace}/{name}",
                       self.custom.delete_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name,
                       expected=(404,))
            outcome.result.deleted.append(f"{namespace}/{name}")
        except ApiError as exc:
            # 404: gone, as wanted, but by someone else's hand; other errors leave the object stored.
            outcome.gone = outcome.stale = exc.status == 404
        return outcome

    # -- events ---------------------------------------------------------------------------------

    def _tell_connections(self, written: list[tuple[tuple[str, str], dict, dict]], objects: Mapping, now: str,
                          result: SyncResult) -> None:
        """Warning when a connection fails (again, or for another reason); Normal when it comes up
        after having been failed or pending. ``written``: (key, object, the status stored before) of
        the objects written or found right; that status stands in for memory after a restart."""
        news, posts = [], []
        for key, body, old_status in written:
            cid = _cid(body)
            status = body["status"]
            now_state = (status["state"], status["reason"], status["message"])
            before = self._last_state.get(cid)
            if before is None and old_status:
                before = tuple(old_status.get(k, "") for k in ("state", "reason", "message"))
            if now_state[0] == FAILED and now_state != before:
                event = ("Warning", status["reason"], f"connection {cid} to network service "
                         f"{body['spec']['networkService']} failed: {status['message']}")
            elif now_state[0] == UP and before is not None and before[0] in (FAILED, PENDING):
                event = ("Normal", "ConnectionUp", f"connection {cid} is up: {status['message']}")
            else:
                self._last_state[cid] = now_state
                continue
            namespace, pod = body["metadata"]["namespace"], body["spec"]["client"]["pod"]
            about = involved("Pod", namespace, pod, objects.get(("Pod", namespace, pod)) or {})
            news.append((key, cid, now_state, before))
            posts.append(partial(self.events.post, about, *event, now))
        for (key, cid, now_state, before), (told, part) in zip(news, self._run(posts), strict=True):
            result.extend(part)
            if told:
                self._last_state[cid] = now_state
            else:  # kept as it was, and looked at again by the next sync, which tries again
                self._last_state[cid] = before or _UNTOLD
                self._in_step.pop(key, None)

def _cid(body: dict) -> str:
    return body["metadata"]["annotations"][CONNECTION_ANNOTATION]


def _generation(obj: Mapping) -> int:
    return (obj.get("metadata") or {}).get("generation") or 1


def _kept_alike(listed: dict[tuple[str, str], dict] | None, cached: Mapping[tuple[str, str], dict] | None
                ) -> dict[tuple[str, str], dict] | None:
    """``listed`` with each object whose resourceVersion is the cached one's kept as the cached object:
    the server changed nothing of it, and the same object is not looked at again (a relist of 10,000
    in-step objects costs their transfer, not 10,000 comparisons)."""
    if listed is None or not cached:
        return listed
    for key, obj in listed.items():
        was = cached.get(key)
        if was is not None and (version := (obj.get("metadata") or {}).get("resourceVersion")) and (
                version == (was.get("metadata") or {}).get("resourceVersion")):
            listed[key] = was
    return listed


def _generations(stored: Mapping[tuple[str, str], dict]) -> dict[tuple[str, str], int]:
    """The stored objects' generations other than 1 (a new object's, assumed when none is given)."""
    return {key: g for key, obj in stored.items() if (g := _generation(obj)) != 1}


def _owner_reference(pod: Mapping) -> dict | None:
    """An ownerReference to the Pod, when its uid is known (blockOwnerDeletion needs more RBAC)."""
    meta = pod.get("metadata") or {}
    if not meta.get("uid") or not meta.get("name"):
        return None
    return {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}


def _with_kept_times(status: dict, old_status: Mapping, now: str) -> dict:
    """``status`` with its conditions' transition times kept from ``old_status`` where they hold."""
    return {**status, "conditions": merge_conditions(old_status.get("conditions"), status["conditions"], now)}


def _in_step(body: dict, old: dict, objects: Mapping, now: str) -> bool:
    """Whether the stored object ``old`` already says all that ``body`` does (nothing to write)."""
    namespace, pod = body["metadata"]["namespace"], body["spec"]["client"]["pod"]
    if _metadata_patch(body, old, _owner_reference(objects.get(("Pod", namespace, pod)) or {})):
        return False
    old_status = old.get("status") or {}
    return _with_kept_times(stamp_generation(body["status"], _generation(old)), old_status, now) == old_status


def _metadata_patch(body: dict, old: dict, owner: dict | None) -> dict:
    """A merge patch bringing labels, annotations, ownerReferences and spec to ``body``'s; {} if none."""
    meta = old.get("metadata") or {}
    patch: dict = {}
    for part in ("labels", "annotations"):
        have = meta.get(part) or {}
        if any(have.get(k) != v for k, v in body["metadata"][part].items()):
            patch.setdefault("metadata", {})[part] = body["metadata"][part]
    refs = meta.get("ownerReferences") or []
    if owner and owner not in refs:
        # A recreated Pod has a new uid: the reference to the old one goes.
        others = [r for r in refs if r.get("kind") != "Pod" or r.get("name") != owner["name"]]
        patch.setdefault("metadata", {})["ownerReferences"] = [*others, owner]
    if old.get("spec") != body["spec"]:
        patch["spec"] = body["spec"]
    return patch
