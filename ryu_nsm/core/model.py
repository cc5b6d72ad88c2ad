"""Frozen, validated model objects: what every source produces and every later stage consumes.

Sources (files, Kubernetes, gRPC) turn documents into these objects at the edge; nothing past this
module sees raw YAML. All objects are immutable and hashable so they can be diffed and cached.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

from ryu_nsm.core.policy_model import PolicyInputs
from ryu_nsm.core.validation import Problem
from ryu_nsm.core.values import DEFAULT_NAMESPACE, EMPTY, FrozenMap
from ryu_nsm.qos.service_level import ServiceLevel


class ModelError(ValueError):
    """A validation failure at a field path; the loader adds file and document index."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


_PORT_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclass(frozen=True, order=True)
class Attachment:
    """Where an interface meets the fabric: an OVS bridge (a topology switch name) and a port name."""

    switch: str
    port: str

    @classmethod
    def parse(cls, text: str, path: str = "attachment") -> Attachment:
        """Parse ``switch/port-name``."""
        if not isinstance(text, str) or text.count("/") != 1:
            raise ModelError(path, f"expected 'switch/port', got {text!r}")
        switch, port = text.split("/")
        if not _PORT_NAME.match(switch) or not _PORT_NAME.match(port):
            raise ModelError(path, f"bad switch or port name in {text!r}")
        return cls(switch, port)

    def __str__(self) -> str:
        return f"{self.switch}/{self.port}"

    def __hash__(self) -> int:
        # Kept: attachments are dictionary keys in every resolve, thousands of times.
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = self.__dict__["_hash"] = hash((self.switch, self.port))
        return cached


@dataclass(frozen=True)
class Destination:
    """A route of a match: endpoints whose service labels contain ``selector``; picked by weight."""

    selector: FrozenMap = EMPTY
    weight: int = 1


@dataclass(frozen=True)
class Match:
    """One NSM match: applies when ``source_selector`` ⊆ request labels.

    ``metadata`` is None when the match has none: with metadata (even empty) and no routes, a match
    selects every endpoint of the service, as NSM does.
    """

    source_selector: FrozenMap = EMPTY
    routes: tuple[Destination, ...] = ()
    fallthrough: bool = False
    metadata: FrozenMap | None = None


@dataclass(frozen=True)
class NetworkService:
    """NSM NetworkService (registry.NetworkService)."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    matches: tuple[Match, ...] = ()
    payload: str = "ETHERNET"

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class Endpoint:
    """NSM NetworkServiceEndpoint plus where it attaches to the fabric.

    ``service_labels`` maps service name → labels (NSM ``network_service_labels``).
    Each attachment carries one connection at a time (NSM gives every connection its own interface);
    an endpoint with several attachments serves that many connections. ``expires`` (seconds since
    the epoch, NSM ``expiration_time``) is when the registration lapses; None: never.
    """

    name: str
    namespace: str = DEFAULT_NAMESPACE
    services: tuple[str, ...] = ()
    service_labels: FrozenMap = EMPTY
    attachments: tuple[Attachment, ...] = ()
    url: str = ""
    expires: float | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def expired(self, now: float | None) -> bool:
        """True once ``now`` has reached ``expires``; never without a clock (``now`` None)."""
        return self.expires is not None and now is not None and now >= self.expires

    def labels_for(self, service: str) -> FrozenMap:
        return self.service_labels.get(service, EMPTY)


@dataclass(frozen=True)
class ClientRequest:
    """One entry of a Pod's ``networkservicemesh.io`` annotation: a client asking for a service."""

    pod: str
    ifname: str
    service: str
    namespace: str = DEFAULT_NAMESPACE
    labels: FrozenMap = EMPTY
    attachment: Attachment | None = None
    domain: str = ""

    @cached_property  # asked for often; the object is immutable
    def id(self) -> str:
        """Stable connection id: namespace/pod/ifname."""
        return f"{self.namespace}/{self.pod}/{self.ifname}"


@dataclass(frozen=True)
class Resources:
    """Everything the sources declare, at one moment. Problems are kept beside the valid objects."""

    services: tuple[NetworkService, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    requests: tuple[ClientRequest, ...] = ()
    problems: tuple[Problem, ...] = field(default=(), compare=False)
    service_levels: tuple[ServiceLevel, ...] = ()  # QoS promises (qos/service_level.py)
    # Documents read but not used (a kind or apiVersion ryu-nsm does not read): said, not invalid.
    warnings: tuple[Problem, ...] = field(default=(), compare=False)
    policy: PolicyInputs = PolicyInputs()  # MultiNetworkPolicies and what they match on (policy_model.py)

    def merged(self, other: Resources) -> Resources:
        return Resources(
            self.services + other.services,
            self.endpoints + other.endpoints,
            self.requests + other.requests,
            self.problems + other.problems,
            self.service_levels + other.service_levels,
            self.warnings + other.warnings,
            self.policy.merged(other.policy),
        )
