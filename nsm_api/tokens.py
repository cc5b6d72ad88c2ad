"""NSM's path tokens (sdk ``pkg/tools/spiffejwt``): a JWT per hop, signed ES256 with the hop's own
SVID key; ``sub`` is the hop's SPIFFE ID, ``aud`` the peer's (from the peer certificate), ``exp`` now
plus the maximum token lifetime, capped by both certificates' NotAfter.

Pure: the caller passes ``now`` (unix seconds) and the identity.
"""

from __future__ import annotations

import functools
import math
from datetime import datetime
from typing import TYPE_CHECKING

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

if TYPE_CHECKING:
    from ryu_nsm.trust.identity import Identity

ALGORITHM = "ES256"


class TokenError(ValueError):
    """Not a JWT (three base64url parts, JSON header and claims), or a signature that does not verify."""


def token_expiry(identity: Identity, peer_not_after: datetime | None, now: float, max_lifetime: float) -> int:
    """The ``exp`` of a token signed now (unix seconds, whole as JWT's NumericDate)."""
    ends = [now + max_lifetime, identity.not_after.timestamp()]
    if peer_not_after is not None:
        ends.append(peer_not_after.timestamp())
    return math.floor(min(ends))


def sign_token(identity: Identity, peer_spiffe_id: str | None, peer_not_after: datetime | None,
               now: float, max_lifetime: float) -> str:
    """This hop's token for the path segment: for ``peer_spiffe_id`` (omitted without a TLS peer,
    as NSM does), signed with ``identity``'s key."""
    expiry = token_expiry(identity, peer_not_after, now, max_lifetime)
    claims: dict = {"sub": identity.spiffe_id, "exp": expiry}
    if peer_spiffe_id is not None:
        claims["aud"] = [peer_spiffe_id]
    return jwt.encode(claims, identity.key, algorithm=ALGORITHM)


def claims_of(token: str) -> dict:
    """A token's claims, signature not checked; TokenError when it is not a JWT."""
    return dict(_decoded(token))


@functools.lru_cache(maxsize=4096)
def _decoded(token: str) -> dict:
    # Each policy and every monitor event reads the same tokens again, and PyJWT checks base64url
    # character by character in Python: decoding once per token halves a secure Request's cost.
    try:
        return jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as error:
        raise TokenError(f"not a JWT: {error}") from error


def audience_of(claims: dict) -> list[str]:
    """``aud`` as a list (JWT allows a single string too)."""
    audience = claims.get("aud", [])
    return [audience] if isinstance(audience, str) else list(audience)


def verify_signature(token: str, public_key: ec.EllipticCurvePublicKey) -> None:
    """TokenError unless ``token`` carries a valid ES256 signature by ``public_key`` (claims not
    checked: expiry is a policy of its own)."""
    try:
        jwt.PyJWS().decode(token, public_key, algorithms=[ALGORITHM])
    except jwt.PyJWTError as error:
        raise TokenError(f"signature: {error}") from error
