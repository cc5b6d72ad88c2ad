"""Kubernetes-shaped documents (NSM's CRDs, Pods, Namespaces, ServiceLevels) → validated model objects.

No I/O. The kinds understood, the annotations and how problems are reported are in docs/requests.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from urllib.parse import quote, unquote_plus

from ryu_nsm.core.model import (
    Attachment,
    ClientRequest,
    Destination,
    Endpoint,
    Match,
    ModelError,
    NetworkService,
    Resources,
)
from ryu_nsm.core.policy_model import POLICY_API_VERSION, POLICY_KIND
from ryu_nsm.core.validation import Check, Problem, describe_value, expected, field_path, item_path, key_path
from ryu_nsm.core.values import DEFAULT_NAMESPACE, EMPTY, FrozenMap
from ryu_nsm.qos.service_level import API_VERSION as SLA_API_VERSION
from ryu_nsm.qos.service_level import KIND as SLA_KIND
from ryu_nsm.qos.service_level import ServiceLevel, parse_service_level
from ryu_nsm.sources.policy_documents import validate_policy, workload_facts

NSM_GROUP = "networkservicemesh.io"
NSM_API_VERSION = f"{NSM_GROUP}/v1"
CLIENT_ANNOTATION = "networkservicemesh.io"
ATTACHMENTS_ANNOTATION = "ryu-nsm.io/attachments"
DEFAULT_IFNAME = "nsm-1"
PAYLOADS = ("ETHERNET", "IP")
_UINT32_MAX = 2**32 - 1


@dataclass(frozen=True)
class Document:
    """One parsed YAML/JSON document and where it came from (file, position in the file)."""

    source: str
    index: int
    body: object


# -- primitive checks ---------------------------------------------------------------------------

_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
# Linux interface names: at most 15 bytes; '/' and whitespace are impossible, ':' is for aliases.
_IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
# Same template grammar the resolver substitutes: {{.label}}.
_TEMPLATE_RE = re.compile(r"\{\{\s*\.[A-Za-z0-9_.\-/]+\s*\}\}")

LABEL_RULE = (
    "a DNS-1123 label (at most 63 characters: lowercase letters, digits and '-', "
    "starting and ending with a letter or digit)"
)
SUBDOMAIN_RULE = (
    "a DNS-1123 subdomain (at most 253 characters: lowercase letters, digits, '-' and '.', "
    "each dot-separated part starting and ending with a letter or digit)"
)
_LABEL_KEY_RULE = (
    "a label key ([prefix/]name: name at most 63 characters of letters, digits, '-', '_' and '.', "
    "starting and ending with a letter or digit; prefix a DNS-1123 subdomain)"
)
_LABEL_VALUE_RULE = (
    "a label value (empty, or at most 63 characters of letters, digits, '-', '_' and '.', "
    "starting and ending with a letter or digit)"
)
_IFNAME_RULE = (
    "an interface name (1-15 characters: letters, digits, '_', '.' and '-', not starting with a symbol)"
)





def _q(text: str) -> str:
    return json.dumps(text)


def _qs(texts: Iterable[str]) -> str:
    return "[" + ", ".join(map(_q, texts)) + "]"


def is_dns1123_label(text: str) -> bool:
    """True if ``text`` is a valid Kubernetes namespace name."""
    return len(text) <= 63 and bool(_LABEL_RE.match(text))


def is_dns1123_subdomain(text: str) -> bool:
    """True if ``text`` is a valid Kubernetes object name (Pods, NSM custom resources)."""
    return len(text) <= 253 and bool(_SUBDOMAIN_RE.match(text))


def _label_key_ok(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and not (prefix and is_dns1123_subdomain(prefix)):
        return False
    return len(name) <= 63 and bool(_LABEL_NAME_RE.match(name))


def _label_value_ok(value: str, templates: bool) -> bool:
    if templates and ("{{" in value or "}}" in value):
        # A template stands for a request label value; what is around it must be label characters.
        rest = _TEMPLATE_RE.sub("x", value)
        return "{" not in rest and "}" not in rest and bool(_LABEL_NAME_RE.match(rest))
    return value == "" or (len(value) <= 63 and bool(_LABEL_NAME_RE.match(value)))


class _Check(Check):
    """The validation kit's Check, knowing Kubernetes names and labels."""

    def name(self, value: object, path: str, subdomain: bool) -> str | None:
        """A Kubernetes name: a DNS-1123 subdomain (object names) or label (namespaces)."""
        text = self.string(value, path)
        if text is None:
            return None
        ok = is_dns1123_subdomain(text) if subdomain else is_dns1123_label(text)
        if not ok:
            rule = SUBDOMAIN_RULE if subdomain else LABEL_RULE
            self.error(path, expected(rule, text))
            return None
        return text

    def labels(self, value: object, path: str, templates: bool = False) -> FrozenMap | None:
        """Kubernetes labels (key → string value); values may hold ``{{.label}}`` templates if allowed."""
        mapping = self.mapping(value, path)
        if mapping is None:
            return None
        out: dict[str, str] = {}
        ok = True
        for key, raw in mapping.items():
            if not isinstance(key, str) or not _label_key_ok(key):
                self.error(key_path(path, str(key)), expected(_LABEL_KEY_RULE, key))
                ok = False
                continue
            text = self.string(raw, key_path(path, key))
            if text is None:
                ok = False
            elif not _label_value_ok(text, templates):
                rule = _LABEL_VALUE_RULE + (" or one with {{.label}} templates" if templates else "")
                self.error(key_path(path, key), expected(rule, text))
                ok = False
            else:
                out[key] = text
        return FrozenMap(out) if ok else None

    def fields(
        self, mapping: dict, path: str, known: tuple[str, ...], ignored: tuple[str, ...] = ()
    ) -> dict[str, tuple[object, str]]:
        """Fields of NSM's registry messages: proto JSON's lowerCamelCase spelling is taken too."""
        return super().fields(mapping, path, known, ignored, camel_case=True)


# -- objects ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Object:
    """A Kubernetes object found in a document (possibly inside a List) with its field path prefix."""

    doc: Document
    base: str
    body: dict
    kind: str


@dataclass
class _Meta:
    name: str | None
    namespace: str
    annotations: dict


def _metadata(check: _Check, obj: _Object, namespaced: bool = True) -> _Meta:
    path = field_path(obj.base, "metadata")
    meta = check.mapping(obj.body.get("metadata"), path)
    if meta is None:
        return _Meta(None, DEFAULT_NAMESPACE, {})
    name_path = field_path(path, "name")
    name = None
    if meta.get("name") in (None, ""):
        check.error(name_path, expected("a name", meta.get('name')))
    else:
        # Namespaces are named by DNS-1123 labels; other objects by subdomains.
        name = check.name(meta["name"], name_path, subdomain=namespaced)
    namespace = DEFAULT_NAMESPACE
    if namespaced and meta.get("namespace") not in (None, ""):
        namespace = check.name(meta["namespace"], field_path(path, "namespace"), subdomain=False) or namespace
    annotations = check.mapping(meta.get("annotations"), field_path(path, "annotations")) or {}
    return _Meta(name, namespace, annotations)


def _annotation(check: _Check, meta: _Meta, obj: _Object, key: str) -> tuple[str | None, str]:
    """The value of one annotation (None if absent or blank) and its path."""
    path = key_path(field_path(field_path(obj.base, "metadata"), "annotations"), key)
    value = meta.annotations.get(key)
    if value is None:
        return None, path
    text = check.string(value, path)
    return (text if text and text.strip() else None), path


def _spec(check: _Check, obj: _Object, name: str | None) -> tuple[dict, str]:
    path = field_path(obj.base, "spec")
    spec = check.mapping(obj.body.get("spec"), path) or {}
    given = spec.get("name")
    # The registry message has its own name; NSM fills it from metadata.name, so they must agree.
    if given not in (None, "") and name is not None and given != name:
        check.error(field_path(path, "name"),
                    f"expected {json.dumps(name)} (as metadata.name), found {describe_value(given)}")
    return spec, path


def _network_service(check: _Check, obj: _Object) -> NetworkService | None:
    meta = _metadata(check, obj)
    spec, path = _spec(check, obj, meta.name)
    fields = check.fields(spec, path, ("name", "payload", "matches"), ignored=("path_ids",))
    payload = "ETHERNET"
    if "payload" in fields and fields["payload"][0] not in (None, ""):
        value, where = fields["payload"]
        if value not in PAYLOADS:
            check.error(where, f"expected one of {', '.join(PAYLOADS)}, found {describe_value(value)}")
        else:
            payload = value
    matches = []
    raw_matches, where = fields.get("matches", (None, field_path(path, "matches")))
    for index, raw in enumerate(check.sequence(raw_matches, where) or []):
        match = _match(check, raw, item_path(where, index))
        if match is not None:
            matches.append(match)
    if check.errors or meta.name is None:
        return None
    return NetworkService(meta.name, meta.namespace, tuple(matches), payload)


def _match(check: _Check, raw: object, path: str) -> Match | None:
    mapping = check.mapping(raw, path)
    if mapping is None:
        return None
    fields = check.fields(mapping, path, ("source_selector", "routes", "fallthrough", "metadata"))
    source = EMPTY
    if "source_selector" in fields:
        source = check.labels(*fields["source_selector"], templates=True)
    routes = []
    raw_routes, where = fields.get("routes", (None, field_path(path, "routes")))
    for index, route in enumerate(check.sequence(raw_routes, where) or []):
        destination = _destination(check, route, item_path(where, index))
        if destination is not None:
            routes.append(destination)
    fallthrough = False
    if "fallthrough" in fields and fields["fallthrough"][0] is not None:
        value, where = fields["fallthrough"]
        if not isinstance(value, bool):
            check.error(where, expected("true or false", value))
        else:
            fallthrough = value
    metadata = EMPTY
    if "metadata" in fields:
        value, where = fields["metadata"]
        inner = check.mapping(value, where)
        if inner is not None:
            labels = check.fields(inner, where, ("labels",))
            if "labels" in labels:
                metadata = check.labels(*labels["labels"])
    if source is None or metadata is None:
        return None
    return Match(source, tuple(routes), fallthrough, metadata)


def _destination(check: _Check, raw: object, path: str) -> Destination | None:
    mapping = check.mapping(raw, path)
    if mapping is None:
        return None
    fields = check.fields(mapping, path, ("destination_selector", "weight"))
    selector = EMPTY
    if "destination_selector" in fields:
        selector = check.labels(*fields["destination_selector"], templates=True)
    weight = 1
    if "weight" in fields and fields["weight"][0] is not None:
        value, where = fields["weight"]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _UINT32_MAX:
            check.error(where, expected("a non-negative integer (uint32)", value))
            return None
        weight = value
    return None if selector is None else Destination(selector, weight)


def _endpoint(check: _Check, obj: _Object) -> Endpoint | None:
    meta = _metadata(check, obj)
    spec, path = _spec(check, obj, meta.name)
    fields = check.fields(
        spec, path, ("name", "network_service_names", "network_service_labels", "url"),
        ignored=("expiration_time", "initial_registration_time", "path_ids"),
    )
    services: list[str] = []
    raw, where = fields.get("network_service_names", (None, field_path(path, "network_service_names")))
    for index, value in enumerate(check.sequence(raw, where) or []):
        service = check.name(value, item_path(where, index), subdomain=True)
        if service is not None and service in services:
            check.note(item_path(where, index), f"network service {_q(service)} is listed twice")
        elif service is not None:
            services.append(service)
    service_labels: dict[str, FrozenMap] = {}
    raw, where = fields.get("network_service_labels", (None, field_path(path, "network_service_labels")))
    for service, value in (check.mapping(raw, where) or {}).items():
        service_path = key_path(where, str(service))
        if service not in services:
            check.error(service_path, f"expected a service in network_service_names {_qs(services)}, "
                        f"found {describe_value(service)}")
            continue
        inner = check.mapping(value, service_path)
        if inner is None:
            continue
        labels = check.fields(inner, service_path, ("labels",))
        if "labels" in labels:
            parsed = check.labels(*labels["labels"])
            if parsed is not None:
                service_labels[service] = parsed
    url = ""
    if "url" in fields and fields["url"][0] is not None:
        url = check.string(*fields["url"]) or ""
    attachments: list[Attachment] = []
    text, where = _annotation(check, meta, obj, ATTACHMENTS_ANNOTATION)
    for index, entry in enumerate(text.split(",") if text else []):
        try:
            attachment = Attachment.parse(entry.strip(), item_path(where, index))
        except ModelError as e:
            check.error(e.path, expected(_ATTACHMENT_FORM, entry.strip()))
            continue
        if attachment in attachments:
            check.note(item_path(where, index), f"attachment {attachment} is listed twice")
        else:
            attachments.append(attachment)
    if check.errors or meta.name is None:
        return None
    return Endpoint(
        meta.name, meta.namespace, tuple(services), FrozenMap(service_labels), tuple(attachments), url
    )


@dataclass(frozen=True)
class _Entry:
    """One parsed client annotation entry, before it is tied to a pod."""

    path: str
    service: str
    domain: str
    ifname: str
    labels: FrozenMap


_ATTACHMENT_FORM = "<switch>/<port> (names of letters, digits, '_', '.', ':' and '-')"
_ENTRY_FORM = "kernel://<service>[@<domain>]/<ifname>?<label>=<value>&… or <service>/<ifname>"


def _client_entries(check: _Check, text: str | None, path: str) -> list[_Entry]:
    """Parse NSM's client annotation; a repeated interface name is noted and dropped (first wins)."""
    entries: list[_Entry] = []
    for index, raw in enumerate(text.split(",") if text else []):
        entry = _client_entry(check, raw.strip(), item_path(path, index))
        if entry is None:
            continue
        clash = next((e for e in entries if e.ifname == entry.ifname), None)
        if clash is not None:
            check.note(entry.path, f"interface {_q(entry.ifname)} is already requested by {clash.path}")
        else:
            entries.append(entry)
    return entries


def _client_entry(check: _Check, text: str, path: str) -> _Entry | None:
    if not text:
        check.error(path, f"expected {_ENTRY_FORM}, found an empty entry")
        return None
    rest = text
    if "://" in text:
        scheme, rest = text.split("://", 1)
        if scheme.lower() != "kernel":
            check.error(path, f"expected mechanism kernel://, found {scheme}:// in {describe_value(text)}")
            return None
    rest, _, query = rest.partition("?")
    target, _, ifname = rest.partition("/")
    service, at, domain = target.partition("@")
    if "/" in ifname:
        check.error(path, f"expected {_ENTRY_FORM}, found more than one '/' in {describe_value(text)}")
        return None
    errors = len(check.errors)
    ifname = ifname or DEFAULT_IFNAME
    if not _IFNAME_RE.match(ifname):
        check.error(path, f"expected {_IFNAME_RULE}, found interface {describe_value(ifname)}")
    if not service:
        check.error(path, f"expected {_ENTRY_FORM}, found no network service in {describe_value(text)}")
    elif not is_dns1123_subdomain(service):
        check.error(path, f"expected network service {SUBDOMAIN_RULE}, found {describe_value(service)}")
    if at and not is_dns1123_subdomain(domain):
        check.error(path, f"expected domain {SUBDOMAIN_RULE}, found {describe_value(domain)}")
    labels = _query_labels(check, query, path)
    if len(check.errors) > errors or labels is None:
        return None
    return _Entry(path, service, domain, ifname, labels)


def _query_labels(check: _Check, query: str, path: str) -> FrozenMap | None:
    labels: dict[str, str] = {}
    ok = True
    for pair in query.split("&") if query else []:
        if "=" not in pair:
            check.error(path, expected("<label>=<value> in the query", pair))
            ok = False
            continue
        raw_key, raw_value = pair.split("=", 1)
        key, value = unquote_plus(raw_key), unquote_plus(raw_value)
        if not _label_key_ok(key):
            check.error(path, f"expected {_LABEL_KEY_RULE} in the query, found {describe_value(key)}")
            ok = False
        elif not _label_value_ok(value, templates=False):
            check.error(path,
                        f"expected {_LABEL_VALUE_RULE} for label {_q(key)}, found {describe_value(value)}")
            ok = False
        elif key in labels:
            check.error(path, f"expected each label once in the query, found {_q(key)} twice")
            ok = False
        else:
            labels[key] = value
    return FrozenMap(labels) if ok else None


def _pod_attachments(check: _Check, text: str | None, path: str) -> dict[str, tuple[Attachment, str]]:
    """``ifname=switch/port,…`` → ifname → (attachment, entry path)."""
    out: dict[str, tuple[Attachment, str]] = {}
    for index, raw in enumerate(text.split(",") if text else []):
        entry, where = raw.strip(), item_path(path, index)
        ifname, eq, spec = entry.partition("=")
        if not eq:
            check.error(where, expected("<ifname>=<switch>/<port>", entry))
            continue
        ifname = ifname.strip()
        if not _IFNAME_RE.match(ifname):
            check.error(where, f"expected {_IFNAME_RULE}, found interface {describe_value(ifname)}")
            continue
        try:
            attachment = Attachment.parse(spec.strip(), where)
        except ModelError as e:
            check.error(e.path, f"expected <ifname>={_ATTACHMENT_FORM}, found {describe_value(entry)}")
            continue
        if ifname in out:
            check.note(where, f"interface {_q(ifname)} already has attachment {out[ifname][0]}")
        else:
            out[ifname] = (attachment, where)
    return out


def _raw_annotations(body: dict) -> dict:
    """The annotations of an object before validation, to decide whether it concerns us at all."""
    metadata = body.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    return annotations if isinstance(annotations, dict) else {}


def _pod_requests(
    check: _Check, obj: _Object, inherited: Mapping[str, list[_Entry]]
) -> list[ClientRequest] | None:
    """A Pod's client requests, or None when the pod is not an NSM client at all."""
    annotations = _raw_annotations(obj.body)
    metadata = obj.body.get("metadata")
    namespace = metadata.get("namespace") if isinstance(metadata, dict) else None
    own = annotations.get(CLIENT_ANNOTATION)
    has_own = not (own is None or (isinstance(own, str) and not own.strip()))
    from_namespace = inherited.get(namespace or DEFAULT_NAMESPACE, [])
    if not has_own and not from_namespace and ATTACHMENTS_ANNOTATION not in annotations:
        return None
    meta = _metadata(check, obj)
    text, where = _annotation(check, meta, obj, CLIENT_ANNOTATION)
    # NSM applies the Namespace's annotation only to pods that have none of their own.
    entries = _client_entries(check, text, where) if has_own else list(from_namespace)
    text, where = _annotation(check, meta, obj, ATTACHMENTS_ANNOTATION)
    attachments = _pod_attachments(check, text, where)
    requested = [e.ifname for e in entries]
    for ifname, (_, entry_path) in attachments.items():
        if not requested:
            check.error(entry_path, f"expected an interface the pod requests, found {_q(ifname)} but neither "
                        f"the pod nor its Namespace has the {CLIENT_ANNOTATION} annotation")
        elif ifname not in requested:
            check.error(entry_path,
                        f"expected an interface the pod requests {_qs(requested)}, found {_q(ifname)}")
    if check.errors or meta.name is None:
        return []
    return [
        ClientRequest(
            pod=meta.name, ifname=e.ifname, service=e.service, namespace=meta.namespace, labels=e.labels,
            attachment=attachments[e.ifname][0] if e.ifname in attachments else None, domain=e.domain,
        )
        for e in entries
    ]


# -- documents ----------------------------------------------------------------------------------

_NSM_KINDS = ("NetworkService", "NetworkServiceEndpoint")
_CORE_KINDS = ("Pod", "Namespace")
_OUR_GROUP = SLA_API_VERSION.rpartition("/")[0]
_OUR_KINDS = (SLA_KIND,)
_POLICY_GROUP = POLICY_API_VERSION.rpartition("/")[0]


def _objects(doc: Document, body: object, base: str, problems: list[Problem]) -> Iterator[_Object]:
    """The objects of ours in one document, Lists flattened; what is not an object is a Problem."""
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
            yield from _objects(doc, item, item_path(items_path, index), problems)
        return
    if (group == NSM_GROUP and kind in _NSM_KINDS) or (group == "" and kind in _CORE_KINDS) or (
            group == _OUR_GROUP and kind in _OUR_KINDS) or (group == _POLICY_GROUP and kind == POLICY_KIND):
        yield _Object(doc, base, body, kind)


def _version_ok(check: _Check, obj: _Object) -> bool:
    """Checked with the object, not before, so that an object of the wrong version still has a key."""
    api = obj.body["apiVersion"]
    if obj.kind in _OUR_KINDS or obj.kind == POLICY_KIND:
        return True  # parse_service_level and validate_policy check their own version
    if api.rpartition("/")[2] == "v1":
        return True
    version = NSM_API_VERSION if obj.kind in _NSM_KINDS else "v1"
    check.error(field_path(obj.base, "apiVersion"), expected(f"{version} for kind {obj.kind}", api))
    return False


def _report(obj: _Object, check: _Check, problems: list[Problem]) -> None:
    problems.extend(check.problems(obj.doc.source, obj.doc.index))


def _duplicate(obj: _Object, key: tuple, seen: dict[tuple, _Object], problems: list[Problem]) -> bool:
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


def _rawkey_path(obj: _Object) -> ObjectKey | None:
    """The object's key read before validation, so a broken object can be matched; None if unreadable."""
    meta = obj.body.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    name, namespace = meta.get("name"), meta.get("namespace") or DEFAULT_NAMESPACE
    if not isinstance(name, str) or not name or not isinstance(namespace, str):
        return None
    return (obj.kind, name) if obj.kind == "Namespace" else (obj.kind, namespace, name)


def _service_level(check: _Check, obj: _Object) -> ServiceLevel | None:
    """A ServiceLevel of ours (sla.py validates it, naming fields the same way)."""
    level, problems = parse_service_level(obj.body, obj.base)
    for problem in problems:
        check.error(problem.path, problem.message)
    return level


def _namespace(check: _Check, obj: _Object) -> list[_Entry] | None:
    """The client annotation entries a Namespace gives its pods; None if it has no such annotation."""
    if CLIENT_ANNOTATION not in _raw_annotations(obj.body):
        return None
    meta = _metadata(check, obj, namespaced=False)
    text, where = _annotation(check, meta, obj, CLIENT_ANNOTATION)
    return _client_entries(check, text, where)


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
        self, key: tuple, keep_alive: tuple, run: Callable[[_Check], object]
    ) -> tuple[_Check, object]:
        """(check, result) of ``run`` for ``key``, from the last parse when it was there."""
        hit = self._entries.get(key) or self._used.get(key)
        if hit is None:
            check = _Check()
            result = run(check)
            hit = (keep_alive, tuple(check.errors), tuple(check.notes), result)
        self._used[key] = hit
        check = _Check()
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
        self.seen: dict[tuple, _Object] = {}
        self.problems: list[Problem] = []

    def _validate(
        self, obj: _Object, validate: Callable[[_Check, _Object], object], context: object
    ) -> tuple[_Check, object]:
        def run(check: _Check) -> object:
            return validate(check, obj) if _version_ok(check, obj) else None

        if self.memo is None:
            check = _Check()
            return check, run(check)
        # ``context`` is what else the result depends on (a Pod's Namespace entries), held alike.
        key = (id(obj.body), obj.base, obj.kind, id(context))
        return self.memo.validated(key, (obj.body, context), run)

    def accept(
        self, objects: list[_Object], validate: Callable[[_Check, _Object], object],
        context: Callable[[_Object], object] = lambda obj: None,
    ) -> list[tuple[ObjectKey, object]]:
        """(key, result of ``validate``) of each object that applies, in order, kept versions last.

        ``validate`` returns None for an object that is not ours (a Pod without NSM annotations).
        """
        accepted: list[tuple[ObjectKey, object]] = []
        broken: list[tuple[ObjectKey, _Object]] = []
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
            check = _Check()
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
    objects = [obj for doc in documents for obj in _objects(doc, doc.body, "", parser.problems)]
    namespaces = parser.accept([obj for obj in objects if obj.kind == "Namespace"], _namespace)
    inherited = {key[1]: entries for key, entries in namespaces}

    def validate(check: _Check, obj: _Object) -> object:
        if obj.kind == "Pod":
            # An empty list is a Pod that is ours but broken; its errors are in ``check``.
            return _pod_requests(check, obj, inherited)
        if obj.kind == SLA_KIND:
            return _service_level(check, obj)
        if obj.kind == POLICY_KIND:
            return validate_policy(check, obj.body, obj.base)
        return _network_service(check, obj) if obj.kind == "NetworkService" else _endpoint(check, obj)

    def context(obj: _Object) -> object:
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
    order = {(doc.source, doc.index): position for position, doc in enumerate(documents)}
    problems = sorted(parser.problems, key=lambda p: order[(p.source, p.index)])
    resources = Resources(tuple(services), tuple(endpoints), tuple(requests), tuple(problems), tuple(levels),
                          replace(facts, policies=tuple(policies)))
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
            if match.metadata:
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
