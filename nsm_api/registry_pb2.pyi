import datetime

from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Metadata(_message.Message):
    __slots__ = ("labels",)
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LABELS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.ScalarMap[str, str]
    def __init__(self, labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Destination(_message.Message):
    __slots__ = ("destination_selector", "weight")
    class DestinationSelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DESTINATION_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    destination_selector: _containers.ScalarMap[str, str]
    weight: int
    def __init__(self, destination_selector: _Optional[_Mapping[str, str]] = ..., weight: _Optional[int] = ...) -> None: ...

class Match(_message.Message):
    __slots__ = ("source_selector", "routes", "fallthrough", "metadata")
    class SourceSelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SOURCE_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    FALLTHROUGH_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    source_selector: _containers.ScalarMap[str, str]
    routes: _containers.RepeatedCompositeFieldContainer[Destination]
    fallthrough: bool
    metadata: Metadata
    def __init__(self, source_selector: _Optional[_Mapping[str, str]] = ..., routes: _Optional[_Iterable[_Union[Destination, _Mapping]]] = ..., fallthrough: _Optional[bool] = ..., metadata: _Optional[_Union[Metadata, _Mapping]] = ...) -> None: ...

class NetworkService(_message.Message):
    __slots__ = ("name", "payload", "matches", "path_ids")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    PATH_IDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    payload: str
    matches: _containers.RepeatedCompositeFieldContainer[Match]
    path_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., payload: _Optional[str] = ..., matches: _Optional[_Iterable[_Union[Match, _Mapping]]] = ..., path_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class NetworkServiceLabels(_message.Message):
    __slots__ = ("labels",)
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LABELS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.ScalarMap[str, str]
    def __init__(self, labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class NetworkServiceEndpoint(_message.Message):
    __slots__ = ("name", "network_service_names", "network_service_labels", "url", "expiration_time", "initial_registration_time", "path_ids")
    class NetworkServiceLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: NetworkServiceLabels
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[NetworkServiceLabels, _Mapping]] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    NETWORK_SERVICE_NAMES_FIELD_NUMBER: _ClassVar[int]
    NETWORK_SERVICE_LABELS_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    EXPIRATION_TIME_FIELD_NUMBER: _ClassVar[int]
    INITIAL_REGISTRATION_TIME_FIELD_NUMBER: _ClassVar[int]
    PATH_IDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    network_service_names: _containers.RepeatedScalarFieldContainer[str]
    network_service_labels: _containers.MessageMap[str, NetworkServiceLabels]
    url: str
    expiration_time: _timestamp_pb2.Timestamp
    initial_registration_time: _timestamp_pb2.Timestamp
    path_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., network_service_names: _Optional[_Iterable[str]] = ..., network_service_labels: _Optional[_Mapping[str, NetworkServiceLabels]] = ..., url: _Optional[str] = ..., expiration_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., initial_registration_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., path_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class NetworkServiceQuery(_message.Message):
    __slots__ = ("network_service", "watch")
    NETWORK_SERVICE_FIELD_NUMBER: _ClassVar[int]
    WATCH_FIELD_NUMBER: _ClassVar[int]
    network_service: NetworkService
    watch: bool
    def __init__(self, network_service: _Optional[_Union[NetworkService, _Mapping]] = ..., watch: _Optional[bool] = ...) -> None: ...

class NetworkServiceEndpointQuery(_message.Message):
    __slots__ = ("network_service_endpoint", "watch")
    NETWORK_SERVICE_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    WATCH_FIELD_NUMBER: _ClassVar[int]
    network_service_endpoint: NetworkServiceEndpoint
    watch: bool
    def __init__(self, network_service_endpoint: _Optional[_Union[NetworkServiceEndpoint, _Mapping]] = ..., watch: _Optional[bool] = ...) -> None: ...

class NetworkServiceResponse(_message.Message):
    __slots__ = ("network_service", "deleted")
    NETWORK_SERVICE_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    network_service: NetworkService
    deleted: bool
    def __init__(self, network_service: _Optional[_Union[NetworkService, _Mapping]] = ..., deleted: _Optional[bool] = ...) -> None: ...

class NetworkServiceEndpointResponse(_message.Message):
    __slots__ = ("network_service_endpoint", "deleted")
    NETWORK_SERVICE_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    network_service_endpoint: NetworkServiceEndpoint
    deleted: bool
    def __init__(self, network_service_endpoint: _Optional[_Union[NetworkServiceEndpoint, _Mapping]] = ..., deleted: _Optional[bool] = ...) -> None: ...
