"""FileIdentitySource: spiffe-helper's files, reloaded when they change, the last good kept."""

from __future__ import annotations

import logging
import time

import pytest

from ryu_nsm.trust.identity import FileIdentitySource
from tests import pki


def _wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def authority():
    return pki.ca()


def test_reads_the_files_and_follows_a_rotation(tmp_path, authority):
    first, second = pki.svid(authority, "a"), pki.svid(authority, "a")
    source = FileIdentitySource(*pki.files(first, tmp_path), interval=0.05)
    seen = []
    source.subscribe(seen.append)
    try:
        assert source.current().chain == first.chain
        pki.files(second, tmp_path)
        _wait_for(lambda: source.current().chain == second.chain)
        assert [identity.chain for identity in seen] == [second.chain]
    finally:
        source.close()


def test_a_bad_new_file_keeps_the_last_good_identity(tmp_path, authority, caplog):
    first = pki.svid(authority, "a")
    cert, key, _ = pki.files(first, tmp_path)
    source = FileIdentitySource(cert, key, tmp_path / "svid_bundle.pem", interval=60)
    try:
        cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        with caplog.at_level(logging.WARNING, "ryu_nsm.trust.identity"):
            assert not source.reload()
        assert source.current() is not None and source.current().chain == first.chain
        assert "keeping the last good one" in caplog.text
        key.write_bytes(pki.svid(authority, "b").key_pem())  # a key of another certificate
        cert.write_bytes(first.chain_pem())
        assert not source.reload() and source.current().chain == first.chain
        key.unlink()
        assert not source.reload() and "unreadable" in caplog.text
        pki.files(pki.svid(authority, "c"), tmp_path)
        assert source.reload() and source.current().spiffe_id == "spiffe://example.org/c"
    finally:
        source.close()


def test_the_first_read_must_succeed(tmp_path):
    with pytest.raises(OSError):
        FileIdentitySource(tmp_path / "svid.pem", tmp_path / "svid_key.pem", tmp_path / "svid_bundle.pem")
