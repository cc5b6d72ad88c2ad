"""The live page on the status endpoint: ``/ui`` (static HTML, CSS and JS from ``observe/ui``),
``/ui/scene`` (the scene as JSON, see ``live_scene``) and ``/ui/events`` (server-sent events: the
scene whenever it changes, checked every second, and the flow events the query string's filters
select, the same filters as ``ryu-nsm observe``).

Each page is one HTTP thread reading the status and one flow store follower, whose bounded queue
means a slow page loses flow rows, never holds up the core or the producer.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from ryu_nsm.observe.flow_client import flow_request
from ryu_nsm.observe.flow_events import FlowEvent
from ryu_nsm.observe.flow_output import endpoint, verdict, when
from ryu_nsm.observe.flow_store import FlowQuery, FlowStore
from ryu_nsm.observe.hubble_flows import read_query, to_flow
from ryu_nsm.observe.live_scene import layout, scene

SCENE_EVERY = 1.0  # seconds between looks at the status for a changed scene
HISTORY = 50  # flow rows a page starts with
_FILES = {"": ("index.html", "text/html; charset=utf-8"), "live.js": ("live.js", "text/javascript"),
          "live.css": ("live.css", "text/css")}
_FILTERS = {"pod": "pods", "service": "services", "port": "ports", "verdict": "verdicts",
            "protocol": "protocols"}


def flow_row(event: FlowEvent) -> dict:
    """A row of the page's flow table: the cells ``observe -o table`` prints, and the wire."""
    flow = to_flow(event)
    return {"time": when(flow), "node": event.node, "source": endpoint(flow, True),
            "destination": endpoint(flow, False), "verdict": verdict(flow),
            "protocol": event.protocol, "summary": flow.Summary,
            "connection": event.wire.connection_id if event.wire else None}


def page_query(query_string: str) -> FlowQuery:
    """The FlowQuery of ``/ui/events?pod=…&service=…&verdict=…&protocol=…&port=…&label=…`` (each
    repeatable, all but ``label`` comma-separated too: a label selector has commas of its own),
    built as ``observe`` builds its flags'; ValueError if bad."""
    fields = parse_qs(query_string)
    filters = {flag: [v for value in fields.get(name, []) for v in value.split(",") if v.strip()]
               for name, flag in _FILTERS.items()}
    filters["labels"] = [value for value in fields.get("label", []) if value.strip()]
    request = flow_request(follow=True, last=HISTORY, first=None, since=None, until=None,
                           now=time.time(), **filters)
    return read_query(request)


class LivePage:
    """Serves the page for ``status()`` (``/status``'s JSON), ``fabric``
    (``picture.fabric_description``) and the flow ``store``."""

    def __init__(self, status: Callable[[], dict], fabric: dict, store: FlowStore) -> None:
        self.status = status
        self.fabric = fabric
        self.store = store
        self.positions = layout(fabric["switches"], [(link["a"], link["b"]) for link in fabric["links"]])
        self._stopping = threading.Event()

    def serves(self, path: str) -> bool:
        route = urlsplit(path).path
        return route == "/ui" or route.startswith("/ui/")

    def scene(self) -> dict:
        return scene(self.fabric, self.positions, self.status(), self.store.history(FlowQuery()))

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        """Answer a GET ``serves`` accepted."""
        url = urlsplit(handler.path)
        route = url.path.removeprefix("/ui").strip("/")
        if route == "scene":
            self._reply(handler, 200, json.dumps(self.scene()).encode(), "application/json")
        elif route == "events":
            try:
                query = page_query(url.query)
            except ValueError as exc:
                self._reply(handler, 400, f"{exc}\n".encode(), "text/plain")
                return
            self._stream(handler, query)
        elif route in _FILES:
            name, kind = _FILES[route]
            body = resources.files("ryu_nsm.observe").joinpath("ui", name).read_bytes()
            self._reply(handler, 200, body, kind)
        else:
            self._reply(handler, 404, b"not found\n", "text/plain")

    def stop(self) -> None:
        """End every open event stream at its next look."""
        self._stopping.set()

    def _stream(self, handler: BaseHTTPRequestHandler, query: FlowQuery) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-cache")
        handler.end_headers()
        history, follower = self.store.follow(query)
        ongoing = dataclasses.replace(query, number=0)
        shown, looked = None, 0.0
        try:
            _send(handler, "flows", {"rows": [flow_row(e) for e in history], "lost": 0})
            while not self._stopping.is_set():
                if time.monotonic() - looked >= SCENE_EVERY:
                    looked = time.monotonic()
                    current = self.scene()
                    if current != shown:
                        _send(handler, "scene", current)
                        shown = current
                    else:
                        handler.wfile.write(b": still here\n\n")  # finds a page that has gone
                        handler.wfile.flush()
                events, lost = follower.take(max(0.0, SCENE_EVERY - (time.monotonic() - looked)))
                rows = [flow_row(e) for e in events if ongoing.matches(e)]
                if rows or lost:
                    _send(handler, "flows", {"rows": rows, "lost": lost})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page was closed
        finally:
            follower.close()

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, code: int, body: bytes, kind: str) -> None:
        handler.send_response(code)
        handler.send_header("Content-Type", kind)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


def _send(handler: BaseHTTPRequestHandler, event: str, data: dict) -> None:
    handler.wfile.write(f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode())
    handler.wfile.flush()
