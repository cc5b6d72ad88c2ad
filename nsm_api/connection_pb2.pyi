import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from nsm_api import connectioncontext_pb2 as _connectioncontext_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UP: _ClassVar[State]
    DOWN: _ClassVar[State]
    REFRESH_REQUESTED: _ClassVar[State]
    RESELECT_REQUESTED: _ClassVar[State]

class ConnectionEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INITIAL_STATE_TRANSFER: _ClassVar[ConnectionEventType]
    UPDATE: _ClassVar[ConnectionEventType]
    DELETE: _ClassVar[ConnectionEventType]
UP: State
DOWN: State
REFRESH_REQUESTED: State
RESELECT_REQUESTED: State
INITIAL_STATE_TRANSFER: ConnectionEventType
UPDATE: ConnectionEventType
DELETE: ConnectionEventType

class Mechanism(_message.Message):
    __slots__ = ("cls", "type", "parameters")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CLS_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    cls: str
    type: str
    parameters: _containers.ScalarMap[str, str]
    def __init__(self, cls: _Optional[str] = ..., type: _Optional[str] = ..., parameters: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PathSegment(_message.Message):
    __slots__ = ("name", "id", "token", "expires", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: str
    token: str
    expires: _timestamp_pb2.Timestamp
    metrics: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., id: _Optional[str] = ..., token: _Optional[str] = ..., expires: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., metrics: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Path(_message.Message):
    __slots__ = ("index", "path_segments")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PATH_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    index: int
    path_segments: _containers.RepeatedCompositeFieldContainer[PathSegment]
    def __init__(self, index: _Optional[int] = ..., path_segments: _Optional[_Iterable[_Union[PathSegment, _Mapping]]] = ...) -> None: ...

class Connection(_message.Message):
    __slots__ = ("id", "network_service", "mechanism", "context", "labels", "path", "network_service_endpoint_name", "payload", "state")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_SERVICE_FIELD_NUMBER: _ClassVar[int]
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    NETWORK_SERVICE_ENDPOINT_NAME_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    id: str
    network_service: str
    mechanism: Mechanism
    context: _connectioncontext_pb2.ConnectionContext
    labels: _containers.ScalarMap[str, str]
    path: Path
    network_service_endpoint_name: str
    payload: str
    state: State
    def __init__(self, id: _Optional[str] = ..., network_service: _Optional[str] = ..., mechanism: _Optional[_Union[Mechanism, _Mapping]] = ..., context: _Optional[_Union[_connectioncontext_pb2.ConnectionContext, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., path: _Optional[_Union[Path, _Mapping]] = ..., network_service_endpoint_name: _Optional[str] = ..., payload: _Optional[str] = ..., state: _Optional[_Union[State, str]] = ...) -> None: ...

class MonitorScopeSelector(_message.Message):
    __slots__ = ("path_segments", "network_services")
    PATH_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    NETWORK_SERVICES_FIELD_NUMBER: _ClassVar[int]
    path_segments: _containers.RepeatedCompositeFieldContainer[PathSegment]
    network_services: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, path_segments: _Optional[_Iterable[_Union[PathSegment, _Mapping]]] = ..., network_services: _Optional[_Iterable[str]] = ...) -> None: ...

class ConnectionEvent(_message.Message):
    __slots__ = ("type", "connections")
    class ConnectionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Connection
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Connection, _Mapping]] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    type: ConnectionEventType
    connections: _containers.MessageMap[str, Connection]
    def __init__(self, type: _Optional[_Union[ConnectionEventType, str]] = ..., connections: _Optional[_Mapping[str, Connection]] = ...) -> None: ...
