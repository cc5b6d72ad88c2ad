"""What a NetworkServiceConnection and an Event say about a request, from the controller's status.

One ``ryu-nsm.io/v1alpha1`` NetworkServiceConnection per client request (connection id
``namespace/pod/ifname``), named ``<pod>-<ifname>`` in the Pod's namespace. Its ``spec`` says which
request it reports on; its ``status`` what became of it::

    status:
      observedGeneration: 1
      state: Up | Pending | Failed          # this connection (hop)
      reason: Up | Pending | NoEndpoint …   # short CamelCase, from REASONS
      message: full reason text
      chain: [client, firewall, dpi, vpn-gateway]      # from this client onwards
      hops: [{connection, endpoint, endpointAttachment, clientAttachment, path, state, reason,
              programmedBy}]                 # programmedBy: sharded only, the master of each path switch
      path: [s1, s2]                        # this hop's switches
      policy: {policies: [ns/name], governedBy: [why]}  # when a MultiNetworkPolicy restricts it
      conditions: [Resolved, Admitted, Ready, PolicyIsolated]  # the usual condition shape

Pure functions of the controller's status JSON (``desired_connections``, ``merge_conditions``,
``parse_problem``); ``ryu_nsm.k8s.status_writer`` keeps the objects and Events in the cluster.
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import filterfalse
from operator import itemgetter

from ryu_nsm.core.chains import follow

GROUP = "ryu-nsm.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "NetworkServiceConnection"
PLURAL = "networkserviceconnections"
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "ryu-nsm"
CONNECTION_ANNOTATION = "ryu-nsm.io/connection"

UP, PENDING, FAILED = "Up", "Pending", "Failed"
_STATES = {"up": UP, "pending": PENDING, "failed": FAILED}

# Reason text (resolver, planner, pathing) → short reason. The first pattern found anywhere in the
# text wins, so a more specific or more actionable pattern comes before a general one.
REASONS: tuple[tuple[str, str], ...] = (
    (r"attachment \S+ is already used by", "AttachmentInUse"),
    (r"interface \S+ of pod \S+ has no attachment to the fabric", "NotAttached"),
    (r"network service '[^']*' not found in namespace", "ServiceNotFound"),
    (r"template needs label", "MissingLabel"),
    (r"no match of network service '[^']*' applies", "NoMatch"),
    (r"matching endpoint\(s\) have every attachment in use", "EndpointsBusy"),
    (r"matching endpoint\(s\) have no attachment to the fabric", "EndpointNotAttached"),
    (r"no endpoint is registered for network service|no endpoint matches its destination selectors",
     "NoEndpoint"),
    (r"attachment \S+: switch '[^']*' is not in the fabric", "UnknownSwitch"),
    (r"attachment \S+: no port '[^']*' on", "UnknownPort"),
    (r"link \S+ has no free tag", "TagSpaceExhausted"),
    (r"no free conntrack zone", "ZoneSpaceExhausted"),
    (r"policy: \d+ \w+ rules apply", "PolicyTooLarge"),
    (r"no path from \S+ to \S+|switch \S+ is (down|not in the fabric)", "NoPath"),
)
_REASON_PATTERNS = tuple((re.compile(pattern), reason) for pattern, reason in REASONS)

# Kinds whose problems become Events, with the apiVersion the involvedObject needs.
EVENT_KINDS = {
    "NetworkService": "networkservicemesh.io/v1",
    "NetworkServiceEndpoint": "networkservicemesh.io/v1",
    "Pod": "v1",
    "Namespace": "v1",
    "MultiNetworkPolicy": "k8s.cni.cncf.io/v1beta1",
}
_NAME_MAX = 253
_BAD_NAME_CHARS = re.compile(r"[^a-z0-9-]+")


def short_reason(state: str, text: str = "") -> str:
    """The CamelCase reason of a connection in ``state`` (up/pending/failed) with reason ``text``."""
    if state == "up":
        return UP
    if state == "pending":
        return PENDING
    for pattern, reason in _REASON_PATTERNS:
        if pattern.search(text):
            return reason
    return FAILED


def _hash(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


def connection_object_name(pod: str, ifname: str) -> str:
    """``<pod>-<ifname>`` as a DNS-1123 name; a hash of the original is added when that was lossy."""
    raw = f"{pod}-{ifname}"
    name = _BAD_NAME_CHARS.sub("-", raw.lower()).strip("-")
    name = re.sub(r"-{2,}", "-", name)
    if name == raw and len(name) <= _NAME_MAX:
        return name
    suffix = _hash(raw)
    return f"{name[: _NAME_MAX - len(suffix) - 1].rstrip('-')}-{suffix}".lstrip("-")


def merge_conditions(old_conditions: Iterable[Mapping] | None, new_conditions: Iterable[Mapping],
                     now: str) -> list[dict]:
    """``new_conditions`` with ``lastTransitionTime`` kept from the old condition of the same type
    when its status did not change, else ``now``: timestamps mark transitions, not syncs."""
    old = {c.get("type"): c for c in old_conditions or () if isinstance(c, Mapping)}
    merged = []
    for condition in new_conditions:
        before = old.get(condition["type"])
        unchanged = before is not None and before.get("status") == condition["status"]
        kept = before.get("lastTransitionTime") if unchanged else None
        merged.append({**condition, "lastTransitionTime": kept or now})
    return merged


def _follow(entry: dict, by_client: Mapping[tuple[str, str, str], dict], by_id: Mapping[str, dict]
            ) -> list[dict]:
    """The hops of the chain from ``entry`` on, as ``report.chains`` has them (``chains.follow``)."""

    def next_hop(cid: str) -> str | None:
        step = by_id[cid]
        if not step.get("endpoint"):
            return None
        after = by_client.get((step["namespace"], step["network_service"], step["endpoint"]))
        return None if after is None else after["id"]

    return [by_id[cid] for cid in follow(entry["id"], next_hop)]


def _hop(entry: dict, masters: Mapping[str, str | None]) -> dict:
    path = list(entry.get("path") or [])
    hop = {
        "connection": entry["id"],
        "client": entry["client"],
        "endpoint": entry.get("endpoint"),
        "clientAttachment": entry.get("client_attachment"),
        "endpointAttachment": entry.get("endpoint_attachment"),
        "path": path,
        "state": _STATES.get(entry["state"], FAILED),
        "reason": short_reason(entry["state"], entry.get("reason", "")),
        # The replica that masters each switch of the path ("" while its shard has no holder).
        "programmedBy": [masters.get(sw) or "" for sw in path] if masters else None,
    }
    # Absent, not null: optional fields are omitted in Kubernetes objects.
    return {k: v for k, v in hop.items() if v is not None}


def _message(entry: dict) -> str:
    if entry.get("reason"):
        return entry["reason"]
    path = " → ".join(entry.get("path") or [])
    where = f"endpoint {entry.get('endpoint')} ({entry.get('endpoint_attachment')}) over {path}"
    if entry["state"] == "up":
        return f"connected to {where}"
    return f"installing flows to {where}"


def _condition(kind: str, status: str, reason: str, message: str, generation: int, now: str) -> dict:
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": now, "observedGeneration": generation}


def _conditions(entry: dict, hops: list[dict], generation: int, now: str) -> list[dict]:
    state, text = entry["state"], entry.get("reason", "")
    reason = short_reason(state, text)
    if entry.get("endpoint"):
        resolved = ("True", "EndpointChosen",
                    f"endpoint {entry['endpoint']} at {entry.get('endpoint_attachment')}")
        tags = ", ".join(f"{tag} on {link}" for link, tag in sorted((entry.get("tags") or {}).items()))
        admitted = (("False", reason, text) if state == "failed" else
                    ("True", "PathAllocated", f"path {' → '.join(entry.get('path') or [])}"
                     + (f", tags {tags}" if tags else "")))
    else:
        resolved = ("False", reason, text)
        admitted = ("Unknown", "NotResolved", "no endpoint is chosen, so no path is allocated")
    blocking = next((h for h in hops if h["state"] != "up"), None)
    if blocking is None:
        names = [entry["client"], *(h["endpoint"] for h in hops)]
        ready = ("True", UP, f"every hop is up: {' → '.join(names)}")
    else:
        ready = ("False", short_reason(blocking["state"], blocking.get("reason", "")),
                 f"connection {blocking['id']}: {_message(blocking)}")
    kinds = [("Resolved", resolved), ("Admitted", admitted), ("Ready", ready)]
    level = entry.get("service_level")
    if level is not None:
        kinds.append(("ServiceLevelMet", _level_met(entry, level)))
    policy = entry.get("policy")
    if policy is not None:  # only while a policy restricts the wire, as ServiceLevelMet with a level
        kinds.append(("PolicyIsolated", ("True", "Isolated", "; ".join(policy["governed_by"]))))
    return [_condition(kind, *values, generation, now) for kind, values in kinds]


def _level_met(entry: dict, level: dict) -> tuple[str, str, str]:
    """Whether the measured path meets the level; worded stably, so measurement noise writes nothing."""
    measured = entry.get("measured")
    if entry["state"] != "up" or measured is None:
        return ("Unknown", "NotMeasured", f"service level {level['name']}: not measured yet")
    if measured["met"]:
        return ("True", "Met", f"service level {level['name']} is met: {level['summary']}")
    return ("False", "Broken", f"service level {level['name']} is broken by what the probes measure; "
            "the controller moves the connection when it stays broken")


def stamp_generation(status: dict, generation: int) -> dict:
    """``status`` observing ``generation`` (top level and every condition)."""
    conditions = [{**c, "observedGeneration": generation} for c in status.get("conditions", [])]
    return {**status, "observedGeneration": generation, "conditions": conditions}


def _masters(status: Mapping) -> dict[str, str | None]:
    """Switch → the holder of its shard's Lease, when the controller is sharded (else empty)."""
    switches = (status.get("role") or {}).get("switches") or {}
    return {sw: info.get("holder") for sw, info in switches.items() if isinstance(info, dict)}


def desired_connections(status: Mapping, now: str,
                        generations: Mapping[tuple[str, str], int] | None = None,
                        memo: DesiredMemo | None = None) -> dict[tuple[str, str], dict]:
    """One NetworkServiceConnection per connection of the controller's ``status``, by (namespace, name).

    ``now`` (RFC 3339) stamps every condition; pass the result's conditions through
    ``merge_conditions`` with the stored ones to keep earlier transition times. ``generations`` are
    the stored objects' ``metadata.generation`` (1, a new object's, when unknown). With a ``memo``
    (kept between calls), only the connections whose entry, chain, name or generation changed are
    made again, the others keep their objects (restamped when ``now`` moved): a change costs what
    it touches (see ``DesiredMemo``).
    """
    if memo is not None:
        kept = memo.desired(status, now, generations or {})
        if kept is not None:
            return kept
    entries = sorted(status.get("connections", []), key=lambda e: e["id"])
    by_client: dict[tuple[str, str, str], dict] = {}
    for e in status.get("connections", []):  # first declared wins, as in report.chains
        by_client.setdefault((e["namespace"], e["network_service"], e["client"]), e)
    by_id = {e["id"]: e for e in entries}
    masters = _masters(status)
    generations = generations or {}
    out: dict[tuple[str, str], dict] = {}
    for e in entries:
        ifname = e["id"].split("/", 2)[2]
        name = connection_object_name(e["client"], ifname)
        if (e["namespace"], name) in out:  # two requests spelled alike: the later one is told apart
            name = connection_object_name(name, _hash(e["id"]))
        key = (e["namespace"], name)
        out[key] = _connection_object(e, _follow(e, by_client, by_id), name, ifname,
                                      generations.get(key, 1), masters, now)
    return out


class DesiredMemo:
    """What ``desired_connections`` made last, kept so that a call costs the connections that changed.

    A connection's object is made again when its entry is a new object not equal to the last one of
    its id (``observe.report.StatusRenderer`` keeps unchanged entries as the same objects), when a
    client its chain looked up (so a hop it passes) changed, or when its object name or
    generation changed; the others keep their object (restamped when ``now`` moved). A change of
    shard masters forgets everything. Callers must not change the objects they are given.
    """

    def __init__(self) -> None:
        self._masters: dict[str, str | None] | None = None
        self._forget()

    def _forget(self) -> None:
        self._entry: dict[str, dict] = {}  # connection id → its entry
        self._by_identity: dict[int, str] = {}  # id() of a held entry → its connection id
        self._clients: dict[tuple[str, str, str], set[str]] = {}  # client key → connections
        self._first: dict[tuple[str, str, str], dict] = {}  # client key → its first declared entry
        self._multi: set[tuple[str, str, str]] = set()  # client keys of more than one connection
        self._ids: list[str] | None = None  # the order of the last call, while _multi has keys
        self._groups: dict[tuple[str, str], set[str]] = {}  # (namespace, plain name) → connections
        self._key: dict[str, tuple[str, str]] = {}  # connection id → (namespace, object name)
        self._cid_of: dict[tuple[str, str], str] = {}  # and back
        self._made: dict[str, tuple[list[dict], int, str]] = {}  # id → (hops, generation, now)
        self._body: dict[str, dict] = {}  # connection id → its object
        self._looks: dict[tuple[str, str, str], set[str]] = {}  # client key → those whose chains asked
        self._order: list[str] = []  # connection ids, sorted
        self._out: dict[tuple[str, str], dict] = {}  # the objects by key, in the order of _order
        self._generations: Mapping[tuple[str, str], int] = {}
        self._now = ""

    def desired(self, status: Mapping, now: str, generations: Mapping[tuple[str, str], int]
                ) -> dict[tuple[str, str], dict] | None:
        """``desired_connections`` of ``status``, or None where it must be computed whole."""
        masters = _masters(status)
        if masters != self._masters:
            self._masters = masters
            self._forget()
        entries = status.get("connections", [])
        last = self._order[-1] if self._order else ""
        changed, removed = self._changes(entries)
        added = sorted(e["id"] for e in changed if e["id"] not in self._entry)
        touched, renamed = self._reindex(entries, changed, removed, self._reordered(entries, removed))
        if generations is not self._generations and generations != self._generations:
            cid_of = self._cid_of
            touched |= {cid_of[key] for key, _ in generations.items() ^ self._generations.items()
                        if key in cid_of}
        self._generations = generations
        for cid in touched:
            self._make(cid, generations, masters, now)
        if now != self._now:
            self._now = now
            for cid in self._order:
                self._restamp(cid, now)
        if renamed or (added and added[0] <= last):  # in id order again, at C speed
            order = self._order
            self._out = dict(zip(map(self._key.__getitem__, order), map(self._body.__getitem__, order),
                                 strict=True))
        else:
            self._out.update((self._key[cid], self._body[cid]) for cid in added)
        if len(self._out) != len(entries):  # a told-apart name that another has: made whole
            self._forget()
            return None
        return dict(self._out)

    def _changes(self, entries: list[dict]) -> tuple[list[dict], set[str]]:
        """Entries that are new or not equal to the last of their id; ids that are gone."""
        held = list(map(self._by_identity.get, map(id, entries)))
        changed = []
        i = 0
        while (i := _none_at(held, i)) >= 0:
            e = entries[i]
            old = self._entry.get(e["id"])
            if old is not None and old == e:  # equal: kept, the new object remembered
                del self._by_identity[id(old)]
                self._by_identity[id(e)] = e["id"]
                self._entry[e["id"]] = e
            else:
                changed.append(e)
            i += 1
        replaced = sum(e["id"] in self._entry for e in changed)
        removed: set[str] = set()
        if len(entries) - len(changed) + replaced != len(self._entry):
            removed = self._entry.keys() - {e["id"] for e in entries}
        return changed, removed

    def _reordered(self, entries: list[dict], removed: set[str]) -> bool:
        """Whether the entries kept from the last call are in another order now (then the first
        declared of a client key may be another); only watched while a client key has several."""
        if not self._multi:
            self._ids = None
            return False
        ids = list(map(itemgetter("id"), entries))
        before = self._ids
        self._ids = ids
        if before is None:
            return True
        kept = list(filterfalse(removed.__contains__, before)) if removed else before
        return list(filter(self._entry.__contains__, ids)) != kept  # at C speed

    def _reindex(self, entries: list[dict], changed: list[dict], removed: set[str],
                 reordered: bool) -> tuple[set[str], bool]:
        """Take in changed and removed entries: (connections whose object is made again, whether an
        object name of a connection kept changed)."""
        touched: set[str] = set()
        clients, groups = set(self._multi) if reordered else set(), set()
        for cid in removed:
            e = self._entry.pop(cid)
            del self._by_identity[id(e)]
            clients.add(_client_key(e))
            groups.add(self._unindex(cid, e))
            del self._order[bisect_left(self._order, cid)]
            key = self._key.pop(cid)
            self._out.pop(key, None)
            if self._cid_of.get(key) == cid:
                del self._cid_of[key]
            self._forget_made(cid)
        for e in changed:
            cid = e["id"]
            old = self._entry.get(cid)
            if old is None:
                insort(self._order, cid)
            else:
                del self._by_identity[id(old)]
                clients.add(_client_key(old))
                groups.add(self._unindex(cid, old))
            self._entry[cid], self._by_identity[id(e)] = e, cid
            clients.add(_client_key(e))
            self._clients.setdefault(_client_key(e), set()).add(cid)
            group = _group(e)
            self._groups.setdefault(group, set()).add(cid)
            groups.add(group)
            touched.add(cid)
        touched |= self._firsts(entries, clients, {e["id"] for e in changed}, reordered)
        renamed = False
        for group in groups:  # the first by id keeps the plain name, later ones are told apart
            members = sorted(self._groups.get(group, ()))
            for n, cid in enumerate(members):
                key = (group[0], group[1] if n == 0 else connection_object_name(group[1], _hash(cid)))
                old_key = self._key.get(cid)
                if old_key != key:
                    if self._cid_of.get(old_key) == cid:
                        del self._cid_of[old_key]
                    self._key[cid], self._cid_of[key] = key, cid
                    touched.add(cid)
                    if old_key is not None and cid in self._body:
                        renamed = True
            if not members:
                del self._groups[group]
        return {cid for cid in touched if cid in self._entry}, renamed

    def _firsts(self, entries: list[dict], clients: set[tuple[str, str, str]], fresh: set[str],
                reordered: bool) -> set[str]:
        """The first declared entry of each client key in ``clients`` (as report.chains has it), from
        the one before and the ``fresh`` ones unless that one left or the order moved: the
        connections whose chains looked up one that changed."""
        touched: set[str] = set()
        position: dict[str, int] = {}
        for key in clients:
            members = self._clients.get(key)
            before = self._first.get(key)
            if not members:
                self._clients.pop(key, None)
                first = None
            elif len(members) == 1:
                first = self._entry[next(iter(members))]
            else:
                candidates = members if reordered or before is None or before["id"] not in members else (
                    {before["id"], *(cid for cid in fresh if cid in members)})
                if len(candidates) > 1 and not position:
                    position = _positions(entries, self._ids, candidates)
                first = self._entry[min(candidates, key=position.__getitem__) if len(candidates) > 1
                                    else next(iter(candidates))]
                position = {} if len(candidates) <= _FEW else position
            (self._multi.add if members and len(members) > 1 else self._multi.discard)(key)
            if first is not before:
                touched |= self._looks.get(key, set())
                if first is None:
                    del self._first[key]
                else:
                    self._first[key] = first
        return touched

    def _unindex(self, cid: str, e: dict) -> tuple[str, str]:
        self._clients.get(_client_key(e), set()).discard(cid)
        group = _group(e)
        self._groups.get(group, set()).discard(cid)
        return group

    def _forget_made(self, cid: str) -> None:
        made = self._made.pop(cid, None)
        self._body.pop(cid, None)
        for hop in made[0] if made is not None else ():
            if hop.get("endpoint"):
                self._looks.get(_next_key(hop), set()).discard(cid)

    def _make(self, cid: str, generations: Mapping[tuple[str, str], int], masters: dict[str, str | None],
              now: str) -> None:
        """Connection ``cid``'s object: the one made before while what it is made of is equal."""
        e, key = self._entry[cid], self._key[cid]
        hops = _follow(e, self._first, self._entry)
        generation = generations.get(key, 1)
        made, body = self._made.get(cid), self._body.get(cid)
        same = made is not None and made[1] == generation and body["metadata"]["name"] == key[1] and len(
            made[0]) == len(hops) and all(a is b or a == b for a, b in zip(made[0], hops, strict=True))
        stamped = made[2] if same else now
        self._forget_made(cid)
        for hop in hops:  # a chain reaches its next hop by a client lookup only
            if hop.get("endpoint"):
                self._looks.setdefault(_next_key(hop), set()).add(cid)
        if not same:
            body = _connection_object(e, hops, key[1], cid.split("/", 2)[2], generation, masters, now)
        self._made[cid], self._body[cid] = (hops, generation, stamped), body
        if key in self._out:
            self._out[key] = body
        self._restamp(cid, now)

    def _restamp(self, cid: str, now: str) -> None:
        hops, generation, stamped = self._made[cid]
        if stamped == now:
            return
        body = self._body[cid]
        conditions = [{**c, "lastTransitionTime": now} for c in body["status"]["conditions"]]
        body = self._body[cid] = {**body, "status": {**body["status"], "conditions": conditions}}
        self._made[cid] = (hops, generation, now)
        key = self._key[cid]
        if key in self._out:
            self._out[key] = body


_FEW = 8  # candidates found by scanning the ids (at C speed) rather than indexing them all


def _positions(entries: list[dict], ids: list[str] | None, candidates: set[str]) -> dict[str, int]:
    """The positions of ``candidates`` (all connections' when they are many) in ``entries``."""
    ids = ids if ids is not None else list(map(itemgetter("id"), entries))
    if len(candidates) <= _FEW:
        return {cid: ids.index(cid) for cid in candidates}
    return dict(zip(ids, range(len(ids)), strict=True))


def _client_key(e: dict) -> tuple[str, str, str]:
    return (e["namespace"], e["network_service"], e["client"])


def _next_key(e: dict) -> tuple[str, str, str]:
    """The client key a chain looks up after ``e``: the request its endpoint makes."""
    return (e["namespace"], e["network_service"], e["endpoint"])


def _group(e: dict) -> tuple[str, str]:
    """(namespace, the object name before connections spelled alike are told apart)."""
    return (e["namespace"], connection_object_name(e["client"], e["id"].split("/", 2)[2]))


def _none_at(items: list, start: int) -> int:
    """The first None in ``items`` from ``start`` on, or -1."""
    try:
        return items.index(None, start)
    except ValueError:
        return -1


def _connection_object(e: dict, hops: list[dict], name: str, ifname: str, generation: int,
                       masters: Mapping[str, str | None], now: str) -> dict:
    """The NetworkServiceConnection of entry ``e`` (see ``desired_connections``)."""
    body = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": e["namespace"],
            "labels": {MANAGED_BY: MANAGER},
            "annotations": {CONNECTION_ANNOTATION: e["id"]},
        },
        "spec": {"client": {"pod": e["client"], "ifname": ifname},
                 "networkService": e["network_service"]},
        "status": {
            "observedGeneration": generation,
            "state": _STATES.get(e["state"], FAILED),
            "reason": short_reason(e["state"], e.get("reason", "")),
            "message": _message(e),
            "chain": [e["client"], *(h["endpoint"] for h in hops if h.get("endpoint"))],
            "hops": [_hop(h, masters) for h in hops],
            "path": list(e.get("path") or []),
            "conditions": _conditions(e, hops, generation, now),
        },
    }
    if e.get("service_level"):
        body["status"]["serviceLevel"] = dict(e["service_level"])
    if e.get("backup_path"):
        body["status"]["backupPath"] = list(e["backup_path"])
    if e.get("policy"):  # which policies, not their counters: those change at every read
        body["status"]["policy"] = {"policies": list(e["policy"]["policies"]),
                                    "governedBy": list(e["policy"]["governed_by"])}
    if e.get("chain_latency"):
        # What is planned, not what is measured: measurements move all the time, and each
        # change would be a write (ServiceLevelMet says whether the measured chain keeps it).
        chain = e["chain_latency"]
        body["status"]["chainLatency"] = {
            "plannedSeconds": chain["latency"], "boundSeconds": chain["bound"],
            "connections": list(chain["wires"])}
    return body


@dataclass(frozen=True)
class ProblemRef:
    """A Problem of an object read from Kubernetes, parsed back from its text."""

    kind: str
    namespace: str
    name: str
    field_path: str
    message: str

    @property
    def text(self) -> str:
        """The Event message: the field path first, so the field is named."""
        return f"{self.field_path}: {self.message}" if self.field_path else self.message


_PROBLEM = re.compile(
    r"^(?P<kind>[A-Za-z]+)/(?:(?P<namespace>[a-z0-9-]*)/)?(?P<name>[^/\[\]:\s]+)"
    r"(?:\[-?\d+\])?: (?P<rest>.*)$", re.DOTALL)
_FIELD_PATH = re.compile(r"^[A-Za-z_][^\s]*$")


def parse_problem(text: str) -> ProblemRef | None:
    """``<Kind>/<namespace>/<name>[i]: <field path>: <message>`` (a Kubernetes source's Problem) →
    its parts; ``Namespace/<name>`` has no namespace; the field path may be absent. None for a Problem
    of any other source (a file) or kind."""
    m = _PROBLEM.match(text)
    if m is None or m["kind"] not in EVENT_KINDS:
        return None
    rest = m["rest"]
    head, sep, tail = rest.partition(": ")
    field_path, message = (head, tail) if sep and _FIELD_PATH.match(head) else ("", rest)
    return ProblemRef(m["kind"], m["namespace"] or "", m["name"], field_path, message)
