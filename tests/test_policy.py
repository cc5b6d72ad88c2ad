"""MultiNetworkPolicy on wires: compiled flows, run through the flow simulator with conntrack,
against a reference evaluator of NetworkPolicy written from the Kubernetes documentation
(kubernetes.io, "Network Policies"), not from ryu_nsm.core.policy."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from ryu_nsm.core.flowspec import Table
from ryu_nsm.core.model import ClientRequest, Destination, Endpoint, Match, NetworkService, Resources
from ryu_nsm.core.planner import PLANNED, make_plan
from ryu_nsm.core.policy_model import (
    IPBlock,
    LabelSelector,
    MultiNetworkPolicy,
    NetworkRef,
    Peer,
    PolicyInputs,
    PolicyPort,
    PolicyRule,
    Requirement,
    Workload,
)
from ryu_nsm.core.values import FrozenMap

from .fabrics import ring
from .flowsim import FabricSim, Frame

# ---- the reference: NetworkPolicy as kubernetes.io describes it

PROTO = {"TCP": 6, "UDP": 17, "SCTP": 132}


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    labels: dict
    ports: dict  # named ports: name → (protocol, number)
    ip: str


def _selector_matches(selector, labels: dict) -> bool:
    """matchLabels and matchExpressions are ANDed; an empty selector matches everything."""
    for key, value in selector.match_labels.items():
        if labels.get(key) != value:
            return False
    for req in selector.expressions:
        present = req.key in labels
        if req.operator == "In" and not (present and labels[req.key] in req.values):
            return False
        if req.operator == "NotIn" and present and labels[req.key] in req.values:
            return False
        if req.operator == "Exists" and not present:
            return False
        if req.operator == "DoesNotExist" and present:
            return False
    return True


def _peer_matches(peer, policy, other: Pod, other_ip: str, namespaces: dict) -> bool:
    """podSelector alone: pods of the policy's namespace; namespaceSelector alone: every pod of
    the namespaces selected; both: pods selected in namespaces selected; ipBlock: the cidr, less
    except."""
    if peer.ip_block is not None:
        ip = ipaddress.ip_address(other_ip)
        return ip in peer.ip_block.cidr and not any(ip in e for e in peer.ip_block.excepts)
    if peer.namespace_selector is not None:
        if not _selector_matches(peer.namespace_selector, namespaces.get(other.namespace, {})):
            return False
    elif other.namespace != policy.namespace:
        return False
    return peer.pod_selector is None or _selector_matches(peer.pod_selector, other.labels)


def _port_matches(ports, proto: int, dport: int | None, target: Pod) -> bool:
    """No ports: every port and protocol. A port entry: its protocol, and its number (to endPort),
    or the target pod's container port of that name."""
    if not ports:
        return True
    for p in ports:
        if PROTO[p.protocol] != proto:
            continue
        if p.port is None:
            return True
        if isinstance(p.port, str):
            named = target.ports.get(p.port)
            if named and named[0] == p.protocol and named[1] == dport:
                return True
        elif dport is not None and p.port <= dport <= (p.end_port or p.port):
            return True
    return False


def reference_allows(policies, namespaces, src: Pod, dst: Pod, proto: int, dport, network) -> bool:
    """A new connection src → dst: allowed by src's egress and dst's ingress isolation, each
    the union of what the policies selecting the pod allow."""
    def applying(pod, kind):
        return [p for p in policies if network in p.networks and p.namespace == pod.namespace
                and _selector_matches(p.pod_selector, pod.labels) and kind in p.policy_types]

    egress = applying(src, "Egress")
    if egress and not any(
            (not r.peers or any(_peer_matches(peer, p, dst, dst.ip, namespaces) for peer in r.peers))
            and _port_matches(r.ports, proto, dport, dst) for p in egress for r in p.egress):
        return False
    ingress = applying(dst, "Ingress")
    return not ingress or any(
        (not r.peers or any(_peer_matches(peer, p, src, src.ip, namespaces) for peer in r.peers))
        and _port_matches(r.ports, proto, dport, dst) for p in ingress for r in p.ingress)


# ---- a wire to police: client pod on s1, endpoint on s3 of a ring, or both on s1

NETWORK = NetworkRef("a", "net")
NAMESPACES = {"a": {"team": "x"}, "b": {"team": "y"}}
IPS = ["10.0.0.1", "10.0.0.2", "10.0.1.5", "10.1.0.1"]


def _plan(client: Pod, endpoint: Pod, policies, same_switch: bool):
    fab = ring(4, {"client": ("s1",), "server": ("s1",) if same_switch else ("s3",)})
    c_att = fab.hosts[0].interfaces[0].attachment
    e_att = fab.hosts[1].interfaces[0].attachment
    service = NetworkService("net", "a", (Match(routes=(Destination(),)),))
    ep = Endpoint(endpoint.name, "a", ("net",), attachments=(e_att,))
    req = ClientRequest(client.name, "nsm-1", "net", "a", attachment=c_att)
    inputs = PolicyInputs(
        tuple(policies),
        FrozenMap({("a", client.name): Workload(FrozenMap(client.labels), FrozenMap(client.ports))}),
        FrozenMap({("a", endpoint.name): Workload(FrozenMap(endpoint.labels), FrozenMap(endpoint.ports))}),
        FrozenMap({k: FrozenMap(v) for k, v in NAMESPACES.items()}))
    plan = make_plan(fab, Resources((service,), (ep,), (req,), policy=inputs))
    (pc,) = plan.connections.values()
    assert pc.state == PLANNED, pc.reason
    ends = [(i.switch, i.port) for h in fab.hosts for i in h.interfaces]
    return FabricSim(fab, plan.flows), ends[0], ends[1], plan


def _frame(src: Pod, dst: Pod, proto: int, sport, dport) -> Frame:
    return Frame(eth_type=0x0800, src_ip=src.ip, dst_ip=dst.ip, ip_proto=proto, src_port=sport,
                 dst_port=dport)


# ---- strategies

labels = st.dictionaries(st.sampled_from(["app", "tier"]), st.sampled_from(["web", "db"]), max_size=2)
selectors = st.builds(
    LabelSelector, labels.map(FrozenMap),
    st.lists(st.builds(Requirement, st.sampled_from(["app", "tier"]),
                       st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]),
                       st.just(("web",))).map(
        lambda r: r if r.operator in ("In", "NotIn") else Requirement(r.key, r.operator)),
        max_size=1).map(tuple))
ns_selectors = st.sampled_from([LabelSelector(), LabelSelector(FrozenMap(team="x")),
                                LabelSelector(FrozenMap(team="y"))])
_NET = ipaddress.ip_network
blocks = st.sampled_from([IPBlock(_NET("10.0.0.0/16")), IPBlock(_NET("10.0.0.0/16"), (_NET("10.0.1.0/24"),)),
                          IPBlock(ipaddress.ip_network("10.0.0.2/32"))])
peers = st.one_of(st.builds(Peer, selectors, st.none(), st.none()),
                  st.builds(Peer, st.none(), ns_selectors, st.none()),
                  st.builds(Peer, selectors, ns_selectors, st.none()),
                  st.builds(Peer, st.none(), st.none(), blocks))
policy_ports = st.one_of(
    st.builds(PolicyPort, st.sampled_from(["TCP", "UDP", "SCTP"]), st.sampled_from([None, 80, 81, "http"])),
    st.builds(PolicyPort, st.sampled_from(["TCP", "UDP"]), st.just(80), st.sampled_from([81, 90])))
rules = st.builds(PolicyRule, st.lists(peers, max_size=3).map(tuple),
                  st.lists(policy_ports, max_size=3).map(tuple))
policies = st.builds(
    MultiNetworkPolicy, st.sampled_from(["p1", "p2", "p3"]), st.just("a"), st.just((NETWORK,)), selectors,
    st.sampled_from([("Ingress",), ("Egress",), ("Ingress", "Egress"), ()]),
    st.lists(rules, max_size=2).map(tuple), st.lists(rules, max_size=2).map(tuple))
pods = st.builds(lambda name, lab, named, ip: Pod("a", name, lab, named, ip), st.just(""), labels,
                 st.sampled_from([{}, {"http": ("TCP", 80)}, {"http": ("UDP", 81)}]), st.sampled_from(IPS))
packets = st.tuples(st.sampled_from([6, 17, 132, 1]), st.sampled_from([80, 81, 85, 443]))


@settings(max_examples=150, deadline=None)
@given(st.lists(policies, max_size=3, unique_by=lambda p: p.name), pods, pods, st.booleans(), packets,
       st.booleans())
def test_compiled_policy_agrees_with_the_reference(policies, client, endpoint, same_switch, packet,
                                                   from_client):
    client = Pod("a", "client", client.labels, client.ports, client.ip)
    endpoint = Pod("a", "server", endpoint.labels, endpoint.ports,
                   "10.0.0.2" if client.ip != "10.0.0.2" else "10.0.0.1")
    sim, c_end, e_end, _ = _plan(client, endpoint, policies, same_switch)
    proto, dport = packet
    dport = None if proto == 1 else dport
    src, dst, (src_end, dst_end) = ((client, endpoint, (c_end, e_end)) if from_client
                                    else (endpoint, client, (e_end, c_end)))
    allowed = reference_allows(policies, NAMESPACES, src, dst, proto, dport, NETWORK)
    frame = _frame(src, dst, proto, 40000 if dport else None, dport)
    delivered = [(d.switch, d.port) for d in sim.send(*src_end, frame)]
    assert delivered == ([dst_end] if allowed else []), "new connection"
    reply = [(d.switch, d.port) for d in sim.send(*dst_end, frame.reply())]
    if allowed:
        assert reply == [src_end], "replies to an allowed connection pass"
    else:  # the reverse direction opens only what its own rules allow
        back = reference_allows(policies, NAMESPACES, dst, src, proto, 40000 if dport else None, NETWORK)
        assert reply == ([src_end] if back else []), "reply to a denied connection"


def test_arp_passes_a_wire_isolated_both_ways():
    deny = MultiNetworkPolicy("deny", "a", (NETWORK,), LabelSelector(), ("Ingress", "Egress"))
    client = Pod("a", "client", {}, {}, "10.0.0.1")
    endpoint = Pod("a", "server", {}, {}, "10.0.0.2")
    sim, c_end, e_end, plan = _plan(client, endpoint, [deny], False)
    assert [(d.switch, d.port) for d in sim.send(*c_end, Frame(eth_type=0x0806))] == [e_end]
    assert sim.send(*c_end, _frame(client, endpoint, 6, 1, 80)) == []
    nd = Frame(eth_type=0x86DD, src_ip="fe80::1", dst_ip="ff02::1", ip_proto=58, icmpv6_type=135)
    assert [(d.switch, d.port) for d in sim.send(*c_end, nd)] == [e_end]
    (pc,) = plan.connections.values()
    assert pc.policy.governed_by == ("a/deny isolates client a/client for Ingress/Egress",
                                     "a/deny isolates endpoint a/server for Ingress/Egress")


def test_a_wire_no_policy_selects_gets_no_policy_flows():
    other = MultiNetworkPolicy("other", "a", (NetworkRef("a", "elsewhere"),), LabelSelector(), ("Ingress",))
    pod = Pod("a", "client", {}, {}, "10.0.0.1")
    _, _, _, plan = _plan(pod, Pod("a", "server", {}, {}, "10.0.0.2"), [other], False)
    (pc,) = plan.connections.values()
    assert pc.policy is None and pc.zone is not None  # tracked, so a policy may come while it is up
    assert {flow.table for _, flow in pc.flows} <= {Table.CLASSIFY, Table.FORWARD}


def test_many_blocks_and_ports_use_a_conjunction_not_their_product():
    blocks = tuple(Peer(ip_block=IPBlock(ipaddress.ip_network(f"10.{i}.0.0/16"))) for i in range(10))
    ports = tuple(PolicyPort("TCP", 1000 + 2 * i) for i in range(10))
    policy = MultiNetworkPolicy("wide", "a", (NETWORK,), LabelSelector(), ("Ingress",),
                                (PolicyRule(blocks, ports),))
    client = Pod("a", "client", {}, {}, "10.3.0.9")
    sim, c_end, e_end, plan = _plan(client, Pod("a", "server", {}, {}, "10.0.0.2"), [policy], False)
    (pc,) = plan.connections.values()
    rule_flows = [f for _, f in pc.flows if f.table == Table.POLICY_INGRESS and f.priority >= 2000]
    assert len(rule_flows) == 2 * (10 + 10 + 1)  # both ends are isolated: one conjunction at each
    assert [(d.switch, d.port) for d in sim.send(*c_end, _frame(client, client, 6, 5, 1004))] == [e_end]
    assert sim.send(*c_end, _frame(client, client, 6, 5, 1005)) == []


def test_a_policy_change_replans_only_the_wires_it_governs():
    allow = MultiNetworkPolicy("allow", "a", (NETWORK,), LabelSelector(), ("Ingress",), (PolicyRule(),))
    client = Pod("a", "client", {}, {}, "10.0.0.1")
    endpoint = Pod("a", "server", {}, {}, "10.0.0.2")
    _, _, _, plan = _plan(client, endpoint, [allow], False)
    (pc,) = plan.connections.values()
    assert pc.policy is not None and pc.zone is not None
    resources = plan.basis.resources
    deny = MultiNetworkPolicy("allow", "a", (NETWORK,), LabelSelector(), ("Ingress",))
    changed = Resources(resources.services, resources.endpoints, resources.requests,
                        policy=PolicyInputs((deny,), resources.policy.pods, resources.policy.endpoints,
                                            resources.policy.namespaces))
    fabric = plan.basis.view.fabric
    again = make_plan(fabric, changed, previous=plan)
    (pc2,) = again.connections.values()
    assert again.touched == {pc.id} and pc2.zone == pc.zone and pc2.path == pc.path
    assert make_plan(fabric, changed, previous=again).touched == frozenset()


def test_plan_shows_policy_flows_and_why():
    from ryu_nsm.observe.report import connection_entry, render_text

    deny = MultiNetworkPolicy("deny", "a", (NETWORK,), LabelSelector(FrozenMap(app="web")), ("Ingress",))
    _, _, _, plan = _plan(Pod("a", "client", {}, {}, "10.0.0.1"),
                          Pod("a", "server", {"app": "web"}, {}, "10.0.0.2"), [deny], False)
    (pc,) = plan.connections.values()
    entry = connection_entry(pc, "planned")
    # Only the client's connections are restricted: its gate in CLASSIFY is a drop, ARP, 4 ND, 2 ct.
    assert entry["policy"]["governed_by"] == ["a/deny isolates endpoint a/server for Ingress"]
    assert entry["policy"]["flows"] == sum(1 for _, f in pc.flows if f.table in (2, 3)) + 8
    text = render_text({"fabric": "ring", "connections": [entry]})
    assert f"policy: {entry['policy']['flows']} flows, conntrack zone {pc.zone}" in text
    assert "a/deny isolates endpoint a/server for Ingress" in text


POLICY_DOC = """
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata:
  name: web
  namespace: a
  annotations: {k8s.v1.cni.cncf.io/policy-for: "net, b/other"}
spec:
  podSelector: {matchLabels: {app: gw}}
  egress:
  - to: [{namespaceSelector: {matchLabels: {team: x}}, podSelector: {}}]
    ports: [{protocol: UDP, port: 53}, {port: http}, {port: 80, endPort: 90}]
---
apiVersion: v1
kind: Pod
metadata:
  name: gw
  namespace: a
  labels: {app: gw}
  annotations: {ryu-nsm.io/ports: "http=8080"}
"""


def _parse(text: str):
    import yaml

    from ryu_nsm.sources import parse_documents
    return parse_documents(list(yaml.safe_load_all(text)), "f")


def test_a_policy_document_parses_with_networkpolicy_defaults():
    resources = _parse(POLICY_DOC)
    assert resources.problems == ()
    (policy,) = resources.policy.policies
    assert policy.networks == (NetworkRef("a", "net"), NetworkRef("b", "other"))
    assert policy.policy_types == ("Ingress", "Egress")  # Egress because egress rules are given
    assert policy.egress[0].ports == (PolicyPort("UDP", 53), PolicyPort("TCP", "http"),
                                      PolicyPort("TCP", 80, 90))
    assert resources.policy.pods[("a", "gw")] == Workload(FrozenMap(app="gw"), FrozenMap(http=("TCP", 8080)))


def test_policy_errors_name_their_field():
    both = "podSelector: {}, ipBlock: {cidr: 10.0.0.0/8}"
    bad = POLICY_DOC.split("---")[0].replace("protocol: UDP", "protocol: ICMP").replace(
        "endPort: 90", "endPort: 70").replace("podSelector: {}", both)
    bad += """
---
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata: {name: x}
spec:
  podSelector: {matchExpressions: [{key: app, operator: Near}]}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/24, except: [10.1.0.0/24]}}]}]
  policyTypes: [Sideways]
"""
    problems = [f"{p.path}: {p.message}" for p in _parse(bad).problems]
    assert problems == [
        "spec.egress[0].to[0]: ipBlock may not be given with podSelector or namespaceSelector",
        'spec.egress[0].ports[0].protocol: expected TCP, UDP or SCTP, found string "ICMP"',
        "spec.egress[0].ports[2].endPort: expected a port number from port (80) to 65535, found integer 70",
        'spec.podSelector.matchExpressions[0].operator: expected one of In, NotIn, Exists, DoesNotExist, '
        'found string "Near"',
        'spec.ingress[0].from[0].ipBlock.except[0]: expected a CIDR inside 10.0.0.0/24, '
        'found string "10.1.0.0/24"',
        'spec.policyTypes[0]: expected Ingress or Egress, found string "Sideways"',
    ]
