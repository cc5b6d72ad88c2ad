"""``--flow-log FILE``: every flow event as one line of Hubble's JSON (as ``observe -o json`` prints
it), for log collectors; the file is rotated by size, keeping a few old ones, like Hubble's exporter.

The writer is a follower of the flow store with its own thread: a slow disk loses events (counted
and logged), it never holds up the producer.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from ryu_nsm.observe.flow_store import FlowStore
from ryu_nsm.observe.hubble_flows import to_json, to_response

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_KEEP = 5


class RotatingLines:
    """Lines appended to ``path``; when the next line would pass ``max_bytes``, path becomes path.1
    (path.1 becomes path.2, …) and only ``keep`` old files stay."""

    def __init__(self, path: str, max_bytes: int = DEFAULT_MAX_BYTES, keep: int = DEFAULT_KEEP) -> None:
        if max_bytes < 1 or keep < 0:
            raise ValueError("the flow log needs max bytes >= 1 and keep >= 0")
        self.path, self.max_bytes, self.keep = Path(path), max_bytes, keep
        self._file = open(self.path, "ab")  # held open across writes; closed by close()

    def write(self, lines: list[str]) -> None:
        for line in lines:
            data = (line + "\n").encode()
            if self._file.tell() and self._file.tell() + len(data) > self.max_bytes:
                self._rotate()
            self._file.write(data)
        self._file.flush()

    def _rotate(self) -> None:
        self._file.close()
        for index in range(self.keep, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if index == self.keep:
                older.unlink(missing_ok=True)
            newer = self.path.with_name(f"{self.path.name}.{index - 1}") if index > 1 else self.path
            if newer.exists():
                os.replace(newer, older)
        if not self.keep:
            self.path.unlink(missing_ok=True)
        self._file = open(self.path, "ab")

    def close(self) -> None:
        self._file.close()


class FlowLog:
    """Writes the store's new events to a RotatingLines until stopped."""

    def __init__(self, store: FlowStore, lines: RotatingLines, poll: float = 0.5) -> None:
        self._follower = store.subscribe()
        self._lines = lines
        self._poll = poll
        self._thread = threading.Thread(target=self._run, name="ryu-nsm-flow-log", daemon=True)

    def start(self) -> FlowLog:
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            events, lost = self._follower.take(self._poll)
            if self._follower.closed and not events and not lost:
                return
            if lost:
                log.warning("flow log %s fell behind: %d flow events not written", self._lines.path, lost)
            try:
                self._lines.write([to_json(to_response(event)) for event in events])
            except OSError as exc:
                log.error("flow log %s: %s; %d flow events not written", self._lines.path, exc, len(events))

    def stop(self) -> None:
        """Write what is queued, then close the file."""
        self._follower.close()
        self._thread.join()
        self._lines.close()
