"""ServiceLevel: what quality a network service promises its clients, validated into frozen objects.

The fields, their units, the cross-field rules and which level applies are in
docs/service-levels.md; bandwidths, sizes and durations follow docs/units.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from ryu_nsm.core.units import (
    BANDWIDTH_FORM,
    BYTES_FORM,
    DURATION_FORM,
    NUMBER,
    UnitError,
    decimal,
    format_bandwidth,
    format_bytes,
    format_duration,
    parse_bandwidth,
    parse_bytes,
    parse_duration,
)
from ryu_nsm.core.validation import Check, Problem, expected, field_path, key_path
from ryu_nsm.core.values import DEFAULT_NAMESPACE, EMPTY, FrozenMap

API_GROUP = "ryu-nsm.io"
API_VERSION = f"{API_GROUP}/v1alpha1"
KIND = "ServiceLevel"

PROTECTIONS = ("none", "disjoint")
MAX_PRIORITY = 1000
# OpenFlow 1.3 meter bands carry the rate in kbit/s in 32 bits.
MAX_RATE_LIMIT = (2**32 - 1) * 1000
MIN_RATE_LIMIT = 1000

DSCP_NAMES: dict[str, int] = {
    "DF": 0, "BE": 0, "LE": 1, "VA": 44, "EF": 46,
    **{f"CS{i}": 8 * i for i in range(8)},
    **{f"AF{c}{d}": 8 * c + 2 * d for c in range(1, 5) for d in range(1, 4)},
}

# The first name of a value is its usual one (DF, not BE or CS0).
_DSCP_BY_VALUE = {value: name for name, value in reversed(DSCP_NAMES.items())}
_SPEC_FIELDS = (
    "networkService", "clientSelector", "guaranteedBandwidth", "rateLimit", "burst", "maxLatency",
    "maxLoss", "dscp", "priority", "preemptible", "protection", "chainLatency", "flowSampling",
)
_LOSS = re.compile(rf"^ *{NUMBER} *(%?) *$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


@dataclass(frozen=True)
class ServiceLevel:
    """A validated ServiceLevel. Units: bit/s, bytes, seconds, loss as a fraction; None = not set."""

    name: str
    network_service: str
    namespace: str = DEFAULT_NAMESPACE
    client_selector: FrozenMap = EMPTY
    guaranteed_bandwidth: int | None = None
    rate_limit: int | None = None
    burst: int | None = None
    max_latency: float | None = None
    max_loss: float | None = None
    dscp: int | None = None
    priority: int = 0
    preemptible: bool = False
    protection: str = "none"
    chain_latency: bool = False
    flow_sampling: float | None = None  # the fraction of its frames sampled (docs/observability.md)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def protected(self) -> bool:
        return self.protection == "disjoint"

    def applies_to(self, service: str, namespace: str, client_labels: Mapping[str, str]) -> bool:
        """True when this level names ``service`` in ``namespace`` and its selector is in the labels."""
        return (
            self.network_service == service
            and self.namespace == namespace
            and all(client_labels.get(k) == v for k, v in self.client_selector.items())
        )

    def describe(self) -> dict:
        """JSON-able form for status output: base units (bit/s, bytes, s, fraction), unset omitted."""
        out: dict = {"name": self.name, "namespace": self.namespace, "networkService": self.network_service}
        if self.client_selector:
            out["clientSelector"] = {"matchLabels": self.client_selector.to_dict()}
        for key, value in (
            ("guaranteedBandwidth", self.guaranteed_bandwidth), ("rateLimit", self.rate_limit),
            ("burst", self.burst), ("maxLatency", self.max_latency), ("maxLoss", self.max_loss),
            ("dscp", self.dscp), ("flowSampling", self.flow_sampling),
        ):
            if value is not None:
                out[key] = value
        out.update(priority=self.priority, preemptible=self.preemptible, protection=self.protection,
                   chainLatency=self.chain_latency, summary=self.summary())
        return out

    def summary(self) -> str:
        """One line for people: '100Mbit/s guaranteed, ≤ 5ms end to end, DSCP EF, priority 100'."""
        parts = []
        if self.guaranteed_bandwidth is not None:
            parts.append(f"{format_bandwidth(self.guaranteed_bandwidth)} guaranteed")
        if self.rate_limit is not None:
            burst = f" (burst {format_bytes(self.burst)})" if self.burst is not None else ""
            parts.append(f"limited to {format_bandwidth(self.rate_limit)}{burst}")
        if self.max_latency is not None:
            scope = " end to end" if self.chain_latency else ""
            parts.append(f"latency ≤ {format_duration(self.max_latency)}{scope}")
        if self.max_loss is not None:
            parts.append(f"loss ≤ {format_loss(self.max_loss)}")
        if self.dscp is not None:
            parts.append(f"DSCP {dscp_name(self.dscp)}")
        parts.append(f"priority {self.priority}" + (", preemptible" if self.preemptible else ""))
        if self.protected:
            parts.append("protected")
        return ", ".join(parts)

    def to_document(self) -> dict:
        """The Kubernetes object that ``parse_service_level`` reads back to an equal ServiceLevel."""
        spec: dict = {"networkService": self.network_service}
        if self.client_selector:
            spec["clientSelector"] = {"matchLabels": self.client_selector.to_dict()}
        for key, value in (("guaranteedBandwidth", self.guaranteed_bandwidth),
                           ("rateLimit", self.rate_limit), ("burst", self.burst), ("dscp", self.dscp),
                           ("flowSampling", self.flow_sampling)):
            if value is not None:
                spec[key] = value
        if self.max_latency is not None:
            spec["maxLatency"] = f"{self.max_latency!r}s"
        if self.max_loss is not None:
            spec["maxLoss"] = repr(self.max_loss)
        spec.update(priority=self.priority, preemptible=self.preemptible, protection=self.protection,
                    chainLatency=self.chain_latency)
        return {"apiVersion": API_VERSION, "kind": KIND,
                "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}


# -- formatting ---------------------------------------------------------------------------------


def format_loss(fraction: float) -> str:
    """'0.5%'."""
    return f"{fraction * 100:.6g}%"


def dscp_name(value: int) -> str:
    """The usual name of a DSCP value (EF, AF41, CS1, …) or the number itself."""
    return _DSCP_BY_VALUE.get(value, str(value))


# -- quantities ---------------------------------------------------------------------------------


_LOSS_FORM = 'a loss: a percentage like "0.5%" or a fraction like "0.005" (less than 100%)'


def _int_or_string(parse: Callable[[object], object], form: str) -> Callable[[object], object]:
    """``parse`` for the CRD's int-or-string fields: a YAML float is refused before it is read."""

    def parse_field(value: object) -> object:
        if isinstance(value, float):
            raise UnitError(f"{form} (quote fractional values in YAML: Kubernetes takes integers or "
                            "strings here)")
        return parse(value)

    return parse_field


def _positive_duration(value: object) -> float:
    return parse_duration(value, positive=True)


def parse_loss(value: object) -> float:
    """A loss fraction in [0, 1) from "0.5%", "0.005" or the integer 0; raises ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise UnitError(_LOSS_FORM)
    number, percent = Decimal(value) if isinstance(value, int) else None, False
    if number is None:
        match = _LOSS.match(value)
        if not match:
            raise UnitError(_LOSS_FORM)
        number, percent = decimal(match, _LOSS_FORM), bool(match.group(3))
    fraction = number / 100 if percent else number
    if not 0 <= fraction < 1:
        # A fraction of 1 to 99 is most likely a percentage without its sign.
        hint = f'; for {number}% write "{number}%"' if not percent and 1 <= number < 100 else ""
        raise UnitError(f"{_LOSS_FORM}{hint}")
    return float(fraction)


def parse_dscp(value: object) -> int:
    """A DSCP value 0..63 from an integer or a name (EF, AF41, CS1, …); raises ValueError."""
    form = f"a DSCP value: an integer 0..63 or one of {', '.join(DSCP_NAMES)}"
    if isinstance(value, str) and value.upper() in DSCP_NAMES:
        return DSCP_NAMES[value.upper()]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 63:
        return value
    raise UnitError(form)


def parse_sampling(value: object) -> float:
    """A sampling probability in (0, 1]: a number, "1/64" or "1.5%"; raises ValueError."""
    form = 'a sampling probability above 0 and at most 1: a number, "1/N" or a percentage ("1.5%")'
    if isinstance(value, bool):
        raise UnitError(form)
    try:
        if isinstance(value, str) and "/" in value:
            top, _, bottom = value.partition("/")
            fraction = float(top) / float(bottom)
        elif isinstance(value, str) and value.strip().endswith("%"):
            fraction = float(value.strip()[:-1]) / 100
        else:
            fraction = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        raise UnitError(form) from None
    if not 0 < fraction <= 1:
        raise UnitError(form)
    return fraction


# -- validation ---------------------------------------------------------------------------------


def _metadata(check: Check, body: dict, base: str) -> tuple[str | None, str]:
    path = field_path(base, "metadata")
    meta = check.mapping(body.get("metadata"), path) or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name or len(name) > 253 or not _SUBDOMAIN.match(name):
        check.error(field_path(path, "name"), expected("a DNS-1123 subdomain (lowercase letters, digits, '-' "
                                                       "and '.', at most 253 characters)", name))
        name = None
    namespace = meta.get("namespace")
    if namespace in (None, ""):
        namespace = DEFAULT_NAMESPACE
    elif not isinstance(namespace, str) or len(namespace) > 63 or not _DNS_LABEL.match(namespace):
        check.error(field_path(path, "namespace"), expected("a DNS-1123 label (lowercase letters, digits and "
                                                            "'-', at most 63 characters)", namespace))
        namespace = DEFAULT_NAMESPACE
    return name, namespace


def _selector(check: Check, value: object, path: str) -> FrozenMap | None:
    mapping = check.mapping(value, path)
    if mapping is None:
        return None
    fields = check.fields(mapping, path, ("matchLabels",))
    where = field_path(path, "matchLabels")
    labels = check.mapping(fields.get("matchLabels", (None, ""))[0], where)
    if labels is None:
        return None
    ok = True
    for key, label in labels.items():
        at = key_path(where, str(key))
        prefix, slash, name = str(key).rpartition("/")
        if not isinstance(key, str) or (slash and not _SUBDOMAIN.match(prefix)) or len(name) > 63 or (
            not _LABEL_NAME.match(name)
        ):
            check.error(at, expected("a label key ([prefix/]name)", key))
            ok = False
        elif not isinstance(label, str) or (label and (len(label) > 63 or not _LABEL_NAME.match(label))):
            check.error(at, expected("a label value (a string of at most 63 letters, digits, '-', '_' and "
                                     "'.'; quote numbers in YAML)", label))
            ok = False
    return FrozenMap(labels) if ok else None


def parse_service_level(
    body: dict, path: str = "", *, source: str = "", index: int = -1
) -> tuple[ServiceLevel | None, list[Problem]]:
    """Validate one ServiceLevel object into a ServiceLevel, or None and the Problems that discard it.

    ``path`` is where the object sits in its document ('' at the top, 'items[2]' in a List), so
    problems name fields like ``spec.guaranteedBandwidth``; ``source`` and ``index`` (file and
    document index) go into every Problem. All-or-nothing, like the loader's other kinds.
    """
    check = Check()
    level = _service_level(check, body, path)
    problems = check.problems(source, index)
    return (None if problems else level), problems


_BANDWIDTH_FIELD = _int_or_string(parse_bandwidth, BANDWIDTH_FORM)
_QUANTITIES = {
    "guaranteedBandwidth": _BANDWIDTH_FIELD, "rateLimit": _BANDWIDTH_FIELD,
    "burst": _int_or_string(parse_bytes, BYTES_FORM),
    "maxLatency": _int_or_string(_positive_duration, DURATION_FORM),
    "maxLoss": _int_or_string(parse_loss, _LOSS_FORM), "dscp": parse_dscp, "flowSampling": parse_sampling,
}
_PROMISES = ("guaranteedBandwidth", "rateLimit", "maxLatency", "maxLoss", "dscp", "flowSampling")


def _choice(check: Check, fields: dict, key: str, default: object, ok, what: str) -> object:
    """The value of ``key`` (null or absent = ``default``) if ``ok(value)``; else an error and the default."""
    value = fields.get(key, (None, ""))[0]
    if value is None:
        return default
    if not ok(value):
        check.error(fields[key][1], expected(what, value))
        return default
    return value


def _service_level(check: Check, body: object, base: str) -> ServiceLevel | None:
    if not isinstance(body, dict):
        check.error(base, expected(f"a {KIND} object (a mapping)", body))
        return None
    for key, version in (("apiVersion", API_VERSION), ("kind", KIND)):
        if body.get(key) != version:
            check.error(field_path(base, key), expected(version, body.get(key)))
    name, namespace = _metadata(check, body, base)
    path = field_path(base, "spec")
    spec = check.mapping(body.get("spec"), path)
    if spec is None:
        return None
    fields = check.fields(spec, path, _SPEC_FIELDS)
    at = {key: field_path(path, key) for key in _SPEC_FIELDS}
    service = fields.get("networkService", (None, ""))[0]
    if service is None:
        check.error(at["networkService"], "expected the name of a NetworkService: the field is required")
    elif not isinstance(service, str) or len(service) > 253 or not _SUBDOMAIN.match(service):
        check.error(at["networkService"],
                    expected("the name of a NetworkService (a DNS-1123 subdomain)", service))
        service = None
    selector = EMPTY
    if fields.get("clientSelector", (None, ""))[0] is not None:
        selector = _selector(check, *fields["clientSelector"])
    values = {key: None if fields.get(key, (None, ""))[0] is None else check.value(parse, *fields[key])
              for key, parse in _QUANTITIES.items()}
    priority = _choice(check, fields, "priority", 0,
                       lambda v: not isinstance(v, bool) and isinstance(v, int) and 0 <= v <= MAX_PRIORITY,
                       f"an integer 0..{MAX_PRIORITY} (higher wins)")
    flags = {key: _choice(check, fields, key, False, lambda v: isinstance(v, bool), "true or false")
             for key in ("preemptible", "chainLatency")}
    protection = _choice(check, fields, "protection", "none", lambda v: v in PROTECTIONS,
                         f"one of {', '.join(PROTECTIONS)}")
    _cross_field_rules(check, path, {key: value for key, (value, _) in fields.items()}, values, flags)
    if check.errors or name is None or service is None or selector is None:
        return None
    return ServiceLevel(
        name=name, namespace=namespace, network_service=service, client_selector=selector,
        guaranteed_bandwidth=values["guaranteedBandwidth"], rate_limit=values["rateLimit"],
        burst=values["burst"], max_latency=values["maxLatency"], max_loss=values["maxLoss"],
        dscp=values["dscp"], priority=priority, preemptible=flags["preemptible"], protection=protection,
        chain_latency=flags["chainLatency"], flow_sampling=values["flowSampling"],
    )


def _cross_field_rules(check: Check, path: str, given: dict, values: dict, flags: dict) -> None:
    """The rules between fields (docs/service-levels.md), each reported at the field it concerns."""
    at = {key: field_path(path, key) for key in _SPEC_FIELDS}
    rate, guaranteed = values["rateLimit"], values["guaranteedBandwidth"]
    if rate is not None and not MIN_RATE_LIMIT <= rate <= MAX_RATE_LIMIT:
        check.error(at["rateLimit"], f"expected a rate from {format_bandwidth(MIN_RATE_LIMIT)} to "
                    f"{format_bandwidth(MAX_RATE_LIMIT)} (an OpenFlow meter counts kbit/s in 32 bits), "
                    f"found {format_bandwidth(rate)}")
    elif rate is not None and guaranteed is not None and rate < guaranteed:
        check.error(at["rateLimit"], f"expected at least {at['guaranteedBandwidth']} "
                    f"({format_bandwidth(guaranteed)}), found {format_bandwidth(rate)}: a limit below the "
                    "guarantee drops traffic the fabric reserved room for")
    if values["burst"] is not None and given.get("rateLimit") is None:
        check.error(at["burst"], f"expected {at['rateLimit']} beside it: burst is how far the rate limit "
                    "may be exceeded, and no rateLimit is set")
    if flags["chainLatency"] and given.get("maxLatency") is None:
        check.error(at["chainLatency"], f"expected {at['maxLatency']} beside it: chainLatency says what the "
                    "latency bound applies to, and no maxLatency is set")
    if flags["preemptible"] and given.get("guaranteedBandwidth") is None:
        check.error(at["preemptible"], f"expected {at['guaranteedBandwidth']} beside it: only guaranteed "
                    "bandwidth is preempted, and none is set")
    if all(given.get(key) is None for key in _PROMISES) and given.get("protection") in (None, "none"):
        check.error(path, f"expected at least one of {', '.join(_PROMISES)} or protection: disjoint; "
                    "this ServiceLevel promises nothing")


def select(
    levels: Iterable[ServiceLevel], service: str, namespace: str, client_labels: Mapping[str, str]
) -> ServiceLevel | None:
    """The level that applies to a request, or None.

    Among the levels that apply (same namespace and network service, selector ⊆ request labels):
    the most specific selector (most matchLabels), then the higher priority, then the name.
    """
    matching = [level for level in levels if level.applies_to(service, namespace, client_labels)]
    if not matching:
        return None
    return min(matching, key=lambda level: (-len(level.client_selector), -level.priority, level.name))
