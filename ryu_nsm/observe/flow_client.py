"""``ryu-nsm observe``'s side of Hubble's API: its flags made into a GetFlowsRequest (filters shaped
as ``hubble observe`` makes them), and the stream printed."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from datetime import datetime

from hubble_api import flow_pb2, observer_pb2
from ryu_nsm.observe.flow_output import compact, table_row
from ryu_nsm.observe.flow_store import FlowFilter, check_filter
from ryu_nsm.observe.hubble_flows import timestamp, to_json

DEFAULT_LAST = 20  # as hubble observe: without --last, --since or --follow, the last 20 flows
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, now: float) -> float:
    """Unix seconds of a duration before ``now`` ("90s", "5m", "1h30m") or an RFC 3339 time."""
    if re.fullmatch(rf"(?:{_DURATION.pattern})+", text):
        return now - sum(float(value) * _UNIT[unit] for value, unit in _DURATION.findall(text))
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"not a duration (5m, 1h30m) nor an RFC 3339 time: {text!r}") from None


def flow_filters(pods: Sequence[str] = (), services: Sequence[str] = (), ports: Sequence[str] = (),
                 verdicts: Sequence[str] = (), protocols: Sequence[str] = (), labels: Sequence[str] = (),
                 from_labels: Sequence[str] = (), to_labels: Sequence[str] = ()) -> list[flow_pb2.FlowFilter]:
    """The whitelist for the flags: a pod, service, port or label selector matches on either side of
    a flow, so each given is one choice of side, and every combination of sides is a filter (any
    may match). ``from_labels``/``to_labels`` hold on the source/destination in every filter.
    ValueError for a label selector the server would refuse (same parser, same message)."""
    for side, selectors in (("source", (*labels, *from_labels)), ("destination", (*labels, *to_labels))):
        check_filter(FlowFilter(**{f"{side}_label": tuple(selectors)}))
    either = [(name, values) for name, values in (("pod", pods), ("service", services), ("port", ports),
                                                  ("label", labels)) if values]
    if not (either or verdicts or protocols or from_labels or to_labels):
        return []
    found = []
    for sides in itertools.product(("source", "destination"), repeat=len(either)):
        flow_filter = flow_pb2.FlowFilter(
            verdict=[flow_pb2.Verdict.Value(v.upper()) for v in verdicts],
            protocol=[p.lower() for p in protocols], source_label=from_labels, destination_label=to_labels)
        for side, (name, values) in zip(sides, either, strict=True):
            getattr(flow_filter, f"{side}_{name}").extend(values)
        found.append(flow_filter)
    return found


def flow_request(follow: bool, last: int | None, first: int | None, since: str | None, until: str | None,
                 now: float, **filters: Sequence[str]) -> observer_pb2.GetFlowsRequest:
    """ValueError for a bad time, verdict or label selector."""
    verdicts = filters.get("verdicts", ())
    unknown = [v for v in verdicts if v.upper() not in flow_pb2.Verdict.keys()]
    if unknown:
        raise ValueError(f"unknown verdict: {unknown[0]}")
    whitelist = flow_filters(**filters)
    request = observer_pb2.GetFlowsRequest(follow=follow, whitelist=whitelist)
    if since:
        request.since.CopyFrom(timestamp(parse_time(since, now)))
    if until:
        request.until.CopyFrom(timestamp(parse_time(until, now)))
    if first:
        request.number, request.first = first, True
    elif last:
        request.number = last
    elif not (follow or since or until):
        request.number = DEFAULT_LAST
    return request


def render(response: observer_pb2.GetFlowsResponse, output: str) -> str:
    """One line in the output format: compact, table (after table_header) or json."""
    if output == "json":
        return to_json(response)
    return table_row(response) if output == "table" else compact(response)

