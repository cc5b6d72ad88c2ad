"""The controller's NSM gRPC API (ryu_nsm.sources.nsm_grpc) on real netdev OVS bridges and namespaces.

The fabric is the one of test_controller_ovs (two bridges, a client and a server namespace); the
request files declare only the service `echo` and its endpoint `server` in namespace nsm: the client
connection is asked for over gRPC.
"""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest

from nsm_api import connection_pb2, connection_pb2_grpc, networkservice_pb2, networkservice_pb2_grpc
from nsm_api.connection_pb2 import Connection, Mechanism, MonitorScopeSelector
from nsm_api.serving import UNSIGNED_PREFIX
from ryu_nsm.lab.controller_process import ControllerProcess, wait_for
from ryu_nsm.sources.nsm_grpc import ATTACHMENT_PARAM, SEGMENT_NAME

from .echo_requests import echo_service
from .test_controller_ovs import A, B, build, connect, ping, teardown

pytestmark = pytest.mark.ovs


def write_requests(directory: Path) -> Path:
    """Service echo and endpoint server (at B's server port), both in namespace nsm."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "service.yaml").write_text(echo_service("nsm") + textwrap.dedent(f"""\
        ---
        apiVersion: networkservicemesh.io/v1
        kind: NetworkServiceEndpoint
        metadata:
          name: server
          namespace: nsm
          annotations: {{ryu-nsm.io/attachments: {B}/{B}-s}}
        spec: {{network_service_names: [echo]}}
        """))
    return directory


@pytest.fixture(scope="module")
def controller(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grpc")
    teardown()
    try:
        topo, _ = build(tmp)
        requests = write_requests(tmp / "nsm-requests")
        sock = tmp / "c.sock"
        with ControllerProcess(topo, [requests], tmp / "controller.log",
                               extra_args=["--nsm-listen", f"unix://{sock}"]) as ctl:
            connect(ctl.of_port)
            ctl.nsm_address = f"unix://{sock}"  # for `ryu-nsm status --nsm`
            assert wait_for(lambda: all(s["connected"] and s["flows"] is not None
                                        for s in ctl.status()["switches"]), 20), ctl.status()
            with grpc.insecure_channel(f"unix://{sock}") as channel:
                grpc.channel_ready_future(channel).result(timeout=10)
                yield ctl, channel
            assert ctl.errors() == []
    finally:
        teardown()


def nsm_request(service: str, params: dict[str, str]) -> networkservice_pb2.NetworkServiceRequest:
    """A Request for ``service`` under a fresh connection id, with these mechanism parameters."""
    connection = Connection(id=str(uuid.uuid4()), network_service=service, labels={"app": "test"},
                            mechanism=Mechanism(cls="LOCAL", type="KERNEL", parameters=params))
    return networkservice_pb2.NetworkServiceRequest(connection=connection)


def refused(channel, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        networkservice_pb2_grpc.NetworkServiceStub(channel).Request(request, timeout=10)
    return caught.value


class Monitor:
    """A MonitorConnections stream read into a queue by a thread."""

    def __init__(self, channel, services: tuple[str, ...] = ()):
        stub = connection_pb2_grpc.MonitorConnectionStub(channel)
        self.call = stub.MonitorConnections(MonitorScopeSelector(network_services=services), timeout=30)
        self.events: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for event in self.call:
                self.events.put(event)
        except grpc.RpcError:
            pass

    def next(self, want, timeout: float = 5.0) -> connection_pb2.ConnectionEvent:
        """The first event for which ``want(event)`` holds; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            event = self.events.get(timeout=max(deadline - time.monotonic(), 0.001))
            if want(event):
                return event

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(5)


def test_bad_requests_get_clear_codes(controller):
    ctl, channel = controller
    missing = refused(channel, nsm_request("echo", {"name": "nsm-1"}))
    assert missing.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ATTACHMENT_PARAM in missing.details()

    garbled = refused(channel, nsm_request("echo", {ATTACHMENT_PARAM: "no-slash"}))
    assert garbled.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no-slash" in garbled.details()

    unknown = refused(channel, nsm_request("nope", {ATTACHMENT_PARAM: f"{A}/{A}-c"}))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    assert "network service 'nope' not found" in unknown.details()

    monitor = Monitor(channel)
    try:
        monitor.next(lambda e: e.type == connection_pb2.INITIAL_STATE_TRANSFER)  # subscribed
        ghost = nsm_request("echo", {ATTACHMENT_PARAM: f"{A}/ghost"})
        nowhere = refused(channel, ghost)
        assert nowhere.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no port 'ghost'" in nowhere.details()
        assert ctl.connections() == {}, "a refused request must be withdrawn"
        # While it was held (failing, before the refusal) monitors saw it DOWN; then it was deleted.
        cid = ghost.connection.id
        held = monitor.next(lambda e: e.type == connection_pb2.UPDATE and cid in e.connections)
        assert held.connections[cid].state == connection_pb2.DOWN
        assert monitor.next(lambda e: e.type == connection_pb2.DELETE).connections.keys() == {cid}
    finally:
        monitor.close()


def test_request_monitor_close(controller):
    ctl, channel = controller
    stub = networkservice_pb2_grpc.NetworkServiceStub(channel)
    assert not ping(1)
    unrelated = Monitor(channel, ("other",))
    monitor = Monitor(channel, ("echo",))
    try:
        assert monitor.next(lambda e: e.type == connection_pb2.INITIAL_STATE_TRANSFER).connections == {}
        request = nsm_request("echo", {"name": "nsm-1", ATTACHMENT_PARAM: f"{A}/{A}-c"})
        cid = request.connection.id
        answer = stub.Request(request, timeout=15)
        assert answer.state == connection_pb2.UP
        assert answer.network_service_endpoint_name == "server"
        segment = answer.path.path_segments[answer.path.index]
        assert segment.name == SEGMENT_NAME and segment.token.startswith(UNSIGNED_PREFIX)
        assert segment.metrics["path"] == f"{A},{B}"
        assert segment.expires.seconds > time.time()
        status = ctl.connections()[f"nsm/{cid}/nsm-1"]
        assert status["state"] == "up" and status["client_attachment"] == f"{A}/{A}-c"
        assert wait_for(ping, 10, 0.5), "no traffic through the connection asked for over gRPC"

        seen = monitor.next(lambda e: e.type == connection_pb2.UPDATE and cid in e.connections
                            and e.connections[cid].state == connection_pb2.UP)
        assert seen.connections[cid].network_service_endpoint_name == "server"
        assert dict(seen.connections[cid].labels) == {"app": "test"}
        late = Monitor(channel)
        try:
            initial = late.next(lambda e: e.type == connection_pb2.INITIAL_STATE_TRANSFER)
            assert initial.connections[cid].state == connection_pb2.UP
        finally:
            late.close()
        # `ryu-nsm status --nsm` reads the same stream.
        shown = subprocess.run([sys.executable, "-m", "ryu_nsm.cli", "status", "--nsm", ctl.nsm_address],
                               capture_output=True, text=True, timeout=30)
        assert shown.returncode == 0, shown.stderr
        assert re.search(rf"INITIAL_STATE_TRANSFER: 1 connection\(s\)\n\s+{cid}\s+echo\s+server\s+UP",
                         shown.stdout), shown.stdout

        # A refresh with the answer changes nothing and keeps one segment of ours.
        history = len(ctl.status()["history"])
        again = stub.Request(networkservice_pb2.NetworkServiceRequest(connection=answer), timeout=5)
        assert again.state == connection_pb2.UP
        assert [s.name for s in again.path.path_segments] == [SEGMENT_NAME]
        assert len(ctl.status()["history"]) == history

        stub.Close(answer, timeout=5)
        assert ctl.connections() == {}
        assert monitor.next(lambda e: e.type == connection_pb2.DELETE).connections.keys() == {cid}
        assert wait_for(lambda: not ping(1), 10), "traffic still passes after Close"
        stub.Close(answer, timeout=5)  # closing an unknown id is not an error

        assert unrelated.next(lambda e: e.type == connection_pb2.INITIAL_STATE_TRANSFER).connections == {}
        assert unrelated.events.empty(), "a monitor of another service saw this one"
    finally:
        monitor.close()
        unrelated.close()
