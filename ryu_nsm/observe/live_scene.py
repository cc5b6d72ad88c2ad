"""What the live page (``/ui``) draws: the fabric laid out, every chain on it, and each link's and
wire's state, as one JSON scene computed from the status and the flow events.

The same description as the Graphviz picture (``picture``): switches, links with declared and
measured latency and reservations, clients and endpoints at their switches, wires in their chain's
colour. Positions are computed here, deterministically, so the browser needs no layout engine.
Pure: the status, flow events and fabric are passed in.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

from ryu_nsm.observe.flow_events import FlowEvent, Verdict
from ryu_nsm.observe.picture import chain_colours, format_bits, slower_than_declared
from ryu_nsm.observe.report import chain_entries

BUSY = 0.8  # a link whose reservations or measured throughput pass this share of its capacity is busy


def layout(switches: list[str], links: list[tuple[str, str]], rounds: int = 300
           ) -> dict[str, tuple[float, float]]:
    """Switch → (x, y) in [0, 1]: a force-directed layout (Fruchterman–Reingold) started from a
    circle in declared order, so the same fabric is always drawn the same way."""
    n = len(switches)
    if n <= 1:
        return {name: (0.5, 0.5) for name in switches}
    pos = {name: [math.cos(2 * math.pi * i / n), math.sin(2 * math.pi * i / n)]
           for i, name in enumerate(switches)}
    k = 2.0 / math.sqrt(n)  # the ideal distance between neighbours
    for step in range(rounds):
        heat = 0.2 * (1 - step / rounds) + 0.005
        push = {name: [0.0, 0.0] for name in switches}
        for i, a in enumerate(switches):
            for b in switches[i + 1:]:
                dx, dy = pos[a][0] - pos[b][0], pos[a][1] - pos[b][1]
                d = max(math.hypot(dx, dy), 1e-6)
                f = k * k / d
                push[a][0] += dx / d * f
                push[a][1] += dy / d * f
                push[b][0] -= dx / d * f
                push[b][1] -= dy / d * f
        for a, b in links:
            dx, dy = pos[a][0] - pos[b][0], pos[a][1] - pos[b][1]
            d = max(math.hypot(dx, dy), 1e-6)
            f = d * d / k
            push[a][0] -= dx / d * f
            push[a][1] -= dy / d * f
            push[b][0] += dx / d * f
            push[b][1] += dy / d * f
        for name in switches:
            fx, fy = push[name]
            size = max(math.hypot(fx, fy), 1e-9)
            pos[name][0] += fx / size * min(size, heat)
            pos[name][1] += fy / size * min(size, heat)
    return _normalised(pos)


def _normalised(pos: dict[str, list[float]]) -> dict[str, tuple[float, float]]:
    xs, ys = [p[0] for p in pos.values()], [p[1] for p in pos.values()]
    span = max(max(xs) - min(xs), max(ys) - min(ys), 1e-9)
    # One scale for both axes keeps the shape; centred in the unit square.
    ox = (1 - (max(xs) - min(xs)) / span) / 2
    oy = (1 - (max(ys) - min(ys)) / span) / 2
    return {name: (round(ox + (x - min(xs)) / span, 4), round(oy + (y - min(ys)) / span, 4))
            for name, (x, y) in pos.items()}


def scene(fabric: dict, positions: dict[str, tuple[float, float]], report: dict,
          events: Iterable[FlowEvent] = ()) -> dict:
    """The page's scene: ``fabric`` (``picture.fabric_description``), switch ``positions``, the
    status ``report`` (``/status``'s JSON) and recent flow ``events`` (for drops)."""
    entries = report.get("connections", [])
    drops, no_wire = _drops(events)
    colour = chain_colours(entries)
    wires, carried = _wires(entries, colour, drops)
    connected = {s["name"]: s["connected"] for s in report.get("switches", [])}
    return {
        "fabric": fabric["name"],
        "switches": [{"name": name, "x": positions[name][0], "y": positions[name][1],
                      "connected": connected.get(name), "dropped": no_wire.get(name, 0)}
                     for name in fabric["switches"]],
        "links": [_link(link, report, carried) for link in fabric["links"]],
        "ends": _ends(entries, positions),
        "wires": wires,
        "chains": [{"colour": colour.get(chain[0]["id"]), "wires": [e["id"] for e in chain],
                    "names": [chain[0]["client"], *(e["endpoint"] or "✗" for e in chain)]}
                   for chain in chain_entries(entries)],
        "failed": [{"id": e["id"], "reason": e.get("reason", "")} for e in entries if e["state"] == "failed"],
    }


def _drops(events: Iterable[FlowEvent]) -> tuple[Counter, Counter]:
    """Dropped frames (sampled, scaled by their sampling rate) by connection id, and by switch for
    frames on no wire."""
    by_wire: Counter = Counter()
    by_switch: Counter = Counter()
    for event in events:
        if event.verdict is Verdict.DROPPED:
            if event.wire is not None:
                by_wire[event.wire.connection_id] += event.sampling_rate
            else:
                by_switch[event.node] += event.sampling_rate
    return by_wire, by_switch


def _wires(entries: list[dict], colour: dict[str, str], drops: Counter) -> tuple[list[dict], Counter]:
    """Each connection as drawn, and the bit/s its measured throughput puts on each switch pair."""
    hop_of = {e["id"]: hop for chain in chain_entries(entries) for hop, e in enumerate(chain)}
    carried: Counter = Counter()
    wires = []
    for e in entries:
        throughput = e.get("throughput") or {}
        for a, b in zip(e["path"], e["path"][1:], strict=False):
            carried[frozenset((a, b))] += max(throughput.values(), default=0.0)
        measured = e.get("measured")
        wires.append({
            "id": e["id"], "service": e["network_service"], "client": e["client"],
            "endpoint": e["endpoint"], "hop": hop_of.get(e["id"], 0), "colour": colour.get(e["id"]),
            "nodes": _wire_nodes(e), "backup": e.get("backup_path") or [], "state": e["state"],
            "sla": _sla(e), "level": (e.get("service_level") or {}).get("summary"),
            "measured_latency": measured["latency"] if measured else None,
            "loss": measured["loss"] if measured else None,
            "throughput": throughput, "dropped": drops.get(e["id"], 0),
        })
    return wires, carried


def _wire_nodes(e: dict) -> list[str]:
    """The nodes a wire is drawn through: its client's box, the switches, its endpoint's box."""
    if e["state"] == "failed" or not e["path"] or not e["endpoint"]:
        return []
    return [_end_id(e["namespace"], e["client"]), *e["path"], _end_id(e["namespace"], e["endpoint"])]


def _sla(e: dict) -> str:
    """met, broken, unmeasured (a level, nothing measured yet) or none (no level)."""
    if not e.get("service_level"):
        return "none"
    measured = e.get("measured")
    if measured is None or measured.get("latency") is None:
        return "unmeasured"
    return "met" if measured["met"] else "broken"


def _link(link: dict, report: dict, carried: Counter) -> dict:
    quality = next((q for q in report.get("links", []) if q["link"] == link["name"]), None)
    reserved = next((max(r["reserved"].values(), default=0.0) for r in report.get("reservations", [])
                     if r["link"] == link["name"]), 0.0)
    throughput = carried.get(frozenset((link["a"], link["b"])), 0.0)
    load = max(reserved, throughput) / link["capacity"] if link["capacity"] else 0.0
    slow = quality is not None and slower_than_declared(link, quality)
    state = "slow" if slow else "busy" if load >= BUSY else "ok" if quality else "unmeasured"
    label = [f"{format_bits(link['capacity'])}bit/s, {link['latency'] * 1e3:g}ms declared"]
    if quality is not None and quality.get("latency") is not None:
        loss = f", {quality['loss']:.0%} loss" if quality.get("loss") else ""
        label.append(f"{quality['latency'] * 1e3:.1f}ms measured{loss}")
    if load >= 0.01:
        label.append(f"load {load:.0%}")
    if state in ("slow", "busy"):
        label.append(state.upper())
    return {"name": link["name"], "a": link["a"], "b": link["b"], "capacity": link["capacity"],
            "latency": link["latency"], "measured": quality.get("latency") if quality else None,
            "loss": quality.get("loss") if quality else None, "reserved": reserved,
            "throughput": throughput, "load": round(load, 4), "state": state, "label": label}


def _ends(entries: list[dict], positions: dict[str, tuple[float, float]]) -> list[dict]:
    """Clients and endpoints as boxes beside the switch they attach at, pushed away from the
    fabric's centre and fanned out when several share a switch."""
    at: dict[str, list[tuple[str, str]]] = {}
    for e in entries:
        for name, attachment in ((e["client"], e.get("client_attachment")),
                                 (e["endpoint"], e.get("endpoint_attachment"))):
            if name and attachment:
                switch = attachment.partition("/")[0]
                end = (_end_id(e["namespace"], name), name)
                if switch in positions and end not in at.setdefault(switch, []):
                    at[switch].append(end)
    cx = sum(x for x, _ in positions.values()) / max(len(positions), 1)
    cy = sum(y for _, y in positions.values()) / max(len(positions), 1)
    out = []
    for switch, ends in sorted(at.items()):
        x, y = positions[switch]
        base = math.atan2(y - cy, x - cx) if (x, y) != (cx, cy) else math.pi / 2
        for i, (end_id, name) in enumerate(sorted(ends)):
            angle = base + (i - (len(ends) - 1) / 2) * 0.6
            out.append({"id": end_id, "name": name, "switch": switch,
                        "x": round(x + 0.16 * math.cos(angle), 4), "y": round(y + 0.16 * math.sin(angle), 4)})
    return out


def _end_id(namespace: str, name: str) -> str:
    return f"{namespace}:{name}"
