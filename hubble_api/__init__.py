"""Hubble's Observer and Peer gRPC APIs (cilium/cilium api/v1), the subset ryu-nsm serves.

The .proto files under ``hubble_api/proto/hubble_api/`` are ryu-nsm's own, written from the published
package, message and field names, numbers and types of cilium's observer.proto, flow.proto,
relay.proto and peer.proto (a subset: every field written has upstream's name, number and type);
``scripts/gen-proto`` regenerates the modules below from them. Do not edit generated modules by hand.

Modules:
    flow_pb2               package ``flow``: Flow, Endpoint, Ethernet, IP, Layer4 (TCP, UDP, SCTP,
                           ICMPv4, ICMPv6), Service, FlowFilter, LostEvent and their enums.
    relay_pb2              package ``relay``: NodeStatusEvent, NodeState.
    observer_pb2           package ``observer``: GetFlows, GetNodes and ServerStatus messages.
    observer_pb2_grpc      service ``observer.Observer`` (GetFlows server stream, GetNodes, ServerStatus).
    peer_pb2               package ``peer``: NotifyRequest, ChangeNotification, TLS, ChangeNotificationType.
    peer_pb2_grpc          service ``peer.Peer`` (Notify server stream): how Hubble Relay finds nodes.
"""
