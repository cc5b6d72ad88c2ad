"""Load a fabric from a topology file: our YAML, GraphML, or node-link JSON; or generate a fat-tree.

The file format, port numbering and the import rules are in docs/topology.md; quantities follow
docs/units.md. Every mistake is a TopologyError naming the file and the field. This module reads the
YAML; topology_graph imports graphs, topology_fat_tree generates, and both fill topology_build's builder.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import yaml

from ryu_nsm.core.fabric import Fabric, SwitchCertificate
from ryu_nsm.sources.topology_build import (
    _LINK_ATTRS,
    MAX_IFNAME,
    MAX_PORT,
    TOP,
    TopologyError,
    _At,
    _Builder,
    _defaults,
    _HostDraft,
    _int,
    _InterfaceDraft,
    _link_attrs,
    _LinkDraft,
    _list,
    _mapping,
)
from ryu_nsm.sources.topology_fat_tree import _add_fat_tree, _generator_params, fat_tree
from ryu_nsm.sources.topology_graph import _FORMATS, _import_graph, _import_section

__all__ = ["TopologyError", "fabric_warnings", "fat_tree", "load_topology"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_NAMED_LINKS = 10  # a warning names this many links, then counts the rest


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
            _mapping(where, item, ("name", "dpid", "certificate"), ("name",))
            dpid = None
            if "dpid" in item:
                dpid = _int(where.key("dpid"), item["dpid"], 1, 2**64 - 1, "a datapath id")
            name = _name(where.key("name"), item["name"], "switch", MAX_IFNAME)
            if "certificate" in item:
                builder.certificates[name] = _certificate(where.key("certificate"), item["certificate"])
            builder.switches.append((name, dpid, where))
        else:
            builder.switches.append((_name(where, item, "switch", MAX_IFNAME), None, where))


def _certificate(at: _At, value: Any) -> SwitchCertificate:
    """Who the switch must be on OpenFlow over TLS (docs/security.md): a SPIFFE ID, a CN, or both."""
    _mapping(at, value, ("spiffe_id", "cn"))
    if not value:
        raise at.error("expected spiffe_id, cn or both")
    if "spiffe_id" in value:
        from ryu_nsm.trust.devca import check_spiffe_id

        try:
            check_spiffe_id(_text(at.key("spiffe_id"), value["spiffe_id"], "a SPIFFE ID"))
        except ValueError as error:
            raise at.key("spiffe_id").error(str(error)) from None
    cn = _text(at.key("cn"), value["cn"], "a certificate common name") if "cn" in value else None
    return SwitchCertificate(value.get("spiffe_id"), cn)


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


def fabric_warnings(fabric: Fabric) -> list[str]:
    """What is legal in a fabric but likely a mistake, in words: links that plan at 0 ms."""
    links = fabric.undeclared_latency
    if not links:
        return []
    named = ", ".join(links[:_NAMED_LINKS]) + (f" and {len(links) - _NAMED_LINKS} more"
                                               if len(links) > _NAMED_LINKS else "")
    return [f"fabric {fabric.name}: {len(links)} link(s) without latency (no latency, distance, coordinates "
            f"or default latency) plan at 0 ms, so any path meets a latency bound: {named}"]
