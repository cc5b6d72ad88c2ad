"""Run ``ryu-nsm controller`` as a child process and wait on its status: for the demo and the tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from ryu_nsm.observe.status_access import StatusClient
from ryu_nsm.observe.status_api import fetch_status


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> object:
    """Poll ``predicate`` until it returns something true or ``timeout`` passes (then return that)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


class ControllerProcess:
    """``ryu-nsm controller`` in a child process, its log in ``log_path``. With ``status_client``
    (its ``extra_args`` give the controller an identity), the status is read over HTTPS as that client;
    without one, a controller given ``--tls-cert/--tls-key/--tls-ca`` is read with that same identity
    (its status endpoint then speaks HTTPS and wants a client certificate from its bundle)."""

    def __init__(self, topology: str | Path, requests: Sequence[str | Path], log_path: str | Path,
                 of_port: int | None = None, extra_args: Sequence[str] = (), scheme: str = "tcp",
                 status_client: StatusClient | None = None):
        self.topology = str(topology)
        self.requests = [str(r) for r in requests]
        self.log_path = Path(log_path)
        self.of_port = of_port or free_port()
        self.status_port = free_port()
        self.extra_args = list(extra_args)
        self.scheme = scheme  # "ssl": OpenFlow over TLS (extra_args then name the identity)
        self._identity = None
        if status_client is None:
            status_client = self._own_identity_client()
        self.status_client = status_client
        self.proc: subprocess.Popen | None = None

    def _own_identity_client(self) -> StatusClient:
        flags = dict(zip(self.extra_args, self.extra_args[1:], strict=False))
        files = [flags.get(name) for name in ("--tls-cert", "--tls-key", "--tls-ca")]
        if not all(files):
            return StatusClient()
        from ryu_nsm.observe.status_access import status_client
        from ryu_nsm.trust.identity import FileIdentitySource

        self._identity = FileIdentitySource(*files)
        return status_client(self._identity)

    @property
    def url(self) -> str:
        scheme = "https" if self.status_client.context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.status_port}"

    def start(self, timeout: float = 30.0) -> ControllerProcess:
        cmd = [sys.executable, "-m", "ryu_nsm.cli", "controller", "--topology", self.topology,
               "--listen", f"{self.scheme}:127.0.0.1:{self.of_port}",
               "--status-listen", f"127.0.0.1:{self.status_port}",
               *self.extra_args]
        if self.requests:
            cmd += ["--requests", *self.requests]
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        log.close()
        if not wait_for(self._answers, timeout):
            self.stop()
            raise RuntimeError(f"controller did not come up in {timeout}s; log:\n{self.log()}")
        return self

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"controller exited with {self.proc.returncode}; log:\n{self.log()}")
        try:
            self.status()
            return True
        except OSError:
            return False

    def status(self) -> dict:
        return fetch_status(self.url, timeout=2.0, client=self.status_client)

    def states(self, ids: Iterable[str] = (), timeout: float = 2.0) -> dict[str, str]:
        """Each connection's state by id (the cheap ``/status/states``); of ``ids`` alone if given."""
        query = f"?{urllib.parse.urlencode([('id', cid) for cid in ids])}" if ids else ""
        return fetch_status(self.url, timeout=timeout, what=f"/status/states{query}",
                            client=self.status_client)["connections"]

    def connections(self) -> dict[str, dict]:
        return {c["id"]: c for c in self.status()["connections"]}

    def wait_connections(self, want: Callable[[dict[str, dict]], bool], timeout: float) -> dict:
        """Poll the status until ``want(connections by id)`` holds; raise with the status if not."""
        last: dict = {}

        def check():
            nonlocal last
            try:
                last = self.connections()
            except OSError:
                return False
            return want(last)

        if not wait_for(check, timeout, 0.2):
            raise AssertionError(f"connections did not reach the wanted state in {timeout}s: {last}")
        return last

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def errors(self) -> list[str]:
        """Log lines where a switch rejected something (OpenFlow errors are bugs)."""
        return [line for line in self.log().splitlines() if " rejected " in line]

    def stop(self, timeout: float = 10.0) -> None:
        if self._identity is not None:
            self._identity.close()
            self._identity = None
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ControllerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
