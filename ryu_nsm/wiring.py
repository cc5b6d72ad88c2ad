"""Start the whole controller in this process: os-ken app, request sources, status endpoint,
on a cluster the Kubernetes watcher, status writer and leader election, and on nodes with the
forwarder the OVSDB watcher."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from ryu_nsm.core.fabric import Fabric
from ryu_nsm.core.model import Resources
from ryu_nsm.observe.picture import fabric_description
from ryu_nsm.observe.status_api import StatusServer
from ryu_nsm.openflow.shell import NsmApp, ShellSettings


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
class RunningController:
    app: NsmApp | None
    status_address: tuple[str, int]


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
    """
    from ryu_nsm.openflow import launch as oskenrun
    from ryu_nsm.sources.files import DirectoryWatcher
    from ryu_nsm.sources.merge import MergedSources

    stoppers: list[Callable[[], None]] = []
    kube_api = kube_source = grpc_source = None
    if kubernetes is not None:
        from ryu_nsm.k8s.client import api_client

        kube_api = api_client(kubernetes.kubeconfig, kubernetes.context)

    def attach_sources(push: Callable[[Resources], None]) -> None:
        nonlocal kube_source, grpc_source
        if not request_paths and kube_api is None and ovsdb_remote is None and not nsm_listen:
            push(Resources())
            return
        merged = MergedSources(push)
        if request_paths:
            watcher = DirectoryWatcher(list(request_paths), merged.part("files"), interval=watch_interval)
            watcher.poll_once()  # the files' first state is known before any switch is touched
            watcher.start()
            stoppers.append(watcher.stop)
        if kube_api is not None:
            from ryu_nsm.sources.kubernetes import KubernetesSource

            kube_source = KubernetesSource(kube_api, merged.part("kubernetes"), kubernetes.namespaces)
            kube_source.start()
            stoppers.append(kube_source.stop)
        if ovsdb_remote is not None:
            from ryu_nsm.sources.ovsdb import OvsdbSource

            ovsdb_source = OvsdbSource(merged.part("ovsdb"), ovsdb_remote,
                                       bridges=[switch.name for switch in fabric.switches])
            ovsdb_source.start()
            stoppers.append(ovsdb_source.stop)
        if nsm_listen:
            from ryu_nsm.sources.nsm_grpc import GrpcRequests

            grpc_source = GrpcRequests(merged.part("grpc"))

    running = RunningController(None, status_address)

    def on_ready(app: NsmApp) -> None:
        running.app = app

    role_election = bool(kubernetes and kubernetes.leader_elect)
    NsmApp.settings = ShellSettings(
        fabric=fabric, attach_sources=attach_sources, on_ready=on_ready, role_election=role_election,
        **settings,
    )
    handle = oskenrun.run_apps([NsmApp], of_host, of_port)
    status = None
    try:
        status = StatusServer(lambda: running.app.status(), *status_address,
                              states=lambda: running.app.states(), fabric=fabric_description(fabric)).start()
        running.status_address = status.address
        if kube_api is not None:
            stoppers.extend(_start_cluster_side(running.app, kube_api, kube_source, kubernetes))
        if grpc_source is not None:
            from ryu_nsm.sources.nsm_grpc import NsmServer

            nsm_server = NsmServer(grpc_source, running.app.status)
            nsm_server.serve(nsm_listen)
            stoppers.append(nsm_server.stop)
        yield running
    finally:
        for stop in reversed(stoppers):
            stop()
        if status is not None:
            status.stop()
        handle.stop()


def _start_cluster_side(app: NsmApp, api, source, options: KubernetesOptions) -> list[Callable[[], None]]:
    """Status writer loop, and the leader elector when asked; returns their stop functions."""
    from ryu_nsm.k8s.client import StatusLoop
    from ryu_nsm.k8s.status import StatusWriter

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
