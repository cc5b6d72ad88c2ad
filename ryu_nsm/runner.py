"""Start the whole controller in this process: os-ken app, request sources, status endpoint."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from .app import NsmApp, ShellSettings
from .fabric import Fabric
from .model import Resources
from .statusapi import StatusServer


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
    **settings,
) -> Iterator[RunningController]:
    """Run until the context exits: OpenFlow on (of_host, of_port), status over HTTP.

    ``request_paths`` (files/directories) are watched; every change is applied live.
    """
    from . import oskenrun
    from .sources.files import DirectoryWatcher

    watchers = []

    def attach_sources(push: Callable[[Resources], None]) -> None:
        if not request_paths:
            push(Resources())
            return
        watcher = DirectoryWatcher(list(request_paths), push, interval=watch_interval)
        watcher.poll_once()  # the first state is applied before any switch is touched
        watcher.start()
        watchers.append(watcher)

    running = RunningController(None, status_address)

    def on_ready(app: NsmApp) -> None:
        running.app = app

    NsmApp.settings = ShellSettings(
        fabric=fabric, attach_sources=attach_sources, on_ready=on_ready, **settings
    )
    handle = oskenrun.run_apps([NsmApp], of_host, of_port)
    status = None
    try:
        status = StatusServer(lambda: running.app.status(), *status_address).start()
        running.status_address = status.address
        yield running
    finally:
        if status is not None:
            status.stop()
        for watcher in watchers:
            watcher.stop()
        handle.stop()
