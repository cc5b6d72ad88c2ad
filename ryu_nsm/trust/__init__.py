"""Workload identity for every channel: SPIFFE X.509 SVIDs, where they come from (files, the Workload
API, a development CA) and the TLS and gRPC credentials built on them."""
