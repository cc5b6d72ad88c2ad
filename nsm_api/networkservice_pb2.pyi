from google.protobuf import empty_pb2 as _empty_pb2
from nsm_api import connection_pb2 as _connection_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NetworkServiceRequest(_message.Message):
    __slots__ = ("connection", "mechanism_preferences")
    CONNECTION_FIELD_NUMBER: _ClassVar[int]
    MECHANISM_PREFERENCES_FIELD_NUMBER: _ClassVar[int]
    connection: _connection_pb2.Connection
    mechanism_preferences: _containers.RepeatedCompositeFieldContainer[_connection_pb2.Mechanism]
    def __init__(self, connection: _Optional[_Union[_connection_pb2.Connection, _Mapping]] = ..., mechanism_preferences: _Optional[_Iterable[_Union[_connection_pb2.Mechanism, _Mapping]]] = ...) -> None: ...
