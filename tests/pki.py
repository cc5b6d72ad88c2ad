"""Certificates for trust tests, from ``ryu_nsm.trust.devca``: CAs, SVIDs with chosen SPIFFE IDs and
lifetimes, in memory or as spiffe-helper's files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ryu_nsm.trust import devca
from ryu_nsm.trust.identity import Identity

TRUST_DOMAIN = "example.org"
# Servers' SVIDs carry this DNS name: gRPC clients check it (ssl_target_name_override).
SERVER_NAME = "ryu-nsm.test"


def ca(trust_domain: str = TRUST_DOMAIN, days: float = 30, now: datetime | None = None) -> devca.Authority:
    return devca.make_ca(trust_domain, now=now, days=days)


def svid(authority: devca.Authority, name: str = "workload", *, days: float = 1,
         now: datetime | None = None, dns_names: tuple[str, ...] = (SERVER_NAME,)) -> Identity:
    """An SVID for spiffe://<authority's domain>/<name>."""
    return devca.make_svid(authority, f"spiffe://{authority.trust_domain}/{name}", now=now, days=days,
                           dns_names=dns_names)


def expired_svid(authority: devca.Authority, name: str = "workload") -> Identity:
    """An SVID whose validity ended an hour ago."""
    return svid(authority, name, now=datetime.now(UTC) - timedelta(days=1, hours=1), days=1)


def files(identity: Identity, directory: Path) -> tuple[Path, Path, Path]:
    """``identity`` written as spiffe-helper's files; their paths (cert, key, bundle)."""
    devca.write_identity(identity, directory)
    return directory / devca.SVID, directory / devca.SVID_KEY, directory / devca.SVID_BUNDLE


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.PEM)
