"""Kubernetes-shaped documents (NSM's CRDs, Pods, Namespaces, ServiceLevels) → validated model objects.

Finds the objects of each document, validates each by kind (``nsm_kinds``, ``nsm_clients``, the QoS
``ServiceLevel``), keeps the last valid version of a broken one, and writes Resources back as
documents. No I/O. The kinds understood, the annotations and how problems are reported are in
docs/requests.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from urllib.parse import quote

from ryu_nsm.core.model import ClientRequest, Endpoint, NetworkService, Resources
from ryu_nsm.core.policy_model import POLICY_API_VERSION, POLICY_KIND
from ryu_nsm.core.validation import Problem, describe_value, expected, field_path, item_path
from ryu_nsm.core.values import DEFAULT_NAMESPACE
from ryu_nsm.qos.service_level import API_VERSION as SLA_API_VERSION
from ryu_nsm.qos.service_level import KIND as SLA_KIND
from ryu_nsm.qos.service_level import ServiceLevel, parse_service_level
from ryu_nsm.sources.kube_objects import (
    ATTACHMENTS_ANNOTATION,
    CLIENT_ANNOTATION,
    NSM_API_VERSION,
    NSM_GROUP,
    Document,
    KubeCheck,
    KubeObject,
)
from ryu_nsm.sources.nsm_clients import parse_namespace, parse_pod_requests
from ryu_nsm.sources.nsm_kinds import parse_endpoint, parse_network_service
from ryu_nsm.sources.policy_documents import validate_policy, workload_facts

_NSM_KINDS = ("NetworkService", "NetworkServiceEndpoint")
_CORE_KINDS = ("Pod", "Namespace")
_OUR_GROUP = SLA_API_VERSION.rpartition("/")[0]
_OUR_KINDS = (SLA_KIND,)
_POLICY_GROUP = POLICY_API_VERSION.rpartition("/")[0]


def _objects(
    doc: Document, body: object, base: str, problems: list[Problem], skipped: list[Problem]
) -> Iterator[KubeObject]:
    """The objects of ours in one document, Lists flattened; what is not an object is a Problem and
    an object of a kind not read here is noted in ``skipped`` (a misspelt kind must not vanish)."""
    if body is None and not base:
        return
    if not isinstance(body, dict):
        problems.append(Problem(doc.source, doc.index, base,
                                f"expected a Kubernetes object (a mapping with apiVersion and kind), "
                                f"found {describe_value(body)}"))
        return
    api, kind = body.get("apiVersion"), body.get("kind")
    for field_name, value in (("apiVersion", api), ("kind", kind)):
        if not isinstance(value, str) or not value:
            problems.append(Problem(doc.source, doc.index, field_path(base, field_name),
                                    expected("a non-empty string", value)))
            return
    group = api.rpartition("/")[0]
    if kind.endswith("List") and "items" in body:
        items_path = field_path(base, "items")
        items = body["items"]
        if not isinstance(items, list):
            problems.append(Problem(doc.source, doc.index, items_path,
                                    expected("a list", items)))
            return
        # Items of a typed list (NetworkServiceList) may leave their kind to the list.
        item_kind = kind[: -len("List")] or None
        for index, item in enumerate(items):
            if isinstance(item, dict) and item_kind and "kind" not in item:
                item = {"apiVersion": api, "kind": item_kind, **item}
            yield from _objects(doc, item, item_path(items_path, index), problems, skipped)
        return
    if (group == NSM_GROUP and kind in _NSM_KINDS) or (group == "" and kind in _CORE_KINDS) or (
            group == _OUR_GROUP and kind in _OUR_KINDS) or (group == _POLICY_GROUP and kind == POLICY_KIND):
        yield KubeObject(doc, base, body, kind)
    else:
        skipped.append(Problem(doc.source, doc.index, base, f"skipped: kind {kind!r} of apiVersion {api!r} "
                               "is not one ryu-nsm reads"))


def _version_ok(check: KubeCheck, obj: KubeObject) -> bool:
    """Checked with the object, not before, so that an object of the wrong version still has a key."""
    api = obj.body["apiVersion"]
    if obj.kind in _OUR_KINDS or obj.kind == POLICY_KIND:
        return True  # parse_service_level and validate_policy check their own version
    if api.rpartition("/")[2] == "v1":
        return True
    version = NSM_API_VERSION if obj.kind in _NSM_KINDS else "v1"
    check.error(field_path(obj.base, "apiVersion"), expected(f"{version} for kind {obj.kind}", api))
    return False


def _report(obj: KubeObject, check: KubeCheck, problems: list[Problem]) -> None:
    problems.extend(check.problems(obj.doc.source, obj.doc.index))


def _duplicate(obj: KubeObject, key: tuple, seen: dict[tuple, KubeObject], problems: list[Problem]) -> bool:
    """True (and a Problem on this later object) if ``key`` was already declared; the first wins."""
    first = seen.setdefault(key, obj)
    if first is obj:
        return False
    where = f"{first.doc.source}[{first.doc.index}]" + (f" {first.base}" if first.base else "")
    problems.append(Problem(obj.doc.source, obj.doc.index, field_path(obj.base, "metadata.name"),
                            f"duplicate {obj.kind} {'/'.join(key[1:])}: first declared at {where}, "
                            "which wins"))
    return True


ObjectKey = tuple[str, ...]
"""An object's identity: (kind, namespace, name), or (kind, name) for a Namespace."""


def _rawkey_path(obj: KubeObject) -> ObjectKey | None:
    """The object's key read before validation, so a broken object can be matched; None if unreadable."""
    meta = obj.body.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    name, namespace = meta.get("name"), meta.get("namespace") or DEFAULT_NAMESPACE
    if not isinstance(name, str) or not name or not isinstance(namespace, str):
        return None
    return (obj.kind, name) if obj.kind == "Namespace" else (obj.kind, namespace, name)


def _service_level(check: KubeCheck, obj: KubeObject) -> ServiceLevel | None:
    """A ServiceLevel of ours (sla.py validates it, naming fields the same way)."""
    level, problems = parse_service_level(obj.body, obj.base)
    for problem in problems:
        check.error(problem.path, problem.message)
    return level


class ParseMemo:
    """Validation results of the last parse, by object body: an unchanged object is not checked again.

    Sources hand in a new body for a changed object and never change a body in place, so the body's
    identity (held here, so it cannot be reused) stands for its content. Each parse keeps only the
    entries it used.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple, tuple] = {}
        self._used: dict[tuple, tuple] = {}

    def validated(
        self, key: tuple, keep_alive: tuple, run: Callable[[KubeCheck], object]
    ) -> tuple[KubeCheck, object]:
        """(check, result) of ``run`` for ``key``, from the last parse when it was there."""
        hit = self._entries.get(key) or self._used.get(key)
        if hit is None:
            check = KubeCheck()
            result = run(check)
            hit = (keep_alive, tuple(check.errors), tuple(check.notes), result)
        self._used[key] = hit
        check = KubeCheck()
        check.errors, check.notes = list(hit[1]), list(hit[2])
        return check, hit[3]

    def turn(self) -> None:
        """End of a parse: what was not used is forgotten."""
        self._entries, self._used = self._used, {}


class _Parser:
    """Validates objects, first declaration winning, and falls back to last valid versions."""

    def __init__(self, last_valid: Mapping[ObjectKey, dict], memo: ParseMemo | None = None):
        self.last_valid = last_valid
        self.memo = memo
        self.valid: dict[ObjectKey, dict] = {}
        self.seen: dict[tuple, KubeObject] = {}
        self.problems: list[Problem] = []
        self.skipped: list[Problem] = []

    def _validate(
        self, obj: KubeObject, validate: Callable[[KubeCheck, KubeObject], object], context: object
    ) -> tuple[KubeCheck, object]:
        def run(check: KubeCheck) -> object:
            return validate(check, obj) if _version_ok(check, obj) else None

        if self.memo is None:
            check = KubeCheck()
            return check, run(check)
        # ``context`` is what else the result depends on (a Pod's Namespace entries), held alike.
        key = (id(obj.body), obj.base, obj.kind, id(context))
        return self.memo.validated(key, (obj.body, context), run)

    def accept(
        self, objects: list[KubeObject], validate: Callable[[KubeCheck, KubeObject], object],
        context: Callable[[KubeObject], object] = lambda obj: None,
    ) -> list[tuple[ObjectKey, object]]:
        """(key, result of ``validate``) of each object that applies, in order, kept versions last.

        ``validate`` returns None for an object that is not ours (a Pod without NSM annotations).
        """
        accepted: list[tuple[ObjectKey, object]] = []
        broken: list[tuple[ObjectKey, KubeObject]] = []
        for obj in objects:
            check, result = self._validate(obj, validate, context(obj))
            _report(obj, check, self.problems)
            key = _rawkey_path(obj)
            if check.errors:
                if key in self.last_valid:
                    broken.append((key, obj))
            elif result is not None and not _duplicate(obj, key, self.seen, self.problems):
                self.valid[key] = obj.body
                accepted.append((key, result))
        for key, obj in broken:
            if key in self.seen:
                continue  # a valid declaration elsewhere (the object moved) wins over the kept one
            kept = replace(obj, body=self.last_valid[key])
            check = KubeCheck()
            result = validate(check, kept)
            if check.errors or result is None:
                continue  # a kept Pod that no longer fits its Namespace's annotation
            self.seen[key] = kept
            self.valid[key] = kept.body
            accepted.append((key, result))
            self.problems.append(Problem(obj.doc.source, obj.doc.index, obj.base,
                                         f"keeping the last valid version of {key[0]} {'/'.join(key[1:])} "
                                         "until it is fixed"))
        return accepted


def parse_keeping(
    documents: Iterable[Document], last_valid: Mapping[ObjectKey, dict], memo: ParseMemo | None = None
) -> tuple[Resources, dict[ObjectKey, dict]]:
    """Like ``parse_located``, but an object that fails validation keeps its version in ``last_valid``.

    A kept object comes with a Problem saying so, beside the Problems of the broken version; a valid
    declaration of the same object elsewhere wins over it. Also returns the ``last_valid`` for next
    time: key → body of every object now applied, so objects whose documents are gone are forgotten.
    With a ``memo`` (kept by the caller from one parse to the next), unchanged objects are not
    validated again and keep their parsed objects, so a change costs what it touches.
    """
    documents = list(documents)
    parser = _Parser(last_valid, memo)
    objects = [obj for doc in documents
               for obj in _objects(doc, doc.body, "", parser.problems, parser.skipped)]
    namespaces = parser.accept([obj for obj in objects if obj.kind == "Namespace"], parse_namespace)
    inherited = {key[1]: entries for key, entries in namespaces}

    def validate(check: KubeCheck, obj: KubeObject) -> object:
        if obj.kind == "Pod":
            # An empty list is a Pod that is ours but broken; its errors are in ``check``.
            return parse_pod_requests(check, obj, inherited)
        if obj.kind == SLA_KIND:
            return _service_level(check, obj)
        if obj.kind == POLICY_KIND:
            return validate_policy(check, obj.body, obj.base)
        if obj.kind == "NetworkService":
            return parse_network_service(check, obj)
        return parse_endpoint(check, obj)

    def context(obj: KubeObject) -> object:
        if obj.kind != "Pod":
            return None
        metadata = obj.body.get("metadata")
        namespace = metadata.get("namespace") if isinstance(metadata, dict) else None
        return inherited.get(namespace or DEFAULT_NAMESPACE)

    services: list[NetworkService] = []
    endpoints: list[Endpoint] = []
    requests: list[ClientRequest] = []
    levels: list[ServiceLevel] = []
    policies: list = []
    facts, fact_problems = workload_facts((o.doc.source, o.doc.index, o.base, o.kind, o.body)
                                          for o in objects)
    parser.problems += fact_problems
    for key, result in parser.accept([obj for obj in objects if obj.kind != "Namespace"], validate, context):
        if key[0] == SLA_KIND:
            levels.append(result)
        elif key[0] == POLICY_KIND:
            policies.append(result)
        elif key[0] == "NetworkService":
            services.append(result)
        elif key[0] == "NetworkServiceEndpoint":
            endpoints.append(result)
        else:
            requests.extend(result)
    if memo is not None:
        memo.turn()
    # Namespaces are read first, but their problems belong in document order like all others.
    problems = parser.problems
    if problems:  # the order of every document only when there is something to sort
        order = {(doc.source, doc.index): position for position, doc in enumerate(documents)}
        problems = sorted(problems, key=lambda p: order[(p.source, p.index)])
    resources = Resources(tuple(services), tuple(endpoints), tuple(requests), tuple(problems), tuple(levels),
                          warnings=tuple(parser.skipped), policy=replace(facts, policies=tuple(policies)))
    return resources, parser.valid


def parse_located(documents: Iterable[Document]) -> Resources:
    """Turn documents from any number of sources into Resources, keeping Problems beside them.

    Parsed as one set: Pods inherit a Namespace's client annotation and duplicates are found
    across all documents, in the order given.
    """
    return parse_keeping(documents, {})[0]


def parse_documents(docs: list[object], source: str) -> Resources:
    """Turn the parsed YAML documents of one source (e.g. a file) into Resources."""
    return parse_located(Document(source, index, body) for index, body in enumerate(docs))


# -- back to documents --------------------------------------------------------------------------


def _client_url(request: ClientRequest) -> str:
    target = request.service + (f"@{request.domain}" if request.domain else "")
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in request.labels.items())
    return f"kernel://{target}/{request.ifname}" + (f"?{query}" if query else "")


def dump_documents(resources: Resources) -> list[dict]:
    """Resources → Kubernetes-shaped documents that ``parse_documents`` reads back to equal objects.

    A pod's requests become one Pod with its own annotation, in the order of first appearance.
    """
    docs: list[dict] = []
    for service in resources.services:
        matches = []
        for match in service.matches:
            item: dict = {
                "source_selector": match.source_selector.to_dict(),
                "routes": [{"destination_selector": r.selector.to_dict(), "weight": r.weight}
                           for r in match.routes],
            }
            if match.fallthrough:
                item["fallthrough"] = True
            if match.metadata is not None:
                item["metadata"] = {"labels": match.metadata.to_dict()}
            matches.append(item)
        docs.append({
            "apiVersion": NSM_API_VERSION, "kind": "NetworkService",
            "metadata": {"name": service.name, "namespace": service.namespace},
            "spec": {"payload": service.payload, "matches": matches},
        })
    for endpoint in resources.endpoints:
        metadata: dict = {"name": endpoint.name, "namespace": endpoint.namespace}
        if endpoint.attachments:
            metadata["annotations"] = {ATTACHMENTS_ANNOTATION: ",".join(map(str, endpoint.attachments))}
        spec: dict = {
            "network_service_names": list(endpoint.services),
            "network_service_labels": {s: {"labels": labels.to_dict()}
                                       for s, labels in endpoint.service_labels.items()},
        }
        if endpoint.url:
            spec["url"] = endpoint.url
        if endpoint.expires is not None:
            seconds = math.floor(endpoint.expires)
            spec["expiration_time"] = {"seconds": seconds, "nanos": round((endpoint.expires - seconds) * 1e9)}
        docs.append({"apiVersion": NSM_API_VERSION, "kind": "NetworkServiceEndpoint",
                     "metadata": metadata, "spec": spec})
    pods: dict[tuple[str, str], list[ClientRequest]] = {}
    for request in resources.requests:
        pods.setdefault((request.namespace, request.pod), []).append(request)
    for (namespace, pod), pod_requests in pods.items():
        annotations = {CLIENT_ANNOTATION: ",".join(_client_url(r) for r in pod_requests)}
        attached = [f"{r.ifname}={r.attachment}" for r in pod_requests if r.attachment is not None]
        if attached:
            annotations[ATTACHMENTS_ANNOTATION] = ",".join(attached)
        docs.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": pod, "namespace": namespace, "annotations": annotations}})
    return docs
