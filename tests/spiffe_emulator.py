"""A SPIFFE Workload API for tests: FetchX509SVID over real gRPC on a unix socket, with the
``workload.spiffe.io: true`` header required as SPIRE's agent requires it; ``push`` sends a new
SVID down every open stream (a rotation)."""

from __future__ import annotations

import threading
from concurrent import futures
from pathlib import Path

import grpc
from cryptography.hazmat.primitives import serialization
from spiffe._proto import workload_pb2, workload_pb2_grpc

from ryu_nsm.trust.identity import Identity

DER = serialization.Encoding.DER


def response_for(identity: Identity) -> workload_pb2.X509SVIDResponse:
    """The Workload API's answer carrying ``identity`` (DER chain, PKCS#8 key, DER bundle)."""
    key = identity.key.private_bytes(DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    svid = workload_pb2.X509SVID(spiffe_id=identity.spiffe_id,
                                 x509_svid=b"".join(cert.public_bytes(DER) for cert in identity.chain),
                                 x509_svid_key=key,
                                 bundle=b"".join(cert.public_bytes(DER) for cert in identity.bundle))
    return workload_pb2.X509SVIDResponse(svids=[svid])


class WorkloadApiEmulator(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
    def __init__(self, socket_path: Path, identity: Identity):
        self.address = f"unix://{socket_path}"
        self.refused = 0  # requests without the security header
        self._identity = identity
        self._changed = threading.Condition()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(self, self._server)
        self._server.add_insecure_port(self.address)
        self._server.start()

    def push(self, identity: Identity) -> None:
        with self._changed:
            self._identity = identity
            self._changed.notify_all()

    def stop(self) -> None:
        self._server.stop(None)

    def FetchX509SVID(self, request, context):
        if dict(context.invocation_metadata()).get("workload.spiffe.io") != "true":
            self.refused += 1
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")
        sent = None
        while context.is_active():
            with self._changed:
                if self._identity is sent:
                    self._changed.wait(0.1)
                    continue
                sent = self._identity
            yield response_for(sent)
