"""A workload's SPIFFE identity (X.509 SVID, key, trust bundle) and the sources that keep it current.

``FileIdentitySource`` reads spiffe-helper's files and reloads them when they change; a bad new set
of files is logged and the last good identity kept, so a half-written rotation never drops a channel.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ryu_nsm.observe.health import Loop, supervise

log = logging.getLogger("ryu_nsm.trust.identity")
PEM = serialization.Encoding.PEM


@dataclass(frozen=True)
class Identity:
    """One X.509 SVID: the SPIFFE ID, the chain (leaf first), its private key and the trust anchors."""

    spiffe_id: str
    chain: tuple[x509.Certificate, ...]
    key: ec.EllipticCurvePrivateKey
    bundle: tuple[x509.Certificate, ...]

    @property
    def not_after(self) -> datetime:
        return self.chain[0].not_valid_after_utc

    def chain_pem(self) -> bytes:
        return b"".join(cert.public_bytes(PEM) for cert in self.chain)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    def bundle_pem(self) -> bytes:
        return b"".join(cert.public_bytes(PEM) for cert in self.bundle)


def spiffe_id_of(cert: x509.Certificate) -> str | None:
    """The certificate's SPIFFE ID: its one URI SAN when that is a ``spiffe://`` URI, else None."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if len(uris) == 1 and uris[0].startswith("spiffe://") else None


def identity_from_pem(chain_pem: bytes, key_pem: bytes, bundle_pem: bytes) -> Identity:
    """An Identity from PEM; ValueError when a part is missing, the key is not the leaf's or not EC,
    or the leaf has no SPIFFE ID."""
    try:
        chain = tuple(x509.load_pem_x509_certificates(chain_pem))
        bundle = tuple(x509.load_pem_x509_certificates(bundle_pem))
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (TypeError, UnsupportedAlgorithm) as error:
        raise ValueError(str(error)) from error
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the SVID key is not an EC key")
    if key.public_key() != chain[0].public_key():
        raise ValueError("the SVID key does not match the SVID certificate")
    spiffe_id = spiffe_id_of(chain[0])
    if spiffe_id is None:
        raise ValueError("the SVID certificate has no single spiffe:// URI SAN")
    return Identity(spiffe_id, chain, key, bundle)


class IdentitySource(Protocol):
    """Where a process's current identity comes from; ``subscribe`` callbacks get each rotation."""

    def current(self) -> Identity: ...

    def subscribe(self, callback: Callable[[Identity], None]) -> None: ...

    def close(self) -> None: ...


class Subscribers:
    """The callbacks of one source; one that raises is logged and does not stop the others."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[[Identity], None]] = []
        self._lock = threading.Lock()

    def add(self, callback: Callable[[Identity], None]) -> None:
        with self._lock:
            self._callbacks.append(callback)

    def notify(self, identity: Identity) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(identity)
            except Exception:
                log.exception("identity subscriber %r failed on rotation to %s", callback,
                              identity.spiffe_id)


class FileIdentitySource:
    """The identity in spiffe-helper's files (SVID chain, key, bundle), polled every ``interval``
    seconds in a supervised loop; construction fails when the first read does."""

    def __init__(self, cert: str | Path, key: str | Path, ca: str | Path, interval: float = 5.0):
        self.paths = (Path(cert), Path(key), Path(ca))
        self._contents = self._read()
        self._identity = identity_from_pem(*self._contents)
        self._subscribers = Subscribers()
        self._stop = threading.Event()
        self._interval = interval
        self._loop = supervise(f"identity-files:{self.paths[0]}", self._poll, interval, self._stop)

    def current(self) -> Identity:
        return self._identity

    def subscribe(self, callback: Callable[[Identity], None]) -> None:
        self._subscribers.add(callback)

    def close(self) -> None:
        self._stop.set()
        self._loop.join(self._interval + 1)

    def _read(self) -> tuple[bytes, bytes, bytes]:
        chain, key, bundle = (path.read_bytes() for path in self.paths)
        return chain, key, bundle

    def _poll(self, loop: Loop) -> None:
        while not self._stop.wait(self._interval):
            loop.beat()
            self.reload()

    def reload(self) -> bool:
        """Read the files again; True when they held a new, good identity (now current)."""
        try:
            contents = self._read()
        except OSError as error:
            log.warning("identity files unreadable, keeping %s: %s", self._identity.spiffe_id, error)
            return False
        if contents == self._contents:
            return False
        try:
            identity = identity_from_pem(*contents)
        except ValueError as error:
            log.warning("identity files %s hold no valid SVID, keeping the last good one (%s until "
                        "%s): %s", self.paths[0], self._identity.spiffe_id, self._identity.not_after,
                        error)
            return False
        self._contents, self._identity = contents, identity
        log.info("identity rotated: %s until %s", identity.spiffe_id, identity.not_after)
        self._subscribers.notify(identity)
        return True
