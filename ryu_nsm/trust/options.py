"""The identity options every command shares: ``--spiffe-socket`` (the Workload API) or
``--tls-cert/--tls-key/--tls-ca`` (spiffe-helper's files), and the ``IdentitySource`` they name."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # every command builds its parser: the identity code loads only when used
    from ryu_nsm.trust.identity import IdentitySource


def add_identity_arguments(parser: argparse.ArgumentParser) -> None:
    """The identity options, in a group of their own."""
    group = parser.add_argument_group("identity (SPIFFE X509-SVID; docs/security.md)")
    group.add_argument("--spiffe-socket", metavar="ADDRESS",
                       help="the SPIFFE Workload API (unix:///run/spire/sockets/agent.sock)")
    group.add_argument("--tls-cert", metavar="FILE", help="SVID chain, PEM (spiffe-helper's svid.pem)")
    group.add_argument("--tls-key", metavar="FILE", help="SVID key, PEM (svid_key.pem)")
    group.add_argument("--tls-ca", metavar="FILE", help="trust bundle, PEM (svid_bundle.pem)")


def identity_source(args: argparse.Namespace) -> IdentitySource | None:
    """The source the options name; None without any; ValueError when they are incomplete or both
    kinds are given; OSError/ConnectionError when the first SVID cannot be read."""
    files = (args.tls_cert, args.tls_key, args.tls_ca)
    if args.spiffe_socket and any(files):
        raise ValueError("--spiffe-socket and --tls-cert/--tls-key/--tls-ca exclude each other")
    if args.spiffe_socket:
        from ryu_nsm.trust.workload import WorkloadApiSource

        return WorkloadApiSource(args.spiffe_socket)
    if not any(files):
        return None
    if not all(files):
        raise ValueError("--tls-cert, --tls-key and --tls-ca go together")
    from ryu_nsm.trust.identity import FileIdentitySource

    return FileIdentitySource(*files)
