"""ovs_forwarder: a per-node NSM forwarder that plumbs KERNEL interfaces into an Open vSwitch bridge.

`plumbing` makes, checks and removes the veth pairs that a `kernel_request` asks for, in namespaces
that `netns` enters; `discovery` finds them again at start; `ovsdb` adds and removes their OVS ports
through the OVSDB IDL. None of these knows about gRPC: `server` (with `translation` and `monitors`)
is the NSM gRPC face and `cli` the command.
"""
