"""The topology loader: shipped fabrics, the YAML rules, GraphML / node-link import, fat-trees, errors."""

from __future__ import annotations

import json
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ryu_nsm.core.fabric import Fabric
from ryu_nsm.core.pathing import FabricView
from ryu_nsm.qos.admission import constrained_path
from ryu_nsm.sources.topology import TopologyError, fabric_warnings, fat_tree, load_topology

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGIES = ROOT / "topologies"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "topology"
SHIPPED = sorted(p for p in TOPOLOGIES.iterdir() if p.suffix in (".yaml", ".graphml", ".json"))
FIBRE_KM_PER_S = 299_792.458 * 2 / 3
ONE_DEGREE_KM = 111.19508  # one degree of great-circle arc on the mean Earth radius (6371.0088 km)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def ports_by_switch(fabric: Fabric) -> dict[str, list[tuple[int, str]]]:
    """switch → [(port, port name)] for every port the fabric uses."""
    ports: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for link in fabric.links:
        ports[link.a].append((link.a_port, f"{link.a}-eth{link.a_port}"))
        ports[link.b].append((link.b_port, f"{link.b}-eth{link.b_port}"))
    for host in fabric.hosts:
        for intf in host.interfaces:
            ports[intf.switch].append((intf.port, intf.port_name))
    return ports


def assert_consistent(fabric: Fabric) -> None:
    """What every loaded fabric must satisfy, whatever it came from."""
    names = [s.name for s in fabric.switches]
    assert len(set(names)) == len(names)
    assert len({s.dpid for s in fabric.switches}) == len(fabric.switches)
    ports = ports_by_switch(fabric)
    assert set(ports) <= set(names)
    for switch, used in ports.items():
        numbers = [port for port, _ in used]
        assert len(set(numbers)) == len(numbers), f"{switch} reuses a port: {sorted(numbers)}"
    all_names = [name for used in ports.values() for _, name in used]
    assert len(set(all_names)) == len(all_names)
    assert all(len(name) <= 15 for name in all_names)
    for link in fabric.links:
        assert link.a != link.b and link.capacity > 0 and link.latency >= 0 and link.cost >= 0


# --- shipped fabrics -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_topology_loads_and_is_consistent(path):
    fabric = load_topology(path)
    assert fabric.switches and fabric.links
    assert_consistent(fabric)
    assert nx.is_connected(fabric.graph())


def test_shipped_set_is_complete():
    names = {p.name for p in SHIPPED}
    assert {"linear.yaml", "ring.yaml", "fat-tree.yaml", "demo-chain.yaml"} <= names
    assert any(n.endswith(".graphml") for n in names) and any(n.endswith(".json") for n in names)
    importing = [p for p in SHIPPED if p.suffix == ".yaml" and "import" in p.read_text()]
    assert importing, "a shipped YAML should import a graph file"


def test_demo_chain_has_the_names_others_depend_on():
    fabric = load_topology(TOPOLOGIES / "demo-chain.yaml")
    assert [s.name for s in fabric.switches] == ["s1", "s2", "s3", "s4"]
    pairs = Counter(frozenset((link.a, link.b)) for link in fabric.links)
    ring = [frozenset(p) for p in (("s1", "s2"), ("s2", "s3"), ("s3", "s4"), ("s4", "s1"))]
    assert pairs == Counter([*ring, frozenset(("s1", "s3"))])
    chord = next(link for link in fabric.links if {link.a, link.b} == {"s1", "s3"})
    assert chord.cost == 3
    assert all(link.cost < 3 for link in fabric.links if link is not chord)
    hosts = {h.name: h for h in fabric.hosts}
    assert {name: h.role for name, h in hosts.items()} == {
        "client": "host", "intruder": "host", "firewall": "function", "dpi": "function", "gateway": "host",
    }
    seen = {
        (intf.host, intf.name): (intf.switch, intf.port_name, intf.ip, intf.mac)
        for h in fabric.hosts for intf in h.interfaces
    }
    assert seen == {
        ("client", "eth0"): ("s1", "s1-client", "10.0.0.1/24", "02:00:00:00:00:01"),
        ("intruder", "eth0"): ("s1", "s1-intruder", "10.0.0.66/24", "02:00:00:00:00:66"),
        ("firewall", "eth0"): ("s2", "s2-fw-in", None, None),
        ("firewall", "eth1"): ("s2", "s2-fw-out", None, None),
        ("dpi", "eth0"): ("s3", "s3-dpi-in", None, None),
        ("dpi", "eth1"): ("s3", "s3-dpi-out", None, None),
        ("gateway", "eth0"): ("s4", "s4-gw", "10.0.0.254/24", "02:00:00:00:00:fe"),
    }


def test_ring_has_two_edge_disjoint_paths_between_opposite_switches():
    fabric = load_topology(TOPOLOGIES / "ring.yaml")
    graph = fabric.graph()
    paths = list(nx.edge_disjoint_paths(graph, "s1", "s3"))
    assert len(paths) == 2
    assert {tuple(p) for p in paths} == {("s1", "s2", "s3"), ("s1", "s4", "s3")}
    attached = {intf.host: (intf.switch, intf.ip) for h in fabric.hosts for intf in h.interfaces}
    assert attached == {"client": ("s1", "10.0.0.1/24"), "server": ("s3", "10.0.0.2/24")}


def test_linear_has_a_host_on_each_end():
    fabric = load_topology(TOPOLOGIES / "linear.yaml")
    graph = fabric.graph()
    ends = sorted(n for n in graph if graph.degree(n) == 1)
    assert len(fabric.switches) == 4 and nx.is_tree(nx.Graph(graph))
    assert sorted(intf.switch for h in fabric.hosts for intf in h.interfaces) == ends


def test_attachment_ports_resolve_through_the_fabric():
    fabric = load_topology(TOPOLOGIES / "demo-chain.yaml")
    for host in fabric.hosts:
        for intf in host.interfaces:
            assert fabric.attachment_port(intf.attachment) == intf.port


# --- ports ---------------------------------------------------------------------------------------


def test_ports_follow_the_documented_order_with_explicit_ones_reserved(tmp_path):
    path = write(tmp_path, "ports.yaml", """
switches: [s1, s2, s3]
links:
  - [s1, s2]
  - {a: s1, b: s3, a_port: 1}
  - [s3, s2]
hosts:
  - name: h
    interfaces: [{switch: s1}]
  - name: g
    interfaces: [{switch: s1, port: 2, port_name: s1-g}, {switch: s2}]
""")
    fabric = load_topology(path)
    assert [(link.a, link.a_port, link.b, link.b_port) for link in fabric.links] == [
        ("s1", 3, "s2", 1), ("s1", 1, "s3", 1), ("s3", 2, "s2", 2),
    ]
    intfs = [(i.host, i.switch, i.port, i.port_name) for h in fabric.hosts for i in h.interfaces]
    assert intfs == [("h", "s1", 4, "s1-eth4"), ("g", "s1", 2, "s1-g"), ("g", "s2", 3, "s2-eth3")]
    assert load_topology(path) == fabric


def _port_yaml(n_switches, links, hosts):
    def end(value):
        return f", {value[0]}: {value[1]}" if value[1] is not None else ""
    lines = [f"switches: [{', '.join(f's{i}' for i in range(n_switches))}]", "links:"]
    lines += [f"  - {{a: s{a}, b: s{b}{end(('a_port', pa))}{end(('b_port', pb))}}}" for a, b, pa, pb in links]
    lines.append("hosts:")
    for i, (switch, port) in enumerate(hosts):
        lines.append(f"  - {{name: h{i}, interfaces: [{{switch: s{switch}{end(('port', port))}}}]}}")
    return "\n".join(lines) + "\n"


@st.composite
def port_plans(draw):
    """A fabric whose explicit ports never clash: links and hosts with some explicit ports."""
    n = draw(st.integers(2, 4))
    taken: set[tuple[int, int]] = set()

    def maybe_port(switch):
        port = draw(st.none() | st.integers(1, 8))
        if port is None or (switch, port) in taken:
            return None
        taken.add((switch, port))
        return port

    links = []
    for _ in range(draw(st.integers(1, 7))):
        a, b = draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True))
        links.append((a, b, maybe_port(a), maybe_port(b)))
    hosts = []
    for _ in range(draw(st.integers(0, 5))):
        switch = draw(st.integers(0, n - 1))
        hosts.append((switch, maybe_port(switch)))
    return n, links, hosts


@settings(max_examples=60, deadline=None)
@given(port_plans())
def test_auto_ports_take_the_lowest_free_numbers_in_declaration_order(plan):
    n, links, hosts = plan
    with tempfile.TemporaryDirectory() as tmp:
        fabric = load_topology(write(Path(tmp), "p.yaml", _port_yaml(n, links, hosts)))
    assert_consistent(fabric)
    uses = []  # (switch, explicit port or None, port given) in numbering order
    for (a, b, pa, pb), link in zip(links, fabric.links, strict=True):
        uses += [(f"s{a}", pa, link.a_port), (f"s{b}", pb, link.b_port)]
    for (switch, port), host in zip(hosts, fabric.hosts, strict=True):
        uses.append((f"s{switch}", port, host.interfaces[0].port))
    for switch in {u[0] for u in uses}:
        explicit = {given for s, want, given in uses if s == switch and want is not None}
        assert all(given == want for s, want, given in uses if s == switch and want is not None)
        auto = [given for s, want, given in uses if s == switch and want is None]
        free = [p for p in range(1, len(auto) + len(explicit) + 1) if p not in explicit][: len(auto)]
        assert auto == free


@pytest.mark.parametrize("text, field, problem", [
    ("switches: [s1, s2]\nlinks: [{a: s1, b: s2, a_port: 3}]\n"
     "hosts:\n  - {name: h, interfaces: [{switch: s1, port: 3}]}\n",
     "hosts[0].interfaces[0].port", "port 3 on 's1' is taken by links[0].a_port"),
    ("switches: [s1]\nhosts:\n  - {name: h, interfaces: [{switch: s1, port: 5}]}\n"
     "  - {name: g, interfaces: [{switch: s1, port: 5}]}\n",
     "hosts[1].interfaces[0].port", "port 5 on 's1' is taken by hosts[0].interfaces[0].port"),
    ("switches: [s1, s2]\nlinks: [[s1, s2]]\n"
     "hosts:\n  - {name: h, interfaces: [{switch: s2, port_name: s1-eth1}]}\n",
     "hosts[0].interfaces[0].port_name", "'s1-eth1' is already used"),
    ("switches: [abcdefghijk, s2]\nlinks: [[s2, abcdefghijk]]\n", "links[0]",
     "'abcdefghijk-eth1' is longer than 15"),
    ("switches: [s1]\nhosts:\n  - {name: h, interfaces: [{switch: s1, port_name: a-very-long-name}]}\n",
     "hosts[0].interfaces[0].port_name", "longer than 15"),
    ("switches: [s1, s2, s1]\n", "switches[2]", "duplicate switch name 's1'"),
    ("switches: [s1, {name: s2, dpid: 1}]\n", "switches[1]",
     "dpid 0x1 of 's2' is already used by switch 's1'"),
    ("switches: [s1, s2]\nlinks: [[s1, s2], [s2, s9]]\n", "links[1].b", "unknown switch 's9'"),
    ("switches: [s1]\nlinks: [[s1, s1]]\n", "links[0]", "to itself"),
    ("switches: [s1]\nhosts:\n  - {name: s1, interfaces: [{switch: s1}]}\n", "hosts[0].name",
     "already the name"),
    ("switches: [s1]\nhosts:\n  - {name: h, interfaces: [{switch: s2}]}\n",
     "hosts[0].interfaces[0].switch", "unknown switch 's2'"),
    ("switches: [s1]\nhosts:\n  - {name: h, interfaces: [{switch: s1, mac: 10:00:00:00:00:01}]}\n",
     "hosts[0].interfaces[0].mac", "quote it"),
    ("switches: [s1]\nhosts:\n  - {name: h, interfaces: [{switch: s1, ip: 10.0.0.1}]}\n",
     "hosts[0].interfaces[0].ip", "prefix length"),
    ("switches: [s1]\nhosts:\n  - {name: h, role: router, interfaces: [{switch: s1}]}\n",
     "hosts[0].role", "'host' or 'function'"),
])
def test_fabric_mistakes_name_file_and_field(tmp_path, text, field, problem):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(TopologyError) as caught:
        load_topology(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {field}: "), message
    assert problem in message
    assert caught.value.file == str(path) and caught.value.field == field


# --- values and YAML errors ----------------------------------------------------------------------


# The grammar of bandwidths and durations is tests/test_units.py.


def test_link_values_defaults_and_tags(tmp_path):
    path = write(tmp_path, "values.yaml", """
name: values
defaults: {capacity: 100Mbit, latency: 2ms, cost: 5}
tags: 100-199
switches: [s1, s2, s3]
links:
  - [s1, s2]
  - {a: s2, b: s3, capacity: 10Gbit, latency: 150us, cost: 0.5}
""")
    fabric = load_topology(path)
    first, second = fabric.links
    assert (first.capacity, first.latency, first.cost) == (100e6, 2e-3, 5)
    assert (second.capacity, second.latency, second.cost) == (10e9, pytest.approx(150e-6), 0.5)
    assert fabric.tag_range == (100, 199) and fabric.name == "values"


@pytest.mark.parametrize("text, field, problem", [
    ("switches: [s1, s2]\nlinks:\n  - [s1, s2]\n  - {a: s1, b: s2, capacity: fast}\n", "links[1].capacity",
     'expected a bandwidth in bit/s: an integer or a string like "500k", "10M", "1.5G" or "10Mbit/s", '
     'found string "fast"'),
    ("switches: [s1, s2]\nlinks: [{a: s1, b: s2, latency: soon}]\n", "links[0].latency",
     'found string "soon"'),
    ("switches: [s1, s2]\nlinks: [{a: s1, b: s2, capacity: 100m}]\n", "links[0].capacity", "milli"),
    ("switches: [s1, s2]\nlinks: [{a: s1, b: s2, capcity: 1G}]\n", "links[0].capcity", "unknown key"),
    ("switches: [s1, s2\nlinks: x\n", "line 2, column 6", "not valid YAML"),
    ("- a\n- b\n", "(top level)", "expected a mapping"),
    ("switches: [s1]\ntags: 5-2\n", "tags", "empty VLAN id range"),
    ("switches: [s1]\ntags: 0-100\n", "tags", "VLAN id from 1 to 4094"),
    ("switches: [{name: s1, dpid: zero}]\n", "switches[0].dpid", "datapath id"),
    ("defaults: {capacity: 1G, jitter: 1ms}\nswitches: [s1]\n", "defaults.jitter", "unknown key"),
    ("switches: [s1, s2]\nlinks: [[s1, s2]]\noverrides: {links: [{a: s1, b: s3, cost: 2}]}\n",
     "overrides.links[0]", "no link between 's1' and 's3'"),
    ("import: nothere.graphml\n", "import", "no such file"),
    ("import: {file: x.txt}\n", "import.file", "cannot tell"),
    ("import: a.graphml\ngenerator: {fat_tree: {k: 4}}\n", "generator", "not both"),
    ("generator: {fat_tree: {k: 3}}\n", "generator.fat_tree.k", "even"),
    ("generator: {fat_tree: {}}\n", "generator.fat_tree.k", "missing"),
    ("generator: {clos: {k: 4}}\n", "generator.clos", "unknown key"),
    ("name: empty\n", "switches", "no switches"),
])
def test_yaml_mistakes_name_file_and_field(tmp_path, text, field, problem):
    path = write(tmp_path, "broken.yaml", text)
    with pytest.raises(TopologyError) as caught:
        load_topology(path)
    assert str(caught.value).startswith(f"{path}: {field}: "), str(caught.value)
    assert problem in str(caught.value)


def test_unreadable_yaml_names_the_file(tmp_path):
    with pytest.raises(TopologyError, match=r"nope\.yaml: cannot read"):
        load_topology(tmp_path / "nope.yaml")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00switches")
    with pytest.raises(TopologyError, match=r"binary\.yaml: not a text file"):
        load_topology(tmp_path / "binary.yaml")


# --- distance and coordinates --------------------------------------------------------------------


def test_latency_comes_from_distance_when_not_given(tmp_path):
    path = write(tmp_path, "far.yaml", """
defaults: {latency: 7ms}
switches: [s1, s2, s3, s4]
links:
  - {a: s1, b: s2, distance: 299.792458}
  - {a: s2, b: s3, distance: 800m}
  - {a: s3, b: s4, distance: 1000, latency: 1ms}
  - [s4, s1]
""")
    by_distance, short, both, plain = load_topology(path).links
    assert by_distance.latency == pytest.approx(1.5e-3)  # light in fibre covers 2/3 of 299.79 km per ms
    assert short.latency == pytest.approx(0.8 / FIBRE_KM_PER_S)
    assert both.latency == pytest.approx(1e-3)
    assert plain.latency == pytest.approx(7e-3)


def test_graphml_with_topology_zoo_attributes():
    fabric = load_topology(FIXTURES / "zoo-like.graphml")
    assert_consistent(fabric)
    # labels: short ones kept (sanitised), too long / taken / s<digits> / starting with a digit → s<n>
    assert [s.name for s in fabric.switches] == ["New_York", "s2", "Denver", "s4", "s5", "s6", "n6"]
    assert [s.dpid for s in fabric.switches] == [1, 2, 3, 4, 5, 6, 7]
    assert fabric.extra["labels"] == {
        "New_York": "New York", "s2": "Washington DC", "Denver": "Denver", "s4": "Denver", "s5": "s7",
        "s6": "3rd Ave", "n6": "n6",
    }
    links = {(link.a, link.b, link.a_port): link for link in fabric.links}
    assert len(fabric.links) == 8
    assert links["New_York", "s2", 1].capacity == 10e9  # LinkSpeedRaw
    assert links["New_York", "Denver", 2].capacity == 1e9  # LinkSpeedRaw wins over LinkSpeed
    assert links["s2", "Denver", 2].capacity == 2.5e9  # LinkSpeed + LinkSpeedUnits
    parallel = sorted(link.capacity for link in fabric.links if {link.a, link.b} == {"Denver", "s4"})
    assert parallel == [155e6, 1e9]  # a multigraph keeps both; the one without speed takes the default
    one_degree = ONE_DEGREE_KM / FIBRE_KM_PER_S
    assert links["New_York", "s2", 1].latency == pytest.approx(one_degree, rel=1e-5)
    assert links["New_York", "Denver", 2].latency == pytest.approx(one_degree, rel=1e-5)
    assert links["s2", "Denver", 2].latency == pytest.approx(one_degree * 2**0.5, rel=1e-3)
    assert next(link for link in fabric.links if link.b == "n6").latency == 0.0  # no coordinates


def test_yaml_import_with_hosts_and_overrides_by_label(tmp_path):
    (tmp_path / "net.graphml").write_bytes((FIXTURES / "zoo-like.graphml").read_bytes())
    path = write(tmp_path, "net.yaml", """
import: {file: net.graphml}
defaults: {capacity: 40Gbit, latency: 3ms}
switches: [extra]
links: [[extra, n6]]
overrides:
  links:
    - {a: Washington DC, b: New York, capacity: 100Gbit}
    - {a: Denver, b: s4, latency: 9ms}
hosts:
  - name: client
    interfaces: [{switch: New_York, ip: 10.0.0.1/24}]
""")
    fabric = load_topology(path)
    assert_consistent(fabric)
    assert fabric.switch_by_name["extra"].dpid == 8
    links = {frozenset((link.a, link.b)): link for link in fabric.links}
    assert links[frozenset(("New_York", "s2"))].capacity == 100e9
    added = links[frozenset(("extra", "n6"))]
    assert (added.capacity, added.latency) == (40e9, pytest.approx(3e-3))
    overridden = [link.latency for link in fabric.links if {link.a, link.b} == {"Denver", "s4"}]
    assert overridden == [pytest.approx(9e-3)] * 2
    client = fabric.hosts[0].interfaces[0]
    # New_York already has two link ports from the import
    assert (client.switch, client.port, client.port_name) == ("New_York", 3, "New_York-eth3")


def _node_link(edges_key: str) -> dict:
    return {
        "directed": False, "multigraph": False, "graph": {},
        "nodes": [{"id": 1, "label": "North", "latitude": 0.0, "longitude": 0.0},
                  {"id": 2, "label": "South", "latitude": -1.0, "longitude": 0.0},
                  {"id": 3}],
        edges_key: [{"source": 1, "target": 2, "capacity": "10Gbit"},
                    {"source": 2, "target": 3, "bandwidth": 1e8, "distance": 299.792458, "cost": 4}],
    }


@pytest.mark.parametrize("edges_key", ["links", "edges"])
def test_node_link_json_in_both_variants(tmp_path, edges_key):
    path = write(tmp_path, f"{edges_key}.json", json.dumps(_node_link(edges_key)))
    fabric = load_topology(path)
    assert [s.name for s in fabric.switches] == ["North", "South", "s3"]
    first, second = fabric.links
    assert (first.a, first.b, first.capacity) == ("North", "South", 10e9)
    assert first.latency == pytest.approx(ONE_DEGREE_KM / FIBRE_KM_PER_S, rel=1e-5)
    assert (second.a, second.b, second.capacity, second.cost) == ("South", "s3", 1e8, 4)
    assert second.latency == pytest.approx(1.5e-3)


def test_directed_node_link_pairs_the_two_directions_of_a_link(tmp_path):
    doc = {"directed": True, "nodes": [{"id": "a"}, {"id": "b"}],
           "edges": [{"source": "a", "target": "b"}, {"source": "b", "target": "a"},
                     {"source": "a", "target": "b", "capacity": "5G"}]}
    fabric = load_topology(write(tmp_path, "d.json", json.dumps(doc)))
    assert sorted(link.capacity for link in fabric.links) == [1e9, 5e9]


# --- node-link files as topology collections publish them ----------------------------------------


EUROPE = TOPOLOGIES / "europe.json"


def _europe_dist() -> dict[frozenset[str], float]:
    """The shipped europe.json's ``dist`` by the names of a link's ends."""
    doc = json.loads(EUROPE.read_text())
    names = [node["name"] for node in doc["nodes"]]
    return {frozenset((names[edge["source"]], names[edge["target"]])): edge["dist"] for edge in doc["links"]}


def _europe_without(tmp_path: Path, *keys: str) -> Path:
    """A copy of the shipped europe.json with ``keys`` taken off every node and link."""
    doc = json.loads(EUROPE.read_text())
    for item in doc["nodes"] + doc["links"]:
        for key in keys:
            item.pop(key, None)
    return write(tmp_path, "europe.json", json.dumps(doc))


def test_published_node_link_file_takes_names_from_name_and_latency_from_dist():
    fabric = load_topology(EUROPE)
    assert [s.name for s in fabric.switches] == ["London", "Paris", "Brussels", "Cologne", "Lyon", "Zurich",
                                                 "Munich", "Milan"]
    dist = _europe_dist()
    assert {frozenset((link.a, link.b)) for link in fabric.links} == set(dist)
    for link in fabric.links:
        assert link.latency == pytest.approx(dist[frozenset((link.a, link.b))] / FIBRE_KM_PER_S)
    assert fabric.extra["coordinates"]["London"] == (51.5072, -0.1276)  # pos is [longitude, latitude]
    assert fabric.undeclared_latency == () and fabric_warnings(fabric) == []
    view = FabricView(fabric)
    # Fewest hops is the long haul through Munich (6.3 ms); within 5.3 ms only the way by Paris
    # and Zurich (5.25 ms) is left, not the one by Lyon (5.38 ms).
    assert constrained_path(view, "London", "Milan").switches == ("London", "Munich", "Milan")
    short = constrained_path(view, "London", "Milan", max_latency=5.3e-3)
    assert short.switches == ("London", "Paris", "Zurich", "Milan")


def test_pos_without_dist_is_read_as_longitude_then_latitude(tmp_path):
    fabric = load_topology(_europe_without(tmp_path, "dist"))
    dist = _europe_dist()  # the great circle, to 0.1 km
    for link in fabric.links:
        assert link.latency == pytest.approx(dist[frozenset((link.a, link.b))] / FIBRE_KM_PER_S, rel=1e-3)
    assert fabric_warnings(fabric) == []


def test_label_wins_over_name_and_distance_over_dist(tmp_path):
    doc = {"nodes": [{"id": 0, "label": "Here", "name": "Ignored"}, {"id": 1, "name": "There"}],
           "links": [{"source": 0, "target": 1, "distance": 299.792458, "dist": 1}]}
    fabric = load_topology(write(tmp_path, "both.json", json.dumps(doc)))
    assert [s.name for s in fabric.switches] == ["Here", "There"]
    assert fabric.links[0].latency == pytest.approx(1.5e-3)


def test_links_with_no_latency_from_any_source_are_named_in_a_warning(tmp_path):
    fabric = load_topology(_europe_without(tmp_path, "dist", "pos"))
    assert fabric.undeclared_latency == tuple(link.name for link in fabric.links)
    assert all(link.latency == 0.0 for link in fabric.links)
    (warning,) = fabric_warnings(fabric)
    assert "12 link(s) without latency" in warning and "plan at 0 ms" in warning
    assert all(link.name in warning for link in fabric.links[:10])
    assert fabric.links[10].name not in warning and warning.endswith("and 2 more")
    # A default latency, or one on the link, is a declared latency.
    yaml_path = write(tmp_path, "europe.yaml", "import: europe.json\ndefaults: {latency: 1ms}\n")
    assert load_topology(yaml_path).undeclared_latency == ()
    partly = write(tmp_path, "partly.yaml", "switches: [s1, s2, s3]\n"
                   "links: [{a: s1, b: s2, latency: 0}, [s2, s3]]\n")
    assert load_topology(partly).undeclared_latency == ("s2:2-s3:1",)
    assert fat_tree(2, latency="1ms").undeclared_latency == ()


@pytest.mark.parametrize("name, text, field, problem", [
    ("a.graphml", "hello", "line 1, column 1", "not well-formed XML"),
    ("b.graphml", "<foo/>", "(top level)", "expected a <graphml> document"),
    ("c.graphml", "<graphml xmlns='http://graphml.graphdrawing.org/xmlns'/>", "graph", "no <graph>"),
    ("d.graphml", "<graphml><graph edgedefault='undirected'><node id='a'/><edge source='a' target='zz'/>"
     "</graph></graphml>", "edge[0].target", "unknown node 'zz'"),
    ("e.graphml", "<graphml><key id='k' for='edge' attr.name='LinkSpeedRaw' attr.type='double'/>"
     "<graph edgedefault='undirected'><node id='a'/><node id='b'/><edge source='a' target='b'>"
     "<data key='k'>fast</data></edge></graph></graphml>", "edge[0].LinkSpeedRaw", "'fast' is not a double"),
    ("f.graphml", "<graphml><graph edgedefault='undirected'><node id='a'/><node id='b'/>"
     "<edge source='a' target='b'><data key='d9'>1</data></edge></graph></graphml>",
     "edge[0].data", "undeclared key 'd9'"),
    ("g.graphml", "<graphml><key id='s' for='edge' attr.name='LinkSpeed' attr.type='string'/>"
     "<key id='u' for='edge' attr.name='LinkSpeedUnits' attr.type='string'/>"
     "<graph edgedefault='undirected'><node id='a'/><node id='b'/><edge source='a' target='b'>"
     "<data key='s'>ten</data><data key='u'>G</data></edge></graph></graphml>",
     "edge a-b.LinkSpeed", "found string \"tenG\""),
    ("h.graphml", "<graphml><key id='y' for='node' attr.name='Latitude' attr.type='double'/>"
     "<key id='x' for='node' attr.name='Longitude' attr.type='double'/><graph edgedefault='undirected'>"
     "<node id='a'><data key='y'>95</data><data key='x'>0</data></node></graph></graphml>",
     "node a.Latitude", "expected degrees from -90.0 to 90.0"),
    ("a.json", "{nodes: []}", "line 1, column 2", "not valid JSON"),
    ("b.json", "[1, 2]", "(top level)", "expected a node-link object"),
    ("c.json", '{"nodes": [{"id": "a"}]}', "(top level)", "exactly one of 'links' or 'edges'"),
    ("d.json", '{"nodes": [{"id": "a"}], "links": [{"source": "a", "target": "b"}]}',
     "links[0].target", "unknown node 'b'"),
    ("e.json", '{"nodes": [{"id": "a"}, {"id": "b"}], "edges": [{"source": "a"}]}',
     "edges[0].target", "missing"),
    ("f.json", '{"nodes": [{"id": "a"}, {"name": "b"}], "edges": []}', "nodes[1].id", "expected a string"),
    ("g.json", '{"nodes": [{"id": "a"}, {"id": "a"}], "edges": []}', "nodes[1].id", "duplicate node id"),
    ("h.json", '{"nodes": [{"id": "a"}, {"id": "b"}], '
     '"edges": [{"source": "a", "target": "b", "capacity": "x"}]}',
     "edge a-b.capacity", "expected a bandwidth"),
    ("j.json", '{"nodes": [], "links": []}', "nodes", "no nodes"),
    ("i.json", '{"nodes": [{"id": "a"}], "edges": [{"source": "a", "target": "a"}]}',
     "edge a-a", "to itself"),
    ("k.json", '{"nodes": [{"id": "a", "pos": [10, 95]}], "links": []}',
     "node a.pos", "expected [longitude, latitude] in degrees, got [10, 95]"),
    ("l.json", '{"nodes": [{"id": "a", "pos": [-181, 0]}], "links": []}',
     "node a.pos", "expected [longitude"),
    ("m.json", '{"nodes": [{"id": "a", "pos": "51.5,-0.1"}], "links": []}',
     "node a.pos", "expected [longitude"),
    ("n.json", '{"nodes": [{"id": "a"}, {"id": "b"}], '
     '"links": [{"source": "a", "target": "b", "dist": "far"}]}', "edge a-b.dist", "expected a distance"),
])
def test_broken_graph_files_name_file_and_field(tmp_path, name, text, field, problem):
    path = write(tmp_path, name, text)
    with pytest.raises(TopologyError) as caught:
        load_topology(path)
    assert str(caught.value).startswith(f"{path}: {field}: "), str(caught.value)
    assert problem in str(caught.value)


def test_broken_import_names_the_imported_file(tmp_path):
    write(tmp_path, "bad.json", '{"nodes": [{"id": "a"}], "links": [{"source": "a", "target": "b"}]}')
    path = write(tmp_path, "uses.yaml", "import: bad.json\n")
    with pytest.raises(TopologyError) as caught:
        load_topology(path)
    assert str(caught.value).startswith(f"{tmp_path / 'bad.json'}: links[0].target: ")


def test_import_format_can_be_given_explicitly(tmp_path):
    write(tmp_path, "graph.data", json.dumps(_node_link("edges")))
    fabric = load_topology(write(tmp_path, "g.yaml", "import: {file: graph.data, format: node-link}\n"))
    assert len(fabric.links) == 2


# --- fat-tree ------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [4, 16])
def test_fat_tree_counts_and_full_port_use(k):
    fabric = fat_tree(k, hosts_per_edge=k // 2)
    assert_consistent(fabric)
    half = k // 2
    assert len(fabric.switches) == half * half + k * k  # core + k pods of k/2 aggregation and k/2 edge
    assert len(fabric.links) == k**3 // 2
    assert len(fabric.hosts) == k**3 // 4
    for switch, used in ports_by_switch(fabric).items():
        assert sorted(port for port, _ in used) == list(range(1, k + 1)), switch
    kinds = Counter(s.name[0] for s in fabric.switches)
    assert kinds == {"c": half * half, "a": k * half, "e": k * half}


def test_fat_tree_without_hosts_leaves_edge_downlinks_free():
    fabric = fat_tree(4)
    ports = ports_by_switch(fabric)
    assert all(len(ports[s.name]) == (2 if s.name.startswith("e") else 4) for s in fabric.switches)
    assert fabric.hosts == ()


def test_fat_tree_structure():
    k = 4
    graph = nx.Graph(fat_tree(k).graph())
    for core in (n for n in graph if n.startswith("c")):
        assert sorted(nbr.split("_")[0] for nbr in graph[core]) == [f"a{p}" for p in range(k)]
    for pod in range(k):
        for e in range(k // 2):
            assert set(graph[f"e{pod}_{e}"]) == {f"a{pod}_{a}" for a in range(k // 2)}
    assert nx.edge_connectivity(graph, "e0_0", "e3_1") == k // 2
    assert nx.diameter(graph) == 4


def test_fat_tree_hosts_get_unique_addresses():
    fabric = fat_tree(4, hosts_per_edge=3, capacity="10Gbit", latency="50us")
    intfs = [intf for h in fabric.hosts for intf in h.interfaces]
    assert len({i.ip for i in intfs}) == len({i.mac for i in intfs}) == len(intfs) == 24
    assert all((link.capacity, link.latency) == (10e9, pytest.approx(50e-6)) for link in fabric.links)


def test_fat_tree_rejects_bad_k():
    with pytest.raises(TopologyError, match="k must be even"):
        fat_tree(5)
    with pytest.raises(TypeError):
        fat_tree(4, colour="blue")


def test_fat_tree_k32_loads_through_params_with_short_port_names():
    # How fast it loads is bench/path_compute.py's figure, not a timed assert here (shared machines).
    fabric = load_topology(TOPOLOGIES / "fat-tree.yaml", {"k": 32, "hosts_per_edge": 16})
    assert len(fabric.switches) == 1280 and len(fabric.links) == 16384
    assert len(fabric.hosts) == 4 + 32 * 16 * 16
    assert max(len(name) for used in ports_by_switch(fabric).values() for _, name in used) <= 15


def test_params_override_the_generator_and_are_checked(tmp_path):
    assert len(load_topology(TOPOLOGIES / "fat-tree.yaml", {"k": "8"}).switches) == 80
    with pytest.raises(TopologyError, match=r"fat-tree\.yaml: params\.radix: "):
        load_topology(TOPOLOGIES / "fat-tree.yaml", {"radix": 8})
    with pytest.raises(TopologyError, match=r"ring\.yaml: params: .*no generator"):
        load_topology(TOPOLOGIES / "ring.yaml", {"k": 8})
