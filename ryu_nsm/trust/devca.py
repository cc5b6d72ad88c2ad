"""A development certificate authority: an EC P-256 CA and X509-SVIDs as SPIFFE's X509-SVID
specification shapes them, written under spiffe-helper's file names so ``FileIdentitySource`` reads
them. For labs and tests; production SVIDs come from SPIRE through the Workload API.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ryu_nsm.trust.identity import Identity, identity_from_pem

CA_CERT, CA_KEY = "ca.pem", "ca_key.pem"
SVID, SVID_KEY, SVID_BUNDLE = "svid.pem", "svid_key.pem", "svid_bundle.pem"
CLOCK_SKEW = timedelta(minutes=1)  # not-before this far back: peers with a slightly late clock accept


@dataclass(frozen=True)
class Authority:
    """A CA certificate and its key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def trust_domain(self) -> str:
        return self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def _serial_and_key() -> tuple[int, ec.EllipticCurvePrivateKey]:
    return x509.random_serial_number(), ec.generate_private_key(ec.SECP256R1())


def make_ca(trust_domain: str, now: datetime | None = None, days: float = 365) -> Authority:
    """A self-signed CA for ``trust_domain`` (CA:TRUE, keyCertSign), valid ``days`` from ``now``."""
    if not trust_domain or "/" in trust_domain or ":" in trust_domain or trust_domain != trust_domain.lower():
        raise ValueError(f"not a SPIFFE trust domain name: {trust_domain!r}")
    serial, key = _serial_and_key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ryu-nsm dev CA"),
                      x509.NameAttribute(NameOID.COMMON_NAME, trust_domain)])
    start = _now(now)
    public = key.public_key()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(public)
            .serial_number(serial).not_valid_before(start - CLOCK_SKEW)
            .not_valid_after(start + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]), critical=False)
            .sign(key, hashes.SHA256()))
    return Authority(cert, key)


def check_spiffe_id(spiffe_id: str, trust_domain: str | None = None) -> None:
    """ValueError unless ``spiffe_id`` is a workload SPIFFE ID (in ``trust_domain`` when given)."""
    parts = urlsplit(spiffe_id)
    if (parts.scheme != "spiffe" or not parts.netloc or parts.query or parts.fragment
            or "@" in parts.netloc or ":" in parts.netloc or parts.path in ("", "/")
            or parts.path.endswith("/") or "//" in parts.path):
        raise ValueError(f"not a workload SPIFFE ID: {spiffe_id!r} (want spiffe://TRUST-DOMAIN/PATH)")
    if trust_domain is not None and parts.netloc != trust_domain:
        raise ValueError(f"{spiffe_id} is not in the CA's trust domain {trust_domain}")


def make_svid(authority: Authority, spiffe_id: str, now: datetime | None = None, days: float = 1,
              dns_names: tuple[str, ...] = ()) -> Identity:
    """An X509-SVID for ``spiffe_id`` signed by ``authority``: one URI SAN, CA:FALSE,
    digitalSignature, serverAuth and clientAuth; it ends no later than the CA."""
    check_spiffe_id(spiffe_id, authority.trust_domain)
    serial, key = _serial_and_key()
    start = _now(now)
    end = min(start + timedelta(days=days), authority.cert.not_valid_after_utc)
    names = [x509.UniformResourceIdentifier(spiffe_id), *(x509.DNSName(name) for name in dns_names)]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIFFE")]))
            .issuer_name(authority.cert.subject).public_key(key.public_key())
            .serial_number(serial).not_valid_before(start - CLOCK_SKEW).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
                           critical=False)
            .sign(authority.key, hashes.SHA256()))
    return Identity(spiffe_id, (cert,), key, (authority.cert,))


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` whole or not at all (a reader never sees half a file)."""
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(partial, mode)
    os.replace(partial, path)


def write_identity(identity: Identity, directory: str | Path) -> Path:
    """Write ``identity`` as spiffe-helper does (svid.pem, svid_key.pem 0600, svid_bundle.pem);
    the key first, so a reader that sees the new certificate also finds its key."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    write_file(out / SVID_KEY, identity.key_pem(), 0o600)
    write_file(out / SVID, identity.chain_pem())
    write_file(out / SVID_BUNDLE, identity.bundle_pem())
    return out


def init_ca(directory: str | Path, trust_domain: str = "example.org", days: float = 365) -> Authority:
    """A new CA in ``directory`` (ca.pem, ca_key.pem 0600); FileExistsError if one is there."""
    directory = Path(directory)
    if (directory / CA_CERT).exists() or (directory / CA_KEY).exists():
        raise FileExistsError(f"{directory} already holds a CA ({CA_CERT}, {CA_KEY})")
    authority = make_ca(trust_domain, days=days)
    directory.mkdir(parents=True, exist_ok=True)
    key_pem = authority.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())
    write_file(directory / CA_KEY, key_pem, 0o600)
    write_file(directory / CA_CERT, authority.cert.public_bytes(serialization.Encoding.PEM))
    return authority


def load_ca(directory: str | Path) -> Authority:
    """The CA that ``init_ca`` wrote in ``directory``."""
    directory = Path(directory)
    cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
    key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise ValueError(f"{directory / CA_KEY} is not the EC key of {directory / CA_CERT}")
    return Authority(cert, key)


def issue(directory: str | Path, spiffe_id: str, out_dir: str | Path | None = None, days: float = 1,
          dns_names: tuple[str, ...] = ()) -> Identity:
    """An SVID for ``spiffe_id`` from the CA in ``directory``, written to ``out_dir`` (default: the
    CA's directory) under spiffe-helper's names, read back as ``FileIdentitySource`` will."""
    identity = make_svid(load_ca(directory), spiffe_id, days=days, dns_names=tuple(dns_names))
    out = write_identity(identity, out_dir if out_dir is not None else directory)
    return identity_from_pem(*((out / name).read_bytes() for name in (SVID, SVID_KEY, SVID_BUNDLE)))
