"""ServiceLevel: quantities, validation with Problems at exact field paths, selection, the CRD."""

import json
from pathlib import Path
from textwrap import dedent

import jsonschema
import kubernetes_validate
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ryu_nsm.core.model import FrozenMap
from ryu_nsm.core.units import parse_bandwidth
from ryu_nsm.qos.service_level import (
    DSCP_NAMES,
    MAX_RATE_LIMIT,
    ServiceLevel,
    dscp_name,
    parse_dscp,
    parse_loss,
    parse_service_level,
    select,
)

ROOT = Path(__file__).resolve().parent.parent
CRD = ROOT / "deploy" / "crds" / "servicelevels.yaml"
EXAMPLE = ROOT / "examples" / "qos" / "servicelevel.yaml"


def level_doc(spec: str = "", **meta) -> dict:
    """A ServiceLevel document with ``spec`` (YAML) under networkService: chain."""
    body = yaml.safe_load(dedent(spec)) if spec.strip() else {}
    return {"apiVersion": "ryu-nsm.io/v1alpha1", "kind": "ServiceLevel",
            "metadata": {"name": "gold", **meta}, "spec": {"networkService": "chain", **body}}


def problems_of(doc: dict, path: str = "") -> list[tuple[str, str]]:
    level, problems = parse_service_level(doc, path, source="sla.yaml", index=3)
    assert (level is None) == bool(problems)
    assert all((p.source, p.index) == ("sla.yaml", 3) for p in problems)
    return [(p.path, p.message) for p in problems]


# -- quantities ---------------------------------------------------------------------------------


# The grammar of bandwidths, sizes and durations is tests/test_units.py; here what a ServiceLevel adds.


@pytest.mark.parametrize(("field", "value", "hint"), [
    ("guaranteedBandwidth", 1.5e6, "quote fractional values"), ("rateLimit", 2e6, "quote fractional values"),
    ("burst", 2.5, "quote fractional values"), ("maxLatency", 0.005, "quote fractional values"),
    ("maxLatency", "0ms", "more than zero"), ("maxLatency", 0, "more than zero"),
    ("maxLatency", "5", "needs a unit"), ("maxLatency", "5 min", "duration"), ("maxLoss", 0.01, "loss"),
])
def test_int_or_string_fields_and_positive_latency(field, value, hint):
    # Kubernetes takes integers or strings in these fields, so a YAML float is refused like the CRD does.
    extra = "" if field != "burst" else ", rateLimit: 10M"
    found = problems_of(level_doc(f"{{{field}: {json.dumps(value)}{extra}}}"))
    assert [path for path, _ in found] == [f"spec.{field}"]
    assert hint in found[0][1]


@pytest.mark.parametrize(("text", "fraction"), [
    ("0.5%", 0.005), ("0.005", 0.005), (0, 0.0), ("0%", 0.0), ("99.9%", 0.999), ("1e-4", 0.0001),
])
def test_losses_are_fractions(text, fraction):
    assert parse_loss(text) == pytest.approx(fraction, rel=1e-15)


def test_a_loss_of_one_or_more_hints_at_the_percent_sign():
    with pytest.raises(ValueError, match='for 5% write "5%"'):
        parse_loss(5)
    for bad in ("100%", "1", 0.01, "-1%", "half"):
        with pytest.raises(ValueError, match="loss"):
            parse_loss(bad)


def test_dscp_names_and_numbers():
    assert [parse_dscp(x) for x in ("EF", "ef", "AF41", "cs1", "LE", "DF", "BE", 0, 63)] == [
        46, 46, 34, 8, 1, 0, 0, 0, 63]
    assert DSCP_NAMES["AF11"] == 10 and DSCP_NAMES["AF43"] == 38 and DSCP_NAMES["CS7"] == 56
    for bad in (64, -1, "EF ", "AF44", "46", True):
        with pytest.raises(ValueError, match="DSCP"):
            parse_dscp(bad)
    assert (dscp_name(46), dscp_name(0), dscp_name(8), dscp_name(5)) == ("EF", "DF", "CS1", "5")


# -- the whole object ---------------------------------------------------------------------------


def test_every_field_parses():
    level, problems = parse_service_level(level_doc("""
        clientSelector: {matchLabels: {tier: gold, example.com/app: web}}
        guaranteedBandwidth: 100M
        rateLimit: 200M
        burst: 64Ki
        maxLatency: 5ms
        chainLatency: true
        maxLoss: "0.1%"
        dscp: EF
        priority: 700
        preemptible: true
        protection: disjoint
    """, namespace="prod"))
    assert problems == []
    assert level == ServiceLevel(
        name="gold", namespace="prod", network_service="chain",
        client_selector=FrozenMap({"tier": "gold", "example.com/app": "web"}),
        guaranteed_bandwidth=100_000_000, rate_limit=200_000_000, burst=65_536, max_latency=0.005,
        max_loss=0.001, dscp=46, priority=700, preemptible=True, protection="disjoint", chain_latency=True,
    )
    assert level.key == ("prod", "gold") and level.protected


def test_defaults():
    level, problems = parse_service_level(level_doc("dscp: CS1"))
    assert problems == []
    assert (level.namespace, level.client_selector, level.priority, level.preemptible, level.protection,
            level.chain_latency, level.guaranteed_bandwidth, level.max_latency) == (
        "default", FrozenMap(), 0, False, "none", False, None, None)


def test_nulls_mean_not_set():
    level, problems = parse_service_level(level_doc("""
        dscp: 10
        clientSelector: null
        guaranteedBandwidth: null
        priority: null
        preemptible: null
        protection: null
        chainLatency: null
    """))
    assert problems == [] and level.guaranteed_bandwidth is None and level.priority == 0


# (spec YAML, field path of the one problem, words the message must contain)
BROKEN = [
    ("guaranteedBandwidth: 10Mi", "spec.guaranteedBandwidth", 'line rates are decimal), found string "10Mi"'),
    ("guaranteedBandwidth: 10m", "spec.guaranteedBandwidth", "milli"),
    ("rateLimit: lots", "spec.rateLimit", 'expected a bandwidth in bit/s'),
    ("rateLimit: 500", "spec.rateLimit", "expected a rate from 1kbit/s"),
    (f"rateLimit: {MAX_RATE_LIMIT + 1000}", "spec.rateLimit", "OpenFlow meter"),
    ("{guaranteedBandwidth: 20M, rateLimit: 10M}", "spec.rateLimit",
     "expected at least spec.guaranteedBandwidth (20Mbit/s), found 10Mbit/s"),
    ("{burst: 64Ki, dscp: 1}", "spec.burst", "expected spec.rateLimit beside it"),
    ("{rateLimit: 1M, burst: 0}", "spec.burst", "more than zero"),
    ("maxLatency: '5'", "spec.maxLatency", 'expected a duration'),
    ("maxLatency: 0.005", "spec.maxLatency", "quote fractional values"),
    ("maxLoss: 5", "spec.maxLoss", 'for 5% write "5%"'),
    ("dscp: 64", "spec.dscp", "expected a DSCP value: an integer 0..63"),
    ("{dscp: 1, priority: 1001}", "spec.priority",
     "expected an integer 0..1000 (higher wins), found integer 1001"),
    ("{dscp: 1, priority: '5'}", "spec.priority", 'found string "5"'),
    ("{dscp: 1, preemptible: 'yes'}", "spec.preemptible", 'expected true or false, found string "yes"'),
    ("{dscp: 1, chainLatency: 1}", "spec.chainLatency", "expected true or false, found integer 1"),
    ("{dscp: 1, chainLatency: true}", "spec.chainLatency", "expected spec.maxLatency beside it"),
    ("{dscp: 1, preemptible: true}", "spec.preemptible", "expected spec.guaranteedBandwidth beside it"),
    ("protection: both", "spec.protection", 'expected one of none, disjoint, found string "both"'),
    ("{dscp: 1, guaranteedBandwith: 1M}", "spec.guaranteedBandwith",
     'found unknown field "guaranteedBandwith"'),
    ("{dscp: 1, clientSelector: {matchLabel: {a: b}}}", "spec.clientSelector.matchLabel",
     'expected one of the fields matchLabels'),
    ("{dscp: 1, clientSelector: {matchLabels: {a: 1}}}", 'spec.clientSelector.matchLabels["a"]',
     "quote numbers in YAML"),
    ("{dscp: 1, clientSelector: {matchLabels: {'-a': b}}}", 'spec.clientSelector.matchLabels["-a"]',
     "expected a label key"),
    ("{dscp: 1, clientSelector: [a]}", "spec.clientSelector",
     "expected a mapping, found a list of 1 item(s)"),
    ("{priority: 5}", "spec", "this ServiceLevel promises nothing"),
    ("{protection: none, preemptible: false}", "spec", "expected at least one of guaranteedBandwidth"),
]


@pytest.mark.parametrize(("spec", "path", "words"), BROKEN, ids=[b[0] for b in BROKEN])
def test_every_error_names_its_field(spec, path, words):
    found = problems_of(level_doc(spec))
    assert len(found) == 1, found
    assert found[0][0] == path
    assert words in found[0][1]


def test_required_network_service_and_names():
    doc = level_doc("dscp: 1")
    del doc["spec"]["networkService"]
    assert problems_of(doc) == [("spec.networkService",
                                 "expected the name of a NetworkService: the field is required")]
    doc = level_doc("{networkService: Chain, dscp: 1}")
    assert problems_of(doc)[0][0] == "spec.networkService"
    doc = level_doc("dscp: 1", namespace="Prod")
    doc["metadata"]["name"] = "Gold"
    assert [p for p, _ in problems_of(doc)] == ["metadata.name", "metadata.namespace"]


def test_wrong_kind_or_version_and_shapes():
    doc = level_doc("dscp: 1")
    doc["apiVersion"] = "ryu-nsm.io/v1"
    assert problems_of(doc) == [("apiVersion", 'expected ryu-nsm.io/v1alpha1, found string "ryu-nsm.io/v1"')]
    doc["apiVersion"], doc["spec"] = "ryu-nsm.io/v1alpha1", "fast"
    assert problems_of(doc) == [("spec", 'expected a mapping, found string "fast"')]
    assert problems_of(["not", "an", "object"], "items[2]") == [
        ("items[2]", "expected a ServiceLevel object (a mapping), found a list of 3 item(s)")]


def test_paths_carry_the_position_in_a_list_and_all_errors_are_reported():
    found = problems_of(level_doc("{guaranteedBandwidth: 1Mi, maxLatency: 1h, dscp: XX}"), "items[4]")
    assert [p for p, _ in found] == ["items[4].spec.guaranteedBandwidth", "items[4].spec.maxLatency",
                                     "items[4].spec.dscp"]
    found = problems_of(level_doc("{guaranteedBandwidth: 2M, rateLimit: 1M}"), "items[0]")
    assert found[0][1].startswith("expected at least items[0].spec.guaranteedBandwidth")


def test_describe_is_json_in_base_units_and_says_it_in_words():
    level, _ = parse_service_level(level_doc("""
        guaranteedBandwidth: 100M
        rateLimit: 200M
        burst: 64Ki
        maxLatency: 5ms
        chainLatency: true
        maxLoss: "0.5%"
        dscp: AF41
        priority: 3
        protection: disjoint
    """))
    described = json.loads(json.dumps(level.describe()))
    assert described["guaranteedBandwidth"] == 100_000_000 and described["burst"] == 65_536
    assert described["maxLatency"] == 0.005 and described["maxLoss"] == 0.005 and described["dscp"] == 34
    assert "clientSelector" not in described
    assert described["summary"] == ("100Mbit/s guaranteed, limited to 200Mbit/s (burst 64KiB), latency ≤ 5ms "
                                    "end to end, loss ≤ 0.5%, DSCP AF41, priority 3, protected")


# -- round trip: what to_document writes, the parser and the CRD read back ----------------------

NAMES = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)


@st.composite
def service_levels(draw) -> ServiceLevel:
    guaranteed = draw(st.none() | st.integers(1, 10**11))
    rate = draw(st.none() | st.integers(max(1000, guaranteed or 0), MAX_RATE_LIMIT))
    latency = draw(st.none() | st.floats(1e-9, 10.0, allow_nan=False))
    level = ServiceLevel(
        name=draw(NAMES), namespace=draw(NAMES), network_service=draw(NAMES),
        client_selector=FrozenMap(draw(st.dictionaries(NAMES, NAMES, max_size=3))),
        guaranteed_bandwidth=guaranteed, rate_limit=rate,
        burst=draw(st.integers(1, 2**40)) if rate is not None and draw(st.booleans()) else None,
        max_latency=latency, max_loss=draw(st.none() | st.floats(0, 0.999999, allow_nan=False)),
        dscp=draw(st.none() | st.integers(0, 63)), priority=draw(st.integers(0, 1000)),
        preemptible=guaranteed is not None and draw(st.booleans()),
        protection=draw(st.sampled_from(["none", "disjoint"])),
        chain_latency=latency is not None and draw(st.booleans()),
    )
    promises = (guaranteed, rate, latency, level.max_loss, level.dscp)
    if all(v is None for v in promises) and not level.protected:
        level = ServiceLevel(level.name, level.network_service, level.namespace,
                             dscp=draw(st.integers(0, 63)))
    return level


def crd_schema() -> dict:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


@settings(max_examples=200, deadline=None)
@given(service_levels())
def test_to_document_round_trips_and_fits_the_crd(level):
    doc = level.to_document()
    assert parse_service_level(json.loads(json.dumps(doc))) == (level, [])
    assert list(jsonschema.Draft4Validator(crd_schema()).iter_errors(doc)) == []


@pytest.mark.parametrize("value", [
    "100M", "1.5G", "10Mbit/s", "10 Mbps", "1e9", ".5M", 100, "100mbit", "10 bits", "2gbit", "10Mb/s",
])
def test_crd_bandwidth_pattern_takes_what_the_parser_takes(value):
    parse_bandwidth(value)
    doc = level_doc(f"guaranteedBandwidth: {json.dumps(value)}")
    assert list(jsonschema.Draft4Validator(crd_schema()).iter_errors(doc)) == []


@pytest.mark.parametrize(("field", "value"), [
    ("guaranteedBandwidth", "10 M B"), ("guaranteedBandwidth", "10m"), ("guaranteedBandwidth", "10MB/s"),
    ("maxLatency", "5"), ("maxLatency", "5 minutes"), ("burst", "1Ti"),
    ("maxLoss", "5 percent"), ("dscp", "AF44"), ("priority", 1001), ("protection", "both"),
])
def test_crd_refuses_what_the_parser_refuses(field, value):
    doc = level_doc(f"{{{field}: {json.dumps(value)}, dscp: 1}}" if field != "dscp" else f"dscp: {value}")
    assert problems_of(doc)
    assert list(jsonschema.Draft4Validator(crd_schema()).iter_errors(doc))


def test_crd_is_valid_structural_and_names_our_kind():
    crd = yaml.safe_load(CRD.read_text())
    for version in ("1.30", "1.37"):
        assert kubernetes_validate.validate(crd, version, strict=True) == version
    spec = crd["spec"]
    assert (spec["group"], spec["scope"], spec["names"]["kind"], spec["names"]["plural"]) == (
        "ryu-nsm.io", "Namespaced", "ServiceLevel", "servicelevels")
    assert crd["metadata"]["name"] == "servicelevels.ryu-nsm.io"
    schema = crd_schema()
    fields = set(schema["properties"]["spec"]["properties"])
    assert fields == {"networkService", "clientSelector", "guaranteedBandwidth", "rateLimit", "burst",
                      "maxLatency", "chainLatency", "maxLoss", "dscp", "priority", "preemptible",
                      "protection", "flowSampling"}
    for name, node in schema["properties"]["spec"]["properties"].items():
        assert "type" in node or node.get("x-kubernetes-int-or-string"), name
    (version,) = spec["versions"]
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["Service", "Guaranteed", "Latency", "Priority", "Age"]
    for name, path in columns.items():
        if name != "Age":
            assert path.removeprefix(".spec.") in fields, name


def test_the_example_parses_and_fits_the_crd():
    docs = list(yaml.safe_load_all(EXAMPLE.read_text()))
    levels = []
    for index, doc in enumerate(docs):
        level, problems = parse_service_level(doc, source=str(EXAMPLE), index=index)
        assert problems == []
        levels.append(level)
        assert list(jsonschema.Draft4Validator(crd_schema()).iter_errors(doc)) == []
    whole, dpi = levels
    assert whole.chain_latency and whole.protected and whole.max_latency == 0.005
    assert select(levels, "secure-internet", "default", {"app": "dpi"}) is dpi
    assert select(levels, "secure-internet", "default", {"app": "firewall"}) is whole


# -- selection ----------------------------------------------------------------------------------


def lvl(name: str, selector: dict | None = None, priority: int = 0, service: str = "chain",
        namespace: str = "default") -> ServiceLevel:
    return ServiceLevel(name, service, namespace, FrozenMap(selector or {}), dscp=0, priority=priority)


def test_select_prefers_the_most_specific_selector_then_priority_then_name():
    wide, narrow = lvl("wide", priority=900), lvl("narrow", {"tier": "gold"})
    narrower = lvl("narrower", {"tier": "gold", "app": "web"})
    levels = [wide, narrow, narrower]
    assert select(levels, "chain", "default", {"tier": "gold", "app": "web", "x": "y"}) is narrower
    assert select(levels, "chain", "default", {"tier": "gold"}) is narrow
    assert select(levels, "chain", "default", {"tier": "silver"}) is wide
    a, b, c = (lvl("b", {"k": "v"}, priority=5), lvl("a", {"k": "v"}, priority=1),
               lvl("c", {"k": "v"}, priority=5))
    assert select([a, b, c], "chain", "default", {"k": "v"}) is a
    assert select([c, a, b], "chain", "default", {"k": "v"}) is a
    assert select([b], "chain", "default", {"k": "w"}) is None


def test_select_keeps_to_the_service_and_namespace():
    levels = [lvl("other-service", service="other"), lvl("other-ns", namespace="prod")]
    assert select(levels, "chain", "default", {}) is None
    assert select(levels, "chain", "prod", {}).name == "other-ns"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(NAMES, st.dictionaries(st.sampled_from("abc"), st.sampled_from("xy"), max_size=3),
                          st.integers(0, 3)), max_size=6),
       st.dictionaries(st.sampled_from("abc"), st.sampled_from("xy")))
def test_select_is_the_best_applicable_whatever_the_order(specs, labels):
    levels = [lvl(name, selector, priority) for name, selector, priority in specs]
    chosen = select(levels, "chain", "default", labels)
    applicable = [x for x in levels if all(labels.get(k) == v for k, v in x.client_selector.items())]
    assert (chosen is None) == (not applicable)
    if chosen is not None:
        assert chosen in applicable

        def rank(level: ServiceLevel) -> tuple:
            return (-len(level.client_selector), -level.priority, level.name)

        assert all(rank(chosen) <= rank(other) for other in applicable)
        assert select(list(reversed(levels)), "chain", "default", labels).name == chosen.name
