"""The refusal shared by ryu-nsm's NSM gRPC servers (the controller's face and the forwarder)."""

from __future__ import annotations

import grpc


class RequestError(Exception):
    """A Request or Close refused, with the gRPC status code and message to answer it with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
