"""MultiNetworkPolicy documents → frozen policy objects; Pods, NSEs and Namespaces → the labels and
named ports policies are matched on. No I/O; the format is in docs/policy.md."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from ryu_nsm.core.policy_model import (
    EGRESS,
    INGRESS,
    OPERATORS,
    POLICY_API_VERSION,
    POLICY_FOR_ANNOTATION,
    PROTOCOLS,
    IPBlock,
    LabelSelector,
    MultiNetworkPolicy,
    NetworkRef,
    Peer,
    PolicyInputs,
    PolicyPort,
    PolicyRule,
    Requirement,
    Workload,
)
from ryu_nsm.core.validation import Check, Problem, expected, field_path, item_path, key_path
from ryu_nsm.core.values import DEFAULT_NAMESPACE, EMPTY, FrozenMap

PORTS_ANNOTATION = "ryu-nsm.io/ports"  # named ports of a workload: "http=8080/TCP,dns=53/UDP"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # IANA_SVC_NAME: at most 15 characters
_NAME_RULE = "a DNS-1123 label (lowercase letters, digits and '-')"


def _name(check: Check, value: object, path: str) -> str | None:
    text = check.string(value, path)
    if text is not None and not (len(text) <= 63 and _NAME.match(text)):
        check.error(path, expected(_NAME_RULE, text))
        return None
    return text


def _string_map(check: Check, value: object, path: str) -> FrozenMap | None:
    mapping = check.mapping(value, path)
    if mapping is None:
        return None
    out = {}
    for key, raw in mapping.items():
        text = check.string(raw, key_path(path, str(key)))
        if text is None or not isinstance(key, str):
            return None
        out[key] = text
    return FrozenMap(out)


def _selector(check: Check, value: object, path: str) -> LabelSelector | None:
    raw = check.mapping(value, path)
    if raw is None:
        return None
    fields = check.fields(raw, path, ("matchLabels", "matchExpressions"))
    labels = EMPTY
    if "matchLabels" in fields:
        labels = _string_map(check, *fields["matchLabels"])
    requirements = []
    if "matchExpressions" in fields:
        value, where = fields["matchExpressions"]
        for i, item in enumerate(check.sequence(value, where) or ()):
            requirement = _requirement(check, item, item_path(where, i))
            if requirement is not None:
                requirements.append(requirement)
    if labels is None or check.errors:
        return None
    return LabelSelector(labels, tuple(requirements))


def _requirement(check: Check, value: object, path: str) -> Requirement | None:
    raw = check.mapping(value, path)
    if raw is None:
        return None
    fields = check.fields(raw, path, ("key", "operator", "values"))
    if "key" not in fields or "operator" not in fields:
        check.error(path, expected("a mapping with key and operator", raw))
        return None
    key = check.string(*fields["key"])
    operator = check.string(*fields["operator"])
    if operator is not None and operator not in OPERATORS:
        check.error(fields["operator"][1], expected(f"one of {', '.join(OPERATORS)}", operator))
        return None
    values: list[str] = []
    if "values" in fields:
        value, where = fields["values"]
        for i, item in enumerate(check.sequence(value, where) or ()):
            text = check.string(item, item_path(where, i))
            if text is not None:
                values.append(text)
    if operator in ("In", "NotIn") and not values:
        check.error(fields.get("values", (None, path))[1], f"operator {operator} needs at least one value")
    elif operator in ("Exists", "DoesNotExist") and values:
        check.error(fields["values"][1], f"operator {operator} takes no values")
    if key is None or operator is None:
        return None
    return Requirement(key, operator, tuple(values))


def _network(value: object):
    """An IP network from its CIDR text, or None."""
    try:
        return ipaddress.ip_network(value, strict=False) if isinstance(value, str) else None
    except ValueError:
        return None


def _ip_block(check: Check, value: object, path: str) -> IPBlock | None:
    raw = check.mapping(value, path)
    if raw is None:
        return None
    fields = check.fields(raw, path, ("cidr", "except"))
    if "cidr" not in fields:
        check.error(field_path(path, "cidr"), expected("a CIDR such as 10.0.0.0/24", None))
        return None
    cidr = _network(fields["cidr"][0])
    if cidr is None:
        check.error(fields["cidr"][1], expected("a CIDR such as 10.0.0.0/24", fields["cidr"][0]))
        return None
    excepts = []
    if "except" in fields:
        value, where = fields["except"]
        for i, item in enumerate(check.sequence(value, where) or ()):
            net = _network(item)
            if net is None or net.version != cidr.version or not net.subnet_of(cidr):
                check.error(item_path(where, i), expected(f"a CIDR inside {cidr}", item))
            else:
                excepts.append(net)
    return IPBlock(cidr, tuple(excepts))


def _peer(check: Check, value: object, path: str) -> Peer | None:
    raw = check.mapping(value, path)
    if raw is None:
        return None
    fields = check.fields(raw, path, ("podSelector", "namespaceSelector", "ipBlock"))
    if not fields:
        check.error(path, expected("podSelector, namespaceSelector or ipBlock", raw))
        return None
    if "ipBlock" in fields and len(fields) > 1:
        check.error(path, "ipBlock may not be given with podSelector or namespaceSelector")
        return None
    pods = _selector(check, *fields["podSelector"]) if "podSelector" in fields else None
    namespaces = _selector(check, *fields["namespaceSelector"]) if "namespaceSelector" in fields else None
    block = _ip_block(check, *fields["ipBlock"]) if "ipBlock" in fields else None
    return Peer(pods, namespaces, block)


def _port(check: Check, value: object, path: str) -> PolicyPort | None:
    raw = check.mapping(value, path)
    if raw is None:
        return None
    fields = check.fields(raw, path, ("protocol", "port", "endPort"))
    protocol = "TCP"
    if "protocol" in fields:
        protocol = check.string(*fields["protocol"])
        if protocol is not None and protocol not in PROTOCOLS:
            check.error(fields["protocol"][1], expected("TCP, UDP or SCTP", protocol))
    port = end = None
    if "port" in fields:
        port, where = fields["port"]
        if isinstance(port, str) and not port.isdigit():
            if not (len(port) <= 15 and _PORT_NAME.match(port)):
                check.error(where, expected("a port number 1-65535 or a port name", port))
        elif isinstance(port, bool) or not isinstance(port, int | str) or not 1 <= int(port) <= 65535:
            check.error(where, expected("a port number 1-65535 or a port name", port))
        else:
            port = int(port)
    if "endPort" in fields:
        end, where = fields["endPort"]
        if not isinstance(port, int):
            check.error(where, "endPort needs a numbered port")
        elif isinstance(end, bool) or not isinstance(end, int) or not port <= end <= 65535:
            check.error(where, expected(f"a port number from port ({port}) to 65535", end))
    if check.errors:
        return None
    return PolicyPort(protocol, port, end)


def _rules(check: Check, value: object, path: str, peers_field: str) -> tuple[PolicyRule, ...]:
    rules = []
    for i, item in enumerate(check.sequence(value, path) or ()):
        where = item_path(path, i)
        raw = check.mapping(item, where)
        if raw is None:
            continue
        fields = check.fields(raw, where, (peers_field, "ports"))
        peers = _each(check, fields.get(peers_field), _peer)
        ports = _each(check, fields.get("ports"), _port)
        rules.append(PolicyRule(tuple(peers), tuple(ports)))
    return tuple(rules)


def _each(check: Check, found: tuple[object, str] | None, parse) -> list:
    if found is None:
        return []
    value, path = found
    items = [parse(check, item, item_path(path, i))
             for i, item in enumerate(check.sequence(value, path) or ())]
    return [item for item in items if item is not None]


def _networks(check: Check, text: object, path: str, namespace: str) -> tuple[NetworkRef, ...]:
    if text is None:
        return ()
    text = check.string(text, path)
    refs = []
    for part in (text or "").split(","):
        ns, _, name = part.strip().rpartition("/")
        if not _NAME.match(name) or (ns and not _NAME.match(ns)):
            check.error(path, expected("<namespace>/<network service>[,…]", text))
            return ()
        refs.append(NetworkRef(ns or namespace, name))
    return tuple(refs)


def validate_policy(check: Check, body: dict, base: str) -> MultiNetworkPolicy | None:
    """A MultiNetworkPolicy from its document, with each problem at its field path in ``check``."""
    if body.get("apiVersion") != POLICY_API_VERSION:
        check.error(field_path(base, "apiVersion"), expected(POLICY_API_VERSION, body.get("apiVersion")))
    meta = check.mapping(body.get("metadata"), field_path(base, "metadata")) or {}
    name = _name(check, meta.get("name"), field_path(base, "metadata.name"))
    namespace = meta.get("namespace") or DEFAULT_NAMESPACE
    namespace = _name(check, namespace, field_path(base, "metadata.namespace")) or DEFAULT_NAMESPACE
    annotations = check.mapping(meta.get("annotations"), field_path(base, "metadata.annotations")) or {}
    networks = _networks(check, annotations.get(POLICY_FOR_ANNOTATION),
                         key_path(field_path(base, "metadata.annotations"), POLICY_FOR_ANNOTATION), namespace)
    spec_path = field_path(base, "spec")
    spec = check.mapping(body.get("spec"), spec_path) or {}
    fields = check.fields(spec, spec_path, ("podSelector", "policyTypes", "ingress", "egress"))
    if "podSelector" not in fields:
        check.error(field_path(spec_path, "podSelector"), expected("a label selector ({} selects all)", None))
        return None
    selector = _selector(check, *fields["podSelector"])
    ingress = _rules(check, *fields["ingress"], "from") if "ingress" in fields else ()
    egress = _rules(check, *fields["egress"], "to") if "egress" in fields else ()
    types = _policy_types(check, fields.get("policyTypes"), "egress" in fields)
    if check.errors or name is None or selector is None:
        return None
    if not networks:
        check.note(field_path(base, "metadata.annotations"),
                   f"no {POLICY_FOR_ANNOTATION} annotation: the policy governs no network service")
    return MultiNetworkPolicy(name, namespace, networks, selector, types, ingress, egress)


def _policy_types(check: Check, found: tuple[object, str] | None, has_egress: bool) -> tuple[str, ...]:
    """As NetworkPolicy: Ingress always, Egress when the policy has egress rules, unless given."""
    if found is None:
        return (INGRESS, EGRESS) if has_egress else (INGRESS,)
    value, path = found
    types = []
    for i, item in enumerate(check.sequence(value, path) or ()):
        if item not in (INGRESS, EGRESS):
            check.error(item_path(path, i), expected("Ingress or Egress", item))
        elif item not in types:
            types.append(item)
    return tuple(types)


def _named_ports(text: object) -> tuple[FrozenMap, str | None]:
    """Named ports of ``http=8080/TCP,dns=53/UDP`` (protocol TCP when left out), or why not."""
    if not isinstance(text, str):
        return EMPTY, expected("a string such as http=8080/TCP", text)
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, rest = part.partition("=")
        number, _, protocol = rest.partition("/")
        protocol = protocol or "TCP"
        if not _PORT_NAME.match(name) or not number.isdigit() or not 1 <= int(number) <= 65535 or (
                protocol not in PROTOCOLS):
            return EMPTY, expected("name=port[/TCP|UDP|SCTP][,…]", text)
        out[name] = (protocol, int(number))
    return FrozenMap(out), None


def workload_facts(objects: Iterable[tuple[str, int, str, str, dict]]) -> tuple[PolicyInputs, list[Problem]]:
    """Labels and named ports of Pods and NSEs, labels of Namespaces, from (source, index, base,
    kind, body) of each object: what policies are matched on. Kubernetes checked the labels."""
    pods, endpoints, namespaces, problems = {}, {}, {}, []
    for source, index, base, kind, body in objects:
        meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
        name, labels = meta.get("name"), meta.get("labels")
        if not isinstance(name, str):
            continue
        labels = FrozenMap({k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)}
                           if isinstance(labels, dict) else {})
        if kind == "Namespace":
            if labels:  # an object without labels or named ports is the default: not kept
                namespaces[name] = labels
            continue
        annotations = meta.get("annotations") if isinstance(meta.get("annotations"), dict) else {}
        ports = EMPTY
        if PORTS_ANNOTATION in annotations:
            ports, problem = _named_ports(annotations[PORTS_ANNOTATION])
            if problem:
                path = key_path(field_path(base, "metadata.annotations"), PORTS_ANNOTATION)
                problems.append(Problem(source, index, path, problem))
        if labels or ports:
            key = (meta.get("namespace") or DEFAULT_NAMESPACE, name)
            (pods if kind == "Pod" else endpoints)[key] = Workload(labels, ports)
    return PolicyInputs((), FrozenMap(pods), FrozenMap(endpoints), FrozenMap(namespaces)), problems
