"""Network namespaces and netlink sockets in them, through pyroute2.

Sockets inside another namespace are opened by a short-lived thread that enters the namespace with
setns(2) (network namespaces are per thread), so nothing forks; they are closed after each call, as
an open socket would keep a deleted namespace alive. Sockets in the forwarder's own namespace are
pooled. Sockets ask the kernel for strict checking, so a dump can be filtered by interface.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ovs_forwarder.kernel_request import NETNS_RUN_DIR, PlumbingError, parse_netns

_CLONE_NEWNET = 0x40000000
_NS_GET_NSTYPE = 0xB703  # ioctl on a namespace file: which kind of namespace it is
_ROOT_POOL_SIZE = 16  # idle netlink sockets kept for reuse; more are closed after use

_libc = ctypes.CDLL(None, use_errno=True)
_root_pool: list[IPRoute] = []
_root_pool_lock = threading.Lock()


def netns_path(netns: str) -> str:
    """The file that names the network namespace `netns` (see KernelRequest for the accepted forms)."""
    where = parse_netns(netns)
    return where if isinstance(where, str) else _path_of_inode(netns, where)


def _path_of_inode(url: str, wanted: tuple[int, int]) -> str:
    """Find a file for the namespace with (device, inode) `wanted`: a named netns or a process's ns/net."""
    named = [os.path.join(NETNS_RUN_DIR, n) for n in _listdir(NETNS_RUN_DIR)]
    procs = [f"/proc/{p}/ns/net" for p in _listdir("/proc") if p.isdigit()]
    for path in named + procs:
        try:
            st = os.stat(path)
        except OSError:
            continue  # the process ended or the name went away while we looked
        if (st.st_dev, st.st_ino) == wanted:
            return path
    raise PlumbingError("not-found", f"no network namespace has inode {url}")


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


@contextmanager
def open_netns(netns: str) -> Iterator[int]:
    """Open the namespace `netns` and yield its fd; PlumbingError if it is missing or not a netns."""
    path = netns_path(netns)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError, ProcessLookupError):
        raise PlumbingError("not-found", f"network namespace {netns} does not exist ({path})") from None
    except OSError as exc:
        raise PlumbingError("internal", f"cannot open network namespace {netns} ({path}): {exc}") from None
    try:
        try:
            kind = fcntl.ioctl(fd, _NS_GET_NSTYPE)
        except OSError:
            kind = None
        if kind != _CLONE_NEWNET:
            raise PlumbingError("invalid", f"{netns} ({path}) is not a network namespace")
        yield fd
    finally:
        os.close(fd)


@contextmanager
def inside_netns(nsfd: int) -> Iterator[tuple[IPRoute, socket.socket]]:
    """A netlink socket (strict checking) and an ioctl socket that live in the namespace `nsfd`."""
    made: list[socket.socket] = []
    failed: list[OSError] = []

    def enter() -> None:
        # This thread alone moves into the namespace; the sockets stay there after it exits.
        if _libc.setns(nsfd, _CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            failed.append(OSError(code, f"setns: {os.strerror(code)}"))
            return
        try:
            made.append(socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE))
            made.append(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        except OSError as exc:
            failed.append(exc)

    thread = threading.Thread(target=enter, name="netns-enter")
    thread.start()
    thread.join()
    if failed:
        for sock in made:
            sock.close()
        raise PlumbingError("internal", f"cannot enter network namespace: {failed[0]}")
    netlink, ioctl_sock = made
    try:
        ipr = IPRoute(fileno=netlink.fileno(), groups=0, strict_check=True)
    except BaseException:
        netlink.close()
        ioctl_sock.close()
        raise
    netlink.detach()  # the IPRoute owns the descriptor now
    try:
        yield ipr, ioctl_sock
    finally:
        ipr.close()
        ioctl_sock.close()


@contextmanager
def root_ipr() -> Iterator[IPRoute]:
    """A netlink socket (strict checking) in the forwarder's own namespace, from a pool: opening one
    costs more than most requests on it."""
    with _root_pool_lock:
        ipr = _root_pool.pop() if _root_pool else None
    if ipr is None:
        ipr = IPRoute(groups=0, strict_check=True)
    reusable = False
    try:
        yield ipr
        reusable = True
    except Exception:
        reusable = True  # a refused request leaves the socket in order; an interrupt may not
        raise
    finally:
        with _root_pool_lock:
            if reusable and len(_root_pool) < _ROOT_POOL_SIZE:
                _root_pool.append(ipr)
                ipr = None
        if ipr is not None:
            ipr.close()


def find_link(ipr: IPRoute, ifname: str) -> Any:
    """The link named `ifname`, or None (a kernel lookup by name, not a dump of every link)."""
    try:
        links = ipr.link("get", ifname=ifname)
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise
    return links[0] if links else None
