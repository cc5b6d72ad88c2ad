"""MultiNetworkPolicy as frozen model objects, and the workload facts its selectors are matched on.

A data module: no import of the rest of the model, so ``model.Resources`` can carry it. The
semantics on wires are in ``policy.py``; the document format and its checks in
``sources/policy_documents.py``; the whole story in docs/policy.md.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ryu_nsm.core.values import EMPTY, FrozenMap

POLICY_API_VERSION = "k8s.cni.cncf.io/v1beta1"
POLICY_KIND = "MultiNetworkPolicy"
POLICY_FOR_ANNOTATION = "k8s.v1.cni.cncf.io/policy-for"
INGRESS = "Ingress"
EGRESS = "Egress"
PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132}
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Requirement:
    """One ``matchExpressions`` entry: ``key`` ``operator`` ``values``."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def holds(self, labels: FrozenMap) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels


@dataclass(frozen=True)
class LabelSelector:
    """A Kubernetes label selector: every ``match_labels`` entry and every requirement hold (AND);
    the empty selector selects everything."""

    match_labels: FrozenMap = EMPTY
    expressions: tuple[Requirement, ...] = ()

    def selects(self, labels: FrozenMap) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            r.holds(labels) for r in self.expressions)


@dataclass(frozen=True)
class IPBlock:
    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()

    def contains(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return address.version == self.cidr.version and address in self.cidr and not any(
            address in e for e in self.excepts)


@dataclass(frozen=True)
class Peer:
    """One ``from``/``to`` entry: selectors (None: not given) or an ipBlock."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class PolicyPort:
    """One ``ports`` entry: protocol name; ``port`` a number, a name or None (every port); ``end_port``."""

    protocol: str = "TCP"
    port: int | str | None = None
    end_port: int | None = None


@dataclass(frozen=True)
class PolicyRule:
    """An ingress or egress rule: ``peers`` empty is every peer, ``ports`` empty every port."""

    peers: tuple[Peer, ...] = ()
    ports: tuple[PolicyPort, ...] = ()


@dataclass(frozen=True)
class NetworkRef:
    """A network service a policy is for: ``policy-for`` ``namespace/name``."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class MultiNetworkPolicy:
    name: str
    namespace: str
    networks: tuple[NetworkRef, ...]
    pod_selector: LabelSelector
    policy_types: tuple[str, ...]  # INGRESS and/or EGRESS, defaulted as NetworkPolicy does
    ingress: tuple[PolicyRule, ...] = ()
    egress: tuple[PolicyRule, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Workload:
    """What policies read of a Pod or NetworkServiceEndpoint: its labels and named ports
    (name → (protocol, number), from the ``ryu-nsm.io/ports`` annotation)."""

    labels: FrozenMap = EMPTY
    ports: FrozenMap = EMPTY


@dataclass(frozen=True)
class PolicyInputs:
    """Policies, and the facts they are matched on: Pods and NSEs by (namespace, name), Namespace
    labels by name. ``Resources.policy`` holds one; sources merge theirs."""

    policies: tuple[MultiNetworkPolicy, ...] = ()
    pods: FrozenMap = EMPTY  # (namespace, name) → Workload
    endpoints: FrozenMap = EMPTY  # (namespace, name) → Workload
    namespaces: FrozenMap = EMPTY  # name → labels

    def merged(self, other: PolicyInputs) -> PolicyInputs:
        return PolicyInputs(self.policies + other.policies, FrozenMap({**self.pods, **other.pods}),
                            FrozenMap({**self.endpoints, **other.endpoints}),
                            FrozenMap({**self.namespaces, **other.namespaces}))
