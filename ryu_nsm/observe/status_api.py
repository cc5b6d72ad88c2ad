"""A small read-only HTTP endpoint on the controller: ``/status`` (JSON), ``/status/states`` (only
each connection's state: cheap enough to poll often on a big fabric), ``/status/fabric`` (switches
and links, for `status --dot`), ``/metrics`` (the same status for Prometheus, see ``metrics``) and
``/healthz`` (503 naming the stale loops when a supervised loop has stopped making progress, see
``health``), and with a flow store the live page ``/ui`` (see ``live_page``).

``ryu-nsm status`` reads it. It binds to loopback by default: it tells which paths connections
take, which is operator information, not something to publish. With a ``StatusAccess`` it speaks
HTTPS and serves only authenticated clients, ``/healthz`` excepted (``status_access``); a second,
``metrics_only`` server can publish ``/metrics`` and ``/healthz`` alone for scrapers.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from ryu_nsm.observe import health
from ryu_nsm.observe.status_access import StatusAccess, StatusClient

if TYPE_CHECKING:  # every `ryu-nsm` command imports this module: the store only where it serves
    from ryu_nsm.observe.flow_store import FlowStore

DEFAULT_ADDRESS = ("127.0.0.1", 8181)
HANDSHAKE_SECONDS = 10.0  # a client that stalls its TLS handshake holds a thread no longer
log = logging.getLogger("ryu_nsm.observe.status_api")
Route = Callable[[dict[str, list[str]]], tuple[int, bytes, str]]  # query → reply


States = Callable[[list[str] | None], dict]  # connection ids (None: all) → {"connections": {id: state}}


class StatusRefused(Exception):
    """The status endpoint refused the client: its certificate (at the TLS handshake) or its token."""


def _json(value: dict) -> tuple[int, bytes, str]:
    # Compact: json's C encoder serves only that, and pollers of a big fabric notice.
    return 200, json.dumps(value, separators=(",", ":")).encode(), "application/json"


def _routes(status: Callable[[], dict], states: States | None, fabric: dict | None,
            loops: health.Registry | None, metrics_only: bool) -> dict[str, Route]:
    """Path (without trailing slash) -> what answers it."""

    memo: list = []  # the metrics' memo, made on the first scrape (metrics is imported late)

    def metrics_text(_query: dict) -> tuple[int, bytes, str]:
        from ryu_nsm.observe import metrics  # here: every `ryu-nsm` command imports this module

        memo[:] = memo or [metrics.ExpositionMemo()]
        text = metrics.exposition(status, memo[0]) + (health.exposition(loops) if loops else b"")
        return 200, text, metrics.CONTENT_TYPE

    def healthz(_query: dict) -> tuple[int, bytes, str]:
        stale = loops.stale() if loops else []
        if stale:
            return 503, json.dumps({"stale": stale}).encode() + b"\n", "application/json"
        return 200, b"ok\n", "text/plain"

    routes: dict[str, Route] = {"/metrics": metrics_text, "/healthz": healthz}
    if not metrics_only:
        routes["/status"] = routes[""] = lambda _query: _json(status())
        if states is not None:  # ?id=… (repeatable): only those, for a poller waiting on a few
            routes["/status/states"] = lambda query: _json(states(query.get("id")))
        if fabric is not None:
            routes["/status/fabric"] = lambda _query: _json(fabric)
    return routes


def _handler(routes: dict[str, Route], access: StatusAccess | None, page) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def version_string(self) -> str:  # no versions to fingerprint
            return "ryu-nsm"

        timeout = 30  # an idle connection's thread ends

        def do_GET(self):  # noqa: N802 (http.server's name)
            url = urllib.parse.urlsplit(self.path)
            path = url.path.rstrip("/")
            if path != "/healthz" and access is not None:
                tls = isinstance(self.connection, ssl.SSLSocket)
                peer = self.connection.getpeercert(True) if tls else None
                refusal = access.check(peer, self.headers.get("Authorization"))
                if refusal is not None:  # before the route: a refused client learns no paths
                    self._reply(refusal.code, refusal.body, "text/plain", refusal.headers)
                    return
            if page is not None and page.serves(self.path):
                page.handle(self)
                return
            route = routes.get(path)
            query = urllib.parse.parse_qs(url.query)
            self._reply(*(route(query) if route else (404, b"not found\n", "text/plain")))

        def _reply(self, code: int, body: bytes, kind: str, headers: tuple = ()) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # requests are not news
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that makes each TLS handshake in the request's own thread (a slow client
    never holds up accept) with the context as it is then: a rotated SVID serves the next connection."""

    daemon_threads = True

    def __init__(self, address, handler, context: ssl.SSLContext | None):
        self.context = context
        super().__init__(address, handler)

    def finish_request(self, request, client_address) -> None:
        if self.context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(HANDSHAKE_SECONDS)
        try:
            connection = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as error:
            log.debug("status endpoint: TLS handshake with %s failed: %s", client_address[0], error)
            return
        try:
            self.RequestHandlerClass(connection, client_address, self)
        finally:
            self.shutdown_request(connection)


class StatusServer:
    """Serves ``status()`` (and ``states()``, when given) as JSON until ``stop()``; with ``loops``, their
    health on ``/healthz`` and their restarts and progress on ``/metrics``; with ``access``, over HTTPS
    and to authenticated clients only; with ``flows`` (and ``fabric``), the live page ``/ui``.
    ``metrics_only``: ``/metrics`` and ``/healthz``, nothing else."""

    def __init__(self, status: Callable[[], dict], host: str, port: int,
                 states: States | None = None, fabric: dict | None = None,
                 loops: health.Registry | None = None, access: StatusAccess | None = None,
                 metrics_only: bool = False, flows: FlowStore | None = None):
        routes = _routes(status, states, fabric, loops, metrics_only)
        self.page = None
        if flows is not None and fabric is not None and not metrics_only:
            # Imported here: every `ryu-nsm` command imports this module.
            from ryu_nsm.observe.live_page import LivePage

            self.page = LivePage(status, fabric, flows)
        context = access.server_context() if access is not None else None
        self.server = _Server((host, port), _handler(routes, access, self.page), context)
        self.scheme = "https" if context is not None else "http"
        self.thread = threading.Thread(target=self.server.serve_forever, name="ryu-nsm-status", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self.server.server_address[:2]

    @property
    def url(self) -> str:
        host, port = self.address
        return f"{self.scheme}://{host}:{port}"

    def start(self) -> StatusServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.page is not None:
            self.page.stop()
        self.server.shutdown()
        self.server.server_close()


def fetch_status(url: str, timeout: float = 5.0, what: str = "/status",
                 client: StatusClient | None = None) -> dict:
    """GET the controller's status JSON (``what``: ``/status``, ``/status/states``, ``/status/fabric``)
    as ``client``; StatusRefused when the endpoint refuses it, OSError when it cannot be reached."""
    client = client or StatusClient()
    request = urllib.request.Request(url.rstrip("/") + what, headers=client.headers())
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=client.context) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            raise StatusRefused(f"{error.code} {error.read().decode(errors='replace').strip()}") from error
        raise
    except urllib.error.URLError as error:
        if isinstance(error.reason, ssl.SSLError):
            raise StatusRefused(f"TLS handshake failed ({error.reason}): one side does not trust the "
                                f"other's certificate") from error
        raise
    except ssl.SSLError as error:  # TLS 1.3: the server judges our certificate after the handshake
        raise StatusRefused(f"the server refused this client's certificate ({error})") from error
