"""NSM match semantics: client requests → connections to endpoints (one wire each).

Follows NSM's discovery rules (see nsm-wire.md): the request's network service is looked up in the
request's namespace; its ``matches`` are walked in order; the first match whose ``source_selector``
is contained in the request labels applies; each of its routes selects endpoints registered for the
service whose labels contain the route's ``destination_selector``; with ``fallthrough`` an empty
result goes on to the next match. Selector values may be templates such as ``{{.app}}`` over the
request labels. A service without matches selects every endpoint registered for it.

Choice among candidates is weighted and deterministic (weighted rendezvous hashing on the
connection id), and sticky: a connection keeps its endpoint while that endpoint still qualifies,
so adding requests never moves existing ones.

A service function that is both endpoint and client forms a chain: its own request (e.g. labelled
``app=firewall``) is matched like any other, which NSM calls composition.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from ryu_nsm.core.model import (
    EMPTY,
    Attachment,
    ClientRequest,
    Destination,
    Endpoint,
    FrozenMap,
    NetworkService,
    Resources,
)

RESOLVED = "resolved"
FAILED = "failed"


@dataclass(frozen=True)
class Connection:
    """One client-to-endpoint connection (a wire), or the reason it could not be made."""

    id: str
    namespace: str
    network_service: str
    client: str
    client_ifname: str
    client_attachment: Attachment | None
    labels: FrozenMap = EMPTY
    endpoint: str | None = None
    endpoint_attachment: Attachment | None = None
    state: str = RESOLVED
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.state == RESOLVED

    def failed(self, reason: str) -> Connection:
        return replace(self, endpoint=None, endpoint_attachment=None, state=FAILED, reason=reason)


_TEMPLATE = re.compile(r"\{\{\s*\.([A-Za-z0-9_.\-/]+)\s*\}\}")


class _MissingLabel(Exception):
    pass


def render_selector(selector: Mapping[str, str], labels: Mapping[str, str]) -> dict[str, str]:
    """Substitute ``{{.key}}`` templates in selector values with request labels.

    A template naming a label the request does not have makes the selector unsatisfiable.
    """

    def value(v: str) -> str:
        def sub(m: re.Match) -> str:
            if m.group(1) not in labels:
                raise _MissingLabel(m.group(1))
            return labels[m.group(1)]

        return _TEMPLATE.sub(sub, v)

    return {k: value(v) for k, v in selector.items()}


def _contains(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _score(connection_id: str, endpoint: str, weight: int) -> float:
    """Weighted rendezvous score: the highest score wins; stable per (connection, endpoint)."""
    h = hashlib.blake2b(f"{connection_id}|{endpoint}".encode(), digest_size=8).digest()
    u = (int.from_bytes(h, "big") + 1) / (2**64 + 1)  # in (0, 1)
    return -weight / math.log(u)


@dataclass
class _Pool:
    """Which attachments are taken, by which connection (attachments carry one connection each)."""

    owner: dict[Attachment, str]
    # Endpoint key → index of its first attachment not yet seen taken: within one resolve attachments
    # are only ever taken, so a scan never needs to look before it again.
    cursor: dict[tuple[str, str], int] = field(default_factory=dict)

    def free(self, attachment: Attachment, connection_id: str) -> bool:
        return self.owner.get(attachment, connection_id) == connection_id

    def take(self, attachment: Attachment, connection_id: str) -> None:
        self.owner[attachment] = connection_id


def resolve(
    resources: Resources,
    previous: Mapping[str, Connection] | None = None,
    settled: frozenset[str] = frozenset(),
) -> dict[str, Connection]:
    """Resolve every client request into a Connection (keyed by id), failed ones with a reason.

    ``previous`` makes the result sticky: every connection that was resolved keeps its endpoint and
    attachment while they still qualify, before any other request chooses, so new or retried
    requests never move existing ones. ``settled`` names previous connections whose request,
    services and endpoints are unchanged: they are kept as they are without being evaluated again
    (the caller's promise; it is what makes a change cost what it touches, not the whole state).
    """
    previous = previous or {}
    services = {s.key: s for s in resources.services}
    by_service: dict[tuple[str, str], list[Endpoint]] = {}
    for ep in sorted(resources.endpoints, key=lambda e: e.key):
        for svc in ep.services:
            by_service.setdefault((ep.namespace, svc), []).append(ep)

    held = {cid for cid, conn in previous.items() if conn.state == RESOLVED}
    pool = _Pool({})
    owner = pool.owner
    # Previous connections first, then by id: a new request never takes a working one's interface.
    requests = sorted(resources.requests, key=lambda r: (r.id not in held, r.id))
    # Client attachments are claimed first so that no endpoint choice can steal one.
    clashes: dict[str, str] = {}
    for req in requests:
        att = req.attachment
        if att is None:
            continue
        first = owner.setdefault(att, req.id)
        if first != req.id:
            clashes[req.id] = first
    for ep in resources.endpoints:
        for att in ep.attachments:
            if att in owner:
                clashes.setdefault(owner[att], f"endpoint {ep.namespace}/{ep.name}")

    result: dict[str, Connection] = {}
    indexes: dict[tuple[str, str], _EndpointIndex] = {}

    def evaluate(req: ClientRequest, sticky_only: bool) -> Connection | None:
        base = Connection(
            id=req.id, namespace=req.namespace, network_service=req.service, client=req.pod,
            client_ifname=req.ifname, client_attachment=req.attachment, labels=req.labels,
        )
        if req.id in clashes:
            return base.failed(f"attachment {req.attachment} is already used by {clashes[req.id]}")
        if req.attachment is None:
            return base.failed(
                f"interface {req.ifname} of pod {req.pod} has no attachment to the fabric "
                "(annotation ryu-nsm.io/attachments)"
            )
        service = services.get((req.namespace, req.service))
        if service is None:
            return base.failed(f"network service {req.service!r} not found in namespace {req.namespace!r}")
        if service.key not in indexes:
            indexes[service.key] = _EndpointIndex(service.name, by_service.get(service.key, []))
        return _resolve_one(base, req, service, indexes[service.key], pool, previous.get(req.id), sticky_only)

    # Pass 1: resolved connections keep what they have (settled ones without a second look).
    deferred = []
    for req in requests:
        rid = req.id
        if rid not in held:
            deferred.append(req)
            continue
        before = previous[rid]
        if rid in settled and rid not in clashes:
            first = owner.setdefault(before.endpoint_attachment, rid)
            if first == rid:
                result[rid] = before
                continue
        found = evaluate(req, sticky_only=True)
        if found is None:
            deferred.append(req)
        else:
            result[rid] = found
    # Pass 2: everything else chooses from what is left.
    for req in deferred:
        result[req.id] = evaluate(req, sticky_only=False)
    return result


def _resolve_one(
    base: Connection,
    req: ClientRequest,
    service: NetworkService,
    index: _EndpointIndex,
    pool: _Pool,
    before: Connection | None,
    sticky_only: bool = False,
) -> Connection | None:
    """The connection ``req`` gets; with ``sticky_only``, None unless it keeps its previous endpoint."""
    registered = index.endpoints
    if not registered:
        return base.failed(f"no endpoint is registered for network service {service.name!r}")
    matches = service.matches or ()
    if not matches:
        groups = [[(ep, 1) for ep in registered]]
        return _choose(base, groups, pool, before, f"network service {service.name!r}", sticky_only)
    reasons = []
    for number, match in enumerate(matches):
        try:
            source = render_selector(match.source_selector, req.labels)
        except _MissingLabel as missing:
            reasons.append(f"match #{number}: template needs label {missing}")
            continue
        if not _contains(req.labels, source):
            continue
        try:
            groups = _candidates(match.routes, req.labels, index)
        except _MissingLabel as missing:
            return base.failed(f"match #{number} of {service.name!r}: template needs label {missing}")
        found = _choose(base, groups, pool, before, f"match #{number} of {service.name!r}", sticky_only)
        if found is None or found.ok or not match.fallthrough:
            return found
        reasons.append(found.reason)
    if reasons:
        return base.failed("; ".join(reasons))
    return base.failed(
        f"no match of network service {service.name!r} applies to labels {dict(req.labels)}"
    )


class _EndpointIndex:
    """Endpoints of one service indexed by label (key, value): a selector intersects small sets."""

    def __init__(self, service: str, endpoints: list[Endpoint]):
        self.endpoints = endpoints
        self.by_label: dict[tuple[str, str], list[int]] = {}
        for i, ep in enumerate(endpoints):
            for item in ep.labels_for(service).items():
                self.by_label.setdefault(item, []).append(i)

    def select(self, selector: Mapping[str, str]) -> list[Endpoint]:
        """Endpoints whose labels contain every key/value of ``selector``, in registration order."""
        if not selector:
            return self.endpoints
        postings = sorted((self.by_label.get(item, []) for item in selector.items()), key=len)
        chosen = set(postings[0]).intersection(*postings[1:])
        return [self.endpoints[i] for i in sorted(chosen)]


def _candidates(
    routes: Iterable[Destination], labels: Mapping[str, str], index: _EndpointIndex
) -> list[list[tuple[Endpoint, int]]]:
    """Candidates grouped by preference: positive-weight routes first, zero-weight routes as backups.

    NSM leaves an unset weight at 0; when every weight is 0 all routes count equally.
    """
    routes = list(routes)
    all_zero = all(r.weight == 0 for r in routes)
    primary: list[tuple[Endpoint, int]] = []
    backup: list[tuple[Endpoint, int]] = []
    for route in routes:
        selector = render_selector(route.selector, labels)
        for ep in index.select(selector):
            if all_zero:
                primary.append((ep, 1))
            elif route.weight > 0:
                primary.append((ep, route.weight))
            else:
                backup.append((ep, 1))
    return [g for g in (primary, backup) if g]


def _choose(
    base: Connection,
    groups: list[list[tuple[Endpoint, int]]],
    pool: _Pool,
    before: Connection | None,
    where: str,
    sticky_only: bool = False,
) -> Connection | None:
    if not groups:
        return base.failed(f"{where}: no endpoint matches its destination selectors")
    # Stickiness: keep the previous endpoint and attachment while they still qualify.
    if before is not None and before.ok and before.endpoint_attachment is not None:
        for group in groups:
            for ep, _ in group:
                if ep.name == before.endpoint and before.endpoint_attachment in ep.attachments:
                    if pool.free(before.endpoint_attachment, base.id):
                        pool.take(before.endpoint_attachment, base.id)
                        return replace(
                            base, endpoint=ep.name, endpoint_attachment=before.endpoint_attachment
                        )
    if sticky_only:
        return None
    busy = 0
    unattached = 0
    for group in groups:
        best: dict[str, tuple[float, Endpoint]] = {}
        for ep, weight in group:
            score = _score(base.id, ep.name, weight)
            if ep.name not in best or score > best[ep.name][0]:
                best[ep.name] = (score, ep)
        for _, ep in sorted(best.values(), key=lambda item: (-item[0], item[1].name)):
            if not ep.attachments:
                unattached += 1
                continue
            atts = ep.attachments
            i = pool.cursor.get(ep.key, 0)
            while i < len(atts) and not pool.free(atts[i], base.id):
                i += 1
            pool.cursor[ep.key] = i
            if i < len(atts):
                pool.take(atts[i], base.id)
                return replace(base, endpoint=ep.name, endpoint_attachment=atts[i])
            busy += 1
    parts = []
    if busy:
        parts.append(f"{busy} matching endpoint(s) have every attachment in use")
    if unattached:
        parts.append(f"{unattached} matching endpoint(s) have no attachment to the fabric")
    return base.failed(f"{where}: " + ", ".join(parts))
