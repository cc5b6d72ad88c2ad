"""The development CA and its SVIDs against SPIFFE's X509-SVID spec, and ``ryu-nsm certs``."""

from __future__ import annotations

import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from ryu_nsm.cli import main
from ryu_nsm.trust import devca
from ryu_nsm.trust.identity import identity_from_pem, spiffe_id_of
from tests import pki


def _extension(cert: x509.Certificate, kind):
    return cert.extensions.get_extension_for_class(kind)


def test_ca_is_an_ec_p256_signing_certificate():
    authority = pki.ca()
    cert = authority.cert
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    constraints = _extension(cert, x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = _extension(cert, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and not usage.value.digital_signature
    cert.verify_directly_issued_by(cert)


def test_svid_follows_the_x509_svid_spec():
    authority = pki.ca(days=2)
    identity = pki.svid(authority, "ns/default/sa/client", days=10)
    leaf = identity.chain[0]
    names = _extension(leaf, x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://example.org/ns/default/sa/client"]
    assert identity.spiffe_id == spiffe_id_of(leaf) == "spiffe://example.org/ns/default/sa/client"
    constraints = _extension(leaf, x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    usage = _extension(leaf, x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    assert set(_extension(leaf, x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert leaf.not_valid_after_utc <= authority.cert.not_valid_after_utc  # capped by the CA
    assert identity.bundle == (authority.cert,)
    leaf.verify_directly_issued_by(authority.cert)


@pytest.mark.parametrize("spiffe_id", ["https://example.org/x", "spiffe://example.org", "spiffe://example.org/",
                                       "spiffe://other.org/x", "spiffe://example.org/x?q=1",
                                       "spiffe://example.org:8/x"])
def test_svid_refuses_ids_that_are_not_workload_ids_of_the_domain(spiffe_id):
    with pytest.raises(ValueError):
        devca.make_svid(pki.ca(), spiffe_id)


def test_spiffe_id_of_wants_exactly_one_spiffe_uri():
    authority = pki.ca()
    assert spiffe_id_of(authority.cert) == "spiffe://example.org"
    assert spiffe_id_of(pki.svid(authority).chain[0]) == "spiffe://example.org/workload"


def test_identity_from_pem_refuses_a_key_of_another_svid():
    authority = pki.ca()
    one, other = pki.svid(authority, "one"), pki.svid(authority, "other")
    with pytest.raises(ValueError, match="does not match"):
        identity_from_pem(one.chain_pem(), other.key_pem(), one.bundle_pem())
    with pytest.raises(ValueError):
        identity_from_pem(b"", one.key_pem(), one.bundle_pem())
    assert identity_from_pem(one.chain_pem(), one.key_pem(), one.bundle_pem()).spiffe_id == one.spiffe_id


def test_cli_init_and_issue_write_spiffe_helper_files(tmp_path, capsys):
    ca_dir, out = tmp_path / "ca", tmp_path / "svid"
    assert main(["certs", "init", str(ca_dir), "--trust-domain", "lab.test"]) == 0
    assert main(["certs", "issue", str(ca_dir), "spiffe://lab.test/forwarder", "--out", str(out),
                 "--dns", "forwarder.lab"]) == 0
    assert "spiffe://lab.test/forwarder" in capsys.readouterr().out
    for key in (ca_dir / devca.CA_KEY, out / devca.SVID_KEY):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    identity = identity_from_pem(*((out / name).read_bytes()
                                   for name in (devca.SVID, devca.SVID_KEY, devca.SVID_BUNDLE)))
    assert identity.spiffe_id == "spiffe://lab.test/forwarder"
    assert identity.bundle[0] == devca.load_ca(ca_dir).cert


def test_cli_errors_exit_1_and_usage_exits_2(tmp_path, capsys):
    ca_dir = tmp_path / "ca"
    assert main(["certs", "init", str(ca_dir)]) == 0
    assert main(["certs", "init", str(ca_dir)]) == 1
    assert "already holds a CA" in capsys.readouterr().err
    assert main(["certs", "issue", str(ca_dir), "spiffe://other.org/x"]) == 1
    assert "trust domain" in capsys.readouterr().err
    assert main(["certs", "issue", str(tmp_path / "nothing"), "spiffe://example.org/x"]) == 1
    with pytest.raises(SystemExit) as usage:
        main(["certs", "issue", str(ca_dir)])
    assert usage.value.code == 2
