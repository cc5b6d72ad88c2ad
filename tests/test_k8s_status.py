"""NetworkServiceConnection objects and Events: the pure part from real plans, the writer against the
emulated API server over real HTTP with the official client."""

import collections
import queue
import re
import threading
import time
from dataclasses import replace
from pathlib import Path

import kmock
import pytest
import yaml
from kubernetes import client

from ryu_nsm.core.controller import Controller
from ryu_nsm.core.model import Attachment, FrozenMap, Match, Resources
from ryu_nsm.core.planner import FAILED, FabricState, make_plan
from ryu_nsm.k8s.client import POOL_SIZE, StatusLoop, api_client
from ryu_nsm.k8s.connection_status import (
    API_VERSION,
    CONNECTION_ANNOTATION,
    KIND,
    MANAGED_BY,
    MANAGER,
    PLURAL,
    DesiredMemo,
    connection_object_name,
    desired_connections,
    merge_conditions,
    parse_problem,
    short_reason,
)
from ryu_nsm.k8s.status_writer import StatusWriter, SyncResult
from ryu_nsm.observe.report import chains, connection_entry, status_json
from ryu_nsm.sources import Document, load_paths, parse_located
from ryu_nsm.sources.kubernetes import KINDS as WATCHED_KINDS
from ryu_nsm.sources.kubernetes import KubernetesSource, document_source, object_key
from ryu_nsm.sources.topology import load_topology

from .fabrics import ring
from .k8s_emulator import Emulator
from .test_controller import FakeFabric
from .test_planner import att, resources_for

ROOT = Path(__file__).resolve().parent.parent
T0, T1, T2, T3 = (f"2026-01-01T00:0{minute}:00Z" for minute in range(4))
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@pytest.fixture(scope="module")
def demo():
    return (load_topology(ROOT / "topologies/demo-chain.yaml"), load_paths([ROOT / "examples/demo-chain"]))


def status_of(fabric, resources, state=None, planned="up"):
    """What Controller.status() reports for this plan, with every planned connection ``planned``."""
    plan = make_plan(fabric, resources, state)
    return {
        "connections": [connection_entry(pc, "failed" if pc.state == FAILED else planned)
                        for pc in plan.connections.values()],
        "problems": [str(p) for p in resources.problems],
    }


def by_id(objects):
    return {o["metadata"]["annotations"][CONNECTION_ANNOTATION]: o for o in objects.values()}


def conditions(obj):
    return {c["type"]: c for c in obj["status"]["conditions"]}


def request(resources, pod):
    return next(r for r in resources.requests if r.pod == pod)


def with_request(resources, pod, **changes):
    reqs = tuple(replace(r, **changes) if r.pod == pod else r for r in resources.requests)
    return replace(resources, requests=reqs)


# -- pure part ----------------------------------------------------------------------------------


def test_demo_chain_through_the_real_controller_reports_every_hop_up(demo):
    fabric, resources = demo
    ctl, switches = Controller(fabric), FakeFabric(fabric)
    switches.connect_all(ctl)
    switches.run(ctl, ctl.set_resources(resources, 1.0))
    status = status_json(ctl.status())
    assert {c["state"] for c in status["connections"]} == {"up"}

    objects = desired_connections(status, T0)
    assert set(objects) == {("default", f"{pod}-nsm-1") for pod in ("client", "firewall", "dpi")}
    client_obj = objects[("default", "client-nsm-1")]
    assert client_obj["apiVersion"] == API_VERSION and client_obj["kind"] == KIND
    assert client_obj["metadata"]["labels"] == {MANAGED_BY: MANAGER}
    assert client_obj["spec"] == {"client": {"pod": "client", "ifname": "nsm-1"},
                                  "networkService": "secure-internet"}
    st = client_obj["status"]
    # The chain from the client is the one report.chains shows for the whole status.
    assert st["chain"] == ["client", "firewall", "dpi", "vpn-gateway"] == chains(status["connections"])[0]
    assert [h["connection"] for h in st["hops"]] == ["default/client/nsm-1", "default/firewall/nsm-1",
                                                     "default/dpi/nsm-1"]
    entries = {e["id"]: e for e in status["connections"]}
    for hop in st["hops"]:
        entry = entries[hop["connection"]]
        assert hop["endpoint"] == entry["endpoint"] and hop["path"] == entry["path"]
        assert hop["clientAttachment"] == entry["client_attachment"]
        assert hop["endpointAttachment"] == entry["endpoint_attachment"] and hop["state"] == "Up"
    assert st["path"] == entries["default/client/nsm-1"]["path"] and st["path"][0] == "s1"
    assert (st["state"], st["reason"], st["observedGeneration"]) == ("Up", "Up", 1)
    assert {t: (c["status"], c["lastTransitionTime"], c["observedGeneration"])
            for t, c in conditions(client_obj).items()} == {
        "Resolved": ("True", T0, 1), "Admitted": ("True", T0, 1), "Ready": ("True", T0, 1)}
    # A function's own object starts the chain at the function.
    assert objects[("default", "dpi-nsm-1")]["status"]["chain"] == ["dpi", "vpn-gateway"]


def test_a_memo_gives_what_building_every_object_anew_gives(demo):
    """Objects kept between calls are those the same status would build: after a changed entry, a
    changed chain hop, a moved clock, a new generation and a change of shard masters."""
    fabric, resources = demo
    ctl, switches = Controller(fabric), FakeFabric(fabric)
    switches.connect_all(ctl)
    switches.run(ctl, ctl.set_resources(resources, 1.0))
    status = status_json(ctl.status())
    dpi = next(i for i, e in enumerate(status["connections"]) if e["id"] == "default/dpi/nsm-1")
    failed = [{**e, "state": "failed", "reason": "gone"} if i == dpi else e
              for i, e in enumerate(status["connections"])]
    key = ("default", "client-nsm-1")
    memo = DesiredMemo()
    for step, now, generations in [(status, T0, None), (status, "2026-02-02T00:00:00Z", None),
                                   ({**status, "connections": failed}, T0, None),
                                   (status, T0, {key: 3}),
                                   ({**status, "role": {"switches": {"s1": {"holder": "r1"}}}}, T0, None)]:
        fresh = desired_connections(step, now, generations)
        assert desired_connections(step, now, generations, memo) == fresh
    kept = desired_connections(status, T0, None, memo)
    assert desired_connections(status, T0, None, memo)[key] is kept[key]


def test_pending_connections_are_admitted_but_not_ready(demo):
    fabric, resources = demo
    ctl = Controller(fabric)
    ctl.set_resources(resources, 1.0)  # no switch connected: nothing can be installed
    objects = desired_connections(status_json(ctl.status()), T0)
    for obj in objects.values():
        cond = conditions(obj)
        assert obj["status"]["state"] == "Pending"
        assert (cond["Admitted"]["status"], cond["Ready"]["status"], cond["Ready"]["reason"]) == (
            "True", "False", "Pending")


def _drop_endpoint(res, name):
    return replace(res, endpoints=tuple(e for e in res.endpoints if e.name != name))


def _only_match(res, match):
    return replace(res, services=tuple(replace(s, matches=(match,)) for s in res.services))


def _second_client(res):
    extra = replace(request(res, "client"), pod="client2", attachment=Attachment("s1", "s1-intruder"))
    return replace(res, requests=res.requests + (extra,))


def _unattached_endpoint(res, name):
    return replace(res, endpoints=tuple(replace(e, attachments=()) if e.name == name else e
                                        for e in res.endpoints))


# (what to do to the demo resources, fabric state, failing connection, reason, Resolved, Admitted)
FAILURES = [
    (lambda r: _drop_endpoint(r, "dpi"), None, "default/firewall/nsm-1", "NoEndpoint", "False", "Unknown"),
    (lambda r: replace(r, services=()), None, "default/client/nsm-1", "ServiceNotFound", "False", "Unknown"),
    (lambda r: with_request(r, "client", attachment=None), None, "default/client/nsm-1", "NotAttached",
     "False", "Unknown"),
    (lambda r: with_request(r, "firewall", attachment=Attachment("s1", "s1-client")), None,
     "default/firewall/nsm-1", "AttachmentInUse", "False", "Unknown"),
    (lambda r: _only_match(r, Match(FrozenMap(app="{{.app}}"))), None, "default/client/nsm-1", "MissingLabel",
     "False", "Unknown"),
    (lambda r: _only_match(r, Match(FrozenMap(app="nobody"))), None, "default/client/nsm-1", "NoMatch",
     "False", "Unknown"),
    (_second_client, None, "default/client2/nsm-1", "EndpointsBusy", "False", "Unknown"),
    (lambda r: _unattached_endpoint(r, "firewall"), None, "default/client/nsm-1", "EndpointNotAttached",
     "False", "Unknown"),
    (lambda r: with_request(r, "client", attachment=Attachment("s9", "p1")), None, "default/client/nsm-1",
     "UnknownSwitch", "True", "False"),
    (lambda r: with_request(r, "client", attachment=Attachment("s1", "nowhere")), None,
     "default/client/nsm-1", "UnknownPort", "True", "False"),
    (lambda r: r, FabricState(down_switches=frozenset({"s3"})), "default/firewall/nsm-1", "NoPath",
     "True", "False"),
]


@pytest.mark.parametrize("change, state, failing, reason, resolved, admitted", FAILURES,
                         ids=[f[3] for f in FAILURES])
def test_each_failure_of_the_planner_gets_its_short_reason_and_conditions(
        demo, change, state, failing, reason, resolved, admitted):
    fabric, resources = demo
    status = status_of(fabric, change(resources), state)
    entry = next(e for e in status["connections"] if e["id"] == failing)
    assert entry["state"] == "failed"
    obj = by_id(desired_connections(status, T0))[failing]
    cond = conditions(obj)
    assert (obj["status"]["state"], obj["status"]["reason"]) == ("Failed", reason)
    assert obj["status"]["message"] == entry["reason"]  # the full text
    assert (cond["Resolved"]["status"], cond["Admitted"]["status"]) == (resolved, admitted)
    assert (cond["Ready"]["status"], cond["Ready"]["reason"]) == ("False", reason)
    failed_condition = cond["Resolved"] if resolved == "False" else cond["Admitted"]
    assert (failed_condition["reason"], failed_condition["message"]) == (reason, entry["reason"])


def test_tag_space_exhaustion_is_its_own_reason():
    hosts = {f"c{i}": ("s1",) for i in range(4)} | {f"e{i}": ("s2",) for i in range(4)}
    fab = ring(2, hosts, tag_range=(10, 12))
    status = status_of(fab, resources_for([(att(fab, f"c{i}"), att(fab, f"e{i}")) for i in range(4)]))
    (obj,) = [o for o in desired_connections(status, T0).values() if o["status"]["state"] == "Failed"]
    assert obj["status"]["reason"] == "TagSpaceExhausted" and "no free tag" in obj["status"]["message"]
    assert (conditions(obj)["Resolved"]["status"], conditions(obj)["Admitted"]["status"]) == ("True", "False")


def test_an_unknown_failure_text_is_failed_and_states_map_to_their_own_reasons():
    assert short_reason("failed", "something nobody wrote yet") == "Failed"
    assert short_reason("up", "") == "Up" and short_reason("pending", "") == "Pending"


def test_a_failure_further_down_the_chain_makes_the_client_not_ready(demo):
    fabric, resources = demo
    objects = by_id(desired_connections(status_of(fabric, _drop_endpoint(resources, "dpi")), T0))
    client_obj = objects["default/client/nsm-1"]
    assert client_obj["status"]["state"] == "Up"  # its own hop is fine
    assert client_obj["status"]["chain"] == ["client", "firewall"]
    assert [h["state"] for h in client_obj["status"]["hops"]] == ["Up", "Failed"]
    assert "endpoint" not in client_obj["status"]["hops"][1]  # absent, not null
    ready = conditions(client_obj)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "NoEndpoint")
    assert "default/firewall/nsm-1" in ready["message"]


def test_merge_conditions_keeps_the_transition_time_while_the_status_holds():
    old = [{"type": "Ready", "status": "False", "reason": "Pending", "lastTransitionTime": T0},
           {"type": "Admitted", "status": "True", "reason": "PathAllocated", "lastTransitionTime": T0},
           {"type": "Gone", "status": "True", "lastTransitionTime": T0}]
    new = [{"type": "Admitted", "status": "True", "reason": "PathAllocated", "message": "other path"},
           {"type": "Ready", "status": "True", "reason": "Up"},
           {"type": "Resolved", "status": "True", "reason": "EndpointChosen"}]
    merged = merge_conditions(old, new, T1)
    assert [(c["type"], c["lastTransitionTime"]) for c in merged] == [
        ("Admitted", T0), ("Ready", T1), ("Resolved", T1)]
    assert merged[0]["message"] == "other path"  # the rest is the new condition's
    assert merge_conditions(None, new, T2)[0]["lastTransitionTime"] == T2


def test_recomputing_an_unchanged_status_later_gives_the_stored_status_back(demo):
    fabric, resources = demo
    status = status_of(fabric, resources)
    first = desired_connections(status, T0)
    later = desired_connections(status, T1)
    for key, obj in later.items():
        stored = first[key]["status"]
        again = {**obj["status"], "conditions": merge_conditions(stored["conditions"],
                                                                 obj["status"]["conditions"], T1)}
        assert again == stored


def test_only_the_conditions_that_change_status_get_a_new_transition_time(demo):
    fabric, resources = demo
    pending = desired_connections(status_of(fabric, resources, planned="pending"), T0)
    up = desired_connections(status_of(fabric, resources), T1)
    key = ("default", "client-nsm-1")
    merged = merge_conditions(pending[key]["status"]["conditions"], up[key]["status"]["conditions"], T1)
    times = {c["type"]: c["lastTransitionTime"] for c in merged}
    assert times == {"Resolved": T0, "Admitted": T0, "Ready": T1}


def test_object_names_are_dns_safe_and_distinct():
    assert connection_object_name("client", "nsm-1") == "client-nsm-1"
    odd = connection_object_name("Web.Front", "eth_0")
    assert DNS_LABEL.match(odd) and odd != connection_object_name("web-front", "eth-0")
    long = connection_object_name("p" * 253, "nsm-1")
    assert len(long) <= 253 and DNS_LABEL.match(long)
    # "a-b" + "c" and "a" + "b-c" spell the same name: the later one is told apart.
    status = {"connections": [
        {"id": f"ns/{pod}/{ifname}", "namespace": "ns", "network_service": "svc", "client": pod,
         "client_attachment": None, "endpoint": None, "endpoint_attachment": None, "path": [], "tags": {},
         "state": "failed", "reason": "x"} for pod, ifname in (("a-b", "c"), ("a", "b-c"))]}
    names = {o["metadata"]["annotations"][CONNECTION_ANNOTATION]: name
             for (_, name), o in desired_connections(status, T0).items()}
    assert names["ns/a-b/c"] == "a-b-c"
    assert names["ns/a/b-c"] != "a-b-c" and DNS_LABEL.match(names["ns/a/b-c"])


def test_a_loop_of_functions_ends_the_chain_where_it_closes():
    def entry(client_pod, endpoint):
        return {"id": f"ns/{client_pod}/nsm-1", "namespace": "ns", "network_service": "svc",
                "client": client_pod, "client_attachment": "s1/a", "endpoint": endpoint,
                "endpoint_attachment": "s1/b", "path": ["s1"], "tags": {}, "state": "up"}
    objects = desired_connections({"connections": [entry("a", "b"), entry("b", "a")]}, T0)
    assert objects[("ns", "a-nsm-1")]["status"]["chain"] == ["a", "b", "a"]
    assert len(objects[("ns", "a-nsm-1")]["status"]["hops"]) == 2


def kube_problems(*bodies):
    """Problems as the Kubernetes source names them (its own naming of documents)."""
    kinds = {k.kind: k for k in WATCHED_KINDS}
    docs = [Document(document_source(object_key(kinds[b["kind"]], b)), 0, b) for b in bodies]
    return [str(p) for p in parse_located(docs).problems]


BAD_POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {
    "name": "bad", "namespace": "default",
    "annotations": {"networkservicemesh.io": "kernel://secure-internet/nsm-1",
                    "ryu-nsm.io/attachments": "nsm-1=nowhere"}}}
BAD_SERVICE = {"apiVersion": "networkservicemesh.io/v1", "kind": "NetworkService",
               "metadata": {"name": "broken", "namespace": "blue"}, "spec": {"matches": "not a list"}}


def test_problems_of_kubernetes_objects_are_parsed_back_to_the_object_and_field():
    pod_problem, service_problem = kube_problems(BAD_POD, BAD_SERVICE)
    pod = parse_problem(pod_problem)
    assert (pod.kind, pod.namespace, pod.name) == ("Pod", "default", "bad")
    assert pod.field_path.startswith("metadata.annotations") and "ryu-nsm.io/attachments" in pod.field_path
    assert pod.text == f"{pod.field_path}: {pod.message}" and pod.message
    svc = parse_problem(service_problem)
    assert (svc.kind, svc.namespace, svc.name, svc.field_path) == ("NetworkService", "blue", "broken",
                                                                   "spec.matches")
    ns = parse_problem("Namespace/team-a[0]: metadata.annotations: expected a mapping")
    assert (ns.kind, ns.namespace, ns.name) == ("Namespace", "", "team-a")
    assert ns.field_path == "metadata.annotations"
    kept = parse_problem("Pod/default/bad[0]: keeping the last valid version of Pod default/bad until fixed")
    assert kept.field_path == "" and kept.message.startswith("keeping")
    # Problems of files are not about Kubernetes objects.
    file_problems = [str(p) for p in load_paths([ROOT / "examples/bad"]).problems]
    assert file_problems and all(parse_problem(p) is None for p in file_problems)


# -- the writer against the emulated API server --------------------------------------------------


class Clock:
    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def api():
    with Emulator() as emulator:
        yield emulator


@pytest.fixture
def pods(api):
    for name in ("client", "firewall", "dpi", "bad"):
        api.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}})
    return {("Pod", "default", p["metadata"]["name"]): p for p in api.objects("Pod")}


def writer_for(api, clock):
    return StatusWriter(api.api_client(), instance="test-0", clock=clock)


def writes(api):
    """Every write request the API server has seen (method, path)."""
    return [(r.method.value, r.url.path) for r in list(api.handler) if r.method.value != "GET"]


def stored(api):
    return {o["metadata"]["name"]: o for o in api.objects(KIND)}


def events(api):
    return api.objects("Event", api_version="v1")


def test_sync_creates_objects_with_status_owner_and_no_write_when_nothing_changed(api, pods, demo):
    fabric, resources = demo
    clock = Clock(T0)
    writer = writer_for(api, clock)
    result = writer.sync(status_of(fabric, resources, planned="pending"), pods)
    assert not result.errors
    assert sorted(result.created) == sorted(result.status_patched) == [
        "default/client-nsm-1", "default/dpi-nsm-1", "default/firewall-nsm-1"]
    objs = stored(api)
    assert set(objs) == {"client-nsm-1", "firewall-nsm-1", "dpi-nsm-1"}
    client_obj = objs["client-nsm-1"]
    assert client_obj["metadata"]["labels"][MANAGED_BY] == MANAGER
    assert client_obj["status"]["state"] == "Pending" and client_obj["status"]["chain"][-1] == "vpn-gateway"
    (owner,) = client_obj["metadata"]["ownerReferences"]
    pod = pods[("Pod", "default", "client")]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Pod", "client", pod["metadata"]["uid"])
    assert events(api) == []  # nothing failed, nothing came up

    # Same status, later: not one write request.
    assert sorted(method for method, _ in writes(api)) == ["PATCH"] * 3 + ["POST"] * 3
    clock.now = T1
    before, version = len(writes(api)), api.resource_version
    again = writer.sync(status_of(fabric, resources, planned="pending"), pods)
    assert not again.errors and again.writes == 0
    assert writes(api)[before:] == [] and api.resource_version == version


def test_a_sync_looks_again_only_at_the_objects_that_changed(api, pods, demo, monkeypatch):
    # At 10,000 connections comparing every desired object with its stored one was a third of a
    # request's CPU: one found in step is not looked at again while it, its stored object and its
    # Pod stay the same, and one that changed is (and written).
    from ryu_nsm.k8s import status_writer

    fabric, resources = demo
    clock = Clock(T0)
    writer = writer_for(api, clock)
    status = status_of(fabric, resources, planned="pending")
    writer.sync(status, pods)
    looked = []
    real = status_writer._in_step
    monkeypatch.setattr(status_writer, "_in_step", lambda body, *rest: looked.append(
        body["metadata"]["name"]) or real(body, *rest))
    clock.now = T1
    assert writer.sync(status, pods).writes == 0
    assert sorted(looked) == ["client-nsm-1", "dpi-nsm-1", "firewall-nsm-1"]  # written last time
    looked.clear()
    assert writer.sync(status, pods).writes == 0 and looked == []
    entries = [{**e, "state": "up"} if e["id"].startswith("default/client/") else e
               for e in status["connections"]]
    result = writer.sync({**status, "connections": entries}, pods)
    assert looked == ["client-nsm-1"] and result.status_patched == ["default/client-nsm-1"]
    # A relist costs the objects someone else changed (another resourceVersion), not all of them.
    writer.sync({**status, "connections": entries}, pods)  # the one written is found in step
    looked.clear()
    assert writer.sync({**status, "connections": entries}, pods, relist=True).writes == 0 and looked == []
    failed = {"status": {"state": "Failed"}}
    api.patch(KIND, "dpi-nsm-1", failed, api_version=API_VERSION, subresource="status")
    result = writer.sync({**status, "connections": entries}, pods, relist=True)
    assert looked == ["dpi-nsm-1"] and result.status_patched == ["default/dpi-nsm-1"]
    assert stored(api)["dpi-nsm-1"]["status"]["state"] == "Pending"


def test_changes_patch_only_the_status_that_differs_and_tell_the_pod(api, pods, demo):
    fabric, resources = demo
    clock = Clock(T0)
    writer = writer_for(api, clock)
    writer.sync(status_of(fabric, resources, planned="pending"), pods)

    clock.now = T1
    result = writer.sync(status_of(fabric, resources), pods)  # every hop is up now
    assert not result.errors and result.created == [] and len(result.status_patched) == 3
    objs = stored(api)
    ready = conditions(objs["client-nsm-1"])
    assert (ready["Ready"]["status"], ready["Ready"]["lastTransitionTime"]) == ("True", T1)
    assert ready["Resolved"]["lastTransitionTime"] == T0  # unchanged status, unchanged time
    ups = [e for e in events(api) if e["reason"] == "ConnectionUp"]
    assert sorted(e["involvedObject"]["name"] for e in ups) == ["client", "dpi", "firewall"]
    assert all(e["type"] == "Normal" and e["involvedObject"]["uid"] for e in ups)

    # The DPI endpoint goes away: only the objects whose chain it is on change.
    clock.now = T2
    broken = status_of(fabric, _drop_endpoint(resources, "dpi"))
    result = writer.sync(broken, pods)
    assert not result.errors
    assert sorted(result.status_patched) == ["default/client-nsm-1", "default/firewall-nsm-1"]
    objs = stored(api)
    fw = objs["firewall-nsm-1"]["status"]
    assert (fw["state"], fw["reason"]) == ("Failed", "NoEndpoint")
    assert conditions(objs["client-nsm-1"])["Ready"]["reason"] == "NoEndpoint"
    assert objs["dpi-nsm-1"]["status"]["state"] == "Up"
    (warning,) = [e for e in events(api) if e["type"] == "Warning"]
    assert warning["reason"] == "NoEndpoint" and warning["involvedObject"]["name"] == "firewall"
    assert warning["involvedObject"]["uid"] == pods[("Pod", "default", "firewall")]["metadata"]["uid"]
    assert "default/firewall/nsm-1" in warning["message"] and fw["message"] in warning["message"]

    # While it persists: no write, no second Event.
    clock.now = T3
    before, version = len(writes(api)), api.resource_version
    assert writer.sync(broken, pods).writes == 0
    assert writes(api)[before:] == [] and api.resource_version == version


def test_a_failure_that_comes_back_counts_on_the_same_event(api, pods, demo):
    fabric, resources = demo
    clock = Clock(T0)
    writer = writer_for(api, clock)
    broken, fine = status_of(fabric, _drop_endpoint(resources, "dpi")), status_of(fabric, resources)
    for now, status in ((T0, broken), (T1, fine), (T2, broken)):
        clock.now = now
        assert not writer.sync(status, pods).errors
    (warning,) = [e for e in events(api) if e["type"] == "Warning"]
    assert (warning["count"], warning["lastTimestamp"]) == (2, T2)


def test_a_removed_request_deletes_its_object_and_nothing_of_others(api, pods, demo):
    fabric, resources = demo
    writer = writer_for(api, Clock(T0))
    writer.sync(status_of(fabric, resources), pods)
    api.create({"apiVersion": API_VERSION, "kind": KIND,
                "metadata": {"name": "hand-made", "namespace": "default"},
                "spec": {"client": {"pod": "x", "ifname": "y"}, "networkService": "svc"}})
    fewer = replace(resources, requests=tuple(r for r in resources.requests if r.pod != "client"))
    result = writer.sync(status_of(fabric, fewer), pods)
    assert not result.errors and result.deleted == ["default/client-nsm-1"]
    assert set(stored(api)) == {"firewall-nsm-1", "dpi-nsm-1", "hand-made"}


def test_an_object_deleted_behind_its_back_is_created_again_after_a_relist(api, pods, demo):
    fabric, resources = demo
    writer = writer_for(api, Clock(T0))
    status = status_of(fabric, resources)
    writer.sync(status, pods)
    api.delete(KIND, "dpi-nsm-1")
    # What the writer stored is what it remembers: not a request until it is asked to list again.
    served = len(list(api.handler))
    assert writer.sync(status, pods).writes == 0 and len(list(api.handler)) == served
    result = writer.sync(status, pods, relist=True)
    assert not result.errors and result.created == ["default/dpi-nsm-1"]
    assert stored(api)["dpi-nsm-1"]["status"]["state"] == "Up"


def test_a_vanished_object_found_by_a_404_is_created_again_on_the_next_sync(api, pods, demo):
    fabric, resources = demo
    writer = writer_for(api, Clock(T0))
    writer.sync(status_of(fabric, resources, planned="pending"), pods)
    api.delete(KIND, "dpi-nsm-1")
    up = status_of(fabric, resources)
    result = writer.sync(up, pods)  # the status patch of dpi-nsm-1 finds it gone: not an error
    assert not result.errors and "default/dpi-nsm-1" not in result.status_patched
    assert sorted(result.status_patched) == ["default/client-nsm-1", "default/firewall-nsm-1"]
    lists = len(api.requests("list", PLURAL))
    result = writer.sync(up, pods)  # unasked: the 404 said someone else changed things
    assert len(api.requests("list", PLURAL)) == lists + 1
    assert not result.errors and result.created == ["default/dpi-nsm-1"]
    assert stored(api)["dpi-nsm-1"]["status"]["state"] == "Up"


def test_a_changed_spec_or_a_recreated_pod_is_patched_on_the_main_object(api, pods, demo):
    fabric, resources = demo
    writer = writer_for(api, Clock(T0))
    status = status_of(fabric, resources)
    writer.sync(status, {})  # Pod uids unknown yet: no ownerReference
    assert "ownerReferences" not in stored(api)["client-nsm-1"]["metadata"]
    result = writer.sync(status, pods)
    assert sorted(result.updated) == ["default/client-nsm-1", "default/dpi-nsm-1", "default/firewall-nsm-1"]
    assert result.status_patched == []
    api.delete("Pod", "client")
    new_pod = api.create({"apiVersion": "v1", "kind": "Pod",
                          "metadata": {"name": "client", "namespace": "default"}})
    result = writer.sync(status, {**pods, ("Pod", "default", "client"): new_pod})
    assert result.updated == ["default/client-nsm-1"]
    (owner,) = stored(api)["client-nsm-1"]["metadata"]["ownerReferences"]
    assert owner["uid"] == new_pod["metadata"]["uid"]
    # Someone edits our spec: it is put back once listed, and the status follows the new generation.
    api.patch(KIND, "dpi-nsm-1", {"spec": {"networkService": "edited"}})
    result = writer.sync(status, {**pods, ("Pod", "default", "client"): new_pod}, relist=True)
    assert result.updated == ["default/dpi-nsm-1"] and result.status_patched == ["default/dpi-nsm-1"]
    dpi = stored(api)["dpi-nsm-1"]
    assert dpi["spec"]["networkService"] == "secure-internet"
    assert dpi["status"]["observedGeneration"] == dpi["metadata"]["generation"] == 3
    assert {c["observedGeneration"] for c in dpi["status"]["conditions"]} == {3}


def test_a_name_taken_by_an_object_not_ours_is_left_alone(api, pods, demo):
    fabric, resources = demo
    theirs = {"apiVersion": API_VERSION, "kind": KIND,
              "metadata": {"name": "client-nsm-1", "namespace": "default"},
              "spec": {"client": {"pod": "someone", "ifname": "else"}, "networkService": "theirs"}}
    api.create(theirs)
    result = writer_for(api, Clock(T0)).sync(status_of(fabric, resources), pods)
    assert not result.errors  # 409 on create: exists
    assert "default/client-nsm-1" not in result.created and len(result.created) == 2
    assert stored(api)["client-nsm-1"]["spec"] == theirs["spec"]


def test_invalid_objects_get_one_warning_naming_the_field_until_fixed(api, pods, demo):
    fabric, resources = demo
    clock = Clock(T0)
    writer = writer_for(api, clock)
    problems = kube_problems(BAD_POD, BAD_SERVICE)
    status = {**status_of(fabric, resources), "problems": problems}
    objects = {**pods, ("NetworkService", "blue", "broken"): {**BAD_SERVICE, "metadata": {
        **BAD_SERVICE["metadata"], "uid": "svc-uid"}}}
    result = writer.sync(status, objects)
    assert not result.errors
    invalid = {e["involvedObject"]["name"]: e for e in events(api) if e["reason"] == "InvalidSpec"}
    assert set(invalid) == {"bad", "broken"}
    pod_event, svc_event = invalid["bad"], invalid["broken"]
    assert pod_event["type"] == "Warning" and pod_event["metadata"]["namespace"] == "default"
    assert pod_event["message"].startswith("metadata.annotations")
    assert "ryu-nsm.io/attachments" in pod_event["message"]
    assert pod_event["involvedObject"]["uid"] == pods[("Pod", "default", "bad")]["metadata"]["uid"]
    assert svc_event["message"].startswith("spec.matches: ") and svc_event["metadata"]["namespace"] == "blue"
    assert svc_event["involvedObject"] == {"apiVersion": "networkservicemesh.io/v1", "kind": "NetworkService",
                                           "name": "broken", "namespace": "blue", "uid": "svc-uid"}

    clock.now = T1
    before = len(writes(api))
    assert writer.sync(status, objects).writes == 0 and writes(api)[before:] == []

    # Fixed, then broken again: the same Event counts one more.
    clock.now = T2
    writer.sync({**status, "problems": []}, objects)
    clock.now = T3
    writer.sync(status, objects)
    counts = {e["involvedObject"]["name"]: (e["count"], e["lastTimestamp"]) for e in events(api)
              if e["reason"] == "InvalidSpec"}
    assert counts == {"bad": (2, T3), "broken": (2, T3)}


def test_an_unavailable_api_is_reported_not_raised_and_the_next_sync_catches_up(api, pods, demo):
    fabric, resources = demo
    writer = StatusWriter(api.api_client(), instance="test-0", clock=Clock(T0), timeout=2.0)
    api.pause()
    result = writer.sync(status_of(fabric, resources), pods)
    assert result.writes == 0 and result.errors and "list networkserviceconnections" in result.errors[0]
    api.resume()
    result = writer.sync(status_of(fabric, resources), pods)
    assert not result.errors and len(result.created) == 3


def test_a_failing_status_patch_names_the_object_and_the_rest_goes_on(api, pods, demo):
    fabric, resources = demo
    writer = writer_for(api, Clock(T0))
    writer.sync(status_of(fabric, resources, planned="pending"), pods)
    # A fault on one URL: the server refuses the status patch of one object.
    path = "/apis/ryu-nsm.io/v1alpha1/namespaces/default/networkserviceconnections/dpi-nsm-1/status"
    api.handler[f"patch {path}"] << {"kind": "Status", "code": 500} << 500
    result = writer.sync(status_of(fabric, resources), pods)
    assert len(result.errors) == 1 and "default/dpi-nsm-1" in result.errors[0]
    assert sorted(result.status_patched) == ["default/client-nsm-1", "default/firewall-nsm-1"]


def test_only_the_namespaces_managed_are_listed_and_written(api, demo):
    fabric, resources = demo
    blue = replace(resources, services=tuple(replace(s, namespace="blue") for s in resources.services),
                   endpoints=tuple(replace(e, namespace="blue") for e in resources.endpoints),
                   requests=tuple(replace(r, namespace="blue") for r in resources.requests))
    both = Resources(resources.services + blue.services, resources.endpoints + blue.endpoints,
                     resources.requests + blue.requests)
    writer = StatusWriter(client.ApiClient(client.Configuration(host=api.url)), namespaces=["blue"],
                          instance="test-0", clock=Clock(T0))
    result = writer.sync(status_of(fabric, both, planned="pending"), {})
    assert not result.errors
    assert {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in api.objects(KIND)} == {
        ("blue", "client-nsm-1"), ("blue", "firewall-nsm-1"), ("blue", "dpi-nsm-1")}
    lists = [r.url.path for r in list(api.handler) if r.method.value == "GET"]
    assert lists and all("/namespaces/blue/" in p for p in lists)


def test_from_the_watched_cluster_to_connections_and_events(api, demo):
    """The Kubernetes source watching the API, the controller, and the writer reporting back."""
    fabric, _ = demo
    for path in sorted((ROOT / "examples/demo-chain").glob("*.yaml")):
        for body in yaml.safe_load_all(path.read_text()):
            if body:
                api.create({**body, "metadata": {**body["metadata"], "namespace": "default"}})
    api.create(BAD_POD)
    delivered = queue.Queue()
    source = KubernetesSource(api.api_client(), delivered.put, coalesce=0.01)
    source.start()
    try:
        resources = delivered.get(timeout=20)
        ctl, switches = Controller(fabric), FakeFabric(fabric)
        switches.connect_all(ctl)
        switches.run(ctl, ctl.set_resources(resources, 1.0))
        writer = writer_for(api, Clock(T0))
        result = writer.sync(status_json(ctl.status()), source.objects())
        assert not result.errors and len(result.created) == 3
        client_obj = stored(api)["client-nsm-1"]
        assert client_obj["status"]["chain"] == ["client", "firewall", "dpi", "vpn-gateway"]
        (owner,) = client_obj["metadata"]["ownerReferences"]
        assert owner["uid"] == api.get("Pod", "client")["metadata"]["uid"]
        (invalid,) = [e for e in events(api) if e["reason"] == "InvalidSpec"]
        assert invalid["involvedObject"]["uid"] == api.get("Pod", "bad")["metadata"]["uid"]
        assert "ryu-nsm.io/attachments" in invalid["message"]

        # The firewall's endpoint goes away in the cluster: its client is told.
        api.delete("NetworkServiceEndpoint", "firewall")
        deadline = time.monotonic() + 20
        while any(e.name == "firewall" for e in resources.endpoints):
            resources = delivered.get(timeout=max(0.0, deadline - time.monotonic()))
        switches.run(ctl, ctl.set_resources(resources, 2.0))
        result = writer.sync(status_json(ctl.status()), source.objects())
        assert not result.errors and "default/client-nsm-1" in result.status_patched
        assert stored(api)["client-nsm-1"]["status"]["reason"] == "NoEndpoint"
        warning = next(e for e in events(api) if e["reason"] == "NoEndpoint")
        assert warning["involvedObject"]["uid"] == owner["uid"]
    finally:
        source.stop()


# -- what is stored is remembered; objects are written concurrently, the most useful first ----------


def wait_until(predicate, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_a_sync_with_a_valid_cache_lists_nothing_until_a_relist_is_asked_for(api, pods, demo):
    fabric, resources = demo
    clock = Clock(T0)
    writer = writer_for(api, clock)
    assert not writer.sync(status_of(fabric, resources, planned="pending"), pods).errors
    assert len(api.requests("list", PLURAL)) == 1

    clock.now = T1
    served = len(list(api.handler))
    result = writer.sync(status_of(fabric, resources), pods)
    assert not result.errors and len(result.status_patched) == 3 and len(result.events) == 3
    assert len(api.requests("list", PLURAL)) == 1
    assert {r.method.value for r in list(api.handler)[served:]} <= {"PATCH", "POST"}  # writes only
    assert conditions(stored(api)["client-nsm-1"])["Ready"]["status"] == "True"

    # Unchanged: not one request; the cache holds what the patches answered (generation included).
    clock.now = T2
    served = len(list(api.handler))
    assert writer.sync(status_of(fabric, resources), pods).writes == 0
    assert len(list(api.handler)) == served
    result = writer.sync(status_of(fabric, resources), pods, relist=True)
    assert not result.errors and result.writes == 0 and len(api.requests("list", PLURAL)) == 2


def test_after_an_error_the_next_sync_lists_again(api, pods, demo):
    fabric, resources = demo
    writer = StatusWriter(api.api_client(), instance="test-0", clock=Clock(T0), timeout=2.0)
    writer.sync(status_of(fabric, resources, planned="pending"), pods)
    api.pause()
    result = writer.sync(status_of(fabric, resources), pods)
    assert result.writes == 0 and len(result.errors) == 3
    assert all("patch status of" in e for e in result.errors)
    api.resume()
    lists = len(api.requests("list", PLURAL))
    result = writer.sync(status_of(fabric, resources), pods)
    assert not result.errors and len(result.status_patched) == 3
    assert len(api.requests("list", PLURAL)) == lists + 1
    assert {o["status"]["state"] for o in stored(api).values()} == {"Up"}


def test_objects_whose_state_changed_are_written_first(api, pods, demo):
    fabric, resources = demo
    writer = StatusWriter(api.api_client(), instance="test-0", clock=Clock(T0), workers=1)
    pending = status_of(fabric, resources, planned="pending")
    writer.sync(pending, pods)
    # Only the DPI's connection comes up: the client's and the firewall's objects change too (their
    # hops), but their own state does not. By connection id the DPI's would be second.
    dpi_up = {**pending, "connections": [{**e, "state": "up"} if e["id"] == "default/dpi/nsm-1" else e
                                         for e in pending["connections"]]}
    before = len(writes(api))
    result = writer.sync(dpi_up, pods)
    assert not result.errors
    patched = [path.split("/")[-2] for _, path in writes(api)[before:] if path.endswith("/status")]
    assert patched == ["dpi-nsm-1", "client-nsm-1", "firewall-nsm-1"]
    assert result.status_patched == [f"default/{name}" for name in patched]
    # The DPI's Pod is told it is up once every object says so.
    assert [path.rpartition("/")[2] for _, path in writes(api)[before:]] == ["status"] * 3 + ["events"]
    assert len(result.events) == 1 and "ConnectionUp on Pod default/dpi" in result.events[0]
    assert stored(api)["client-nsm-1"]["status"]["hops"][2]["state"] == "Up"


def test_a_failed_event_of_a_new_object_is_posted_on_the_next_sync(api, pods, demo):
    fabric, resources = demo
    failing = threading.Event()
    failing.set()
    api.call(lambda: api.handler[kmock.action.CREATE, kmock.resource("", "v1", "events"), failing] << 500)
    writer = writer_for(api, Clock(T0))
    broken = status_of(fabric, _drop_endpoint(resources, "dpi"))
    result = writer.sync(broken, pods)
    assert len(result.errors) == 1 and "create Event" in result.errors[0] and len(result.created) == 3
    assert events(api) == []
    failing.clear()
    # The object already says Failed: the writer still knows the Pod was not told.
    result = writer.sync(broken, pods)
    assert not result.errors and result.status_patched == []
    (warning,) = events(api)
    assert (warning["reason"], warning["involvedObject"]["name"], warning["count"]) == (
        "NoEndpoint", "firewall", 1)


def chain_status(chains_of, phase):
    """``chains_of`` chains client-i → fw-i → dpi-i → gw-i in two namespaces, as ``phase`` leaves them:
    0 all pending; 1 thirds up / firewall hop failed / pending; 2 every fifth chain gone, the failed
    ones up again, the pending ones failed at the DPI; 3 the firewall hops of phase 1 failed again."""
    entries = []
    for i in range(chains_of):
        if phase >= 2 and i % 5 == 0:
            continue
        namespace = ("default", "blue")[i % 2]
        pods_ = [f"client-{i}", f"fw-{i}", f"dpi-{i}", f"gw-{i}"]
        for hop, (pod, endpoint) in enumerate(zip(pods_, pods_[1:], strict=False)):
            state = {0: "pending", 1: ("up", "pending", "pending")[i % 3]}.get(phase, "up")
            if (phase in (1, 3) and i % 3 == 1 and hop == 1) or (phase >= 2 and i % 3 == 2 and hop == 2):
                state = "failed"
            entry = {"id": f"{namespace}/{pod}/nsm-1", "namespace": namespace, "network_service": "svc",
                     "client": pod, "client_attachment": f"s1/{pod}", "endpoint": endpoint,
                     "endpoint_attachment": f"s2/{endpoint}", "path": ["s1", "s2"],
                     "tags": {"s1-s2": 100 + i}, "state": state}
            if state == "failed":
                entry["reason"] = f"no endpoint is registered for network service 'svc' ({i})"
            entries.append(entry)
    return {"connections": entries, "problems": []}


def run_phases(workers, chains_of, phases):
    """Every phase synced by a writer with ``workers``: the results, the stored objects and the Events,
    without what the API server makes up (uids, resourceVersions, creation times, Event names)."""
    with Emulator() as server:
        server.keep_recent_requests()
        pod_objects = {}
        for i in range(chains_of):
            for pod in (f"client-{i}", f"fw-{i}", f"dpi-{i}"):
                body = {"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": pod, "namespace": ("default", "blue")[i % 2]}}
                created = server.create(body)
                pod_objects[("Pod", created["metadata"]["namespace"], pod)] = created
        clock = Clock()
        writer = StatusWriter(server.api_client(), instance="test-0", clock=clock, workers=workers)
        results = []
        for phase, now in zip(phases, (T0, T1, T2, T3), strict=False):
            clock.now = now
            results.append(writer.sync(chain_status(chains_of, phase), pod_objects))
        objects = {}
        for obj in server.objects(KIND):
            meta = obj["metadata"]
            (owner,) = meta.pop("ownerReferences")
            pod = pod_objects[("Pod", meta["namespace"], owner["name"])]
            assert owner["uid"] == pod["metadata"]["uid"]
            for made_up in ("uid", "resourceVersion", "creationTimestamp"):
                meta.pop(made_up)
            objects[(meta["namespace"], meta["name"])] = obj
        told = sorted((e["metadata"]["namespace"], e["involvedObject"]["name"], e["type"], e["reason"],
                       e["message"], e["count"], e["firstTimestamp"], e["lastTimestamp"])
                      for e in server.objects("Event", api_version="v1"))
    return results, objects, told


def test_many_connections_written_concurrently_end_as_written_one_after_the_other():
    chains_of = 102  # 306 connections
    phases = (1, 2, 3)
    one = run_phases(1, chains_of, phases)
    eight = run_phases(8, chains_of, phases)
    for result in (*one[0], *eight[0]):
        assert not result.errors
    assert one[0] == eight[0]  # the same writes, told in the same order
    assert one[1] == eight[1] and one[2] == eight[2]

    results, objects, told = eight
    assert len(results[0].created) == len(results[0].status_patched) == 3 * chains_of
    assert len(results[1].deleted) == 3 * len(range(0, chains_of, 5))
    assert len(objects) == 3 * (chains_of - len(range(0, chains_of, 5)))
    final = chain_status(chains_of, 3)
    states = {(e["namespace"], f"{e['client']}-nsm-1"): e["state"].capitalize() for e in final["connections"]}
    assert states == {key: obj["status"]["state"] for key, obj in objects.items()}
    # Every Event counts what happened to its connection, no more, no less: a Warning each time it
    # fails, a Normal each time it comes up after pending or failed (not when it first shows up).
    expected: collections.Counter = collections.Counter()
    last: dict[tuple[str, str], str] = {}
    for phase in phases:
        for e in chain_status(chains_of, phase)["connections"]:
            key, before = (e["namespace"], e["client"]), last.get((e["namespace"], e["client"]))
            if e["state"] == "failed" and before != "failed":
                expected[(*key, "Warning")] += 1
            elif e["state"] == "up" and before in ("pending", "failed"):
                expected[(*key, "Normal")] += 1
            last[key] = e["state"]
    assert {(ns, pod, kind): count for ns, pod, kind, _, _, count, _, _ in told} == expected
    assert expected[("default", "fw-4", "Warning")] == 2 and expected[("default", "fw-4", "Normal")] == 1


def test_syncs_from_several_threads_tell_each_event_once(api):
    api.keep_recent_requests()
    pod_objects = {}
    for i in range(40):
        body = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"fw-{i}", "namespace": ("default", "blue")[i % 2]}}
        created = api.create(body)
        pod_objects[("Pod", created["metadata"]["namespace"], f"fw-{i}")] = created
    clock = Clock(T0)
    writer = StatusWriter(api.api_client(), instance="test-0", clock=clock, workers=8)
    broken, pending = chain_status(40, 1), chain_status(40, 0)

    def together(status):
        start = threading.Barrier(4)
        results = []

        def sync():
            start.wait(10)
            results.append(writer.sync(status, pod_objects))
        threads = [threading.Thread(target=sync) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(results) == 4 and not any(r.errors for r in results)
        return results

    for now, status in ((T0, broken), (T1, pending), (T2, broken)):
        clock.now = now
        results = together(status)
        # One of the four did the work; the others found it done.
        assert sorted(r.writes > 0 for r in results) == [False, False, False, True]
    warnings = [e for e in events(api) if e["type"] == "Warning"]
    # Failed, pending, failed again: one Event per firewall, counted twice, on the firewall's Pod.
    told = sorted((e["involvedObject"]["name"], e["count"], e["involvedObject"].get("uid")) for e in warnings)
    uids = {name: pod["metadata"]["uid"] for (_, _, name), pod in pod_objects.items()}
    assert told == sorted((f"fw-{i}", 2, uids[f"fw-{i}"]) for i in range(40) if i % 3 == 1)


def test_status_loop_lists_again_every_resync_and_when_it_may_write_again(api, pods, demo):
    fabric, resources = demo
    status = status_of(fabric, resources)
    polls = []
    writing = threading.Event()
    writing.set()
    refused = threading.Event()

    def may_write():
        if writing.is_set():
            return True
        refused.set()
        return False

    def current():
        polls.append(1)
        return status

    loop = StatusLoop(writer_for(api, Clock(T0)), current, lambda: pods, may_write, interval=0.01,
                      resync=3600).start()
    try:
        wait_until(lambda: len(stored(api)) == 3, "the first write")
        seen = len(polls)
        wait_until(lambda: len(polls) >= seen + 10, "ten more rounds of the loop")
        assert len(api.requests("list", PLURAL)) == 1  # unchanged, and resync is far: the cache serves
        api.delete(KIND, "dpi-nsm-1")
        writing.clear()  # leadership lost for a moment: another replica may have written meanwhile
        wait_until(refused.is_set, "the loop to see it may not write")
        writing.set()
        wait_until(lambda: "dpi-nsm-1" in stored(api), "the deleted object to be created again")
        assert len(api.requests("list", PLURAL)) == 2
    finally:
        loop.stop()

    loop = StatusLoop(writer_for(api, Clock(T0)), lambda: status, lambda: pods, lambda: True, interval=0.01,
                      resync=0.2).start()
    try:
        wait_until(lambda: len(api.requests("list", PLURAL)) >= 3, "the new loop's first list")
        api.delete(KIND, "client-nsm-1")
        wait_until(lambda: "client-nsm-1" in stored(api), "a resync to create the object again")
    finally:
        loop.stop()


def test_the_status_loop_syncs_only_when_what_the_writer_reads_changed():
    # The renderer hands unchanged entries over as the same objects; rebuilt equal ones are no change
    # either, and a changed state or problem is.
    class Counting:
        def __init__(self):
            self.synced = []

        def sync(self, status, objects, relist=False):
            self.synced.append(relist)
            return SyncResult()

    entry = {"id": "default/a/nsm-1", "state": "up"}
    status = {"connections": [entry], "problems": []}
    writer = Counting()
    loop = StatusLoop(writer, lambda: status, dict, lambda: True, resync=3600)
    last = loop._round(None, None)
    last = loop._round(*last)
    status = {"connections": [dict(entry)], "problems": []}
    last = loop._round(*last)
    assert writer.synced == [True]
    status = {"connections": [{**entry, "state": "pending"}], "problems": []}
    last = loop._round(*last)
    status = {"connections": [{**entry, "state": "pending"}], "problems": ["a.yaml: bad"]}
    last = loop._round(*last)
    status = {"connections": [], "problems": ["a.yaml: bad"]}
    loop._round(*last)
    assert writer.synced == [True, False, False, False]


def test_the_controllers_api_client_keeps_a_connection_per_status_worker(api, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulated",
        "clusters": [{"name": "emulated", "cluster": {"server": api.url}}],
        "users": [{"name": "nobody", "user": {}}],
        "contexts": [{"name": "emulated", "context": {"cluster": "emulated", "user": "nobody"}}]}))
    built = api_client(str(kubeconfig))
    writer = StatusWriter(built, instance="test-0")
    # What urllib3 was given, not only the configuration: the pool is built with the client.
    assert built.rest_client.pool_manager.connection_pool_kw["maxsize"] >= POOL_SIZE > writer.workers
    assert writer.sync({"connections": []}).errors == [] and len(api.requests("list", PLURAL)) == 1


def test_a_service_level_shows_with_its_backup_and_whether_measurements_meet_it():
    fabric = load_topology(ROOT / "topologies/demo-chain.yaml")
    resources = load_paths([ROOT / "examples/demo-chain", ROOT / "examples/qos"])
    ctl, switches = Controller(fabric), FakeFabric(fabric)
    switches.connect_all(ctl)
    switches.run(ctl, ctl.set_resources(resources, 1.0))
    client = desired_connections(status_json(ctl.status()), T0)[("default", "client-nsm-1")]["status"]
    assert client["serviceLevel"]["name"] == "secure-internet"
    assert client["backupPath"][0] == client["path"][0] and client["backupPath"] != client["path"]
    assert conditions({"status": client})["ServiceLevelMet"]["reason"] == "NotMeasured"
    # The whole chain is bounded (chainLatency: true in examples/qos): its planned total, wire by wire.
    chain = client["chainLatency"]
    assert chain["connections"][0] == "default/client/nsm-1" and len(chain["connections"]) == 3
    planned = {e["id"]: e for e in status_json(ctl.status())["connections"]}
    wires = chain["connections"]
    assert chain["plannedSeconds"] == pytest.approx(sum(planned[c]["path_latency"] for c in wires))
    assert chain["plannedSeconds"] <= chain["boundSeconds"] == 0.005

    # Probes come back quickly: the level is met; the same again writes the same status.
    def probe_round(now, delay):
        for probe in ctl.probes(now):
            link = next(lk for lk in fabric.links
                        if probe.switch in (lk.a, lk.b) and lk.port_on(probe.switch) == probe.port)
            peer, port = link.peer_of(probe.switch)
            ctl.probe_received(fabric.switch_by_name[peer].dpid, port, probe.seq, now + delay)

    for second in range(3):
        probe_round(2.0 + second, 0.0001)
    met = desired_connections(status_json(ctl.status()), T1)[("default", "client-nsm-1")]["status"]
    assert conditions({"status": met})["ServiceLevelMet"]["status"] == "True"
    probe_round(6.0, 0.0002)
    assert desired_connections(status_json(ctl.status()), T1)[("default", "client-nsm-1")]["status"] == met


# -- MultiNetworkPolicy from the cluster ------------------------------------------------------------

GUARD = {"apiVersion": "k8s.cni.cncf.io/v1beta1", "kind": "MultiNetworkPolicy",
         "metadata": {"name": "guard", "namespace": "default",
                      "annotations": {"k8s.v1.cni.cncf.io/policy-for": "secure-internet"}},
         "spec": {"podSelector": {"matchLabels": {"role": "guarded"}}, "policyTypes": ["Ingress"]}}
BROKEN_POLICY = {**GUARD, "metadata": {**GUARD["metadata"], "name": "broken"},
                 "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "nope"}}]}]}}


def governed(status):
    """connection id → why policies govern it, for the governed wires of a status."""
    return {c["id"]: c["policy"]["governed_by"] for c in status["connections"] if "policy" in c}


def test_policies_from_the_watched_cluster_govern_wires_and_follow_labels(api, demo):
    """The Kubernetes source, the controller and the writer: a MultiNetworkPolicy created in the
    cluster isolates the wires of the Pods it selects, a broken one is an Event and nothing else,
    and a Pod's labels move the selection."""
    fabric, _ = demo
    for path in sorted((ROOT / "examples/demo-chain").glob("*.yaml")):
        for body in yaml.safe_load_all(path.read_text()):
            if body:
                api.create({**body, "metadata": {**body["metadata"], "namespace": "default"}})
    api.patch("Pod", "client", {"metadata": {"labels": {"role": "guarded"}}})
    delivered = queue.Queue()
    source = KubernetesSource(api.api_client(), delivered.put, coalesce=0.01)
    source.start()
    ctl, switches = Controller(fabric), FakeFabric(fabric)
    switches.connect_all(ctl)
    writer = writer_for(api, Clock(T0))

    def next_state(until, now):
        deadline = time.monotonic() + 20
        while True:
            resources = delivered.get(timeout=max(0.0, deadline - time.monotonic()))
            if until(resources):
                switches.run(ctl, ctl.set_resources(resources, now))
                return status_json(ctl.status())

    try:
        status = next_state(lambda r: r.requests, 1.0)
        assert governed(status) == {}
        api.create(GUARD)
        status = next_state(lambda r: r.policy.policies, 2.0)
        assert governed(status) == {"default/client/nsm-1": ["default/guard isolates client default/client "
                                                             "for Ingress"]}
        result = writer.sync(status, source.objects())
        assert not result.errors
        client_obj = stored(api)["client-nsm-1"]
        assert client_obj["status"]["policy"] == {"policies": ["default/guard"], "governedBy": [
            "default/guard isolates client default/client for Ingress"]}
        assert "policy" not in stored(api)["firewall-nsm-1"]["status"]

        # A broken policy: one InvalidSpec Event naming its field; the wires stay as they are.
        flows = {sw: set(f) for sw, f in switches.tables.items()}
        api.create(BROKEN_POLICY)
        status = next_state(lambda r: r.problems, 3.0)
        assert governed(status) == {"default/client/nsm-1": ["default/guard isolates client default/client "
                                                             "for Ingress"]}
        assert {sw: set(f) for sw, f in switches.tables.items()} == flows
        assert not writer.sync(status, source.objects()).errors
        (invalid,) = [e for e in events(api) if e["reason"] == "InvalidSpec"]
        assert invalid["involvedObject"] == {
            "apiVersion": "k8s.cni.cncf.io/v1beta1", "kind": "MultiNetworkPolicy", "name": "broken",
            "namespace": "default", "uid": api.get("MultiNetworkPolicy", "broken")["metadata"]["uid"]}
        assert invalid["message"].startswith("spec.ingress[0].from[0].ipBlock.cidr: ")

        # The labels move: the client is no longer selected; the dpi Pod (also the dpi endpoint's,
        # whose NSE has no labels) is, on both its wires.
        api.patch("Pod", "client", {"metadata": {"labels": {"role": None}}})
        api.patch("Pod", "dpi", {"metadata": {"labels": {"role": "guarded"}}})
        status = next_state(lambda r: r.policy.pods.get(("default", "dpi")) is not None
                            and r.policy.pods.get(("default", "client")) is None, 4.0)
        assert governed(status) == {
            "default/firewall/nsm-1": ["default/guard isolates endpoint default/dpi for Ingress"],
            "default/dpi/nsm-1": ["default/guard isolates client default/dpi for Ingress"]}
    finally:
        source.stop()
