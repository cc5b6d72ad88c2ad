"""MultiNetworkPolicy on wires: which policies govern a wire's two ends, and what each direction of
connection initiation is allowed, resolved against the far end (its labels, namespace, named ports).

Pure; what the flow factory compiles (``flows.policed_wire_flows``) and ``plan`` shows. The
semantics, and what is not supported, are in docs/policy.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from ryu_nsm.core.policy_model import (
    EGRESS,
    INGRESS,
    PROTOCOLS,
    IPNetwork,
    MultiNetworkPolicy,
    PolicyInputs,
    PolicyPort,
    PolicyRule,
    Workload,
)
from ryu_nsm.core.values import EMPTY, FrozenMap

ANY_PORT = (0, 65535)


@dataclass(frozen=True)
class End:
    """One end of a wire as policies see it: the client Pod or the endpoint."""

    role: str  # "client" or "endpoint"
    namespace: str
    name: str
    workload: Workload

    def __str__(self) -> str:
        return f"{self.role} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class Allowance:
    """One rule of one policy, resolved on one wire for one direction.

    ``networks``: the addresses it allows (the destination's for an egress rule, the source's for
    an ingress rule), None for every address. ``ports``: (ip_proto, first, last) destination port
    ranges, None for every protocol and port. Never empty: a rule that allows nothing is left out.
    """

    policy: str
    side: str  # INGRESS or EGRESS
    index: int
    networks: tuple[IPNetwork, ...] | None
    ports: tuple[tuple[int, int, int], ...] | None

    @property
    def name(self) -> str:
        return f"{self.policy} {self.side.lower()}[{self.index}]"


@dataclass(frozen=True)
class Direction:
    """What connections initiated at one end may do: ``egress`` (the initiator's rules, None when
    it is not isolated for egress) and ``ingress`` (the far end's, None when not isolated)."""

    egress: tuple[Allowance, ...] | None
    ingress: tuple[Allowance, ...] | None


@dataclass(frozen=True)
class WirePolicy:
    """A wire's policy: per direction of initiation (a = client end), None when unrestricted."""

    a_to_b: Direction | None
    b_to_a: Direction | None
    governed_by: tuple[str, ...]  # why, in words, for plan and status
    policies: tuple[str, ...] = ()  # namespace/name of the policies isolating an end

    @property
    def restricted(self) -> bool:
        return self.a_to_b is not None or self.b_to_a is not None


def wire_ends(namespace: str, client: str, endpoint: str, inputs: PolicyInputs) -> tuple[End, End]:
    """The client Pod and the endpoint (its NetworkServiceEndpoint's labels and named ports, else
    those of the Pod of the same name) of a wire in ``namespace``."""
    pod = inputs.pods.get((namespace, client), Workload())
    nse = inputs.endpoints.get((namespace, endpoint), Workload())
    same = inputs.pods.get((namespace, endpoint), Workload())
    served = Workload(nse.labels or same.labels, nse.ports or same.ports)
    return End("client", namespace, client, pod), End("endpoint", namespace, endpoint, served)


def wire_policy(service: tuple[str, str], client: End, endpoint: End,
                inputs: PolicyInputs) -> WirePolicy | None:
    """The policy of a wire of network service ``service`` (namespace, name); None when no policy
    isolates either end for it."""
    selecting = {end: [p for p in inputs.policies if _selects(p, service, end)] for end in (client, endpoint)}
    if not any(selecting.values()):
        return None
    why = tuple(f"{p} isolates {end} for {'/'.join(_types(p))}"
                for end, policies in selecting.items() for p in policies if _types(p))
    a_to_b = _direction(client, endpoint, selecting, inputs)
    b_to_a = _direction(endpoint, client, selecting, inputs)
    if a_to_b is None and b_to_a is None:
        return None
    names = tuple(sorted({str(p) for policies in selecting.values() for p in policies if _types(p)}))
    return WirePolicy(a_to_b, b_to_a, why, names)


def _types(policy: MultiNetworkPolicy) -> tuple[str, ...]:
    return policy.policy_types


def _selects(policy: MultiNetworkPolicy, service: tuple[str, str], end: End) -> bool:
    return (any((ref.namespace, ref.name) == service for ref in policy.networks)
            and policy.namespace == end.namespace and policy.pod_selector.selects(end.workload.labels))


def _direction(src: End, dst: End, selecting: dict, inputs: PolicyInputs) -> Direction | None:
    egress = _allowances(src, dst, [p for p in selecting[src] if EGRESS in p.policy_types], EGRESS, inputs)
    ingress = _allowances(dst, src, [p for p in selecting[dst] if INGRESS in p.policy_types], INGRESS, inputs)
    if egress is None and ingress is None:
        return None
    return Direction(egress, ingress)


def _allowances(owner: End, far: End, policies: list[MultiNetworkPolicy], side: str,
                inputs: PolicyInputs) -> tuple[Allowance, ...] | None:
    """The rules of ``policies`` (those isolating ``owner`` on ``side``) that allow something to or
    from ``far``; None when none isolates it."""
    if not policies:
        return None
    out = []
    destination = far if side == EGRESS else owner
    for policy in policies:
        for index, rule in enumerate(policy.egress if side == EGRESS else policy.ingress):
            networks = _networks(rule, policy, far, inputs)
            ports = _ports(rule.ports, destination.workload) if rule.ports else None
            if networks != () and ports != ():
                out.append(Allowance(str(policy), side, index, networks, ports))
    return tuple(out)


def peer_selected(peer, policy_namespace: str, far: End, namespaces: FrozenMap) -> bool:
    """True when a podSelector/namespaceSelector peer selects ``far`` (both given: both must)."""
    if peer.ip_block is not None:
        return False
    if peer.namespace_selector is not None:
        if not peer.namespace_selector.selects(namespaces.get(far.namespace, EMPTY)):
            return False
    elif far.namespace != policy_namespace:
        return False
    return peer.pod_selector is None or peer.pod_selector.selects(far.workload.labels)


def _networks(rule: PolicyRule, policy: MultiNetworkPolicy, far: End,
              inputs: PolicyInputs) -> tuple[IPNetwork, ...] | None:
    """The addresses a rule allows on this wire: None (every one) when it names no peer or a
    selector selects the far end; else its ipBlocks, each less its exceptions, as disjoint prefixes."""
    if not rule.peers or any(peer_selected(p, policy.namespace, far, inputs.namespaces) for p in rule.peers):
        return None
    out: list[IPNetwork] = []
    for peer in rule.peers:
        if peer.ip_block is not None:
            out += _excluded(peer.ip_block.cidr, peer.ip_block.excepts)
    return tuple(sorted(set(out), key=lambda n: (n.version, n)))


def _excluded(cidr: IPNetwork, excepts: tuple[IPNetwork, ...]) -> list[IPNetwork]:
    nets = [cidr]
    for hole in excepts:
        nets = [part for net in nets
                for part in ((net,) if not net.overlaps(hole) else
                             () if net.subnet_of(hole) else net.address_exclude(hole))]
    return nets


def _ports(ports: tuple[PolicyPort, ...], destination: Workload) -> tuple[tuple[int, int, int], ...]:
    """Destination port ranges; a named port the destination does not declare (with that protocol)
    matches nothing, as in Kubernetes."""
    out = []
    for port in ports:
        proto = PROTOCOLS[port.protocol]
        if port.port is None:
            out.append((proto, *ANY_PORT))
        elif isinstance(port.port, str):
            named = destination.ports.get(port.port)
            if named is not None and named[0] == port.protocol:
                out.append((proto, named[1], named[1]))
        else:
            out.append((proto, port.port, port.end_port or port.port))
    return tuple(sorted(set(out)))

