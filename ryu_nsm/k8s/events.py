"""core/v1 Events about what the controller's connections and inputs did, as ``kubectl describe``
lists them: a recurring Event is counted on the one posted before, not posted again."""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ryu_nsm.k8s.api_calls import MERGE_PATCH, ApiCaller, ApiError, SyncResult
from ryu_nsm.k8s.connection_status import EVENT_KINDS, parse_problem

EventKey = tuple[str, str, str, str, str]  # kind, namespace, name, reason, message


@dataclass
class _Emitted:
    namespace: str
    name: str
    count: int


class EventRecorder:
    """Posts Events and counts the ones that recur.

    Both Event APIs share one store, so readers see them either way; core/v1 is what ``kubectl
    describe`` has always listed, and a recurring Event is counted with a merge patch of ``count``
    and ``lastTimestamp`` (events.k8s.io/v1 would need ``series``, ``eventTime``, ``action`` and
    ``reportingController`` kept right for the same result). What was posted is remembered in memory,
    the last ``remembered`` of them.
    """

    def __init__(self, core, call: ApiCaller, component: str, instance: str, remembered: int,
                 namespaces: Iterable[str] | None):
        self.core = core
        self._call = call
        self.component = component
        self.instance = instance
        self.remembered = remembered
        self.namespaces = namespaces
        self._emitting = threading.Lock()  # _emitted, written by the status writer's workers
        self._emitted: OrderedDict[EventKey, _Emitted] = OrderedDict()
        self._problems_told: set[EventKey] = set()

    def post(self, involved: dict, kind: str, reason: str, message: str, now: str) -> tuple[bool, SyncResult]:
        """``record`` with a result of its own (for a worker thread)."""
        result = SyncResult()
        return self.record(involved, kind, reason, message, now, result), result

    def tell_problems(self, problems: Iterable[str], objects: Mapping, now: str, result: SyncResult) -> None:
        """A Warning InvalidSpec Event per problem of a Kubernetes object, once while it lasts."""
        current: set[EventKey] = set()
        for text in problems:
            ref = parse_problem(text)
            if ref is None:
                continue
            if self.namespaces is not None and ref.namespace and ref.namespace not in self.namespaces:
                continue
            raw = objects.get((ref.kind, ref.namespace, ref.name)) or objects.get((ref.kind, ref.name)) or {}
            about = involved(ref.kind, ref.namespace, ref.name, raw)
            key = _event_key(about, "InvalidSpec", ref.text)
            current.add(key)
            if key not in self._problems_told and self.record(about, "Warning", "InvalidSpec", ref.text,
                                                              now, result):
                self._problems_told.add(key)
        self._problems_told &= current

    def record(self, about: dict, kind: str, reason: str, message: str, now: str, result: SyncResult) -> bool:
        """Post an Event about ``about`` (an involvedObject), or count one more of an Event posted
        before; True when it is on record.

        Safe from several threads as long as no two post the same Event at once (each connection's
        Events name the connection, and one sync runs at a time)."""
        key = _event_key(about, reason, message)
        namespace = about.get("namespace") or "default"  # Events of cluster-scoped objects
        label = f"{kind} {reason} on {about['kind']} {'/'.join(key[1:3]).lstrip('/')}"
        with self._emitting:
            known = self._emitted.get(key)
        if known is not None:
            count = known.count + 1
            try:
                self._call(result, f"patch Event {known.namespace}/{known.name} ({label})",
                           self.core.patch_namespaced_event, known.name, known.namespace,
                           {"count": count, "lastTimestamp": now}, expected=(404,),
                           _content_type=MERGE_PATCH)
            except ApiError as exc:
                if exc.status != 404:
                    return False
                with self._emitting:  # expired (Events live an hour): post a new one
                    self._emitted.pop(key, None)
            else:
                self._remember(key, _Emitted(known.namespace, known.name, count))
                result.events.append(f"{label}: {message} (x{count})")
                return True
        name = f"{about['name'][:200]}.{uuid.uuid4().hex[:16]}"
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": about,
            "reason": reason,
            "message": message[:1024],
            "type": kind,
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "reportingInstance": self.instance,
        }
        try:
            self._call(result, f"create Event ({label})", self.core.create_namespaced_event, namespace, event)
        except ApiError:
            return False
        self._remember(key, _Emitted(namespace, name, 1))
        result.events.append(f"{label}: {message}")
        return True

    def _remember(self, key: EventKey, emitted: _Emitted) -> None:
        with self._emitting:
            self._emitted[key] = emitted
            self._emitted.move_to_end(key)
            while len(self._emitted) > self.remembered:
                self._emitted.popitem(last=False)


def involved(kind: str, namespace: str, name: str, raw: Mapping) -> dict:
    """An Event's involvedObject; with the uid when the watcher knows the object."""
    meta = raw.get("metadata") or {}
    ref = {"apiVersion": raw.get("apiVersion") or EVENT_KINDS[kind], "kind": kind, "name": name}
    if namespace and kind != "Namespace":
        ref["namespace"] = namespace
    if meta.get("uid"):
        ref["uid"] = meta["uid"]
    return ref


def _event_key(about: Mapping, reason: str, message: str) -> EventKey:
    return (about["kind"], about.get("namespace", ""), about["name"], reason, message)
