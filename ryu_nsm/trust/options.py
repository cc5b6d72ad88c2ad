"""The command-line face of an identity, shared by every ryu-nsm process (``ryu-nsm controller``,
``ovs-forwarder``) so each channel (OpenFlow, NSM gRPC, status) takes its SVID from the same place: the
SPIFFE Workload API (``--spiffe-socket``, else SPIFFE_ENDPOINT_SOCKET as SPIFFE tools read it) or
spiffe-helper's files (``--tls-cert/--tls-key/--tls-ca``); neither: no identity (insecure mode)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ryu_nsm.trust.identity import IdentitySource

ENDPOINT_SOCKET_VARIABLE = "SPIFFE_ENDPOINT_SOCKET"


class IdentityOptionsError(ValueError):
    """The identity options contradict each other or name no usable SVID."""


def add_identity_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The identity flags, in a group of their own."""
    group = parser.add_argument_group(
        "identity (a SPIFFE X.509 SVID for mTLS and signed path tokens; docs/security.md)")
    group.add_argument("--spiffe-socket", metavar="ADDRESS",
                       help="the SPIFFE Workload API, e.g. unix:///run/spire/sockets/agent.sock "
                            f"(default: ${ENDPOINT_SOCKET_VARIABLE} when set); rotations are picked up")
    group.add_argument("--tls-cert", metavar="FILE", help="SVID chain, leaf first (spiffe-helper's svid.pem)")
    group.add_argument("--tls-key", metavar="FILE", help="the SVID's EC key (svid_key.pem)")
    group.add_argument("--tls-ca", metavar="FILE",
                       help="trust bundle (svid_bundle.pem); the three files are reloaded when they change")
    return group


def identity_source(args: argparse.Namespace, environ: Mapping[str, str] = os.environ
                    ) -> IdentitySource | None:
    """The identity the flags name, started (files polled, Workload API streamed); None without one.
    IdentityOptionsError when the flags are incomplete or contradictory, or the first SVID cannot be had."""
    files = (args.tls_cert, args.tls_key, args.tls_ca)
    if any(files) and not all(files):
        raise IdentityOptionsError("--tls-cert, --tls-key and --tls-ca go together")
    if all(files) and args.spiffe_socket:
        raise IdentityOptionsError("give --spiffe-socket or the --tls-* files, not both")
    try:
        if all(files):
            from ryu_nsm.trust.identity import FileIdentitySource

            return FileIdentitySource(*files)
        address = args.spiffe_socket or environ.get(ENDPOINT_SOCKET_VARIABLE)
        if address:
            from ryu_nsm.trust.workload import WorkloadApiSource

            return WorkloadApiSource(address)
    except (OSError, ValueError, ConnectionError) as error:
        raise IdentityOptionsError(f"no identity: {error}") from error
    return None
