"""The status endpoint over real HTTPS on loopback, with dev-CA certificates: who is served, who is
refused and how (a foreign CA at the handshake, an unlisted SPIFFE ID with 403, a missing or wrong
token with 401 and WWW-Authenticate), a rotated SVID on the next connection, the metrics listener's
two paths, and `ryu-nsm status` speaking all of it."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from ryu_nsm.observe.status_access import StatusAccess, StatusClient, TokenFile, status_client
from ryu_nsm.observe.status_api import StatusRefused, StatusServer, fetch_status
from tests import pki
from tests.test_trust_tls import StaticSource

ROOT = Path(__file__).resolve().parent.parent
STATUS = {"fabric": "f", "connections": [], "switches": []}
ADMIN = "spiffe://example.org/admin"


@pytest.fixture
def authority():
    return pki.ca()


@pytest.fixture
def server_source(authority):
    return StaticSource(pki.svid(authority, "controller"))


@pytest.fixture
def serve():
    """Start StatusServers for a test; stop them after."""
    started = []

    def start(access: StatusAccess | None = None, **kwargs) -> StatusServer:
        server = StatusServer(lambda: STATUS, "127.0.0.1", 0, states=lambda ids: {"connections": {}},
                              fabric={"switches": []}, access=access, **kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def client_of(authority, name: str = "admin") -> StatusClient:
    return status_client(StaticSource(pki.svid(authority, name)))


def ca_only(authority, tmp_path: Path, token: str | None = None) -> StatusClient:
    """A client that checks the server against the CA and presents no certificate."""
    (tmp_path / "ca.pem").write_bytes(pki.pem(authority.cert))
    return StatusClient(status_client(ca_file=str(tmp_path / "ca.pem")).context, token)


def get(server: StatusServer, path: str, client: StatusClient) -> tuple[int, dict, bytes]:
    """(status, headers, body) of a GET, refusals included."""
    request = urllib.request.Request(server.url + path, headers=client.headers())
    try:
        with urllib.request.urlopen(request, timeout=5, context=client.context) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def token_file(tmp_path: Path, token: str) -> Path:
    path = tmp_path / "token"
    path.write_text(token + "\n")
    return path


# --- mutual TLS -------------------------------------------------------------------------------------

def test_a_client_certificate_from_the_bundle_reads_everything(serve, server_source, authority):
    server = serve(StatusAccess(server_source))
    assert server.url.startswith("https://")
    client = client_of(authority)
    assert fetch_status(server.url, client=client) == STATUS
    assert fetch_status(server.url, client=client, what="/status/states") == {"connections": {}}
    assert get(server, "/metrics", client)[0] == 200


def test_without_a_client_certificate_only_healthz_answers(serve, server_source, authority, tmp_path):
    server = serve(StatusAccess(server_source))
    anonymous = ca_only(authority, tmp_path)
    assert get(server, "/healthz", anonymous)[:3:2] == (200, b"ok\n")
    for path in ("/status", "/status/fabric", "/metrics", "/no-such-path"):
        code, headers, body = get(server, path, anonymous)
        # Refused before routing: an unknown path looks like a known one.
        assert (code, body) == (403, b"client certificate required\n"), path
        assert "WWW-Authenticate" not in headers
    with pytest.raises(StatusRefused, match="403 client certificate required"):
        fetch_status(server.url, client=anonymous)


def test_a_certificate_from_another_ca_is_refused_at_the_handshake(serve, server_source, authority):
    server = serve(StatusAccess(server_source))
    stranger = client_of(pki.ca())
    stranger.context.load_verify_locations(cadata=pki.pem(authority.cert).decode())  # it trusts the server
    with pytest.raises(StatusRefused):
        fetch_status(server.url, client=stranger)
    # Not even /healthz: a certificate that is sent must verify.
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        get(server, "/healthz", stranger)


def test_plain_http_to_the_tls_listener_gets_nothing(serve, server_source):
    server = serve(StatusAccess(server_source))
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(server.url.replace("https", "http") + "/healthz", timeout=5).read()


def test_status_allow_restricts_certificates_to_the_listed_ids(serve, server_source, authority):
    server = serve(StatusAccess(server_source, allow=frozenset({ADMIN})))
    assert fetch_status(server.url, client=client_of(authority, "admin")) == STATUS
    code, headers, body = get(server, "/status", client_of(authority, "intruder"))
    assert (code, body) == (403, b"forbidden\n") and "WWW-Authenticate" not in headers
    assert get(server, "/healthz", client_of(authority, "intruder"))[0] == 200


def test_allowing_ids_without_an_identity_is_an_error():
    with pytest.raises(ValueError, match="needs an identity"):
        StatusAccess(None, allow=frozenset({ADMIN}))


def test_a_rotated_svid_serves_the_next_connection(serve, server_source, authority):
    server = serve(StatusAccess(server_source))
    client = client_of(authority)

    def served_serial() -> int:
        with socket.create_connection(server.address, timeout=5) as raw:
            with client.context.wrap_socket(raw) as conn:
                return x509.load_der_x509_certificate(conn.getpeercert(True)).serial_number

    before = served_serial()
    established = client.context.wrap_socket(socket.create_connection(server.address, timeout=5))
    rotated = pki.svid(authority, "controller")
    server_source.rotate(rotated)
    assert served_serial() == rotated.chain[0].serial_number != before
    assert fetch_status(server.url, client=client) == STATUS
    # The connection made before the rotation still gets its answer.
    established.sendall(b"GET /status HTTP/1.0\r\n\r\n")
    assert established.recv(64).startswith(b"HTTP/1.0 200")
    established.close()


# --- bearer token -----------------------------------------------------------------------------------

def test_a_bearer_token_over_tls(serve, server_source, authority, tmp_path):
    server = serve(StatusAccess(server_source, token=TokenFile(token_file(tmp_path, "s3cret"))))
    assert fetch_status(server.url, client=ca_only(authority, tmp_path, "s3cret")) == STATUS
    code, headers, body = get(server, "/status", ca_only(authority, tmp_path, "guess"))
    assert (code, body) == (401, b"invalid token\n")
    assert headers["WWW-Authenticate"] == 'Bearer realm="ryu-nsm", error="invalid_token"'
    code, headers, body = get(server, "/status", ca_only(authority, tmp_path))
    assert (code, body, headers["WWW-Authenticate"]) == (401, b"authentication required\n",
                                                          'Bearer realm="ryu-nsm"')
    # A certificate still works beside the token.
    assert fetch_status(server.url, client=client_of(authority)) == STATUS


def test_the_token_file_is_read_again_when_it_changes(serve, tmp_path):
    path = token_file(tmp_path, "first")
    server = serve(StatusAccess(token=TokenFile(path)))  # plain HTTP: a token alone
    assert fetch_status(server.url, client=StatusClient(token="first")) == STATUS
    replacement = tmp_path / "token.new"
    replacement.write_text("second\n")
    os.replace(replacement, path)  # how a mounted Secret changes: a new file in its place
    assert fetch_status(server.url, client=StatusClient(token="second")) == STATUS
    with pytest.raises(StatusRefused, match="401"):
        fetch_status(server.url, client=StatusClient(token="first"))
    path.unlink()  # no file: no token matches
    with pytest.raises(StatusRefused, match="401"):
        fetch_status(server.url, client=StatusClient(token="second"))


def test_an_empty_or_missing_token_file_is_refused_at_start(tmp_path):
    with pytest.raises(ValueError):
        TokenFile(token_file(tmp_path, "  "))
    with pytest.raises(ValueError):
        TokenFile(tmp_path / "none")


def test_without_identity_or_token_the_endpoint_is_open_as_before(serve):
    server = serve()
    assert server.url.startswith("http://")
    assert fetch_status(server.url) == STATUS


def test_no_versions_in_the_server_header(serve, server_source, authority):
    server = serve(StatusAccess(server_source))
    assert get(server, "/healthz", client_of(authority))[1]["Server"] == "ryu-nsm"


# --- the metrics listener ---------------------------------------------------------------------------

def test_the_metrics_listener_serves_metrics_and_healthz_only(serve):
    server = serve(metrics_only=True)
    anyone = StatusClient()
    code, headers, body = get(server, "/metrics", anyone)
    assert code == 200 and headers["Content-Type"].startswith("text/plain") and body
    assert get(server, "/healthz", anyone)[0] == 200
    for path in ("/status", "/", "/status/states", "/status/fabric"):
        assert get(server, path, anyone)[0] == 404, path


# --- ryu-nsm status ---------------------------------------------------------------------------------

def run_status(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ryu_nsm.cli", "status", "--json", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_ryu_nsm_status_speaks_mtls_and_tokens(serve, server_source, authority, tmp_path):
    server = serve(StatusAccess(server_source, allow=frozenset({ADMIN}),
                                token=TokenFile(token_file(tmp_path, "s3cret"))))
    admin = pki.files(pki.svid(authority, "admin"), tmp_path / "admin")
    done = run_status("--url", server.url, "--tls-cert", str(admin[0]), "--tls-key", str(admin[1]),
                      "--tls-ca", str(admin[2]))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == STATUS
    done = run_status("--url", server.url, "--tls-ca", str(admin[2]), "--token-file",
                      str(token_file(tmp_path, "s3cret")))
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("who", ["foreign CA", "not allowed", "wrong token"])
def test_ryu_nsm_status_says_it_was_refused(serve, server_source, authority, tmp_path, who):
    server = serve(StatusAccess(server_source, allow=frozenset({ADMIN}),
                                token=TokenFile(token_file(tmp_path, "s3cret"))))
    (tmp_path / "ca.pem").write_bytes(pki.pem(authority.cert))
    if who == "wrong token":
        (tmp_path / "guess").write_text("guess\n")
        args = ["--tls-ca", str(tmp_path / "ca.pem"), "--token-file", str(tmp_path / "guess")]
    else:
        issuer = pki.ca() if who == "foreign CA" else authority
        cert, key, bundle = pki.files(pki.svid(issuer, "intruder"), tmp_path / "intruder")
        bundle.write_bytes(bundle.read_bytes() + pki.pem(authority.cert))  # it trusts the server
        args = ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(bundle)]
    done = run_status("--url", server.url, *args)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "refused this client" in done.stderr and not done.stdout


def test_ryu_nsm_status_with_an_incomplete_identity_is_a_usage_error(tmp_path):
    done = run_status("--url", "https://127.0.0.1:1", "--tls-cert", str(tmp_path / "svid.pem"))
    assert done.returncode == 2 and "go together" in done.stderr


def test_a_controller_reads_its_status_over_tls(tmp_path, authority):
    """The real controller process: HTTPS status with client certificates, the metrics listener
    beside it, and ControllerProcess polling over mTLS."""
    from ryu_nsm.lab.controller_process import ControllerProcess, free_port

    controller = pki.files(pki.svid(authority, "controller"), tmp_path / "controller")
    admin = StaticSource(pki.svid(authority, "admin"))
    metrics_port = free_port()
    args = ["--tls-cert", str(controller[0]), "--tls-key", str(controller[1]), "--tls-ca",
            str(controller[2]), "--status-allow", ADMIN, "--metrics-listen", f"127.0.0.1:{metrics_port}"]
    process = ControllerProcess(ROOT / "topologies" / "demo-chain.yaml", [], tmp_path / "controller.log",
                                extra_args=args, status_client=status_client(admin))
    with process:
        assert process.url.startswith("https://")
        assert process.status()["connections"] == []
        with pytest.raises(StatusRefused):
            fetch_status(process.url, client=client_of(authority, "intruder"))
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as reply:
                    assert b"ryu_nsm_" in reply.read()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
