"""Label filters and flow uuids over the Hubble API, on a real gRPC server on loopback, and the same
selectors through ``ryu-nsm observe``'s --label/--from-label/--to-label; the selector parser itself."""

from __future__ import annotations

import uuid

import grpc
import pytest

from hubble_api import flow_pb2, observer_pb2, observer_pb2_grpc
from ryu_nsm import cli
from ryu_nsm.observe.flow_events import Direction, Workload
from ryu_nsm.observe.flow_store import FlowStore
from ryu_nsm.observe.hubble_server import HubbleObserver, HubbleServer
from ryu_nsm.observe.label_selector import parse_label, parse_selector
from tests.test_flow_store import DROP, FIREWALL, event

PROBE = Workload("nsm", "probe-1", (("app", "probe"), ("canary", "true"), ("tier", "3")))
EVENTS = {
    "request": event(time=1),
    "reply": event(time=2, direction=Direction.TO_CLIENT, sport=80, dport=41234),
    "probe": event(time=3, source=PROBE, destination=FIREWALL),
    "drop": DROP,  # no workloads: no labels
}
NAMES = {ev.uuid: name for name, ev in EVENTS.items()}


@pytest.fixture
def hubble():
    store = FlowStore()
    store.add(EVENTS.values())
    server = HubbleServer(HubbleObserver(store, dict, "demo")).serve(["127.0.0.1:0"])
    channel = grpc.insecure_channel(server.addresses[0])
    yield store, observer_pb2_grpc.ObserverStub(channel), server.addresses[0]
    channel.close()
    server.stop()


def _names(stub, **request) -> set[str]:
    found = stub.GetFlows(observer_pb2.GetFlowsRequest(**request), timeout=5)
    return {NAMES[response.flow.uuid] for response in found}


F = flow_pb2.FlowFilter


@pytest.mark.parametrize(("whitelist", "expected"), [
    ([F(source_label=["app=client"])], {"request"}),
    ([F(source_label=["k8s:app=client"])], {"request"}),  # Hubble's source prefix
    ([F(source_label=["app==client"])], {"request"}),
    ([F(source_label=["unspec:app=client"])], set()),  # our labels come from k8s
    ([F(source_label=["app=nothing"])], set()),
    ([F(destination_label=["app in (client, probe)"])], {"reply"}),
    ([F(source_label=["app notin (client)"])], {"reply", "probe", "drop"}),  # absent key: holds
    ([F(source_label=["!canary"])], {"request", "reply", "drop"}),
    ([F(source_label=["canary"])], {"probe"}),
    ([F(source_label=["tier>2"])], {"probe"}),
    ([F(source_label=["app,canary=true"])], {"probe"}),  # requirements of one selector: AND
    ([F(source_label=["app=client", "app=probe"])], {"request", "probe"}),  # selectors of a field: OR
    ([F(source_label=["app=client"], destination_label=["app=firewall"])], {"request"}),  # fields: AND
    ([F(source_label=["app=client"], destination_label=["app=client"])], set()),
    ([F(source_label=["app"], verdict=[flow_pb2.DROPPED])], set()),
    ([F(source_label=["app=client"]), F(destination_label=["app=client"])], {"request", "reply"}),  # OR
])
def test_label_whitelists(hubble, whitelist, expected):
    _, stub, _ = hubble
    assert _names(stub, whitelist=whitelist) == expected


def test_label_blacklist_takes_away_from_the_whitelist(hubble):
    _, stub, _ = hubble
    assert _names(stub, blacklist=[F(source_label=["app"])]) == {"drop"}
    assert _names(stub, whitelist=[F(destination_label=["app=firewall"])],
                  blacklist=[F(source_label=["canary"])]) == {"request"}


@pytest.mark.parametrize(("bad", "said"), [
    (F(source_label=["app in (a"]), "invalid source label filter: invalid label selector 'app in (a'"),
    (F(destination_label=["app in ()"]), "invalid destination label filter"),
    (F(source_label=["Not A Key"]), "expected an operator after 'Not'"),
    (F(source_label=["tier>high"]), "needs an integer"),
])
def test_an_invalid_selector_is_invalid_argument_saying_why(hubble, bad, said):
    _, stub, _ = hubble
    with pytest.raises(grpc.RpcError) as raised:
        list(stub.GetFlows(observer_pb2.GetFlowsRequest(blacklist=[bad]), timeout=5))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and said in raised.value.details()


def test_labels_are_sent_as_hubble_writes_them(hubble):
    _, stub, _ = hubble
    (found,) = stub.GetFlows(observer_pb2.GetFlowsRequest(whitelist=[F(source_label=["canary"])]), timeout=5)
    assert list(found.flow.source.labels) == ["k8s:app=probe", "k8s:canary=true", "k8s:tier=3"]


def test_uuids_are_unique_and_the_same_on_every_call(hubble):
    store, stub, _ = hubble
    first = [r.flow.uuid for r in stub.GetFlows(observer_pb2.GetFlowsRequest(), timeout=5)]
    again = [r.flow.uuid for r in stub.GetFlows(observer_pb2.GetFlowsRequest(), timeout=5)]
    assert first == again == [ev.uuid for ev in EVENTS.values()] and len(set(first)) == 4
    assert all(uuid.UUID(text).version == 4 for text in first)
    follow = stub.GetFlows(observer_pb2.GetFlowsRequest(follow=True, number=1), timeout=10)
    assert next(follow).flow.uuid == first[-1]
    new = event(time=5)
    store.add([new])
    assert next(follow).flow.uuid == new.uuid and new.uuid not in first
    follow.cancel()


def test_the_uuid_filter_picks_one_event(hubble):
    _, stub, _ = hubble
    wanted = EVENTS["probe"].uuid
    assert _names(stub, whitelist=[F(uuid=[wanted])]) == {"probe"}
    assert _names(stub, blacklist=[F(uuid=[wanted, EVENTS["drop"].uuid])]) == {"request", "reply"}
    assert _names(stub, whitelist=[F(uuid=["no-such-flow"])]) == set()


# ---- ryu-nsm observe: the same selectors, by flag


def observe(capsys, *argv: str) -> tuple[int, list[str], str]:
    code = cli.main(["observe", *argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_observe_label_flags_filter_like_the_api(hubble, capsys):
    _, _, address = hubble
    code, lines, _ = observe(capsys, "--server", address, "--from-label", "k8s:app=client")
    assert code == 0 and len(lines) == 1 and "nsm/client-7d9f:41234 -> nsm/fw-1:80" in lines[0]
    _, lines, _ = observe(capsys, "--server", address, "--label", "app=client")  # either side
    assert len(lines) == 2 and "<-" in lines[1]
    _, lines, _ = observe(capsys, "--server", address, "--to-label", "app=firewall",
                          "--from-label", "!canary")
    assert len(lines) == 1 and "-> nsm/fw-1:80" in lines[0]
    _, lines, _ = observe(capsys, "--server", address, "-l", "canary", "-l", "app=nothing")
    assert len(lines) == 1 and "nsm/probe-1" in lines[0]


@pytest.mark.parametrize("flag", ["--label", "--from-label", "--to-label"])
def test_observe_refuses_an_invalid_selector_with_exit_2(capsys, flag):
    # No server: the selector is refused before any connection.
    code, lines, err = observe(capsys, "--server", "127.0.0.1:1", flag, "app notin (")
    assert code == cli.EXIT_USAGE == 2 and lines == []
    assert "label filter: invalid label selector 'app notin ('" in err


# ---- the parser


@pytest.mark.parametrize(("text", "source", "key", "value"), [
    ("k8s:app=web", "k8s", "app", "web"), ("app=web", "unspec", "app", "web"),
    ("k8s:io.kubernetes.pod.namespace=nsm", "k8s", "io.kubernetes.pod.namespace", "nsm"),
    ("reserved:host", "reserved", "host", ""), ("$world", "reserved", "world", ""),
])
def test_labels_read_as_cilium_reads_them(text, source, key, value):
    label = parse_label(text)
    assert (label.source, label.key, label.value) == (source, key, value)


def test_a_selector_key_with_a_source_matches_only_that_source():
    labels = [parse_label("k8s:app=web"), parse_label("container:role=db")]
    assert parse_selector("k8s:app=web").matches(labels)
    assert not parse_selector("container:app=web").matches(labels)
    assert parse_selector("role=db").matches(labels) and not parse_selector("k8s:role").matches(labels)
    assert parse_selector("k8s:app.kubernetes.io/name notin (x)").matches(labels)
    assert parse_selector("").matches(labels) and parse_selector("  ").matches([])


@pytest.mark.parametrize("text", ["app,", "=x", "app in", "app in (a,", "app=a=b", "!app=x", "app~x",
                                  "app=-x", "k8s:", "x" * 64, "app in (a b)", "app<", "notin"])
def test_selectors_kubernetes_refuses_are_refused(text):
    with pytest.raises(ValueError, match="invalid label selector"):
        parse_selector(text)

