"""Changes first: background reads wait while a change is planned or programmed.

At size the shell's background work comes in rounds: a counter read of 80 switches is ~0.4 s of CPU,
an audit's read of a core switch ~50 ms. Python runs one thread at a time, so a request planned while
such a round is decoded on the core-calls thread took twice as long, and its program waited behind
the decode for the interpreter (a 5 ms program took 167 ms). The gate counts the changes in progress
(a source's new state, a program being sent); the core-calls thread asks it before each call and
waits while there is one, at most ``patience`` seconds once a spell of changes: background work is
held up, never stopped, and under a stream of changes (a burst of Pods) its queue is not left to
grow behind one wait a call (link probes arrive ~100 a second).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

PATIENCE_S = 0.05


class ForegroundGate:
    def __init__(self, patience: float = PATIENCE_S) -> None:
        self.patience = patience
        self._busy = 0
        self._spell = 0  # spells of changes so far: one begins when the first of them does
        self._waited = -1  # the spell a background call last waited in
        self._quiet = threading.Condition()

    @contextmanager
    def change(self) -> Iterator[None]:
        """Around a change: background calls wait until it (and every other one) is done."""
        with self._quiet:
            if not self._busy:
                self._spell += 1
            self._busy += 1
        try:
            yield
        finally:
            with self._quiet:
                self._busy -= 1
                if not self._busy:
                    self._quiet.notify_all()

    def wait_quiet(self) -> bool:
        """Before a background call: until no change is in progress, at most ``patience`` seconds,
        and only once a spell of changes. True if it is quiet."""
        with self._quiet:
            if not self._busy:
                return True
            if self._waited == self._spell:
                return False  # waited in this spell already: go on with the queue
            self._waited = self._spell
            return self._quiet.wait_for(lambda: not self._busy, self.patience)
