"""Small hand-built fabrics for core tests (independent of the topology loader)."""

from __future__ import annotations

from ryu_nsm.core.fabric import Fabric, Host, HostInterface, Link, Switch


def ring(
    n: int = 4, hosts: dict[str, tuple[str, ...]] | None = None, tag_range=(2, 4094), **link_kw
) -> Fabric:
    """Switches s1..sn in a ring; ``hosts`` maps host name → switches its interfaces attach to.

    Link ports: each switch uses port 1 towards its successor and port 2 towards its predecessor;
    host ports start at 10 and are named ``<switch>-<host><index>``.
    """
    switches = tuple(Switch(f"s{i}", i) for i in range(1, n + 1))
    links = tuple(
        Link(f"s{i}", 1, f"s{i % n + 1}", 2, **link_kw) for i in range(1, n + 1)
    ) if n > 1 else ()
    next_port = {s.name: 10 for s in switches}
    host_objs = []
    for name, where in (hosts or {}).items():
        intfs = []
        for idx, sw in enumerate(where):
            port = next_port[sw]
            next_port[sw] += 1
            intfs.append(HostInterface(name, f"eth{idx}", sw, port, f"{sw}-{name}{idx}"))
        host_objs.append(Host(name, tuple(intfs)))
    return Fabric("ring", switches, links, tuple(host_objs), tag_range)
