"""Start the whole controller in this process: os-ken app, request sources, status endpoint, the flow
store (with the Hubble API and flow log when asked), on a cluster the Kubernetes watcher, status writer
and leader election, and on nodes with the forwarder the OVSDB watcher."""

from __future__ import annotations

import contextlib
import gc
import logging
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from ryu_nsm.core.fabric import Fabric
from ryu_nsm.core.model import Resources
from ryu_nsm.core.sampling import FlowSampling
from ryu_nsm.observe import health
from ryu_nsm.observe.flow_store import DEFAULT_CAPACITY, FlowStore
from ryu_nsm.observe.ipfix_collector import IpfixCollector
from ryu_nsm.observe.ipfix_events import WireDirectory
from ryu_nsm.observe.picture import fabric_description
from ryu_nsm.observe.status_access import StatusAccess
from ryu_nsm.observe.status_api import StatusServer
from ryu_nsm.openflow.shell import NsmApp, ShellSettings
from ryu_nsm.sources.topology import fabric_warnings
from ryu_nsm.trust.identity import IdentitySource

# At 10,000 connections the controller holds ~15 M long-lived objects. With CPython's default
# thresholds a full collection walks them all (0.5 s) every hundred requests or so; collecting the
# young generation after 50,000 allocations, not 700, makes full collections rare (none in 200
# requests, bench/core_scale.py). gc.freeze() would make them cheap, but cycles frozen alive and
# freed later (a reconnected switch's session) would never be collected.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """The controller process's garbage collector, set for a heap of long-lived objects."""
    gc.set_threshold(*GC_THRESHOLDS)


def _switch_tls(fabric: Fabric, identity: IdentitySource | None):
    """TLS for the OpenFlow listener with ``identity`` (None: plain TCP)."""
    if identity is None:
        return None
    from ryu_nsm.openflow.switch_tls import SwitchTls, fabric_check
    from ryu_nsm.trust.tls import server_context

    return SwitchTls(server_context(identity), fabric_check(fabric))


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
    shards: int = 1  # with leader_elect: shards of switches, one Lease each (docs/sharding.md)


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
    status_url: str = ""
    metrics_address: tuple[str, int] | None = None
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
    identity: IdentitySource | None = None,
    openflow_identity: IdentitySource | None = None,
    status_access: StatusAccess | None = None,
    metrics_address: tuple[str, int] | None = None,
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
    With ``identity`` they are served over mTLS with signed path tokens (docs/security.md).

    ``flows`` sizes the flow store and asks for Hubble's Observer API and the flow log over it.

    With ``openflow_identity``, OpenFlow is TLS only: switches need a certificate from its trust
    bundle, and the one their fabric entry names, if any (ryu_nsm.openflow.switch_tls).
    ``status_access`` authenticates the status endpoint's clients (HTTPS with an identity);
    ``metrics_address`` serves ``/metrics`` and ``/healthz`` alone there, in plain HTTP, for scrapers.
    With ``ipfix``, the flows sample frames and the IPFIX collector turns them into flow events.
    """
    from ryu_nsm.openflow import launch as oskenrun

    tune_gc()
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
    sharding = _Sharding.of(fabric, kubernetes)
    NsmApp.settings = ShellSettings(
        fabric=fabric, attach_sources=sources.attach, on_ready=on_ready, role_election=role_election,
        on_meter_drops=_meter_drops_to(running, fabric), **sharding.settings(settings),
    )
    handle = oskenrun.run_apps([NsmApp], of_host, of_port, tls=_switch_tls(fabric, openflow_identity))
    try:
        _serve_status(running, fabric, status_address, status_access, metrics_address, stoppers)
        if kube_api is not None:
            stoppers.extend(_start_cluster_side(running.app, kube_api, sources.kube_source, kubernetes,
                                                sharding))
        if sources.grpc_source is not None:
            stoppers.append(_serve_nsm(sources.grpc_source, running.app, nsm_listen, identity))
        _start_flow_outputs(running, flows, fabric, stoppers, ipfix)
        yield running
    finally:
        for stop in reversed(stoppers):
            stop()
        handle.stop()


def _serve_status(running: RunningController, fabric: Fabric, address: tuple[str, int],
                  access: StatusAccess | None, metrics_address: tuple[str, int] | None,
                  stoppers: list[Callable[[], None]]) -> None:
    """The status endpoint (and its live page), and the plain metrics listener when asked for."""
    status = StatusServer(lambda: running.app.status(), *address, states=lambda ids: running.app.states(ids),
                          fabric=fabric_description(fabric), loops=health.LOOPS, access=access,
                          flows=running.flow_store).start()
    stoppers.append(status.stop)
    running.status_address, running.status_url = status.address, status.url
    if metrics_address is not None:
        scrape = StatusServer(lambda: running.app.status(), *metrics_address, loops=health.LOOPS,
                              metrics_only=True).start()
        running.metrics_address = scrape.address
        stoppers.append(scrape.stop)


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

        # Every source is named before any reports: the first push waits for all of them.
        names = [name for name, asked in (
            ("files", self.request_paths), ("kubernetes", self.kube_api is not None),
            ("ovsdb", self.ovsdb_remote is not None), ("grpc", self.nsm_listen)) if asked]
        if not names:
            push(Resources())
            return
        merged = MergedSources(push, names)
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


def _serve_nsm(source, app: NsmApp, listen: Sequence[str], identity: IdentitySource | None
               ) -> Callable[[], None]:
    """Serve NSM's gRPC APIs for ``source`` (mTLS with ``identity``); returns the stop function."""
    from ryu_nsm.sources.nsm_grpc import NsmServer

    nsm_server = NsmServer(source, app.status, identity=identity)
    nsm_server.serve(listen)
    return nsm_server.stop


def _start_flow_outputs(running: RunningController, flows: FlowOptions, fabric: Fabric,
                        stoppers: list[Callable[[], None]], ipfix: IpfixOptions | None = None) -> None:
    """The IPFIX collector that fills the flow store, and the Hubble API and the flow log over it, as
    asked; their stop functions go to ``stoppers`` as each starts."""
    if ipfix is not None:
        _start_ipfix(running, ipfix, fabric, stoppers)
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


def _wire_directory(running: RunningController, fabric: Fabric) -> Callable[[], WireDirectory]:
    """What names wires in flow events, from the controller's plan at the time of the call."""
    names = [switch.name for switch in fabric.switches]

    def wires() -> WireDirectory:
        app = running.app
        with app.lock:
            planned = list(app.core.plan.connections.values())
            policy = app.core.resources.policy
        return WireDirectory.of(names, planned, fabric.flow_sampling or FlowSampling(), policy)

    return wires


def _meter_drops_to(running: RunningController, fabric: Fabric) -> Callable[[list], None]:
    """Frames over a wire's rate limit, as the counter reads find them, into the flow store."""
    from ryu_nsm.observe.meter_events import meter_events

    wires = _wire_directory(running, fabric)
    return lambda drops: running.flow_store.add(meter_events(drops, wires(), time.time()))


def _start_ipfix(running: RunningController, ipfix: IpfixOptions, fabric: Fabric,
                 stoppers: list[Callable[[], None]]) -> None:
    """The IPFIX collector, naming ids from the controller's plan."""
    names = [switch.name for switch in fabric.switches]
    wires = _wire_directory(running, fabric)
    running.ipfix = IpfixCollector(ipfix.listen, running.flow_store, wires).start()
    stoppers.append(running.ipfix.stop)
    if ipfix.ovsdb is not None:
        from ryu_nsm.sources.ovsdb_ipfix import remove_collector_sets, set_collector_sets

        target = ipfix.target or "{}:{}".format(*running.ipfix.address)
        set_id = (ipfix.sampling or FlowSampling()).collector_set
        set_collector_sets(ipfix.ovsdb, names, target, set_id)
        stoppers.append(lambda: remove_collector_sets(ipfix.ovsdb, names, set_id))


@dataclass
class _Sharding:
    """Switches sharded across replicas (``--shards``): their assignment and, once started, the election."""

    shards: dict[int, int] | None = None  # dpid → shard; None: not sharded
    count: int = 1
    election: object = None

    @classmethod
    def of(cls, fabric: Fabric, kubernetes: KubernetesOptions | None) -> _Sharding:
        if not (kubernetes and kubernetes.leader_elect and kubernetes.shards > 1):
            return cls()
        from ryu_nsm.k8s.shards import assign

        return cls(assign((switch.dpid for switch in fabric.switches), kubernetes.shards), kubernetes.shards)

    def settings(self, settings: dict) -> dict:
        """The shell's settings with the shards; probes are off (a SLAVE may not send them)."""
        if self.shards is None:
            return settings
        return {**settings, "shards": self.shards, "shard_holders": self.holders, "probe_interval": 0.0}

    def holders(self) -> dict[int, str | None]:
        return self.election.holders() if self.election is not None else {}

    def start(self, app: NsmApp, api, options: KubernetesOptions) -> Callable[[], bool]:
        """Campaign for every shard; returns whether this replica writes status (it holds shard 0)."""
        from functools import partial

        from ryu_nsm.k8s.leader import LeaderElector
        from ryu_nsm.k8s.shards import ShardElection

        make = partial(LeaderElector, api, options.lease_namespace,
                       lease_duration=options.lease_duration, renew_deadline=options.renew_deadline,
                       retry_period=options.retry_period)
        self.election = ShardElection(self.count, options.identity, make, options.lease_name,
                                      options.retry_period, app.set_leader,
                                      lambda shard: app.set_leader(None, shard),
                                      drain=lambda: app.drain(options.renew_deadline)).start()
        return lambda: self.election.leads(0)


def _start_cluster_side(app: NsmApp, api, source, options: KubernetesOptions, sharding: _Sharding
                        ) -> list[Callable[[], None]]:
    """Status writer loop, and the leader elector(s) when asked; returns their stop functions."""
    from ryu_nsm.k8s.client import StatusLoop
    from ryu_nsm.k8s.status_writer import StatusWriter

    elector = None
    if sharding.shards is not None:
        writes = sharding.start(app, api, options)
        loop = StatusLoop(StatusWriter(api, namespaces=options.namespaces), app.status, source.objects,
                          lambda: source.synced() and writes()).start()
        return [loop.stop, sharding.election.stop]
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
