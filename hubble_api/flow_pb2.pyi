import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import wrappers_pb2 as _wrappers_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FlowType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNKNOWN_TYPE: _ClassVar[FlowType]
    L3_L4: _ClassVar[FlowType]
    L7: _ClassVar[FlowType]
    SOCK: _ClassVar[FlowType]

class IPVersion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IP_NOT_USED: _ClassVar[IPVersion]
    IPv4: _ClassVar[IPVersion]
    IPv6: _ClassVar[IPVersion]

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNKNOWN: _ClassVar[Verdict]
    FORWARDED: _ClassVar[Verdict]
    DROPPED: _ClassVar[Verdict]
    ERROR: _ClassVar[Verdict]
    AUDIT: _ClassVar[Verdict]
    REDIRECTED: _ClassVar[Verdict]
    TRACED: _ClassVar[Verdict]
    TRANSLATED: _ClassVar[Verdict]

class DropReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DROP_REASON_UNKNOWN: _ClassVar[DropReason]
    POLICY_DENIED: _ClassVar[DropReason]
    REACHED_EDT_RATE_LIMITING_DROP_HORIZON: _ClassVar[DropReason]
    UNKNOWN_SENDER: _ClassVar[DropReason]

class TrafficDirection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAFFIC_DIRECTION_UNKNOWN: _ClassVar[TrafficDirection]
    INGRESS: _ClassVar[TrafficDirection]
    EGRESS: _ClassVar[TrafficDirection]

class LostEventSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNKNOWN_LOST_EVENT_SOURCE: _ClassVar[LostEventSource]
    PERF_EVENT_RING_BUFFER: _ClassVar[LostEventSource]
    OBSERVER_EVENTS_QUEUE: _ClassVar[LostEventSource]
    HUBBLE_RING_BUFFER: _ClassVar[LostEventSource]
UNKNOWN_TYPE: FlowType
L3_L4: FlowType
L7: FlowType
SOCK: FlowType
IP_NOT_USED: IPVersion
IPv4: IPVersion
IPv6: IPVersion
VERDICT_UNKNOWN: Verdict
FORWARDED: Verdict
DROPPED: Verdict
ERROR: Verdict
AUDIT: Verdict
REDIRECTED: Verdict
TRACED: Verdict
TRANSLATED: Verdict
DROP_REASON_UNKNOWN: DropReason
POLICY_DENIED: DropReason
REACHED_EDT_RATE_LIMITING_DROP_HORIZON: DropReason
UNKNOWN_SENDER: DropReason
TRAFFIC_DIRECTION_UNKNOWN: TrafficDirection
INGRESS: TrafficDirection
EGRESS: TrafficDirection
UNKNOWN_LOST_EVENT_SOURCE: LostEventSource
PERF_EVENT_RING_BUFFER: LostEventSource
OBSERVER_EVENTS_QUEUE: LostEventSource
HUBBLE_RING_BUFFER: LostEventSource

class Flow(_message.Message):
    __slots__ = ("time", "verdict", "ethernet", "IP", "l4", "source", "destination", "Type", "node_name", "source_service", "destination_service", "traffic_direction", "drop_reason_desc", "is_reply", "uuid", "Summary")
    TIME_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    ETHERNET_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    L4_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_SERVICE_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_DIRECTION_FIELD_NUMBER: _ClassVar[int]
    DROP_REASON_DESC_FIELD_NUMBER: _ClassVar[int]
    IS_REPLY_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    verdict: Verdict
    ethernet: Ethernet
    IP: IP
    l4: Layer4
    source: Endpoint
    destination: Endpoint
    Type: FlowType
    node_name: str
    source_service: Service
    destination_service: Service
    traffic_direction: TrafficDirection
    drop_reason_desc: DropReason
    is_reply: _wrappers_pb2.BoolValue
    uuid: str
    Summary: str
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., ethernet: _Optional[_Union[Ethernet, _Mapping]] = ..., IP: _Optional[_Union[IP, _Mapping]] = ..., l4: _Optional[_Union[Layer4, _Mapping]] = ..., source: _Optional[_Union[Endpoint, _Mapping]] = ..., destination: _Optional[_Union[Endpoint, _Mapping]] = ..., Type: _Optional[_Union[FlowType, str]] = ..., node_name: _Optional[str] = ..., source_service: _Optional[_Union[Service, _Mapping]] = ..., destination_service: _Optional[_Union[Service, _Mapping]] = ..., traffic_direction: _Optional[_Union[TrafficDirection, str]] = ..., drop_reason_desc: _Optional[_Union[DropReason, str]] = ..., is_reply: _Optional[_Union[_wrappers_pb2.BoolValue, _Mapping]] = ..., uuid: _Optional[str] = ..., Summary: _Optional[str] = ...) -> None: ...

class Layer4(_message.Message):
    __slots__ = ("TCP", "UDP", "ICMPv4", "ICMPv6", "SCTP")
    TCP_FIELD_NUMBER: _ClassVar[int]
    UDP_FIELD_NUMBER: _ClassVar[int]
    ICMPV4_FIELD_NUMBER: _ClassVar[int]
    ICMPV6_FIELD_NUMBER: _ClassVar[int]
    SCTP_FIELD_NUMBER: _ClassVar[int]
    TCP: TCP
    UDP: UDP
    ICMPv4: ICMPv4
    ICMPv6: ICMPv6
    SCTP: SCTP
    def __init__(self, TCP: _Optional[_Union[TCP, _Mapping]] = ..., UDP: _Optional[_Union[UDP, _Mapping]] = ..., ICMPv4: _Optional[_Union[ICMPv4, _Mapping]] = ..., ICMPv6: _Optional[_Union[ICMPv6, _Mapping]] = ..., SCTP: _Optional[_Union[SCTP, _Mapping]] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("ID", "identity", "namespace", "labels", "pod_name")
    ID_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    POD_NAME_FIELD_NUMBER: _ClassVar[int]
    ID: int
    identity: int
    namespace: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    pod_name: str
    def __init__(self, ID: _Optional[int] = ..., identity: _Optional[int] = ..., namespace: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., pod_name: _Optional[str] = ...) -> None: ...

class TCP(_message.Message):
    __slots__ = ("source_port", "destination_port", "flags")
    SOURCE_PORT_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_PORT_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    source_port: int
    destination_port: int
    flags: TCPFlags
    def __init__(self, source_port: _Optional[int] = ..., destination_port: _Optional[int] = ..., flags: _Optional[_Union[TCPFlags, _Mapping]] = ...) -> None: ...

class IP(_message.Message):
    __slots__ = ("source", "destination", "ipVersion")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    IPVERSION_FIELD_NUMBER: _ClassVar[int]
    source: str
    destination: str
    ipVersion: IPVersion
    def __init__(self, source: _Optional[str] = ..., destination: _Optional[str] = ..., ipVersion: _Optional[_Union[IPVersion, str]] = ...) -> None: ...

class Ethernet(_message.Message):
    __slots__ = ("source", "destination")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    source: str
    destination: str
    def __init__(self, source: _Optional[str] = ..., destination: _Optional[str] = ...) -> None: ...

class TCPFlags(_message.Message):
    __slots__ = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")
    FIN_FIELD_NUMBER: _ClassVar[int]
    SYN_FIELD_NUMBER: _ClassVar[int]
    RST_FIELD_NUMBER: _ClassVar[int]
    PSH_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    URG_FIELD_NUMBER: _ClassVar[int]
    ECE_FIELD_NUMBER: _ClassVar[int]
    CWR_FIELD_NUMBER: _ClassVar[int]
    NS_FIELD_NUMBER: _ClassVar[int]
    FIN: bool
    SYN: bool
    RST: bool
    PSH: bool
    ACK: bool
    URG: bool
    ECE: bool
    CWR: bool
    NS: bool
    def __init__(self, FIN: _Optional[bool] = ..., SYN: _Optional[bool] = ..., RST: _Optional[bool] = ..., PSH: _Optional[bool] = ..., ACK: _Optional[bool] = ..., URG: _Optional[bool] = ..., ECE: _Optional[bool] = ..., CWR: _Optional[bool] = ..., NS: _Optional[bool] = ...) -> None: ...

class UDP(_message.Message):
    __slots__ = ("source_port", "destination_port")
    SOURCE_PORT_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_PORT_FIELD_NUMBER: _ClassVar[int]
    source_port: int
    destination_port: int
    def __init__(self, source_port: _Optional[int] = ..., destination_port: _Optional[int] = ...) -> None: ...

class SCTP(_message.Message):
    __slots__ = ("source_port", "destination_port")
    SOURCE_PORT_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_PORT_FIELD_NUMBER: _ClassVar[int]
    source_port: int
    destination_port: int
    def __init__(self, source_port: _Optional[int] = ..., destination_port: _Optional[int] = ...) -> None: ...

class ICMPv4(_message.Message):
    __slots__ = ("type", "code")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    type: int
    code: int
    def __init__(self, type: _Optional[int] = ..., code: _Optional[int] = ...) -> None: ...

class ICMPv6(_message.Message):
    __slots__ = ("type", "code")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    type: int
    code: int
    def __init__(self, type: _Optional[int] = ..., code: _Optional[int] = ...) -> None: ...

class FlowFilter(_message.Message):
    __slots__ = ("uuid", "source_ip", "source_pod", "source_fqdn", "source_label", "source_service", "source_workload", "destination_ip", "destination_pod", "destination_fqdn", "destination_label", "destination_service", "destination_workload", "traffic_direction", "verdict", "event_type", "http_status_code", "protocol", "source_port", "destination_port", "reply", "dns_query", "source_identity", "destination_identity", "http_method", "http_path", "tcp_flags", "node_name", "ip_version", "trace_id")
    UUID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_IP_FIELD_NUMBER: _ClassVar[int]
    SOURCE_POD_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FQDN_FIELD_NUMBER: _ClassVar[int]
    SOURCE_LABEL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_IP_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_POD_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FQDN_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_LABEL_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_SERVICE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_DIRECTION_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    HTTP_STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PORT_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_PORT_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    DNS_QUERY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    HTTP_METHOD_FIELD_NUMBER: _ClassVar[int]
    HTTP_PATH_FIELD_NUMBER: _ClassVar[int]
    TCP_FLAGS_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    IP_VERSION_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    uuid: _containers.RepeatedScalarFieldContainer[str]
    source_ip: _containers.RepeatedScalarFieldContainer[str]
    source_pod: _containers.RepeatedScalarFieldContainer[str]
    source_fqdn: _containers.RepeatedScalarFieldContainer[str]
    source_label: _containers.RepeatedScalarFieldContainer[str]
    source_service: _containers.RepeatedScalarFieldContainer[str]
    source_workload: _containers.RepeatedCompositeFieldContainer[Workload]
    destination_ip: _containers.RepeatedScalarFieldContainer[str]
    destination_pod: _containers.RepeatedScalarFieldContainer[str]
    destination_fqdn: _containers.RepeatedScalarFieldContainer[str]
    destination_label: _containers.RepeatedScalarFieldContainer[str]
    destination_service: _containers.RepeatedScalarFieldContainer[str]
    destination_workload: _containers.RepeatedCompositeFieldContainer[Workload]
    traffic_direction: _containers.RepeatedScalarFieldContainer[TrafficDirection]
    verdict: _containers.RepeatedScalarFieldContainer[Verdict]
    event_type: _containers.RepeatedCompositeFieldContainer[EventTypeFilter]
    http_status_code: _containers.RepeatedScalarFieldContainer[str]
    protocol: _containers.RepeatedScalarFieldContainer[str]
    source_port: _containers.RepeatedScalarFieldContainer[str]
    destination_port: _containers.RepeatedScalarFieldContainer[str]
    reply: _containers.RepeatedScalarFieldContainer[bool]
    dns_query: _containers.RepeatedScalarFieldContainer[str]
    source_identity: _containers.RepeatedScalarFieldContainer[int]
    destination_identity: _containers.RepeatedScalarFieldContainer[int]
    http_method: _containers.RepeatedScalarFieldContainer[str]
    http_path: _containers.RepeatedScalarFieldContainer[str]
    tcp_flags: _containers.RepeatedCompositeFieldContainer[TCPFlags]
    node_name: _containers.RepeatedScalarFieldContainer[str]
    ip_version: _containers.RepeatedScalarFieldContainer[IPVersion]
    trace_id: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uuid: _Optional[_Iterable[str]] = ..., source_ip: _Optional[_Iterable[str]] = ..., source_pod: _Optional[_Iterable[str]] = ..., source_fqdn: _Optional[_Iterable[str]] = ..., source_label: _Optional[_Iterable[str]] = ..., source_service: _Optional[_Iterable[str]] = ..., source_workload: _Optional[_Iterable[_Union[Workload, _Mapping]]] = ..., destination_ip: _Optional[_Iterable[str]] = ..., destination_pod: _Optional[_Iterable[str]] = ..., destination_fqdn: _Optional[_Iterable[str]] = ..., destination_label: _Optional[_Iterable[str]] = ..., destination_service: _Optional[_Iterable[str]] = ..., destination_workload: _Optional[_Iterable[_Union[Workload, _Mapping]]] = ..., traffic_direction: _Optional[_Iterable[_Union[TrafficDirection, str]]] = ..., verdict: _Optional[_Iterable[_Union[Verdict, str]]] = ..., event_type: _Optional[_Iterable[_Union[EventTypeFilter, _Mapping]]] = ..., http_status_code: _Optional[_Iterable[str]] = ..., protocol: _Optional[_Iterable[str]] = ..., source_port: _Optional[_Iterable[str]] = ..., destination_port: _Optional[_Iterable[str]] = ..., reply: _Optional[_Iterable[bool]] = ..., dns_query: _Optional[_Iterable[str]] = ..., source_identity: _Optional[_Iterable[int]] = ..., destination_identity: _Optional[_Iterable[int]] = ..., http_method: _Optional[_Iterable[str]] = ..., http_path: _Optional[_Iterable[str]] = ..., tcp_flags: _Optional[_Iterable[_Union[TCPFlags, _Mapping]]] = ..., node_name: _Optional[_Iterable[str]] = ..., ip_version: _Optional[_Iterable[_Union[IPVersion, str]]] = ..., trace_id: _Optional[_Iterable[str]] = ...) -> None: ...

class EventTypeFilter(_message.Message):
    __slots__ = ("type", "match_sub_type", "sub_type")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MATCH_SUB_TYPE_FIELD_NUMBER: _ClassVar[int]
    SUB_TYPE_FIELD_NUMBER: _ClassVar[int]
    type: int
    match_sub_type: bool
    sub_type: int
    def __init__(self, type: _Optional[int] = ..., match_sub_type: _Optional[bool] = ..., sub_type: _Optional[int] = ...) -> None: ...

class Workload(_message.Message):
    __slots__ = ("name", "kind")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ...) -> None: ...

class Service(_message.Message):
    __slots__ = ("name", "namespace")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class LostEvent(_message.Message):
    __slots__ = ("source", "num_events_lost", "cpu")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    NUM_EVENTS_LOST_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    source: LostEventSource
    num_events_lost: int
    cpu: _wrappers_pb2.Int32Value
    def __init__(self, source: _Optional[_Union[LostEventSource, str]] = ..., num_events_lost: _Optional[int] = ..., cpu: _Optional[_Union[_wrappers_pb2.Int32Value, _Mapping]] = ...) -> None: ...
