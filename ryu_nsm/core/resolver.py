"""NSM match semantics: client requests → connections to endpoints (one wire each).

Which endpoints are candidates is NSM's ``matchutils.MatchEndpoint`` (see nsm-wire.md): the
request's network service is looked up in the request's namespace; its ``matches`` are walked in
order; the first match whose ``source_selector`` is a subset of the request labels applies; its
routes select the endpoints whose labels for the service satisfy the ``destination_selector``;
with ``fallthrough`` no candidate goes on to the next match; a match with metadata and no routes
selects every endpoint. Selector values may be ``{{.label}}`` templates over the request labels.
A service without matches selects every endpoint registered for it. Expired endpoints are none.

Choice among candidates is ryu-nsm's extension (README "Matching"): weighted and deterministic
(weighted rendezvous hashing on the connection id), zero-weight routes as backups, and sticky: a
connection keeps its endpoint while that endpoint still qualifies, so adding requests never moves
existing ones.

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


# The part of Go's text/template that NSM's selectors use: ``{{.label}}`` over the request labels.
_ACTION = re.compile(r"\{\{\s*\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
NO_VALUE = "<no value>"  # what Go renders for a label the request lacks: it matches nothing real


def _is_template(value: str) -> bool:
    return "{{" in value and "{{" not in _ACTION.sub("", value)


def render_value(value: str, labels: Mapping[str, str]) -> str:
    """A selector value rendered as NSM does (Go's text/template over the request labels).

    Text that is not such a template (``{{app}}``, an unclosed ``{{``) fails in Go and is compared as
    written, which is what NSM does when a template does not parse or fails.
    """
    if not _is_template(value):
        return value
    return _ACTION.sub(lambda m: labels.get(m.group(1), NO_VALUE), value)


def render_selector(selector: Mapping[str, str], labels: Mapping[str, str]) -> dict[str, str]:
    """Every value of ``selector`` rendered over the request ``labels`` (see ``render_value``)."""
    return {k: render_value(v, labels) for k, v in selector.items()}


def _lacking(selector: Mapping[str, str], labels: Mapping[str, str]) -> list[str]:
    """The request labels the templates of ``selector`` name but the request lacks."""
    return sorted({m.group(1) for v in selector.values() if _is_template(v)
                   for m in _ACTION.finditer(v) if m.group(1) not in labels})


def is_subset(labels: Mapping[str, str], selector: Mapping[str, str], values: Mapping[str, str]) -> bool:
    """NSM's ``IsSubset``: ``selector`` ⊆ ``labels``, each value as written or rendered over ``values``.

    As in Go, a missing key reads as "" and ``labels`` must have at least as many entries as ``selector``.
    """
    if len(labels) < len(selector):
        return False
    return all(labels.get(k, "") in (v, render_value(v, values)) for k, v in selector.items())


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
    now: float | None = None,
) -> dict[str, Connection]:
    """Resolve every client request into a Connection (keyed by id), failed ones with a reason.

    ``previous`` makes the result sticky: every connection that was resolved keeps its endpoint and
    attachment while they still qualify, before any other request chooses, so new or retried
    requests never move existing ones. ``settled`` names previous connections whose request,
    services and endpoints are unchanged: they are kept as they are without being evaluated again
    (the caller's promise; it is what makes a change cost what it touches, not the whole state).
    Endpoints whose ``expires`` is not after ``now`` are no candidates (no ``now``: none expire).
    """
    return resolve_whole(resources, previous, settled, now).connections


@dataclass(frozen=True)
class Resolution:
    """A resolve's connections, with what the next one may start from (``resolve_changes``)."""

    connections: dict[str, Connection]
    owner: dict[Attachment, str]  # every attachment taken at the end (client and endpoint), by whom
    failed: frozenset[str]  # ids of the connections that did not resolve
    context: _Context = field(compare=False, repr=False)
    # Endpoint key → index of its first attachment that may be free (``_Pool.cursor``).
    cursor: dict[tuple[str, str], int] = field(compare=False, repr=False)
    changed: frozenset[str] | None = None  # ids whose connection came, went or changed; None: unknown

    def expired_alike(self, resources: Resources, now: float | None) -> bool:
        """Whether the same endpoints are expired at ``now`` as when this was resolved."""
        return _expired(resources, now) == self.context.expired


class _Context:
    """What every evaluation of one resolve reads: services, endpoints by service and label, which
    endpoints expired and which attachments endpoints hold. Valid while those stay the same."""

    def __init__(self, resources: Resources, now: float | None):
        self.services = {s.key: s for s in resources.services}
        self.by_service: dict[tuple[str, str], list[Endpoint]] = {}
        for ep in sorted(resources.endpoints, key=lambda e: e.key):
            for svc in ep.services:
                self.by_service.setdefault((ep.namespace, svc), []).append(ep)
        self.expired = _expired(resources, now)
        self.indexes: dict[tuple[str, str], _EndpointIndex] = {}
        # A client attachment that an endpoint holds is refused, naming the first such endpoint.
        self.endpoint_of: dict[Attachment, str] = {}
        self.holders: dict[Attachment, list[tuple[str, str]]] = {}  # the endpoints that serve on it
        for ep in resources.endpoints:
            for att in ep.attachments:
                self.endpoint_of.setdefault(att, f"endpoint {ep.namespace}/{ep.name}")
                self.holders.setdefault(att, []).append(ep.key)

    def evaluate(self, req: ClientRequest, pool: _Pool, clashes: Mapping[str, str], before: Connection | None,
                 sticky_only: bool) -> Connection | None:
        """The connection ``req`` gets (None with ``sticky_only`` unless it keeps its endpoint)."""
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
        service = self.services.get((req.namespace, req.service))
        if service is None:
            return base.failed(f"network service {req.service!r} not found in namespace {req.namespace!r}")
        if service.key not in self.indexes:
            self.indexes[service.key] = _EndpointIndex(service.name, self.by_service.get(service.key, []),
                                                       self.expired)
        return _resolve_one(base, req, service, self.indexes[service.key], pool, before, sticky_only)


def _expired(resources: Resources, now: float | None) -> frozenset[tuple[str, str]]:
    return frozenset(ep.key for ep in resources.endpoints if ep.expired(now))


def resolve_whole(resources: Resources, previous: Mapping[str, Connection] | None = None,
                  settled: frozenset[str] = frozenset(), now: float | None = None) -> Resolution:
    """``resolve``, with what a later ``resolve_changes`` starts from."""
    previous = previous or {}
    context = _Context(resources, now)
    expired = context.expired
    held = {cid for cid, conn in previous.items() if conn.state == RESOLVED}
    pool = _Pool({})
    owner = pool.owner
    # Previous connections first, then by id: a new request never takes a working one's interface.
    requests = sorted(resources.requests, key=lambda r: (r.id not in held, r.id))
    clashes = _claim_client_attachments(requests, context.endpoint_of, owner)
    result: dict[str, Connection] = {}
    # Pass 1: resolved connections keep what they have (settled ones without a second look).
    deferred = []
    for req in requests:
        rid = req.id
        if rid not in held:
            deferred.append(req)
            continue
        before = previous[rid]
        if rid in settled and rid not in clashes and (before.namespace, before.endpoint) not in expired:
            first = owner.setdefault(before.endpoint_attachment, rid)
            if first == rid:
                result[rid] = before
                continue
        found = context.evaluate(req, pool, clashes, before, sticky_only=True)
        if found is None:
            deferred.append(req)
        else:
            result[rid] = found
    # Pass 2: everything else chooses from what is left.
    for req in deferred:
        result[req.id] = context.evaluate(req, pool, clashes, previous.get(req.id), sticky_only=False)
    failed = frozenset(cid for cid, conn in result.items() if conn.state != RESOLVED)
    return Resolution(result, owner, failed, context, pool.cursor)


def resolve_changes(resources: Resources, requests: Mapping[str, ClientRequest],
                    old: Mapping[str, ClientRequest], before: Resolution, changed: Iterable[str],
                    removed: Iterable[str], now: float | None) -> Resolution | None:
    """What ``resolve_whole`` gives when only the requests ``changed`` (new or not equal to ``old``'s)
    and ``removed`` differ from those ``before`` resolved, services and endpoints being the same:
    evaluating only those and the ones that failed. None when the change reaches further (an
    endpoint expired, a changed request claims an attachment that another one holds): resolve whole.
    """
    context = before.context
    if _expired(resources, now) != context.expired:
        return None
    previous = before.connections
    removed = set(removed)
    redo = set(changed) | (before.failed - removed)
    owner, cursor = dict(before.owner), dict(before.cursor)
    for cid in (*removed, *redo):  # their claims go; those that stay claim again, in order
        for att in (old[cid].attachment if cid in old else None,
                    previous[cid].endpoint_attachment if cid in previous else None):
            if att is not None and owner.get(att) == cid:
                del owner[att]
                for key in context.holders.get(att, ()):  # free again: scans start over there
                    cursor.pop(key, None)
    held = {cid for cid in redo if cid in previous and previous[cid].state == RESOLVED}
    order = sorted(redo, key=lambda c: (c not in held, c))
    clashes: dict[str, str] = {}
    for cid in order:
        att = requests[cid].attachment
        if att is None:
            continue
        first = owner.setdefault(att, cid)
        if first == cid:
            if att in context.endpoint_of:
                clashes[cid] = context.endpoint_of[att]
        elif first in redo or (requests.get(first) is not None and requests[first].attachment == att
                               and (False, first) < (cid not in held, cid)):
            clashes[cid] = first  # an earlier request in resolve order: a whole resolve finds the same
        else:
            return None
    pool = _Pool(owner, cursor)
    result = dict(previous)
    for cid in removed:
        del result[cid]
    deferred = []
    for cid in order:
        found = None
        if cid in held:
            found = context.evaluate(requests[cid], pool, clashes, previous[cid], sticky_only=True)
        if found is None:
            deferred.append(cid)
        else:
            result[cid] = found
    for cid in deferred:
        result[cid] = context.evaluate(requests[cid], pool, clashes, previous.get(cid), sticky_only=False)
    moved = {cid for cid in redo if result[cid] is not previous.get(cid) and result[cid] != previous.get(cid)}
    failed = frozenset(cid for cid in redo if result[cid].state != RESOLVED)
    return Resolution(result, owner, failed, context, cursor, frozenset(removed | moved))


def _claim_client_attachments(
    requests: list[ClientRequest], endpoint_of: Mapping[Attachment, str], owner: dict[Attachment, str]
) -> dict[str, str]:
    """Client attachments are claimed first, so that no endpoint choice can steal one.

    Returns request id → who holds its attachment already (another request or an endpoint), for the
    requests that lost it.
    """
    clashes: dict[str, str] = {}
    for req in requests:
        att = req.attachment
        if att is None:
            continue
        first = owner.setdefault(att, req.id)
        if first != req.id:
            clashes[req.id] = first
        elif att in endpoint_of:
            clashes[req.id] = endpoint_of[att]
    return clashes


def _resolve_one(
    base: Connection,
    req: ClientRequest,
    service: NetworkService,
    index: _EndpointIndex,
    pool: _Pool,
    before: Connection | None,
    sticky_only: bool = False,
) -> Connection | None:
    """The connection ``req`` gets; with ``sticky_only``, None unless it keeps its previous endpoint.

    Which endpoints are candidates is NSM's ``MatchEndpoint`` (see nsm-wire.md and
    docs/requests.md); the choice among them is ryu-nsm's (``_choose``).
    """
    if not index.endpoints:
        return base.failed(f"no endpoint is registered for network service {service.name!r}")
    if not service.matches:
        return _choose(base, index.every, pool, before, f"network service {service.name!r}", sticky_only,
                       index.expired_note(index.endpoints))
    reasons = []
    for number, match in enumerate(service.matches):
        where = f"match #{number} of {service.name!r}"
        if not is_subset(req.labels, match.source_selector, req.labels):
            lacking = _lacking(match.source_selector, req.labels)
            if lacking:
                reasons.append(f"{where}: source selector template needs label(s) {lacking} "
                               "the request lacks")
            continue
        groups, why = _candidates(match.routes, req.labels, index)
        if not groups and match.fallthrough:
            reasons.append(f"{where}: {why}")
            continue
        if not groups and match.metadata is not None and not match.routes:
            # NSM: a match with metadata and no routes selects every endpoint of the service.
            return _choose(base, index.every, pool, before, f"{where} (every endpoint)", sticky_only,
                           index.expired_note(index.endpoints))
        if not groups:
            return base.failed("; ".join([*reasons, f"{where}: {why}"]))
        return _choose(base, groups, pool, before, where, sticky_only)
    if reasons:
        return base.failed("; ".join(reasons))
    return base.failed(
        f"no match of network service {service.name!r} applies to labels {dict(req.labels)}"
    )


class _EndpointIndex:
    """Endpoints of one service indexed by label (key, value): a selector intersects small sets."""

    def __init__(self, service: str, endpoints: list[Endpoint], expired: set[tuple[str, str]]):
        self.endpoints = endpoints
        self.expired = expired
        self.live = [ep for ep in endpoints if ep.key not in expired]
        self.every = [[(ep, 1) for ep in self.live]]  # candidates when all endpoints are, weight 1
        self.labels = [ep.labels_for(service) for ep in endpoints]
        self.by_label: dict[tuple[str, str], list[int]] = {}
        self.by_key: dict[str, set[int]] = {}
        for i, labels in enumerate(self.labels):
            for item in labels.items():
                self.by_label.setdefault(item, []).append(i)
                self.by_key.setdefault(item[0], set()).add(i)

    def select(self, selector: Mapping[str, str], values: Mapping[str, str]) -> list[Endpoint]:
        """Endpoints whose labels satisfy NSM's ``IsSubset(labels, selector, values)``, in order."""
        if not selector:
            return self.endpoints
        rendered = render_selector(selector, values)
        postings = []
        for key, value in selector.items():
            hits = {*self.by_label.get((key, value), ()), *self.by_label.get((key, rendered[key]), ())}
            if "" in (value, rendered[key]):  # Go reads a missing key as ""
                hits |= set(range(len(self.endpoints))) - self.by_key.get(key, set())
            postings.append(hits)
        chosen = set.intersection(*sorted(postings, key=len))
        return [self.endpoints[i] for i in sorted(chosen) if len(self.labels[i]) >= len(selector)]

    def expired_note(self, endpoints: Iterable[Endpoint]) -> str:
        """``endpoint expired: …`` naming the expired ones of ``endpoints``; "" if none is."""
        names = sorted({ep.name for ep in endpoints if ep.key in self.expired})
        return f"endpoint expired: {', '.join(names)}" if names else ""


def _candidates(
    routes: Iterable[Destination], labels: Mapping[str, str], index: _EndpointIndex
) -> tuple[list[list[tuple[Endpoint, int]]], str]:
    """Candidates grouped by preference, positive-weight routes first, zero-weight routes as backups
    (ryu-nsm's extension: NSM takes the union of every route's candidates and ignores weight); and
    why there is none when there is none.

    NSM leaves an unset weight at 0; when every weight is 0 all routes count equally.
    """
    routes = list(routes)
    all_zero = all(r.weight == 0 for r in routes)
    primary: list[tuple[Endpoint, int]] = []
    backup: list[tuple[Endpoint, int]] = []
    selected: list[Endpoint] = []
    for route in routes:
        for ep in index.select(route.selector, labels):
            selected.append(ep)
            if ep.key in index.expired:
                continue
            if all_zero:
                primary.append((ep, 1))
            elif route.weight > 0:
                primary.append((ep, route.weight))
            else:
                backup.append((ep, 1))
    groups = [g for g in (primary, backup) if g]
    if groups:
        return groups, ""
    lacking = sorted({name for route in routes for name in _lacking(route.selector, labels)})
    if selected:
        return [], index.expired_note(selected)
    if lacking:
        return [], f"destination selector template needs label(s) {lacking} the request lacks"
    return [], "no endpoint matches its destination selectors"


def _choose(
    base: Connection,
    groups: list[list[tuple[Endpoint, int]]],
    pool: _Pool,
    before: Connection | None,
    where: str,
    sticky_only: bool = False,
    expired: str = "",
) -> Connection | None:
    """The candidate ``base`` gets (None with ``sticky_only`` unless it keeps its own); ``expired``
    says which endpoints would have been candidates had they not expired."""
    groups = [group for group in groups if group]
    if not groups:
        return base.failed(f"{where}: {expired or 'no endpoint matches its destination selectors'}")
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
