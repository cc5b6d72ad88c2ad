"""The file source: YAML/JSON files and directories of Kubernetes-shaped documents → Resources.

``load_paths`` reads once; ``DirectoryWatcher`` polls and hands the whole new state to a callback
whenever a file is added, changed or deleted (level-triggered, like a Kubernetes relist). inotify
(Linux) wakes it as soon as a watched directory changes; the poll interval is then only a fallback
(a file system without inotify, a watch limit reached). Like
the Kubernetes API server rejecting an invalid update, the watcher keeps the last valid version of
a file it cannot parse and of an object that fails validation, and reports the bad edit.

Everything that is wrong (a missing path, an unreadable file, a YAML syntax error, an invalid
object) becomes a Problem beside the valid objects, never an exception.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import inotify_simple
import yaml

from ryu_nsm.core.model import Problem, Resources
from ryu_nsm.observe.health import Loop, Supervised, supervise
from ryu_nsm.sources.assembly import ObjectKey, ParseMemo, parse_keeping
from ryu_nsm.sources.kube_objects import Document

log = logging.getLogger("ryu_nsm.sources.files")

SUFFIXES = (".yaml", ".yml", ".json")
# A file modified this recently may change again within the same mtime tick: re-hash it next poll.
_RACY_NS = 2_000_000_000


class _StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml: ~8x faster
    """SafeLoader that rejects duplicate mapping keys, as Kubernetes does, instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            # Merge keys (<<) may legitimately be overridden by explicit keys.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r}", key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def find_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[Problem]]:
    """The files that ``paths`` name: files as given, directories walked recursively in sorted order.

    In directories only *.yaml, *.yml and *.json count, and hidden entries are skipped (editor
    swap files, and the ``..data`` copies in a mounted ConfigMap that would duplicate everything).
    """
    files: list[Path] = []
    problems: list[Problem] = []
    # A file named twice (itself and inside a named directory) is read once. A directory is resolved
    # once and its files keyed below it: resolving each file costs a system call per path component,
    # and the watcher looks at every file on each poll.
    seen: set[str] = set()
    for given in paths:
        path = Path(given)
        if path.is_dir():
            errors: list[OSError] = []
            found: list[tuple[tuple[str, ...], str]] = []
            for dirpath, filenames in _visible_walk(path, errors.append):
                relative = os.path.relpath(dirpath, path)
                parts = () if relative == "." else tuple(relative.split(os.sep))
                found += [((*parts, f), os.path.join(dirpath, f)) for f in filenames
                          if not f.startswith(".") and f.lower().endswith(SUFFIXES)]
            root = str(path.resolve())
            for parts, name in sorted(found):
                if _first(os.path.join(root, *parts), seen):
                    files.append(Path(name))
            problems += [Problem(str(e.filename or path), -1, "", f"cannot read directory: {e.strerror}")
                         for e in errors]
        elif path.exists():  # keyed as a directory's files are: its directory resolved, its own name
            if _first(os.path.join(path.parent.resolve(), path.name), seen):
                files.append(path)
        else:
            problems.append(Problem(str(path), -1, "", "no such file or directory"))
    return files, problems


def _visible_walk(path: Path, onerror: Callable[[OSError], object] | None = None
                  ) -> Iterable[tuple[str, list[str]]]:
    """(directory, its file names) below ``path``, hidden directories left out: what the watcher reads
    and what it watches."""
    for dirpath, dirnames, filenames in os.walk(path, onerror=onerror):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        yield dirpath, filenames


def _first(key: str, seen: set[str]) -> bool:
    if key in seen:
        return False
    seen.add(key)
    return True


def read_documents(path: str | Path, data: bytes) -> tuple[list[Document], list[Problem]]:
    """Parse one file's bytes into documents; a syntax error is a Problem with its line and column.

    Documents before a YAML syntax error are complete and kept.
    """
    source = str(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return [], [Problem(source, -1, "", f"expected UTF-8 text, found byte {data[e.start]:#04x} "
                                            f"at offset {e.start}")]
    if source.lower().endswith(".json"):
        try:
            return [Document(source, 0, json.loads(text))], []
        except json.JSONDecodeError as e:
            return [], [Problem(source, 0, "", f"JSON syntax error at line {e.lineno}, column {e.colno}: "
                                               f"{e.msg}")]
    documents: list[Document] = []
    try:
        for body in yaml.load_all(text, Loader=_StrictLoader):
            documents.append(Document(source, len(documents), body))
    except yaml.YAMLError as e:
        return documents, [Problem(source, len(documents), "", _yaml_message(e))]
    return documents, []


def _yaml_message(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    context = getattr(error, "context", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"YAML syntax error{where}: {problem}" + (f" ({context})" if context else "")


_FileRead = tuple[Path, list[Document], list[Problem]]


def _assemble(
    problems: list[Problem], files: Sequence[_FileRead], last_valid: dict[ObjectKey, dict],
    memo: ParseMemo | None = None,
) -> tuple[Resources, dict[ObjectKey, dict]]:
    """Parse all files' documents as one set (so Namespaces and duplicates work across files)."""
    documents = [d for _, file_documents, _ in files for d in file_documents]
    resources, valid = parse_keeping(documents, last_valid, memo)
    found = problems + [p for _, _, file_problems in files for p in file_problems] + list(resources.problems)
    # Problems in file order, then document order, whichever stage found them.
    order = {str(path): i for i, (path, _, _) in enumerate(files)}
    found.sort(key=lambda p: (order.get(p.source, -1), p.index))
    return replace(resources, problems=tuple(found)), valid


def load_paths(paths: Sequence[str | Path]) -> Resources:
    """Read files and directories (see ``find_files``) into one Resources, with every Problem found."""
    files, problems = find_files(paths)
    read = []
    for path in files:
        try:
            read.append((path, *read_documents(path, path.read_bytes())))
        except OSError as e:
            read.append((path, [], [Problem(str(path), -1, "", f"cannot read file: {e.strerror}")]))
    return _assemble(problems, read, {})[0]


@dataclass
class _Cached:
    """What the watcher knows about one file."""

    stat: tuple[int, ...]
    digest: bytes
    documents: list[Document]
    problems: list[Problem]
    racy: bool
    # Digest and documents of the last read that parsed: they stand in while the file cannot be read.
    good: tuple[bytes, list[Document]] | None

    def read(self, path: Path) -> _FileRead:
        """The file's documents and problems as the watcher uses them."""
        if not self.problems or self.good is None:
            return path, self.documents, self.problems
        keeping = Problem(str(path), self.problems[-1].index, "",
                          "keeping the last valid version of this file until it is fixed")
        return path, self.good[1], [*self.problems, keeping]


def _stat_key(path: Path) -> tuple[int, ...]:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)


class DirectoryWatcher:
    """Polls files and directories and calls ``on_change(resources)`` with the whole new state.

    A file is re-read when its stat (mtime, size, inode, ctime) changes or was recent enough to
    hide a same-tick rewrite; it counts as changed only when its content hash changes. The first
    poll always reports. A file caught while being written is left as it was until a later poll.

    A file that cannot be read or parsed stands as it last parsed, and an object that fails
    validation as it was last delivered, each with a Problem saying so; removing a file or a
    document removes its objects.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        on_change: Callable[[Resources], None],
        interval: float = 1.0,
    ):
        self.paths = [Path(p) for p in paths]
        self.interval = interval
        self._on_change = on_change
        self._cache: dict[Path, _Cached] = {}
        self._delivered: tuple | None = None
        self._last_valid: dict[ObjectKey, dict] = {}
        # An unchanged file keeps its documents' bodies, so its objects are not validated again.
        self._memo = ParseMemo()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: Supervised | None = None
        self._wake: _Wake | None = None

    def poll_once(self) -> bool:
        """Look once; call ``on_change`` and return True if anything changed since the last report.

        An exception from ``on_change`` propagates, and the same state is reported again next poll.
        """
        with self._lock:
            files, problems = find_files(self.paths)
            for path in files:
                self._refresh(path)
            present = [p for p in files if p in self._cache]
            for gone in set(self._cache) - set(present):
                del self._cache[gone]
            cached = [(p, self._cache[p]) for p in present]
            # A broken file's stand-in version is part of what is delivered.
            fingerprint = (tuple((p, c.digest, c.good and c.good[0]) for p, c in cached), tuple(problems))
            if fingerprint == self._delivered:
                return False
            read = [c.read(p) for p, c in cached]
            resources, valid = _assemble(problems, read, self._last_valid, self._memo)
            self._on_change(resources)
            # Only what was delivered counts as a last valid version.
            self._last_valid = valid
            self._delivered = fingerprint
            return True

    def _refresh(self, path: Path) -> None:
        cached = self._cache.get(path)
        good = cached.good if cached is not None else None
        try:
            key = _stat_key(path)
            if cached is not None and cached.stat == key and not cached.racy:
                return
            data = path.read_bytes()
            if _stat_key(path) != key:
                return  # being written: look again next poll
        except FileNotFoundError:
            self._cache.pop(path, None)
            return
        except OSError as e:
            message = f"cannot read file: {e.strerror}"
            self._cache[path] = _Cached((), message.encode(), [], [Problem(str(path), -1, "", message)], True,
                                        good)
            return
        digest = hashlib.sha256(data).digest()
        racy = time.time_ns() - key[0] < _RACY_NS
        if cached is not None and cached.digest == digest:
            cached.stat, cached.racy = key, racy
            return
        documents, problems = read_documents(path, data)
        if not problems:
            good = (digest, documents)
        self._cache[path] = _Cached(key, digest, documents, problems, racy, good)

    def start(self) -> None:
        """Poll in a background thread, first at once, then whenever inotify says a watched
        directory changed, and every ``interval`` seconds in any case."""
        if self._thread is not None:
            raise RuntimeError("watcher already started")
        self._stop.clear()
        self._wake = _Wake(self.paths)
        # A failed poll (a consumer's failure) is retried after an interval, then less often.
        self._thread = supervise("ryu-nsm-file-watcher", self._run, self.interval, self._stop,
                                 initial_backoff=self.interval)

    def _run(self, loop: Loop) -> None:
        while not self._stop.is_set():
            self.poll_once()  # the state is offered again by the next poll after a failure
            loop.beat()
            self._wake.wait(self.interval)

    def stop(self, timeout: float | None = None) -> None:
        """Stop polling and wait for the thread to end (unless called from ``on_change`` itself)."""
        self._stop.set()
        wake = self._wake
        if wake is not None:
            wake.interrupt()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
        if wake is not None and (thread is None or not thread.is_alive()):
            self._wake = None
            wake.close()


_WATCHED = (inotify_simple.flags.CREATE | inotify_simple.flags.DELETE | inotify_simple.flags.MODIFY
            | inotify_simple.flags.CLOSE_WRITE | inotify_simple.flags.MOVED_FROM
            | inotify_simple.flags.MOVED_TO | inotify_simple.flags.ATTRIB
            | inotify_simple.flags.DELETE_SELF | inotify_simple.flags.MOVE_SELF)


class _Wake:
    """Waits until a watched directory changes (inotify), the timeout passes, or ``interrupt``.

    Watches each named directory, its visible subdirectories (again after each wake: new ones join)
    and the directory of each named file. Without inotify (another OS, a file system or a watch limit
    that refuses) it only waits out the timeout, and says so once.
    """

    def __init__(self, paths: Sequence[Path]):
        self._paths = paths
        self._stop_r, self._stop_w = os.pipe()
        try:
            self._inotify: inotify_simple.INotify | None = inotify_simple.INotify(nonblocking=True)
        except OSError as e:
            log.warning("inotify is not available (%s): polling the request files only", e)
            self._inotify = None
        self._watched: set[str] = set()
        self._refused = False
        self._watch()

    def _watch(self) -> None:
        if self._inotify is None:
            return
        for path in self._paths:
            if path.is_dir():
                for dirpath, _ in _visible_walk(path):
                    self._add(dirpath)
            else:
                self._add(str(path.parent))

    def _add(self, directory: str) -> None:
        if directory in self._watched:
            return
        try:
            self._inotify.add_watch(directory, _WATCHED)
            self._watched.add(directory)
        except OSError as e:
            if not self._refused:
                self._refused = True
                log.warning("cannot watch %s with inotify (%s): its changes are seen by polling only",
                            directory, e.strerror)

    def wait(self, timeout: float) -> None:
        ready = [self._stop_r] + ([self._inotify.fileno()] if self._inotify is not None else [])
        readable, _, _ = select.select(ready, [], [], timeout)
        if self._inotify is not None and self._inotify.fileno() in readable:
            masks = [event.mask for event in self._inotify.read(timeout=0)]
            if any(mask & inotify_simple.flags.IGNORED for mask in masks):
                self._watched.clear()  # a watched directory went: watch what is there now
            if any(mask & (inotify_simple.flags.CREATE | inotify_simple.flags.MOVED_TO
                           | inotify_simple.flags.IGNORED) for mask in masks):
                self._watch()

    def interrupt(self) -> None:
        os.write(self._stop_w, b"x")

    def close(self) -> None:
        for fd in (self._stop_r, self._stop_w):
            os.close(fd)
        if self._inotify is not None:
            self._inotify.close()
