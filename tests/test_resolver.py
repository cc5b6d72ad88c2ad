"""NSM match semantics, case by case (nsm-wire.md 'Matching')."""

from collections import Counter

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
from ryu_nsm.core.resolver import render_selector, resolve


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
