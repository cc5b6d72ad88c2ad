"""NetworkServiceConnection objects and Events: the pure part from real plans, the writer against the
emulated API server over real HTTP with the official client."""

import queue
import re
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from ryu_nsm.controller import Controller
from ryu_nsm.k8s_status import (
    API_VERSION,
    CONNECTION_ANNOTATION,
    KIND,
    MANAGED_BY,
    MANAGER,
    StatusWriter,
    connection_object_name,
    desired_connections,
    merge_conditions,
    parse_problem,
    short_reason,
)
from ryu_nsm.model import Attachment, FrozenMap, Match, Resources
from ryu_nsm.planner import FAILED, FabricState, make_plan
from ryu_nsm.report import chains, connection_entry
from ryu_nsm.sources import Document, load_paths, parse_located
from ryu_nsm.sources.kubernetes import KINDS as WATCHED_KINDS
from ryu_nsm.sources.kubernetes import KubernetesSource, document_source, object_key
from ryu_nsm.topology import load_topology

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
    status = ctl.status()
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


def test_pending_connections_are_admitted_but_not_ready(demo):
    fabric, resources = demo
    ctl = Controller(fabric)
    ctl.set_resources(resources, 1.0)  # no switch connected: nothing can be installed
    objects = desired_connections(ctl.status(), T0)
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


def test_an_object_deleted_behind_its_back_is_created_again(api, pods, demo):
    fabric, resources = demo
    writer = writer_for(api, Clock(T0))
    status = status_of(fabric, resources)
    writer.sync(status, pods)
    api.delete(KIND, "dpi-nsm-1")
    result = writer.sync(status, pods)
    assert result.created == ["default/dpi-nsm-1"] and stored(api)["dpi-nsm-1"]["status"]["state"] == "Up"


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
    # Someone edits our spec: it is put back, and the status follows the new generation.
    api.patch(KIND, "dpi-nsm-1", {"spec": {"networkService": "edited"}})
    result = writer.sync(status, {**pods, ("Pod", "default", "client"): new_pod})
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
        result = writer.sync(ctl.status(), source.objects())
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
        result = writer.sync(ctl.status(), source.objects())
        assert not result.errors and "default/client-nsm-1" in result.status_patched
        assert stored(api)["client-nsm-1"]["status"]["reason"] == "NoEndpoint"
        warning = next(e for e in events(api) if e["reason"] == "NoEndpoint")
        assert warning["involvedObject"]["uid"] == owner["uid"]
    finally:
        source.stop()
