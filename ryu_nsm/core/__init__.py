"""The pure core: declared resources and fabric state in, desired flows and commands out.

Holds the model (frozen, validated objects), the fabric, NSM's endpoint resolver, path search, the
flow factory with its declared pipeline, the planner, the reconciler and the controller core with its
feature managers. No I/O, no clock (time comes in as ``now``), no threads. May import ``ryu_nsm.qos``
(service levels, admission), the standard library, networkx and yaml; nothing else of ryu_nsm.
"""
