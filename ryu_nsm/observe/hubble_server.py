"""Hubble's Observer gRPC API over the controller's flow store: GetFlows (history, follow, filters),
ServerStatus and GetNodes, so that ``hubble observe``, Hubble Relay and ``ryu-nsm observe`` read
ryu-nsm's flows. The other Observer methods answer UNIMPLEMENTED. Beside it, Hubble's Peer service
names this server as the one peer, which is how Hubble Relay (``--peer-service``) finds it."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures

import grpc

from hubble_api import observer_pb2, observer_pb2_grpc, peer_pb2, peer_pb2_grpc, relay_pb2
from ryu_nsm.observe.flow_store import FlowStore
from ryu_nsm.observe.hubble_flows import lost_response, read_query, to_response

log = logging.getLogger(__name__)

VERSION = "ryu-nsm 0.1.0"
FOLLOW_POLL = 0.5  # seconds a follower waits before checking that its client is still there


class HubbleObserver(observer_pb2_grpc.ObserverServicer):
    """The Observer servicer. ``nodes()`` gives the switches (Hubble's nodes: where flows are seen)
    and whether each is connected; ``clock`` is unix seconds."""

    def __init__(self, store: FlowStore, nodes: Callable[[], dict[str, bool]], name: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.nodes = nodes
        self.name = name
        self.clock = clock
        self.address = ""
        self._started = clock()
        self._stopping = threading.Event()

    def stop(self) -> None:
        """End every open GetFlows and Notify stream at its next poll."""
        self._stopping.set()

    def stopped(self, timeout: float) -> bool:
        """Whether the server is stopping, waiting up to ``timeout`` seconds for it."""
        return self._stopping.wait(timeout)

    def GetFlows(self, request, context) -> Iterator[observer_pb2.GetFlowsResponse]:  # noqa: N802
        try:
            query = read_query(request)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if not request.follow:
            yield from map(to_response, self.store.history(query))
            return
        history, follower = self.store.follow(query)
        try:
            yield from map(to_response, history)
            # `number` counts history only: from here on every match is sent.
            ongoing = dataclasses.replace(query, number=0, first=False)
            while context.is_active() and not self._stopping.is_set():
                if ongoing.until is not None and self.clock() > ongoing.until:
                    return
                events, lost = follower.take(FOLLOW_POLL)
                if lost:
                    yield lost_response(lost, self.name, self.clock())
                yield from (to_response(event) for event in events if ongoing.matches(event))
        finally:
            follower.close()

    def ServerStatus(self, request, context) -> observer_pb2.ServerStatusResponse:  # noqa: N802
        held, seen = self.store.counts()
        nodes = self.nodes()
        response = observer_pb2.ServerStatusResponse(
            num_flows=held, max_flows=self.store.capacity, seen_flows=seen, uptime_ns=self._uptime_ns(),
            unavailable_nodes=sorted(name for name, up in nodes.items() if not up), version=VERSION)
        response.num_connected_nodes.value = sum(nodes.values())
        response.num_unavailable_nodes.value = len(nodes) - sum(nodes.values())
        return response

    def GetNodes(self, request, context) -> observer_pb2.GetNodesResponse:  # noqa: N802
        held, seen = self.store.counts()
        states = {True: relay_pb2.NODE_CONNECTED, False: relay_pb2.NODE_UNAVAILABLE}
        return observer_pb2.GetNodesResponse(nodes=[
            observer_pb2.Node(name=name, version=VERSION, address=self.address, state=states[up],
                              uptime_ns=self._uptime_ns(), num_flows=held, max_flows=self.store.capacity,
                              seen_flows=seen)
            for name, up in sorted(self.nodes().items())])

    def _uptime_ns(self) -> int:
        return max(int((self.clock() - self._started) * 1e9), 0)


class HubblePeers(peer_pb2_grpc.PeerServicer):
    """Hubble's Peer service: this server, named after the fabric, is the cluster's one Hubble peer.
    Notify sends it as PEER_ADDED, then holds the stream open (no change ever follows)."""

    def __init__(self, observer: HubbleObserver) -> None:
        self.observer = observer

    def Notify(self, request, context) -> Iterator[peer_pb2.ChangeNotification]:  # noqa: N802
        addresses = self.observer.address.split(",")
        # Relay dials the peer's address for the Observer: a TCP one where there is one.
        address = next((a for a in addresses if not a.startswith("unix:")), addresses[0])
        yield peer_pb2.ChangeNotification(name=self.observer.name, address=address, type=peer_pb2.PEER_ADDED)
        while context.is_active() and not self.observer.stopped(FOLLOW_POLL):
            pass


class HubbleServer:
    """A gRPC server offering one HubbleObserver on ``unix:PATH`` or ``HOST:PORT`` (port 0: any)."""

    def __init__(self, observer: HubbleObserver, max_workers: int = 16) -> None:
        self.observer = observer
        self._pool = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ryu-nsm-hubble")
        self._server = grpc.server(self._pool)
        observer_pb2_grpc.add_ObserverServicer_to_server(observer, self._server)
        peer_pb2_grpc.add_PeerServicer_to_server(HubblePeers(observer), self._server)
        self.addresses: list[str] = []

    def serve(self, listen: Sequence[str]) -> HubbleServer:
        """Bind every address and start; OSError naming an address that cannot be bound."""
        for address in listen:
            try:
                port = self._server.add_insecure_port(address)
            except RuntimeError as exc:
                raise OSError(f"cannot listen on {address}: {exc}") from exc
            if not address.startswith("unix:"):
                if port == 0:
                    raise OSError(f"cannot listen on {address}")
                address = f"{address.rsplit(':', 1)[0]}:{port}"
            self.addresses.append(address)
        self.observer.address = ",".join(self.addresses)
        self._server.start()
        log.info("Hubble Observer API on %s", ", ".join(self.addresses))
        return self

    def stop(self) -> None:
        self.observer.stop()
        self._server.stop(grace=FOLLOW_POLL * 2).wait()
        self._pool.shutdown(wait=False)
