"""The command-line face of an identity, shared by ``ryu-nsm controller`` and ``ovs-forwarder``: the
SPIFFE Workload API (``--spiffe-socket``, else SPIFFE_ENDPOINT_SOCKET as SPIFFE tools read it) or
spiffe-helper's files (``--tls-cert/--tls-key/--tls-ca``); neither: no identity (insecure mode)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

from ryu_nsm.trust.identity import FileIdentitySource, IdentitySource

ENDPOINT_SOCKET_VARIABLE = "SPIFFE_ENDPOINT_SOCKET"


def add_identity_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The identity flags, in a group of their own."""
    group = parser.add_argument_group(
        "identity (a SPIFFE X.509 SVID for mTLS and signed path tokens; docs/security.md)")
    group.add_argument("--spiffe-socket", metavar="ADDRESS",
                       help="the SPIFFE Workload API, e.g. unix:///run/spire/sockets/agent.sock "
                            f"(default: ${ENDPOINT_SOCKET_VARIABLE} when set)")
    group.add_argument("--tls-cert", metavar="FILE", help="SVID chain, leaf first (spiffe-helper's svid.pem)")
    group.add_argument("--tls-key", metavar="FILE", help="the SVID's EC key (svid_key.pem)")
    group.add_argument("--tls-ca", metavar="FILE", help="trust bundle (svid_bundle.pem)")
    return group


def identity_source(args: argparse.Namespace, environ: Mapping[str, str] = os.environ
                    ) -> IdentitySource | None:
    """The identity the flags name, started (files polled, Workload API streamed); None without one.
    ValueError for flags that do not go together; OSError/ValueError/ConnectionError when the
    identity cannot be read."""
    files = (args.tls_cert, args.tls_key, args.tls_ca)
    if any(files) and not all(files):
        raise ValueError("--tls-cert, --tls-key and --tls-ca go together")
    if all(files):
        if args.spiffe_socket:
            raise ValueError("give --spiffe-socket or the --tls-* files, not both")
        return FileIdentitySource(*files)
    address = args.spiffe_socket or environ.get(ENDPOINT_SOCKET_VARIABLE)
    if address:
        from ryu_nsm.trust.workload import WorkloadApiSource

        return WorkloadApiSource(address)
    return None
