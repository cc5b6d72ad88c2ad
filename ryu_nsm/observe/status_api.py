"""A small read-only HTTP endpoint on the controller: ``/status`` (JSON), ``/status/states`` (only
each connection's state: cheap enough to poll often on a big fabric), ``/status/fabric`` (switches
and links, for `status --dot`), ``/metrics`` (the same status for Prometheus, see ``metrics``) and
``/healthz`` (503 naming the stale loops when a supervised loop has stopped making progress, see
``health``), and with a flow store the live page ``/ui`` (see ``live_page``).

``ryu-nsm status`` reads it. It binds to loopback by default: it tells which paths connections
take, which is operator information, not something to publish.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ryu_nsm.observe import health
from ryu_nsm.observe.flow_store import FlowStore

DEFAULT_ADDRESS = ("127.0.0.1", 8181)


class StatusServer:
    """Serves ``status()`` (and ``states()``, when given) as JSON until ``stop()``; with ``loops``, their
    health on ``/healthz`` and their restarts and progress on ``/metrics``."""

    def __init__(self, status: Callable[[], dict], host: str, port: int,
                 states: Callable[[], dict] | None = None, fabric: dict | None = None,
                 loops: health.Registry | None = None, flows: FlowStore | None = None):
        page = None
        if flows is not None and fabric is not None:
            # Imported here: every `ryu-nsm` command imports this module.
            from ryu_nsm.observe.live_page import LivePage

            page = LivePage(status, fabric, flows)
        self.page = page

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                if self.path.rstrip("/") in ("/status", ""):
                    # Compact: json's C encoder serves only that, and pollers of a big fabric notice.
                    body = json.dumps(status(), separators=(",", ":")).encode()
                    self._reply(200, body, "application/json")
                elif self.path.rstrip("/") == "/status/states" and states is not None:
                    self._reply(200, json.dumps(states(), separators=(",", ":")).encode(), "application/json")
                elif self.path.rstrip("/") == "/status/fabric" and fabric is not None:
                    self._reply(200, json.dumps(fabric, separators=(",", ":")).encode(), "application/json")
                elif self.path.rstrip("/") == "/metrics":
                    from ryu_nsm.observe import metrics  # here: every `ryu-nsm` command imports this module

                    text = metrics.exposition(status) + (health.exposition(loops) if loops else b"")
                    self._reply(200, text, metrics.CONTENT_TYPE)
                elif self.path == "/healthz":
                    stale = loops.stale() if loops else []
                    if stale:
                        self._reply(503, json.dumps({"stale": stale}).encode() + b"\n", "application/json")
                    else:
                        self._reply(200, b"ok\n", "text/plain")
                elif page is not None and page.serves(self.path):
                    page.handle(self)
                else:
                    self._reply(404, b"not found\n", "text/plain")

            def _reply(self, code: int, body: bytes, kind: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # requests are not news
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="ryu-nsm-status", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self.server.server_address[:2]

    def start(self) -> StatusServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.page is not None:
            self.page.stop()
        self.server.shutdown()
        self.server.server_close()


def fetch_status(url: str, timeout: float = 5.0, what: str = "/status") -> dict:
    """GET the controller's status JSON (``what``: ``/status``, ``/status/states``, ``/status/fabric``)."""
    with urllib.request.urlopen(url.rstrip("/") + what, timeout=timeout) as reply:
        return json.loads(reply.read())
