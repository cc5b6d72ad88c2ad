"""What people and tools see: plan and status as JSON, text and Graphviz, the status endpoint,
Prometheus metrics, and log formats.

May import ``ryu_nsm.core`` and ``ryu_nsm.qos`` (to render their typed data) and prometheus-client.
"""
