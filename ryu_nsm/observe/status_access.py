"""Who may read the status endpoint, and how its clients prove who they are.

Server side, ``StatusAccess``: with an identity the endpoint speaks HTTPS and a client certificate
that chains to the trust bundle authenticates (``allow``, when given, names the SPIFFE IDs that may
read); a bearer token file is the other way in. Client side, ``StatusClient``: the TLS context and
token that ``fetch_status`` uses. docs/security.md says which answer a refused client gets.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # every `ryu-nsm` command imports this module (DEFAULT_ADDRESS): TLS loads when used
    from ryu_nsm.trust.identity import IdentitySource

log = logging.getLogger("ryu_nsm.observe.status_access")
REALM = "ryu-nsm"


class TokenFile:
    """A bearer token kept in a file (a mounted Secret), read again whenever the file changes; an
    empty, missing or unreadable file matches no token. Construction fails when the first read does."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._digest: bytes | None = None
        if self._read() is None:
            raise ValueError(f"token file {self.path} is unreadable or empty")

    def _read(self) -> bytes | None:
        """The digest of the current token, the file read again only when its stat changed."""
        try:
            stat = os.stat(self.path)
            stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        except OSError:
            stamp = None
        with self._lock:
            if stamp is not None and stamp == self._stamp:
                return self._digest
            token = b""
            if stamp is not None:
                try:
                    token = self.path.read_bytes().strip()
                except OSError:
                    pass
            if stamp != self._stamp:
                log.info("status token file %s %s", self.path, "read" if token else "missing or empty")
            self._stamp, self._digest = stamp, hashlib.sha256(token).digest() if token else None
            return self._digest

    def matches(self, presented: str) -> bool:
        """Whether ``presented`` is the token, compared in constant time (over digests: not even the
        token's length shows)."""
        digest = self._read()
        return digest is not None and hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), digest)


@dataclass(frozen=True)
class Refusal:
    """An HTTP refusal: status code, a short body, extra headers."""

    code: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class StatusAccess:
    """How the status endpoint authenticates: ``identity`` makes it HTTPS with client certificates
    from its bundle; ``allow`` restricts those to some SPIFFE IDs; ``token`` accepts a bearer token.
    Neither identity nor token: open, as in a lab on loopback."""

    identity: IdentitySource | None = None
    allow: frozenset[str] = frozenset()
    token: TokenFile | None = None
    _context: ssl.SSLContext | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.allow and self.identity is None:
            raise ValueError("allowing SPIFFE IDs needs an identity: client certificates need TLS")

    @property
    def open(self) -> bool:
        return self.identity is None and self.token is None

    def server_context(self) -> ssl.SSLContext | None:
        """The TLS server context (one, following rotation), or None for plain HTTP. A client
        certificate is optional at the handshake (``/healthz`` and token holders need none) but,
        when sent, must chain to the bundle or the handshake fails."""
        if self.identity is not None and self._context is None:
            from ryu_nsm.trust import tls

            self._context = tls.server_context(self.identity)
            self._context.verify_mode = ssl.CERT_OPTIONAL
        return self._context

    def check(self, peer_der: bytes | None, authorization: str | None) -> Refusal | None:
        """None when the request may be served: a verified client certificate (allowed, when a list
        is given) decides when there is one, else the bearer token."""
        if self.open:
            return None
        if peer_der:
            from cryptography import x509

            from ryu_nsm.trust.identity import spiffe_id_of

            spiffe_id = spiffe_id_of(x509.load_der_x509_certificate(peer_der))
            if self.allow and spiffe_id not in self.allow:
                log.info("status endpoint refused %s: not in --status-allow", spiffe_id or "a certificate "
                         "without SPIFFE ID")
                return Refusal(403, b"forbidden\n")
            return None
        if self.token is None:
            # No HTTP scheme would help (RFC 9110's 401 needs one): only a certificate does.
            return Refusal(403, b"client certificate required\n")
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and presented.strip():
            if self.token.matches(presented.strip()):
                return None
            return Refusal(401, b"invalid token\n",
                           (("WWW-Authenticate", f'Bearer realm="{REALM}", error="invalid_token"'),))
        return Refusal(401, b"authentication required\n", (("WWW-Authenticate", f'Bearer realm="{REALM}"'),))


@dataclass(frozen=True)
class StatusClient:
    """What a reader of the status endpoint presents: a TLS context (None: plain HTTP) and a token."""

    context: ssl.SSLContext | None = None
    token: str | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


def status_client(identity: IdentitySource | None = None, ca_file: str | None = None,
                  token_file: str | None = None) -> StatusClient:
    """A client with ``identity`` (mutual TLS), or only ``ca_file`` to verify the server (with a
    token), and the token in ``token_file``. The server is verified by its chain, not its name: it
    is named by a SPIFFE ID. OSError when a file is unreadable."""
    context = None
    if identity is not None:
        from ryu_nsm.trust import tls

        context = tls.client_context(identity)
    elif ca_file:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=ca_file)
    token = Path(token_file).read_text().strip() if token_file else None
    return StatusClient(context, token or None)
