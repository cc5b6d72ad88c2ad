"""Calls to the Kubernetes API as the status writer makes them: each failure logged and recorded with
the object it was about, then raised with its HTTP status for the caller to decide."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

# The name the status writer has always logged under, so log-level settings keep working.
log = logging.getLogger("ryu_nsm.k8s.status")

# Explicit: the client's default patch type differs between APIs (core/v1 would send a JSON patch).
MERGE_PATCH = "application/merge-patch+json"


def utc_now() -> str:
    """Now as an RFC 3339 time, to the second (as Kubernetes writes them)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class SyncResult:
    """What one ``sync`` did; ``errors`` name the object of every failed API call."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    status_patched: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def writes(self) -> int:
        """How many writes succeeded (objects and Events)."""
        return sum(map(len, (self.created, self.updated, self.status_patched, self.deleted, self.events)))

    def extend(self, other: SyncResult) -> None:
        """Add what ``other`` did after what this one did."""
        for part in ("created", "updated", "status_patched", "deleted", "events", "errors"):
            getattr(self, part).extend(getattr(other, part))


class ApiError(Exception):
    """An API call failed; ``status`` is its HTTP status (None: the server was not reached)."""

    def __init__(self, status: int | None):
        super().__init__(status)
        self.status = status


@dataclass(frozen=True)
class ApiCaller:
    """Makes API calls with a timeout each."""

    timeout: float

    def __call__(self, result: SyncResult, what: str, fn: Callable, *args: Any,
                 expected: tuple[int, ...] = (), **kwargs: Any) -> Any:
        """Call the API; a failure is logged and recorded with the object named (unless its HTTP status
        is ``expected``), then raised as ``ApiError`` with the status (None: server not reached)."""
        try:
            return fn(*args, _request_timeout=self.timeout, **kwargs)
        except client.ApiException as exc:
            status = exc.status
            detail = f"HTTP {exc.status} {exc.reason}"
        except Exception as exc:  # connection errors of any kind must not reach the caller
            status = None
            detail = f"{type(exc).__name__}: {exc}"
        if status not in expected:
            log.warning("Kubernetes API: %s failed: %s", what, detail)
            result.errors.append(f"{what}: {detail}")
        raise ApiError(status)
