"""The Kubernetes side that is not a source: API client configuration, the status objects and
Events that tell users what became of their requests, and Lease-based leader election.

May import ``ryu_nsm.core``, ``ryu_nsm.qos``, ``ryu_nsm.sources`` and ``ryu_nsm.observe``, plus the
kubernetes client. The watcher of declared state lives in ``ryu_nsm.sources.kubernetes``.
"""
