"""ovs_forwarder: a per-node NSM forwarder that plumbs KERNEL interfaces into an Open vSwitch bridge.

`plumbing` makes, checks, finds and removes the veth pairs; `ovsdb` adds and removes their OVS ports
through the OVSDB IDL. Neither knows about gRPC.
"""
