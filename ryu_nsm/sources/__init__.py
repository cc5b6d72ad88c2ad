"""Sources of declared state, each turning its documents into the same ``Resources``: YAML files
(``files``, parsed by ``documents`` and ``assembly``), fabric files (``topology``), Kubernetes
(``kubernetes``), the interfaces a forwarder marked in OVSDB (``ovsdb``) and NSM's gRPC face
(``nsm_grpc``), merged by ``merge``.

May import ``ryu_nsm.core``, ``ryu_nsm.qos`` and ``ryu_nsm.observe`` (logs), plus the client libraries
of what they read (kubernetes, ovs, grpc and ``nsm_api``).
"""

from ryu_nsm.sources.assembly import parse_documents, parse_located
from ryu_nsm.sources.documents import dump_documents
from ryu_nsm.sources.files import DirectoryWatcher, find_files, load_paths, read_documents
from ryu_nsm.sources.kube_objects import Document

__all__ = [
    "DirectoryWatcher",
    "Document",
    "dump_documents",
    "find_files",
    "load_paths",
    "parse_documents",
    "parse_located",
    "read_documents",
]
