"""Binding NSM gRPC servers to unix sockets and TCP: shared by the forwarder and the controller."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Sequence

import grpc


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
