"""Import a fabric's switches and links from a GraphML or networkx node-link JSON graph.

The naming rule and the attributes read are in docs/topology.md; the structure is checked before
networkx reads it, so that an error names the broken node or edge.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

import networkx as nx

from ryu_nsm.sources.topology_build import (
    _PARSERS,
    MAX_IFNAME,
    TopologyError,
    _At,
    _Builder,
    _capacity,
    _LinkDraft,
    _list,
    _mapping,
    _number,
    _parse,
)

MAX_IMPORTED_NAME = MAX_IFNAME - len("-eth999")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_FALLBACK_NAME = re.compile(r"^s\d+$")
_FORMATS = {".graphml": "graphml", ".xml": "graphml", ".json": "node-link"}
# (edge key, link attribute), first found wins: topology collections publish distance as `dist` (km)
_EDGE_KEYS = (("latency", "latency"), ("distance", "distance"), ("dist", "distance"), ("cost", "cost"))


def _import_section(builder: _Builder, yaml_path: Path, at: _At, value: Any) -> None:
    spec = {"file": value} if isinstance(value, str) else _mapping(at, value, ("file", "format"), ("file",))
    file_at = at.key("file") if isinstance(value, dict) else at
    if not isinstance(spec["file"], str) or not spec["file"]:
        raise file_at.error(f"expected a file name, got {spec['file']!r}")
    target = yaml_path.parent / spec["file"]
    fmt = spec.get("format") or _FORMATS.get(target.suffix.lower())
    if fmt not in ("graphml", "node-link"):
        where = at.key("format") if "format" in spec else file_at
        raise where.error(f"format must be 'graphml' or 'node-link' (cannot tell from {spec['file']!r})")
    _import_graph(builder, target, fmt, file_at)


def _import_graph(builder: _Builder, path: Path, fmt: str, file_at: _At) -> None:
    """Add the switches and links of the graph file at ``path``; ``file_at`` is where it was named."""
    if not path.is_file():
        raise file_at.error(f"cannot read {str(path)!r}: no such file")
    src = _At(str(path))
    graph = _read_graphml(path, src) if fmt == "graphml" else _read_node_link(path, src)
    _add_graph(builder, graph, src)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


_GRAPHML_TYPES = {"int": int, "long": int, "float": float, "double": float}


def _read_graphml(path: Path, src: _At) -> nx.Graph:
    """Check a GraphML file's structure (to name the broken element), then read it with networkx."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        line, column = e.position
        raise TopologyError(src.file, f"line {line}, column {column + 1}", "not well-formed XML") from None
    if _local(root.tag) != "graphml":
        raise src.error(f"expected a <graphml> document, got <{_local(root.tag)}>")
    keys = {k.get("id"): k for k in root if _local(k.tag) == "key"}
    graph = next((g for g in root if _local(g.tag) == "graph"), None)
    if graph is None:
        raise src.key("graph").error("no <graph> element")
    nodes: set[str | None] = set()
    counts: Counter[str] = Counter()
    for element in graph:
        kind = _local(element.tag)
        if kind not in ("node", "edge"):
            continue
        at = src.key(f"{kind}[{counts[kind]}]")
        counts[kind] += 1
        if kind == "node":
            if element.get("id") is None:
                raise at.key("id").error("missing")
            nodes.add(element.get("id"))
        else:
            for end in ("source", "target"):
                if element.get(end) not in nodes:
                    raise at.key(end).error(f"unknown node {element.get(end)!r}")
        _check_graphml_data(at, element, keys)
    try:
        return nx.read_graphml(path)
    except (nx.NetworkXError, ValueError, KeyError) as e:
        raise src.key("graph").error(f"not readable as GraphML: {e}") from None


def _check_graphml_data(at: _At, element: ET.Element, keys: dict[str | None, ET.Element]) -> None:
    """Each <data> of a node or edge refers to a declared key and holds a value of its type."""
    for data in element:
        if _local(data.tag) != "data":
            continue
        key = keys.get(data.get("key"))
        if key is None:
            raise at.key("data").error(f"undeclared key {data.get('key')!r}")
        name = key.get("attr.name") or data.get("key")
        convert = _GRAPHML_TYPES.get(key.get("attr.type", "string"))
        if convert is not None:
            try:
                convert(data.text or "")
            except ValueError:
                raise at.key(name).error(f"{data.text!r} is not a {key.get('attr.type')}") from None


def _read_node_link(path: Path, src: _At) -> nx.Graph:
    """Check a node-link JSON document (with 'links' or 'edges'), then build it with networkx."""
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        where = f"line {e.lineno}, column {e.colno}"
        raise TopologyError(src.file, where, f"not valid JSON: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise src.error(f"cannot read: {e}") from None
    if not isinstance(doc, dict) or "nodes" not in doc:
        raise src.error("expected a node-link object with 'nodes' and 'links' (or 'edges')")
    present = [key for key in ("links", "edges") if key in doc]
    if len(present) != 1:
        raise src.error("expected exactly one of 'links' or 'edges'")
    edges_key = present[0]
    ids: set = set()
    for i, node in enumerate(_list(src.key("nodes"), doc["nodes"])):
        at = src.key("nodes").index(i)
        if not isinstance(node, dict):
            raise at.error(f"expected an object, got {node!r}")
        node_id = node.get("id")
        if isinstance(node_id, bool) or not isinstance(node_id, str | int):
            raise at.key("id").error(f"expected a string or integer id, got {node_id!r}")
        if node_id in ids:
            raise at.key("id").error(f"duplicate node id {node_id!r}")
        ids.add(node_id)
    for i, edge in enumerate(_list(src.key(edges_key), doc[edges_key])):
        at = src.key(edges_key).index(i)
        if not isinstance(edge, dict):
            raise at.error(f"expected an object, got {edge!r}")
        for end in ("source", "target"):
            if end not in edge:
                raise at.key(end).error("missing")
            if isinstance(edge[end], list | dict) or edge[end] not in ids:
                raise at.key(end).error(f"unknown node {edge[end]!r}")
    return nx.node_link_graph(doc, edges=edges_key)


def _imported_name(text: str, index: int, taken: set[str]) -> str:
    """The documented naming rule for imported nodes."""
    name = _UNSAFE.sub("_", text).strip("_")
    usable = (0 < len(name) <= MAX_IMPORTED_NAME and name[0].isalpha()
              and not _FALLBACK_NAME.match(name) and name not in taken)
    return name if usable else f"s{index}"


def _coordinate(at: _At, data: dict, names: tuple[str, str], limit: float) -> float | None:
    key = next((n for n in names if n in data), None)
    if key is None:
        return None
    value = _number(data[key])
    if value is None or not -limit <= value <= limit:
        raise at.key(key).error(f"expected degrees from {-limit} to {limit}, got {data[key]!r}")
    return value


def _position(at: _At, data: dict) -> tuple[float, float] | None:
    """(latitude, longitude) from Topology Zoo's Latitude/Longitude, else from ``pos``.

    ``pos`` is [longitude, latitude], GeoJSON's order, as the node-link files of topology
    collections give it.
    """
    lat = _coordinate(at, data, ("Latitude", "latitude"), 90.0)
    lon = _coordinate(at, data, ("Longitude", "longitude"), 180.0)
    if lat is not None and lon is not None:
        return lat, lon
    pos = data.get("pos")
    if pos is None:
        return None
    lon, lat = (_number(v) for v in pos) if isinstance(pos, list | tuple) and len(pos) == 2 else (None, None)
    if lon is None or lat is None or not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
        raise at.key("pos").error(f"expected [longitude, latitude] in degrees, got {pos!r}")
    return lat, lon


def _label(node: Any, data: dict) -> str:
    """What an imported node is called: its ``label``, else its ``name``, else its id."""
    given = [data.get(key) for key in ("label", "name")]
    return next((str(text) for text in given if text not in (None, "")), str(node))


def _add_graph(builder: _Builder, graph: nx.Graph, src: _At) -> None:
    if not graph.number_of_nodes():
        raise src.key("nodes").error("the graph has no nodes")
    names: dict[Any, str] = {}
    taken: set[str] = set()
    for index, (node, data) in enumerate(graph.nodes(data=True), 1):
        at = src.key(f"node {node}")
        label = _label(node, data)
        name = _imported_name(label, index, taken)
        taken.add(name)
        names[node] = name
        builder.switches.append((name, None, at))
        builder.labels[name] = label
        position = _position(at, data)
        if position is not None:
            builder.coordinates[name] = position
    pending: Counter[tuple] = Counter()  # directed edges waiting for their reverse
    edges = graph.edges(keys=True, data=True) if graph.is_multigraph() else graph.edges(data=True)
    for u, v, *rest in edges:
        data = rest[-1]
        if graph.is_directed():
            if pending[v, u]:
                pending[v, u] -= 1
                continue
            pending[u, v] += 1
        parallel = graph.is_multigraph() and graph.number_of_edges(u, v) > 1
        at = src.key(f"edge {u}-{v}" + (f"#{rest[0]}" if parallel else ""))
        builder.links.append(_LinkDraft(names[u], names[v], at, attrs=_edge_attrs(at, data)))


def _edge_attrs(at: _At, data: dict) -> dict[str, float]:
    """Link attributes from an imported edge, understanding Topology Zoo's LinkSpeed* fields."""
    attrs = {}
    present = {k: v for k, v in data.items() if v not in (None, "")}
    for key in ("capacity", "bandwidth", "LinkSpeedRaw"):
        if key in present:
            attrs["capacity"] = _parse(at.key(key), _capacity, present[key])
            break
    else:
        if "LinkSpeed" in present:
            text = f"{present['LinkSpeed']}{present.get('LinkSpeedUnits', '')}"
            attrs["capacity"] = _parse(at.key("LinkSpeed"), _capacity, text)
    for key, attr in _EDGE_KEYS:
        if key in present and attr not in attrs:
            attrs[attr] = _parse(at.key(key), _PARSERS[attr], present[key])
    return attrs
