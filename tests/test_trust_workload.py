"""WorkloadApiSource against a Workload API emulator over a unix socket."""

from __future__ import annotations

import threading

import grpc
import pytest
from spiffe._proto import workload_pb2, workload_pb2_grpc

from ryu_nsm.trust.workload import WorkloadApiSource
from tests import pki
from tests.spiffe_emulator import WorkloadApiEmulator


@pytest.fixture
def authority():
    return pki.ca()


@pytest.fixture
def emulator(tmp_path, authority):
    served = WorkloadApiEmulator(tmp_path / "agent.sock", pki.svid(authority, "forwarder"))
    yield served
    served.stop()


def test_the_emulator_requires_the_security_header(emulator):
    with grpc.insecure_channel(emulator.address) as channel:
        stream = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel).FetchX509SVID(
            workload_pb2.X509SVIDRequest(), timeout=5)
        with pytest.raises(grpc.RpcError) as refused:
            next(stream)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and emulator.refused == 1


def test_reads_the_svid_and_follows_a_rotation_pushed_on_the_stream(emulator, authority):
    source = WorkloadApiSource(emulator.address, timeout=10)
    rotated = threading.Event()
    seen = []
    source.subscribe(lambda identity: (seen.append(identity), rotated.set()))
    try:
        first = source.current()
        assert first.spiffe_id == "spiffe://example.org/forwarder"
        assert first.bundle == (authority.cert,)
        assert first.key.public_key() == first.chain[0].public_key()
        renewed = pki.svid(authority, "forwarder")
        emulator.push(renewed)
        assert rotated.wait(10)
        assert source.current().chain == renewed.chain == seen[0].chain
        assert emulator.refused == 0
    finally:
        source.close()


def test_fails_without_a_workload_api(tmp_path):
    with pytest.raises(ConnectionError, match="no X509-SVID"):
        WorkloadApiSource(f"unix://{tmp_path}/nothing.sock", timeout=1)
