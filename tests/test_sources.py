"""The file source: documents → model objects (with Problems at exact paths), files, the watcher."""

import json
import queue
import threading
import time
from pathlib import Path
from textwrap import dedent

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ryu_nsm.core.model import (
    Attachment,
    ClientRequest,
    Destination,
    Endpoint,
    FrozenMap,
    Match,
    NetworkService,
    Resources,
)
from ryu_nsm.core.resolver import resolve
from ryu_nsm.sources import DirectoryWatcher, dump_documents, files, load_paths, parse_documents
from ryu_nsm.sources.topology import load_topology

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sources"


def parse(text: str, source: str = "t.yaml") -> Resources:
    return parse_documents(list(yaml.safe_load_all(dedent(text))), source)


def problems(resources: Resources) -> list[tuple[int, str, str]]:
    return [(p.index, p.path, p.message) for p in resources.problems]


GOOD_SERVICE = """
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata: {name: good}
"""


# -- each kind ----------------------------------------------------------------------------------


def test_network_service_parses_every_field():
    r = parse("""
        apiVersion: networkservicemesh.io/v1
        kind: NetworkService
        metadata: {name: secure-internet, namespace: prod}
        spec:
          name: secure-internet
          payload: IP
          path_ids: [ignored]
          matches:
            - source_selector: {app: firewall}
              routes:
                - destination_selector: {app: dpi}
                  weight: 3
                - destination_selector: {app: dpi-backup}
                  weight: 0
              fallthrough: true
              metadata: {labels: {example.com/tier: gold}}
            - routes:
                - destination_selector: {app: "{{.app}}-next", zone: "{{ .zone }}"}
    """)
    assert r.problems == ()
    assert r.services == (
        NetworkService(
            "secure-internet", "prod",
            (
                Match(
                    FrozenMap(app="firewall"),
                    (Destination(FrozenMap(app="dpi"), 3), Destination(FrozenMap(app="dpi-backup"), 0)),
                    True,
                    FrozenMap({"example.com/tier": "gold"}),
                ),
                # Templates stay verbatim: the resolver substitutes them per request.
                Match(routes=(Destination(FrozenMap(app="{{.app}}-next", zone="{{ .zone }}"), 1),)),
            ),
            "IP",
        ),
    )


def test_network_service_defaults():
    r = parse(GOOD_SERVICE)
    assert r.services == (NetworkService("good", "default", (), "ETHERNET"),)


def test_proto_json_camel_case_names_are_accepted():
    r = parse("""
        apiVersion: networkservicemesh.io/v1
        kind: NetworkService
        metadata: {name: s}
        spec:
          matches:
            - sourceSelector: {app: a}
              routes: [{destinationSelector: {app: b}, weight: 2}]
    """)
    assert r.problems == ()
    assert r.services[0].matches == (Match(FrozenMap(app="a"), (Destination(FrozenMap(app="b"), 2),)),)


def test_endpoint_parses_services_labels_url_and_attachments():
    r = parse("""
        apiVersion: networkservicemesh.io/v1
        kind: NetworkServiceEndpoint
        metadata:
          name: gw
          namespace: edge
          annotations: {ryu-nsm.io/attachments: "s3/gw-1, s3/gw-2", other: 1}
        spec:
          network_service_names: [secure-internet, echo]
          network_service_labels:
            secure-internet: {labels: {app: vpn-gateway}}
          url: tcp://10.0.0.1:5001
          expiration_time: "2030-01-01T00:00:00Z"
          initial_registration_time: "2020-01-01T00:00:00Z"
    """)
    assert r.problems == ()
    assert r.endpoints == (
        Endpoint(
            "gw", "edge", ("secure-internet", "echo"),
            FrozenMap({"secure-internet": FrozenMap(app="vpn-gateway")}),
            (Attachment("s3", "gw-1"), Attachment("s3", "gw-2")),
            "tcp://10.0.0.1:5001", 1893456000.0,
        ),
    )
    assert r.endpoints[0].labels_for("echo") == {}


def test_endpoint_without_attachments_is_kept():
    r = parse("""
        apiVersion: networkservicemesh.io/v1
        kind: NetworkServiceEndpoint
        metadata: {name: later}
        spec: {network_service_names: [echo]}
    """)
    assert r.problems == ()
    assert r.endpoints == (Endpoint("later", services=("echo",)),)


def test_pod_annotation_forms_and_attachments():
    r = parse("""
        apiVersion: v1
        kind: Pod
        metadata:
          name: client
          namespace: apps
          labels: {app: not-a-request-label}
          annotations:
            networkservicemesh.io: >-
              kernel://secure-internet@my.domain/eth9?app=web&example.com%2Ftier=gold ,
              echo/nsm-2, kernel://plain/if2, KERNEL://upper/if3?a=, short
            ryu-nsm.io/attachments: "if2=s1/s1-plain, eth9=s1/s1-client"
    """)
    assert r.problems == ()
    assert r.requests == (
        ClientRequest("client", "eth9", "secure-internet", "apps",
                      FrozenMap({"app": "web", "example.com/tier": "gold"}), Attachment("s1", "s1-client"),
                      "my.domain"),
        ClientRequest("client", "nsm-2", "echo", "apps"),
        ClientRequest("client", "if2", "plain", "apps", attachment=Attachment("s1", "s1-plain")),
        ClientRequest("client", "if3", "upper", "apps", FrozenMap(a="")),
        # Shorthand without an interface name: NSM's default.
        ClientRequest("client", "nsm-1", "short", "apps"),
    )


def test_pod_defaults_and_duplicate_interface_first_wins():
    r = parse("""
        apiVersion: v1
        kind: Pod
        metadata:
          name: client
          annotations:
            networkservicemesh.io: kernel://a, kernel://b/nsm-1, c/nsm-2
    """)
    assert [(q.service, q.ifname, q.namespace, q.attachment) for q in r.requests] == [
        ("a", "nsm-1", "default", None), ("c", "nsm-2", "default", None),
    ]
    assert problems(r) == [(0, 'metadata.annotations["networkservicemesh.io"][1]',
                            'interface "nsm-1" is already requested by '
                            'metadata.annotations["networkservicemesh.io"][0]')]


def test_query_labels_are_url_decoded():
    r = parse("""
        apiVersion: v1
        kind: Pod
        metadata:
          name: p
          annotations: {networkservicemesh.io: "svc/if0?a=x%2Dy&b="}
    """)
    assert r.problems == ()
    assert r.requests[0].labels == {"a": "x-y", "b": ""}


def test_pods_without_client_annotation_are_not_ours():
    r = parse("""
        apiVersion: v1
        kind: Pod
        metadata: {name: Not_Even_Valid, annotations: {networkservicemesh.io: "  "}}
    """)
    assert r.requests == () and r.problems == ()


def test_namespace_annotation_is_inherited_by_pods_without_their_own():
    r = parse("""
        apiVersion: v1
        kind: Pod
        metadata:
          name: inherits
          namespace: team
          annotations: {ryu-nsm.io/attachments: nsm-1=s1/s1-a}
        ---
        apiVersion: v1
        kind: Pod
        metadata:
          name: own
          namespace: team
          annotations: {networkservicemesh.io: echo/if1}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: elsewhere, namespace: other}
        ---
        apiVersion: v1
        kind: Namespace
        metadata:
          name: team
          annotations: {networkservicemesh.io: "kernel://secure-internet?app=web, kernel://echo/nsm-2"}
    """)
    assert r.problems == ()
    assert [(q.pod, q.ifname, q.service, dict(q.labels), q.attachment) for q in r.requests] == [
        ("inherits", "nsm-1", "secure-internet", {"app": "web"}, Attachment("s1", "s1-a")),
        ("inherits", "nsm-2", "echo", {}, None),
        ("own", "if1", "echo", {}, None),
    ]


def test_broken_namespace_annotation_is_reported_once_on_the_namespace():
    r = parse("""
        apiVersion: v1
        kind: Namespace
        metadata: {name: team, annotations: {networkservicemesh.io: "vfio://x"}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: p, namespace: team}
    """)
    assert r.requests == ()
    assert [(i, p) for i, p, _ in problems(r)] == [(0, 'metadata.annotations["networkservicemesh.io"][0]')]


def test_problems_come_in_document_order_although_namespaces_are_read_first():
    r = parse(NS + "metadata: {name: A}\n---\n"
              "apiVersion: v1\nkind: Namespace\nmetadata: {name: B, annotations: {networkservicemesh.io: s}}")
    assert [(p.index, p.path) for p in r.problems] == [(0, "metadata.name"), (1, "metadata.name")]


def test_lists_flatten_and_typed_list_items_inherit_kind():
    r = parse("""
        apiVersion: v1
        kind: List
        items:
          - {apiVersion: networkservicemesh.io/v1, kind: NetworkService, metadata: {name: a}}
          - {apiVersion: v1, kind: ConfigMap, metadata: {name: ignored}}
          - apiVersion: v1
            kind: List
            items: [{apiVersion: networkservicemesh.io/v1, kind: NetworkService, metadata: {name: b}}]
        ---
        apiVersion: networkservicemesh.io/v1
        kind: NetworkServiceList
        items:
          - {metadata: {name: c}}
          - {metadata: {name: d}, spec: {payload: VXLAN}}
    """)
    assert [s.name for s in r.services] == ["a", "b", "c"]
    assert problems(r) == [(1, "items[1].spec.payload", 'expected one of ETHERNET, IP, found string "VXLAN"')]


def test_other_kinds_and_empty_documents_are_ignored():
    r = parse(dedent("""
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: Whatever_Is_Here}
        ---
        apiVersion: example.com/v1
        kind: NetworkService
        metadata: {name: Someone_Elses}
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {name: Not_Ours_Without_The_Annotation}
        ---
    """) + GOOD_SERVICE)
    assert r.problems == ()
    assert [s.name for s in r.services] == ["good"]


# -- bad input: exact path and message, neighbours survive -------------------------------------

NS = "apiVersion: networkservicemesh.io/v1\nkind: NetworkService\n"
NSE = "apiVersion: networkservicemesh.io/v1\nkind: NetworkServiceEndpoint\n"
POD = "apiVersion: v1\nkind: Pod\n"
ANN = 'metadata.annotations["networkservicemesh.io"]'
ATT = 'metadata.annotations["ryu-nsm.io/attachments"]'


def _routes(weight: str) -> str:
    routes = f"[{{routes: []}}, {{routes: [{{weight: {weight}}}]}}]"
    return NS + f"metadata: {{name: s}}\nspec: {{matches: {routes}}}"


def _pod(value: str, attachments: str | None = None) -> str:
    ann = f"networkservicemesh.io: {value!r}"
    if attachments is not None:
        ann += f", ryu-nsm.io/attachments: {attachments!r}"
    return POD + f"metadata: {{name: p, annotations: {{{ann}}}}}\n"


BAD = [
    # (document, path, fragments of the message)
    (_routes("-1"), "spec.matches[1].routes[0].weight", ["non-negative integer", "integer -1"]),
    (_routes('"2"'), "spec.matches[1].routes[0].weight", ["non-negative integer", 'string "2"']),
    (_routes("true"), "spec.matches[1].routes[0].weight", ["non-negative integer", "boolean true"]),
    (_routes("4294967296"), "spec.matches[1].routes[0].weight", ["uint32", "4294967296"]),
    (_routes("1.5"), "spec.matches[1].routes[0].weight", ["non-negative integer", "number 1.5"]),
    (NS + "metadata: {name: s}\nspec: {matches: [{fallthrough: 'yes'}]}", "spec.matches[0].fallthrough",
     ["true or false", 'string "yes"']),
    (NS + "metadata: {name: s}\nspec: {matchs: []}", "spec.matchs",
     ["one of the fields name, payload, matches", 'unknown field "matchs"']),
    (NS + "metadata: {name: s}\nspec: {matches: [{routes: [{destination_selector: {}, selector: {}}]}]}",
     "spec.matches[0].routes[0].selector", ["destination_selector, weight", 'unknown field "selector"']),
    (NS + "metadata: {name: s}\nspec: {matches: {a: b}}", "spec.matches", ["expected a list", "a mapping"]),
    (NS + "metadata: {name: s}\nspec: {matches: [{source_selector: [a]}]}", "spec.matches[0].source_selector",
     ["expected a mapping", "a list of 1 item"]),
    (NS + "metadata: {name: s}\nspec: {matches: [{source_selector: {version: 1}}]}",
     'spec.matches[0].source_selector["version"]', ["expected a string (quote it in YAML)", "any string",
                                                     "integer 1"]),
    (NSE + "metadata: {name: e}\nspec: {network_service_names: [echo], expiration_time: tomorrow}",
     "spec.expiration_time", ["RFC 3339", 'string "tomorrow"']),
    (NSE + "metadata: {name: e}\nspec: {network_service_names: [echo], "
     "expiration_time: '2030-01-01T00:00:00'}",
     "spec.expiration_time", ["with a zone", '"2030-01-01T00:00:00"']),
    (NSE + "metadata: {name: e}\nspec: {network_service_names: [echo], expiration_time: {seconds: x}}",
     "spec.expiration_time.seconds", ["an integer", 'string "x"']),
    (NS + "metadata: {name: s}\nspec: {matches: [{source_selector: {-bad: x}}]}",
     'spec.matches[0].source_selector["-bad"]', ["label key", 'string "-bad"']),
    (NS + "metadata: {name: s}\nspec: {matches: [{source_selector: {a/b/c: x}}]}",
     'spec.matches[0].source_selector["a/b/c"]', ["label key", 'string "a/b/c"']),
    (NS + "metadata: {name: s}\nspec: {payload: ethernet}", "spec.payload",
     ["one of ETHERNET, IP", 'string "ethernet"']),
    (NS + "metadata: {name: s}\nspec: {name: t}", "spec.name",
     ['expected "s" (as metadata.name)', 'string "t"']),
    (NS + "metadata: {name: Secure_Internet}", "metadata.name", ["DNS-1123 subdomain", '"Secure_Internet"']),
    (NS + f"metadata: {{name: {'a' * 254}}}", "metadata.name", ["DNS-1123 subdomain", "at most 253"]),
    (NS + "metadata: {name: s, namespace: team.one}", "metadata.namespace", ["DNS-1123 label", '"team.one"']),
    (NS + "metadata: {namespace: x}", "metadata.name", ["expected a name", "null"]),
    (NS + "metadata: [x]", "metadata", ["expected a mapping", "a list"]),
    ("apiVersion: networkservicemesh.io/v1alpha1\nkind: NetworkService\nmetadata: {name: s}", "apiVersion",
     ["networkservicemesh.io/v1 for kind NetworkService", '"networkservicemesh.io/v1alpha1"']),
    ("apiVersion: v2\nkind: Pod\nmetadata: {name: s}", "apiVersion", ["expected v1 for kind Pod"]),
    ("- just\n- a list\n", "", ["Kubernetes object", "a list of 2 item(s)"]),
    ("apiVersion: v1\nmetadata: {name: s}", "kind", ["non-empty string", "null"]),
    ("apiVersion: v1\nkind: List\nitems: {a: 1}", "items", ["expected a list", "a mapping"]),
    ("apiVersion: v1\nkind: List\nitems: [null]", "items[0]", ["Kubernetes object", "null"]),
    (NSE + "metadata: {name: e}\nspec: {network_service_names: echo}", "spec.network_service_names",
     ["expected a list", 'string "echo"']),
    (NSE + "metadata: {name: e}\nspec: {network_service_names: [echo, Bad.Name]}",
     "spec.network_service_names[1]", ["DNS-1123 subdomain", '"Bad.Name"']),
    (NSE + "metadata: {name: e}\nspec: {network_service_names: [echo], network_service_labels: "
     "{ecko: {labels: {a: b}}}}", 'spec.network_service_labels["ecko"]',
     ['network_service_names ["echo"]', 'string "ecko"']),
    (NSE + "metadata: {name: e}\nspec: {network_service_names: [echo], network_service_labels: "
     "{echo: {app: x}}}", 'spec.network_service_labels["echo"].app', ['unknown field "app"']),
    (NSE + "metadata: {name: e, annotations: {ryu-nsm.io/attachments: 's1/p1,s1-p2'}}",
     f"{ATT}[1]", ["<switch>/<port>", 'string "s1-p2"']),
    (NSE + "metadata: {name: e, annotations: {ryu-nsm.io/attachments: 's1/p 1'}}",
     f"{ATT}[0]", ["<switch>/<port>", 'string "s1/p 1"']),
    (NSE + "metadata: {name: e, annotations: {ryu-nsm.io/attachments: 5}}",
     ATT, ["expected a string", "integer 5"]),
    (NSE + "metadata: {name: e}\nspec: {url: 5}", "spec.url", ["expected a string", "integer 5"]),
    (_pod("kernel://a/nsm-1, kernel://b/nsm-2, memif://c/nsm-3"), f"{ANN}[2]",
     ["mechanism kernel://", "memif://", '"memif://c/nsm-3"']),
    (_pod("kernel://a/nsm-1,"), f"{ANN}[1]", ["kernel://<service>", "an empty entry"]),
    (_pod("kernel://a/toolonginterface0"), f"{ANN}[0]", ["interface name", '"toolonginterface0"']),
    (_pod("kernel://a/x/y"), f"{ANN}[0]", ["more than one '/'", '"kernel://a/x/y"']),
    (_pod("kernel:///nsm-1"), f"{ANN}[0]", ["no network service", '"kernel:///nsm-1"']),
    (_pod("kernel://Secure/nsm-1"), f"{ANN}[0]", ["network service a DNS-1123 subdomain", '"Secure"']),
    (_pod("kernel://s@/nsm-1"), f"{ANN}[0]", ["domain a DNS-1123 subdomain", 'string ""']),
    (_pod("kernel://s/nsm-1?app"), f"{ANN}[0]", ["<label>=<value>", '"app"']),
    (_pod("kernel://s/nsm-1?a=1&a=2"), f"{ANN}[0]", ["each label once", '"a" twice']),
    (_pod("kernel://s/nsm-1?_a=1"), f"{ANN}[0]", ["label key", '"_a"']),
    (POD + "metadata: {name: p, annotations: {networkservicemesh.io: [s]}}", ANN,
     ["expected a string", "a list"]),
    (_pod("s/nsm-1", "nsm-1:s1/p"), f"{ATT}[0]", ["<ifname>=<switch>/<port>", '"nsm-1:s1/p"']),
    (_pod("s/nsm-1", "nsm-1=s1-p"), f"{ATT}[0]", ["<ifname>=<switch>/<port>", '"nsm-1=s1-p"']),
    (_pod("s/nsm-1", "nsm-1=s1/p,nsm-2=s1/q"), f"{ATT}[1]",
     ['interface the pod requests ["nsm-1"]', 'found "nsm-2"']),
    (_pod("s/nsm-1", "bad ifname=s1/p"), f"{ATT}[0]", ["interface name", '"bad ifname"']),
    (POD + "metadata: {name: p, annotations: {ryu-nsm.io/attachments: nsm-1=s1/p}}", f"{ATT}[0]",
     ["neither the pod nor its Namespace", "networkservicemesh.io annotation"]),
    (POD + "metadata: {name: P, annotations: {networkservicemesh.io: s}}", "metadata.name",
     ["DNS-1123 subdomain", '"P"']),
    ("apiVersion: v1\nkind: Namespace\nmetadata: {name: a.b, annotations: {networkservicemesh.io: s}}",
     "metadata.name", ["DNS-1123 label", '"a.b"']),
]


@pytest.mark.parametrize("document, path, fragments", BAD, ids=[f"{i}:{b[1]}" for i, b in enumerate(BAD)])
def test_bad_document_gives_problem_at_exact_path_and_others_survive(document, path, fragments):
    r = parse(GOOD_SERVICE + "---\n" + document + "\n---\n" + GOOD_SERVICE.replace("good", "also-good"),
              source="f.yaml")
    assert [(p.source, p.index, p.path) for p in r.problems] == [("f.yaml", 1, path)]
    for fragment in fragments:
        assert fragment in r.problems[0].message
    assert "expected" in r.problems[0].message
    assert [s.name for s in r.services] == ["good", "also-good"]
    assert r.endpoints == () and r.requests == ()


def test_every_error_in_one_document_is_reported():
    spec = "spec: {payload: x, matches: [{routes: [{weight: -1}, {weight: a}]}]}"
    r = parse(NS + "metadata: {name: S}\n" + spec)
    assert [p.path for p in r.problems] == [
        "metadata.name", "spec.payload", "spec.matches[0].routes[0].weight",
        "spec.matches[0].routes[1].weight",
    ]
    assert r.services == ()


# -- duplicates ---------------------------------------------------------------------------------


def test_duplicate_objects_first_wins_with_problem_on_the_later():
    r = parse(
        NS + "metadata: {name: s}\nspec: {payload: IP}\n---\n"
        + NS + "metadata: {name: s}\n---\n"
        + NS + "metadata: {name: s, namespace: other}\n---\n"
        + NSE + "metadata: {name: s}\n---\n"
        + NSE + "metadata: {name: s}\n---\n"
        + _pod("a/nsm-1") + "---\n" + _pod("b/nsm-1")
    )
    assert [(s.namespace, s.payload) for s in r.services] == [("default", "IP"), ("other", "ETHERNET")]
    assert len(r.endpoints) == 1
    assert [q.service for q in r.requests] == ["a"]
    assert [(i, path) for i, path, _ in problems(r)] == [
        (1, "metadata.name"), (4, "metadata.name"), (6, "metadata.name"),
    ]
    assert r.problems[0].message == (
        "duplicate NetworkService default/s: first declared at t.yaml[0], which wins"
    )
    assert "duplicate Pod default/p" in r.problems[2].message


def test_duplicate_entries_inside_one_object_keep_the_object():
    r = parse(
        NSE + "metadata: {name: e, annotations: {ryu-nsm.io/attachments: 's1/a,s1/a'}}\n"
        "spec: {network_service_names: [x, x]}\n---\n" + _pod("s/nsm-1", "nsm-1=s1/p,nsm-1=s1/q")
    )
    assert r.endpoints == (Endpoint("e", services=("x",), attachments=(Attachment("s1", "a"),)),)
    assert r.requests[0].attachment == Attachment("s1", "p")
    assert [(i, path) for i, path, _ in problems(r)] == [
        (0, "spec.network_service_names[1]"), (0, f"{ATT}[1]"), (1, f"{ATT}[1]"),
    ]


# -- round trip ---------------------------------------------------------------------------------


def test_dump_then_parse_is_identity_on_a_rich_set():
    original = parse("""
        apiVersion: v1
        kind: Namespace
        metadata: {name: team, annotations: {networkservicemesh.io: "kernel://echo?x=1"}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: member, namespace: team}
        ---
        apiVersion: networkservicemesh.io/v1
        kind: NetworkService
        metadata: {name: s, namespace: team}
        spec:
          payload: IP
          matches:
            - source_selector: {app: "{{.app}}"}
              routes: [{destination_selector: {example.com/app: x}, weight: 0}]
              fallthrough: true
              metadata: {labels: {k: v}}
            - routes: []
        ---
        apiVersion: networkservicemesh.io/v1
        kind: NetworkServiceEndpoint
        metadata:
          name: e
          annotations: {ryu-nsm.io/attachments: "s1/a,s2/b"}
        spec:
          network_service_names: [s, t]
          network_service_labels: {s: {labels: {app: x}}, t: {labels: {}}}
          url: unix:///var/lib/nse.sock
        ---
        apiVersion: networkservicemesh.io/v1
        kind: NetworkServiceEndpoint
        metadata: {name: unattached}
        ---
        apiVersion: v1
        kind: Pod
        metadata:
          name: c
          annotations:
            networkservicemesh.io: "kernel://s@d.example/if1?a=1&example.com/b=2,t/if2"
            ryu-nsm.io/attachments: if1=s1/c
    """)
    assert original.problems == ()
    assert len(original.services) == 1 and len(original.endpoints) == 2 and len(original.requests) == 3
    docs = dump_documents(original)
    assert parse_documents(docs, "dump") == original
    # Through YAML text as well, which is what a user would save.
    assert parse_documents(list(yaml.safe_load_all(yaml.safe_dump_all(docs))), "dump") == original


def test_dump_then_parse_is_identity_on_the_demo_chain():
    original = load_paths([ROOT / "examples" / "demo-chain"])
    assert parse_documents(dump_documents(original), "dump") == original


_names = st.from_regex(r"\A[a-z][a-z0-9-]{0,8}[a-z0-9]\Z")
_values = st.from_regex(r"\A([A-Za-z0-9]([A-Za-z0-9_.-]{0,6}[A-Za-z0-9])?)?\Z")
_labels = st.dictionaries(_names, _values, max_size=3).map(FrozenMap)
_attachment = st.builds(Attachment, _names, _names)


@st.composite
def _resources(draw) -> Resources:
    services = draw(st.lists(st.builds(
        NetworkService, _names, _names,
        st.lists(st.builds(Match, _labels, st.lists(st.builds(Destination, _labels, st.integers(0, 9)),
                                                    max_size=2).map(tuple), st.booleans(), _labels),
                 max_size=3).map(tuple),
        st.sampled_from(["ETHERNET", "IP"]),
    ), max_size=3, unique_by=lambda s: s.key))
    endpoints = []
    for name in draw(st.lists(_names, max_size=3, unique=True)):
        served = draw(st.lists(_names, max_size=2, unique=True))
        labels = FrozenMap({s: draw(_labels) for s in served})
        endpoints.append(Endpoint(name, "default", tuple(served), labels,
                                  tuple(draw(st.lists(_attachment, max_size=2, unique=True))), draw(_names)))
    requests = []
    for pod in draw(st.lists(_names, max_size=3, unique=True)):
        for ifname in draw(st.lists(_names, min_size=1, max_size=2, unique=True)):
            requests.append(ClientRequest(pod, ifname, draw(_names), "default", draw(_labels),
                                          draw(st.none() | _attachment), draw(st.just("") | _names)))
    return Resources(tuple(services), tuple(endpoints), tuple(requests))


@settings(max_examples=60, deadline=None)
@given(_resources())
def test_dump_then_parse_is_identity_property(resources):
    back = parse_documents(dump_documents(resources), "dump")
    assert back.problems == ()
    assert back == resources


# -- files --------------------------------------------------------------------------------------


def test_load_paths_walks_directories_in_sorted_order_and_skips_hidden_and_other_files():
    tree = FIXTURES / "tree"
    r = load_paths([tree])
    assert [(s.namespace, s.name, s.payload) for s in r.services] == [("team", "secure-internet", "ETHERNET")]
    assert [e.name for e in r.endpoints] == ["fw"]  # kept although a later document of its file is broken
    # The pod in b/pods.yml inherits the annotation of the Namespace in a-namespace.yaml.
    assert [(q.id, q.service, dict(q.labels), q.attachment) for q in r.requests] == [
        ("team/web-1/nsm-1", "secure-internet", {"app": "web"}, Attachment("s1", "s1-web1")),
    ]
    assert [(p.source, p.index, p.path) for p in r.problems] == [
        (str(tree / "dup.yaml"), 0, "metadata.name"),
        (str(tree / "z-broken.yaml"), 1, ""),
    ]
    assert f"first declared at {tree / 'c.json'}[0] items[0]" in r.problems[0].message
    assert r.problems[1].message.startswith("YAML syntax error at line 19, column 1: ")
    assert "expected ',' or ']'" in r.problems[1].message


def test_load_paths_reports_missing_paths_bad_json_encoding_and_duplicate_keys(tmp_path):
    (tmp_path / "dupkey.yaml").write_text(GOOD_SERVICE + "---\n" + NS + "metadata: {name: x}\nkind: Pod\n")
    (tmp_path / "bad.json").write_text('{"apiVersion": "v1",\n "kind": }')
    (tmp_path / "latin1.yaml").write_bytes(b"kind: caf\xe9\n")
    (tmp_path / "one.yml").write_text(GOOD_SERVICE.replace("good", "from-file"))
    r = load_paths([tmp_path / "one.yml", tmp_path, tmp_path / "missing.yaml"])
    assert [s.name for s in r.services] == ["from-file", "good"]
    found = [(Path(p.source).name, p.index, p.message) for p in r.problems]
    assert found[0] == ("missing.yaml", -1, "no such file or directory")
    assert found[1][:2] == ("bad.json", 0)
    assert found[1][2].startswith("JSON syntax error at line 2, column 10")
    assert found[2][:2] == ("dupkey.yaml", 1)
    assert "line 9" in found[2][2] and "duplicate key 'kind'" in found[2][2]
    assert found[3] == ("latin1.yaml", -1, "expected UTF-8 text, found byte 0xe9 at offset 9")
    assert len(found) == 4  # one.yml, named itself and inside the directory, is read once


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    (tmp_path / "merge.yaml").write_text(dedent("""
        <<: {apiVersion: networkservicemesh.io/v1, kind: Pod}
        kind: NetworkService
        metadata: {name: merged}
    """))
    r = load_paths([tmp_path])
    assert r.problems == () and [s.name for s in r.services] == ["merged"]


# -- examples -----------------------------------------------------------------------------------


def test_demo_chain_example_resolves_to_the_chain():
    r = load_paths([ROOT / "examples" / "demo-chain"])
    assert r.problems == ()
    assert [s.name for s in r.services] == ["secure-internet"]
    assert {e.name: (e.attachments, dict(e.labels_for("secure-internet"))) for e in r.endpoints} == {
        "firewall": ((Attachment("s2", "s2-fw-in"),), {"app": "firewall"}),
        "dpi": ((Attachment("s3", "s3-dpi-in"),), {"app": "dpi"}),
        "vpn-gateway": ((Attachment("s4", "s4-gw"),), {"app": "vpn-gateway"}),
    }
    # Pod and endpoint of a service function share a name: that links the hops into one chain.
    connections = resolve(r)
    hops = {c.client: c.endpoint for c in connections.values()}
    chain = ["client"]
    while chain[-1] in hops:
        chain.append(hops[chain[-1]])
    assert chain == ["client", "firewall", "dpi", "vpn-gateway"]
    assert {c.client: str(c.client_attachment) for c in connections.values()} == {
        "client": "s1/s1-client", "firewall": "s2/s2-fw-out", "dpi": "s3/s3-dpi-out",
    }


def test_ring_example_loads():
    r = load_paths([ROOT / "examples" / "ring"])
    assert r.problems == ()
    [connection] = resolve(r).values()
    assert (connection.client_attachment, connection.endpoint_attachment) == (
        Attachment("s1", "s1-client"), Attachment("s3", "s3-server"),
    )


@pytest.mark.parametrize("example, topology", [("demo-chain", "demo-chain.yaml"), ("ring", "ring.yaml")])
def test_example_attachments_name_ports_of_their_topology(example, topology):
    fabric = load_topology(ROOT / "topologies" / topology)
    r = load_paths([ROOT / "examples" / example])
    attachments = [a for e in r.endpoints for a in e.attachments] + [q.attachment for q in r.requests]
    assert attachments and None not in attachments
    assert [str(a) for a in attachments if fabric.attachment_port(a) is None] == []


def test_bad_examples_give_their_problems_and_keep_the_valid_service():
    bad = ROOT / "examples" / "bad"
    r = load_paths([bad])
    assert [s.name for s in r.services] == ["still-fine"]
    assert r.endpoints == () and r.requests == ()
    assert [(Path(p.source).name, p.index, p.path) for p in r.problems] == [
        ("endpoints.yaml", 0, f"{ATT}[0]"),
        ("endpoints.yaml", 1, 'spec.network_service_labels["secure-internt"]'),
        ("pods.yaml", 0, f"{ANN}[1]"),
        ("pods.yaml", 1, f"{ATT}[0]"),
        ("service.yaml", 1, "spec.matches[0].routes[0].weight"),
        ("service.yaml", 2, "spec.matches[0].destination_selector"),
        ("service.yaml", 3, "metadata.name"),
        ("syntax.yaml", 0, ""),
    ]
    assert "line 6" in r.problems[-1].message


# -- watcher ------------------------------------------------------------------------------------


class Recorder:
    def __init__(self):
        self.calls: queue.Queue[Resources] = queue.Queue()

    def __call__(self, resources: Resources) -> None:
        self.calls.put(resources)

    def last(self) -> Resources:
        assert self.calls.qsize() == 1
        return self.calls.get_nowait()


def _service(name: str, payload: str = "ETHERNET") -> str:
    return NS + f"metadata: {{name: {name}}}\nspec: {{payload: {payload}}}\n"


def test_watcher_reports_initial_state_then_adds_changes_and_deletes(tmp_path):
    (tmp_path / "a.yaml").write_text(_service("a"))
    seen = Recorder()
    watcher = DirectoryWatcher([tmp_path], seen, interval=60)

    assert watcher.poll_once() is True
    assert [s.name for s in seen.last().services] == ["a"]
    assert watcher.poll_once() is False and seen.calls.empty()

    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "b.yml").write_text(_service("b"))
    assert watcher.poll_once() is True
    assert [s.name for s in seen.last().services] == ["a", "b"]

    (sub / "b.yml").write_text(_service("b", "IP"))
    assert watcher.poll_once() is True
    assert [(s.name, s.payload) for s in seen.last().services] == [("a", "ETHERNET"), ("b", "IP")]

    (tmp_path / "a.yaml").unlink()
    assert watcher.poll_once() is True
    assert [s.name for s in seen.last().services] == ["b"]

    (tmp_path / "broken.yaml").write_text("a: [")
    assert watcher.poll_once() is True
    state = seen.last()
    assert [s.name for s in state.services] == ["b"]
    assert [Path(p.source).name for p in state.problems] == ["broken.yaml"]
    assert watcher.poll_once() is False


def test_watcher_sees_a_rewrite_that_leaves_stat_unchanged(tmp_path, monkeypatch):
    # A filesystem whose timestamps tick coarsely: a same-size rewrite within one tick leaves stat
    # (mtime, size, inode, ctime) as it was; only the content tells.
    frozen = (time.time_ns(), 0, 0, 0)
    monkeypatch.setattr(files, "_stat_key", lambda path: frozen)
    path = tmp_path / "a.yaml"
    path.write_text(_service("a", "IP"))
    seen = Recorder()
    watcher = DirectoryWatcher([path], seen)
    assert watcher.poll_once() is True and [s.name for s in seen.last().services] == ["a"]
    path.write_text(_service("b", "IP"))
    assert watcher.poll_once() is True
    assert [s.name for s in seen.last().services] == ["b"]
    assert watcher.poll_once() is False


def test_watcher_leaves_a_file_that_changes_while_read_for_the_next_poll(tmp_path, monkeypatch):
    path = tmp_path / "a.yaml"
    path.write_text(_service("a"))
    real = files._stat_key
    # Stat before and after reading differ once: the file was being written meanwhile.
    moving = iter([(1, 0, 0, 0), (2, 0, 0, 0)])
    monkeypatch.setattr(files, "_stat_key", lambda p: next(moving, None) or real(p))
    seen = Recorder()
    watcher = DirectoryWatcher([tmp_path], seen)
    assert watcher.poll_once() is True
    assert seen.last().services == ()
    assert watcher.poll_once() is True
    assert [s.name for s in seen.last().services] == ["a"]


def test_watcher_reports_a_deleted_explicit_file_as_a_problem(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text(_service("a"))
    seen = Recorder()
    watcher = DirectoryWatcher([path], seen)
    watcher.poll_once()
    seen.last()
    path.unlink()
    assert watcher.poll_once() is True
    state = seen.last()
    assert state.services == ()
    assert [(p.source, p.message) for p in state.problems] == [(str(path), "no such file or directory")]


def test_watcher_offers_the_state_again_when_the_callback_failed(tmp_path):
    (tmp_path / "a.yaml").write_text(_service("a"))
    calls = []

    def flaky(resources: Resources) -> None:
        calls.append(resources)
        if len(calls) == 1:
            raise RuntimeError("consumer not ready")

    watcher = DirectoryWatcher([tmp_path], flaky)
    with pytest.raises(RuntimeError):
        watcher.poll_once()
    assert watcher.poll_once() is True
    assert watcher.poll_once() is False
    assert [s.name for s in calls[1].services] == ["a"]


def test_watcher_thread_reports_changes_and_stops_promptly(tmp_path):
    seen = Recorder()
    watcher = DirectoryWatcher([tmp_path], seen, interval=0.02)
    watcher.start()
    try:
        assert seen.calls.get(timeout=10).services == ()
        (tmp_path / "a.yaml").write_text(_service("a"))
        deadline = time.monotonic() + 10
        while True:
            state = seen.calls.get(timeout=max(0.0, deadline - time.monotonic()))
            if state.services:
                break
        assert [s.name for s in state.services] == ["a"]
    finally:
        watcher.stop()
    assert not any(t.name == "ryu-nsm-file-watcher" for t in threading.enumerate())


def test_watcher_stop_does_not_wait_for_the_interval(tmp_path):
    seen = Recorder()
    watcher = DirectoryWatcher([tmp_path], seen, interval=3600)
    watcher.start()
    seen.calls.get(timeout=10)
    started = time.monotonic()
    watcher.stop(timeout=5)
    assert time.monotonic() - started < 5
    assert not any(t.name == "ryu-nsm-file-watcher" for t in threading.enumerate())


def _next_with(seen: Recorder, names: list[str], deadline: float):
    while True:
        state = seen.calls.get(timeout=max(0.0, deadline - time.monotonic()))
        if sorted(s.name for s in state.services) == names:
            return state


def test_watcher_wakes_on_a_change_long_before_its_interval(tmp_path):
    # inotify: a file renamed in, and one in a directory made after the start, are seen at once,
    # not at the next poll an hour away.
    seen = Recorder()
    watcher = DirectoryWatcher([tmp_path], seen, interval=3600)
    watcher.start()
    try:
        assert seen.calls.get(timeout=10).services == ()
        staged = tmp_path / ".a.staged"
        staged.write_text(_service("a"))
        staged.rename(tmp_path / "a.yaml")
        _next_with(seen, ["a"], time.monotonic() + 10)
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "b.yaml").write_text(_service("b"))
        _next_with(seen, ["a", "b"], time.monotonic() + 10)
        (tmp_path / "a.yaml").unlink()
        _next_with(seen, ["b"], time.monotonic() + 10)
    finally:
        watcher.stop()


# -- watcher: the last valid version stands in for a bad edit -----------------------------------


def _weighted(name: str, weight: int, namespace: str = "default") -> str:
    route = f"{{destination_selector: {{app: x}}, weight: {weight}}}"
    metadata = f"{{name: {name}, namespace: {namespace}}}"
    return NS + f"metadata: {metadata}\nspec: {{matches: [{{routes: [{route}]}}]}}\n"


def _list(*documents: str) -> str:
    items = [yaml.safe_load(d) for d in documents]
    return yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items})


def _weights(resources: Resources) -> dict[str, int]:
    return {s.name: s.matches[0].routes[0].weight for s in resources.services}


def _found(resources: Resources) -> list[tuple[str, int, str, str]]:
    return [(Path(p.source).name, p.index, p.path, p.message) for p in resources.problems]


def test_watcher_keeps_the_last_parsed_file_while_it_has_a_syntax_error(tmp_path):
    path = tmp_path / "all.yaml"
    valid = "---\n".join([
        _service("a"),
        NSE + "metadata: {name: e, annotations: {ryu-nsm.io/attachments: s1/p1}}\n"
              "spec: {network_service_names: [a]}\n",
        _pod("a/nsm-1", "nsm-1=s1/p2"),
    ])
    path.write_text(valid)
    seen = Recorder()
    watcher = DirectoryWatcher([tmp_path], seen)
    watcher.poll_once()
    before = seen.last()
    assert before.services and before.endpoints and before.requests and before.problems == ()

    # A typo in the middle: the documents before it parse, but the whole file stands as it was.
    path.write_text(valid.replace("spec: {network_service_names: [a]}", "spec: {network_service_names: [a}"))
    assert watcher.poll_once() is True
    state = seen.last()
    assert state == before
    assert [(name, index, where) for name, index, where, _ in _found(state)] == [("all.yaml", 1, "")] * 2
    assert state.problems[0].message.startswith("YAML syntax error at line")
    assert state.problems[1].message == "keeping the last valid version of this file until it is fixed"
    assert watcher.poll_once() is False

    path.write_text(valid.replace("name: a}", "name: b}").replace("[a]", "[b]").replace("a/nsm-1", "b/nsm-1"))
    assert watcher.poll_once() is True
    state = seen.last()
    assert state.problems == ()
    assert [s.name for s in state.services] == ["b"] and state.endpoints[0].services == ("b",)
    assert [q.service for q in state.requests] == ["b"]


def test_watcher_keeps_the_last_valid_version_of_an_object_until_it_is_fixed_or_removed(tmp_path):
    path = tmp_path / "svc.yaml"
    path.write_text(_weighted("foo", 3))
    seen = Recorder()
    watcher = DirectoryWatcher([tmp_path], seen)
    watcher.poll_once()
    assert _weights(seen.last()) == {"foo": 3}

    # A bad edit of foo, and a new object that is invalid from the start.
    path.write_text(_weighted("foo", -1) + "---\n" + _weighted("bar", -2))
    assert watcher.poll_once() is True
    state = seen.last()
    assert _weights(state) == {"foo": 3}
    weight = "spec.matches[0].routes[0].weight"
    assert [(name, index, where) for name, index, where, _ in _found(state)] == [
        ("svc.yaml", 0, weight), ("svc.yaml", 0, ""), ("svc.yaml", 1, weight),
    ]
    assert "integer -1" in state.problems[0].message and "integer -2" in state.problems[2].message
    assert state.problems[1].message == (
        "keeping the last valid version of NetworkService default/foo until it is fixed"
    )

    path.write_text(_weighted("foo", 5) + "---\n" + _weighted("bar", 6))
    assert watcher.poll_once() is True
    state = seen.last()
    assert _weights(state) == {"foo": 5, "bar": 6} and state.problems == ()

    path.unlink()
    assert watcher.poll_once() is True
    state = seen.last()
    assert state.services == () and state.problems == ()


def test_watcher_forgets_a_kept_object_once_its_document_is_gone(tmp_path):
    path = tmp_path / "svc.yaml"
    path.write_text(_weighted("foo", 3))
    seen = Recorder()
    watcher = DirectoryWatcher([tmp_path], seen)
    watcher.poll_once()
    seen.last()
    path.write_text(_weighted("foo", -1))
    watcher.poll_once()
    assert _weights(seen.last()) == {"foo": 3}

    # Removing the document is intentional: foo goes, and a later broken foo does not bring it back.
    path.write_text(_weighted("unrelated", 1))
    watcher.poll_once()
    assert _weights(seen.last()) == {"unrelated": 1}
    path.write_text(_weighted("foo", -1))
    assert watcher.poll_once() is True
    state = seen.last()
    assert state.services == ()
    assert [(name, where) for name, _, where, _ in _found(state)] == [
        ("svc.yaml", "spec.matches[0].routes[0].weight"),
    ]


def test_watcher_keeps_objects_by_kind_namespace_and_name_across_files_and_list_items(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(_weighted("foo", 1, "team") + "---\n" + _weighted("bar", 2))
    b.write_text(_list(_weighted("baz", 4)))
    seen = Recorder()
    watcher = DirectoryWatcher([tmp_path], seen)
    watcher.poll_once()
    assert _weights(seen.last()) == {"foo": 1, "bar": 2, "baz": 4}

    # foo moves to b.yaml (as a List item) broken; bar's apiVersion is mistyped; baz is fixed
    # elsewhere: the valid declaration wins over a kept version, without a Problem about keeping.
    a.write_text(_weighted("bar", 2).replace("/v1", "/v2") + "---\n" + _weighted("baz", 7))
    b.write_text(_list(_weighted("foo", -1, "team"), _weighted("baz", -1)))
    assert watcher.poll_once() is True
    state = seen.last()
    assert _weights(state) == {"baz": 7, "bar": 2, "foo": 1}
    assert [(s.namespace, s.name) for s in state.services if s.name == "foo"] == [("team", "foo")]
    kept = [(name, index, where, message.removesuffix(" until it is fixed"))
            for name, index, where, message in _found(state) if message.startswith("keeping")]
    assert kept == [
        ("a.yaml", 0, "", "keeping the last valid version of NetworkService default/bar"),
        ("b.yaml", 0, "items[0]", "keeping the last valid version of NetworkService team/foo"),
    ]
    assert len(state.problems) == 5  # bar's apiVersion, foo's and baz's weights, two kept


def test_watcher_keeps_a_namespace_annotation_its_pods_inherit(tmp_path):
    namespace = ("apiVersion: v1\nkind: Namespace\n"
                 "metadata: {{name: team, annotations: {{networkservicemesh.io: {}}}}}\n")
    pod = POD + "metadata: {name: web, namespace: team}\n"
    path = tmp_path / "team.yaml"
    path.write_text(namespace.format("'kernel://svc/nsm-1'") + "---\n" + pod)
    seen = Recorder()
    watcher = DirectoryWatcher([tmp_path], seen)
    watcher.poll_once()
    before = seen.last()
    assert [q.id for q in before.requests] == ["team/web/nsm-1"]

    path.write_text(namespace.format("'memif://svc/nsm-1'") + "---\n" + pod)
    assert watcher.poll_once() is True
    state = seen.last()
    assert state == before
    assert [(index, where) for _, index, where, _ in _found(state)] == [(0, f"{ANN}[0]"), (0, "")]
    assert state.problems[1].message == "keeping the last valid version of Namespace team until it is fixed"

    # Removing the annotation is intentional, not an error: the pod is no longer a client.
    path.write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n---\n" + pod)
    assert watcher.poll_once() is True
    state = seen.last()
    assert state.requests == () and state.problems == ()


def test_watcher_keeps_only_versions_it_delivered(tmp_path):
    path = tmp_path / "svc.yaml"
    path.write_text(_weighted("foo", 1))
    calls = []

    def flaky(resources: Resources) -> None:
        calls.append(resources)
        if len(calls) == 2:
            raise RuntimeError("consumer not ready")

    watcher = DirectoryWatcher([tmp_path], flaky)
    watcher.poll_once()
    path.write_text(_weighted("foo", 2))
    with pytest.raises(RuntimeError):
        watcher.poll_once()
    path.write_text(_weighted("foo", -1))
    assert watcher.poll_once() is True
    assert [_weights(r) for r in calls] == [{"foo": 1}, {"foo": 2}, {"foo": 1}]


# -- issue 12: what NSM accepts is accepted ------------------------------------------------------


@pytest.mark.parametrize("value", ["node[1]", "a b", "{{app}}", "{{.x}}", "x" * 64, "", "é/ü:1"])
def test_any_string_is_a_label_value_as_in_nsm_registry(value):
    """NSM's registry takes any string as a label value (selectors, metadata, endpoint labels)."""
    quoted = json.dumps(value)
    r = parse(NS + f"metadata: {{name: s}}\nspec: {{matches: [{{source_selector: {{a: {quoted}}}, "
              f"routes: [{{destination_selector: {{b: {quoted}}}}}], "
              f"metadata: {{labels: {{c: {quoted}}}}}}}]}}\n"
              "---\n" + NSE + "metadata: {name: e}\nspec: {network_service_names: [s], "
              f"network_service_labels: {{s: {{labels: {{b: {quoted}}}}}}}}}\n")
    assert r.problems == ()
    match = r.services[0].matches[0]
    assert (match.source_selector["a"], match.routes[0].selector["b"], match.metadata["c"]) == (value,) * 3
    assert r.endpoints[0].labels_for("s")["b"] == value


def test_client_annotation_label_values_are_any_string_percent_encoded():
    r = parse(POD + "metadata: {name: p, annotations: "
              "{networkservicemesh.io: 'kernel://s/nsm-1?node=node%5B1%5D&x=a b'}}")
    assert r.problems == ()
    assert dict(r.requests[0].labels) == {"node": "node[1]", "x": "a b"}
    assert parse_documents(dump_documents(r), "d").requests == r.requests


@pytest.mark.parametrize("metadata, expected", [
    ("", None), ("metadata: null,", None), ("metadata: {},", FrozenMap()),
    ("metadata: {labels: {}},", FrozenMap()),
    ("metadata: {labels: {a: b}},", FrozenMap(a="b")),
])
def test_match_metadata_absent_is_not_empty_metadata(metadata, expected):
    """NSM tells a match without metadata from one with empty metadata (it selects every endpoint)."""
    r = parse(NS + f"metadata: {{name: s}}\nspec: {{matches: [{{{metadata} fallthrough: false}}]}}")
    assert r.problems == ()
    assert r.services[0].matches[0].metadata == expected
    assert parse_documents(dump_documents(r), "d").services == r.services


@pytest.mark.parametrize("stamp, expected", [
    ('"2030-01-01T00:00:00Z"', 1893456000.0),
    ('"2030-01-01T01:00:00.5+01:00"', 1893456000.5),
    ("2030-01-01T00:00:00Z", 1893456000.0),  # YAML's own timestamp
    ("{seconds: 1893456000, nanos: 500000000}", 1893456000.5),
    ('{seconds: "1893456000"}', 1893456000.0),  # protojson writes int64 as text
    ("null", None),
])
def test_expiration_time_as_protojson_or_seconds_nanos(stamp, expected):
    r = parse(NSE + f"metadata: {{name: e}}\nspec: {{network_service_names: [s], expirationTime: {stamp}}}")
    assert r.problems == ()
    assert r.endpoints[0].expires == expected


def test_kubernetes_path_keeps_match_metadata_and_expiration():
    """The watcher hands NSM's specs to the same parser unchanged: `metadata: {}` and
    `expiration_time` survive it."""
    from ryu_nsm.sources import Document, parse_located
    from ryu_nsm.sources.kubernetes import NETWORK_SERVICE, NETWORK_SERVICE_ENDPOINT, _document

    service = {"metadata": {"name": "s", "namespace": "default", "uid": "1"},
               "spec": {"matches": [{"metadata": {}}, {"fallthrough": True}]}}
    endpoint = {"metadata": {"name": "e", "namespace": "default"},
                "spec": {"network_service_names": ["s"], "expiration_time": "2030-01-01T00:00:00Z"}}
    r = parse_located([Document("k8s", 0, _document(NETWORK_SERVICE, service)),
                       Document("k8s", 1, _document(NETWORK_SERVICE_ENDPOINT, endpoint))])
    assert r.problems == ()
    assert [m.metadata for m in r.services[0].matches] == [FrozenMap(), None]
    assert r.endpoints[0].expires == 1893456000.0


# -- several sources ------------------------------------------------------------------------------


def test_merged_sources_push_the_union_once_every_named_source_reported():
    from ryu_nsm.sources.merge import MergedSources

    pushed: list[Resources] = []
    merged = MergedSources(pushed.append, ["files", "ovsdb"])
    files_part, ovsdb_part = merged.part("files"), merged.part("ovsdb")
    files_part(parse(GOOD_SERVICE))
    assert pushed == []  # without the OVSDB part its clients would look deleted
    endpoint = Endpoint("e", "default", ("good",), FrozenMap(), ())
    ovsdb_part(Resources(endpoints=(endpoint,)))
    files_part(parse(GOOD_SERVICE))
    assert [([s.name for s in r.services], r.endpoints) for r in pushed] == [(["good"], (endpoint,))] * 2
    with pytest.raises(ValueError, match="'grpc' was not named"):
        merged.part("grpc")


def test_controller_sources_wait_for_a_source_that_has_not_reported(tmp_path):
    """The files report at once; an OVSDB server that never answers holds the first state back."""
    from ryu_nsm.wiring import _Sources

    (tmp_path / "service.yaml").write_text(GOOD_SERVICE)
    stoppers: list = []
    sources = _Sources(fabric=load_topology(ROOT / "topologies" / "linear.yaml"),
                       request_paths=[str(tmp_path)], watch_interval=0.05, kube_api=None, kubernetes=None,
                       ovsdb_remote=f"unix:{tmp_path / 'none.sock'}", nsm_listen=(), stoppers=stoppers)
    pushed: list[Resources] = []
    try:
        sources.attach(pushed.append)
        assert pushed == []
    finally:
        for stop in reversed(stoppers):
            stop()
