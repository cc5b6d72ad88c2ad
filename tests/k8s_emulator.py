"""A Kubernetes API server for tests: kmock's KubernetesEmulator on real HTTP, with resourceVersions.

Usage (the official client talks to it over real HTTP on 127.0.0.1, no auth)::

    from tests.k8s_emulator import Emulator

    with Emulator() as api:
        client = api.api_client()                      # kubernetes.client.ApiClient, host = api.url
        api.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}})
        api.patch("Pod", "p", {"metadata": {"labels": {"a": "b"}}}, namespace="ns")
        api.get("Pod", "p", namespace="ns")            # the stored dict, or None
        api.objects("NetworkServiceConnection")        # all namespaces; namespace="ns" for one
        api.patch("NetworkServiceConnection", "c", {"status": {...}}, namespace="ns", subresource="status")
        api.replace(body)                              # PUT semantics (409 on a stale resourceVersion)
        api.delete("Pod", "p", namespace="ns")
        api.break_watches()                            # reset every open watch connection
        api.expire()                                   # compaction: old resourceVersions answer 410
        api.pause(); ...; api.resume()                 # API unavailable: connection refused (or 503)
        api.watches()                                  # the open watch streams, e.g. to wait for a resume
        api.hold_watches(); api.release_watches()      # new watch requests wait unanswered meanwhile
        api.requests("list", "pods")                   # the requests served (kmock Request objects)
        api.call(fn)                                   # run fn on the emulator's loop (kmock DSL)

The helpers change the store directly (they work while the API is paused) and raise
``kmock.KubernetesError`` (``.status`` 404, 409, 400, ...) like the HTTP API answers. Objects are
named by kind ("Pod") or, where a kind is ambiguous ("Event"), by ``api_version=`` too; cluster
scoped kinds ignore ``namespace``. Every helper returns deep copies.

Served kinds (``register`` adds more):

=====================================  ==================================  ==========  ======
apiVersion                             kind (plural)                       scope       status
=====================================  ==================================  ==========  ======
v1                                     Pod, Namespace, Event, ConfigMap    ns/cluster  no
events.k8s.io/v1                       Event                               namespaced  no
coordination.k8s.io/v1                 Lease                               namespaced  no
networkservicemesh.io/v1               NetworkService,                     namespaced  no
                                       NetworkServiceEndpoint
ryu-nsm.io/v1alpha1                    NetworkServiceConnection            namespaced  yes
ryu-nsm.io/v1alpha1                    ServiceLevel                        namespaced  no
k8s.cni.cncf.io/v1beta1                MultiNetworkPolicy                  namespaced  no
                                       (multi-networkpolicies)
=====================================  ==================================  ==========  ======

What it does like a real API server (and kmock alone does not):

- Every write gets a cluster-wide increasing ``metadata.resourceVersion``; create also sets ``uid``,
  ``creationTimestamp``, ``generation`` (bumped when anything but metadata/status changes) and the
  namespace from the URL (a different one in the body is a 400); ``generateName`` works.
- LIST answers ``metadata.resourceVersion``; items of core ("v1") lists carry no kind/apiVersion,
  as on a real server. WATCH without a resourceVersion (or "0") starts with ADDED for every object;
  WATCH from a resourceVersion replays exactly the changes after it (a DELETED event carries the
  object with a new resourceVersion). ``allowWatchBookmarks`` gets BOOKMARK events after
  ``bookmark_interval`` seconds without events; ``timeoutSeconds`` ends the stream cleanly.
- A watch from a resourceVersion older than the retained history answers 410: like kube-apiserver's
  watch cache, a 200 stream with one ERROR event (code 410, reason Expired), or an HTTP 410 after
  ``expire(as_event=False)``. The history keeps ``history`` events; ``expire()`` drops all of it.
  Recipe for "a resumed watch gets 410": ``hold_watches()``, ``break_watches(clean=True)`` (the
  client resumes from its last resourceVersion, held), change objects, ``expire()``,
  ``release_watches()``. (``pause()`` resets connections instead: a client then lists again.)
- PUT (replace) works (kmock serves no PUT) with optimistic concurrency: a body whose
  ``metadata.resourceVersion`` is not the current one gets 409 Conflict, as does a PATCH carrying one;
  create of an existing name gets 409 AlreadyExists; delete/patch of a missing object 404.
- Status subresource (``status: yes`` above): writes to the main resource keep the stored status,
  writes to ``/status`` change only the status, create drops the given status. Kinds without it
  answer 404 on ``/status``.
- PATCH: ``application/merge-patch+json`` and ``strategic-merge-patch+json`` are applied as JSON merge
  patches; ``application/json-patch+json`` needs a list of operations (add, remove, replace, test)
  and a mapping body gets a 400, as on a real server (kubernetes==37's CoreV1Api sends a mapping as
  strategic-merge-patch+json by itself). Server-side apply gets 415.
- label selectors (=, ==, !=, in, notin, exists, !exists) and the field selectors metadata.name and
  metadata.namespace filter LIST, WATCH and DELETE of a collection.

Differences from a real server that remain: no authentication, admission, validation against
schemas, defaulting, namespace existence checks or namespace cascade deletion, garbage collection
(ownerReferences are not followed), finalizers (delete removes at once), pagination (``limit`` is
ignored and there is never a ``continue``), or ``resourceVersionMatch``; strategic merge patch does
not merge lists by key; a watch does not send DELETED when an object stops matching its label
selector; the store is kept apart from kmock's own ``objects`` (which stays empty).

kmock notes: 0.8 cannot parse the paths of the Namespace resource itself (/api/v1/namespaces…), so
this module patches its path parser for them. Reactions of kmock's DSL still take precedence over
the emulation, e.g. to inject a fault on one URL while a threading.Event is set::

    api.call(lambda: api.handler[kmock.action.LIST, kmock.resource("v1/pods"), event] << 503)

Client note (kubernetes==37): ``watch.Watch().stream(..., deserialize=False)`` fails with a KeyError
on an ERROR event (a 410 included); ``watch.Watch(return_type="object")`` streams raw dicts safely.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import datetime
import re
import secrets
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import kmock
import kubernetes.client
from kmock._internal import parsing as kmock_parsing

from ryu_nsm.sources.kubernetes import WatchedKind

_DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True)
class Kind(WatchedKind):
    """One served resource: a kind as the watcher names it, and whether it has a status subresource."""

    status: bool = False

    @property
    def resource(self) -> kmock.resource:
        return kmock.resource(self.group, self.version, self.plural)


KINDS = (
    Kind("Pod", "v1", "pods"),
    Kind("Namespace", "v1", "namespaces", namespaced=False),
    Kind("Event", "v1", "events"),
    Kind("ConfigMap", "v1", "configmaps"),
    Kind("Event", "events.k8s.io/v1", "events"),
    Kind("Lease", "coordination.k8s.io/v1", "leases"),
    Kind("NetworkService", "networkservicemesh.io/v1", "networkservices"),
    Kind("NetworkServiceEndpoint", "networkservicemesh.io/v1", "networkserviceendpoints"),
    Kind("NetworkServiceConnection", "ryu-nsm.io/v1alpha1", "networkserviceconnections", status=True),
    Kind("ServiceLevel", "ryu-nsm.io/v1alpha1", "servicelevels"),
    Kind("MultiNetworkPolicy", "k8s.cni.cncf.io/v1beta1", "multi-networkpolicies"),
)


def _error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details={})


def _status_object(code: int, reason: str, message: str) -> dict:
    return {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "code": code, "reason": reason, "message": message}


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: mappings merge, null removes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path and not path.startswith("/"):
        raise _error(400, "BadRequest", f"json patch path {path!r} does not start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def _json_patch(target: dict, operations: list) -> dict:
    """RFC 6902 JSON patch with the operations add, remove, replace and test."""
    result = copy.deepcopy(target)
    for op in operations:
        if not isinstance(op, dict) or op.get("op") not in ("add", "remove", "replace", "test"):
            raise _error(400, "BadRequest", f"unsupported json patch operation {op!r}")
        *parents, last = _pointer(op.get("path", "")) or [""]
        node: Any = result
        try:
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
            if op["op"] == "test":
                found = node[int(last)] if isinstance(node, list) else node[last]
                if found != op.get("value"):
                    raise _error(422, "Invalid", f"json patch test failed at {op['path']}")
            elif op["op"] == "remove":
                del node[int(last) if isinstance(node, list) else last]
            elif isinstance(node, list):
                index = len(node) if last == "-" else int(last)
                if op["op"] == "add":
                    node.insert(index, copy.deepcopy(op.get("value")))
                else:
                    node[index] = copy.deepcopy(op.get("value"))
            else:
                if op["op"] == "replace" and last not in node:
                    raise KeyError(last)
                node[last] = copy.deepcopy(op.get("value"))
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise _error(422, "Invalid", f"json patch {op['op']} at {op.get('path')!r} failed: {e!r}") from e
    return result


# -- selectors ----------------------------------------------------------------------------------

_REQUIREMENT = re.compile(
    r"\s*(?:(?P<not>!)\s*(?P<absent>[^\s,=!()]+)"
    r"|(?P<key>[^\s,=!()]+)\s*(?:(?P<op>==|=|!=)\s*(?P<value>[^\s,=!()]*)"
    r"|\s+(?P<set>in|notin)\s*\((?P<values>[^)]*)\))?)\s*(?:,|$)"
)


def _label_matcher(text: str) -> Callable[[dict], bool]:
    """A label selector as the API server reads it; an unreadable one is a 400."""
    checks: list[Callable[[dict], bool]] = []
    position = 0
    while position < len(text):
        m = _REQUIREMENT.match(text, position)
        if m is None or m.end() == position:
            raise _error(400, "BadRequest", f"unable to parse requirement in label selector {text!r}")
        position = m.end()
        if m["absent"]:
            checks.append(lambda labels, k=m["absent"]: k not in labels)
        elif m["op"] in ("=", "=="):
            checks.append(lambda labels, k=m["key"], v=m["value"]: labels.get(k) == v)
        elif m["op"] == "!=":
            checks.append(lambda labels, k=m["key"], v=m["value"]: labels.get(k) != v)
        elif m["set"]:
            values = {v.strip() for v in m["values"].split(",")}
            if m["set"] == "in":
                checks.append(lambda labels, k=m["key"], vs=values: labels.get(k) in vs)
            else:
                checks.append(lambda labels, k=m["key"], vs=values: labels.get(k) not in vs)
        else:
            checks.append(lambda labels, k=m["key"]: k in labels)
    return lambda labels: all(check(labels) for check in checks)


def _field_matcher(text: str) -> Callable[[str | None, str], bool]:
    """metadata.name / metadata.namespace field selectors → check of (namespace, name)."""
    checks: list[Callable[[str | None, str], bool]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"(metadata\.name|metadata\.namespace)\s*(==|=|!=)\s*(\S*)", part)
        if m is None:
            raise _error(400, "BadRequest", f"field label not supported in field selector {part!r}")
        name_field, equal, value = m[1] == "metadata.name", m[2] != "!=", m[3]
        checks.append(lambda ns, name, f=name_field, eq=equal, v=value: ((name if f else ns) == v) == eq)
    return lambda ns, name: all(check(ns, name) for check in checks)


@dataclass(frozen=True)
class _Filter:
    """What a LIST or WATCH request selects."""

    kind: Kind
    namespace: str | None
    labels: Callable[[dict], bool]
    fields: Callable[[str | None, str], bool]

    def __call__(self, obj: dict) -> bool:
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace") if self.kind.namespaced else None
        if self.namespace is not None and namespace != self.namespace:
            return False
        return self.fields(namespace, meta.get("name", "")) and self.labels(meta.get("labels") or {})


@dataclass(frozen=True)
class _Event:
    rv: int
    kind: Kind
    type: str
    object: dict  # never mutated after it is logged


@dataclass(eq=False)
class Watch:
    """One open watch stream (as ``Emulator.watches()`` shows it)."""

    kind: Kind
    namespace: str | None
    resource_version: str
    bookmarks: bool
    position: int = 0
    bookmarked: str = ""  # the resourceVersion of the last BOOKMARK sent
    broken: str = ""  # "reset" or "end" once break_watches() asked
    wake: asyncio.Event = field(default_factory=asyncio.Event, repr=False)


_kmock_parse_path = kmock_parsing.parse_path


def _parse_path(path: str) -> kmock_parsing.ParsedPath:
    """kmock 0.8 reads /api/v1/namespaces[/<name>[/status]] as a namespace prefix and fails; the
    Namespace resource itself is parsed here, every other path by kmock."""
    parts = path.strip("/").split("/")
    if len(parts) in (3, 4, 5) and parts[:3] == ["api", "v1", "namespaces"] and (
            len(parts) < 5 or parts[4] in ("status", "finalize")):
        return kmock_parsing.ParsedPath("", "v1", "namespaces", None, *parts[3:])
    return _kmock_parse_path(path)


kmock_parsing.parse_path = _parse_path


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1")


class _Server(kmock.KubernetesEmulator):
    """kmock's emulator with our own store: resourceVersions, history, PUT, status subresource.

    Everything here runs on the emulator's event loop; state changes never await, so each is atomic.
    """

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.kinds: dict[kmock.resource, Kind] = {}
        self.store: dict[tuple[Kind, str | None, str], dict] = {}
        self.rv = 0
        self.log: list[_Event] = []
        self.compacted = 0  # a watch from a resourceVersion below this answers 410
        self.history = 10_000
        self.gone_as_event = True
        self.bookmark_interval = 1.0
        self.open_watches: set[Watch] = set()
        self.watch_gate = asyncio.Event()  # cleared: new watch requests wait before they are answered
        self.watch_gate.set()
        self.paused = ""  # "", "refuse" or "503"
        self.fallback[kmock.method.PUT] << self._serve_replace
        # After kmock's own DELETE fallback, which takes the requests that name an object.
        self.fallback[kmock.method.DELETE] << self._serve_delete_collection
        for kind in KINDS:
            self.register(kind)

    def register(self, kind: Kind) -> None:
        self.kinds[kind.resource] = kind
        self.resources[kind.resource] = kmock.ResourceInfo(
            kind=kind.kind, namespaced=kind.namespaced, singular=kind.kind.lower(),
            verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
            subresources={"status"} if kind.status else set(),
        )

    def kind_named(self, name: str, api_version: str | None) -> Kind:
        found = [k for k in self.kinds.values()
                 if k.kind == name and (api_version is None or k.api_version == api_version)]
        if len(found) != 1:
            raise ValueError(f"kind {name!r} (apiVersion {api_version}) names {len(found)} served kinds")
        return found[0]

    # -- HTTP --------------------------------------------------------------------------------------

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if self.paused == "refuse":
            # A connection that was open before the listener closed: drop it like a dying server.
            request._raw_request.transport.abort()
            return aiohttp.web.Response(status=503)
        if self.paused:
            raise _error(503, "ServiceUnavailable", "the emulated API server is paused")
        # Skip KubernetesEmulator's own state keeping: the fallbacks below keep ours.
        return await kmock.RawHandler._handle(self, request)

    def _kind_of(self, request: kmock.Request) -> Kind:
        kind = self.kinds.get(request.resource) if request.resource is not None else None
        if kind is None:
            raise kmock.KubernetesResourceNotFoundError()
        self._check_subresource(kind, request.subresource)
        return kind

    @staticmethod
    def _check_subresource(kind: Kind, subresource: str | None) -> None:
        if subresource is not None and not (subresource == "status" and kind.status):
            raise _error(404, "NotFound", f"the server could not find the requested resource "
                                          f"({kind.plural}/{subresource})")

    def _filter(self, kind: Kind, request: kmock.Request) -> _Filter:
        fields = request.params.get("fieldSelector", "")
        if request.name:
            fields = f"metadata.name={request.name}" + (f",{fields}" if fields else "")
        return _Filter(kind, request.namespace if kind.namespaced else None,
                       _label_matcher(request.params.get("labelSelector", "")), _field_matcher(fields))

    async def _serve_list(self, request: kmock.Request) -> dict:
        kind = self._kind_of(request)
        items = self.select(self._filter(kind, request))
        if not kind.group:
            # Core lists carry kind and apiVersion only on the list, not on its items.
            items = [{k: v for k, v in item.items() if k not in ("kind", "apiVersion")} for item in items]
        return {"apiVersion": kind.api_version, "kind": f"{kind.kind}List",
                "metadata": {"resourceVersion": str(self.rv)}, "items": items}

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        await self.watch_gate.wait()
        if self.paused:
            raise _error(503, "ServiceUnavailable", "the emulated API server is paused")
        kind = self._kind_of(request)
        selected = self._filter(kind, request)
        asked = request.params.get("resourceVersion", "")
        try:
            since = int(asked) if asked not in ("", "0") else None
        except ValueError:
            raise _error(400, "BadRequest", f"invalid resourceVersion {asked!r}") from None
        if since is not None and since < self.compacted and not self.gone_as_event:
            raise _error(410, "Expired", f"too old resource version: {since} ({self.compacted})")
        timeout = float(request.params.get("timeoutSeconds") or 0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout > 0 else None
        watch = Watch(kind, selected.namespace, asked, _truthy(request.params.get("allowWatchBookmarks")))
        self.open_watches.add(watch)
        try:
            yield b""  # headers go out now, as a real server sends them before any event
            if since is None:
                for obj in self.select(selected):
                    yield {"type": "ADDED", "object": obj}
                watch.position = self.rv
            else:
                watch.position = since
            while True:
                if watch.position < self.compacted:
                    yield {"type": "ERROR", "object": _status_object(
                        410, "Expired", f"too old resource version: {watch.position} ({self.compacted})")}
                    return
                watch.wake.clear()
                upto = self.rv
                for event in self.events_after(watch.position, upto):
                    if event.kind == kind and selected(event.object):
                        yield {"type": event.type, "object": event.object}
                    if watch.broken:
                        break
                watch.position = upto
                if watch.broken == "reset":
                    request._raw_request.transport.abort()
                if watch.broken:
                    return
                wait = self.bookmark_interval
                if deadline is not None:
                    wait = min(wait, deadline - loop.time())
                if wait <= 0:
                    return
                try:
                    await asyncio.wait_for(watch.wake.wait(), wait)
                except TimeoutError:
                    if deadline is not None and loop.time() >= deadline:
                        return
                    if watch.bookmarks:
                        yield {"type": "BOOKMARK", "object": {
                            "apiVersion": kind.api_version, "kind": kind.kind,
                            "metadata": {"resourceVersion": str(watch.position)}}}
                        watch.bookmarked = str(watch.position)
        finally:
            self.open_watches.discard(watch)

    async def _serve_fetch(self, request: kmock.Request) -> dict:
        return self.fetch(self._kind_of(request), request.namespace, request.name)

    async def _serve_create(self, request: kmock.Request) -> kmock.Response:
        kind = self._kind_of(request)
        if not isinstance(request.data, dict):
            raise _error(400, "BadRequest", "the body of a create must be a JSON object")
        return kmock.Response(status=201, payload=self.create(kind, request.namespace, request.data))

    async def _serve_update(self, request: kmock.Request) -> dict:
        kind = self._kind_of(request)
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        if content_type == "application/json-patch+json":
            if not isinstance(request.data, list):
                raise _error(400, "BadRequest", "json: cannot unmarshal object into Go value of type "
                                                "[]handlers.jsonPatchOp")
            return self.patch(kind, request.namespace, request.name, request.data, request.subresource,
                              json_patch=True)
        if content_type not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            raise _error(415, "UnsupportedMediaType", f"the emulator does not apply {content_type!r} patches")
        if not isinstance(request.data, dict):
            raise _error(400, "BadRequest", "a merge patch must be a JSON object")
        return self.patch(kind, request.namespace, request.name, request.data, request.subresource)

    async def _serve_replace(self, request: kmock.Request) -> dict:
        kind = self._kind_of(request)
        if request.name is None or not isinstance(request.data, dict):
            raise _error(405, "MethodNotAllowed", "PUT needs an object name and a JSON object")
        return self.replace(kind, request.namespace, request.name, request.data, request.subresource)

    async def _serve_delete(self, request: kmock.Request) -> dict:
        return self.delete(self._kind_of(request), request.namespace, request.name)

    async def _serve_delete_collection(self, request: kmock.Request) -> dict:
        kind = self._kind_of(request)
        items = [self.delete(kind, obj["metadata"].get("namespace"), obj["metadata"]["name"])
                 for obj in self.select(self._filter(kind, request))]
        return {"apiVersion": kind.api_version, "kind": f"{kind.kind}List",
                "metadata": {"resourceVersion": str(self.rv)}, "items": items}

    # -- the store (synchronous: atomic on the loop) ----------------------------------------------

    def select(self, selected: _Filter) -> list[dict]:
        return [copy.deepcopy(obj) for (kind, _, _), obj in self.store.items()
                if kind == selected.kind and selected(obj)]

    def events_after(self, position: int, upto: int) -> list[_Event]:
        # The log is ordered by rv; scanning from the end keeps the common case (few new events) cheap.
        start = len(self.log)
        while start > 0 and self.log[start - 1].rv > position:
            start -= 1
        return [e for e in self.log[start:] if e.rv <= upto]

    def _key(self, kind: Kind, namespace: str | None, name: str | None) -> tuple[Kind, str | None, str]:
        if not name:
            raise _error(405, "MethodNotAllowed", "this request needs an object name")
        return kind, (namespace or _DEFAULT_NAMESPACE) if kind.namespaced else None, name

    def fetch(self, kind: Kind, namespace: str | None, name: str | None) -> dict:
        key = self._key(kind, namespace, name)
        if key not in self.store:
            raise _error(404, "NotFound", f'{kind.plural} "{name}" not found')
        return copy.deepcopy(self.store[key])

    def _emit(self, kind: Kind, type_: str, obj: dict) -> None:
        self.log.append(_Event(self.rv, kind, type_, copy.deepcopy(obj)))
        if len(self.log) > 2 * self.history:
            self.compacted = self.log[-self.history - 1].rv
            del self.log[: -self.history]
        for watch in self.open_watches:
            watch.wake.set()

    def _stamp(self, obj: dict) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    def create(self, kind: Kind, namespace: str | None, body: dict) -> dict:
        obj = copy.deepcopy(body)
        for field_name, expected in (("apiVersion", kind.api_version), ("kind", kind.kind)):
            if obj.setdefault(field_name, expected) != expected:
                raise _error(400, "BadRequest", f"{field_name} {obj[field_name]!r} does not match the URL "
                                                f"({expected!r})")
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise _error(400, "BadRequest", "metadata must be an object")
        if kind.namespaced:
            given = meta.get("namespace")
            if namespace and given and given != namespace:
                raise _error(400, "BadRequest", "the namespace of the provided object does not match the "
                                                "namespace sent on the request")
            meta["namespace"] = namespace or given or _DEFAULT_NAMESPACE
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        if not meta.get("name"):
            raise _error(422, "Invalid", f"{kind.kind}: metadata.name: Required value: name or generateName "
                                         "is required")
        key = self._key(kind, meta.get("namespace"), meta["name"])
        if key in self.store:
            raise _error(409, "AlreadyExists", f'{kind.plural} "{meta["name"]}" already exists')
        if kind.status:
            obj.pop("status", None)  # a status subresource ignores the status given on create
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        self._stamp(obj)
        self.store[key] = obj
        self._emit(kind, "ADDED", obj)
        return copy.deepcopy(obj)

    def _write(self, kind: Kind, key: tuple, new: dict, subresource: str | None) -> dict:
        """Store a new version of an existing object: the rules of status, identity and generation."""
        old = self.store[key]
        meta = new.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise _error(400, "BadRequest", "metadata must be an object")
        given = meta.get("resourceVersion")
        if given not in (None, "") and given != old["metadata"]["resourceVersion"]:
            raise _error(409, "Conflict", f'Operation cannot be fulfilled on {kind.plural} "{key[2]}": the '
                                          "object has been modified; please apply your changes to the latest "
                                          "version and try again")
        if subresource == "status":
            new = {**copy.deepcopy(old), "status": new.get("status")}
            if new["status"] is None:
                del new["status"]
        elif kind.status:
            new = {k: v for k, v in new.items() if k != "status"}
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
        meta = new["metadata"] = {**new.get("metadata", {})}
        # Identity is the server's: name, namespace, uid and creation time cannot change.
        for name in ("name", "namespace", "uid", "creationTimestamp"):
            if name in old["metadata"]:
                meta[name] = old["metadata"][name]
        new["apiVersion"], new["kind"] = kind.api_version, kind.kind
        spec_of = lambda obj: {k: v for k, v in obj.items() if k not in ("metadata", "status")}  # noqa: E731
        generation = old["metadata"].get("generation", 1)
        meta["generation"] = generation + 1 if spec_of(new) != spec_of(old) else generation
        self._stamp(new)
        self.store[key] = new
        self._emit(kind, "MODIFIED", new)
        return copy.deepcopy(new)

    def patch(self, kind: Kind, namespace: str | None, name: str | None, patch: dict | list,
              subresource: str | None = None, json_patch: bool = False) -> dict:
        self._check_subresource(kind, subresource)
        key = self._key(kind, namespace, name)
        old = self.fetch(kind, namespace, name)
        new = _json_patch(old, patch) if json_patch else _merge(old, patch)
        if not isinstance(patch, list) and "resourceVersion" not in (patch.get("metadata") or {}):
            new["metadata"].pop("resourceVersion", None)  # a patch without one is unconditional
        if json_patch:
            new["metadata"].pop("resourceVersion", None)
        return self._write(kind, key, new, subresource)

    def replace(self, kind: Kind, namespace: str | None, name: str, body: dict,
                subresource: str | None = None) -> dict:
        self._check_subresource(kind, subresource)
        key = self._key(kind, namespace, name)
        self.fetch(kind, namespace, name)
        given = (body.get("metadata") or {}).get("name")
        if given and given != name:
            raise _error(400, "BadRequest", f"the name of the object ({given}) does not match the name on "
                                            f"the URL ({name})")
        return self._write(kind, key, copy.deepcopy(body), subresource)

    def delete(self, kind: Kind, namespace: str | None, name: str | None) -> dict:
        key = self._key(kind, namespace, name)
        obj = self.fetch(kind, namespace, name)
        del self.store[key]
        self._stamp(obj)
        self._emit(kind, "DELETED", obj)
        return obj

    def expire(self) -> None:
        self.compacted = self.rv
        self.log.clear()
        for watch in self.open_watches:
            watch.wake.set()

    def break_watches(self, how: str) -> int:
        for watch in self.open_watches:
            watch.broken = how
            watch.wake.set()
        return len(self.open_watches)


class Emulator:
    """The emulated API server in a background thread with its own event loop (see the module doc).

    ``bookmark_interval``: seconds without events before a watch that allows bookmarks gets one.
    ``history``: how many change events are kept for watches that resume from a resourceVersion.
    """

    def __init__(self, bookmark_interval: float = 1.0, history: int = 10_000):
        self.bookmark_interval = bookmark_interval
        self.history = history
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: _Server | None = None
        self._http: kmock.Server | None = None
        self._port = 0

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        """Start serving on 127.0.0.1 at a free port."""
        if self._loop is not None:
            raise RuntimeError("emulator already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="k8s-emulator", daemon=True)
        self._thread.start()
        self._run_async(self._start())

    async def _start(self) -> None:
        self._server = _Server()
        self._server.bookmark_interval = self.bookmark_interval
        self._server.history = self.history
        await self._server.__aenter__()
        self._http = kmock.Server(self._server)
        await self._http.__aenter__()
        self._port = self._http.port

    def close(self) -> None:
        """Stop serving (open watches are reset) and end the thread."""
        if self._loop is None:
            return
        try:
            self._run_async(self._close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            assert self._thread is not None
            self._thread.join(10)
            self._loop.close()
            self._loop = None

    async def _close(self) -> None:
        assert self._server is not None and self._http is not None
        self._server.paused = "503"  # held and new watches end at once
        self._server.watch_gate.set()
        await self._listen()  # a paused listener must exist for the shutdown to close it
        # Let the broken watch handlers see their flag and end before the runner waits for them.
        for _ in range(100):
            await asyncio.sleep(0.01)
            if not self._server.break_watches("reset"):
                break
        await self._http.__aexit__(None, None, None)
        await self._server.__aexit__(None, None, None)

    def _run_async(self, coro: Any, timeout: float = 30) -> Any:
        if self._loop is None:
            raise RuntimeError("emulator is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        async def call() -> Any:
            return fn(*args, **kwargs)
        return self._run_async(call())

    @property
    def url(self) -> str:
        """Where the API is served, e.g. http://127.0.0.1:40123."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def handler(self) -> kmock.KubernetesEmulator:
        """The kmock handler itself, for kmock DSL reactions (they run on the emulator's loop)."""
        assert self._server is not None
        return self._server

    def api_client(self) -> kubernetes.client.ApiClient:
        """A new official client configured for this emulator (host = url, no auth)."""
        configuration = kubernetes.client.Configuration(host=self.url)
        return kubernetes.client.ApiClient(configuration)

    # -- objects -----------------------------------------------------------------------------------

    def register(self, kind: Kind) -> None:
        """Serve one more kind."""
        assert self._server is not None
        self._run(self._server.register, kind)

    def _kind(self, kind: str, api_version: str | None) -> Kind:
        assert self._server is not None
        return self._server.kind_named(kind, api_version)

    def create(self, body: dict) -> dict:
        """Create an object from a full body (apiVersion, kind, metadata.name [and .namespace])."""
        assert self._server is not None
        kind = self._kind(body["kind"], body["apiVersion"])
        return self._run(self._server.create, kind, (body.get("metadata") or {}).get("namespace"), body)

    def replace(self, body: dict, subresource: str | None = None) -> dict:
        """Replace an object (PUT): 409 if the body's metadata.resourceVersion is not the current one."""
        assert self._server is not None
        kind = self._kind(body["kind"], body["apiVersion"])
        meta = body.get("metadata") or {}
        return self._run(self._server.replace, kind, meta.get("namespace"), meta.get("name"), body,
                         subresource)

    def patch(self, kind: str, name: str, patch: dict | list, namespace: str | None = _DEFAULT_NAMESPACE,
              *, api_version: str | None = None, subresource: str | None = None) -> dict:
        """Merge-patch (a mapping) or JSON-patch (a list of operations) an object."""
        assert self._server is not None
        found = self._kind(kind, api_version)
        return self._run(self._server.patch, found, namespace, name, patch, subresource,
                         json_patch=isinstance(patch, list))

    def delete(self, kind: str, name: str, namespace: str | None = _DEFAULT_NAMESPACE, *,
               api_version: str | None = None) -> dict:
        """Delete an object; returns it as last stored."""
        assert self._server is not None
        return self._run(self._server.delete, self._kind(kind, api_version), namespace, name)

    def get(self, kind: str, name: str, namespace: str | None = _DEFAULT_NAMESPACE, *,
            api_version: str | None = None) -> dict | None:
        """The stored object, or None."""
        assert self._server is not None
        try:
            return self._run(self._server.fetch, self._kind(kind, api_version), namespace, name)
        except kmock.KubernetesError as e:
            if e.status == 404:
                return None
            raise

    def objects(self, kind: str, namespace: str | None = None, *, api_version: str | None = None,
                label_selector: str = "") -> list[dict]:
        """The stored objects of a kind, in one namespace or (None) all."""
        assert self._server is not None
        found = self._kind(kind, api_version)
        selected = _Filter(found, namespace if found.namespaced else None, _label_matcher(label_selector),
                           _field_matcher(""))
        return self._run(self._server.select, selected)

    @property
    def resource_version(self) -> int:
        """The last resourceVersion handed out."""
        assert self._server is not None
        return self._server.rv

    def keep_recent_requests(self, keep: int = 16) -> None:
        """Keep only the last ``keep`` served requests from now on.

        kmock matches each request against every request served before it (each reaction's filter is
        a view over that log), so after a few thousand requests each takes tens of milliseconds.
        Benchmarks and tests that make thousands of requests and count none of them bound it.
        """
        assert self._server is not None

        def bound() -> None:
            self._server._requests = collections.deque(self._server._requests, maxlen=keep)
        self._run(bound)

    def requests(self, action: str | None = None, kind: str | None = None) -> list[kmock.Request]:
        """The requests served so far (kmock's parsed Request: .action, .resource, .params, .url),
        optionally only one action ("list", "watch", "create", ...) and/or one plural ("pods")."""
        assert self._server is not None

        def pick() -> list[kmock.Request]:
            return [r for r in self._server._requests
                    if (action is None or r.action == kmock.action(action))
                    and (kind is None or (r.resource is not None and r.resource.plural == kind))]
        return self._run(pick)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the emulator's loop, e.g. to add a kmock DSL reaction:
        ``api.call(lambda: api.handler[kmock.action.LIST, kmock.resource("v1/pods")] << 503)``."""
        return self._run(fn, *args)

    # -- faults ------------------------------------------------------------------------------------

    def hold_watches(self) -> None:
        """New watch requests wait, unanswered, until ``release_watches`` (open ones go on): with
        ``break_watches(clean=True)`` this lets a test change the store before a watch resumes."""
        assert self._server is not None
        self._run(self._server.watch_gate.clear)

    def release_watches(self) -> None:
        """Answer the held watch requests (and later ones) again."""
        assert self._server is not None
        self._run(self._server.watch_gate.set)

    def watches(self) -> list[Watch]:
        """The open watch streams: kind, namespace, the resourceVersion asked for, whether bookmarks
        were asked for, the resourceVersion reached (position) and that of the last bookmark sent."""
        assert self._server is not None
        return self._run(lambda: [copy.copy(w) for w in self._server.open_watches])

    def break_watches(self, clean: bool = False) -> int:
        """Drop every open watch stream: a connection reset, or with ``clean`` a normal end of stream.

        Returns how many were open. Clients may reconnect at once; see ``pause`` to keep them out.
        """
        assert self._server is not None
        return self._run(self._server.break_watches, "end" if clean else "reset")

    def expire(self, as_event: bool = True) -> None:
        """Forget the change history, as a compaction does: a watch from any resourceVersion older than
        the current one answers 410 Gone (an ERROR event, or with ``as_event=False`` an HTTP 410).

        Open watches that are behind get the 410 too; up-to-date ones go on.
        """
        assert self._server is not None

        def expire() -> None:
            self._server.gone_as_event = as_event
            self._server.expire()
        self._run(expire)

    def pause(self, refuse: bool = True) -> None:
        """Make the API unavailable until ``resume``: connections are refused (or every request gets a
        503 with ``refuse=False``); open watches and kept-alive connections are reset."""
        assert self._server is not None
        self._run_async(self._pause("refuse" if refuse else "503"))

    async def _pause(self, mode: str) -> None:
        assert self._server is not None and self._http is not None
        self._server.paused = mode
        self._server.break_watches("reset")
        if mode == "refuse":
            runner = self._http.server.runner
            for site in list(runner.sites):
                await site.stop()

    def resume(self) -> None:
        """Serve again (on the same port)."""
        assert self._server is not None
        self._run_async(self._resume())

    async def _resume(self) -> None:
        assert self._server is not None
        await self._listen()
        self._server.paused = ""

    async def _listen(self) -> None:
        assert self._http is not None
        runner = self._http.server.runner
        if not runner.sites:
            site = aiohttp.web.TCPSite(runner, "127.0.0.1", self._port, reuse_address=True)
            await site.start()

