"""A user-space link impairment element: relays Ethernet frames between two interfaces, delayed or dropped.

The kernels this project runs on have tc htb/tbf/pfifo but no netem, so delay and loss on a fabric link
come from this element instead: a process inside a network namespace (a Mininet host is one) that
owns two interfaces, ``a`` and ``b``, and relays every frame between them in both directions through
AF_PACKET raw sockets. Each direction (``a2b``: received on ``a``, sent on ``b``; ``b2a`` the other
way) has its own impairment:

- ``delay_ms``: fixed one-way delay; ``jitter_ms``: each frame's delay is drawn uniformly from
  ``delay ± jitter`` (never below 0). With jitter 0 frames of one direction leave in arrival order.
- ``loss``: probability that a frame is dropped on arrival (one draw of the loss RNG per frame while
  ``loss > 0``; the RNGs are seeded, so a run with a seed is repeatable).
- ``rate_bps``: a rate cap (0 = none): frames (counted from the Ethernet header, without FCS) are
  serialised at that rate after their delay.
- ``limit``: at most this many frames (and 64 MiB) wait in the direction's queue; more are dropped
  (``overflow``). The queue holds the frames in flight (rate × delay) and, with a rate cap, the
  backlog: lower it with a rate cap (e.g. 100) unless a bloated buffer is what you want.

Run it as ``python -m ryu_nsm.lab.impairment --a IF1 --b IF2 --control PATH``; ``start_in_netns()`` does
that in a named netns or a Mininet host and returns an ``Impairment`` client. The control socket is a
unix stream socket speaking one JSON object per line, answered by one JSON line:

- ``{"delay_ms": 20, "loss": 0.1, "direction": "both"}`` changes only the given fields of the chosen
  direction(s) (``a2b``, ``b2a`` or ``both``, the default); ``"seed": N`` reseeds their RNGs. The
  answer is ``{"ok": true, "a2b": {settings}, "b2a": {settings}}``; ``{}`` just reads the settings.
- ``{"stats": true}`` answers the counters per direction: ``received``, ``relayed``, ``dropped``
  (by ``loss``), ``overflow`` (queue full), ``failed`` (could not be sent), ``queued`` (waiting now),
  ``relayed_bytes``, and ``missed``: frames the kernel dropped because the element fell behind (not
  received). ``received == relayed + dropped + overflow + failed + queued`` at every answer.
- Errors answer ``{"ok": false, "error": "..."}`` and change nothing.
- Every answer also carries ``"pid"``, the element's process id.

Offloads: a sender whose interface has TSO/GSO on hands the veth super-frames of up to 64 KiB, and
with tx checksum offload frames whose checksum is not filled in yet. The element reads and writes
with a virtio-net header (PACKET_VNET_HDR), so such frames are relayed intact, and at start it turns
``tso gso gro tx`` off on its own two interfaces, so the kernel segments and checksums in software
whatever the element sends: frames leave it MTU-sized and complete. A super-frame is still impaired
as one unit (one loss draw, one delay), so where per-packet semantics matter the senders' interfaces
need ``ethtool -K IF tso off gso off`` too (OVS on the userspace datapath sends MTU-sized frames).
VLAN tags, which the kernel moves out of the frame on receive, are put back from PACKET_AUXDATA.

Timing and capacity: a frame leaves at its release time or a little later (tens of microseconds on
an idle machine, more on a loaded one), never earlier. The process costs about 12 µs of CPU per
frame, half of it in the kernel. Measured on a busy 2-CPU machine: 35,000-60,000 frames/s in total,
180-480 Mbit/s of MTU-sized TCP, 1.4-2.6 Gbit/s with super-frames. Frames beyond that are lost in the
kernel and counted as ``missed``.

Lifecycle: the element stops on SIGTERM or SIGINT, when the process given as ``--watch-pid`` is gone
(``start_in_netns`` passes its own), or after ``--lifetime`` seconds; it removes its control socket.
Promiscuous mode is a membership of its sockets, so it ends with them even on SIGKILL. An interface
going down and up (a link cut) does not stop it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, Protocol

from ryu_nsm.lab.impairment_relay import (
    DIRECTIONS,
    RECV_BUFFER,
    Direction,
    ImpairmentError,
    Schedule,
    open_port,
    receive,
)

log = logging.getLogger(__name__)

_WATCH_INTERVAL_S = 1.0
_MAX_CLIENTS = 64  # select() handles descriptors below 1024 only


# ---- the element: the event loop and the control socket --------------------------------------------


class _Client:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""


class Element:
    """The relay process: two raw sockets, two directions, a control socket, one event loop."""

    def __init__(self, a: str, b: str, control: str, *, seed: int | None = None,
                 watch_pid: int | None = None, lifetime: float | None = None):
        if a == b:
            raise ImpairmentError(f"the element needs two different interfaces, got {a} twice")
        self.a, self.b, self.control = a, b, control
        self.watch_pid = watch_pid
        self.deadline = None if lifetime is None else time.monotonic() + lifetime
        self.ports = {a: open_port(a), b: open_port(b)}
        self.directions = {
            "a2b": Direction("a2b", self.ports[a], self.ports[b], Schedule("a2b", seed=seed)),
            "b2a": Direction("b2a", self.ports[b], self.ports[a], Schedule("b2a", seed=seed)),
        }
        self.inbound = {d.rx.fileno(): d for d in self.directions.values()}
        self.listener = _listen(control)
        self._control_inode = os.stat(control).st_ino  # so close() never removes a successor's socket
        self.clients: dict[int, _Client] = {}
        self.stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def handle(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Apply one control request and return its answer (the wire protocol in the module docstring)."""
        if not isinstance(request, Mapping):
            raise ImpairmentError("a request is a JSON object")
        if "stats" in request:
            if request != {"stats": True}:
                raise ImpairmentError('a stats request is exactly {"stats": true}')
            return {"ok": True, **self.stats()}
        changes = dict(request)
        direction = changes.pop("direction", "both")
        if direction not in (*DIRECTIONS, "both"):
            raise ImpairmentError(f"direction must be a2b, b2a or both, got {direction!r}")
        names = DIRECTIONS if direction == "both" else (direction,)
        reseed = "seed" in changes
        seed = changes.pop("seed", None)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ImpairmentError(f"seed must be an integer or null, got {seed!r}")
        # Validate for every direction first, so a bad request changes nothing.
        updated = {name: self.directions[name].schedule.settings.updated(changes) for name in names}
        for name, settings in updated.items():
            schedule = self.directions[name].schedule
            schedule.settings = settings
            if reseed:
                schedule.reseed(seed)
        return {"ok": True, **{name: asdict(d.schedule.settings) for name, d in self.directions.items()}}

    def stats(self) -> dict[str, dict[str, int]]:
        """The counters of both directions."""
        return {name: d.stats() for name, d in self.directions.items()}

    def stop(self) -> None:
        """Ask the event loop to end (safe from a signal handler)."""
        self.stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def run(self) -> None:
        """Relay frames and serve the control socket until stopped; ``close()`` releases the rest."""
        next_watch = time.monotonic() + _WATCH_INTERVAL_S
        next_due: float | None = None
        listener_fd, wake_fd = self.listener.fileno(), self._wake_r.fileno()
        fixed = [*self.inbound, listener_fd, wake_fd]
        buffer = bytearray(RECV_BUFFER)
        view = memoryview(buffer)
        while not self.stopping:
            now = time.monotonic()
            wake = next_watch if next_due is None else min(next_due, next_watch)
            if self.deadline is not None:
                wake = min(wake, self.deadline)
            # select, not epoll: its timeout has microsecond resolution, epoll's only milliseconds.
            readable, _, _ = select.select([*fixed, *self.clients], [], [], max(0.0, wake - now))
            for fd in readable:
                if fd in self.inbound:
                    receive(self.inbound[fd], buffer, view)
                elif fd == listener_fd:
                    self._accept()
                elif fd == wake_fd:
                    self._wake_r.recv(64)
                else:
                    self._serve(fd)
            now = time.monotonic()
            dues = [due for d in self.directions.values() if (due := d.release_due(now)) is not None]
            next_due = min(dues) if dues else None
            if now >= next_watch:
                next_watch = now + _WATCH_INTERVAL_S
                if self.watch_pid is not None and not _alive(self.watch_pid):
                    log.info("process %d is gone; stopping", self.watch_pid)
                    return
            if self.deadline is not None and now >= self.deadline:
                log.info("lifetime over; stopping")
                return

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if len(self.clients) >= _MAX_CLIENTS:
            sock.close()
            return
        sock.setblocking(False)
        self.clients[sock.fileno()] = _Client(sock)

    def _serve(self, fd: int) -> None:
        client = self.clients[fd]
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        client.buffer += data
        try:
            while b"\n" in client.buffer:
                line, client.buffer = client.buffer.split(b"\n", 1)
                if line.strip():
                    client.sock.sendall((json.dumps(self._answer(line)) + "\n").encode())
        except OSError:
            data = b""  # a client that does not take its answer is dropped
        if not data or len(client.buffer) > 65536:
            client.sock.close()
            del self.clients[fd]

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            return {**self.handle(json.loads(line)), "pid": os.getpid()}
        except (ImpairmentError, ValueError) as exc:
            return {"ok": False, "error": str(exc), "pid": os.getpid()}

    def close(self) -> None:
        """Close every socket and remove the control socket path."""
        for client in self.clients.values():
            client.sock.close()
        self.clients.clear()
        try:
            if os.stat(self.control).st_ino == self._control_inode:
                os.unlink(self.control)
        except FileNotFoundError:
            pass
        for sock in (self.listener, *self.ports.values(), self._wake_r, self._wake_w):
            sock.close()


def _listen(path: str) -> socket.socket:
    """A listening unix socket at ``path``; a stale socket file is replaced, a live one is an error."""
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)
        else:
            raise ImpairmentError(f"another process answers on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(16)
    sock.setblocking(False)
    return sock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare_interface(ifname: str) -> None:
    """Bring ``ifname`` up with segmentation, receive coalescing and checksum offloads off.

    With these off the kernel segments and checksums in software what the element sends, so frames
    leave it MTU-sized and complete whatever the sender's offloads were.
    """
    subprocess.run(["ip", "link", "set", "dev", ifname, "up"], check=True, capture_output=True, timeout=10)
    done = subprocess.run(["ethtool", "-K", ifname, "tso", "off", "gso", "off", "gro", "off", "tx", "off"],
                          capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise ImpairmentError(f"ethtool -K {ifname} failed: {done.stderr.strip()}")


def main(argv: list[str] | None = None) -> int:
    """Command line entry: run the element until SIGTERM/SIGINT, the watched process ends, or lifetime."""
    parser = argparse.ArgumentParser(prog="python -m ryu_nsm.lab.impairment",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--a", required=True, help="first interface")
    parser.add_argument("--b", required=True, help="second interface")
    parser.add_argument("--control", required=True, help="path of the unix control socket")
    parser.add_argument("--seed", type=int, help="seed of the loss and jitter RNGs")
    parser.add_argument("--watch-pid", type=int, help="stop when this process is gone")
    parser.add_argument("--lifetime", type=float, help="stop after this many seconds")
    parser.add_argument("--keep-offloads", action="store_true",
                        help="leave the interfaces' offload settings alone (they must still be up)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="impairment %(levelname)s %(message)s")
    try:
        if not args.keep_offloads:
            for ifname in (args.a, args.b):
                prepare_interface(ifname)
        element = Element(args.a, args.b, args.control, seed=args.seed, watch_pid=args.watch_pid,
                          lifetime=args.lifetime)
    except (OSError, ImpairmentError, subprocess.SubprocessError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: element.stop())
    log.info("relaying %s <-> %s, control %s", args.a, args.b, args.control)
    try:
        element.run()
        log.info("stopped: %s", json.dumps(element.stats()))
    finally:
        element.close()
    return 0


# ---- the client ------------------------------------------------------------------------------------


class MininetHost(Protocol):
    """What ``start_in_netns`` needs of a Mininet host."""

    def popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen[Any]: ...


class Impairment:
    """Client of a running element's control socket, and owner of its process when it started it."""

    def __init__(self, control_path: str, process: subprocess.Popen[Any] | None = None,
                 timeout: float = 5.0):
        self.control_path = control_path
        self.process = process
        self.timeout = timeout
        self.log = ""  # what the element wrote to stderr, once stop() has collected it
        self._collected = False

    def request(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """Send one request and return the whole answer; raise ImpairmentError when it is refused."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.control_path)
                sock.sendall((json.dumps(dict(message)) + "\n").encode())
                answer = b""
                while not answer.endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ImpairmentError(f"{self.control_path} closed without an answer")
                    answer += chunk
            except OSError as exc:
                raise ImpairmentError(f"cannot reach {self.control_path}: {exc}") from exc
        reply = json.loads(answer)
        if not reply.get("ok"):
            raise ImpairmentError(reply.get("error", "refused"))
        return reply

    def set(self, *, delay_ms: float | None = None, jitter_ms: float | None = None,
            loss: float | None = None, rate_bps: float | None = None, limit: int | None = None,
            seed: int | None = None, direction: str = "both") -> dict[str, dict[str, Any]]:
        """Change the given settings of ``direction`` (a2b, b2a, both); None leaves a setting as it is.

        ``seed`` restarts the direction's loss and jitter RNGs. Returns the settings of both directions.
        """
        given = {"delay_ms": delay_ms, "jitter_ms": jitter_ms, "loss": loss, "rate_bps": rate_bps,
                 "limit": limit, "seed": seed}
        reply = self.request({"direction": direction, **{k: v for k, v in given.items() if v is not None}})
        return {name: reply[name] for name in DIRECTIONS}

    def settings(self) -> dict[str, dict[str, Any]]:
        """The current settings of both directions."""
        reply = self.request({})
        return {name: reply[name] for name in DIRECTIONS}

    def stats(self) -> dict[str, dict[str, int]]:
        """The counters of both directions (see the module docstring)."""
        reply = self.request({"stats": True})
        return {name: reply[name] for name in DIRECTIONS}

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM the element this client started, wait for it (SIGKILL after ``timeout``), return its
        exit status and keep its stderr in ``log``. Safe to call more than once."""
        process = self.process
        if process is None:
            return None
        if not self._collected:
            if process.poll() is None:
                process.terminate()
            try:
                _out, err = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                _out, err = process.communicate()
            self.log = err or ""
            self._collected = True
        return process.returncode

    def __enter__(self) -> Impairment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_netns(where: str | MininetHost, a: str, b: str, control_path: str, *,
                   seed: int | None = None, lifetime: float | None = None, keep_offloads: bool = False,
                   timeout: float = 10.0) -> Impairment:
    """Start the element in a named netns (``ip netns exec``) or a Mininet host and wait until it answers.

    The element turns offloads off on ``a`` and ``b`` (unless ``keep_offloads``) and stops by itself
    when this process ends or after ``lifetime`` seconds. Raises ImpairmentError, with the element's
    stderr, when it exits or does not answer within ``timeout`` seconds.
    """
    command = [sys.executable, "-m", "ryu_nsm.lab.impairment", "--a", a, "--b", b, "--control", control_path,
               "--watch-pid", str(os.getpid())]
    if seed is not None:
        command += ["--seed", str(seed)]
    if lifetime is not None:
        command += ["--lifetime", str(lifetime)]
    if keep_offloads:
        command.append("--keep-offloads")
    # Only a few lines ever go to stderr (start, errors, final counters), so the pipe cannot fill.
    if isinstance(where, str):
        process = subprocess.Popen(["ip", "netns", "exec", where, *command], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True)
    else:
        process = where.popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client = Impairment(control_path, process)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            client.stop()
            raise ImpairmentError(f"impairment element exited ({process.returncode}): {client.log.strip()}")
        try:
            # Another element may answer on the path while ours is still failing to take it.
            if client.request({})["pid"] == process.pid:
                return client
        except ImpairmentError:
            pass
        if time.monotonic() > deadline:
            client.stop()
            raise ImpairmentError(f"impairment element not answering on {control_path} after {timeout}s: "
                                  f"{client.log.strip()}")
        time.sleep(0.02)


if __name__ == "__main__":
    sys.exit(main())
