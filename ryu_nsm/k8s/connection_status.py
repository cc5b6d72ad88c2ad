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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

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
    (kept between calls), a connection whose entry, chain and generation are equal to the last
    call's keeps its object (restamped when ``now`` moved): a change costs what it touches.
    """
    entries = sorted(status.get("connections", []), key=lambda e: e["id"])
    by_client: dict[tuple[str, str, str], dict] = {}
    for e in status.get("connections", []):  # first declared wins, as in report.chains
        by_client.setdefault((e["namespace"], e["network_service"], e["client"]), e)
    by_id = {e["id"]: e for e in entries}
    masters = _masters(status)
    generations = generations or {}
    memo = memo.start(masters, len(entries)) if memo is not None else None
    out: dict[tuple[str, str], dict] = {}
    for e in entries:
        ifname = e["id"].split("/", 2)[2]
        name = memo.object_name(e["client"], ifname) if memo is not None else (
            connection_object_name(e["client"], ifname))
        if (e["namespace"], name) in out:  # two requests spelled alike: the later one is told apart
            name = connection_object_name(name, _hash(e["id"]))
        key = (e["namespace"], name)
        generation = generations.get(key, 1)
        hops = _follow(e, by_client, by_id)
        body = memo.get(e["id"], hops, key, generation, now) if memo is not None else None
        if body is None:
            body = _connection_object(e, hops, name, ifname, generation, masters, now)
            if memo is not None:
                memo.put(e["id"], hops, key, generation, now, body)
        out[key] = body
    return out


class DesiredMemo:
    """The objects ``desired_connections`` made last, by connection id, with what they were made of.

    Entries and hops are compared by equality (identity first: ``observe.report.StatusRenderer``
    keeps unchanged entries as the same objects); a change of shard masters forgets everything.
    Callers must not change the objects they are given.
    """

    def __init__(self) -> None:
        self._made: dict[str, tuple[list[dict], tuple[str, str], int, str, dict]] = {}
        self._masters: dict[str, str | None] | None = None
        self._names: dict[tuple[str, str], str] = {}

    def object_name(self, pod: str, ifname: str) -> str:
        """``connection_object_name``, remembered."""
        name = self._names.get((pod, ifname))
        if name is None:
            name = self._names[(pod, ifname)] = connection_object_name(pod, ifname)
        return name

    def start(self, masters: dict[str, str | None], size: int) -> DesiredMemo:
        if masters != self._masters or len(self._made) > 2 * size + 100:
            self._made, self._masters, self._names = {}, masters, {}
        return self

    def get(self, cid: str, hops: list[dict], key: tuple[str, str], generation: int, now: str) -> dict | None:
        made = self._made.get(cid)
        if made is None or made[1:3] != (key, generation) or len(made[0]) != len(hops) or not all(
                a is b or a == b for a, b in zip(made[0], hops, strict=True)):
            return None
        body = made[4]
        if made[3] != now:  # only the conditions' stamp moved
            conditions = [{**c, "lastTransitionTime": now} for c in body["status"]["conditions"]]
            body = {**body, "status": {**body["status"], "conditions": conditions}}
            self._made[cid] = (made[0], key, generation, now, body)
        return body

    def put(self, cid: str, hops: list[dict], key: tuple[str, str], generation: int, now: str,
            body: dict) -> None:
        self._made[cid] = (hops, key, generation, now, body)


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
