"""A picture of the fabric with the chains drawn on it, as Graphviz DOT (`plan --dot`, `status --dot`).

Switches are circles (dashed when disconnected), links are grey lines labelled with their
capacity and declared latency, then, when known, what is measured and what is reserved; a link that
measures slower than declared or loses probes is red. Clients and endpoints are boxes at the switch
of their attachment. Every wire is drawn along its path in its chain's colour (a protected wire's
backup dashed); a wire that failed is a red dotted line from its client, and the reason is listed
under the title. Render it with `dot -Tsvg`.
"""

from __future__ import annotations

import json

from ryu_nsm.core.fabric import Fabric
from ryu_nsm.core.status import SLOW_MARGIN
from ryu_nsm.observe.report import chain_entries

_PALETTE = ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22")


def fabric_description(fabric: Fabric) -> dict:
    """The fabric's switches and links as JSON (served as ``/status/fabric``)."""
    return {"name": fabric.name, "switches": [s.name for s in fabric.switches],
            "links": [{"name": link.name, "a": link.a, "b": link.b, "capacity": link.capacity,
                       "latency": link.latency} for link in fabric.links]}


def to_dot(fabric: dict, report: dict) -> str:
    """DOT text for ``fabric`` (``fabric_description``) with the connections of ``report`` (the JSON of
    `plan --json` or `status --json`)."""
    entries = report.get("connections", [])
    failed = [e for e in entries if e["state"] == "failed"]
    title = [f"fabric {fabric['name']}: {len(entries)} connection(s), {len(failed)} failed"]
    title += [f"failed {e['id']}: {e.get('reason', '')}" for e in failed]
    lines = [f"graph {_q(fabric['name'])} {{",
             f"  graph [label={_q(chr(10).join(title))}, labelloc=t, labeljust=l, fontname=Helvetica];",
             "  node [fontname=Helvetica]; edge [fontname=Helvetica, fontsize=9];"]
    connected = {s["name"]: s["connected"] for s in report.get("switches", [])}
    for name in fabric["switches"]:
        style = ", style=dashed, color=gray60" if connected.get(name) is False else ""
        lines.append(f"  {_q(name)} [shape=circle{style}];")
    measured = {q["link"]: q for q in report.get("links", [])}
    reserved = {r["link"]: r for r in report.get("reservations", [])}
    for link in fabric["links"]:
        lines.append(f"  {_q(link['a'])} -- {_q(link['b'])} [{_link_attrs(link, measured, reserved)}];")
    colour = chain_colours(entries)
    ends = sorted({(_pod(e["namespace"], name), attachment.partition("/")[0])
                   for e in entries for name, attachment in ((e["client"], e.get("client_attachment")),
                                                             (e["endpoint"], e.get("endpoint_attachment")))
                   if name and attachment})
    for node in sorted({node for node, _ in ends}):
        lines.append(f"  {_q(node)} [shape=box, label={_q(node.partition(':')[2])}];")
    for node, switch in ends:  # where it attaches (a function may attach at two switches)
        lines.append(f"  {_q(node)} -- {_q(switch)} [color=gray80];")
    for e in entries:
        lines += _wire(e, colour.get(e["id"], _PALETTE[0]))
    lines.append("}")
    return "\n".join(lines) + "\n"


def _link_attrs(link: dict, measured: dict, reserved: dict) -> str:
    label = [f"{format_bits(link['capacity'])} {link['latency'] * 1e3:g}ms"]
    colour = "gray50"
    q = measured.get(link["name"])
    if q is not None and q.get("latency") is not None:
        label.append(f"measured {q['latency'] * 1e3:.1f}ms {q.get('loss', 0):.0%} loss")
        if slower_than_declared(link, q):
            colour = "red"
    r = reserved.get(link["name"])
    if r is not None:
        label.append(f"reserved {format_bits(max(r['reserved'].values()))}")
    return f"label={_q(chr(10).join(label))}, color={colour}, tooltip={_q(link['name'])}"


def slower_than_declared(link: dict, quality: dict) -> bool:
    """Whether a link (``fabric_description``'s) measures slower than it declares (beyond the
    measurement's error), or loses probes."""
    return quality.get("latency") is not None and (
        quality["latency"] > link["latency"] + SLOW_MARGIN + quality.get("error", 0.0)
        or bool(quality.get("loss")))


def _wire(e: dict, colour: str) -> list[str]:
    client = _pod(e["namespace"], e["client"])
    if e["state"] == "failed" or not e.get("path") or not e.get("endpoint"):
        return [f"  {_q(client)} -- {_q(client + ' ✗')} [color=red, style=dotted, tooltip={_q(e['id'])}];",
                f"  {_q(client + ' ✗')} [shape=plaintext, fontcolor=red, label=\"✗\"];"]
    endpoint = _pod(e["namespace"], e["endpoint"])
    out = [f"  {' -- '.join(_q(n) for n in (client, *e['path'], endpoint))} "
           f"[color={_q(colour)}, penwidth=2.5, tooltip={_q(e['id'])}];"]
    backup = (e.get("backup_path") or [])
    if len(backup) > 1:
        out.append(f"  {' -- '.join(_q(n) for n in backup)} "
                   f"[color={_q(colour)}, penwidth=1.5, style=dashed, tooltip={_q(e['id'] + ' backup')}];")
    return out


def chain_colours(entries: list[dict]) -> dict[str, str]:
    """Connection id → its chain's colour (the chains of ``report.chain_entries``)."""
    return {e["id"]: _PALETTE[index % len(_PALETTE)]
            for index, chain in enumerate(chain_entries(entries)) for e in chain}


def _pod(namespace: str, name: str) -> str:
    return f"{namespace}:{name}"


def format_bits(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:g}{unit}"
    return f"{value:g}"


def _q(text: str) -> str:
    """A DOT string literal (JSON's escaping is DOT's for quotes, backslashes and newlines)."""
    return json.dumps(str(text), ensure_ascii=False)
