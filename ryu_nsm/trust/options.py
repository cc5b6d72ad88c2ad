"""The identity options every ryu-nsm process shares (``--spiffe-socket`` or ``--tls-cert/--tls-key/
--tls-ca``) and the ``IdentitySource`` they name, so each channel (OpenFlow, NSM gRPC, status) takes
its SVID from the same place."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ryu_nsm.trust.identity import IdentitySource


class IdentityOptionsError(ValueError):
    """The identity options contradict each other or name no usable SVID."""


def add_identity_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the identity options (one group) to ``parser``."""
    group = parser.add_argument_group("identity (SPIFFE X509-SVID; docs/security.md)")
    group.add_argument("--spiffe-socket", metavar="ADDRESS",
                       help="the SPIFFE Workload API (unix:///path, e.g. SPIRE's agent socket); rotations "
                            "are picked up as they come")
    group.add_argument("--tls-cert", metavar="FILE", help="SVID certificate chain (spiffe-helper's svid.pem)")
    group.add_argument("--tls-key", metavar="FILE", help="SVID private key (svid_key.pem)")
    group.add_argument("--tls-ca", metavar="FILE", help="trust bundle (svid_bundle.pem); the three files are "
                                                      "reloaded when they change")


def identity_source(args: argparse.Namespace) -> IdentitySource | None:
    """The IdentitySource the options name; None when none is given. IdentityOptionsError when they
    are incomplete or contradictory, or the first SVID cannot be had."""
    files = (args.tls_cert, args.tls_key, args.tls_ca)
    if args.spiffe_socket and any(files):
        raise IdentityOptionsError("give --spiffe-socket or --tls-cert/--tls-key/--tls-ca, not both")
    if any(files) and not all(files):
        raise IdentityOptionsError("--tls-cert, --tls-key and --tls-ca go together")
    try:
        if args.spiffe_socket:
            from ryu_nsm.trust.workload import WorkloadApiSource

            return WorkloadApiSource(args.spiffe_socket)
        if all(files):
            from ryu_nsm.trust.identity import FileIdentitySource

            return FileIdentitySource(*files)
    except (OSError, ValueError) as error:
        raise IdentityOptionsError(f"no identity: {error}") from error
    return None
