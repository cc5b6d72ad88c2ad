"""Documents from any source, validated as one set → Resources; with a memo, a change costs what it touches.

Objects are validated by kind (``nsm_kinds``, ``nsm_clients``, the QoS ``ServiceLevel``, policies),
the first declaration of an object wins, Pods inherit their Namespace's client annotation, and an
object whose new version is invalid keeps its last valid version. How problems are reported is in
docs/requests.md.

A ``ParseMemo`` kept by a source from one parse to the next holds each document's part of the last
parse (its objects, their checks, its policy facts) by the document's body: sources hand in a new
body for a changed document and never change one in place. An unchanged document is then not
looked into again; only a Pod whose Namespace changed is checked again. What is left per parse is
one pass over the documents to find duplicates and collect results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from ryu_nsm.core.model import ClientRequest, Endpoint, NetworkService, Resources
from ryu_nsm.core.policy_model import POLICY_KIND, PolicyInputs
from ryu_nsm.core.validation import Problem, expected, field_path
from ryu_nsm.core.values import DEFAULT_NAMESPACE, FrozenMap
from ryu_nsm.qos.service_level import KIND as SLA_KIND
from ryu_nsm.qos.service_level import ServiceLevel, parse_service_level
from ryu_nsm.sources.documents import NSM_KINDS, OUR_KINDS, find_objects
from ryu_nsm.sources.kube_objects import NSM_API_VERSION, Document, KubeCheck, KubeObject
from ryu_nsm.sources.nsm_clients import parse_namespace, parse_pod_requests
from ryu_nsm.sources.nsm_kinds import parse_endpoint, parse_network_service
from ryu_nsm.sources.policy_documents import validate_policy, workload_facts

ObjectKey = tuple[str, ...]
"""An object's identity: (kind, namespace, name), or (kind, name) for a Namespace."""

Validate = Callable[[KubeCheck, KubeObject], object]


def _version_ok(check: KubeCheck, obj: KubeObject) -> bool:
    """Checked with the object, not before, so that an object of the wrong version still has a key."""
    api = obj.body["apiVersion"]
    if obj.kind in OUR_KINDS or obj.kind == POLICY_KIND:
        return True  # parse_service_level and validate_policy check their own version
    if api.rpartition("/")[2] == "v1":
        return True
    version = NSM_API_VERSION if obj.kind in NSM_KINDS else "v1"
    check.error(field_path(obj.base, "apiVersion"), expected(f"{version} for kind {obj.kind}", api))
    return False


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


def _validate_object(inherited: Mapping[str, object]) -> Validate:
    """The check of every kind but Namespace; Pods read the client entries of their Namespace."""

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

    return validate


def _pod_namespace(obj: KubeObject) -> str:
    metadata = obj.body.get("metadata")
    namespace = metadata.get("namespace") if isinstance(metadata, dict) else None
    return namespace or DEFAULT_NAMESPACE


@dataclass(frozen=True, slots=True)
class _Checked:
    """One object's check: its key, its Problems, whether it failed, what it gave (None: not ours)."""

    obj: KubeObject
    key: ObjectKey | None
    problems: tuple[Problem, ...]
    failed: bool
    result: object


def _check(obj: KubeObject, validate: Validate) -> _Checked:
    check = KubeCheck()
    result = validate(check, obj) if _version_ok(check, obj) else None
    return _Checked(obj, _rawkey_path(obj), tuple(check.problems(obj.doc.source, obj.doc.index)),
                    bool(check.errors), result)


class _DocumentParse:
    """One document's part of a parse. Holds the body, so that its id stands for it while held."""

    __slots__ = ("body", "problems", "skipped", "objects", "facts", "fact_problems", "namespaces", "others",
                 "pods", "contexts", "generation")

    def __init__(self, doc: Document):
        self.body = doc.body
        self.problems: list[Problem] = []
        self.skipped: list[Problem] = []
        self.objects = list(find_objects(doc, doc.body, "", self.problems, self.skipped))
        facts, self.fact_problems = workload_facts((o.doc.source, o.doc.index, o.base, o.kind, o.body)
                                                   for o in self.objects)
        self.facts = facts if facts.pods or facts.endpoints or facts.namespaces else None
        self.namespaces = [_check(obj, parse_namespace) for obj in self.objects if obj.kind == "Namespace"]
        self.others: list[_Checked] | None = None
        # The Pods' Namespaces, and the client entries each was checked with (identity counts).
        self.pods = tuple(_pod_namespace(obj) for obj in self.objects if obj.kind == "Pod")
        self.contexts: tuple = ()
        self.generation: object = None

    def checked_others(self, inherited: Mapping[str, object], generation: object,
                       validate: Validate) -> list[_Checked]:
        """The checks of every object but Namespaces, again only if a Pod's Namespace entries changed."""
        if self.others is not None and self.generation is generation:
            return self.others
        contexts = tuple(inherited.get(namespace) for namespace in self.pods)
        if self.others is None or any(a is not b for a, b in zip(contexts, self.contexts, strict=True)):
            self.others = [_check(obj, validate) for obj in self.objects if obj.kind != "Namespace"]
        self.contexts, self.generation = contexts, generation
        return self.others


class ParseMemo:
    """Each document's part of the last parse, by body: an unchanged document is not looked into again.

    Each parse keeps only the documents it used. ``generation`` changes when the Namespaces' client
    entries do; a document checked in the current generation needs no look at its Pods' Namespaces.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple, _DocumentParse] = {}
        self._used: dict[tuple, _DocumentParse] = {}
        self._inherited: dict[str, object] = {}
        self.generation = object()

    def document(self, doc: Document) -> _DocumentParse:
        key = (id(doc.body), doc.source, doc.index)
        entry = self._entries.get(key) or self._used.get(key)
        if entry is None:
            entry = _DocumentParse(doc)
        self._used[key] = entry
        return entry

    def inherit(self, inherited: dict[str, object]) -> object:
        """The generation of ``inherited``: the same while every Namespace's entries are the same."""
        same = inherited.keys() == self._inherited.keys() and all(
            value is self._inherited[name] for name, value in inherited.items())
        if not same:
            self._inherited, self.generation = inherited, object()
        return self.generation

    def turn(self) -> None:
        """End of a parse: what was not used is forgotten."""
        self._entries, self._used = self._used, {}


class _Parser:
    """Takes checked objects in order, first declaration winning, and falls back to last valid versions."""

    def __init__(self, last_valid: Mapping[ObjectKey, dict]):
        self.last_valid = last_valid
        self.valid: dict[ObjectKey, dict] = {}
        self.seen: dict[tuple, KubeObject] = {}
        self.problems: list[Problem] = []
        self.skipped: list[Problem] = []
        self._broken: list[_Checked] = []

    def take(self, checked: _Checked, accepted: list[tuple[ObjectKey, object]]) -> None:
        self.problems.extend(checked.problems)
        key = checked.key
        if checked.failed:
            if key in self.last_valid:
                self._broken.append(checked)
        elif checked.result is not None and not self._duplicate(checked.obj, key):
            self.valid[key] = checked.obj.body
            accepted.append((key, checked.result))

    def _duplicate(self, obj: KubeObject, key: tuple) -> bool:
        """True (and a Problem on this later object) if ``key`` was already declared; the first wins."""
        first = self.seen.setdefault(key, obj)
        if first is obj:
            return False
        where = f"{first.doc.source}[{first.doc.index}]" + (f" {first.base}" if first.base else "")
        self.problems.append(Problem(obj.doc.source, obj.doc.index, field_path(obj.base, "metadata.name"),
                                     f"duplicate {obj.kind} {'/'.join(key[1:])}: first declared at {where}, "
                                     "which wins"))
        return True

    def keep_broken(self, validate: Validate, accepted: list[tuple[ObjectKey, object]]) -> None:
        """After a phase: the last valid version of each object that failed, unless declared elsewhere."""
        broken, self._broken = self._broken, []
        for checked in broken:
            key, obj = checked.key, checked.obj
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


def _facts(entries: list[_DocumentParse]) -> PolicyInputs:
    """The documents' policy facts merged in order (a later declaration of the same workload wins)."""
    pods: dict = {}
    endpoints: dict = {}
    namespaces: dict = {}
    for entry in entries:
        if entry.facts is not None:
            pods.update(entry.facts.pods)
            endpoints.update(entry.facts.endpoints)
            namespaces.update(entry.facts.namespaces)
    return PolicyInputs((), FrozenMap(pods), FrozenMap(endpoints), FrozenMap(namespaces))


def parse_keeping(
    documents: Iterable[Document], last_valid: Mapping[ObjectKey, dict], memo: ParseMemo | None = None
) -> tuple[Resources, dict[ObjectKey, dict]]:
    """Like ``parse_located``, but an object that fails validation keeps its version in ``last_valid``.

    A kept object comes with a Problem saying so, beside the Problems of the broken version; a valid
    declaration of the same object elsewhere wins over it. Also returns the ``last_valid`` for next
    time: key → body of every object now applied, so objects whose documents are gone are forgotten.
    With a ``memo`` (kept by the caller from one parse to the next), unchanged documents are not
    looked into again, so a change costs what it touches.
    """
    documents = list(documents)
    memo = memo if memo is not None else ParseMemo()
    entries = [memo.document(doc) for doc in documents]
    parser = _Parser(last_valid)
    for entry in entries:
        parser.problems += entry.problems
        parser.skipped += entry.skipped
    namespaces: list[tuple[ObjectKey, object]] = []
    for entry in entries:
        for checked in entry.namespaces:
            parser.take(checked, namespaces)
    parser.keep_broken(parse_namespace, namespaces)
    inherited = {key[1]: entries_of for key, entries_of in namespaces}
    generation = memo.inherit(inherited)
    for entry in entries:
        parser.problems += entry.fact_problems
    validate = _validate_object(inherited)
    accepted: list[tuple[ObjectKey, object]] = []
    for entry in entries:
        for checked in entry.checked_others(inherited, generation, validate):
            parser.take(checked, accepted)
    parser.keep_broken(validate, accepted)
    memo.turn()

    services: list[NetworkService] = []
    endpoints: list[Endpoint] = []
    requests: list[ClientRequest] = []
    levels: list[ServiceLevel] = []
    policies: list = []
    by_kind = {SLA_KIND: levels.append, POLICY_KIND: policies.append, "NetworkService": services.append,
               "NetworkServiceEndpoint": endpoints.append, "Pod": requests.extend}
    for key, result in accepted:
        by_kind[key[0]](result)
    # Namespaces are read first, but their problems belong in document order like all others.
    problems = parser.problems
    if problems:  # the order of every document only when there is something to sort
        order = {(doc.source, doc.index): position for position, doc in enumerate(documents)}
        problems = sorted(problems, key=lambda p: order[(p.source, p.index)])
    resources = Resources(tuple(services), tuple(endpoints), tuple(requests), tuple(problems), tuple(levels),
                          warnings=tuple(parser.skipped),
                          policy=replace(_facts(entries), policies=tuple(policies)))
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
