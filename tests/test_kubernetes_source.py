"""The Kubernetes source against an emulated API server: the official client, real HTTP, real watches."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator

import kmock
import pytest

from ryu_nsm.core.model import Resources
from ryu_nsm.sources.kubernetes import Backoff, KubernetesSource
from tests.k8s_emulator import Emulator

NSM = "networkservicemesh.io/v1"
DEADLINE = 10.0


def wait_until(predicate: Callable[[], object], what: str, timeout: float = DEADLINE) -> None:
    """Poll until ``predicate()`` is true; fail naming ``what`` at the deadline."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


class Recorder:
    """Collects every delivered Resources and notes a delivery equal to the one before it (checked
    when the test ends: an exception here would only be logged by the source)."""

    def __init__(self) -> None:
        self.deliveries: list[Resources] = []
        self.repeated: list[Resources] = []
        self.lock = threading.Lock()

    def __call__(self, resources: Resources) -> None:
        with self.lock:
            last = self.deliveries[-1] if self.deliveries else None
            if last is not None and (resources, resources.problems) == (last, last.problems):
                self.repeated.append(resources)
            self.deliveries.append(resources)

    @property
    def last(self) -> Resources | None:
        with self.lock:
            return self.deliveries[-1] if self.deliveries else None

    def count(self) -> int:
        with self.lock:
            return len(self.deliveries)

    def wait(self, predicate: Callable[[Resources], bool], what: str) -> Resources:
        """Wait until the latest delivery satisfies ``predicate``; return it."""
        wait_until(lambda: self.last is not None and predicate(self.last), what)
        assert self.last is not None
        return self.last


def services(resources: Resources) -> dict[str, str]:
    return {f"{s.namespace}/{s.name}": s.payload for s in resources.services}


def endpoints(resources: Resources) -> dict[str, tuple[str, ...]]:
    return {f"{e.namespace}/{e.name}": tuple(map(str, e.attachments)) for e in resources.endpoints}


def requests(resources: Resources) -> dict[str, str]:
    ids = [r.id for r in resources.requests]
    assert len(ids) == len(set(ids)), f"doubled requests: {ids}"
    return {r.id: f"{r.service}{dict(r.labels)}" for r in resources.requests}


def network_service(name: str, namespace: str = "ns1", payload: str = "ETHERNET") -> dict:
    return {"apiVersion": NSM, "kind": "NetworkService", "metadata": {"name": name, "namespace": namespace},
            "spec": {"payload": payload, "matches": [{"routes": [{"destination_selector": {"app": name}}]}]}}


def endpoint(name: str, service: str, port: str, namespace: str = "ns1") -> dict:
    return {"apiVersion": NSM, "kind": "NetworkServiceEndpoint",
            "metadata": {"name": name, "namespace": namespace,
                         "annotations": {"ryu-nsm.io/attachments": f"s1/{port}"}},
            "spec": {"network_service_names": [service],
                     "network_service_labels": {service: {"labels": {"app": service}}}}}


def pod(name: str, namespace: str = "ns1", request: str | None = None, **annotations: str) -> dict:
    if request is not None:
        annotations["networkservicemesh.io"] = request
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace,
                                                             "annotations": annotations},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Running"}}


def namespace(name: str, request: str | None = None) -> dict:
    annotations = {"networkservicemesh.io": request} if request is not None else {}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "annotations": annotations}}


@pytest.fixture
def api() -> Iterator[Emulator]:
    with Emulator(bookmark_interval=0.2) as emulator:
        yield emulator


@pytest.fixture
def start(api: Emulator) -> Iterator[Callable[..., tuple[KubernetesSource, Recorder]]]:
    """Start a source on the emulator (stopped at the end of the test)."""
    started: list[tuple[KubernetesSource, Recorder]] = []

    def start(on_change: Callable[[Resources], None] | None = None, **kwargs: object):
        recorder = Recorder()
        options = dict(watch_timeout=30, coalesce=0.02, initial_backoff=0.05, max_backoff=0.4) | kwargs
        source = KubernetesSource(api.api_client(), on_change or recorder, **options)
        started.append((source, recorder))
        source.start()
        return source, recorder

    yield start
    for source, recorder in started:
        source.stop()
        assert not recorder.repeated, "the same state was delivered twice in a row"


def failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The watchers (by kind) of every failure the source logged."""
    return [r.getMessage().split(":")[1].strip() for r in caplog.records if "listing again" in r.getMessage()]


ALL_KINDS = {"Namespace", "NetworkService", "NetworkServiceEndpoint", "Pod", "ServiceLevel",
             "MultiNetworkPolicy"}


def watching(api: Emulator, count: int = len(ALL_KINDS)) -> Callable[[], bool]:
    return lambda: len(api.watches()) >= count


def test_first_delivery_waits_until_every_kind_is_listed(api: Emulator, start, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="ryu_nsm.sources.kubernetes")
    api.create(network_service("svc"))
    api.create(endpoint("fw", "svc", "p1"))
    api.create(pod("client", request="kernel://svc/nsm-1"))
    api.create(namespace("ns1"))
    failing = threading.Event()
    failing.set()
    endpoints_resource = kmock.resource("networkservicemesh.io", "v1", "networkserviceendpoints")
    api.call(lambda: api.handler[kmock.action.LIST, endpoints_resource, failing] << 503)
    source, recorder = start()
    # Three kinds are listed, one is not: a first state without it would look like its deletion.
    wait_until(lambda: failures(caplog).count("NetworkServiceEndpoint") >= 3, "failed endpoint lists")
    assert set(failures(caplog)) == {"NetworkServiceEndpoint"}
    assert not source.synced() and recorder.count() == 0
    failing.clear()
    first = recorder.wait(lambda r: True, "the first delivery")
    assert source.synced()
    assert recorder.count() == 1
    assert services(first) == {"ns1/svc": "ETHERNET"}
    assert endpoints(first) == {"ns1/fw": ("s1/p1",)}
    assert requests(first) == {"ns1/client/nsm-1": "svc{}"}
    assert first.problems == ()


def test_an_empty_cluster_is_delivered_once_listed(api: Emulator, start) -> None:
    source, recorder = start()
    first = recorder.wait(lambda r: True, "the first delivery")
    assert (first.services, first.endpoints, first.requests, first.problems) == ((), (), (), ())
    assert source.synced()


def test_a_change_after_a_quiet_spell_is_delivered_without_waiting_the_window(api: Emulator, start) -> None:
    # A minute's window: a delivery that waited it out would miss the deadline by far.
    api.create(network_service("svc"))
    source, recorder = start(coalesce=60.0)
    first = recorder.wait(lambda r: True, "the first delivery, without waiting out the window")
    assert services(first) == {"ns1/svc": "ETHERNET"}


def test_changes_soon_after_a_delivery_are_delivered_together(api: Emulator, start) -> None:
    source, recorder = start(coalesce=2.0)
    recorder.wait(lambda r: True, "the first delivery")
    api.create(network_service("svc"))
    for i in range(5):
        api.create(pod(f"client{i}", request="kernel://svc/nsm-1"))
    last = recorder.wait(lambda r: len(requests(r)) == 5, "the five requests")
    assert services(last) == {"ns1/svc": "ETHERNET"}
    assert recorder.count() == 2, [sorted(requests(r)) for r in recorder.deliveries]


def test_create_update_delete_of_each_kind_reach_the_resources(api: Emulator, start) -> None:
    source, recorder = start()
    recorder.wait(lambda r: True, "the first delivery")

    api.create(network_service("svc"))
    recorder.wait(lambda r: services(r) == {"ns1/svc": "ETHERNET"}, "the service")
    api.create(endpoint("fw", "svc", "p1"))
    recorder.wait(lambda r: endpoints(r) == {"ns1/fw": ("s1/p1",)}, "the endpoint")
    api.create(pod("client", request="kernel://svc/nsm-1?app=a"))
    recorder.wait(lambda r: requests(r) == {"ns1/client/nsm-1": "svc{'app': 'a'}"}, "the request")

    api.patch("NetworkService", "svc", {"spec": {"payload": "IP"}}, namespace="ns1")
    recorder.wait(lambda r: services(r) == {"ns1/svc": "IP"}, "the service's new payload")
    moved = {"metadata": {"annotations": {"ryu-nsm.io/attachments": "s1/p2"}}}
    api.patch("NetworkServiceEndpoint", "fw", moved, namespace="ns1")
    recorder.wait(lambda r: endpoints(r) == {"ns1/fw": ("s1/p2",)}, "the endpoint's new attachment")
    api.patch("Pod", "client", {"metadata": {"annotations": {"networkservicemesh.io": "kernel://svc/nsm-2"}}},
              namespace="ns1")
    recorder.wait(lambda r: requests(r) == {"ns1/client/nsm-2": "svc{}"}, "the pod's new request")

    api.delete("Pod", "client", namespace="ns1")
    recorder.wait(lambda r: requests(r) == {}, "the request to go")
    api.delete("NetworkServiceEndpoint", "fw", namespace="ns1")
    recorder.wait(lambda r: endpoints(r) == {}, "the endpoint to go")
    api.delete("NetworkService", "svc", namespace="ns1")
    last = recorder.wait(lambda r: services(r) == {}, "the service to go")
    assert last.problems == ()
    assert ("Pod", "ns1", "client") not in source.objects()


def test_objects_shows_what_the_status_writer_needs(api: Emulator, start) -> None:
    stored = api.create(pod("client", request="kernel://svc/nsm-1"))
    api.create(network_service("svc"))
    api.create(namespace("ns1"))
    source, recorder = start()
    recorder.wait(lambda r: bool(r.requests), "the request")
    objects = source.objects()
    assert objects[("Pod", "ns1", "client")]["metadata"]["uid"] == stored["metadata"]["uid"]
    assert objects[("Pod", "ns1", "client")]["spec"] == {"nodeName": "node-1"}
    assert objects[("NetworkService", "ns1", "svc")]["spec"]["payload"] == "ETHERNET"
    assert objects[("Namespace", "ns1")]["kind"] == "Namespace"
    with pytest.raises(TypeError):
        objects[("Pod", "ns1", "other")] = {}  # type: ignore[index]


def test_pods_count_only_with_the_annotation_or_an_annotated_namespace(api: Emulator, start) -> None:
    api.create(network_service("svc", namespace="team"))
    api.create(network_service("other", namespace="team"))
    api.create(namespace("team"))
    api.create(pod("plain", namespace="team"))
    api.create(pod("own", namespace="team", request="kernel://other/nsm-1"))
    api.create(pod("elsewhere", namespace="ns1"))
    source, recorder = start()
    first = recorder.wait(lambda r: True, "the first delivery")
    assert requests(first) == {"team/own/nsm-1": "other{}"}
    # Every pod is known (a Namespace annotation can make any of them count) but only one is a request.
    assert {k for k in source.objects() if k[0] == "Pod"} == {
        ("Pod", "team", "plain"), ("Pod", "team", "own"), ("Pod", "ns1", "elsewhere")}

    api.patch("Namespace", "team", {"metadata": {"annotations": {"networkservicemesh.io": "kernel://svc/nsm-9"}}})
    recorder.wait(lambda r: requests(r) == {"team/own/nsm-1": "other{}", "team/plain/nsm-9": "svc{}"},
                  "the namespace's request on the pod without its own")
    api.create(pod("late", namespace="team"))
    recorder.wait(lambda r: "team/late/nsm-9" in requests(r), "a new pod in the annotated namespace")

    api.patch("Namespace", "team", {"metadata": {"annotations": {"networkservicemesh.io": None}}})
    last = recorder.wait(lambda r: requests(r) == {"team/own/nsm-1": "other{}"}, "inherited requests to go")
    assert last.problems == ()


def test_a_watch_that_ends_resumes_from_its_resource_version_without_a_list(api: Emulator, start) -> None:
    api.create(network_service("a"))
    source, recorder = start()
    recorder.wait(lambda r: services(r) == {"ns1/a": "ETHERNET"}, "the first service")
    lists = len(api.requests("list"))
    for round_ in range(3):
        # Every kind's watch open again: the round's change may arrive before the others resume.
        wait_until(watching(api), f"the watches before round {round_}")
        api.hold_watches()
        assert api.break_watches(clean=True) == len(ALL_KINDS)
        api.create(network_service(f"new{round_}"))
        api.delete("NetworkService", "a" if round_ == 0 else f"new{round_ - 1}", namespace="ns1")
        api.release_watches()
        recorder.wait(lambda r, n=round_: services(r) == {f"ns1/new{n}": "ETHERNET"}, f"round {round_}")
    assert len(api.requests("list")) == lists
    resumed = [w.resource_version for w in api.watches() if w.kind.plural == "networkservices"]
    assert resumed and all(rv not in ("", "0") for rv in resumed)


def test_watches_that_time_out_on_the_server_resume_without_a_list(api: Emulator, start) -> None:
    source, recorder = start(watch_timeout=1)
    recorder.wait(lambda r: True, "the first delivery")
    wait_until(lambda: len(api.requests("watch")) >= 8, "every watch to time out and resume once")
    assert len(api.requests("list")) == len(ALL_KINDS)
    assert {r.params["timeoutSeconds"] for r in api.requests("watch")} == {"1"}
    api.create(network_service("svc"))
    recorder.wait(lambda r: bool(r.services), "a change after the resumption")


def test_a_broken_watch_lists_again_and_loses_or_doubles_nothing(api: Emulator, start) -> None:
    for i in range(5):
        api.create(pod(f"p{i}", request="kernel://svc/nsm-1"))
    api.create(network_service("svc"))
    source, recorder = start()
    recorder.wait(lambda r: len(r.requests) == 5, "five requests")
    lists = len(api.requests("list", "pods"))
    for round_ in range(3):
        wait_until(watching(api), "the watches")
        api.break_watches()
        api.delete("Pod", f"p{round_}", namespace="ns1")
        api.create(pod(f"q{round_}", request="kernel://svc/nsm-1"))
        api.patch("Pod", f"p{round_ + 1}", {"metadata": {"annotations": {"networkservicemesh.io": "kernel://svc/x"}}},
                  namespace="ns1")
    expected = {f"ns1/{p['metadata']['name']}/{'x' if p['metadata']['name'] == 'p3' else 'nsm-1'}": "svc{}"
                for p in api.objects("Pod")}
    recorder.wait(lambda r: requests(r) == expected, f"the requests {sorted(expected)}")
    assert len(expected) == 5
    assert len(api.requests("list", "pods")) > lists


@pytest.mark.parametrize("as_event", [True, False], ids=["error-event", "http-410"])
def test_410_gone_lists_again_and_finds_the_delete(api: Emulator, start, as_event: bool) -> None:
    api.create(network_service("a"))
    api.create(network_service("b"))
    source, recorder = start()
    recorder.wait(lambda r: set(services(r)) == {"ns1/a", "ns1/b"}, "both services")
    wait_until(watching(api), "the watches")
    seen_rv = api.resource_version
    api.hold_watches()
    api.break_watches(clean=True)
    wait_until(lambda: len(api.watches()) == 0, "the old watches to end")
    api.delete("NetworkService", "a", namespace="ns1")
    api.create(network_service("c"))
    api.expire(as_event=as_event)
    lists = len(api.requests("list", "networkservices"))
    api.release_watches()
    last = recorder.wait(lambda r: set(services(r)) == {"ns1/b", "ns1/c"}, "a gone, c there")
    assert last.problems == ()
    gone = [r for r in api.requests("watch", "networkservices")
            if r.params.get("resourceVersion") and int(r.params["resourceVersion"]) <= seen_rv]
    assert gone, "the watch resumed from the old resourceVersion"
    wait_until(lambda: len(api.requests("list", "networkservices")) == lists + 1, "one new list")


def test_bookmarks_move_the_resource_version_on(api: Emulator, start) -> None:
    api.create(network_service("svc"))
    source, recorder = start()
    recorder.wait(lambda r: bool(r.services), "the service")
    for i in range(3):  # changes of another kind move the cluster's resourceVersion on
        api.create(pod(f"p{i}"))
    current = str(api.resource_version)
    service_watches = lambda: [w for w in api.watches() if w.kind.plural == "networkservices"]  # noqa: E731
    wait_until(lambda: [w.bookmarked for w in service_watches()] == [current], "a bookmark at that version")
    api.break_watches(clean=True)
    # The service watch saw no event after the pods, only the bookmark: it resumes from its version.
    wait_until(lambda: [w.resource_version for w in service_watches()] == [current], "the resumed watch")
    assert all(r.params.get("allowWatchBookmarks") == "true" for r in api.requests("watch"))


def test_a_bad_object_is_a_problem_naming_it_and_nothing_else_is_affected(api: Emulator, start) -> None:
    api.create(network_service("good"))
    api.create(network_service("bad", payload="FOO"))
    api.create(endpoint("fw", "good", "p1"))
    api.create(pod("client", request="kernel://good/nsm-1"))
    api.create(pod("broken", request="kernel://Not_A_Service/nsm-1"))
    source, recorder = start()
    first = recorder.wait(lambda r: True, "the first delivery")
    assert services(first) == {"ns1/good": "ETHERNET"}
    assert endpoints(first) == {"ns1/fw": ("s1/p1",)}
    assert requests(first) == {"ns1/client/nsm-1": "good{}"}
    assert {(p.source, p.index, p.path) for p in first.problems} == {
        ("NetworkService/ns1/bad", 0, "spec.payload"),
        ("Pod/ns1/broken", 0, 'metadata.annotations["networkservicemesh.io"][0]'),
    }
    assert str(first.problems[0]).startswith("NetworkService/ns1/bad[0]: spec.payload: expected one of")

    api.patch("NetworkService", "bad", {"spec": {"payload": "IP"}}, namespace="ns1")
    fixed = recorder.wait(lambda r: "ns1/bad" in services(r), "the fixed service")
    assert [p.source for p in fixed.problems] == ["Pod/ns1/broken"]


def test_an_invalid_update_keeps_the_last_valid_version(api: Emulator, start) -> None:
    api.create(network_service("svc", payload="IP"))
    source, recorder = start()
    before = recorder.wait(lambda r: services(r) == {"ns1/svc": "IP"}, "the service")
    api.patch("NetworkService", "svc", {"spec": {"payload": "FOO", "matches": []}}, namespace="ns1")
    kept = recorder.wait(lambda r: bool(r.problems), "the problem of the bad update")
    assert kept.services == before.services  # the old matches and payload, not the new ones
    assert {(p.source, p.path) for p in kept.problems} == {("NetworkService/ns1/svc", "spec.payload"),
                                                           ("NetworkService/ns1/svc", "")}
    assert any("keeping the last valid version" in p.message for p in kept.problems)

    api.patch("NetworkService", "svc", {"spec": {"payload": "ETHERNET"}}, namespace="ns1")
    fixed = recorder.wait(lambda r: not r.problems, "the fixed service")
    assert services(fixed) == {"ns1/svc": "ETHERNET"} and fixed.services[0].matches == ()
    api.patch("NetworkService", "svc", {"spec": {"payload": 7}}, namespace="ns1")
    recorder.wait(lambda r: bool(r.problems), "the second bad update")
    api.delete("NetworkService", "svc", namespace="ns1")
    gone = recorder.wait(lambda r: not r.services, "the deleted service to go, kept version and all")
    assert gone.problems == ()


@pytest.mark.parametrize("refuse", [True, False], ids=["refused", "503"])
def test_api_unavailable_keeps_the_state_then_catches_up(api: Emulator, start, caplog, refuse: bool) -> None:
    caplog.set_level(logging.WARNING, logger="ryu_nsm.sources.kubernetes")
    api.create(network_service("svc"))
    for name in ("stay", "go", "change"):
        api.create(pod(name, request="kernel://svc/nsm-1"))
    source, recorder = start()
    recorder.wait(lambda r: len(r.requests) == 3, "three requests")
    wait_until(watching(api), "the watches")
    delivered = recorder.count()

    api.pause(refuse=refuse)
    api.delete("Pod", "go", namespace="ns1")
    api.patch("Pod", "change", {"metadata": {"annotations": {"networkservicemesh.io": "kernel://svc/nsm-2"}}},
              namespace="ns1")
    api.create(pod("new", request="kernel://svc/nsm-1"))
    # Every watcher fails a few times (it backs off and tries again) while the last state stands.
    wait_until(lambda: all(failures(caplog).count(kind) >= 3 for kind in ALL_KINDS), "repeated failures")
    assert recorder.count() == delivered
    assert source.synced()

    api.resume()
    expected = {"ns1/stay/nsm-1", "ns1/change/nsm-2", "ns1/new/nsm-1"}
    last = recorder.wait(lambda r: set(requests(r)) == expected, "the changes made meanwhile")
    assert last.problems == ()
    # No delivery in between lost what did not change.
    assert all("ns1/stay/nsm-1" in requests(r) for r in recorder.deliveries[delivered:])


def test_a_namespace_scope_sees_only_its_namespaces(api: Emulator, start) -> None:
    for ns in ("a", "b"):
        api.create(network_service("svc", namespace=ns))
        api.create(namespace(ns, request="kernel://svc/nsm-1"))
        api.create(pod("client", namespace=ns))
    source, recorder = start(namespaces=["a"])
    first = recorder.wait(lambda r: True, "the first delivery")
    assert services(first) == {"a/svc": "ETHERNET"}
    assert requests(first) == {"a/client/nsm-1": "svc{}"}
    assert {k[:2] for k in source.objects()} == {("Namespace", "a"), ("NetworkService", "a"), ("Pod", "a")}
    api.create(pod("other", namespace="b", request="kernel://svc/nsm-1"))
    api.create(pod("second", namespace="a"))
    last = recorder.wait(lambda r: "a/second/nsm-1" in requests(r), "the new pod in scope")
    assert set(requests(last)) == {"a/client/nsm-1", "a/second/nsm-1"}
    assert all(r.namespace == "a" for r in api.requests("list") if r.resource.plural != "namespaces")


def test_a_kind_the_server_does_not_serve_is_empty(api: Emulator, start) -> None:
    endpoints_resource = kmock.resource("networkservicemesh.io", "v1", "networkserviceendpoints")
    api.call(lambda: api.handler[kmock.action.LIST, endpoints_resource] << 404)
    api.create(network_service("svc"))
    api.create(pod("client", request="kernel://svc/nsm-1"))
    source, recorder = start()
    first = recorder.wait(lambda r: True, "the first delivery")
    assert requests(first) == {"ns1/client/nsm-1": "svc{}"} and first.endpoints == ()


def test_a_failing_consumer_is_offered_the_state_again(api: Emulator, start) -> None:
    recorder = Recorder()
    calls = []

    def flaky(resources: Resources) -> None:
        calls.append(resources)
        if len(calls) == 1:
            raise RuntimeError("consumer failed")
        recorder(resources)

    api.create(network_service("svc"))
    start(on_change=flaky)
    delivered = recorder.wait(lambda r: True, "the state offered again")
    assert services(delivered) == {"ns1/svc": "ETHERNET"} and calls[0] == delivered


def test_stop_ends_every_thread_promptly_even_in_a_long_backoff(api: Emulator, start) -> None:
    source, recorder = start(max_backoff=30.0, initial_backoff=20.0)
    recorder.wait(lambda r: True, "the first delivery")
    wait_until(watching(api), "the watches")
    api.break_watches()  # every watcher now sits in a 10-20 s backoff
    began = time.monotonic()
    source.stop()
    assert time.monotonic() - began < 2.0
    assert not [t.name for t in threading.enumerate() if t.name.startswith("ryu-nsm-k8s")]


def test_stop_closes_open_watch_streams(api: Emulator, start) -> None:
    source, recorder = start()
    recorder.wait(lambda r: True, "the first delivery")
    wait_until(watching(api), "the watches")
    began = time.monotonic()
    source.stop()
    assert time.monotonic() - began < 2.0
    wait_until(lambda: not api.watches(), "the server to see the streams closed")


def test_backoff_doubles_with_jitter_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(0.1, 1.0, random.Random(4))
    delays = [backoff.next() for _ in range(8)]
    for attempt, delay in enumerate(delays):
        ceiling = min(1.0, 0.1 * 2**attempt)
        assert ceiling / 2 <= delay <= ceiling
    assert len(set(delays[4:])) == 4  # capped, but still spread
    backoff.reset()
    assert 0.05 <= backoff.next() <= 0.1


def service_level(name: str, spec: dict, namespace: str = "ns1") -> dict:
    return {"apiVersion": "ryu-nsm.io/v1alpha1", "kind": "ServiceLevel",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def test_service_levels_are_watched_and_a_bad_one_names_its_field(api: Emulator, start) -> None:
    api.create(service_level("gold", {"networkService": "svc", "guaranteedBandwidth": "100M"}))
    source, recorder = start()
    first = recorder.wait(lambda r: r.service_levels, "the first service level")
    assert [(lv.name, lv.network_service, lv.guaranteed_bandwidth) for lv in first.service_levels] == [
        ("gold", "svc", 100_000_000)]
    api.create(service_level("broken", {"networkService": "svc", "rateLimit": "fast"}))
    broken = recorder.wait(lambda r: r.problems, "the broken level's problem")
    assert [(p.source, p.path) for p in broken.problems] == [("ServiceLevel/ns1/broken", "spec.rateLimit")]
    assert [lv.name for lv in broken.service_levels] == ["gold"]  # the valid one stays
    api.delete("ServiceLevel", "gold", namespace="ns1")
    recorder.wait(lambda r: not r.service_levels, "the level's deletion")


# -- MultiNetworkPolicy, and the labels policies select ---------------------------------------------

POLICY = "k8s.cni.cncf.io/v1beta1"
POLICIES = kmock.resource("k8s.cni.cncf.io", "v1beta1", "multi-networkpolicies")


def policy(name: str, spec: dict, namespace: str = "ns1", networks: str = "svc") -> dict:
    return {"apiVersion": POLICY, "kind": "MultiNetworkPolicy",
            "metadata": {"name": name, "namespace": namespace,
                         "annotations": {"k8s.v1.cni.cncf.io/policy-for": networks, "other.io/x": "y"}},
            "spec": spec}


def policy_names(resources: Resources) -> dict[str, tuple[str, ...]]:
    return {str(p): tuple(map(str, p.networks)) for p in resources.policy.policies}


def test_policies_are_watched_and_a_bad_one_names_its_field_and_keeps_the_last_valid(
        api: Emulator, start) -> None:
    api.create(policy("web", {"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}))
    source, recorder = start()
    first = recorder.wait(lambda r: r.policy.policies, "the first policy")
    assert policy_names(first) == {"ns1/web": ("ns1/svc",)} and first.problems == ()
    (web,) = first.policy.policies
    assert [p.port for p in web.ingress[0].ports] == [80]

    api.create(policy("bad", {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "nope"}}]}]}))
    broken = recorder.wait(lambda r: r.problems, "the bad policy's problem")
    assert [(p.source, p.path) for p in broken.problems] == [
        ("MultiNetworkPolicy/ns1/bad", "spec.ingress[0].from[0].ipBlock.cidr")]
    assert policy_names(broken) == {"ns1/web": ("ns1/svc",)}  # the valid one stays, the bad one is not used

    api.patch("MultiNetworkPolicy", "web", {"spec": {"ingress": [{"ports": [{"port": 0}]}]}}, namespace="ns1")
    kept = recorder.wait(lambda r: any(p.source == "MultiNetworkPolicy/ns1/web" for p in r.problems),
                         "the broken update's problem")
    assert kept.policy.policies == (web,)  # its last valid version works on
    assert any("keeping the last valid version" in p.message for p in kept.problems)
    api.delete("MultiNetworkPolicy", "web", namespace="ns1")
    api.delete("MultiNetworkPolicy", "bad", namespace="ns1")
    last = recorder.wait(lambda r: not r.policy.policies and not r.problems, "the policies to go")
    assert last.policy.policies == ()


def test_an_absent_policy_crd_is_no_error_and_is_listed_again_rarely(api: Emulator, start, caplog) -> None:
    caplog.set_level(logging.INFO, logger="ryu_nsm.sources.kubernetes")
    absent = threading.Event()
    absent.set()
    api.call(lambda: api.handler[kmock.action.LIST, POLICIES, absent] << 404)
    api.create(network_service("svc"))
    api.create(pod("client", request="kernel://svc/nsm-1"))
    api.create(policy("web", {"podSelector": {}}))
    source, recorder = start(absent_retry=0.3)
    first = recorder.wait(lambda r: True, "the first delivery")
    assert source.synced() and requests(first) == {"ns1/client/nsm-1": "svc{}"}
    assert first.policy.policies == () and first.problems == ()
    time.sleep(1.0)
    lists = [r for r in api.requests("list") if r.resource == POLICIES]
    assert 2 <= len(lists) <= 6  # looked again, every absent_retry, not in a tight loop
    told = [r for r in caplog.records if "MultiNetworkPolicy" in r.getMessage()]
    assert [r.levelno for r in told] == [logging.INFO] and "not served" in told[0].getMessage()
    assert not failures(caplog)

    absent.clear()  # the CRD is installed
    recorder.wait(lambda r: policy_names(r) == {"ns1/web": ("ns1/svc",)}, "the policy once served")
    assert any("served now" in r.getMessage() for r in caplog.records)


def test_a_relist_of_another_kind_looks_for_an_absent_kind_again(api: Emulator, start) -> None:
    absent = threading.Event()
    absent.set()
    api.call(lambda: api.handler[kmock.action.LIST, POLICIES, absent] << 404)
    api.create(policy("web", {"podSelector": {}}))
    source, recorder = start(absent_retry=600.0)
    recorder.wait(lambda r: True, "the first delivery")
    wait_until(watching(api, len(ALL_KINDS) - 1), "the watches of the served kinds")
    absent.clear()
    api.break_watches()  # the others list again: the absent kind is looked at with them
    recorder.wait(lambda r: policy_names(r) == {"ns1/web": ("ns1/svc",)}, "the policy after the relist")


def labelled(body: dict, **labels: str) -> dict:
    return {**body, "metadata": {**body["metadata"], "labels": labels}}


def test_labels_and_named_ports_that_policies_select_are_kept(api: Emulator, start) -> None:
    api.create(labelled(namespace("ns1"), team="blue"))
    api.create(labelled(pod("client", request="kernel://svc/nsm-1", **{"ryu-nsm.io/ports": "http=8080"}),
                        app="web"))
    api.create(labelled(endpoint("fw", "svc", "p1"), role="fw"))
    api.create(labelled(endpoint("gw", "svc", "p2"), ignored="no"))
    api.create(labelled(pod("gw"), app="gateway"))  # an endpoint's Pod: its labels are kept too
    api.create(labelled(pod("bystander"), app="other"))
    source, recorder = start()
    first = recorder.wait(lambda r: r.policy.pods, "the labels")
    facts = first.policy
    assert dict(facts.namespaces) == {"ns1": {"team": "blue"}}
    assert {k: dict(w.labels) for k, w in facts.pods.items()} == {
        ("ns1", "client"): {"app": "web"}, ("ns1", "gw"): {"app": "gateway"}}
    assert dict(facts.pods[("ns1", "client")].ports) == {"http": ("TCP", 8080)}
    assert {k: dict(w.labels) for k, w in facts.endpoints.items()} == {
        ("ns1", "fw"): {"role": "fw"}, ("ns1", "gw"): {"ignored": "no"}}

    delivered = recorder.count()
    unrelated = {"status": {"phase": "Succeeded"}, "metadata": {"annotations": {"x.io/y": "z"}}}
    api.patch("Pod", "client", unrelated, namespace="ns1")
    api.patch("Pod", "bystander", {"metadata": {"labels": {"app": "changed"}}}, namespace="ns1")
    api.patch("Pod", "client", {"metadata": {"labels": {"app": "db"}}}, namespace="ns1")
    last = recorder.wait(lambda r: r.policy.pods[("ns1", "client")].labels.get("app") == "db",
                         "the client's new label")
    # Only the label that counts made news: the other changes were no delivery of their own.
    assert recorder.count() == delivered + 1 and last.problems == ()
