"""OpenFlow over TLS without Open vSwitch: os-ken's listener (oskenrun with a SwitchTls) and a minimal
switch in Python that speaks the OpenFlow 1.3 handshake over mutual TLS with dev-CA SVIDs. The same
cases on real bridges are in test_openflow_tls_ovs.py."""

from __future__ import annotations

import dataclasses
import re
import socket
import ssl
import struct
import time

import pytest
from cryptography import x509

from ryu_nsm.cli import _openflow_target, build_parser
from ryu_nsm.core.fabric import Fabric, Switch, SwitchCertificate
from ryu_nsm.openflow.launch import ProbeApp, run_apps
from ryu_nsm.openflow.switch_tls import SwitchTls, fabric_check
from ryu_nsm.trust import tls
from ryu_nsm.trust.options import IdentityOptionsError, identity_source
from tests import pki
from tests.test_trust_tls import StaticSource

OFP13 = 4
HELLO, FEATURES_REQUEST, FEATURES_REPLY, ECHO_REQUEST, ECHO_REPLY = 0, 5, 6, 2, 3
MULTIPART_REQUEST, MULTIPART_REPLY, PORT_DESC = 18, 19, 13


def header(msg_type: int, length: int, xid: int) -> bytes:
    return struct.pack("!BBHI", OFP13, msg_type, length, xid)


class TlsSwitch:
    """The switch side of the handshake: HELLO, FEATURES_REPLY with ``dpid``, an empty port list;
    echo requests answered while ``pump`` runs."""

    def __init__(self, port: int, identity, dpid: int):
        context = tls.client_context(StaticSource(identity))
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock = context.wrap_socket(raw)
        self.dpid = dpid
        self.server_cert = x509.load_der_x509_certificate(self.sock.getpeercert(binary_form=True))

    def _read(self) -> tuple[int, int, bytes]:
        head = self._exactly(8)
        _, msg_type, length, xid = struct.unpack("!BBHI", head)
        return msg_type, xid, self._exactly(length - 8)

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("controller closed the connection")
            data += chunk
        return data

    def handshake(self) -> None:
        self.sock.sendall(header(HELLO, 8, 1))
        self.pump(until=MULTIPART_REQUEST)

    def pump(self, until: int | None = None) -> None:
        """Answer the controller until it sends ``until`` (answered too)."""
        while True:
            msg_type, xid, body = self._read()
            if msg_type == FEATURES_REQUEST:
                self.sock.sendall(header(FEATURES_REPLY, 32, xid)
                                  + struct.pack("!QIBB2xII", self.dpid, 0, 254, 0, 0, 0))
            elif msg_type == ECHO_REQUEST:
                self.sock.sendall(header(ECHO_REPLY, 8 + len(body), xid) + body)
            elif msg_type == MULTIPART_REQUEST:
                self.sock.sendall(header(MULTIPART_REPLY, 16, xid) + struct.pack("!HH4x", PORT_DESC, 0))
            if msg_type == until:
                return

    def close(self) -> None:
        self.sock.close()


FABRIC = Fabric("tls", (Switch("s1", 1, SwitchCertificate(spiffe_id="spiffe://example.org/switch/s1")),
                        Switch("s2", 2, SwitchCertificate(cn="s2.switches")), Switch("s3", 3)))


@pytest.fixture
def authority():
    return pki.ca()


@pytest.fixture
def controller(authority):
    source = StaticSource(pki.svid(authority, "ryu-nsm"))
    with run_apps([ProbeApp], tls=SwitchTls(tls.server_context(source), fabric_check(FABRIC),
                                            handshake_timeout=1.0)) as run:
        run.source = source
        yield run


def closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except (ConnectionError, ssl.SSLError):
        return True


def test_a_switch_with_a_certificate_from_the_bundle_connects(controller, authority):
    switch = TlsSwitch(controller.port, pki.svid(authority, "switch/s1"), dpid=1)
    switch.handshake()
    assert controller.scheme == "ssl"
    assert controller.app(ProbeApp).wait_datapath(1, timeout=5).id == 1
    switch.close()


def test_a_certificate_from_another_ca_is_refused_in_the_handshake(controller, authority, caplog):
    # the switch trusts the controller's CA; its own certificate comes from another
    stranger = dataclasses.replace(pki.svid(pki.ca(), "switch/s1"), bundle=(authority.cert,))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        switch = TlsSwitch(controller.port, stranger, dpid=1)
        switch.handshake()  # TLS 1.3: the client learns of the refusal at its first read
    with pytest.raises(TimeoutError):
        controller.app(ProbeApp).wait_datapath(timeout=0.5)
    assert "certificate verify failed" in caplog.text


def test_plain_tcp_and_a_silent_peer_are_refused(controller):
    plain = socket.create_connection(("127.0.0.1", controller.port))
    plain.sendall(header(HELLO, 8, 1))
    assert closed_by_peer(plain)
    silent = socket.create_connection(("127.0.0.1", controller.port))
    started = time.monotonic()
    assert closed_by_peer(silent)  # after the handshake timeout (1 s here)
    assert time.monotonic() - started < 4
    with pytest.raises(TimeoutError):
        controller.app(ProbeApp).wait_datapath(timeout=0.2)


@pytest.mark.parametrize(("name", "dpid"), [("switch/s2", 1), ("switch/s1", 3)])
def test_a_switch_posing_as_another_is_disconnected(controller, authority, name, dpid):
    """s2's certificate announcing s1's dpid, and s1's announcing the unbound s3's."""
    switch = TlsSwitch(controller.port, pki.svid(authority, name), dpid=dpid)
    with pytest.raises((ConnectionError, ssl.SSLError)):
        switch.handshake()
    with pytest.raises(TimeoutError):
        controller.app(ProbeApp).wait_datapath(timeout=0.3)


def test_rotation_serves_new_handshakes_and_keeps_established_switches(controller, authority):
    first = TlsSwitch(controller.port, pki.svid(authority, "switch/s1"), dpid=1)
    first.handshake()
    datapath = controller.app(ProbeApp).wait_datapath(1, timeout=5)
    old_serial = first.server_cert.serial_number
    controller.source.rotate(pki.svid(authority, "ryu-nsm"))
    second = TlsSwitch(controller.port, pki.svid(authority, "switch/s3"), dpid=3)
    second.handshake()
    assert second.server_cert.serial_number != old_serial
    assert controller.app(ProbeApp).wait_datapath(3, timeout=5)
    # the first switch's connection lives on: os-ken still talks to it over the old session
    datapath.send_msg(datapath.ofproto_parser.OFPEchoRequest(datapath, b"still"))
    first.pump(until=ECHO_REQUEST)
    assert controller.app(ProbeApp).datapaths[1] is datapath
    first.close()
    second.close()


def test_fabric_check_binds_certificates_to_switches(authority):
    check = fabric_check(FABRIC)
    s1, s2 = pki.svid(authority, "switch/s1").chain[0], pki.svid(authority, "switch/s2").chain[0]
    assert check(1, s1) is None
    assert "not switch s1's identity" in check(1, s2)
    assert "identity of switch s1" in check(3, s1)
    assert check(3, s2) is None and check(99, s2) is None  # no switch names s2's SPIFFE ID
    assert "not switch s2's identity" in check(2, s2)  # s2 wants CN=s2.switches


@pytest.mark.parametrize(("text", "target"), [
    ("ssl:0.0.0.0:6653", ("ssl", "0.0.0.0", 6653)), ("tcp:10.0.0.1:6633", ("tcp", "10.0.0.1", 6633)),
    ("127.0.0.1:6653", ("tcp", "127.0.0.1", 6653)), ("ssl:127.0.0.1", ("ssl", "127.0.0.1", 6653)),
])
def test_listen_targets(text, target):
    assert _openflow_target(text) == target


def test_identity_options(tmp_path, authority):
    parse = build_parser().parse_args
    base = ["controller", "--topology", "t.yaml"]
    assert identity_source(parse(base)) is None
    with pytest.raises(IdentityOptionsError, match="go together"):
        identity_source(parse([*base, "--tls-cert", "a.pem"]))
    with pytest.raises(IdentityOptionsError, match="not both"):
        identity_source(parse([*base, "--tls-cert", "a", "--tls-key", "b", "--tls-ca", "c",
                               "--spiffe-socket", "unix:///x"]))
    with pytest.raises(IdentityOptionsError, match="no identity"):
        identity_source(parse([*base, "--tls-cert", "a", "--tls-key", "b", "--tls-ca", "c"]))
    cert, key, ca = pki.files(pki.svid(authority, "ryu-nsm"), tmp_path)
    source = identity_source(parse([*base, "--tls-cert", str(cert), "--tls-key", str(key),
                                    "--tls-ca", str(ca)]))
    try:
        assert source.current().spiffe_id == "spiffe://example.org/ryu-nsm"
    finally:
        source.close()


def test_ssl_listen_needs_an_identity(capsys):
    from ryu_nsm import cli

    topology = "topologies/demo-chain.yaml"
    assert cli.main(["controller", "--topology", topology, "--listen", "ssl:127.0.0.1:0"]) == cli.EXIT_USAGE
    assert "needs an identity" in capsys.readouterr().err


def test_topology_names_switch_certificates(tmp_path):
    from ryu_nsm.sources.topology import TopologyError, load_topology

    path = tmp_path / "t.yaml"
    path.write_text("switches:\n  - {name: s1, certificate: {spiffe_id: spiffe://example.org/switch/s1}}\n"
                    "  - {name: s2, dpid: 0x9, certificate: {cn: s2.switches}}\n  - s3\n")
    switches = load_topology(path).switches
    assert [switch.certificate for switch in switches] == [
        SwitchCertificate(spiffe_id="spiffe://example.org/switch/s1"), SwitchCertificate(cn="s2.switches"),
        None]
    for bad, error in (("{spiffe_id: https://example.org/s1}", "switches[0].certificate.spiffe_id: not a "),
                       ("{}", "expected spiffe_id, cn or both"), ("{cn: 3}", "certificate.cn: expected"),
                       ("{name: x}", "certificate.name: unknown key")):
        path.write_text(f"switches:\n  - {{name: s1, certificate: {bad}}}\n")
        with pytest.raises(TopologyError, match=re.escape(error)):
            load_topology(path)
