"""Who watches which connections: MonitorConnections streams, their scopes and their queues."""

from __future__ import annotations

import queue

from nsm_api import connection_pb2
from nsm_api.connection_pb2 import Connection, ConnectionEvent, MonitorScopeSelector
from nsm_api.serving import Peer

_MONITOR_BACKLOG = 10_000  # events queued for one monitor before it is cut off as too slow


class Subscriber:
    """One MonitorConnections stream: its selector, its caller and the queue of events still to send."""

    def __init__(self, selector: MonitorScopeSelector, peer: Peer) -> None:
        self.selector = selector
        self.peer = peer
        self.events: queue.Queue[ConnectionEvent | None] = queue.Queue()
        self.overflowed = False

    def offer(self, event: ConnectionEvent) -> None:
        """Queue `event`; a subscriber too far behind is cut off (it must subscribe again)."""
        if self.overflowed:
            return
        if self.events.qsize() >= _MONITOR_BACKLOG:
            self.overflowed = True
            self.events.put(None)
            return
        self.events.put(event)

    def end(self) -> None:
        """End the stream after what is queued."""
        self.events.put(None)


def matches(connection: Connection, selector: MonitorScopeSelector) -> bool:
    """Does `connection` fall in the monitor's scope?

    network_services, when given, must contain the connection's service. path_segments, when
    given, must appear as a contiguous run in the connection's path; a selector segment matches a
    path segment when its non-empty name and id are equal (empty fields match anything).
    """
    if selector.network_services and connection.network_service not in selector.network_services:
        return False
    wanted = list(selector.path_segments)
    if not wanted:
        return True
    have = list(connection.path.path_segments)
    return any(all(_segment_matches(have[start + i], w) for i, w in enumerate(wanted))
               for start in range(len(have) - len(wanted) + 1))


def _segment_matches(segment: connection_pb2.PathSegment, wanted: connection_pb2.PathSegment) -> bool:
    return (not wanted.name or wanted.name == segment.name) and (not wanted.id or wanted.id == segment.id)
