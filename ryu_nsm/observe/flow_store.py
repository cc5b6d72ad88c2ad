"""The controller's flow events: a bounded ring buffer, Hubble-shaped filters and followers.

``FlowStore.add`` is the producer's hook; it never waits on a reader. Each follower has its own
bounded queue: when it falls behind, its oldest events go and it is told how many it lost.
Selection (``FlowFilter``, ``FlowQuery``, ``select``) is pure: times are passed in, never read.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ryu_nsm.observe.flow_events import Direction, FlowEvent, Verdict, Workload
from ryu_nsm.observe.label_selector import Label, parse_label, parse_selector

DEFAULT_CAPACITY = 4096
DEFAULT_FOLLOWER_QUEUE = 1024


@dataclass(frozen=True)
class FlowFilter:
    """All fields set must match (Hubble's FlowFilter); an empty field matches anything.

    Pods and services are ``NS/PREFIX`` (namespace and name prefix), ``NS/`` (the namespace) or
    ``PREFIX`` (any namespace). IPs are addresses or CIDRs, ports decimal strings, protocols lower
    case ("icmp" is ICMPv4 or ICMPv6), node names glob patterns, labels Kubernetes label selectors
    (label_selector.py; any one of them selects), uuids the events' own.
    """

    source_pod: tuple[str, ...] = ()
    destination_pod: tuple[str, ...] = ()
    source_service: tuple[str, ...] = ()
    destination_service: tuple[str, ...] = ()
    source_ip: tuple[str, ...] = ()
    destination_ip: tuple[str, ...] = ()
    verdict: tuple[Verdict, ...] = ()
    protocol: tuple[str, ...] = ()
    source_port: tuple[str, ...] = ()
    destination_port: tuple[str, ...] = ()
    node_name: tuple[str, ...] = ()
    ip_version: tuple[int, ...] = ()
    traffic_direction: tuple[str, ...] = ()  # "egress", "ingress"
    source_label: tuple[str, ...] = ()
    destination_label: tuple[str, ...] = ()
    uuid: tuple[str, ...] = ()

    def matches(self, event: FlowEvent) -> bool:
        ip, l4 = event.ip, event.l4
        services = _services(event)
        checks = (
            (self.source_pod, lambda: _any_name(self.source_pod, _workload_name(event.source))),
            (self.destination_pod, lambda: _any_name(self.destination_pod,
                                                     _workload_name(event.destination))),
            (self.source_service, lambda: _any_name(self.source_service, services[0])),
            (self.destination_service, lambda: _any_name(self.destination_service, services[1])),
            (self.source_ip, lambda: ip is not None and _any_ip(self.source_ip, ip.source)),
            (self.destination_ip, lambda: ip is not None and _any_ip(self.destination_ip, ip.destination)),
            (self.verdict, lambda: event.verdict in self.verdict),
            (self.protocol, lambda: _protocol_matches(self.protocol, event.protocol)),
            (self.source_port, lambda: l4 is not None and str(l4.source_port) in self.source_port
             and l4.protocol in _PORTED),
            (self.destination_port, lambda: l4 is not None and l4.protocol in _PORTED
             and str(l4.destination_port) in self.destination_port),
            (self.node_name, lambda: any(fnmatch.fnmatchcase(event.node, p) for p in self.node_name)),
            (self.ip_version, lambda: ip is not None and ip.version in self.ip_version),
            (self.traffic_direction, lambda: traffic_direction(event) in self.traffic_direction),
            (self.source_label, lambda: _any_selector(self.source_label, event.source)),
            (self.destination_label, lambda: _any_selector(self.destination_label, event.destination)),
            (self.uuid, lambda: event.uuid in self.uuid),
        )
        return all(check() for wanted, check in checks if wanted)


_PORTED = ("TCP", "UDP", "SCTP")


def traffic_direction(event: FlowEvent) -> str:
    """Hubble's direction of the connection: a wire is one the client opened, so "egress" both ways
    (the way back is a reply); a frame on no wire has none ("")."""
    return "egress" if event.wire is not None and event.direction is not Direction.UNKNOWN else ""


def _workload_name(workload: Workload | None) -> tuple[str, str] | None:
    return None if workload is None else (workload.namespace, workload.pod_name)


def _services(event: FlowEvent) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
    """(source service, destination service): the wire's network service is the destination's on
    the way to the endpoint and the source's on the way back."""
    if event.wire is None:
        return None, None
    service = (event.wire.namespace, event.wire.network_service)
    return (service, None) if event.direction is Direction.TO_CLIENT else (None, service)


def _any_name(patterns: Sequence[str], name: tuple[str, str] | None) -> bool:
    if name is None:
        return False
    namespace, pod = name
    for pattern in patterns:
        want_ns, slash, prefix = pattern.rpartition("/")
        if (not slash or want_ns == namespace) and pod.startswith(prefix):
            return True
    return False


# Filters are read once per event: parse each selector and each workload's labels once.
_selector = functools.lru_cache(maxsize=1024)(parse_selector)


@functools.lru_cache(maxsize=4096)
def _labels(workload: Workload | None) -> tuple[Label, ...]:
    """A workload's labels read back from the strings the Hubble API sends, as Hubble reads them;
    no workload (a frame on no wire) has none, as Hubble's flow without an endpoint."""
    return () if workload is None else tuple(map(parse_label, workload.label_strings))


def _any_selector(selectors: Sequence[str], workload: Workload | None) -> bool:
    labels = _labels(workload)
    return any(_selector(text).matches(labels) for text in selectors)


def _any_ip(patterns: Sequence[str], address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(pattern, strict=False) for pattern in patterns)


def _protocol_matches(wanted: Sequence[str], protocol: str) -> bool:
    return any(protocol == p or (p == "icmp" and protocol.startswith("icmp")) for p in wanted)


def check_filter(flow_filter: FlowFilter) -> None:
    """Raise ValueError naming the first value that can never be read (a bad IP, port, pattern or
    label selector)."""
    for pattern in (*flow_filter.source_ip, *flow_filter.destination_ip):
        try:
            ipaddress.ip_network(pattern, strict=False)
        except ValueError as exc:
            raise ValueError(f"not an IP address or CIDR: {pattern!r}") from exc
    for port in (*flow_filter.source_port, *flow_filter.destination_port):
        if not port.isdigit() or int(port) > 65535:
            raise ValueError(f"not a port: {port!r}")
    for side in ("source", "destination"):
        for text in getattr(flow_filter, f"{side}_label"):
            try:
                _selector(text)
            except ValueError as exc:
                raise ValueError(f"invalid {side} label filter: {exc}") from None


@dataclass(frozen=True)
class FlowQuery:
    """Which events to return: those any whitelist filter (or, without one, every event) matches
    and no blacklist filter does, within [since, until]; then the last ``number`` of them (the
    first, with ``first``; 0: all)."""

    whitelist: tuple[FlowFilter, ...] = ()
    blacklist: tuple[FlowFilter, ...] = ()
    since: float | None = None
    until: float | None = None
    number: int = 0
    first: bool = False

    def matches(self, event: FlowEvent) -> bool:
        if self.since is not None and event.time < self.since:
            return False
        if self.until is not None and event.time > self.until:
            return False
        if self.whitelist and not any(f.matches(event) for f in self.whitelist):
            return False
        return not any(f.matches(event) for f in self.blacklist)


def select(events: Iterable[FlowEvent], query: FlowQuery) -> list[FlowEvent]:
    """The events of ``query`` in order of arrival."""
    found = [event for event in events if query.matches(event)]
    if not query.number:
        return found
    return found[: query.number] if query.first else found[-query.number:]


class Follower:
    """New events for one reader, in a bounded queue: when full, the oldest are dropped and counted."""

    def __init__(self, store: FlowStore, max_pending: int) -> None:
        self._store = store
        self._pending: deque[FlowEvent] = deque()
        self._max_pending = max_pending
        self._lost = 0
        self._closed = False
        self._ready = threading.Condition()

    def offer(self, events: Sequence[FlowEvent]) -> None:
        """Called by the store's producer: append without waiting for the reader."""
        with self._ready:
            self._pending.extend(events)
            overflow = len(self._pending) - self._max_pending
            for _ in range(max(overflow, 0)):
                self._pending.popleft()
            self._lost += max(overflow, 0)
            self._ready.notify()

    def take(self, timeout: float | None) -> tuple[list[FlowEvent], int]:
        """The events queued since the last take and how many were lost meanwhile; waits up to
        ``timeout`` seconds for the first. Returns ([], 0) at once once closed."""
        with self._ready:
            if not self._pending and not self._lost and not self._closed:
                self._ready.wait(timeout)
            events, lost = list(self._pending), self._lost
            self._pending.clear()
            self._lost = 0
            return events, lost

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._store._forget(self)
        with self._ready:
            self._closed = True
            self._ready.notify_all()


class FlowStore:
    """The last ``capacity`` flow events, and the followers that get new ones as they come."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"flow buffer size must be at least 1, not {capacity}")
        self.capacity = capacity
        self._events: deque[FlowEvent] = deque(maxlen=capacity)
        self._followers: list[Follower] = []
        self._seen = 0
        self._lock = threading.Lock()

    def add(self, events: Iterable[FlowEvent]) -> None:
        """The producer's hook: keep ``events`` (oldest first) and queue them for every follower.
        Never waits on a reader."""
        batch = list(events)
        if not batch:
            return
        with self._lock:
            self._events.extend(batch)
            self._seen += len(batch)
            followers = list(self._followers)
        for follower in followers:
            follower.offer(batch)

    def history(self, query: FlowQuery) -> list[FlowEvent]:
        with self._lock:
            events = list(self._events)
        return select(events, query)

    def follow(self, query: FlowQuery, max_pending: int = DEFAULT_FOLLOWER_QUEUE
               ) -> tuple[list[FlowEvent], Follower]:
        """The history ``query`` selects and a follower of what comes after it, taken together so
        that no event is missed or repeated between the two. Close the follower when done."""
        follower = Follower(self, max_pending)
        with self._lock:
            events = list(self._events)
            self._followers.append(follower)
        return select(events, query), follower

    def subscribe(self, max_pending: int = DEFAULT_FOLLOWER_QUEUE) -> Follower:
        """A follower of the events added from now on, without history."""
        follower = Follower(self, max_pending)
        with self._lock:
            self._followers.append(follower)
        return follower

    def counts(self) -> tuple[int, int]:
        """(events held, events seen since start)."""
        with self._lock:
            return len(self._events), self._seen

    def followers(self) -> int:
        """How many followers are subscribed now."""
        with self._lock:
            return len(self._followers)

    def _forget(self, follower: Follower) -> None:
        with self._lock:
            if follower in self._followers:
                self._followers.remove(follower)
