"""Path bookkeeping of an NSM connection: each hop appends its PathSegment and advances the index.

Pure functions: the caller passes ``now`` (unix seconds), so they are testable without a clock.
"""

from __future__ import annotations

import math
import uuid

from google.protobuf.timestamp_pb2 import Timestamp

from nsm_api.connection_pb2 import Connection


def append_segment(
    connection: Connection, name: str, token: str, expires_in: float, now: float
) -> Connection:
    """Return a copy of ``connection`` with this hop's PathSegment after the current one.

    The segment gets a fresh uuid4 id, ``token`` and an expiry ``expires_in`` seconds after ``now``;
    ``path.index`` points at it afterwards. On an empty path the segment becomes index 0. Segments
    after the current index are dropped: they were written downstream on an earlier pass and are
    rewritten by the hops that follow. The input message is not modified.
    """
    updated = Connection()
    updated.CopyFrom(connection)
    path = updated.path
    position = path.index + 1 if path.path_segments else 0
    del path.path_segments[position:]
    segment = path.path_segments.add(name=name, id=str(uuid.uuid4()), token=token)
    segment.expires.CopyFrom(_timestamp(now + expires_in))
    path.index = position
    return updated


def _timestamp(when: float) -> Timestamp:
    # Split before scaling: when * 1e9 as one float would lose the sub-microsecond digits.
    seconds = math.floor(when)
    nanos = round((when - seconds) * 1_000_000_000)
    if nanos == 1_000_000_000:
        seconds, nanos = seconds + 1, 0
    return Timestamp(seconds=seconds, nanos=nanos)


def earliest_expiry(connection: Connection) -> float | None:
    """Unix time at which the first of the path's tokens expires, or None if no segment expires."""
    expiries = [
        segment.expires.seconds + segment.expires.nanos / 1_000_000_000
        for segment in connection.path.path_segments
        if segment.HasField("expires")
    ]
    return min(expiries, default=None)


def is_expired(connection: Connection, now: float) -> bool:
    """True when some segment's token has expired at ``now`` (a connection without expiry never does)."""
    expiry = earliest_expiry(connection)
    return expiry is not None and expiry <= now
