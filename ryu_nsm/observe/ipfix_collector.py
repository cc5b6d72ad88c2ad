"""The controller's IPFIX collector: a UDP listener, supervised, that turns Open vSwitch's flow
samples into FlowEvents for the flow store (``ryu-nsm controller --ipfix-listen``).

Templates are kept per exporter address and observation domain (RFC 7011 scopes them by both);
the wire directory that names ids is rebuilt from the controller at most every ``refresh`` seconds.
A datagram that does not decode is counted and logged, never fatal.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable

from ryu_nsm.observe.flow_store import FlowStore
from ryu_nsm.observe.health import Loop, supervise
from ryu_nsm.observe.ipfix import IpfixError, TemplateCache, decode
from ryu_nsm.observe.ipfix_events import WireDirectory, events_of

log = logging.getLogger("ryu_nsm.observe.ipfix")
_WAKE = 0.5  # s: the receive timeout, so the loop sees stop and beats while the fabric is quiet


class IpfixCollector:
    """Listens on ``address`` (host, port; port 0 picks one) and adds events to ``store``."""

    def __init__(self, address: tuple[str, int], store: FlowStore, directory: Callable[[], WireDirectory],
                 refresh: float = 1.0, clock: Callable[[], float] = time.time):
        self.store = store
        self._directory_of = directory
        self._refresh = refresh
        self._clock = clock
        self._directory: WireDirectory | None = None
        self._directory_at = 0.0
        self._templates: dict[object, TemplateCache] = {}
        self._waiting: set[tuple[object, int]] = set()  # (exporter, domain) told of a missing template
        self.datagrams = self.records = self.events = self.errors = 0
        self._stop = threading.Event()
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_DGRAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._socket.bind(address)
        self._socket.settimeout(_WAKE)
        self.address: tuple[str, int] = self._socket.getsockname()[:2]
        self._thread = None

    def start(self) -> IpfixCollector:
        self._thread = supervise("ryu-nsm-ipfix", self._run, _WAKE * 2, self._stop)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._socket.close()

    def _run(self, loop: Loop) -> None:
        while not self._stop.is_set():
            loop.beat()
            try:
                data, sender = self._socket.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                raise
            self.handle(data, sender)

    def handle(self, data: bytes, sender: object = None) -> None:
        """One datagram: decoded, its records turned into events and handed to the store."""
        self.datagrams += 1
        cache = self._templates.setdefault(sender, TemplateCache())
        try:
            message = decode(data, cache)
        except IpfixError as exc:
            self.errors += 1
            log.debug("IPFIX datagram from %s not decoded: %s", sender, exc)
            return
        if message.unknown_sets and (sender, message.domain) not in self._waiting:
            self._waiting.add((sender, message.domain))
            # OVS sends templates when an exporter starts, then every 10 minutes.
            log.warning("IPFIX data from %s (domain %d) before its templates: flow events start when "
                        "Open vSwitch sends them again (within 10 minutes; re-creating the bridge's "
                        "collector set sends them at once)", sender, message.domain)
        if not message.records:
            return
        self.records += len(message.records)
        now = self._clock()
        events = events_of(message.records, message.domain, self._wires(now), now)
        self.events += len(events)
        self.store.add(events)

    def _wires(self, now: float) -> WireDirectory:
        if self._directory is None or now - self._directory_at >= self._refresh:
            self._directory = self._directory_of()
            self._directory_at = now
        return self._directory
