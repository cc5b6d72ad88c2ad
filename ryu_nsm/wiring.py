"""Start the whole controller in this process: os-ken app, request sources, status endpoint, the flow
store (with the Hubble API and flow log when asked), on a cluster the Kubernetes watcher, status writer
and leader election, and on nodes with the forwarder the OVSDB watcher."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from ryu_nsm.core.fabric import Fabric
from ryu_nsm.core.model import Resources
from ryu_nsm.core.sampling import FlowSampling
from ryu_nsm.observe import health
from ryu_nsm.observe.flow_store import DEFAULT_CAPACITY, FlowStore
from ryu_nsm.observe.ipfix_collector import IpfixCollector
from ryu_nsm.observe.picture import fabric_description
from ryu_nsm.observe.status_api import StatusServer
from ryu_nsm.openflow.shell import NsmApp, ShellSettings
from ryu_nsm.sources.topology import fabric_warnings


@dataclass
class KubernetesOptions:
    """How to reach the cluster and whether to take part in leader election."""

    kubeconfig: str | None = None
    context: str | None = None
    namespaces: Sequence[str] | None = None  # None: all namespaces
    leader_elect: bool = False
    lease_namespace: str = "ryu-nsm"
    lease_name: str = "ryu-nsm-controller"
    identity: str = field(default_factory=socket.gethostname)
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


@dataclass
class FlowOptions:
    """The flow store's size, where Hubble's API is served (none: not served), the flow log."""

    buffer: int = DEFAULT_CAPACITY
    hubble_listen: Sequence[str] | None = None
    log: str | None = None
    log_max_bytes: int = 10 * 1024 * 1024
    log_keep: int = 5


@dataclass
class IpfixOptions:
    """The IPFIX collector's address, and the sampling the flows carry (None: no sample actions)."""

    listen: tuple[str, int]
    sampling: FlowSampling | None = field(default_factory=FlowSampling)
    ovsdb: str | None = None  # where to create the bridges' collector sets (None: the operator does)
    target: str | None = None  # the collector's address as the switches reach it (default: listen)


@dataclass
class RunningController:
    """What runs; ``flow_store.add(events)`` is where flow event producers hand their events."""

    app: NsmApp | None
    status_address: tuple[str, int]
    flow_store: FlowStore = field(default_factory=FlowStore)
    hubble_addresses: list[str] = field(default_factory=list)
    ipfix: IpfixCollector | None = None


@contextlib.contextmanager
def run_controller(
    fabric: Fabric,
    request_paths: Sequence[str],
    of_host: str,
    of_port: int,
    status_address: tuple[str, int],
    watch_interval: float = 1.0,
    kubernetes: KubernetesOptions | None = None,
    ovsdb_remote: str | None = None,
    nsm_listen: Sequence[str] = (),
    flows: FlowOptions | None = None,
    ipfix: IpfixOptions | None = None,
    **settings,
) -> Iterator[RunningController]:
    """Run until the context exits: OpenFlow on (of_host, of_port), status over HTTP.

    ``request_paths`` (files/directories) are watched and, with ``kubernetes``, the cluster's NSM
    objects too; every change is applied live. The union of all sources is the declared state.

    With ``ovsdb_remote``, the interfaces that the forwarder plumbed into this fabric's bridges (and
    marked in OVSDB) become client requests and endpoints. The NetworkServices they name still come
    from files or Kubernetes: NSM keeps services in its registry, OVSDB only knows interfaces.

    With ``nsm_listen`` (``unix:///path`` or ``host:port`` each), NSM's NetworkService and
    MonitorConnection are served there (ryu_nsm.sources.nsm_grpc); requested connections are one more source.

    ``flows`` sizes the flow store and asks for Hubble's Observer API and the flow log over it.
    With ``ipfix``, the flows sample frames and the IPFIX collector turns them into flow events.
    """
    from ryu_nsm.openflow import launch as oskenrun

    for warning in fabric_warnings(fabric):
        logging.getLogger("ryu_nsm.wiring").warning("%s", warning)
    if ipfix is not None:
        fabric = replace(fabric, flow_sampling=ipfix.sampling)
    stoppers: list[Callable[[], None]] = []
    kube_api = None
    if kubernetes is not None:
        from ryu_nsm.k8s.client import api_client

        kube_api = api_client(kubernetes.kubeconfig, kubernetes.context)
    sources = _Sources(fabric, request_paths, watch_interval, kube_api, kubernetes, ovsdb_remote, nsm_listen,
                       stoppers)
    flows = flows or FlowOptions()
    running = RunningController(None, status_address, FlowStore(flows.buffer))

    def on_ready(app: NsmApp) -> None:
        running.app = app

    role_election = bool(kubernetes and kubernetes.leader_elect)
    NsmApp.settings = ShellSettings(
        fabric=fabric, attach_sources=sources.attach, on_ready=on_ready, role_election=role_election,
        **settings,
    )
    handle = oskenrun.run_apps([NsmApp], of_host, of_port)
    status = None
    try:
        status = StatusServer(lambda: running.app.status(), *status_address,
                              states=lambda: running.app.states(), fabric=fabric_description(fabric),
                              loops=health.LOOPS).start()
        running.status_address = status.address
        if kube_api is not None:
            stoppers.extend(_start_cluster_side(running.app, kube_api, sources.kube_source, kubernetes))
        if sources.grpc_source is not None:
            stoppers.append(_serve_nsm(sources.grpc_source, running.app, nsm_listen))
        _start_flow_outputs(running, flows, fabric, stoppers)
        if ipfix is not None:
            _start_ipfix(running, ipfix, fabric, stoppers)
        yield running
    finally:
        for stop in reversed(stoppers):
            stop()
        if status is not None:
            status.stop()
        handle.stop()


@dataclass
class _Sources:
    """The request sources run_controller was asked for; ``attach`` starts them once the app runs."""

    fabric: Fabric
    request_paths: Sequence[str]
    watch_interval: float
    kube_api: object
    kubernetes: KubernetesOptions | None
    ovsdb_remote: str | None
    nsm_listen: Sequence[str]
    stoppers: list[Callable[[], None]]
    kube_source: object = None
    grpc_source: object = None

    def attach(self, push: Callable[[Resources], None]) -> None:
        from ryu_nsm.sources.files import DirectoryWatcher
        from ryu_nsm.sources.merge import MergedSources

        if not (self.request_paths or self.kube_api is not None or self.ovsdb_remote is not None
                or self.nsm_listen):
            push(Resources())
            return
        merged = MergedSources(push)
        if self.request_paths:
            watcher = DirectoryWatcher(list(self.request_paths), merged.part("files"),
                                       interval=self.watch_interval)
            watcher.poll_once()  # the files' first state is known before any switch is touched
            watcher.start()
            self.stoppers.append(watcher.stop)
        if self.kube_api is not None:
            from ryu_nsm.sources.kubernetes import KubernetesSource

            self.kube_source = KubernetesSource(self.kube_api, merged.part("kubernetes"),
                                                self.kubernetes.namespaces)
            self.kube_source.start()
            self.stoppers.append(self.kube_source.stop)
        if self.ovsdb_remote is not None:
            from ryu_nsm.sources.ovsdb import OvsdbSource

            ovsdb_source = OvsdbSource(merged.part("ovsdb"), self.ovsdb_remote,
                                       bridges=[switch.name for switch in self.fabric.switches])
            ovsdb_source.start()
            self.stoppers.append(ovsdb_source.stop)
        if self.nsm_listen:
            from ryu_nsm.sources.nsm_grpc import GrpcRequests

            self.grpc_source = GrpcRequests(merged.part("grpc"))


def _serve_nsm(source, app: NsmApp, listen: Sequence[str]) -> Callable[[], None]:
    """Serve NSM's gRPC APIs for ``source``; returns the stop function."""
    from ryu_nsm.sources.nsm_grpc import NsmServer

    nsm_server = NsmServer(source, app.status)
    nsm_server.serve(listen)
    return nsm_server.stop


def _start_flow_outputs(running: RunningController, flows: FlowOptions, fabric: Fabric,
                        stoppers: list[Callable[[], None]]) -> None:
    """The Hubble API and the flow log over the flow store, as asked; their stop functions go to
    ``stoppers`` as each starts."""
    if flows.log:
        from ryu_nsm.observe.flow_log import FlowLog, RotatingLines

        flow_log = FlowLog(running.flow_store, RotatingLines(flows.log, flows.log_max_bytes, flows.log_keep))
        stoppers.append(flow_log.start().stop)
    if flows.hubble_listen:
        from ryu_nsm.observe.hubble_server import HubbleObserver, HubbleServer

        def nodes() -> dict[str, bool]:
            """The fabric's switches (Hubble's nodes: where flows are seen) and which are connected."""
            up = {s["name"] for s in running.app.status().get("switches", []) if s["connected"]}
            return {switch.name: switch.name in up for switch in fabric.switches}

        observer = HubbleObserver(running.flow_store, nodes, fabric.name)
        server = HubbleServer(observer).serve(flows.hubble_listen)
        running.hubble_addresses = server.addresses
        stoppers.append(server.stop)


def _start_ipfix(running: RunningController, ipfix: IpfixOptions, fabric: Fabric,
                 stoppers: list[Callable[[], None]]) -> None:
    """The IPFIX collector, naming ids from the controller's plan."""
    from ryu_nsm.observe.ipfix_events import WireDirectory

    names = [switch.name for switch in fabric.switches]

    def wires() -> WireDirectory:
        app = running.app
        with app.lock:
            planned = list(app.core.plan.connections.values())
        return WireDirectory.of(names, planned, ipfix.sampling or FlowSampling())

    running.ipfix = IpfixCollector(ipfix.listen, running.flow_store, wires).start()
    stoppers.append(running.ipfix.stop)
    if ipfix.ovsdb is not None:
        from ryu_nsm.sources.ovsdb_ipfix import remove_collector_sets, set_collector_sets

        target = ipfix.target or "{}:{}".format(*running.ipfix.address)
        set_id = (ipfix.sampling or FlowSampling()).collector_set
        set_collector_sets(ipfix.ovsdb, names, target, set_id)
        stoppers.append(lambda: remove_collector_sets(ipfix.ovsdb, names, set_id))


def _start_cluster_side(app: NsmApp, api, source, options: KubernetesOptions) -> list[Callable[[], None]]:
    """Status writer loop, and the leader elector when asked; returns their stop functions."""
    from ryu_nsm.k8s.client import StatusLoop
    from ryu_nsm.k8s.status_writer import StatusWriter

    elector = None
    if options.leader_elect:
        from ryu_nsm.k8s.leader import LeaderElector

        elector = LeaderElector(
            api, options.lease_namespace, options.lease_name, options.identity,
            lease_duration=options.lease_duration, renew_deadline=options.renew_deadline,
            retry_period=options.retry_period,
            on_started=app.set_leader, on_stopped=lambda: app.set_leader(None),
        )

    def may_write() -> bool:
        return source.synced() and (elector is None or elector.is_leader)

    writer = StatusWriter(api, namespaces=options.namespaces)
    loop = StatusLoop(writer, app.status, source.objects, may_write).start()
    stops = [loop.stop]
    if elector is not None:
        elector.start()
        stops.append(elector.stop)
    return stops
