"""Load a fabric from a topology file: our YAML, GraphML, or node-link JSON; or generate a fat-tree.

The file format, port numbering and the import rules are in docs/topology.md; quantities follow
docs/units.md. Every mistake is a TopologyError naming the file and the field.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import yaml

from ryu_nsm.core.fabric import Fabric, Host, HostInterface, Link, Switch
from ryu_nsm.core.units import UnitError, parse_bandwidth, parse_distance, parse_duration
from ryu_nsm.core.validation import expected, field_path, item_path

MAX_IFNAME = 15  # Linux IFNAMSIZ - 1: port names are interface names
MAX_PORT = 0xFEFF  # highest OpenFlow port number OVS assigns
MAX_IMPORTED_NAME = MAX_IFNAME - len("-eth999")
FIBRE_SPEED = 299_792_458.0 * 2 / 3  # m/s, light in glass
EARTH_RADIUS_KM = 6371.0088
TOP = "(top level)"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_FALLBACK_NAME = re.compile(r"^s\d+$")
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_FORMATS = {".graphml": "graphml", ".xml": "graphml", ".json": "node-link"}
_LINK_ATTRS = ("capacity", "latency", "distance", "cost", "queue")
_MAX_QUEUE = 0xFFFFFFFE  # OFPQ_ALL (0xffffffff) is not a queue


class TopologyError(ValueError):
    """A topology file is wrong: ``file`` and ``field`` say where, ``problem`` says what."""

    def __init__(self, file: str, field: str, problem: str):
        super().__init__(f"{file}: {field}: {problem}" if field else f"{file}: {problem}")
        self.file = file
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class _At:
    """A place in a file: field paths built by the validation kit; the first error stops the load."""

    file: str
    field: str = ""

    def key(self, name: str) -> _At:
        return _At(self.file, field_path(self.field, name))

    def index(self, i: int) -> _At:
        return _At(self.file, item_path(self.field, i))

    def error(self, problem: str) -> TopologyError:
        return TopologyError(self.file, self.field or TOP, problem)


def _number(value: Any) -> float | None:
    """A real number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _capacity(value: object) -> float:
    return float(parse_bandwidth(value))  # Link.capacity is a float, as ever


def _parse_cost(value: Any) -> float:
    number = _number(value)
    if number is None and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or number < 0:
        raise ValueError(f"expected a non-negative number, got {value!r}")
    return number


def _parse_queue(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_QUEUE:
        raise ValueError(f"expected an OpenFlow queue id (an integer 0-{_MAX_QUEUE}), got {value!r}")
    return value


_PARSERS = {"capacity": _capacity, "latency": parse_duration, "distance": parse_distance,
            "cost": _parse_cost, "queue": _parse_queue}


def _parse(at: _At, parser, value: Any) -> Any:
    """Run ``parser`` on ``value``; a failure becomes a TopologyError at ``at``."""
    try:
        return parser(value)
    except UnitError as e:
        raise at.error(expected(str(e), value)) from None
    except ValueError as e:
        raise at.error(str(e)) from None


def _great_circle_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Haversine distance between two (latitude, longitude) points in degrees."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


# --- drafts: what the files say, before ports are numbered ---------------------------------------


@dataclass
class _LinkDraft:
    a: str
    b: str
    at: _At
    a_port: int | None = None
    b_port: int | None = None
    attrs: dict[str, float] = field(default_factory=dict)  # capacity/latency/distance/cost/queue when given


@dataclass
class _InterfaceDraft:
    name: str
    switch: str
    at: _At
    port: int | None = None
    port_name: str | None = None
    mac: str | None = None
    ip: str | None = None


@dataclass
class _HostDraft:
    name: str
    role: str
    at: _At
    interfaces: list[_InterfaceDraft] = field(default_factory=list)


@dataclass
class _Builder:
    """Collects switches, links and hosts in declaration order, then numbers ports and checks it all."""

    switches: list[tuple[str, int | None, _At]] = field(default_factory=list)
    links: list[_LinkDraft] = field(default_factory=list)
    hosts: list[_HostDraft] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    coordinates: dict[str, tuple[float, float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def resolve(self, name: str) -> str:
        """A switch name, or the name of the one imported switch whose original label is ``name``."""
        if any(s == name for s, _, _ in self.switches):
            return name
        matches = [s for s, label in self.labels.items() if label == name]
        return matches[0] if len(matches) == 1 else name

    def override(self, a: str, b: str, attrs: dict[str, float], at: _At) -> None:
        """Set ``attrs`` on every link between switches ``a`` and ``b``."""
        ends = {self.resolve(a), self.resolve(b)}
        hits = [link for link in self.links if {link.a, link.b} == ends]
        if not hits:
            raise at.error(f"no link between {a!r} and {b!r}")
        for link in hits:
            link.attrs.update(attrs)

    def build(self, name: str, tag_range: tuple[int, int], defaults: dict[str, float]) -> Fabric:
        """Check names, number ports, fill defaults, and freeze into a Fabric."""
        switches = self._switches()
        self._check_hosts(switches)
        for link in self.links:
            for key, end in (("a", link.a), ("b", link.b)):
                if end not in switches:
                    raise link.at.key(key).error(f"unknown switch {end!r}")
            if link.a == link.b:
                raise link.at.error(f"a link from {link.a!r} to itself")
        ports = self._number_ports()
        self._check_port_names(ports)
        links = tuple(
            Link(link.a, ports[id(link), "a"], link.b, ports[id(link), "b"],
                 **self._link_values(link, defaults))
            for link in self.links
        )
        hosts = tuple(
            Host(host.name, tuple(
                HostInterface(host.name, intf.name, intf.switch, ports[id(intf), ""],
                              intf.port_name or f"{intf.switch}-eth{ports[id(intf), '']}", intf.mac, intf.ip)
                for intf in host.interfaces
            ), host.role)
            for host in self.hosts
        )
        extra = dict(self.extra)
        if self.labels:
            extra["labels"] = dict(self.labels)
        if self.coordinates:
            extra["coordinates"] = dict(self.coordinates)
        return Fabric(name, tuple(switches.values()), links, hosts, tag_range, extra)

    def _switches(self) -> dict[str, Switch]:
        by_name: dict[str, Switch] = {}
        by_dpid: dict[int, str] = {}
        for position, (name, dpid, at) in enumerate(self.switches, 1):
            dpid = position if dpid is None else dpid
            if name in by_name:
                raise at.error(f"duplicate switch name {name!r}")
            if dpid in by_dpid:
                raise at.error(f"dpid {dpid:#x} of {name!r} is already used by switch {by_dpid[dpid]!r}")
            by_name[name] = Switch(name, dpid)
            by_dpid[dpid] = name
        return by_name

    def _check_hosts(self, switches: dict[str, Switch]) -> None:
        seen: set[str] = set()
        macs: dict[str, str] = {}
        for host in self.hosts:
            if host.name in seen or host.name in switches:
                raise host.at.key("name").error(f"{host.name!r} is already the name of a host or switch")
            seen.add(host.name)
            names = Counter(intf.name for intf in host.interfaces)
            for intf in host.interfaces:
                if names[intf.name] > 1:
                    raise intf.at.key("name").error(f"{host.name!r} has two interfaces named {intf.name!r}")
                if intf.switch not in switches:
                    raise intf.at.key("switch").error(f"unknown switch {intf.switch!r}")
                if intf.mac is not None:
                    if intf.mac in macs:
                        raise intf.at.key("mac").error(f"MAC {intf.mac} is already used by {macs[intf.mac]}")
                    macs[intf.mac] = f"{host.name}/{intf.name}"

    def _uses(self) -> list[tuple[tuple[int, str], str, int | None, _At]]:
        """Every port use as (key, switch, explicit port, where), in numbering order."""
        uses = []
        for link in self.links:
            uses.append(((id(link), "a"), link.a, link.a_port, link.at.key("a_port")))
            uses.append(((id(link), "b"), link.b, link.b_port, link.at.key("b_port")))
        for host in self.hosts:
            for intf in host.interfaces:
                uses.append(((id(intf), ""), intf.switch, intf.port, intf.at.key("port")))
        return uses

    def _number_ports(self) -> dict[tuple[int, str], int]:
        uses = self._uses()
        taken: dict[str, dict[int, _At]] = defaultdict(dict)
        ports: dict[tuple[int, str], int] = {}
        for key, switch, port, at in uses:
            if port is not None:
                if port in taken[switch]:
                    raise at.error(f"port {port} on {switch!r} is taken by {taken[switch][port].field}")
                taken[switch][port] = at
                ports[key] = port
        next_free: dict[str, int] = defaultdict(lambda: 1)
        for key, switch, port, at in uses:
            if port is None:
                candidate = next_free[switch]
                while candidate in taken[switch]:
                    candidate += 1
                if candidate > MAX_PORT:
                    raise at.error(f"switch {switch!r} has run out of port numbers")
                taken[switch][candidate] = at
                next_free[switch] = candidate + 1
                ports[key] = candidate
        return ports

    def _check_port_names(self, ports: dict[tuple[int, str], int]) -> None:
        owners: dict[str, str] = {}
        named = [(f"{link.a}-eth{ports[id(link), 'a']}", link.at) for link in self.links]
        named += [(f"{link.b}-eth{ports[id(link), 'b']}", link.at) for link in self.links]
        named += [
            (intf.port_name or f"{intf.switch}-eth{ports[id(intf), '']}", intf.at.key("port_name"))
            for host in self.hosts for intf in host.interfaces
        ]
        for port_name, at in named:
            if len(port_name) > MAX_IFNAME:
                raise at.error(f"port name {port_name!r} is longer than {MAX_IFNAME} characters "
                               f"(it becomes a Linux interface name); use shorter switch or port names")
            if port_name in owners:
                raise at.error(f"port name {port_name!r} is already used by {owners[port_name]}")
            owners[port_name] = at.field

    def _link_values(self, link: _LinkDraft, defaults: dict[str, float]) -> dict[str, float]:
        values = {"capacity": link.attrs.get("capacity", defaults["capacity"]),
                  "cost": link.attrs.get("cost", defaults["cost"]),
                  "queue": link.attrs.get("queue", defaults["queue"])}
        distance = link.attrs.get("distance")
        if distance is None and link.a in self.coordinates and link.b in self.coordinates:
            distance = _great_circle_km(self.coordinates[link.a], self.coordinates[link.b])
        if "latency" in link.attrs:
            values["latency"] = link.attrs["latency"]
        elif distance is not None:
            values["latency"] = distance * 1000.0 / FIBRE_SPEED
        else:
            values["latency"] = defaults["latency"]
        return values


# --- YAML ----------------------------------------------------------------------------------------


def _mapping(at: _At, value: Any, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
    """``value`` as a dict with only ``allowed`` keys and all ``required`` ones."""
    if not isinstance(value, dict):
        raise at.error(f"expected a mapping with keys {', '.join(allowed)}, got {value!r}")
    for key in value:
        if key not in allowed:
            raise at.key(str(key)).error(f"unknown key (expected one of {', '.join(allowed)})")
    for key in required:
        if key not in value:
            raise at.key(key).error("missing")
    return value


def _list(at: _At, value: Any) -> list:
    """A list; an empty YAML key (None) is an empty list."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise at.error(f"expected a list, got {value!r}")
    return value


def _name(at: _At, value: Any, what: str, limit: int | None = None) -> str:
    """A switch/host/interface name: letters, digits, '_', '.', '-'; at most ``limit`` characters."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise at.error(f"expected a {what} name of letters, digits, '_', '.' or '-', got {value!r}")
    if limit is not None and len(value) > limit:
        raise at.error(f"{what} name {value!r} is longer than {limit} characters")
    return value


def _text(at: _At, value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise at.error(f"expected {what}, got {value!r}")
    return value


def _int(at: _At, value: Any, low: int, high: int, what: str) -> int:
    """An integer in [low, high]; text is read with a base prefix (0x...)."""
    number = value if isinstance(value, int) and not isinstance(value, bool) else None
    if isinstance(value, str):
        try:
            number = int(value.replace(":", ""), 16) if ":" in value else int(value, 0)
        except ValueError:
            number = None
    if number is None or not low <= number <= high:
        raise at.error(f"expected {what} from {low} to {high}, got {value!r}")
    return number


def _link_attrs(at: _At, raw: dict) -> dict[str, float]:
    return {key: _parse(at.key(key), _PARSERS[key], raw[key]) for key in _LINK_ATTRS if key in raw}


def _tag_range(at: _At, value: Any) -> tuple[int, int]:
    parts = value.split("-") if isinstance(value, str) else value
    if not isinstance(parts, list) or len(parts) != 2:
        raise at.error(f"expected a VLAN id range like '2-4094' or [2, 4094], got {value!r}")
    low, high = (_int(at, part, 1, 4094, "a VLAN id") for part in parts)
    if low > high:
        raise at.error(f"empty VLAN id range {value!r}")
    return low, high


def _add_switches(builder: _Builder, at: _At, value: Any) -> None:
    for i, item in enumerate(_list(at, value)):
        where = at.index(i)
        if isinstance(item, dict):
            _mapping(where, item, ("name", "dpid"), ("name",))
            dpid = None
            if "dpid" in item:
                dpid = _int(where.key("dpid"), item["dpid"], 1, 2**64 - 1, "a datapath id")
            name = _name(where.key("name"), item["name"], "switch", MAX_IFNAME)
            builder.switches.append((name, dpid, where))
        else:
            builder.switches.append((_name(where, item, "switch", MAX_IFNAME), None, where))


def _add_links(builder: _Builder, at: _At, value: Any) -> None:
    for i, item in enumerate(_list(at, value)):
        where = at.index(i)
        if isinstance(item, list):
            if len(item) != 2 or not all(isinstance(end, str) for end in item):
                raise where.error(f"expected [switch, switch], got {item!r}")
            builder.links.append(_LinkDraft(item[0], item[1], where))
            continue
        _mapping(where, item, ("a", "b", "a_port", "b_port", *_LINK_ATTRS), ("a", "b"))
        ports = {
            end: _int(where.key(end), item[end], 1, MAX_PORT, "a port number") if end in item else None
            for end in ("a_port", "b_port")
        }
        ends = [_text(where.key(end), item[end], "a switch name") for end in ("a", "b")]
        attrs = _link_attrs(where, item)
        builder.links.append(_LinkDraft(*ends, where, ports["a_port"], ports["b_port"], attrs))


def _add_hosts(builder: _Builder, at: _At, value: Any) -> None:
    for i, item in enumerate(_list(at, value)):
        where = at.index(i)
        _mapping(where, item, ("name", "role", "interfaces"), ("name", "interfaces"))
        role = item.get("role", "host")
        if role not in ("host", "function"):
            raise where.key("role").error(f"expected 'host' or 'function', got {role!r}")
        host = _HostDraft(_name(where.key("name"), item["name"], "host"), role, where)
        interfaces = _list(where.key("interfaces"), item["interfaces"])
        if not interfaces:
            raise where.key("interfaces").error("a host needs at least one interface")
        for j, raw in enumerate(interfaces):
            host.interfaces.append(_interface(where.key("interfaces").index(j), raw, j))
        builder.hosts.append(host)


def _interface(at: _At, raw: Any, position: int) -> _InterfaceDraft:
    _mapping(at, raw, ("name", "switch", "port", "port_name", "ip", "mac"), ("switch",))
    intf = _InterfaceDraft(
        _name(at.key("name"), raw.get("name", f"eth{position}"), "interface", MAX_IFNAME),
        _name(at.key("switch"), raw["switch"], "switch"),
        at,
    )
    if "port" in raw:
        intf.port = _int(at.key("port"), raw["port"], 1, MAX_PORT, "a port number")
    if "port_name" in raw:
        intf.port_name = _name(at.key("port_name"), raw["port_name"], "port", MAX_IFNAME)
    if "mac" in raw:
        mac = raw["mac"]
        if not isinstance(mac, str) or not _MAC.match(mac):
            raise at.key("mac").error(f"expected a MAC like '02:00:00:00:00:01' (quote it), got {mac!r}")
        intf.mac = mac.lower()
    if "ip" in raw:
        ip = raw["ip"]
        try:
            if not isinstance(ip, str) or "/" not in ip:
                raise ValueError
            intf.ip = ipaddress.ip_interface(ip).with_prefixlen
        except ValueError:
            problem = f"expected an address with prefix length like '10.0.0.1/24', got {ip!r}"
            raise at.key("ip").error(problem) from None
    return intf


def _generator_params(at: _At, value: Any, params: dict) -> tuple[int, int]:
    """(k, hosts_per_edge) from ``generator: {fat_tree: {...}}`` with ``params`` on top."""
    _mapping(at, value, ("fat_tree",), ("fat_tree",))
    at = at.key("fat_tree")
    given = _mapping(at, value["fat_tree"] if value["fat_tree"] is not None else {}, ("k", "hosts_per_edge"))
    for key in params:
        if key not in ("k", "hosts_per_edge"):
            raise _At(at.file, f"params.{key}").error("not a fat_tree parameter (k, hosts_per_edge)")
    merged = {**given, **params}
    if "k" not in merged:
        raise at.key("k").error("missing")
    k = _int(at.key("k"), merged["k"], 2, 256, "an even k")
    if k % 2:
        raise at.key("k").error(f"k must be even, got {k}")
    hosts = _int(at.key("hosts_per_edge"), merged.get("hosts_per_edge", 0), 0, 252, "a host count")
    return k, hosts


def _read_yaml(path: Path, at: _At) -> Any:
    try:
        text = path.read_text()
    except OSError as e:
        raise TopologyError(at.file, "", f"cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise TopologyError(at.file, "", f"not a text file: {e.reason} at byte {e.start}") from None
    try:
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml when present
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else TOP
        raise TopologyError(at.file, where, f"not valid YAML: {getattr(e, 'problem', None) or e}") from None


_TOP_KEYS = ("name", "defaults", "tags", "switches", "links", "hosts", "import", "generator", "overrides")


def load_topology(path: str | Path, params: dict | None = None) -> Fabric:
    """Load a fabric from a topology YAML (or a GraphML / node-link JSON file imported as it is).

    ``params`` overrides the parameters of the file's generator (e.g. ``{"k": 8}``).
    Raises TopologyError naming the file and the field for anything wrong.
    """
    path = Path(path)
    at = _At(str(path))
    builder = _Builder(extra={"source": str(path)})
    if path.suffix.lower() in _FORMATS:
        if not path.is_file():
            raise TopologyError(str(path), "", "cannot read: no such file")
        if params:
            raise _At(str(path), "params").error("an imported graph has no generator to take parameters")
        _import_graph(builder, path, _FORMATS[path.suffix.lower()], at)
        return builder.build(path.stem, (2, 4094), _defaults(at, None))
    doc = _read_yaml(path, at)
    doc = _mapping(at, {} if doc is None else doc, _TOP_KEYS)
    name = doc.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise at.key("name").error(f"expected a non-empty string, got {name!r}")
    if "import" in doc and "generator" in doc:
        raise at.key("generator").error("give either import or generator, not both")
    if params and "generator" not in doc:
        raise _At(at.file, "params").error("this topology has no generator to take parameters")
    if "import" in doc:
        _import_section(builder, path, at.key("import"), doc["import"])
    if "generator" in doc:
        k, hosts_per_edge = _generator_params(at.key("generator"), doc["generator"], params or {})
        builder.extra["generator"] = {"fat_tree": {"k": k, "hosts_per_edge": hosts_per_edge}}
        _add_fat_tree(builder, k, hosts_per_edge, at.key("generator"))
    _add_switches(builder, at.key("switches"), doc.get("switches", []))
    _add_links(builder, at.key("links"), doc.get("links", []))
    _add_hosts(builder, at.key("hosts"), doc.get("hosts", []))
    if "overrides" in doc:
        overrides = _mapping(at.key("overrides"), doc["overrides"], ("links",))
        for i, item in enumerate(_list(at.key("overrides.links"), overrides.get("links", []))):
            where = at.key("overrides.links").index(i)
            _mapping(where, item, ("a", "b", *_LINK_ATTRS), ("a", "b"))
            ends = [_text(where.key(end), item[end], "a switch name or label") for end in ("a", "b")]
            builder.override(*ends, _link_attrs(where, item), where)
    if not builder.switches:
        raise at.key("switches").error("no switches: give switches, import or generator")
    tags = _tag_range(at.key("tags"), doc["tags"]) if "tags" in doc else (2, 4094)
    return builder.build(name, tags, _defaults(at.key("defaults"), doc.get("defaults")))


def _defaults(at: _At, value: Any) -> dict[str, float]:
    defaults = {"capacity": Link.capacity, "latency": Link.latency, "cost": Link.cost, "queue": Link.queue}
    if value is not None:
        defaults.update(_link_attrs(at, _mapping(at, value, ("capacity", "latency", "cost", "queue"))))
    return defaults


# --- imported graphs -----------------------------------------------------------------------------


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


def _add_graph(builder: _Builder, graph: nx.Graph, src: _At) -> None:
    if not graph.number_of_nodes():
        raise src.key("nodes").error("the graph has no nodes")
    names: dict[Any, str] = {}
    taken: set[str] = set()
    for index, (node, data) in enumerate(graph.nodes(data=True), 1):
        at = src.key(f"node {node}")
        label = str(data["label"]) if data.get("label") not in (None, "") else str(node)
        name = _imported_name(label, index, taken)
        taken.add(name)
        names[node] = name
        builder.switches.append((name, None, at))
        builder.labels[name] = label
        lat = _coordinate(at, data, ("Latitude", "latitude"), 90.0)
        lon = _coordinate(at, data, ("Longitude", "longitude"), 180.0)
        if lat is not None and lon is not None:
            builder.coordinates[name] = (lat, lon)
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
    for key in ("latency", "distance", "cost"):
        if key in present:
            attrs[key] = _parse(at.key(key), _PARSERS[key], present[key])
    return attrs


# --- fat-tree ------------------------------------------------------------------------------------


def _add_fat_tree(builder: _Builder, k: int, hosts_per_edge: int, at: _At) -> None:
    """Switches c{i}, a{pod}_{i}, e{pod}_{i}; core links first, then aggregation-edge, then hosts.

    Core switch i connects to aggregation switch i // (k/2) of every pod; so every aggregation and edge
    switch gets its uplinks on ports 1..k/2 and its downlinks/hosts on k/2+1..k.
    """
    half = k // 2
    builder.switches.extend((f"c{i}", None, at) for i in range(half * half))
    for pod in range(k):
        builder.switches.extend((f"a{pod}_{i}", None, at) for i in range(half))
        builder.switches.extend((f"e{pod}_{i}", None, at) for i in range(half))
    for i in range(half * half):
        builder.links.extend(_LinkDraft(f"c{i}", f"a{pod}_{i // half}", at) for pod in range(k))
    for pod in range(k):
        for i in range(half):
            builder.links.extend(_LinkDraft(f"a{pod}_{i}", f"e{pod}_{j}", at) for j in range(half))
    for pod in range(k):
        for edge in range(half):
            for j in range(hosts_per_edge):
                mac = f"02:fa:00:{pod:02x}:{edge:02x}:{j:02x}"  # 02:fa:... keeps clear of hand-written MACs
                intf = _InterfaceDraft("eth0", f"e{pod}_{edge}", at, mac=mac, ip=f"10.{pod}.{edge}.{j + 2}/8")
                builder.hosts.append(_HostDraft(f"h{pod}_{edge}_{j}", "host", at, [intf]))


def fat_tree(k: int, *, hosts_per_edge: int = 0, **link_defaults: str | float) -> Fabric:
    """The k-ary fat-tree: (k/2)^2 core switches, k pods of k/2 aggregation and k/2 edge switches.

    ``link_defaults`` (capacity, latency, cost) apply to every link; ``hosts_per_edge`` hosts
    h{pod}_{edge}_{j} with address 10.pod.edge.(j+2)/8 hang off each edge switch.
    """
    at = _At(f"<fat_tree k={k}>")
    unknown = set(link_defaults) - {"capacity", "latency", "cost"}
    if unknown:
        raise TypeError(f"fat_tree() got unexpected link attributes {sorted(unknown)}")
    k, hosts_per_edge = _generator_params(at, {"fat_tree": {"k": k, "hosts_per_edge": hosts_per_edge}}, {})
    builder = _Builder(extra={"generator": {"fat_tree": {"k": k, "hosts_per_edge": hosts_per_edge}}})
    _add_fat_tree(builder, k, hosts_per_edge, at)
    return builder.build(f"fat-tree-k{k}", (2, 4094), _defaults(at, link_defaults))
