"""``ryu-nsm status --nsm``: the controller's NSM MonitorConnections stream, read with the identity
flags (mTLS; the controller shows it only the connections its SPIFFE ID is on) or plain gRPC, printed
as a table; ``--watch`` follows it across SVID rotations (``trust.tls.FollowingChannel``)."""

from __future__ import annotations

import argparse
import ssl
import sys
import time
from typing import TextIO

import grpc

from nsm_api import connection_pb2, connection_pb2_grpc
from ryu_nsm.trust.options import IdentityOptionsError, identity_source
from ryu_nsm.trust.tls import FollowingChannel, PeerRefused

EXIT_REFUSED = 1  # the controller refused this client, or is not the server expected
EXIT_UNREACHABLE = 2

_EVENTS = {value: name for name, value in connection_pb2.ConnectionEventType.items()}
_STATES = {value: name for name, value in connection_pb2.State.items()}


def status_from_monitor(args: argparse.Namespace) -> int:
    """``status --nsm``: 0, EXIT_REFUSED or EXIT_UNREACHABLE, the reason on stderr."""
    try:
        source = identity_source(args)
    except IdentityOptionsError as exc:
        print(f"ryu-nsm: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if source is None and args.server_spiffe_id:
        print("ryu-nsm: --server-spiffe-id needs an identity (mTLS)", file=sys.stderr)
        return EXIT_UNREACHABLE
    selector = connection_pb2.MonitorScopeSelector(network_services=args.service or [])
    try:
        follower = FollowingChannel(args.nsm, source, args.server_name, args.server_spiffe_id)
    except (PeerRefused, ssl.SSLError) as exc:
        print(f"ryu-nsm: {_refusal(exc)} at {args.nsm}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as exc:
        print(f"ryu-nsm: cannot reach the controller's NSM API at {args.nsm}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        print_connections(follower, selector, args.watch, sys.stdout)
    except grpc.RpcError as exc:
        hint = (" (give --server-name: a DNS SAN of the controller's SVID)"
                if "Hostname Verification" in (exc.details() or "") else "")
        print(f"ryu-nsm: MonitorConnections at {args.nsm}: {exc.code().name}: {exc.details()}{hint}",
              file=sys.stderr)
        return EXIT_REFUSED if exc.code() == grpc.StatusCode.PERMISSION_DENIED else EXIT_UNREACHABLE
    except KeyboardInterrupt:
        pass
    finally:
        follower.close()
        if source is not None:
            source.close()
    return 0


def _refusal(exc: ssl.SSLError) -> str:
    if isinstance(exc, PeerRefused):
        return f"not the controller expected: {exc.args[0]}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the controller's certificate does not chain to this client's trust bundle ({exc.reason})"
    # gRPC closes a handshake whose client certificate it refuses, without an alert.
    why = "it closed the handshake" if isinstance(exc, ssl.SSLEOFError) else exc.reason or exc
    return f"the controller refused this client's certificate ({why})"


def print_connections(follower: FollowingChannel, selector: connection_pb2.MonitorScopeSelector,
                      watch: bool, out: TextIO) -> None:
    """The stream's initial state (then, with ``watch``, every event) as text on ``out``. A rotation
    closes the channel under the stream: it is opened again on the new one, whose first event is
    the state as the new identity sees it. Returns when the follower is closed."""
    while True:
        generation = follower.generation
        stub = connection_pb2_grpc.MonitorConnectionStub(follower.channel)
        try:
            for event in stub.MonitorConnections(selector, timeout=None if watch else 10):
                _print_event(event, out)
                if not watch:
                    return
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise
            if follower.closed:
                return
            if follower.generation == generation:
                raise
            print(f"{time.strftime('%H:%M:%S')} identity rotated: monitoring again", file=out)
            continue
        return


def _print_event(event: connection_pb2.ConnectionEvent, out: TextIO) -> None:
    print(f"{time.strftime('%H:%M:%S')} {_EVENTS.get(event.type, event.type)}: "
          f"{len(event.connections)} connection(s)", file=out)
    for cid, conn in sorted(event.connections.items()):
        endpoint = conn.network_service_endpoint_name or "-"
        print(f"  {cid:<40} {conn.network_service:<16} {endpoint:<16} {_STATES.get(conn.state, conn.state)}",
              file=out)
    out.flush()
