"""Sources of declared state: each turns its documents into the same ``Resources``.

The file source (``files``) reads Kubernetes-shaped YAML, parsed by ``documents``.
"""

from .documents import Document, dump_documents, parse_documents, parse_located
from .files import DirectoryWatcher, find_files, load_paths, read_documents

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
