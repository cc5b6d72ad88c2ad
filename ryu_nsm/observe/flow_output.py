"""How ``ryu-nsm observe`` prints Hubble's GetFlowsResponse: compact (one line per flow, like
``hubble observe``), a table, or JSON lines (hubble_flows.to_json)."""

from __future__ import annotations

import time

from hubble_api import flow_pb2, observer_pb2

TABLE_COLUMNS = (("TIMESTAMP", 19), ("SOURCE", 30), ("DESTINATION", 30), ("TYPE", 6), ("VERDICT", 10))


def when(flow: flow_pb2.Flow) -> str:
    """Local time as Hubble prints it: "Jan  2 15:04:05.000"."""
    stamp = flow.time
    return time.strftime("%b %e %H:%M:%S", time.localtime(stamp.seconds)) + f".{stamp.nanos // 1_000_000:03d}"


def endpoint(flow: flow_pb2.Flow, source: bool) -> str:
    """ns/pod (else the IP, else the MAC), with the L4 port when there is one."""
    side = flow.source if source else flow.destination
    if side.pod_name:
        name = f"{side.namespace}/{side.pod_name}"
    elif flow.HasField("IP"):
        name = flow.IP.source if source else flow.IP.destination
    else:
        name = flow.ethernet.source if source else flow.ethernet.destination
    protocol = flow.l4.WhichOneof("protocol")
    if protocol in ("TCP", "UDP", "SCTP"):
        ported = getattr(flow.l4, protocol)
        name += f":{ported.source_port if source else ported.destination_port}"
    return name


def verdict(flow: flow_pb2.Flow) -> str:
    word = flow_pb2.Verdict.Name(flow.verdict)
    if flow.verdict == flow_pb2.DROPPED:
        word += f" ({flow_pb2.DropReason.Name(flow.drop_reason_desc)})"
    return word


def _ends(flow: flow_pb2.Flow) -> tuple[str, str, str]:
    """(left, arrow, right): a reply is drawn from the destination back, an unknown direction "<>"."""
    source, destination = endpoint(flow, True), endpoint(flow, False)
    if not flow.HasField("is_reply"):
        return source, "<>", destination
    return (destination, "<-", source) if flow.is_reply.value else (source, "->", destination)


def compact(response: observer_pb2.GetFlowsResponse) -> str:
    """One line: a flow, or how many events were lost."""
    if response.HasField("lost_events"):
        return f"EVENTS LOST: {response.lost_events.num_events_lost} flow events ({response.node_name})"
    flow = response.flow
    left, arrow, right = _ends(flow)
    return f"{when(flow)} [{flow.node_name}]: {left} {arrow} {right} {verdict(flow)} ({flow.Summary})"


def table_header() -> str:
    return "".join(name.ljust(width) for name, width in TABLE_COLUMNS) + "SUMMARY"


def table_row(response: observer_pb2.GetFlowsResponse) -> str:
    if response.HasField("lost_events"):
        return compact(response)
    flow = response.flow
    cells = (when(flow), endpoint(flow, True), endpoint(flow, False),
             flow_pb2.FlowType.Name(flow.Type), flow_pb2.Verdict.Name(flow.verdict))
    return "".join(cell.ljust(width - 1)[: width - 1] + " "
                   for cell, (_, width) in zip(cells, TABLE_COLUMNS, strict=True)) + flow.Summary
