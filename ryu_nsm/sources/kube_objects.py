"""Reading Kubernetes objects: names, labels, metadata and annotations, checked as Kubernetes does.

The common kit of the document parser (``documents``) and its kinds (``nsm_kinds``, ``nsm_clients``).
No I/O; the rules are in docs/requests.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ryu_nsm.core.validation import Check, expected, field_path, key_path
from ryu_nsm.core.values import DEFAULT_NAMESPACE, FrozenMap

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
IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")

LABEL_RULE = (
    "a DNS-1123 label (at most 63 characters: lowercase letters, digits and '-', "
    "starting and ending with a letter or digit)"
)
SUBDOMAIN_RULE = (
    "a DNS-1123 subdomain (at most 253 characters: lowercase letters, digits, '-' and '.', "
    "each dot-separated part starting and ending with a letter or digit)"
)
LABEL_KEY_RULE = (
    "a label key ([prefix/]name: name at most 63 characters of letters, digits, '-', '_' and '.', "
    "starting and ending with a letter or digit; prefix a DNS-1123 subdomain)"
)
# NSM's registry takes any string as a label value, and every format of ryu-nsm carries one quoted
# (the client annotation percent-encoded, status in JSON): nothing more is asked of it.
LABEL_VALUE_RULE = "a string (quote it in YAML): a label value may be any string, as in NSM's registry"
IFNAME_RULE = (
    "an interface name (1-15 characters: letters, digits, '_', '.' and '-', not starting with a symbol)"
)


def quoted(text: str) -> str:
    return json.dumps(text)


def quoted_list(texts: Iterable[str]) -> str:
    return "[" + ", ".join(map(quoted, texts)) + "]"


def is_dns1123_label(text: str) -> bool:
    """True if ``text`` is a valid Kubernetes namespace name."""
    return len(text) <= 63 and bool(_LABEL_RE.match(text))


def is_dns1123_subdomain(text: str) -> bool:
    """True if ``text`` is a valid Kubernetes object name (Pods, NSM custom resources)."""
    return len(text) <= 253 and bool(_SUBDOMAIN_RE.match(text))


def label_key_ok(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and not (prefix and is_dns1123_subdomain(prefix)):
        return False
    return len(name) <= 63 and bool(_LABEL_NAME_RE.match(name))


class KubeCheck(Check):
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

    def labels(self, value: object, path: str) -> FrozenMap | None:
        """Labels: Kubernetes label keys → any string (selector values may be ``{{.label}}`` templates)."""
        mapping = self.mapping(value, path)
        if mapping is None:
            return None
        out: dict[str, str] = {}
        ok = True
        for key, raw in mapping.items():
            if not isinstance(key, str) or not label_key_ok(key):
                self.error(key_path(path, str(key)), expected(LABEL_KEY_RULE, key))
                ok = False
                continue
            if not isinstance(raw, str):
                self.error(key_path(path, key), expected(LABEL_VALUE_RULE, raw))
                ok = False
            else:
                out[key] = raw
        return FrozenMap(out) if ok else None

    def fields(
        self, mapping: dict, path: str, known: tuple[str, ...], ignored: tuple[str, ...] = ()
    ) -> dict[str, tuple[object, str]]:
        """Fields of NSM's registry messages: proto JSON's lowerCamelCase spelling is taken too."""
        return super().fields(mapping, path, known, ignored, camel_case=True)


# -- objects ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KubeObject:
    """A Kubernetes object found in a document (possibly inside a List) with its field path prefix."""

    doc: Document
    base: str
    body: dict
    kind: str


@dataclass
class Meta:
    name: str | None
    namespace: str
    annotations: dict


def read_metadata(check: KubeCheck, obj: KubeObject, namespaced: bool = True) -> Meta:
    path = field_path(obj.base, "metadata")
    meta = check.mapping(obj.body.get("metadata"), path)
    if meta is None:
        return Meta(None, DEFAULT_NAMESPACE, {})
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
    return Meta(name, namespace, annotations)


def read_annotation(check: KubeCheck, meta: Meta, obj: KubeObject, key: str) -> tuple[str | None, str]:
    """The value of one annotation (None if absent or blank) and its path."""
    path = key_path(field_path(field_path(obj.base, "metadata"), "annotations"), key)
    value = meta.annotations.get(key)
    if value is None:
        return None, path
    text = check.string(value, path)
    return (text if text and text.strip() else None), path


ATTACHMENT_FORM = "<switch>/<port> (names of letters, digits, '_', '.', ':' and '-')"
