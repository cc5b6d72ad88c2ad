"""The shared kit of the topology loaders: where-in-the-file (``_At``), value parsers, drafts of what a
file declares, and the ``_Builder`` that numbers ports and freezes a Fabric.

topology.py (YAML), topology_graph.py (GraphML, node-link JSON) and topology_fat_tree.py all fill
one ``_Builder``; the rules are in docs/topology.md.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from ryu_nsm.core.fabric import Fabric, Host, HostInterface, Link, Switch, SwitchCertificate
from ryu_nsm.core.units import UnitError, parse_bandwidth, parse_distance, parse_duration
from ryu_nsm.core.validation import expected, field_path, item_path

MAX_IFNAME = 15  # Linux IFNAMSIZ - 1: port names are interface names
MAX_PORT = 0xFEFF  # highest OpenFlow port number OVS assigns
FIBRE_SPEED = 299_792_458.0 * 2 / 3  # m/s, light in glass
EARTH_RADIUS_KM = 6371.0088
TOP = "(top level)"

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
    certificates: dict[str, SwitchCertificate] = field(default_factory=dict)  # switch name → who it must be

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
        values = [self._link_values(link, defaults) for link in self.links]
        links = tuple(
            Link(link.a, ports[id(link), "a"], link.b, ports[id(link), "b"], **given)
            for link, given in zip(self.links, values, strict=True)
        )
        undeclared = tuple(made.name for made, given in zip(links, values, strict=True)
                           if "latency" not in given)
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
        return Fabric(name, tuple(switches.values()), links, hosts, tag_range, extra, undeclared)

    def _switches(self) -> dict[str, Switch]:
        by_name: dict[str, Switch] = {}
        by_dpid: dict[int, str] = {}
        for position, (name, dpid, at) in enumerate(self.switches, 1):
            dpid = position if dpid is None else dpid
            if name in by_name:
                raise at.error(f"duplicate switch name {name!r}")
            if dpid in by_dpid:
                raise at.error(f"dpid {dpid:#x} of {name!r} is already used by switch {by_dpid[dpid]!r}")
            by_name[name] = Switch(name, dpid, self.certificates.get(name))
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
        """Capacity, cost, queue and, when any source gives it, latency."""
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
        elif "latency" in defaults:
            values["latency"] = defaults["latency"]
        return values


# --- checks every format shares -------------------------------------------------------------------


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


def _defaults(at: _At, value: Any) -> dict[str, float]:
    """Link defaults; latency only when given, so that a link with none is known (undeclared_latency)."""
    defaults = {"capacity": Link.capacity, "cost": Link.cost, "queue": Link.queue}
    if value is not None:
        defaults.update(_link_attrs(at, _mapping(at, value, ("capacity", "latency", "cost", "queue"))))
    return defaults
