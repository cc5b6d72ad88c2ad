"""NSM's clients: Pods and Namespaces with the ``networkservicemesh.io`` annotation → client requests.

The annotation's grammar (NSM's ``kernel://service/ifname?label=value``) and ryu-nsm's attachments
annotation are in docs/requests.md. No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote_plus

from ryu_nsm.core.model import Attachment, ClientRequest, ModelError
from ryu_nsm.core.validation import describe_value, expected, item_path
from ryu_nsm.core.values import DEFAULT_NAMESPACE, FrozenMap
from ryu_nsm.sources.kube_objects import (
    ATTACHMENT_FORM,
    ATTACHMENTS_ANNOTATION,
    CLIENT_ANNOTATION,
    IFNAME_RE,
    IFNAME_RULE,
    LABEL_KEY_RULE,
    SUBDOMAIN_RULE,
    KubeCheck,
    KubeObject,
    is_dns1123_subdomain,
    label_key_ok,
    quoted,
    quoted_list,
    read_annotation,
    read_metadata,
)

DEFAULT_IFNAME = "nsm-1"


@dataclass(frozen=True)
class ClientEntry:
    """One parsed client annotation entry, before it is tied to a pod."""

    path: str
    service: str
    domain: str
    ifname: str
    labels: FrozenMap


_ENTRY_FORM = "kernel://<service>[@<domain>]/<ifname>?<label>=<value>&… or <service>/<ifname>"


def _client_entries(check: KubeCheck, text: str | None, path: str) -> list[ClientEntry]:
    """Parse NSM's client annotation; a repeated interface name is noted and dropped (first wins)."""
    entries: list[ClientEntry] = []
    for index, raw in enumerate(text.split(",") if text else []):
        entry = _client_entry(check, raw.strip(), item_path(path, index))
        if entry is None:
            continue
        clash = next((e for e in entries if e.ifname == entry.ifname), None)
        if clash is not None:
            check.note(entry.path, f"interface {quoted(entry.ifname)} is already requested by {clash.path}")
        else:
            entries.append(entry)
    return entries


def _client_entry(check: KubeCheck, text: str, path: str) -> ClientEntry | None:
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
    if not IFNAME_RE.match(ifname):
        check.error(path, f"expected {IFNAME_RULE}, found interface {describe_value(ifname)}")
    if not service:
        check.error(path, f"expected {_ENTRY_FORM}, found no network service in {describe_value(text)}")
    elif not is_dns1123_subdomain(service):
        check.error(path, f"expected network service {SUBDOMAIN_RULE}, found {describe_value(service)}")
    if at and not is_dns1123_subdomain(domain):
        check.error(path, f"expected domain {SUBDOMAIN_RULE}, found {describe_value(domain)}")
    labels = _query_labels(check, query, path)
    if len(check.errors) > errors or labels is None:
        return None
    return ClientEntry(path, service, domain, ifname, labels)


def _query_labels(check: KubeCheck, query: str, path: str) -> FrozenMap | None:
    labels: dict[str, str] = {}
    ok = True
    for pair in query.split("&") if query else []:
        if "=" not in pair:
            check.error(path, expected("<label>=<value> in the query", pair))
            ok = False
            continue
        raw_key, raw_value = pair.split("=", 1)
        key, value = unquote_plus(raw_key), unquote_plus(raw_value)
        if not label_key_ok(key):
            check.error(path, f"expected {LABEL_KEY_RULE} in the query, found {describe_value(key)}")
            ok = False
        elif key in labels:
            check.error(path, f"expected each label once in the query, found {quoted(key)} twice")
            ok = False
        else:
            labels[key] = value
    return FrozenMap(labels) if ok else None


def _pod_attachments(check: KubeCheck, text: str | None, path: str) -> dict[str, tuple[Attachment, str]]:
    """``ifname=switch/port,…`` → ifname → (attachment, entry path)."""
    out: dict[str, tuple[Attachment, str]] = {}
    for index, raw in enumerate(text.split(",") if text else []):
        entry, where = raw.strip(), item_path(path, index)
        ifname, eq, spec = entry.partition("=")
        if not eq:
            check.error(where, expected("<ifname>=<switch>/<port>", entry))
            continue
        ifname = ifname.strip()
        if not IFNAME_RE.match(ifname):
            check.error(where, f"expected {IFNAME_RULE}, found interface {describe_value(ifname)}")
            continue
        try:
            attachment = Attachment.parse(spec.strip(), where)
        except ModelError as e:
            check.error(e.path, f"expected <ifname>={ATTACHMENT_FORM}, found {describe_value(entry)}")
            continue
        if ifname in out:
            check.note(where, f"interface {quoted(ifname)} already has attachment {out[ifname][0]}")
        else:
            out[ifname] = (attachment, where)
    return out


def raw_annotations(body: dict) -> dict:
    """The annotations of an object before validation, to decide whether it concerns us at all."""
    metadata = body.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    return annotations if isinstance(annotations, dict) else {}


def parse_pod_requests(
    check: KubeCheck, obj: KubeObject, inherited: Mapping[str, list[ClientEntry]]
) -> list[ClientRequest] | None:
    """A Pod's client requests, or None when the pod is not an NSM client at all."""
    annotations = raw_annotations(obj.body)
    metadata = obj.body.get("metadata")
    namespace = metadata.get("namespace") if isinstance(metadata, dict) else None
    own = annotations.get(CLIENT_ANNOTATION)
    has_own = not (own is None or (isinstance(own, str) and not own.strip()))
    from_namespace = inherited.get(namespace or DEFAULT_NAMESPACE, [])
    if not has_own and not from_namespace and ATTACHMENTS_ANNOTATION not in annotations:
        return None
    meta = read_metadata(check, obj)
    text, where = read_annotation(check, meta, obj, CLIENT_ANNOTATION)
    # NSM applies the Namespace's annotation only to pods that have none of their own.
    entries = _client_entries(check, text, where) if has_own else list(from_namespace)
    text, where = read_annotation(check, meta, obj, ATTACHMENTS_ANNOTATION)
    attachments = _pod_attachments(check, text, where)
    requested = [e.ifname for e in entries]
    for ifname, (_, entry_path) in attachments.items():
        if not requested:
            check.error(entry_path, f"expected an interface the pod requests, found {quoted(ifname)} but "
                        f"neither the pod nor its Namespace has the {CLIENT_ANNOTATION} annotation")
        elif ifname not in requested:
            check.error(entry_path, f"expected an interface the pod requests {quoted_list(requested)}, "
                        f"found {quoted(ifname)}")
    if check.errors or meta.name is None:
        return []
    return [
        ClientRequest(
            pod=meta.name, ifname=e.ifname, service=e.service, namespace=meta.namespace, labels=e.labels,
            attachment=attachments[e.ifname][0] if e.ifname in attachments else None, domain=e.domain,
        )
        for e in entries
    ]

def parse_namespace(check: KubeCheck, obj: KubeObject) -> list[ClientEntry] | None:
    """The client annotation entries a Namespace gives its pods; None if it has no such annotation."""
    if CLIENT_ANNOTATION not in raw_annotations(obj.body):
        return None
    meta = read_metadata(check, obj, namespaced=False)
    text, where = read_annotation(check, meta, obj, CLIENT_ANNOTATION)
    return _client_entries(check, text, where)
