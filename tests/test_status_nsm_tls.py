"""``ryu-nsm status --nsm`` against the controller's NSM gRPC face over mTLS (real gRPC on a unix
socket and loopback TCP, SVIDs from tests/pki.py): the monitor filter, the server's SPIFFE ID checked,
refusals told apart, and ``--watch`` following an SVID rotation of spiffe-helper's files."""

from __future__ import annotations

import io
import queue
import threading

import pytest

from nsm_api.connection_pb2 import MonitorScopeSelector
from ryu_nsm.cli import main
from ryu_nsm.monitor_client import print_connections
from ryu_nsm.trust.identity import FileIdentitySource, Identity
from ryu_nsm.trust.tls import FollowingChannel
from tests import pki
from tests.nsm_trust_support import chained_path
from tests.test_nsm_grpc_trust import Face, ask, nsm_request
from tests.test_trust_tls import StaticSource


@pytest.fixture(scope="module")
def authority():
    return pki.ca()


@pytest.fixture(scope="module")
def hops(authority):
    return {name: pki.svid(authority, name) for name in ("nsc", "nsmgr", "nsmgr2", "controller", "other")}


@pytest.fixture
def face(tmp_path, hops):
    served = Face(tmp_path, StaticSource(hops["controller"]))
    ask(hops["nsmgr"], served.unix, nsm_request("mine", chained_path([hops["nsc"], hops["nsmgr"]],
                                                                     hops["controller"])))
    theirs = chained_path([hops["nsmgr2"]], hops["controller"])
    ask(hops["nsmgr2"], served.unix, nsm_request("theirs", theirs))
    yield served
    served.server.stop()


def flags(identity: Identity, directory) -> list[str]:
    cert, key, bundle = pki.files(identity, directory)
    return ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(bundle)]


def status(capsys, target: str, *extra: str, name: bool = True) -> tuple[int, str, str]:
    code = main(["status", "--nsm", target, *extra, *(("--server-name", pki.SERVER_NAME) if name else ())])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("where", ["unix", "tcp"])
def test_a_caller_sees_only_the_connections_its_spiffe_id_is_on(face, hops, tmp_path, capsys, where):
    target = getattr(face, where)
    code, out, _ = status(capsys, target, *flags(hops["nsmgr"], tmp_path / "a"))
    assert code == 0 and "1 connection(s)" in out and "mine" in out and "theirs" not in out
    code, out, _ = status(capsys, target, *flags(hops["other"], tmp_path / "b"),
                          "--server-spiffe-id", hops["controller"].spiffe_id)
    assert code == 0 and "0 connection(s)" in out


def test_a_controller_with_another_spiffe_id_is_refused(face, hops, tmp_path, capsys):
    code, out, err = status(capsys, face.unix, *flags(hops["nsmgr"], tmp_path),
                            "--server-spiffe-id", "spiffe://example.org/impostor")
    assert code == 1 and out == ""
    assert "not the controller expected" in err and "spiffe://example.org/controller" in err


def test_a_refused_client_certificate_exits_1_saying_so(face, authority, tmp_path, capsys):
    stranger = pki.svid(pki.ca(), "nsmgr")  # another CA's SVID, trusting the controller's CA
    posing = Identity(stranger.spiffe_id, stranger.chain, stranger.key, (authority.cert,))
    code, out, err = status(capsys, face.unix, *flags(posing, tmp_path))
    assert code == 1 and out == ""
    assert "refused this client's certificate" in err


def test_a_controller_of_another_ca_exits_1_and_an_unreachable_one_2(face, hops, tmp_path, capsys):
    code, _, err = status(capsys, face.unix, *flags(pki.svid(pki.ca(), "nsmgr"), tmp_path / "a"))
    assert code == 1 and "does not chain to this client's trust bundle" in err
    code, _, err = status(capsys, f"unix://{tmp_path}/none.sock", *flags(hops["nsmgr"], tmp_path / "b"))
    assert code == 2 and "cannot reach" in err


def test_a_plain_client_cannot_read_an_mtls_controller(face, capsys):
    code, _, err = status(capsys, face.unix)
    assert code == 2 and "UNAVAILABLE" in err


class Lines(io.TextIOBase):
    """What print_connections writes, line by line, into a queue."""

    def __init__(self):
        self.lines: queue.Queue = queue.Queue()

    def write(self, text):
        for line in text.splitlines():
            self.lines.put(line)
        return len(text)

    def until(self, word: str) -> list[str]:
        seen = []
        while word not in (line := self.lines.get(timeout=10)):
            seen.append(line)
        return [*seen, line]


def test_a_watch_follows_a_rotation_of_the_svid_files(face, hops, tmp_path):
    """The files rotate to another SVID (here another SPIFFE ID, so the new one shows): the watch
    goes on, as the new identity, on a new channel."""
    cert, key, bundle = pki.files(hops["nsmgr"], tmp_path)
    source = FileIdentitySource(cert, key, bundle, interval=0.05)
    follower = FollowingChannel(face.unix, source, pki.SERVER_NAME, hops["controller"].spiffe_id)
    out = Lines()
    watching = threading.Thread(target=print_connections, args=(follower, MonitorScopeSelector(), True, out))
    watching.start()
    try:
        assert any("mine" in line for line in out.until("mine"))
        pki.files(hops["nsmgr2"], tmp_path)
        seen = out.until("theirs")
        assert any("identity rotated" in line for line in seen)
        assert follower.generation == 1
        later = chained_path([hops["nsmgr2"]], hops["controller"])
        ask(hops["nsmgr2"], face.unix, nsm_request("later", later))
        assert any("later" in line for line in out.until("later"))
    finally:
        follower.close()
        source.close()
        watching.join(10)
    assert not watching.is_alive()


def test_a_server_name_not_in_the_svid_says_which_flag_to_give(face, hops, tmp_path, capsys):
    code, _, err = status(capsys, face.tcp, *flags(hops["nsmgr"], tmp_path), name=False)
    assert code == 2 and "give --server-name" in err
