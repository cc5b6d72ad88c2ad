"""NSM path tokens and the server's authorize policies over a three-hop path."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from nsm_api.authorize import authorize, monitor_visible
from nsm_api.connection_pb2 import Connection, Path, PathSegment
from nsm_api.errors import RequestError
from nsm_api.tokens import sign_token, token_expiry
from tests import pki

LIFETIME = 600.0


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _decode_and_verify(token: str, public_key: ec.EllipticCurvePublicKey) -> tuple[dict, dict]:
    """An independent ES256 check: JWS compact form, raw r||s signature turned into DER."""
    header, payload, signature = token.split(".")
    raw = _b64(signature)
    assert len(raw) == 64
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public_key.verify(der, f"{header}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))
    return json.loads(_b64(header)), json.loads(_b64(payload))


@pytest.fixture(scope="module")
def hops():
    authority = pki.ca()
    return {name: pki.svid(authority, name) for name in ("nsc", "nsmgr", "forwarder", "other")}


def _cert(identity):
    return identity.chain[0]


def _path(hops, now, **override) -> Path:
    """nsc -> nsmgr -> forwarder, the forwarder authorizing at index 2 (its own segment last)."""
    order = ["nsc", "nsmgr", "forwarder"]
    tokens = []
    for position, name in enumerate(order):
        peer = hops[order[position + 1]] if position + 1 < len(order) else None
        tokens.append(sign_token(hops[name], peer and peer.spiffe_id, peer and peer.not_after, now, LIFETIME))
    tokens = [override.get(f"token{position}", token) for position, token in enumerate(tokens)]
    return Path(index=2, path_segments=[PathSegment(name=name, id=name, token=token)
                                        for name, token in zip(order, tokens, strict=True)])


def _refused(path, peer, now) -> str:
    with pytest.raises(RequestError) as refusal:
        authorize(path, peer, now)
    assert refusal.value.code == grpc.StatusCode.PERMISSION_DENIED
    return refusal.value.message


def test_a_valid_three_hop_chain_is_accepted(hops):
    now = time.time()
    authorize(_path(hops, now), _cert(hops["nsmgr"]), now)


def test_a_token_is_es256_with_nsm_claims(hops):
    now = time.time()
    token = sign_token(hops["nsc"], hops["nsmgr"].spiffe_id, hops["nsmgr"].not_after, now, LIFETIME)
    header, claims = _decode_and_verify(token, hops["nsc"].key.public_key())
    assert header["alg"] == "ES256"
    assert claims == {"sub": "spiffe://example.org/nsc", "aud": ["spiffe://example.org/nsmgr"],
                      "exp": int(now + LIFETIME)}
    with pytest.raises(InvalidSignature):
        _decode_and_verify(token, hops["other"].key.public_key())
    _, alone = _decode_and_verify(sign_token(hops["nsc"], None, None, now, LIFETIME),
                                  hops["nsc"].key.public_key())
    assert "aud" not in alone


def test_expiry_is_capped_by_both_certificates(hops):
    now = time.time()
    own = hops["nsc"]
    assert token_expiry(own, None, now, 60) == int(now + 60)
    assert token_expiry(own, None, now, 1e9) == int(own.not_after.timestamp())
    soon = datetime.now(UTC) + timedelta(seconds=30)
    assert token_expiry(own, soon, now, 1e9) == int(soon.timestamp())


def _tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    raw = bytearray(_b64(signature))
    raw[5] ^= 1
    return f"{header}.{payload}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"


def test_each_policy_refuses_alone(hops):
    now = time.time()
    nsmgr = _cert(hops["nsmgr"])
    assert "policy tokens_valid" in _refused(_path(hops, now, token0="not.a-jwt"), nsmgr, now)
    signed = _path(hops, now).path_segments[1].token
    assert "policy prev_token_signed" in _refused(_path(hops, now, token1=_tamper(signed)), nsmgr, now)
    # the previous hop's token, signed by a key that is not the peer's
    impostor = sign_token(hops["other"], hops["forwarder"].spiffe_id, None, now, LIFETIME)
    assert "policy prev_token_signed" in _refused(_path(hops, now), _cert(hops["other"]), now)
    assert "policy prev_token_signed" in _refused(_path(hops, now, token1=impostor), nsmgr, now)
    assert "policy prev_token_signed" in _refused(_path(hops, now), None, now)
    expired = sign_token(hops["forwarder"], None, None, now - 2 * LIFETIME, LIFETIME)
    assert "policy tokens_expired" in _refused(_path(hops, now, token2=expired), nsmgr, now)
    astray = sign_token(hops["nsc"], hops["other"].spiffe_id, None, now, LIFETIME)
    assert "policy tokens_chained" in _refused(_path(hops, now, token0=astray), nsmgr, now)


def test_only_the_left_side_counts(hops):
    """Segments after the index are the downstream hops' business (NSM checks path[:index+1])."""
    now = time.time()
    path = _path(hops, now)
    path.path_segments.append(PathSegment(name="later", token="garbage"))
    authorize(path, _cert(hops["nsmgr"]), now)


def test_monitor_shows_a_caller_only_connections_with_its_token(hops):
    connection = Connection(id="c", path=_path(hops, time.time()))
    assert monitor_visible(connection, "spiffe://example.org/nsc")
    assert monitor_visible(connection, "spiffe://example.org/forwarder")
    assert not monitor_visible(connection, "spiffe://example.org/other")
    assert not monitor_visible(Connection(id="bare"), "spiffe://example.org/nsc")
