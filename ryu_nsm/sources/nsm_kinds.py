"""NSM's registry kinds, NetworkService and NetworkServiceEndpoint, read into model objects.

No I/O; fields and their checks are in docs/requests.md.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from ryu_nsm.core.model import Attachment, Destination, Endpoint, Match, ModelError, NetworkService
from ryu_nsm.core.validation import describe_value, expected, field_path, item_path, key_path
from ryu_nsm.core.values import EMPTY, FrozenMap
from ryu_nsm.sources.kube_objects import (
    ATTACHMENT_FORM,
    ATTACHMENTS_ANNOTATION,
    PAYLOADS,
    KubeCheck,
    KubeObject,
    quoted,
    quoted_list,
    read_annotation,
    read_metadata,
)

_UINT32_MAX = 2**32 - 1
_TIMESTAMP_FORM = "an RFC 3339 time with a zone (2030-01-01T00:00:00Z) or {seconds, nanos}"


def _spec(check: KubeCheck, obj: KubeObject, name: str | None) -> tuple[dict, str]:
    path = field_path(obj.base, "spec")
    spec = check.mapping(obj.body.get("spec"), path) or {}
    given = spec.get("name")
    # The registry message has its own name; NSM fills it from metadata.name, so they must agree.
    if given not in (None, "") and name is not None and given != name:
        check.error(field_path(path, "name"),
                    f"expected {json.dumps(name)} (as metadata.name), found {describe_value(given)}")
    return spec, path


def parse_network_service(check: KubeCheck, obj: KubeObject) -> NetworkService | None:
    meta = read_metadata(check, obj)
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


def _match(check: KubeCheck, raw: object, path: str) -> Match | None:
    mapping = check.mapping(raw, path)
    if mapping is None:
        return None
    fields = check.fields(mapping, path, ("source_selector", "routes", "fallthrough", "metadata"))
    source = EMPTY
    if "source_selector" in fields:
        source = check.labels(*fields["source_selector"])
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
    metadata = _match_metadata(check, *fields.get("metadata", (None, "")))
    if source is None or metadata is False:
        return None
    return Match(source, tuple(routes), fallthrough, metadata)


def _match_metadata(check: KubeCheck, value: object, where: str) -> FrozenMap | None | bool:
    """A match's metadata labels: None when it has none (absent or null, as protojson reads it), which
    NSM tells apart from an empty one; False when invalid."""
    if value is None:
        return None
    inner = check.mapping(value, where)
    if inner is None:
        return False
    labels = check.fields(inner, where, ("labels",))
    if "labels" not in labels:
        return EMPTY
    parsed = check.labels(*labels["labels"])
    return False if parsed is None else parsed


def _timestamp(check: KubeCheck, value: object, where: str) -> float | None:
    """A protobuf Timestamp as protojson writes it (RFC 3339 text) or as a {seconds, nanos} mapping
    (NSM's Kubernetes registry), in seconds since the epoch; None when unset or invalid."""
    if isinstance(value, datetime):  # YAML reads an unquoted timestamp; without a zone it is UTC
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is None:
            check.error(where, expected(_TIMESTAMP_FORM, value))
            return None
        return parsed.timestamp()
    mapping = check.mapping(value, where)
    if mapping is None or value is None:
        return None
    fields = check.fields(mapping, where, ("seconds", "nanos"))
    parts = []
    for name in ("seconds", "nanos"):
        raw, at = fields.get(name, (0, where))
        number = raw if isinstance(raw, int) and not isinstance(raw, bool) else None
        if isinstance(raw, str) and raw.lstrip("-").isdigit():  # protojson writes int64 as text
            number = int(raw)
        if number is None:
            check.error(at, expected("an integer", raw))
            return None
        parts.append(number)
    return parts[0] + parts[1] / 1e9


def _destination(check: KubeCheck, raw: object, path: str) -> Destination | None:
    mapping = check.mapping(raw, path)
    if mapping is None:
        return None
    fields = check.fields(mapping, path, ("destination_selector", "weight"))
    selector = EMPTY
    if "destination_selector" in fields:
        selector = check.labels(*fields["destination_selector"])
    weight = 1
    if "weight" in fields and fields["weight"][0] is not None:
        value, where = fields["weight"]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _UINT32_MAX:
            check.error(where, expected("a non-negative integer (uint32)", value))
            return None
        weight = value
    return None if selector is None else Destination(selector, weight)


def parse_endpoint(check: KubeCheck, obj: KubeObject) -> Endpoint | None:
    meta = read_metadata(check, obj)
    spec, path = _spec(check, obj, meta.name)
    fields = check.fields(
        spec, path, ("name", "network_service_names", "network_service_labels", "url", "expiration_time"),
        ignored=("initial_registration_time", "path_ids"),
    )
    services: list[str] = []
    raw, where = fields.get("network_service_names", (None, field_path(path, "network_service_names")))
    for index, value in enumerate(check.sequence(raw, where) or []):
        service = check.name(value, item_path(where, index), subdomain=True)
        if service is not None and service in services:
            check.note(item_path(where, index), f"network service {quoted(service)} is listed twice")
        elif service is not None:
            services.append(service)
    service_labels: dict[str, FrozenMap] = {}
    raw, where = fields.get("network_service_labels", (None, field_path(path, "network_service_labels")))
    for service, value in (check.mapping(raw, where) or {}).items():
        service_path = key_path(where, str(service))
        if service not in services:
            check.error(service_path, f"expected a service in network_service_names {quoted_list(services)}, "
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
    expires = _timestamp(check, *fields.get("expiration_time", (None, "")))
    attachments: list[Attachment] = []
    text, where = read_annotation(check, meta, obj, ATTACHMENTS_ANNOTATION)
    for index, entry in enumerate(text.split(",") if text else []):
        try:
            attachment = Attachment.parse(entry.strip(), item_path(where, index))
        except ModelError as e:
            check.error(e.path, expected(ATTACHMENT_FORM, entry.strip()))
            continue
        if attachment in attachments:
            check.note(item_path(where, index), f"attachment {attachment} is listed twice")
        else:
            attachments.append(attachment)
    if check.errors or meta.name is None:
        return None
    return Endpoint(
        meta.name, meta.namespace, tuple(services), FrozenMap(service_labels), tuple(attachments), url,
        expires,
    )
