"""NSM's server-side authorization of a Request or Close (sdk ``authorize.NewServer``): the path up to
this hop's index, checked against the policies of ``pkg/tools/opa/policies`` in NSM's order; the
first refusing one answers PermissionDenied naming it. And the monitor filter: a caller sees only the
connections whose path holds its SPIFFE ID.

Pure: the caller passes the peer certificate and ``now`` (unix seconds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc
from cryptography import x509

from nsm_api.connection_pb2 import Connection, Path, PathSegment
from nsm_api.errors import RequestError
from nsm_api.tokens import TokenError, audience_of, claims_of, verify_signature


def _tokens_valid(left: Sequence[PathSegment], index: int, peer: x509.Certificate | None, now: float):
    for position, segment in enumerate(left):
        try:
            claims_of(segment.token)
        except TokenError as error:
            return f"segment {position}'s token: {error}"
    return None


def _prev_token_signed(left: Sequence[PathSegment], index: int, peer: x509.Certificate | None, now: float):
    if index < 1 or index - 1 >= len(left):
        return "no previous segment"
    if peer is None:
        return "no peer certificate"
    try:
        verify_signature(left[index - 1].token, peer.public_key())
    except TokenError as error:
        return f"segment {index - 1}'s token is not signed by the peer: {error}"
    return None


def _tokens_expired(left: Sequence[PathSegment], index: int, peer: x509.Certificate | None, now: float):
    for position in range(index, len(left)):
        exp = claims_of(left[position].token).get("exp")
        if not isinstance(exp, int | float) or not now < exp:
            return f"segment {position}'s token expired (exp {exp}, now {now:.0f})"
    return None


def _tokens_chained(left: Sequence[PathSegment], index: int, peer: x509.Certificate | None, now: float):
    for position in range(len(left) - 1):
        subject = claims_of(left[position + 1].token).get("sub")
        if subject not in audience_of(claims_of(left[position].token)):
            return f"segment {position}'s audience does not hold segment {position + 1}'s subject {subject}"
    return None


# A policy: (left side of the path, index, peer certificate, now) -> why it refuses, or None.
Policy = Callable[[Sequence[PathSegment], int, x509.Certificate | None, float], str | None]
# NSM's server defaults, in its order (authorize.NewServer).
POLICIES: tuple[tuple[str, Policy], ...] = (
    ("tokens_valid", _tokens_valid),
    ("prev_token_signed", _prev_token_signed),
    ("tokens_expired", _tokens_expired),
    ("tokens_chained", _tokens_chained),
)


def authorize(path: Path, peer: x509.Certificate | None, now: float) -> None:
    """RequestError(PERMISSION_DENIED) naming the first policy the path's left side breaks."""
    index = path.index
    left = list(path.path_segments[: index + 1])
    for name, policy in POLICIES:
        why = policy(left, index, peer, now)
        if why is not None:
            raise RequestError(grpc.StatusCode.PERMISSION_DENIED,
                               f"no sufficient privileges: policy {name}: {why}")


def monitor_visible(connection: Connection, caller_spiffe_id: str) -> bool:
    """Whether a monitor caller may see ``connection``: one of its path's tokens is the caller's."""
    for segment in connection.path.path_segments:
        try:
            if claims_of(segment.token).get("sub") == caller_spiffe_id:
                return True
        except TokenError:
            continue
    return False
