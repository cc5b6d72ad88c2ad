"""Incremental parsing: a long-lived ParseMemo gives what a parse from nothing gives, state after state."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from ryu_nsm.sources.assembly import ParseMemo, parse_keeping
from ryu_nsm.sources.kube_objects import Document

NSM = "networkservicemesh.io/v1"


def _namespace(name: str, annotated: bool, label: str) -> dict:
    meta: dict = {"name": name, "labels": {"team": label}}
    if annotated:
        meta["annotations"] = {"networkservicemesh.io": "kernel://chain/nsm-1"}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def _pod(name: str, namespace: str, own: bool, broken: bool) -> dict:
    annotations = {"ryu-nsm.io/attachments": f"nsm-1=s1/{name}"}
    if own:
        annotations["networkservicemesh.io"] = "kernel://plain/nsm-1" if not broken else "kernel://"
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "annotations": annotations}}


def _service(name: str, broken: bool) -> dict:
    return {"apiVersion": NSM if not broken else "networkservicemesh.io/v2", "kind": "NetworkService",
            "metadata": {"name": name}, "spec": {"payload": "ETHERNET"}}


def _pool() -> list[dict]:
    """Documents whose versions differ in ways that cross documents: annotations Pods inherit, labels
    policies read, duplicates, versions that break and keep the last valid one, a List, a stranger."""
    pool = []
    for ns in ("a", "b"):
        pool += [_namespace(ns, annotated, label) for annotated in (True, False) for label in ("x", "y")]
    for i in range(3):
        for ns in ("a", "b"):
            pool += [_pod(f"p{i}", ns, own, broken) for own in (True, False) for broken in (False, True)]
    pool += [_service(name, broken) for name in ("chain", "plain") for broken in (False, True)]
    pool.append({"apiVersion": "v1", "kind": "List",
                 "items": [_service("plain", False), _pod("p9", "a", True, False)]})
    pool.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
    pool.append("not an object")
    return pool


POOL = _pool()

# A state: which pool documents, in which order, each either the same body as last time or a copy.
states = st.lists(st.lists(st.tuples(st.integers(0, len(POOL) - 1), st.booleans()), max_size=12),
                  min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(states)
def test_a_kept_memo_parses_every_state_as_a_parse_from_nothing(sequence):
    memo = ParseMemo()
    bodies: dict[int, object] = {}
    kept_incremental: dict = {}
    kept_whole: dict = {}
    for state in sequence:
        documents = []
        for position, (item, fresh) in enumerate(state):
            if fresh or item not in bodies:
                bodies[item] = copy.deepcopy(POOL[item])
            documents.append(Document(f"f{position % 3}", position, bodies[item]))
        incremental, kept_incremental = parse_keeping(documents, kept_incremental, memo)
        whole, kept_whole = parse_keeping(documents, kept_whole)
        assert incremental == whole
        assert incremental.problems == whole.problems
        assert incremental.warnings == whole.warnings
        assert incremental.policy == whole.policy
        assert kept_incremental == kept_whole


def test_a_pod_is_checked_again_when_the_namespace_it_inherits_from_changes():
    memo = ParseMemo()
    pod = _pod("p0", "a", own=False, broken=False)
    annotated = [Document("f", 0, _namespace("a", True, "x")), Document("f", 1, pod)]
    resources, kept = parse_keeping(annotated, {}, memo)
    assert [r.service for r in resources.requests] == ["chain"]
    plain = [Document("f", 0, _namespace("a", False, "x")), Document("f", 1, pod)]
    resources, kept = parse_keeping(plain, kept, memo)
    assert resources.requests == ()
