"""Start os-ken applications from code, and stop them again (os-ken 4.x has no osken-manager).

How os-ken 4.2.2 starts apps, and what this module does about it:

* Configuration is one process-wide oslo ``ConfigOpts`` (``os_ken.cfg.CONF``). App modules register
  command-line options when imported, which oslo refuses once arguments are parsed, so
  ``run_apps`` clears CONF, loads (imports) the apps, then parses ``CONF(args, project='os_ken')``.
  ``stop`` clears it again: CONF can be set up any number of times in one process.
* ``AppManager`` (a singleton) loads apps and the apps they depend on (``ofp_handler`` for any app
  that handles OpenFlow events), creates contexts, instantiates them and starts their threads.
  Running apps are registered process-wide (``SERVICE_BRICKS``), so one set of apps runs per
  process at a time; after ``stop`` another may start.
* With the default native hub, threads cannot be killed (``hub.kill`` does nothing). os-ken's
  listener blocks in ``accept()`` for ever, and a connection whose switch went away leaves its
  send thread waiting on its queue, so the connection thread never ends and the switch's
  DEAD_DISPATCHER event never comes. So ``run_apps`` swaps os-ken's OpenFlow handler for a
  subclass whose listener is bound before ``run_apps`` returns (port 0 picks a free port, read it
  back as ``handle.port``), can be closed, tracks its connections, and wakes a connection's send
  thread when its socket closes. It only listens (no switch addresses), on plain TCP or, given a
  ``SwitchTls``, on TLS with ryu-nsm's own handshake and switch check (``switch_tls``), not os-ken's.
* The threads are not daemons: a process that started apps must call ``stop()`` (or use the
  handle as a context manager), or it will not exit.
"""

from __future__ import annotations

import contextlib
import inspect
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType

import os_ken.base.app_manager as app_manager  # before os_ken.controller: they import each other
from os_ken import cfg
from os_ken.controller import controller as of_controller
from os_ken.controller import ofp_event, ofp_handler
from os_ken.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.lib import hub
from os_ken.ofproto import ofproto_protocol, ofproto_v1_3

from ryu_nsm.openflow import switch_tls
from ryu_nsm.openflow.switch_tls import SwitchTls

AppSpec = str | ModuleType | type[app_manager.OSKenApp]

_OFP_HANDLER_MODULE = "os_ken.controller.ofp_handler"
_run_lock = threading.Lock()  # one set of os-ken apps per process at a time


class _Datapath(of_controller.Datapath):
    """os-ken's Datapath whose send thread is woken when the receive side ends."""

    def _recv_loop(self) -> None:
        try:
            super()._recv_loop()
        finally:
            # The send thread waits on its queue for ever otherwise (hub.kill cannot stop a thread).
            self.send(b"", close_socket=True)


class _Controller(of_controller.OpenFlowController):
    """os-ken's OpenFlow listener, bound at construction, closable, with its connections tracked;
    with ``tls``, each connection's handshake is done (with a deadline) before os-ken sees it."""

    def __init__(self, tls: SwitchTls | None = None) -> None:
        # Not calling super().__init__: without a configured port it also listens on 6633.
        self.tls = tls
        self._lock = threading.Lock()
        self._closing = False
        self._connections: dict[socket.socket, threading.Thread] = {}
        self.listener = hub.listen((cfg.CONF.ofp_listen_host, cfg.CONF.ofp_tcp_listen_port or 0))
        self.ofp_tcp_listen_port = self.listener.getsockname()[1]
        self.ofp_ssl_listen_port = None

    def server_loop(self, ofp_tcp_listen_port: int, ofp_ssl_listen_port: int | None) -> None:
        """Accept switches until ``close``."""
        while True:
            try:
                sock, addr = self.listener.accept()
            except OSError:
                if self._closing:
                    return
                raise
            with self._lock:  # _serve's removal waits for this insertion
                if self._closing:
                    sock.close()
                    return
                self._connections[sock] = hub.spawn(self._serve, sock, addr)

    def _serve(self, sock: socket.socket, addr: tuple) -> None:
        try:
            if self.tls is None:
                with contextlib.closing(_Datapath(sock, addr)) as datapath:
                    datapath.serve()
                return
            accepted = switch_tls.accept(sock, addr, self.tls)
            if accepted is None:
                return
            conn, cert = accepted
            with contextlib.closing(_Datapath(conn, addr)) as datapath:
                if self.tls.check is not None:
                    datapath.ofp_brick = switch_tls.GatedBrick(datapath.ofp_brick, datapath, cert,
                                                               self.tls.check)
                datapath.serve()
        finally:
            with self._lock:
                self._connections.pop(sock, None)
            if self.tls is not None:
                sock.close()  # the TLS connection runs on a duplicate; this one only shuts it down

    def close(self, deadline: float) -> list[threading.Thread]:
        """Stop listening, close every connection, wait for their threads until ``deadline``.

        Returns the connection threads still alive then.
        """
        with self._lock:
            self._closing = True
            connections = dict(self._connections)
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept() in server_loop
        self.listener.close()
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # ends the connection's receive loop, and so the rest
        for thread in connections.values():
            thread.join(max(0.0, deadline - time.monotonic()))
        return [thread for thread in connections.values() if thread.is_alive()]


class _OFPHandler(ofp_handler.OFPHandler):
    """os-ken's OpenFlow handshake app, running a ``_Controller``."""

    tls: SwitchTls | None = None  # set by run_apps before os-ken instantiates the app

    def start(self) -> threading.Thread:
        app_manager.OSKenApp.start(self)  # skips OFPHandler.start, which builds os-ken's controller
        self.controller = _Controller(self.tls)
        return hub.spawn(self.controller)


class _AppManager(app_manager.AppManager):
    """AppManager that takes app classes as well as module names, and runs ``_OFPHandler``."""

    def __init__(self, classes: dict[str, type[app_manager.OSKenApp]]) -> None:
        super().__init__()
        self._classes = {_OFP_HANDLER_MODULE: _OFPHandler, **classes}

    def load_app(self, name: str) -> type[app_manager.OSKenApp] | None:
        """The class registered under ``name``, else os-ken's lookup by module name; None once loaded."""
        if name in self.applications_cls:
            return None  # a class outside the module it serves names that module as a dependency again
        return self._classes.get(name) or super().load_app(name)

    def instantiate_apps(self, *args: object, **kwargs: object) -> list:
        """As os-ken's, with the OpenFlow handler first, so switches find a listener while the other
        apps start: ryu-nsm's reads its sources then, and a switch that finds no listener backs off
        (1, 2, 4, 8 s in OVS 3.1), so a restart at size got its switches back spread over seconds."""
        handler = self.applications_cls.pop(_OFP_HANDLER_MODULE, None)
        if handler is not None:
            self.applications_cls = {_OFP_HANDLER_MODULE: handler, **self.applications_cls}
        return super().instantiate_apps(*args, **kwargs)


class OsKenRun:
    """Handle on apps started by ``run_apps``: where they listen, the app instances, ``stop``."""

    def __init__(self, manager: _AppManager, handler: _OFPHandler, threads: list[threading.Thread],
                 saved_versions: set[int]) -> None:
        self._manager = manager
        self._handler = handler
        self._threads = threads
        self._saved_versions = saved_versions
        self._stopped = False
        self.host: str = cfg.CONF.ofp_listen_host
        self.port: int = handler.controller.ofp_tcp_listen_port
        self.scheme: str = "tcp" if handler.tls is None else "ssl"  # as Open vSwitch names targets

    def app(self, cls: type[app_manager.OSKenApp]) -> app_manager.OSKenApp:
        """The running instance of app class ``cls``."""
        for app in self._manager.applications.values():
            if type(app) is cls:
                return app
        raise KeyError(f"{cls.__name__} is not running")

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listener and every switch connection, stop the apps, and clear CONF.

        Raises TimeoutError if a thread of os-ken is still alive after ``timeout`` seconds.
        """
        if self._stopped:
            return
        self._stopped = True
        deadline = time.monotonic() + timeout
        try:
            stuck = self._handler.controller.close(deadline)
            self._manager.close()
            for thread in self._threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            alive = [t.name for t in [*stuck, *self._threads] if t.is_alive()]
            if alive:
                raise TimeoutError(f"os-ken threads still running after {timeout}s: {alive}")
        finally:
            app_manager.AppManager._instance = None
            ofproto_protocol._supported_versions = self._saved_versions
            cfg.CONF.clear()
            _run_lock.release()

    def __enter__(self) -> OsKenRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _app_name(app: AppSpec, classes: dict[str, type[app_manager.OSKenApp]]) -> str:
    if isinstance(app, str):
        return app
    if isinstance(app, ModuleType):
        return app.__name__
    if inspect.isclass(app) and issubclass(app, app_manager.OSKenApp):
        name = f"{app.__module__}:{app.__qualname__}"
        classes[name] = app
        return name
    raise TypeError(f"not an os-ken app, module or module name: {app!r}")


def run_apps(
    apps: Iterable[AppSpec],
    ofp_listen_host: str = "127.0.0.1",
    ofp_tcp_listen_port: int = 0,
    extra_args: Sequence[str] = (),
    tls: SwitchTls | None = None,
) -> OsKenRun:
    """Load and start os-ken apps in background threads; the OpenFlow listener is up on return.

    ``apps``: OSKenApp classes, modules or module names (os-ken takes a module's first OSKenApp).
    ``ofp_tcp_listen_port`` 0 binds a free port (see ``OsKenRun.port``). ``extra_args`` are more
    os-ken command-line options, e.g. ``["--echo-request-interval", "2"]``. With ``tls`` the
    listener speaks OpenFlow over TLS only (switches with ``ssl:`` targets).
    Raises RuntimeError if apps started by an earlier call are still running.
    """
    if not _run_lock.acquire(blocking=False):
        raise RuntimeError("os-ken apps are already running in this process: stop them first")
    saved_versions = set(ofproto_protocol._supported_versions)
    try:
        classes: dict[str, type[app_manager.OSKenApp]] = {}
        names = [_app_name(app, classes) for app in apps]
        cfg.CONF.clear()
        _OFPHandler.tls = tls
        manager = _AppManager(classes)
        app_manager.AppManager._instance = manager
        manager.load_apps(names)
        args = ["--ofp-listen-host", ofp_listen_host, "--ofp-tcp-listen-port", str(ofp_tcp_listen_port)]
        cfg.CONF([*args, *extra_args], project="os_ken")
        if cfg.CONF.ofp_switch_address_list or cfg.CONF.ctl_privkey:
            raise ValueError("oskenrun only listens: no switch addresses, and TLS through tls=, not os-ken's")
        contexts = manager.create_contexts()
        threads = manager.instantiate_apps(**contexts)
        handler = app_manager.lookup_service_brick(ofp_event.NAME)
        if not isinstance(handler, _OFPHandler):
            manager.close()
            raise RuntimeError("no app handles OpenFlow events, so nothing listens for switches")
    except BaseException:
        app_manager.AppManager._instance = None
        ofproto_protocol._supported_versions = saved_versions
        cfg.CONF.clear()
        _run_lock.release()
        raise
    return OsKenRun(manager, handler, threads, saved_versions)


class ProbeApp(app_manager.OSKenApp):
    """A minimal OpenFlow 1.3 app for tests, benchmarks and tools.

    Remembers the switches that completed the handshake, and every reply by xid — barrier
    replies, (multipart) flow stats, bundle control replies, errors — so code outside os-ken's
    threads can send raw bytes with ``Datapath.send`` and wait for the answer with a deadline.
    """

    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._cond = threading.Condition()
        self.datapaths: dict[int, of_controller.Datapath] = {}
        self._replies: dict[int, list] = {}
        self._partial: dict[int, list] = {}
        self.errors: list = []

    def _wait(self, ready: Callable[[], object], timeout: float, what: str) -> object:
        with self._cond:
            if not self._cond.wait_for(ready, timeout):
                raise TimeoutError(f"no {what} within {timeout}s")
            return ready()

    def wait_datapath(self, dpid: int | None = None, timeout: float = 10.0) -> of_controller.Datapath:
        """The connected switch ``dpid`` (or any one), once its handshake is done."""
        def ready() -> of_controller.Datapath | None:
            if dpid is None:
                return next(iter(self.datapaths.values()), None)
            return self.datapaths.get(dpid)
        return self._wait(ready, timeout, f"switch {dpid if dpid is not None else ''} connected")

    def wait_gone(self, dpid: int, timeout: float = 10.0) -> None:
        """Return once switch ``dpid`` has disconnected."""
        self._wait(lambda: dpid not in self.datapaths, timeout, f"disconnect of switch {dpid:#x}")

    def wait_reply(self, xid: int, timeout: float = 10.0) -> list:
        """The reply messages with ``xid`` (several for a multipart reply), removed from the record.

        An error with that xid counts as a reply: the caller tells them apart by type.
        """
        replies = self._wait(lambda: self._replies.get(xid), timeout, f"reply to xid {xid:#x}")
        with self._cond:
            del self._replies[xid]
        return replies

    def errors_for(self, xids: Iterable[int]) -> list:
        """The errors received so far whose xid is in ``xids``."""
        wanted = set(xids)
        with self._cond:
            return [e for e in self.errors if e.xid in wanted]

    def _record(self, msg: object, more: bool = False) -> None:
        with self._cond:
            parts = self._partial.setdefault(msg.xid, [])
            parts.append(msg)
            if not more:
                self._replies.setdefault(msg.xid, []).extend(self._partial.pop(msg.xid))
                self._cond.notify_all()

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change(self, ev: ofp_event.EventOFPStateChange) -> None:
        datapath = ev.datapath
        with self._cond:
            if ev.state == MAIN_DISPATCHER:
                self.datapaths[datapath.id] = datapath
            elif datapath.id is not None and self.datapaths.get(datapath.id) is datapath:
                del self.datapaths[datapath.id]
            self._cond.notify_all()

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def _barrier_reply(self, ev: ofp_event.EventOFPMsgBase) -> None:
        self._record(ev.msg)

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    def _flow_stats_reply(self, ev: ofp_event.EventOFPMsgBase) -> None:
        self._record(ev.msg, more=bool(ev.msg.flags & ofproto_v1_3.OFPMPF_REPLY_MORE))

    @set_ev_cls(ofp_event.EventONFBundleCtrlMsg, MAIN_DISPATCHER)
    def _bundle_reply(self, ev: ofp_event.EventOFPMsgBase) -> None:
        self._record(ev.msg)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _error(self, ev: ofp_event.EventOFPMsgBase) -> None:
        msg = ev.msg
        self.logger.warning("switch %s: error xid=%#x type=%#x code=%s exp_type=%s", msg.datapath.id, msg.xid,
                            msg.type, msg.code, getattr(msg, "exp_type", None))
        with self._cond:
            self.errors.append(msg)
        self._record(msg)


def send_bytes(datapath: of_controller.Datapath, data: bytes, chunk: int = 1 << 18) -> None:
    """Queue ``data`` (any number of whole OpenFlow messages) on os-ken's connection to a switch.

    Sent in slices: os-ken's socket timeout bounds each ``sendall``, and one slice of a few hundred
    kilobytes always goes out well within it. Raises ConnectionError if the connection is closing.
    """
    view = memoryview(data)
    for start in range(0, len(data), chunk):
        if not datapath.send(bytes(view[start:start + chunk])):
            raise ConnectionError(f"connection to switch {datapath.id} is closing")
