"""run_apps: the OpenFlow listener is up before any app's start runs (no switch needed)."""

from __future__ import annotations

import socket

from os_ken.base import app_manager
from os_ken.controller import ofp_event

from ryu_nsm.openflow.launch import ProbeApp, run_apps


class _SlowStart(ProbeApp):
    """Connects to the listener from its own start, as a switch would while ryu-nsm's app reads
    its sources there."""

    reached: bool | None = None

    def start(self):
        thread = super().start()
        handler = app_manager.lookup_service_brick(ofp_event.NAME)
        controller = getattr(handler, "controller", None)  # made by the handler's own start
        if controller is not None:
            with socket.create_connection(("127.0.0.1", controller.ofp_tcp_listen_port), timeout=2):
                type(self).reached = True
        else:
            type(self).reached = False
        return thread


def test_switches_find_the_listener_while_the_apps_start():
    _SlowStart.reached = None
    with run_apps([_SlowStart]):
        assert _SlowStart.reached is True
