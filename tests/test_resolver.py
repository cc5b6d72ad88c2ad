"""NSM match semantics, case by case (nsm-wire.md 'Matching')."""

from collections import Counter
from dataclasses import replace

import pytest

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
from ryu_nsm.core.resolver import is_subset, render_selector, render_value, resolve


def ep(name, labels, service="svc", n=1):
    return Endpoint(
        name, services=(service,), service_labels=FrozenMap({service: FrozenMap(labels)}),
        attachments=tuple(Attachment("s9", f"{name}-{i}") for i in range(n)),
    )


def req(pod, labels=None, service="svc", ifname="nsm-1"):
    return ClientRequest(pod, ifname, service, labels=FrozenMap(labels or {}),
                         attachment=Attachment("s1", f"{pod}-{ifname}"))


def route(sel, weight=1):
    return Destination(FrozenMap(sel), weight)


def svc(*matches, name="svc"):
    return NetworkService(name, matches=tuple(matches))


def test_first_applicable_match_wins_in_order():
    service = svc(
        Match(FrozenMap(app="firewall"), (route({"app": "dpi"}),)),
        Match(FrozenMap(), (route({"app": "firewall"}),)),
    )
    eps = (ep("fw", {"app": "firewall"}), ep("dpi", {"app": "dpi"}))
    out = resolve(Resources((service,), eps, (req("client"), req("fwpod", {"app": "firewall"}))))
    assert out["default/client/nsm-1"].endpoint == "fw"
    assert out["default/fwpod/nsm-1"].endpoint == "dpi"


def test_chain_of_three_functions():
    service = svc(
        Match(FrozenMap(app="firewall"), (route({"app": "dpi"}),)),
        Match(FrozenMap(app="dpi"), (route({"app": "gw"}),)),
        Match(FrozenMap(), (route({"app": "firewall"}),)),
    )
    eps = (ep("firewall", {"app": "firewall"}), ep("dpi", {"app": "dpi"}), ep("gw", {"app": "gw"}))
    reqs = (req("client"), req("firewall", {"app": "firewall"}), req("dpi", {"app": "dpi"}))
    out = resolve(Resources((service,), eps, reqs))
    hops = {c.client: c.endpoint for c in out.values()}
    assert hops == {"client": "firewall", "firewall": "dpi", "dpi": "gw"}


def test_no_fallthrough_stops_at_first_applicable_match():
    service = svc(
        Match(FrozenMap(), (route({"app": "missing"}),)),
        Match(FrozenMap(), (route({"app": "there"}),)),
    )
    out = resolve(Resources((service,), (ep("x", {"app": "there"}),), (req("c"),)))
    conn = out["default/c/nsm-1"]
    assert not conn.ok and "match #0" in conn.reason


def test_fallthrough_goes_on_when_no_endpoint_qualifies():
    service = svc(
        Match(FrozenMap(), (route({"app": "missing"}),), fallthrough=True),
        Match(FrozenMap(), (route({"app": "there"}),)),
    )
    out = resolve(Resources((service,), (ep("x", {"app": "there"}),), (req("c"),)))
    assert out["default/c/nsm-1"].endpoint == "x"


def test_source_selector_must_be_contained_in_request_labels():
    service = svc(Match(FrozenMap(app="a", tier="1"), (route({}),)))
    out = resolve(Resources((service,), (ep("x", {}),), (req("c", {"app": "a"}),)))
    assert not out["default/c/nsm-1"].ok
    assert "no match" in out["default/c/nsm-1"].reason
    out = resolve(Resources((service,), (ep("x", {}),), (req("c", {"app": "a", "tier": "1", "z": "9"}),)))
    assert out["default/c/nsm-1"].endpoint == "x"


def test_templates_substitute_request_labels():
    assert render_selector({"color": "{{.color}}", "k": "x-{{ .n }}"}, {"color": "red", "n": "1"}) == {
        "color": "red", "k": "x-1"}
    service = svc(Match(FrozenMap(), (route({"color": "{{.color}}"}),)))
    eps = (ep("red", {"color": "red"}), ep("blue", {"color": "blue"}))
    out = resolve(Resources((service,), eps, (req("c", {"color": "blue"}), req("d"))))
    assert out["default/c/nsm-1"].endpoint == "blue"
    assert not out["default/d/nsm-1"].ok and "color" in out["default/d/nsm-1"].reason


def test_service_without_matches_uses_any_registered_endpoint():
    out = resolve(Resources((svc(),), (ep("only", {}),), (req("c"),)))
    assert out["default/c/nsm-1"].endpoint == "only"


def test_unknown_service_and_missing_endpoint_report_why():
    out = resolve(Resources((), (), (req("c", service="nope"),)))
    assert "not found" in out["default/c/nsm-1"].reason
    out = resolve(Resources((svc(),), (), (req("c"),)))
    assert "no endpoint is registered" in out["default/c/nsm-1"].reason


def test_weights_spread_choices_in_proportion_and_deterministically():
    service = svc(Match(FrozenMap(), (route({"app": "a"}, 3), route({"app": "b"}, 1))))
    eps = (ep("a", {"app": "a"}, n=400), ep("b", {"app": "b"}, n=400))
    reqs = tuple(req(f"c{i}") for i in range(400))
    first = resolve(Resources((service,), eps, reqs))
    again = resolve(Resources((service,), eps, reqs))
    assert first == again
    counts = Counter(c.endpoint for c in first.values())
    assert 250 < counts["a"] < 350, counts


def test_zero_weight_routes_are_backups():
    service = svc(Match(FrozenMap(), (route({"app": "a"}, 1), route({"app": "b"}, 0))))
    eps = (ep("a", {"app": "a"}, n=1), ep("b", {"app": "b"}, n=1))
    out = resolve(Resources((service,), eps, (req("c1"), req("c2"))))
    assert sorted(c.endpoint for c in out.values()) == ["a", "b"]


def test_attachments_carry_one_connection_each():
    service = svc()
    out = resolve(Resources((service,), (ep("x", {}, n=2),), (req("c1"), req("c2"), req("c3"))))
    taken = [c.endpoint_attachment for c in out.values() if c.ok]
    assert len(taken) == 2 and len(set(taken)) == 2
    (failed,) = [c for c in out.values() if not c.ok]
    assert "in use" in failed.reason


def test_sticky_existing_connections_keep_endpoints_when_requests_are_added():
    service = svc()
    eps = tuple(ep(f"e{i}", {}) for i in range(3))
    before = resolve(Resources((service,), eps, (req("m"),)))
    after = resolve(Resources((service,), eps, (req("a"), req("m"), req("b"))), before)
    assert after["default/m/nsm-1"].endpoint_attachment == before["default/m/nsm-1"].endpoint_attachment


def test_deleted_endpoint_moves_its_client_to_another_that_qualifies():
    service = svc()
    eps = (ep("e1", {}), ep("e2", {}))
    before = resolve(Resources((service,), eps, (req("c"),)))
    gone = before["default/c/nsm-1"].endpoint
    left = tuple(e for e in eps if e.name != gone)
    after = resolve(Resources((service,), left, (req("c"),)), before)
    assert after["default/c/nsm-1"].ok and after["default/c/nsm-1"].endpoint != gone


def test_shared_client_attachment_is_an_error_for_the_later_request():
    a = ClientRequest("p", "nsm-1", "svc", attachment=Attachment("s1", "x"))
    b = ClientRequest("q", "nsm-1", "svc", attachment=Attachment("s1", "x"))
    out = resolve(Resources((svc(),), (ep("e", {}, n=2),), (a, b)))
    assert out["default/p/nsm-1"].ok
    assert "already used" in out["default/q/nsm-1"].reason


def test_unattached_client_is_reported():
    r = ClientRequest("p", "nsm-1", "svc")
    out = resolve(Resources((svc(),), (ep("e", {}),), (r,)))
    assert "no attachment" in out["default/p/nsm-1"].reason


# -- NSM's matchutils.MatchEndpoint, rule by rule (sdk pkg/tools/matchutils/utils.go; its utils_test.go
# has no MatchEndpoint table, so these are written from the code) --------------------------------


def _one(service, eps, request, now=None):
    return resolve(Resources((service,), tuple(eps), (request,)), now=now)[request.id]


MATCH_ENDPOINT = [
    # (name, matches, endpoint labels by name, request labels, endpoint chosen or fragment of reason)
    ("missing template label selects nothing, not an error: next match with fallthrough",
     [Match(FrozenMap(), (route({"app": "{{.app}}"}),), fallthrough=True), Match(FrozenMap(), (route({}),))],
     {"x": {"app": "a"}}, {}, "x"),
    ("missing template label without fallthrough: no endpoint, match and label named",
     [Match(FrozenMap(), (route({"app": "{{.app}}"}),)), Match(FrozenMap(), (route({}),))],
     {"x": {"app": "a"}}, {}, "match #0 of 'svc': destination selector template needs label(s) ['app']"),
    ("missing template label in a source selector: the match does not apply",
     [Match(FrozenMap(app="{{.app}}"), (route({}),)), Match(FrozenMap(), (route({"app": "b"}),))],
     {"x": {"app": "a"}, "y": {"app": "b"}}, {"other": "1"}, "y"),
    ("metadata and no routes: every endpoint",
     [Match(FrozenMap(), (), metadata=FrozenMap())], {"x": {"app": "a"}}, {}, "x"),
    ("metadata and no routes, but fallthrough: next match",
     [Match(FrozenMap(), (), fallthrough=True, metadata=FrozenMap()),
      Match(FrozenMap(), (route({"app": "b"}),))],
     {"x": {"app": "a"}, "y": {"app": "b"}}, {}, "y"),
    ("no metadata, no routes: no endpoint", [Match(FrozenMap(), ())], {"x": {}}, {},
     "no endpoint matches its destination selectors"),
    ("metadata with routes that select nothing: no endpoint",
     [Match(FrozenMap(), (route({"app": "z"}),), metadata=FrozenMap())], {"x": {"app": "a"}}, {},
     "no endpoint matches"),
    ("Go map semantics: a missing key reads as an empty value",
     [Match(FrozenMap(), (route({"zone": ""}),))], {"x": {"app": "a"}}, {}, "x"),
    ("IsSubset: fewer labels than the selector never match, even with empty values",
     [Match(FrozenMap(), (route({"zone": "", "rack": ""}),))], {"x": {"app": "a"}}, {},
     "no endpoint matches"),
    ("a value compared as written before it is rendered", [Match(FrozenMap(), (route({"v": "{{.v}}"}),))],
     {"x": {"v": "{{.v}}"}}, {}, "x"),
    ("a template Go cannot parse compares as written", [Match(FrozenMap(), (route({"v": "{{v}}"}),))],
     {"x": {"v": "{{v}}"}}, {"v": "1"}, "x"),
    ("label values NSM accepts", [Match(FrozenMap(node="{{.node}}"), (route({"node": "{{.node}}"}),))],
     {"x": {"node": "node[2]"}, "y": {"node": "node[1]"}}, {"node": "node[1]"}, "y"),
    ("no match applies: no endpoint", [Match(FrozenMap(app="a"), (route({}),))], {"x": {}}, {},
     "no match of network service 'svc' applies"),
]


@pytest.mark.parametrize("matches, labels, request_labels, outcome",
                         [case[1:] for case in MATCH_ENDPOINT], ids=[case[0] for case in MATCH_ENDPOINT])
def test_match_endpoint_as_nsm(matches, labels, request_labels, outcome):
    conn = _one(svc(*matches), [ep(name, lab) for name, lab in labels.items()], req("c", request_labels))
    if outcome in labels:
        assert conn.ok and conn.endpoint == outcome
    else:
        assert not conn.ok and outcome in conn.reason


def test_is_subset_and_rendering_as_go():
    assert is_subset({"a": "1"}, {"a": "{{.x}}"}, {"x": "1"})
    assert not is_subset({"a": "1"}, {"a": "{{.x}}"}, {})  # renders "<no value>"
    assert is_subset({"a": "<no value>"}, {"a": "{{.x}}"}, {})  # ... which is just a string
    assert render_value("x-{{ .n }}-{{.m}}", {"n": "1"}) == "x-1-<no value>"
    assert render_value("{{.a.b}}", {"a": "1"}) == "{{.a.b}}"  # fails in Go: compared as written


def test_expired_endpoints_are_no_candidates():
    live, old = ep("live", {"app": "a"}), replace(ep("old", {"app": "a"}), expires=100.0)
    service = svc(Match(FrozenMap(), (route({"app": "a"}),)))
    assert _one(service, [old, live], req("c"), now=100.0).endpoint == "live"
    assert _one(service, [old], req("c"), now=99.0).endpoint == "old"
    assert _one(service, [old], req("c")).endpoint == "old"  # no clock: nothing expires
    conn = _one(service, [old], req("c"), now=100.0)
    assert not conn.ok and "endpoint expired: old" in conn.reason
    conn = _one(svc(), [old], req("c"), now=200.0)  # a service without matches
    assert not conn.ok and "endpoint expired: old" in conn.reason


def test_expiry_moves_a_settled_connection():
    old = replace(ep("old", {}), expires=100.0)
    resources = Resources((svc(),), (old, ep("new", {})), (req("c"),))
    first = resolve(Resources((svc(),), (old,), (req("c"),)), now=0.0)
    assert first["default/c/nsm-1"].endpoint == "old"
    again = resolve(resources, first, frozenset(first), now=100.0)
    assert again["default/c/nsm-1"].endpoint == "new"
