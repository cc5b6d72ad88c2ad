"""Quality of service, pure like the core: service levels, the bandwidth ledger, constrained routing,
admission with backups, preemption and chain bounds, and link measurement from probes.

May import the core's data modules (``ryu_nsm.core.model``, ``fabric``, ``pathing``, ``units``,
``validation``), the standard library and networkx. Never the planner, the controller or anything with
I/O, so that no import runs in a circle between ``core`` and ``qos``.
"""
