"""OpenFlow over TLS on real netdev OVS bridges (``ovs-vsctl set-ssl`` + ``set-controller ssl:``), with
dev-CA SVIDs for the controller (``--tls-cert/--tls-key/--tls-ca``) and for Open vSwitch.

Open vSwitch has ONE SSL configuration per ovsdb (``set-ssl`` is global, not per bridge): the tests
set it for their run and put the previous one back at the end. It only matters to ``ssl:`` targets,
so other tests' ``tcp:`` controllers are untouched.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from ryu_nsm.lab.controller_process import ControllerProcess, wait_for
from ryu_nsm.trust import devca

from .test_controller_ovs import flows
from .two_bridges import build_echo, remove, sh

pytestmark = pytest.mark.ovs

A, B = "tfa", "tfb"
NS_C, NS_S = "tf-c", "tf-s"
CONN = "default/client/nsm-1"
OVS_ID = "spiffe://example.org/ovs/node1"


def _get_ssl() -> tuple[str, str, str] | None:
    """Open vSwitch's SSL configuration (key, cert, CA) as ``get-ssl`` shows it; None when unset."""
    shown = dict(re.findall(r"^(Private key|Certificate|CA Certificate): (.*)$", sh("ovs-vsctl", "get-ssl"),
                            re.M))
    return (shown["Private key"], shown["Certificate"], shown["CA Certificate"]) if shown else None


@pytest.fixture
def ovs_ssl():
    """Yields set(key, cert, ca) for Open vSwitch's SSL; the earlier configuration is restored after."""
    before = _get_ssl()

    def set_ssl(key: Path, cert: Path, ca: Path) -> None:
        sh("ovs-vsctl", "set-ssl", str(key), str(cert), str(ca))

    try:
        yield set_ssl
    finally:
        if before is None:
            sh("ovs-vsctl", "del-ssl", check=False)
        else:
            sh("ovs-vsctl", "set-ssl", *before, check=False)


@pytest.fixture
def pki(tmp_path):
    """A dev CA with SVIDs for the controller and for Open vSwitch, and a stranger CA's switch SVID
    (whose bundle still trusts our CA, so only the controller can refuse it): their directories."""
    devca.init_ca(tmp_path / "ca")
    devca.issue(tmp_path / "ca", "spiffe://example.org/ryu-nsm", tmp_path / "controller")
    devca.issue(tmp_path / "ca", OVS_ID, tmp_path / "ovs")
    devca.init_ca(tmp_path / "stranger-ca")
    devca.issue(tmp_path / "stranger-ca", OVS_ID, tmp_path / "stranger")
    (tmp_path / "stranger" / devca.SVID_BUNDLE).write_bytes((tmp_path / "ca" / devca.CA_CERT).read_bytes())
    return tmp_path


@pytest.fixture
def bridges(tmp_path):
    remove(A, B, (NS_C, NS_S))
    try:
        topo, requests = build_echo(tmp_path, "tls", A, B, (0x7F1, 0x7F2), (NS_C, NS_S), "10.93.0")
        doc = yaml.safe_load(topo.read_text())
        for switch in doc["switches"]:  # both bridges share Open vSwitch's one certificate
            switch["certificate"] = {"spiffe_id": OVS_ID}
        topo.write_text(yaml.safe_dump(doc))
        yield topo, requests
    finally:
        remove(A, B, (NS_C, NS_S))


def svid_files(directory: Path) -> tuple[Path, Path, Path]:
    return directory / devca.SVID_KEY, directory / devca.SVID, directory / devca.SVID_BUNDLE


def identity_args(directory: Path) -> list[str]:
    key, cert, ca = svid_files(directory)
    return ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(ca)]


def controller_record(bridge: str) -> str:
    return sh("ovs-vsctl", "get", "bridge", bridge, "controller").strip("[]\n")


def connected(bridge: str) -> bool:
    record = controller_record(bridge)
    return bool(record) and sh("ovs-vsctl", "get", "controller", record, "is_connected").strip() == "true"


def served_serial(port: int, switch_dir: Path) -> int:
    """The serial of the certificate the controller serves to a new handshake."""
    key, cert, ca = svid_files(switch_dir)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(ca)
    context.load_cert_chain(cert, key)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw) as conn:
        return x509.load_der_x509_certificate(conn.getpeercert(binary_form=True)).serial_number


def test_switches_with_good_certificates_are_programmed_and_survive_a_rotation(bridges, pki, ovs_ssl,
                                                                                tmp_path):
    topo, requests = bridges
    ovs_ssl(*svid_files(pki / "ovs"))
    args = [*identity_args(pki / "controller"), "--audit-interval", "1"]
    with ControllerProcess(topo, [requests], tmp_path / "ctl.log", extra_args=args, scheme="ssl") as ctl:
        for br in (A, B):
            sh("ovs-vsctl", "set-controller", br, f"ssl:127.0.0.1:{ctl.of_port}")
        ctl.wait_connections(lambda cs: cs.get(CONN, {}).get("state") == "up", 30)
        assert wait_for(lambda: connected(A) and connected(B), 10)
        assert sh("ovs-vsctl", "get-controller", A).strip() == f"ssl:127.0.0.1:{ctl.of_port}"
        ping = ["ip", "netns", "exec", NS_C, "ping", "-c", "2", "-i", "0.2", "-W", "1", "10.93.0.2"]
        assert wait_for(lambda: sh(*ping, check=False).count(" bytes from ") == 2, 10, 0.5)
        installed = {br: flows(br) for br in (A, B)}
        assert all(installed.values())
        old_serial = served_serial(ctl.of_port, pki / "ovs")

        # The controller's SVID rotates (spiffe-helper rewrites the files): the switches stay connected,
        # nothing is re-sent, and the next handshake gets the new certificate.
        programs, connects = ctl.log().count("program "), ctl.log().count(" connected with ")
        rotated = devca.issue(pki / "ca", "spiffe://example.org/ryu-nsm", pki / "controller")
        assert wait_for(lambda: "identity rotated" in ctl.log(), 15), ctl.log()
        assert served_serial(ctl.of_port, pki / "ovs") == rotated.chain[0].serial_number != old_serial
        time.sleep(2)  # two audits
        assert connected(A) and connected(B)
        log = ctl.log()
        assert log.count(" connected with ") == connects and "disconnected" not in log, "a switch reconnected"
        assert log.count("program ") == programs, log
        for br in (A, B):
            now = flows(br)
            assert now.keys() == installed[br].keys()
            assert all(now[k]["duration"] >= installed[br][k]["duration"] for k in now), "flows re-installed"

        # A reconnect after the rotation handshakes with the new certificate.
        sh("ovs-vsctl", "del-controller", A)
        assert wait_for(lambda: "switch tfa disconnected" in ctl.log(), 15)
        sh("ovs-vsctl", "set-controller", A, f"ssl:127.0.0.1:{ctl.of_port}")
        assert wait_for(lambda: connected(A), 15)
        assert wait_for(lambda: all(s["connected"] for s in ctl.status()["switches"]), 15)
        assert wait_for(lambda: sh(*ping, check=False).count(" bytes from ") == 2, 10, 0.5)
        assert ctl.errors() == []


def test_a_foreign_certificate_and_plain_tcp_never_connect(bridges, pki, ovs_ssl, tmp_path):
    topo, requests = bridges
    ovs_ssl(*svid_files(pki / "stranger"))
    args = identity_args(pki / "controller")
    with ControllerProcess(topo, [requests], tmp_path / "ctl.log", extra_args=args, scheme="ssl") as ctl:
        sh("ovs-vsctl", "set-controller", A, f"ssl:127.0.0.1:{ctl.of_port}")
        sh("ovs-vsctl", "set-controller", B, f"tcp:127.0.0.1:{ctl.of_port}")
        assert wait_for(lambda: ctl.log().count("handshake with") >= 2, 15), ctl.log()
        assert "certificate verify failed" in ctl.log() and "wrong version number" in ctl.log()
        time.sleep(2)  # Open vSwitch retries: still nobody gets in
        assert not connected(A) and not connected(B)
        assert not any(s["connected"] for s in ctl.status()["switches"])
        assert flows(A) == {} and flows(B) == {}
