"""Kubernetes-shaped documents: the objects of ours that a document holds, and Resources written back.

``find_objects`` finds the objects of each document (Lists flattened) for ``assembly`` to validate;
``dump_documents`` writes Resources back as documents. No I/O. The kinds understood, the annotations
and how problems are reported are in docs/requests.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from urllib.parse import quote

from ryu_nsm.core.model import ClientRequest, Resources
from ryu_nsm.core.policy_model import POLICY_API_VERSION, POLICY_KIND
from ryu_nsm.core.validation import Problem, describe_value, expected, field_path, item_path
from ryu_nsm.qos.service_level import API_VERSION as SLA_API_VERSION
from ryu_nsm.qos.service_level import KIND as SLA_KIND
from ryu_nsm.sources.kube_objects import (
    ATTACHMENTS_ANNOTATION,
    CLIENT_ANNOTATION,
    NSM_API_VERSION,
    NSM_GROUP,
    Document,
    KubeObject,
)

NSM_KINDS = ("NetworkService", "NetworkServiceEndpoint")
_CORE_KINDS = ("Pod", "Namespace")
_OUR_GROUP = SLA_API_VERSION.rpartition("/")[0]
OUR_KINDS = (SLA_KIND,)
_POLICY_GROUP = POLICY_API_VERSION.rpartition("/")[0]


def find_objects(
    doc: Document, body: object, base: str, problems: list[Problem], skipped: list[Problem]
) -> Iterator[KubeObject]:
    """The objects of ours in one document, Lists flattened; what is not an object is a Problem and
    an object of a kind not read here is noted in ``skipped`` (a misspelt kind must not vanish)."""
    if body is None and not base:
        return
    if not isinstance(body, dict):
        problems.append(Problem(doc.source, doc.index, base,
                                f"expected a Kubernetes object (a mapping with apiVersion and kind), "
                                f"found {describe_value(body)}"))
        return
    api, kind = body.get("apiVersion"), body.get("kind")
    for field_name, value in (("apiVersion", api), ("kind", kind)):
        if not isinstance(value, str) or not value:
            problems.append(Problem(doc.source, doc.index, field_path(base, field_name),
                                    expected("a non-empty string", value)))
            return
    group = api.rpartition("/")[0]
    if kind.endswith("List") and "items" in body:
        items_path = field_path(base, "items")
        items = body["items"]
        if not isinstance(items, list):
            problems.append(Problem(doc.source, doc.index, items_path,
                                    expected("a list", items)))
            return
        # Items of a typed list (NetworkServiceList) may leave their kind to the list.
        item_kind = kind[: -len("List")] or None
        for index, item in enumerate(items):
            if isinstance(item, dict) and item_kind and "kind" not in item:
                item = {"apiVersion": api, "kind": item_kind, **item}
            yield from find_objects(doc, item, item_path(items_path, index), problems, skipped)
        return
    if (group == NSM_GROUP and kind in NSM_KINDS) or (group == "" and kind in _CORE_KINDS) or (
            group == _OUR_GROUP and kind in OUR_KINDS) or (group == _POLICY_GROUP and kind == POLICY_KIND):
        yield KubeObject(doc, base, body, kind)
    else:
        skipped.append(Problem(doc.source, doc.index, base, f"skipped: kind {kind!r} of apiVersion {api!r} "
                               "is not one ryu-nsm reads"))


# -- back to documents --------------------------------------------------------------------------


def _client_url(request: ClientRequest) -> str:
    target = request.service + (f"@{request.domain}" if request.domain else "")
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in request.labels.items())
    return f"kernel://{target}/{request.ifname}" + (f"?{query}" if query else "")


def dump_documents(resources: Resources) -> list[dict]:
    """Resources → Kubernetes-shaped documents that ``parse_documents`` reads back to equal objects.

    A pod's requests become one Pod with its own annotation, in the order of first appearance.
    """
    docs: list[dict] = []
    for service in resources.services:
        matches = []
        for match in service.matches:
            item: dict = {
                "source_selector": match.source_selector.to_dict(),
                "routes": [{"destination_selector": r.selector.to_dict(), "weight": r.weight}
                           for r in match.routes],
            }
            if match.fallthrough:
                item["fallthrough"] = True
            if match.metadata is not None:
                item["metadata"] = {"labels": match.metadata.to_dict()}
            matches.append(item)
        docs.append({
            "apiVersion": NSM_API_VERSION, "kind": "NetworkService",
            "metadata": {"name": service.name, "namespace": service.namespace},
            "spec": {"payload": service.payload, "matches": matches},
        })
    for endpoint in resources.endpoints:
        metadata: dict = {"name": endpoint.name, "namespace": endpoint.namespace}
        if endpoint.attachments:
            metadata["annotations"] = {ATTACHMENTS_ANNOTATION: ",".join(map(str, endpoint.attachments))}
        spec: dict = {
            "network_service_names": list(endpoint.services),
            "network_service_labels": {s: {"labels": labels.to_dict()}
                                       for s, labels in endpoint.service_labels.items()},
        }
        if endpoint.url:
            spec["url"] = endpoint.url
        if endpoint.expires is not None:
            seconds = math.floor(endpoint.expires)
            spec["expiration_time"] = {"seconds": seconds, "nanos": round((endpoint.expires - seconds) * 1e9)}
        docs.append({"apiVersion": NSM_API_VERSION, "kind": "NetworkServiceEndpoint",
                     "metadata": metadata, "spec": spec})
    pods: dict[tuple[str, str], list[ClientRequest]] = {}
    for request in resources.requests:
        pods.setdefault((request.namespace, request.pod), []).append(request)
    for (namespace, pod), pod_requests in pods.items():
        annotations = {CLIENT_ANNOTATION: ",".join(_client_url(r) for r in pod_requests)}
        attached = [f"{r.ifname}={r.attachment}" for r in pod_requests if r.attachment is not None]
        if attached:
            annotations[ATTACHMENTS_ANNOTATION] = ",".join(attached)
        docs.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": pod, "namespace": namespace, "annotations": annotations}})
    return docs
