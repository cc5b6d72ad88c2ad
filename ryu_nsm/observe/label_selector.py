"""Label selectors as Hubble's label filters read them: Kubernetes' selector syntax (apimachinery's
``labels.Parse``) over Cilium labels, whose keys may carry a source prefix (``k8s:app``).

Grammar (comma-separated requirements, all must hold): ``key``, ``!key``, ``key=v``, ``key==v``,
``key!=v``, ``key in (v1,v2)``, ``key notin (v1,v2)``, ``key>n``, ``key<n``. As Kubernetes, ``!=``
and ``notin`` also hold when the key is absent; the empty selector selects everything.

Sources as Cilium's (pkg/labels, pkg/hubble/filters/labelparser.go): a label string
``k8s:app=foo`` has source ``k8s``; one without a prefix has source ``unspec``. A selector key
without a prefix has source ``any`` and matches the key from every source; ``k8s:app`` only the
``k8s`` one. No Python library parses Kubernetes selectors (the kubernetes client passes them to
the API server as strings), hence this small parser. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

ANY_SOURCE = "any"
UNSPEC_SOURCE = "unspec"

# Kubernetes' validation of qualified names (keys) and label values.
_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_SPECIAL = "!=(),<>"
_EXACT = ("=", "==", "!=")
_SET = ("in", "notin")
_ORDER = ("<", ">")


@dataclass(frozen=True)
class Label:
    source: str
    key: str
    value: str = ""


def parse_label(text: str) -> Label:
    """A label string as Cilium's ParseLabel reads it: ``[SOURCE:]KEY[=VALUE]``, ``$KEY`` reserved."""
    if text.startswith("$"):
        source, rest = "reserved", text[1:]
    else:
        source, colon, rest = text.partition(":")
        if not colon:
            source, rest = UNSPEC_SOURCE, text
    key, _, value = rest.partition("=")
    return Label(source, key, value)


@dataclass(frozen=True)
class Requirement:
    source: str  # ANY_SOURCE, or the one source the key must come from
    key: str
    operator: str  # "exists", "!", one of _EXACT, _SET or _ORDER
    values: frozenset[str] = frozenset()

    def matches(self, labels: Sequence[Label]) -> bool:
        found = next((label.value for label in labels if label.key == self.key
                      and self.source in (ANY_SOURCE, label.source)), None)
        op = self.operator
        if op == "exists":
            return found is not None
        if op in ("!", "!=", "notin"):
            return found is None or (op != "!" and found not in self.values)
        if found is None:
            return False
        if op in _ORDER:
            (bound,) = self.values
            number = _integer(found)
            return number is not None and (number < int(bound) if op == "<" else number > int(bound))
        return found in self.values


@dataclass(frozen=True)
class Selector:
    text: str
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Sequence[Label]) -> bool:
        return all(requirement.matches(labels) for requirement in self.requirements)


def parse_selector(text: str) -> Selector:
    """The selector ``text``; ValueError saying what is wrong and where."""
    tokens = _tokens(text)
    requirements = []
    pos = 0
    while pos < len(tokens):
        try:
            requirement, pos = _requirement(tokens, pos)
        except ValueError as exc:
            raise ValueError(f"invalid label selector {text!r}: {exc}") from None
        requirements.append(requirement)
        if pos < len(tokens):
            if tokens[pos] != ",":
                raise ValueError(f"invalid label selector {text!r}: expected ',' before {tokens[pos]!r}")
            pos += 1
            if pos == len(tokens):
                raise ValueError(f"invalid label selector {text!r}: ends with ','")
    return Selector(text, tuple(requirements))


def _tokens(text: str) -> list[str]:
    """Kubernetes' lexer: the operators and parentheses, and identifiers between them."""
    tokens = []
    for match in re.finditer(r"!=|==|[!=(),<>]|[^\s!=(),<>]+|\s+", text):
        if not match.group().isspace():
            tokens.append(match.group())
    return tokens


def _shown(token: str | None) -> str:
    return "the end" if token is None else repr(token)


def _is_identifier(token: str | None) -> bool:
    return token is not None and token[0] not in _SPECIAL


def _requirement(tokens: list[str], pos: int) -> tuple[Requirement, int]:
    def at(i: int) -> str | None:
        return tokens[i] if i < len(tokens) else None

    negated = at(pos) == "!"
    pos += negated
    if not _is_identifier(at(pos)) or at(pos) in _SET:
        raise ValueError(f"expected a label key, found {_shown(at(pos))}")
    source, key = _key(tokens[pos])
    pos += 1
    if negated or at(pos) in (None, ","):
        return Requirement(source, key, "!" if negated else "exists"), pos
    op = tokens[pos]
    pos += 1
    if op in _SET:
        values, pos = _value_set(tokens, pos, at)
    elif op in _EXACT + _ORDER:
        value = tokens[pos] if _is_identifier(at(pos)) else ""
        pos += bool(value)
        if op in _ORDER and _integer(value) is None:
            raise ValueError(f"{key} {op} needs an integer, not {value!r}")
        values = frozenset({value})
    else:
        raise ValueError(f"expected an operator after {key!r} (=, ==, !=, in, notin, <, >), found {op!r}")
    for value in values:
        _check_value(value)
    return Requirement(source, key, op, values), pos


def _value_set(tokens: list[str], pos: int, at) -> tuple[frozenset[str], int]:
    if at(pos) != "(":
        raise ValueError(f"expected '(' after in/notin, found {_shown(at(pos))}")
    pos += 1
    if at(pos) == ")":
        raise ValueError("in/notin needs at least one value")
    values = set()
    while True:
        value = tokens[pos] if _is_identifier(at(pos)) else ""
        values.add(value)
        pos += bool(value)
        if at(pos) == ")":
            return frozenset(values), pos + 1
        if at(pos) != ",":
            raise ValueError(f"expected ',' or ')' in a value set, found {_shown(at(pos))}")
        pos += 1


def _key(token: str) -> tuple[str, str]:
    """(source, key) of a selector key; checked as Kubernetes checks ``source.key`` (the form
    Hubble translates ``source:key`` into)."""
    source, colon, key = token.partition(":")
    if not colon:
        source, key = ANY_SOURCE, token
    prefix, slash, name = f"{source}.{key}".rpartition("/")
    if (not _NAME.fullmatch(name) or len(name) > 63
            or slash and (not _DNS_SUBDOMAIN.fullmatch(prefix) or len(prefix) > 253)):
        raise ValueError(f"not a valid label key: {token!r} (Kubernetes' [prefix/]name, "
                         "optionally after a source such as k8s:)")
    return source, key


def _check_value(value: str) -> None:
    if value and (not _NAME.fullmatch(value) or len(value) > 63):
        raise ValueError(f"not a valid label value: {value!r}")


def _integer(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None
