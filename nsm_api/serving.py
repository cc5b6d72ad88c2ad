"""Binding NSM gRPC servers to unix sockets and TCP: shared by the forwarder and the controller."""

from __future__ import annotations

import logging
import os
import socket
import stat
from collections.abc import Iterable, Sequence
from concurrent import futures

import grpc

from . import connection_pb2_grpc, networkservice_pb2_grpc

log = logging.getLogger(__name__)


def unix_path(address: str) -> str | None:
    """The socket path of a `unix:` address (unix:///abs, unix:/abs or unix:rel), else None."""
    if not address.startswith("unix:"):
        return None
    rest = address[len("unix:"):]
    return "/" + rest.lstrip("/") if rest.startswith("//") else rest


def clear_stale_socket(path: str) -> None:
    """Remove a socket file nobody listens on; refuse to take one that is in use."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return
    except FileNotFoundError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(f"{path} is in use by another process")


def bind(server: grpc.Server, listen: Sequence[str]) -> tuple[list[str], list[str]]:
    """Add every address to ``server`` (not yet started): (addresses as bound, unix socket paths).

    A TCP port 0 is reported as the port actually bound. An address that cannot be bound stops
    the server and raises OSError naming it.
    """
    listening, sockets = [], []
    for address in listen:
        path = unix_path(address)
        if path is not None:
            clear_stale_socket(path)
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:
            server.stop(None)
            raise OSError(f"cannot listen on {address}: {exc}") from exc
        if path is None and port == 0:
            server.stop(None)
            raise OSError(f"cannot listen on {address}")
        if path is not None:
            sockets.append(path)
        listening.append(address if path is not None else f"{address.rsplit(':', 1)[0]}:{port}")
    return listening, sockets


def serve_nsm(servicer: object, listen: Sequence[str], max_workers: int, thread_name_prefix: str
              ) -> tuple[grpc.Server, list[str], list[str]]:
    """A started server offering ``servicer`` as NSM's NetworkService and MonitorConnection on every
    address: (server, addresses as bound, unix socket paths). Every open MonitorConnections stream
    holds a worker thread, so ``max_workers`` should be generous."""
    pool = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
    server = grpc.server(pool)
    networkservice_pb2_grpc.add_NetworkServiceServicer_to_server(servicer, server)
    connection_pb2_grpc.add_MonitorConnectionServicer_to_server(servicer, server)
    listening, sockets = bind(server, listen)
    server.start()
    return server, listening, sockets


def remove_sockets(paths: Iterable[str]) -> None:
    """Remove the socket files of a stopped server; one another process has taken is left, and said."""
    for path in paths:
        try:
            clear_stale_socket(path)
        except OSError as exc:
            log.warning("leaving socket %s: %s", path, exc)
