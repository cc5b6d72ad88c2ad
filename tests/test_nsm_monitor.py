"""MonitorConnections over GrpcRequests and a status the test sets: no controller, no sockets.

The stream must show every connection that was asked for, even one refused and withdrawn between
two looks at the controller's state, and end when the client goes away.
"""

from __future__ import annotations

import queue
import threading

from nsm_api import connection_pb2
from nsm_api.connection_pb2 import Connection, Mechanism, MonitorScopeSelector
from nsm_api.networkservice_pb2 import NetworkServiceRequest
from ryu_nsm.lab.controller_process import wait_for
from ryu_nsm.sources.nsm_grpc import ATTACHMENT_PARAM, GrpcRequests, NsmServer
from ryu_nsm.sources.nsm_grpc import to_client_request as client_of


class Context:
    """The part of grpc.ServicerContext a monitor stream uses."""

    def __init__(self) -> None:
        self.active = True

    def is_active(self) -> bool:
        return self.active


def request(cid: str, service: str = "echo") -> NetworkServiceRequest:
    return NetworkServiceRequest(connection=Connection(
        id=cid, network_service=service,
        mechanism=Mechanism(cls="LOCAL", type="KERNEL", parameters={ATTACHMENT_PARAM: "br/p1"})))


class Harness:
    def __init__(self, monitor_interval: float) -> None:
        self.entries: dict[str, dict] = {}
        self.source = GrpcRequests(lambda resources: None)
        self.server = NsmServer(self.source, lambda: {"connections": list(self.entries.values())},
                                monitor_interval=monitor_interval)

    def put(self, cid: str, service: str = "echo") -> None:
        asked = request(cid, service)
        self.source.put(asked.connection, client_of(asked))

    def set_state(self, cid: str, state: str, endpoint: str = "") -> None:
        rid = client_of(request(cid)).id
        self.entries[rid] = {"id": rid, "state": state, "endpoint": endpoint}


class Stream:
    """A MonitorConnections generator read by a thread, as grpc would."""

    def __init__(self, harness: Harness, selector: MonitorScopeSelector) -> None:
        self.context = Context()
        self.events: queue.Queue = queue.Queue()
        self.stream = harness.server.MonitorConnections(selector, self.context)
        self.thread = threading.Thread(target=lambda: [self.events.put(e) for e in self.stream], daemon=True)
        self.thread.start()

    def next(self, timeout: float = 5.0) -> connection_pb2.ConnectionEvent:
        return self.events.get(timeout=timeout)

    def stop(self) -> None:
        self.context.active = False
        self.thread.join(5)
        assert not self.thread.is_alive(), "the stream did not end when the client left"


def test_a_connection_held_between_two_looks_is_still_seen():
    # The interval is far longer than the connection is held: only the change feed can show it.
    harness = Harness(monitor_interval=30.0)
    stream = Stream(harness, MonitorScopeSelector())
    try:
        assert stream.next().type == connection_pb2.INITIAL_STATE_TRANSFER
        harness.put("ghost")
        harness.source.withdraw("ghost")
        update = stream.next()
        assert update.type == connection_pb2.UPDATE
        assert update.connections["ghost"].state == connection_pb2.DOWN
        delete = stream.next()
        assert delete.type == connection_pb2.DELETE and set(delete.connections) == {"ghost"}
    finally:
        harness.server.stop()


def test_states_follow_the_controller_and_scope_filters():
    harness = Harness(monitor_interval=0.01)
    harness.put("before")
    stream = Stream(harness, MonitorScopeSelector(network_services=["echo"]))
    try:
        initial = stream.next()
        assert initial.type == connection_pb2.INITIAL_STATE_TRANSFER
        assert initial.connections["before"].state == connection_pb2.DOWN
        harness.put("other", service="other")  # out of scope: never shown
        harness.set_state("before", "up", endpoint="server")
        up = stream.next()
        assert up.type == connection_pb2.UPDATE and set(up.connections) == {"before"}
        assert up.connections["before"].state == connection_pb2.UP
        assert up.connections["before"].network_service_endpoint_name == "server"
        harness.source.withdraw("before")
        gone = stream.next()
        assert gone.type == connection_pb2.DELETE and set(gone.connections) == {"before"}
        assert stream.events.empty()
    finally:
        stream.stop()
    assert wait_for(lambda: not harness.source._subscribers, 2), "the ended stream stays subscribed"
