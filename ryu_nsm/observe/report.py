"""How connections, chains and flows are shown: one JSON shape for plan and status, one text form."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ryu_nsm.core.chains import follow
from ryu_nsm.core.flows import policy_flow_count
from ryu_nsm.core.planner import PLANNED, PlannedConnection
from ryu_nsm.core.policy_counters import PolicyCounters
from ryu_nsm.core.status import ConnectionStatus, PathMeasurement, Status
from ryu_nsm.qos.service_level import format_duration


def connection_entry(pc: PlannedConnection, state: str) -> dict:
    """The JSON form of one connection (the same in ``plan --json`` and ``status --json``)."""
    c = pc.connection
    entry = {
        "id": pc.id,
        "network_service": c.network_service,
        "namespace": c.namespace,
        "client": c.client,
        "client_attachment": str(c.client_attachment) if c.client_attachment else None,
        "endpoint": c.endpoint,
        "endpoint_attachment": str(c.endpoint_attachment) if c.endpoint_attachment else None,
        "path": list(pc.path.switches) if pc.path is not None and pc.state == PLANNED else [],
        "tags": dict(pc.tags),
        "state": state,
    }
    if pc.reason:
        entry["reason"] = pc.reason
    if pc.policy is not None and pc.state == PLANNED:
        entry["policy"] = {"zone": pc.zone, "flows": policy_flow_count(pc.flows),
                           "policies": list(pc.policy.policies), "governed_by": list(pc.policy.governed_by)}
    if pc.level is not None:
        entry["service_level"] = {"name": pc.level.name, "summary": pc.level.summary()}
        if pc.backup is not None:
            entry["backup_path"] = list(pc.backup.switches)
        if pc.path is not None and pc.state == PLANNED:
            entry["path_latency"] = pc.path.latency
        if pc.chain is not None and pc.state == PLANNED:
            entry["chain_latency"] = {"latency": pc.chain.latency, "bound": pc.chain.bound,
                                      "wires": list(pc.chain.wires), "met": pc.chain.met}
        if pc.meters:
            entry["meters"] = {sw: meter.meter_id for sw, meter in pc.meters}
        if pc.note:
            entry["note"] = pc.note
    return entry


class Memo:
    """What was made of each object, keyed by the object's identity and kept while it may come again:
    making a list for a long sequence whose objects are mostly the same as last time costs the new
    ones (the lookup runs at C speed). The objects are held, so their ids are not reused."""

    def __init__(self, make: Callable[[Any], Any]) -> None:
        self.make = make
        self._made: dict[int, Any] = {}
        self._held: dict[int, Any] = {}

    def all(self, objects: Sequence) -> list:
        """``make(o)`` for each of ``objects``, in order."""
        ids = list(map(id, objects))
        out = list(map(self._made.get, ids))
        i = 0
        while (i := _index(out, i)) >= 0:  # at C speed from one new object to the next
            made = self._made[ids[i]] = out[i] = self.make(objects[i])
            self._held[ids[i]] = objects[i]
            if made is None:
                raise ValueError("a Memo's make must not return None")
        if len(self._made) > 2 * len(ids) + 100:  # forget what is gone, now and then
            self._made, self._held = dict(zip(ids, out, strict=True)), dict(zip(ids, objects, strict=True))
        return out


def _index(items: list, start: int) -> int:
    """The first None in ``items`` from ``start`` on, or -1."""
    try:
        return items.index(None, start)
    except ValueError:
        return -1


class StatusRenderer:
    """Renders the controller's status to JSON, keeping each connection's entry between renders: a
    status poll of a big fabric renders again only the connections whose ``ConnectionStatus`` is a
    new object (the core keeps unchanged ones), and an unchanged connection's entry is the same object
    as last time (``observe.metrics`` and ``k8s.connection_status`` key theirs on that). Not
    thread-safe: the shell renders under its lock."""

    def __init__(self) -> None:
        # Connection id → (planned connection, state, its entry without measurements).
        self._planned: dict[str, tuple[PlannedConnection, str, dict]] = {}
        self._connections = Memo(self._entry)
        self._history = Memo(lambda h: {"time": h.time, "connection": h.connection, "what": h.what})

    def render(self, status: Status) -> dict:
        """The JSON form of the controller's status (``/status``): connections, switches, history."""
        connections = self._connections.all(status.connections)
        if len(self._planned) > 2 * len(connections) + 100:
            live = {c.planned.id for c in status.connections}
            self._planned = {cid: held for cid, held in self._planned.items() if cid in live}
        c = status.counters
        return {
            "fabric": status.fabric, "connections": connections,
            "switches": [{"name": s.name, "dpid": f"{s.dpid:#018x}", "connected": s.connected,
                          "flows": s.flows} for s in status.switches],
            "history": self._history.all(status.history),
            "problems": list(status.problems), "reservations": list(status.reservations),
            "counters": {"moves": dict(c.moves), "failures": c.failures, "breaches": dict(c.breaches)},
            "links": [{"link": q.name, "latency": q.quality.latency, "loss": q.quality.loss,
                       "samples": q.quality.samples, "error": q.quality.error,
                       **({"planned_latency": q.planned_latency} if q.planned_latency is not None else {})}
                      for q in status.links],
        }

    def _entry(self, status: ConnectionStatus) -> dict:
        pc = status.planned
        cached = self._planned.get(pc.id)
        if cached is None or cached[0] is not pc or cached[1] != status.state:
            cached = self._planned[pc.id] = (pc, status.state, connection_entry(pc, status.state))
        entry = cached[2]
        if status.throughput is not None:
            entry = {**entry, "throughput": dict(status.throughput)}
        if status.meter_drops is not None:
            entry = {**entry, "meter_drops": dict(status.meter_drops)}
        if status.policy is not None and "policy" in entry:
            entry = {**entry, "policy": {**entry["policy"], **_policy_counters(status.policy)}}
        if status.measured is not None:
            entry = {**entry, "measured": _measured(status.measured)}
            if status.chain_measured is not None:
                chain = entry["chain_latency"]
                entry["chain_latency"] = {**chain, "measured": _measured(status.chain_measured)}
        return entry


def status_json(status: Status) -> dict:
    """The JSON form of one status, rendered from scratch (tests, one-off calls)."""
    return StatusRenderer().render(status)


def _policy_counters(counters: PolicyCounters) -> dict:
    return {"rules": [{"policy": r.policy, "rule": r.rule, "direction": r.direction, "workload": r.workload,
                       "packets": r.packets} for r in counters.rules],
            "dropped": [{"workload": d.workload, "direction": d.direction, "packets": d.packets}
                        for d in counters.dropped]}


def _measured(m: PathMeasurement) -> dict:
    return {"latency": m.latency, "loss": m.loss, "complete": m.complete, "met": m.met}


def chain_entries(entries: list[dict]) -> list[list[dict]]:
    """Chains as their connection entries in order, from the client's on.

    A service function's Pod and its NetworkServiceEndpoint share a name (see examples/README.md),
    so the connection a function asks for continues the chain that reached it. A chain ends at an
    entry without an endpoint (unresolved), or where it would come back to one it passed.
    """
    by_client: dict[tuple[str, str, str], dict] = {}
    for e in entries:
        by_client.setdefault((e["namespace"], e["network_service"], e["client"]), e)
    by_id = {e["id"]: e for e in entries}
    reached = {(e["namespace"], e["network_service"], e["endpoint"]) for e in entries if e["endpoint"]}

    def next_hop(cid: str) -> str | None:
        step = by_id[cid]
        if not step["endpoint"]:
            return None
        after = by_client.get((step["namespace"], step["network_service"], step["endpoint"]))
        return None if after is None else after["id"]

    return [[by_id[cid] for cid in follow(e["id"], next_hop)] for e in entries
            if (e["namespace"], e["network_service"], e["client"]) not in reached]


def chains(entries: list[dict]) -> list[list[str]]:
    """Chains as lists of names: client → endpoint → endpoint … (→ ✗ (reason) when unresolved)."""
    out = []
    for chain in chain_entries(entries):
        names = [chain[0]["client"], *(e["endpoint"] for e in chain if e["endpoint"])]
        if not chain[-1]["endpoint"]:
            names.append(f"✗ ({chain[-1].get('reason', 'unresolved')})")
        out.append(names)
    return out


def _chain_line(chain: dict) -> str:
    """'chain of 3 wires: 4ms of ≤ 5ms declared (met), 6.2ms measured (NOT met)'."""
    def verdict(met: bool) -> str:
        return "met" if met else "NOT met"

    wires = len(chain["wires"])
    line = (f"chain of {wires} wire{'' if wires == 1 else 's'}: {format_duration(chain['latency'])} of ≤ "
            f"{format_duration(chain['bound'])} declared ({verdict(chain['met'])})")
    measured = chain.get("measured")
    if measured is not None:
        line += f", {format_duration(measured['latency'])} measured ({verdict(measured['met'])})"
    return line


def render_text(report: dict) -> str:
    """A plain-text picture of a plan or status report."""
    lines = [f"fabric {report['fabric']}"]
    for problem in report.get("problems", []):
        lines.append(f"  invalid: {problem}")
    lines.append("chains:")
    for chain in chains(report["connections"]) or []:
        lines.append("  " + " → ".join(chain))
    lines.append("connections:")
    for e in report["connections"]:
        ends = f"{e['client_attachment']} → {e['endpoint'] or '?'}"
        if e["endpoint_attachment"]:
            ends += f" ({e['endpoint_attachment']})"
        path = "-".join(e["path"]) or "-"
        lines.append(f"  {e['id']:<28} {e['network_service']:<16} {ends:<40} path {path:<14} {e['state']}")
        if e.get("reason"):
            lines.append(f"      reason: {e['reason']}")
        if e.get("service_level"):
            level = e["service_level"]
            backup = f"; backup {'-'.join(e['backup_path'])}" if e.get("backup_path") else ""
            lines.append(f"      service level {level['name']}: {level['summary']}{backup}")
        if e.get("chain_latency"):
            lines.append("      " + _chain_line(e["chain_latency"]))
        if e.get("policy"):
            policy = e["policy"]
            lines.append(f"      policy: {policy['flows']} flows, conntrack zone {policy['zone']}")
            lines.extend(f"        {why}" for why in policy["governed_by"])
            lines.extend(f"        {r['policy']} {r['rule']} for {r['workload']}: "
                         f"allowed {r['packets']} packets" for r in policy.get("rules", []))
            lines.extend(f"        {d['workload']} isolated for {d['direction']}: "
                         f"dropped {d['packets']} packets" for d in policy.get("dropped", []))
        if e.get("note"):
            lines.append(f"      note: {e['note']}")
    if report.get("reservations"):
        lines.append("reserved bandwidth (bit/s, each way):")
        for r in report["reservations"]:
            held = ", ".join(f"{way} {bits:.0f}" for way, bits in r["reserved"].items())
            queue = f"  in queue {r['queue']}" if "queue" in r else ""
            lines.append(f"  {r['link']:<24} capacity {r['capacity']:.0f}  {held}  "
                         f"residual {r['residual']:.0f}{queue}")
    if "switches" in report:
        lines.append("switches:")
        masters = (report.get("role") or {}).get("switches") or {}
        for s in report["switches"]:
            state = "connected" if s["connected"] else "disconnected"
            shard = masters.get(s["name"])
            mastered = "" if not isinstance(shard, dict) else (
                f"  shard {shard['shard']} held by {shard['holder'] or 'nobody'}, here {shard['role']}")
            lines.append(f"  {s['name']:<8} {s['dpid']}  {state}  flows={s['flows']}{mastered}")
    if "counters" in report:
        c = report["counters"]
        moves = ", ".join(f"{why} {n}" for why, n in sorted(c["moves"].items()))
        lines.append(f"since start: {sum(c['moves'].values())} moves{f' ({moves})' if moves else ''}, "
                     f"{c['failures']} failures, {sum(c['breaches'].values())} service level breaches")
    if report.get("history"):
        lines.append("recent changes:")
        for h in report["history"][-10:]:
            lines.append(f"  {h['connection']}: {h['what']}")
    if "flows" in report:
        lines.append("flows:")
        for switch, flows in report["flows"].items():
            lines.append(f"  {switch}:")
            lines.extend(f"    {f}" for f in flows)
    return "\n".join(lines)
