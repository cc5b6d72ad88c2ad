"""`ovs-forwarder`: run the NSM forwarder of this node on one OVS bridge.

    ovs-forwarder --bridge br-nsm [--listen unix:///run/ovs-forwarder.sock] [--listen 127.0.0.1:5002]
                  [--name NAME] [--token-lifetime S] [--grace S] [--ovsdb unix:/var/run/openvswitch/db.sock]
                  [--spiffe-socket ADDRESS | --tls-cert F --tls-key F --tls-ca F]

With an identity (docs/security.md) it serves over mTLS, signs its path tokens and authorizes every
Request and Close; without one it serves plain gRPC and says so at start.

SIGTERM and SIGINT stop the server without unplumbing: connections survive a forwarder restart,
and the next start rebuilds them from OVSDB.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
from collections.abc import Sequence

from ovs_forwarder.ovsdb import DEFAULT_REMOTE, Ovsdb, OvsdbError
from ovs_forwarder.server import Forwarder
from ryu_nsm.observe.logs import configure
from ryu_nsm.trust.options import add_identity_arguments, identity_source

DEFAULT_LISTEN = "unix:///run/ovs-forwarder.sock"

log = logging.getLogger("ovs_forwarder")


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a non-negative number of seconds")
    return value


def parser() -> argparse.ArgumentParser:
    """The command line of ovs-forwarder."""
    p = argparse.ArgumentParser(prog="ovs-forwarder", description="NSM KERNEL forwarder on an OVS bridge")
    p.add_argument("--bridge", required=True, help="the OVS bridge that client interfaces join")
    p.add_argument("--listen", action="append", metavar="ADDRESS",
                   help=f"unix:///path or host:port; repeatable (default {DEFAULT_LISTEN})")
    p.add_argument("--name", default=socket.gethostname(),
                   help="path segment name and ryu-nsm-owner mark (default: the host name)")
    p.add_argument("--token-lifetime", type=_positive, default=600.0, metavar="S",
                   help="seconds a path token is valid; clients refresh before (default 600)")
    p.add_argument("--grace", type=_non_negative, default=30.0, metavar="S",
                   help="seconds past expiry (or past start, for orphans) before removal (default 30)")
    p.add_argument("--ovsdb", default=DEFAULT_REMOTE, help=f"OVSDB remote (default {DEFAULT_REMOTE})")
    add_identity_arguments(p)
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-format", default="text", choices=["text", "json"],
                   help="json: one object per line (time, level, logger, message) for log collectors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the forwarder until SIGTERM/SIGINT; 0 on a clean stop, 1 if it could not start."""
    args = parser().parse_args(argv)
    configure(args.log_level, args.log_format)
    listen = args.listen or [DEFAULT_LISTEN]
    stopping = threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    identity = None
    try:
        try:
            identity = identity_source(args)
        except (OSError, ValueError, ConnectionError) as exc:
            log.error("identity: %s", exc)
            return 1
        try:
            ovsdb = Ovsdb(args.ovsdb)
        except OvsdbError as exc:
            log.error("%s", exc)
            return 1
        with ovsdb:
            if args.bridge not in ovsdb.bridges():
                log.error("bridge %s does not exist in OVSDB at %s", args.bridge, args.ovsdb)
                return 1
            try:
                forwarder = Forwarder(ovsdb, args.bridge, args.name, token_lifetime=args.token_lifetime,
                                      grace=args.grace, identity=identity)
            except ValueError as exc:
                log.error("%s", exc)
                return 1
            try:
                forwarder.serve(listen)
                log.info("forwarder %s serving on %s%s", args.name, ", ".join(forwarder.listening),
                         f" as {identity.current().spiffe_id} (mTLS)" if identity is not None else "")
                # A timed wait keeps the main thread returning to the interpreter for signal handlers.
                while not stopping.wait(0.5):
                    pass
                log.info("stopping; connections stay plumbed")
            except (OSError, OvsdbError) as exc:
                log.error("%s", exc)
                return 1
            finally:
                forwarder.stop()
    finally:
        if identity is not None:
            identity.close()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
