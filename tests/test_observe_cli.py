"""``ryu-nsm observe`` against the controller-side Hubble server fed with injected flow events:
flags to requests, the three output formats, exit codes; and ``controller``'s flow flags."""

from __future__ import annotations

import json
import threading

import pytest

from hubble_api import flow_pb2
from ryu_nsm import cli
from ryu_nsm.lab.controller_process import wait_for
from ryu_nsm.observe.flow_client import flow_filters, flow_request, parse_time
from ryu_nsm.observe.flow_events import Direction
from ryu_nsm.observe.flow_store import FlowStore
from ryu_nsm.observe.hubble_server import HubbleObserver, HubbleServer
from tests.test_flow_store import DROP, event

NOW = 1_700_000_000.0


@pytest.fixture
def server():
    store = FlowStore()
    store.add([event(time=NOW - 120), DROP,
               event(time=NOW - 10, direction=Direction.TO_CLIENT, sport=80, dport=41234),
               event(time=NOW - 5, protocol="ICMPv4")])
    hubble = HubbleServer(HubbleObserver(store, dict, "demo")).serve(["127.0.0.1:0"])
    yield store, hubble.addresses[0]
    hubble.stop()


def observe(capsys, *argv: str) -> tuple[int, list[str], str]:
    code = cli.main(["observe", *argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_compact_prints_one_line_per_flow_like_hubble(server, capsys):
    _, address = server
    code, lines, _ = observe(capsys, "--server", address)
    assert code == 0 and len(lines) == 4
    assert lines[0].endswith("[s1]: nsm/client-7d9f:41234 -> nsm/fw-1:80 FORWARDED "
                             "(TCP Flags: SYN; nsm/firewall hop 0 (conn-1))")
    dropped = "10.9.9.9:41234 <> 10.0.0.2:80 DROPPED (UNKNOWN_SENDER) (TCP Flags: SYN; dropped: no wire)"
    assert dropped in lines[1]
    assert "nsm/client-7d9f:41234 <- nsm/fw-1:80 FORWARDED" in lines[2]
    assert "nsm/client-7d9f -> nsm/fw-1 FORWARDED (ICMPv4 type 8 code 0" in lines[3]


def test_json_lines_are_hubbles_get_flows_responses(server, capsys):
    _, address = server
    code, lines, _ = observe(capsys, "--server", address, "-o", "json", "--verdict", "dropped")
    (only,) = [json.loads(line) for line in lines]
    assert code == 0 and only["flow"]["verdict"] == "DROPPED"
    assert only["flow"]["drop_reason_desc"] == "UNKNOWN_SENDER" and only["node_name"] == "s1"


def test_table_has_a_header_and_a_row_per_flow(server, capsys):
    _, address = server
    code, lines, _ = observe(capsys, "--server", address, "-o", "table", "--protocol", "icmp")
    assert code == 0
    assert lines[0].split() == ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]
    assert len(lines) == 2 and "L3_L4" in lines[1] and "ICMPv4 type 8" in lines[1]


def test_filters_pod_service_port_and_last(server, capsys):
    _, address = server
    _, lines, _ = observe(capsys, "--server", address, "--pod", "nsm/client", "--port", "80")
    assert len(lines) == 2 and all("nsm/client-7d9f:41234" in line for line in lines)
    _, lines, _ = observe(capsys, "--server", address, "--service", "nsm/firewall", "--last", "1")
    assert len(lines) == 1 and "ICMPv4" in lines[0]


def test_since_and_until(server, capsys):
    _, address = server
    _, lines, _ = observe(capsys, "--server", address, "--since", "2023-11-14T22:12:20+00:00")  # NOW - 60
    assert len(lines) == 2
    _, lines, _ = observe(capsys, "--server", address, "--until", "2023-11-14T22:12:20+00:00")
    assert len(lines) == 2 and "DROPPED" in lines[1]


def test_follow_prints_new_flows_until_interrupted(server, capsys):
    store, address = server
    printed = []

    def interrupt_after_two(*args, **kwargs):
        printed.append(args[0])
        if len(printed) == 2:
            raise KeyboardInterrupt

    def add_once_followed() -> None:  # later, the new flow would be history that --last 1 shows alone
        assert wait_for(lambda: store.followers() > 0, 10, 0.01)
        store.add([event(time=NOW + 1)])

    threading.Thread(target=add_once_followed, daemon=True).start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("builtins.print", interrupt_after_two)
        code = cli.main(["observe", "--server", address, "--follow", "--last", "1"])
    assert code == 0 and "ICMPv4" in printed[0] and "TCP Flags: SYN" in printed[1]


def test_exit_codes(server, capsys):
    _, address = server
    code, _, err = observe(capsys, "--server", address, "--since", "yesterday")
    assert code == cli.EXIT_USAGE and "not a duration" in err
    code, _, err = observe(capsys, "--server", address, "--port", "http")
    assert code == cli.EXIT_USAGE and "INVALID_ARGUMENT" in err and "not a port" in err
    code, _, err = observe(capsys, "--server", "127.0.0.1:1")
    assert code == cli.EXIT_ERROR and "Hubble API at 127.0.0.1:1: UNAVAILABLE" in err
    with pytest.raises(SystemExit) as usage:
        cli.main(["observe", "--verdict", "maybe"])
    assert usage.value.code == cli.EXIT_USAGE


def test_pod_service_and_port_each_take_either_side():
    filters = flow_filters(pods=["nsm/client"], services=["firewall"], verdicts=["FORWARDED"])
    sides = {(tuple(f.source_pod), tuple(f.destination_pod), tuple(f.source_service),
              tuple(f.destination_service)) for f in filters}
    assert len(filters) == 4 and all(list(f.verdict) == [flow_pb2.FORWARDED] for f in filters)
    assert (("nsm/client",), (), (), ("firewall",)) in sides
    assert flow_filters() == []


def test_request_defaults_like_hubble_observe():
    assert flow_request(False, None, None, None, None, NOW).number == 20
    assert flow_request(True, None, None, None, None, NOW).number == 0
    first = flow_request(False, None, 5, None, None, NOW)
    assert (first.number, first.first) == (5, True)
    assert flow_request(False, None, None, "90s", None, NOW).since.seconds == NOW - 90
    assert parse_time("1h30m", NOW) == NOW - 5400
    assert parse_time("2023-11-14T22:13:20+00:00", 0) == NOW


def test_controller_refuses_a_bad_flow_buffer(capsys):
    topology = cli.REPO / "topologies" / "demo-chain.yaml"
    code = cli.main(["controller", "--topology", str(topology), "--flow-buffer", "0"])
    assert code == cli.EXIT_USAGE and "--flow-buffer" in capsys.readouterr().err


def test_the_controller_serves_hubble_with_its_switches_as_nodes(tmp_path, capsys):
    import grpc

    from hubble_api import observer_pb2, observer_pb2_grpc, relay_pb2
    from ryu_nsm.lab.controller_process import ControllerProcess, free_port

    address = f"127.0.0.1:{free_port()}"
    topology = cli.REPO / "topologies" / "demo-chain.yaml"
    flags = ["--hubble-listen", address, "--flow-buffer", "77", "--flow-log", str(tmp_path / "flows.log")]
    with ControllerProcess(topology, [], tmp_path / "ctl.log", extra_args=flags), \
            grpc.insecure_channel(address) as channel:
        stub = observer_pb2_grpc.ObserverStub(channel)
        status = stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=10, wait_for_ready=True)
        nodes = stub.GetNodes(observer_pb2.GetNodesRequest(), timeout=10).nodes
        code, lines, _ = observe(capsys, "--server", address)
    assert (status.max_flows, status.num_flows) == (77, 0)
    assert nodes and {n.state for n in nodes} == {relay_pb2.NODE_UNAVAILABLE}  # no switch connected
    assert code == 0 and lines == []
    assert (tmp_path / "flows.log").exists()
