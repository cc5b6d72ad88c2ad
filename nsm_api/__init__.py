"""Network Service Mesh's gRPC API (v1.x), wire-compatible with NSM peers.

The .proto files under ``nsm_api/proto/nsm_api/`` are ryu-nsm's own, written from the wire facts in
nsm-wire.md (NSM's packages, message names, field names and numbers); ``scripts/gen-proto``
regenerates the modules below from them. Do not edit generated modules by hand.

Modules:
    connectioncontext_pb2   package ``connectioncontext``: ConnectionContext, IPContext, Route,
                            IpNeighbor, DNSContext, DNSConfig, EthernetContext, PolicyRoute,
                            ExtraPrefixRequest, IpFamily.
    connection_pb2          package ``connection``: Connection, State, Mechanism, Path, PathSegment,
                            MonitorScopeSelector, ConnectionEvent, ConnectionEventType.
    connection_pb2_grpc     service ``connection.MonitorConnection`` (MonitorConnections, server stream).
    networkservice_pb2      package ``networkservice``: NetworkServiceRequest.
    networkservice_pb2_grpc service ``networkservice.NetworkService`` (Request, Close).
    registry_pb2            package ``registry``: NetworkService, Match, Destination, Metadata,
                            NetworkServiceEndpoint, NetworkServiceLabels, queries and responses.
    registry_pb2_grpc       services ``registry.NetworkServiceRegistry`` and
                            ``registry.NetworkServiceEndpointRegistry`` (Register, Find, Unregister).
    paths                   hand-written helpers: append a hop's PathSegment, expiry of a connection.
    errors                  hand-written: RequestError, a refusal with its gRPC status code.
    tokens                  hand-written: NSM's ES256 path tokens (sign, decode, verify).
    authorize               hand-written: NSM's server authorize policies and the monitor filter.
"""
