"""The k-ary fat-tree generator: ``generator: {fat_tree: ...}`` in a topology file, or ``fat_tree()``."""

from __future__ import annotations

from typing import Any

from ryu_nsm.core.fabric import Fabric
from ryu_nsm.sources.topology_build import (
    _At,
    _Builder,
    _defaults,
    _HostDraft,
    _int,
    _InterfaceDraft,
    _LinkDraft,
    _mapping,
)


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
