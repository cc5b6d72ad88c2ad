"""deploy/ and the Dockerfile, checked offline: every manifest is valid for the Kubernetes versions we
support, the CRDs are structural, RBAC grants exactly what deploy/README.md explains, the controller's
and the forwarder's flags are ones their commands accept, the forwarder has the host paths and
capabilities it needs and no more, each Dockerfile target copies and installs every package, and the
kustomization renders into a consistent set."""

import copy
import fnmatch
import functools
import importlib.metadata
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from ryu_nsm.sources.topology import load_topology

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
# The oldest Kubernetes we support and the newest the pinned kubernetes-validate ships schemas for.
K8S_VERSIONS = ("1.30", "1.37")
NSM_OPTIONAL = "crds/nsm-optional.yaml"
POLICY_OPTIONAL = "crds/multinetworkpolicy-optional.yaml"  # the multi-networkpolicy project's CRD
SPIRE_IDS = "spire/clusterspiffeid.yaml"  # SPIRE's kind: applied after SPIRE, not by `apply -k`
SPIRE_SOCKET_DIR = "/run/spire/sockets"  # where NSM's Pods mount the SPIRE agent's socket
OUR_CRD = "crds/networkserviceconnections.yaml"
LEVEL_CRD = "crds/servicelevels.yaml"
FORWARDER = "forwarder.yaml"
FORWARDER_NAMESPACE = "ryu-nsm-forwarder"
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}

# Flags other work is adding to `ryu-nsm controller`: each stays an expected failure until it lands,
# and strict xfail then fails the run, so the mark is removed the day the flag exists.
# Every grant of the controller's ServiceAccount: (namespace or "*" for cluster-wide, apiGroup,
# resource, verb, resourceNames). Widening this is a decision: change deploy/README.md with it.
EXPECTED_GRANTS = {
    *{("*", "networkservicemesh.io", res, verb, ())
      for res in ("networkservices", "networkserviceendpoints") for verb in ("get", "list", "watch")},
    *{("*", "", res, verb, ()) for res in ("pods", "namespaces") for verb in ("get", "list", "watch")},
    *{("*", "ryu-nsm.io", "servicelevels", verb, ()) for verb in ("get", "list", "watch")},
    *{("*", "k8s.cni.cncf.io", "multi-networkpolicies", verb, ()) for verb in ("list", "watch")},
    *{("*", "ryu-nsm.io", "networkserviceconnections", verb, ())
      for verb in ("get", "list", "watch", "create", "update", "patch", "delete")},
    *{("*", "ryu-nsm.io", "networkserviceconnections/status", verb, ()) for verb in ("update", "patch")},
    *{("*", group, "events", verb, ()) for group in ("", "events.k8s.io") for verb in ("create", "patch")},
    *{("ryu-nsm", "coordination.k8s.io", "leases", verb, ()) for verb in ("get", "list", "create", "update")},
}


def load_docs(relpath: str) -> list[dict]:
    """The non-empty YAML documents of a file under deploy/."""
    return [doc for doc in yaml.safe_load_all((DEPLOY / relpath).read_text()) if doc is not None]


def manifest_files() -> list[str]:
    """Every YAML file under deploy/, relative to it."""
    return sorted(str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*.yaml"))


def kustomization() -> dict:
    """deploy/kustomization.yaml."""
    (doc,) = load_docs("kustomization.yaml")
    return doc


def render() -> list[dict]:
    """What `kubectl apply -k deploy/` sends: the listed resources' documents, in order."""
    return [doc for relpath in kustomization()["resources"] for doc in load_docs(relpath)]


def k8s_objects() -> list[tuple[str, dict]]:
    """(file, object) for every Kubernetes object shipped, the optional NSM CRDs included (SPIRE's
    ClusterSPIFFEID is not a Kubernetes kind: its own tests check it)."""
    return [(relpath, doc) for relpath in manifest_files() if relpath not in ("kustomization.yaml", SPIRE_IDS)
            for doc in load_docs(relpath)]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    """The single object of a kind (and name) among docs."""
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def controller_container() -> dict:
    """The controller Deployment's only container."""
    deployment = one(render(), "Deployment", "ryu-nsm-controller")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def controller_argv() -> list[str]:
    """The controller container's command line: command then args."""
    container = controller_container()
    return [*container.get("command", []), *container.get("args", [])]


def flag_value(argv: list[str], flag: str) -> str:
    """The word after a flag on a command line."""
    return argv[argv.index(flag) + 1]


def port_of(address: str) -> int:
    """The port of a host:port address."""
    return int(address.rsplit(":", 1)[1])


@functools.cache
def controller_options() -> dict[str, bool]:
    """Options `ryu-nsm controller --help` lists, each with whether it takes a value."""
    script = Path(sys.executable).with_name("ryu-nsm")
    assert script.is_file(), f"the ryu-nsm console script (the image's entrypoint) is not installed: {script}"
    out = subprocess.run([str(script), "controller", "--help"], capture_output=True, text=True, timeout=60,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    options = {}
    # argparse lists each option as "  [-x, ]--name[ METAVAR]" and then at least two spaces or a newline.
    for match in re.finditer(r"^  (?:-\w, )?(--[a-z0-9][a-z0-9-]*)( \S+)?", out.stdout, re.M):
        options[match.group(1)] = match.group(2) is not None
    assert "--help" in options and "--topology" in options, out.stdout
    return options


# --- every manifest parses and validates ------------------------------------------------------------

def test_every_manifest_parses_into_named_objects():
    for relpath, doc in k8s_objects():
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), relpath
        assert doc["metadata"].get("name"), relpath


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("relpath", "obj"), [
    pytest.param(relpath, obj, id=f"{relpath}:{obj['kind']}/{obj['metadata']['name']}")
    for relpath, obj in k8s_objects()
])
def test_manifest_is_valid_for_kubernetes_strictly(relpath, obj, version):
    # Strict: unknown fields (a misspelt key) are errors, as the API server's field validation makes them.
    assert kubernetes_validate.validate(obj, version, strict=True) == version


def test_strict_validation_rejects_a_misspelt_field():
    deployment = copy.deepcopy(one(render(), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


# --- CRDs ---------------------------------------------------------------------------------------------

def untyped(schema: dict, where: str = "") -> list[str]:
    """Paths of schema nodes that are not structural: no type, or a type at odds with what they hold."""
    if schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("x-kubernetes-int-or-string"):
        return []
    problems = [] if "type" in schema else [where or "<root>"]
    if "properties" in schema and schema.get("type") != "object":
        problems.append(f"{where}: properties on a non-object")
    if "items" in schema and schema.get("type") != "array":
        problems.append(f"{where}: items on a non-array")
    for name, sub in schema.get("properties", {}).items():
        problems += untyped(sub, f"{where}.{name}")
    if "items" in schema:
        problems += untyped(schema["items"], f"{where}[]")
    return problems


def schema_at(schema: dict, json_path: str) -> dict:
    """The schema node a printer column's JSON path points at (an index or a filter picks an item);
    KeyError if it points nowhere."""
    node = schema
    for part in re.findall(r"\.([A-Za-z0-9_]+)|\[(\d+|\?\([^)]*\))\]", json_path):
        node = node["properties"][part[0]] if part[0] else node["items"]
    return node


def our_crd() -> dict:
    """The NetworkServiceConnection CRD."""
    return one(load_docs(OUR_CRD), "CustomResourceDefinition", "networkserviceconnections.ryu-nsm.io")


def our_schema() -> dict:
    """The openAPIV3Schema of our CRD's only version."""
    (version,) = our_crd()["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def test_our_crd_names_scope_and_version():
    spec = our_crd()["spec"]
    assert spec["group"] == "ryu-nsm.io" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "NetworkServiceConnection"
    assert spec["names"]["plural"] == "networkserviceconnections"
    assert spec["names"]["shortNames"] == ["nsconn"]
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_our_crd_schema_is_structural_and_fully_typed():
    assert untyped(our_schema()) == []
    # Ours is closed everywhere: pruning drops what the schema does not name.
    assert "x-kubernetes-preserve-unknown-fields" not in json.dumps(our_schema())
    # metadata may only be typed in a structural schema; the API server owns its fields.
    assert our_schema()["properties"]["metadata"] == {"type": "object"}


def test_our_crd_spec_and_status_have_the_agreed_fields():
    props = our_schema()["properties"]
    spec, status = props["spec"], props["status"]
    assert set(spec["properties"]) == {"client", "networkService"}
    assert set(spec["properties"]["client"]["properties"]) == {"pod", "ifname"}
    assert set(status["properties"]) == {
        "observedGeneration", "state", "reason", "message", "chain", "hops", "path", "conditions",
        "serviceLevel", "backupPath", "chainLatency", "policy"}
    assert set(status["properties"]["serviceLevel"]["properties"]) == {"name", "summary"}
    assert set(status["properties"]["policy"]["properties"]) == {"policies", "governedBy"}
    assert set(status["properties"]["chainLatency"]["properties"]) == {
        "plannedSeconds", "boundSeconds", "connections"}
    assert status["properties"]["state"]["enum"] == ["Up", "Pending", "Failed"]
    hop = status["properties"]["hops"]["items"]["properties"]
    assert set(hop) == {"connection", "client", "endpoint", "endpointAttachment", "clientAttachment",
                        "path", "state", "reason", "programmedBy"}
    assert hop["state"]["enum"] == ["Up", "Pending", "Failed"]
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert set(item["properties"]) == {
        "type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"}
    # A list-map key must always be present, or the API server refuses the CRD.
    assert set(conditions["x-kubernetes-list-map-keys"]) <= set(item["required"])
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]


def test_our_crd_printer_columns_point_into_the_schema():
    (version,) = our_crd()["spec"]["versions"]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["Service", "Endpoint", "Path", "State", "Reason", "SLA", "Age"]
    assert columns["Path"]["jsonPath"] == ".status.path"
    assert columns["Age"] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    assert {name: c.get("priority", 0) for name, c in columns.items()} == {
        "Service": 0, "Endpoint": 0, "Path": 0, "State": 0, "Reason": 1, "SLA": 1, "Age": 0}
    for name, column in columns.items():
        if name != "Age":
            assert "type" in schema_at(our_schema(), column["jsonPath"]), name


LOST_POD = """
apiVersion: v1
kind: Pod
metadata:
  name: intruder
  annotations:
    networkservicemesh.io: kernel://no-such-service/nsm-1
    ryu-nsm.io/attachments: nsm-1=s1/s1-intruder
"""


def written_connections(tmp_path: Path) -> list[dict]:
    """The NetworkServiceConnections the status writer makes of a real controller's status: the demo
    chain (pending, no switch is connected) and a Pod asking for a service that does not exist."""
    from ryu_nsm.core.controller import Controller
    from ryu_nsm.k8s.connection_status import desired_connections
    from ryu_nsm.observe.report import status_json
    from ryu_nsm.sources.files import load_paths

    (tmp_path / "lost.yaml").write_text(LOST_POD)
    controller = Controller(load_topology(ROOT / "topologies" / "demo-chain.yaml"))
    controller.set_resources(load_paths([str(ROOT / "examples" / "demo-chain"), str(tmp_path)]), 0.0)
    return list(desired_connections(status_json(controller.status()), "2026-01-01T00:00:00Z").values())


def schema_errors(obj: dict) -> list[str]:
    """What our CRD's schema finds wrong with an object (OpenAPI v3 schemas are draft-4 JSON Schema)."""
    validator = jsonschema.Draft4Validator(our_schema())
    return [e.message for e in validator.iter_errors(obj)]


def undeclared(value: object, schema: dict, where: str = "") -> list[str]:
    """Paths of fields the schema does not name: the API server would prune them, silently."""
    paths = []
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in value.items():
            if key in schema["properties"]:
                paths += undeclared(sub, schema["properties"][key], f"{where}.{key}")
            else:
                paths.append(f"{where}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            paths += undeclared(item, schema["items"], f"{where}[{i}]")
    return paths


def test_our_schema_keeps_everything_the_status_writer_writes(tmp_path):
    written = written_connections(tmp_path)
    assert {o["status"]["state"] for o in written} == {"Pending", "Failed"}
    for obj in written:
        assert schema_errors(obj) == [], obj["metadata"]["name"]
        assert undeclared({k: v for k, v in obj.items() if k != "metadata"}, our_schema()) == []


def test_our_schema_refuses_broken_connections(tmp_path):
    client = next(o for o in written_connections(tmp_path) if o["metadata"]["name"] == "client-nsm-1")
    breakages = {
        "lower-case state": lambda o: o["status"].update(state="pending"),
        "condition status not a boolean word": lambda o: o["status"]["conditions"][0].update(status="yes"),
        "condition without type": lambda o: o["status"]["conditions"][0].pop("type"),
        "reason with a space": lambda o: o["status"]["conditions"][0].update(reason="no endpoint"),
        "path of numbers": lambda o: o["status"].update(path=[1, 2]),
        "spec without client pod": lambda o: o["spec"]["client"].pop("pod"),
        "negative generation": lambda o: o["status"].update(observedGeneration=-1),
    }
    for what, breakage in breakages.items():
        broken = copy.deepcopy(client)
        breakage(broken)
        assert schema_errors(broken), what


@pytest.mark.parametrize(("name", "kind", "plural", "short"), [
    ("networkservices.networkservicemesh.io", "NetworkService", "networkservices", "netsvc"),
    ("networkserviceendpoints.networkservicemesh.io", "NetworkServiceEndpoint", "networkserviceendpoints",
     "nse"),
])
def test_nsm_optional_crds_are_nsm_shaped_without_status(name, kind, plural, short):
    spec = one(load_docs(NSM_OPTIONAL), "CustomResourceDefinition", name)["spec"]
    assert spec["group"] == "networkservicemesh.io" and spec["scope"] == "Namespaced"
    names = spec["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (kind, plural, [short])
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1", True, True)
    # NSM's kinds have no status subresource: nobody, ryu-nsm least of all, writes status there.
    assert "subresources" not in version
    schema = version["schema"]["openAPIV3Schema"]
    assert schema["type"] == "object"
    assert schema["properties"]["spec"] == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    assert untyped(schema) == []


def test_nsm_optional_file_says_it_is_only_for_clusters_without_nsm():
    header = (DEPLOY / NSM_OPTIONAL).read_text().split("apiVersion:", 1)[0]
    assert "ONLY for clusters WITHOUT" in header
    readme = (DEPLOY / "README.md").read_text()
    assert "crds/nsm-optional.yaml" in readme and "only for clusters without NSM" in readme


def policy_schema() -> dict:
    """The openAPIV3Schema of the MultiNetworkPolicy CRD's only version."""
    crd = one(load_docs(POLICY_OPTIONAL), "CustomResourceDefinition", "multi-networkpolicies.k8s.cni.cncf.io")
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def test_policy_crd_is_upstreams_names_and_served_version():
    spec = one(load_docs(POLICY_OPTIONAL), "CustomResourceDefinition")["spec"]
    assert spec["group"] == "k8s.cni.cncf.io" and spec["scope"] == "Namespaced"
    names = spec["names"]
    assert (names["kind"], names["plural"], names["singular"], names["shortNames"]) == (
        "MultiNetworkPolicy", "multi-networkpolicies", "multi-networkpolicy", ["multi-policy"])
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1beta1", True, True)
    assert "subresources" not in version  # nobody writes a policy's status
    schema = policy_schema()
    assert untyped(schema) == [] and "x-kubernetes-preserve-unknown-fields" not in json.dumps(schema)
    assert schema["properties"]["spec"]["required"] == ["podSelector"]


POLICY_WITH_EVERY_FIELD = """
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata:
  name: every-field
  namespace: a
  annotations: {k8s.v1.cni.cncf.io/policy-for: net}
spec:
  podSelector:
    matchLabels: {app: gw}
    matchExpressions: [{key: tier, operator: In, values: [web]}, {key: debug, operator: DoesNotExist}]
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - {podSelector: {matchLabels: {app: client}}, namespaceSelector: {matchLabels: {team: x}}}
    - ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24]}
    ports: [{protocol: UDP, port: 53}, {port: http}, {protocol: SCTP, port: 80, endPort: 90}]
  egress:
  - to: [{namespaceSelector: {}}]
    ports: [{port: 443}]
"""


def test_policy_schema_keeps_every_field_ryu_nsm_reads():
    from ryu_nsm.core.validation import Check
    from ryu_nsm.sources.policy_documents import validate_policy

    body = yaml.safe_load(POLICY_WITH_EVERY_FIELD)
    check = Check()
    assert validate_policy(check, body, "") is not None and check.errors == []
    assert [e.message for e in jsonschema.Draft4Validator(policy_schema()).iter_errors(body)] == []
    # Pruning would drop silently what the schema does not name (endPort, in upstream's v1beta1).
    assert undeclared({"spec": body["spec"]}, policy_schema()) == []
    no_selector = {**body, "spec": {k: v for k, v in body["spec"].items() if k != "podSelector"}}
    assert list(jsonschema.Draft4Validator(policy_schema()).iter_errors(no_selector))


def test_policy_crd_says_it_is_only_for_clusters_without_the_upstream_project():
    header = (DEPLOY / POLICY_OPTIONAL).read_text().split("apiVersion:", 1)[0]
    assert "ONLY for clusters WITHOUT" in header and "k8snetworkplumbingwg/multi-networkpolicy" in header
    readme = (DEPLOY / "README.md").read_text()
    assert POLICY_OPTIONAL in readme and "only for clusters without the multi-networkpolicy project" in readme


# --- RBAC ---------------------------------------------------------------------------------------------

def rbac_docs() -> list[dict]:
    """The objects of deploy/rbac.yaml."""
    return load_docs("rbac.yaml")


def granted() -> set[tuple]:
    """Every (namespace or "*", apiGroup, resource, verb, resourceNames) the Roles grant."""
    grants = set()
    for role in rbac_docs():
        if role["kind"] not in ("ClusterRole", "Role"):
            continue
        scope = "*" if role["kind"] == "ClusterRole" else role["metadata"]["namespace"]
        assert "aggregationRule" not in role
        for rule in role["rules"]:
            assert "nonResourceURLs" not in rule
            names = tuple(sorted(rule.get("resourceNames", ())))
            grants |= {(scope, group, res, verb, names)
                       for group in rule["apiGroups"] for res in rule["resources"] for verb in rule["verbs"]}
    return grants


def test_rbac_grants_exactly_the_expected_table():
    assert granted() == EXPECTED_GRANTS


def test_rbac_has_no_wildcards():
    for scope, group, resource, verb, names in granted():
        assert "*" not in (group, resource, verb, *names), (scope, group, resource, verb)


def test_rbac_roles_are_bound_to_the_controller_service_account_only():
    docs = rbac_docs()
    account = one(docs, "ServiceAccount", "ryu-nsm")
    assert account["metadata"]["namespace"] == "ryu-nsm"
    roles = {(d["kind"], d["metadata"]["name"]) for d in docs if d["kind"] in ("ClusterRole", "Role")}
    bindings = [d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    assert {(b["roleRef"]["kind"], b["roleRef"]["name"]) for b in bindings} == roles
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ryu-nsm", "namespace": "ryu-nsm"}]
        if binding["kind"] == "RoleBinding":
            role = one(docs, "Role", binding["roleRef"]["name"])
            assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]


def allows(verb: str, namespace: str, name: str) -> bool:
    """Whether the Roles let the controller ``verb`` the Lease ``namespace/name`` (RBAC's rule:
    a rule with resourceNames matches only those names)."""
    return any(scope in ("*", namespace) and group == "coordination.k8s.io" and resource == "leases"
               and v == verb and (not names or name in names)
               for scope, group, resource, v, names in granted())


@pytest.mark.parametrize("shards", [1, 2, 6])
def test_lease_role_allows_every_lease_the_controller_uses(shards):
    from ryu_nsm.k8s.leader import LeaderElector
    from ryu_nsm.k8s.shards import ShardElection, lease_names

    argv = controller_argv()
    namespace, base = flag_value(argv, "--lease-namespace"), flag_value(argv, "--lease-name")
    assert one(rbac_docs(), "Role")["metadata"]["namespace"] == namespace
    if shards == 1:
        names = [base]
    else:  # the names the election itself builds, for replicas named like a Deployment's Pods
        names = []
        for pod in ("ryu-nsm-controller-7d9f8-abcde", "ryu-nsm-controller-7d9f8-fghij"):
            election = ShardElection(shards, pod, lambda **kw: LeaderElector(None, namespace, **kw),
                                     base, 1.0, lambda *a: None, lambda *a: None)
            names += [e.name for e in (*election.electors, election.member)]
        assert sorted(set(names)) == sorted(lease_names(base, shards, (
            "ryu-nsm-controller-7d9f8-abcde", "ryu-nsm-controller-7d9f8-fghij")))
    for name in names:
        for verb in ("get", "create", "update"):  # LeaderElector: read, create the first time, renew
            assert allows(verb, namespace, name), (verb, name)
    assert allows("list", namespace, ""), "replicas list the member Leases"
    assert not allows("delete", namespace, base)


def test_every_kind_the_source_watches_may_be_listed_and_watched_and_nothing_more_for_policies():
    from ryu_nsm.sources.kubernetes import KINDS, MULTI_NETWORK_POLICY

    grants = granted()
    for kind in KINDS:
        for verb in ("list", "watch"):
            assert ("*", kind.group, kind.plural, verb, ()) in grants, (kind.kind, verb)
    # The policies' grant is used by the source alone, which never gets, let alone writes, one.
    assert {g[3] for g in grants if g[2] == MULTI_NETWORK_POLICY.plural} == {"list", "watch"}


def test_readme_explains_every_granted_resource():
    readme = (DEPLOY / "README.md").read_text()
    for _, group, resource, _, _ in granted():
        assert f"`{resource}`" in readme, resource
        assert f"`{group}`" in readme or (group == "" and '`""` (core)' in readme), group


# --- the controller Deployment and its Service --------------------------------------------------------

def flag_cases() -> list:
    """One test case per flag of the controller's command."""
    return [pytest.param(flag, id=flag) for flag in controller_argv() if flag.startswith("--")]


def test_controller_runs_ryu_nsm_controller():
    assert controller_argv()[:2] == ["ryu-nsm", "controller"]


@pytest.mark.parametrize("flag", flag_cases())
def test_controller_flag_is_accepted_by_the_cli(flag):
    options = controller_options()
    assert flag in options, f"{flag} is not an option of `ryu-nsm controller` ({sorted(options)})"
    argv = controller_argv()
    following = argv[argv.index(flag) + 1] if argv.index(flag) + 1 < len(argv) else None
    gives_value = following is not None and not following.startswith("--")
    assert gives_value == options[flag], f"{flag}: takes a value: {options[flag]}, given one: {gives_value}"


def test_controller_command_fits_its_pod():
    deployment = one(render(), "Deployment", "ryu-nsm-controller")
    pod = deployment["spec"]["template"]["spec"]
    container = controller_container()
    argv = controller_argv()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port_of(flag_value(argv, "--listen")) == ports["openflow"] == 6653
    assert port_of(flag_value(argv, "--status-listen")) == ports["status"] == 8181
    assert port_of(flag_value(argv, "--metrics-listen")) == ports["metrics"] == 9181
    # The leader identity is the pod's own name, from the Downward API.
    assert flag_value(argv, "--identity") == "$(POD_NAME)"
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # --topology is a key of the mounted ConfigMap.
    topology = Path(flag_value(argv, "--topology"))
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[str(topology.parent)])
    assert volume["configMap"]["name"] == "ryu-nsm-config"
    assert {i["key"]: i["path"] for i in volume["configMap"]["items"]}["topology.yaml"] == topology.name
    for probe in ("readinessProbe", "livenessProbe"):
        check = container[probe]["httpGet"]
        # The status listener speaks HTTPS (the controller has an identity); /healthz needs no certificate.
        assert check["path"] == "/healthz" and ports[check["port"]] == 8181, probe
        assert check["scheme"] == "HTTPS", probe


def test_controller_replicas_image_and_account():
    deployment = one(render(), "Deployment", "ryu-nsm-controller")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert deployment["spec"]["replicas"] == 2
    assert controller_container()["image"] == f"ryu-nsm:{version}" == "ryu-nsm:0.1.0"
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "ryu-nsm"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_controller_runs_without_privileges():
    deployment = one(render(), "Deployment", "ryu-nsm-controller")
    pod = deployment["spec"]["template"]["spec"]
    container = controller_container()
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and pod["securityContext"]["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security.get("privileged", False) is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    assert pod["securityContext"]["runAsUser"] == dockerfile_user() != 0
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][kind].keys(), kind


def test_openflow_service_reaches_the_controller_pods():
    docs = render()
    service = one(docs, "Service", "ryu-nsm-openflow")
    deployment = one(docs, "Deployment", "ryu-nsm-controller")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    names = {p["name"]: p["containerPort"] for p in controller_container()["ports"]}
    assert port["port"] == 6653 and names[port["targetPort"]] == 6653
    # Headless: its name resolves to every replica, so switches can list all of them as controllers.
    assert service["spec"]["clusterIP"] == "None"


def test_configmap_topology_is_the_demo_chain_fabric(tmp_path):
    config = one(render(), "ConfigMap", "ryu-nsm-config")
    text = config["data"]["topology.yaml"]
    assert yaml.safe_load(text) == yaml.safe_load((ROOT / "topologies" / "demo-chain.yaml").read_text())
    (tmp_path / "topology.yaml").write_text(text)
    fabric = load_topology(tmp_path / "topology.yaml")
    assert fabric.name == "demo-chain"


# --- the forwarder DaemonSet -------------------------------------------------------------------------

# Every host path the forwarder mounts: what for.
FORWARDER_HOST_PATHS = {
    "/var/run/openvswitch": "OVSDB's socket",
    "/var/run/netns": "named network namespaces",
    "/var/lib/networkservicemesh": "NSM's node-local sockets",
    SPIRE_SOCKET_DIR: "the SPIRE agent's Workload API socket",
}
FORWARDER_CAPABILITIES = {"NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"}


def forwarder_pod() -> dict:
    """The forwarder DaemonSet's Pod spec."""
    return one(render(), "DaemonSet", "ryu-nsm-forwarder")["spec"]["template"]["spec"]


def forwarder_container() -> dict:
    """The forwarder's only container."""
    (container,) = forwarder_pod()["containers"]
    return container


def forwarder_mounts() -> dict[str, str]:
    """Where each host path is mounted in the forwarder's container: {host path: mount path}."""
    volumes = {v["name"]: v for v in forwarder_pod()["volumes"]}
    mounts = forwarder_container()["volumeMounts"]
    return {volumes[m["name"]]["hostPath"]["path"]: m["mountPath"] for m in mounts}


def forwarder_args() -> dict:
    """The forwarder's command line as `ovs-forwarder` parses it, $(VAR) from the container's env."""
    from ovs_forwarder.cli import parser

    container = forwarder_container()
    assert container["command"] == ["ovs-forwarder"]
    env = {e["name"]: e for e in container["env"]}
    args = [re.sub(r"\$\((\w+)\)", lambda m: f"<{m.group(1)}>" if m.group(1) in env else m.group(0), arg)
            for arg in container["args"]]
    assert not any("$(" in arg for arg in args), "an argument names a variable the container does not set"
    return vars(parser().parse_args(args))


def test_forwarder_lives_alone_in_its_privileged_namespace():
    docs = load_docs(FORWARDER)
    assert [(d["kind"], d["metadata"].get("namespace")) for d in docs] == [
        ("Namespace", None), ("DaemonSet", FORWARDER_NAMESPACE)]
    assert docs[0]["metadata"]["name"] == FORWARDER_NAMESPACE
    assert docs[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    # The controller's namespace keeps refusing anything privileged.
    (namespace,) = load_docs("namespace.yaml")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_forwarder_command_is_accepted_by_its_cli():
    args = forwarder_args()
    assert args["name"] == "<NODE_NAME>" and args["bridge"]
    env = {e["name"]: e for e in forwarder_container()["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_forwarder_image_and_selector():
    daemonset = one(render(), "DaemonSet", "ryu-nsm-forwarder")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert forwarder_container()["image"] == f"ryu-nsm-forwarder:{version}"
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert forwarder_pod()["nodeSelector"] == {"ryu-nsm.io/forwarder": "true"}


def test_forwarder_reaches_ovsdb_namespaces_and_nsm_through_host_paths():
    from ovs_forwarder.kernel_request import NETNS_RUN_DIR
    from ovs_forwarder.ovsdb import DEFAULT_REMOTE

    args = forwarder_args()
    mounts = forwarder_mounts()
    assert mounts.keys() == FORWARDER_HOST_PATHS.keys()
    # Each at its host path, so the addresses mean the same inside and out.
    assert all(host == inside for host, inside in mounts.items())
    assert args["ovsdb"] == DEFAULT_REMOTE
    assert str(Path(args["ovsdb"].removeprefix("unix:")).parent) in mounts
    assert NETNS_RUN_DIR in mounts
    (listen,) = args["listen"]
    socket_path = Path(listen.removeprefix("unix://"))
    assert listen.startswith("unix:///") and str(socket_path.parent) == "/var/lib/networkservicemesh"
    volumes = {v["name"]: v["hostPath"] for v in forwarder_pod()["volumes"]}
    netns_mount = next(m for m in forwarder_container()["volumeMounts"] if m["mountPath"] == NETNS_RUN_DIR)
    # Namespaces named after the Pod started are bind mounts that must propagate into it.
    assert netns_mount["mountPropagation"] == "HostToContainer"
    assert volumes[netns_mount["name"]]["type"] == "DirectoryOrCreate"


def test_forwarder_has_the_privileges_it_needs_and_no_more():
    pod = forwarder_pod()
    container = forwarder_container()
    security = container["securityContext"]
    assert security["capabilities"]["drop"] == ["ALL"]
    assert set(security["capabilities"]["add"]) == FORWARDER_CAPABILITIES
    assert security["privileged"] is False and security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    # Root, as the image says, so that the added capabilities take effect.
    assert security["runAsUser"] == target_user("forwarder") == 0
    # The host's network (the veth's host end meets ovs-vswitchd) and PIDs (/proc/<pid>/ns/net); no IPC.
    assert pod["hostNetwork"] is True and pod["hostPID"] is True and not pod.get("hostIPC")
    for mount in container["volumeMounts"]:
        assert mount.get("readOnly", False) == (mount["mountPath"] != "/var/lib/networkservicemesh"), mount
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][kind].keys(), kind
    # Each capability is explained where it is granted and in deploy/README.md.
    manifest = (DEPLOY / FORWARDER).read_text()
    readme = (DEPLOY / "README.md").read_text()
    for capability in FORWARDER_CAPABILITIES:
        assert f"# {capability}: " in manifest and f"`{capability}`" in readme, capability


def test_forwarder_reads_no_api():
    pod = forwarder_pod()
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod
    assert not any(d["kind"] in ("ServiceAccount", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")
                   for d in load_docs(FORWARDER))


# --- SPIFFE identities (deploy/README.md, "Identities") ---------------------------------------------

def spiffe_ids() -> dict:
    """deploy/spire/clusterspiffeid.yaml's only object."""
    (doc,) = load_docs(SPIRE_IDS)
    return doc


def spiffe_id_of_pod(namespace: str, pod: dict, trust_domain: str = "example.org") -> str:
    """The SPIFFE ID the ClusterSPIFFEID's template gives a Pod (the fields it uses, filled in)."""
    fields = {".TrustDomain": trust_domain, ".PodMeta.Namespace": namespace,
              ".PodSpec.ServiceAccountName": pod.get("serviceAccountName", "default")}
    template = spiffe_ids()["spec"]["spiffeIDTemplate"]
    filled = re.sub(r"\{\{\s*(\.[\w.]+)\s*\}\}", lambda m: fields[m.group(1)], template)
    assert "{{" not in filled, template
    return filled


def controller_pod() -> dict:
    return one(render(), "Deployment", "ryu-nsm-controller")["spec"]["template"]


def test_controller_gets_its_svid_from_the_spire_agent_through_the_csi_driver():
    argv = controller_argv()
    socket = flag_value(argv, "--spiffe-socket")
    assert socket.startswith("unix:///")
    assert str(Path(socket.removeprefix("unix://")).parent) == SPIRE_SOCKET_DIR
    volumes = {v["name"]: v for v in controller_pod()["spec"]["volumes"]}
    (mount,) = [m for m in controller_container()["volumeMounts"] if m["mountPath"] == SPIRE_SOCKET_DIR]
    assert mount["readOnly"] is True
    # The namespace is Pod Security `restricted`: a CSI volume, never a hostPath.
    assert volumes[mount["name"]]["csi"] == {"driver": "csi.spiffe.io", "readOnly": True}
    assert not any("hostPath" in v for v in volumes.values())


def test_controller_speaks_tls_on_openflow_and_status_and_leaves_metrics_plain():
    argv = controller_argv()
    # Open vSwitch's own target syntax; the integrator checks the parser once `--listen ssl:` lands.
    assert flag_value(argv, "--listen").startswith("ssl:")
    annotations = controller_pod()["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port_of(flag_value(argv, "--metrics-listen")))
    # Only the controller's own identity reads the status (an operator through `kubectl exec`).
    allowed = [argv[i + 1] for i, word in enumerate(argv) if word == "--status-allow"]
    assert allowed == [spiffe_id_of_pod("ryu-nsm", controller_pod()["spec"])]


def test_forwarder_mounts_the_spire_agent_socket_as_nsm_does():
    socket_env = {e["name"]: e.get("value") for e in forwarder_container()["env"]}["SPIFFE_ENDPOINT_SOCKET"]
    assert socket_env == flag_value(controller_argv(), "--spiffe-socket")
    volumes = {v["name"]: v for v in forwarder_pod()["volumes"]}
    (mount,) = [m for m in forwarder_container()["volumeMounts"] if m["mountPath"] == SPIRE_SOCKET_DIR]
    assert volumes[mount["name"]]["hostPath"] == {"path": SPIRE_SOCKET_DIR, "type": "Directory"}


def test_forwarder_is_given_the_workload_api():
    from ovs_forwarder.cli import parser
    from ryu_nsm.trust.options import ENDPOINT_SOCKET_VARIABLE

    # The forwarder reads the Workload API's address from the variable SPIFFE tools read, when no
    # --spiffe-socket is given; the DaemonSet sets it to the agent socket it mounts.
    assert "--spiffe-socket" in parser()._option_string_actions
    env = {e["name"]: e.get("value") for e in forwarder_container().get("env", [])}
    assert env[ENDPOINT_SOCKET_VARIABLE] == f"unix://{SPIRE_SOCKET_DIR}/agent.sock"


def test_clusterspiffeid_names_both_pods_by_service_account():
    ids = spiffe_ids()
    assert (ids["apiVersion"], ids["kind"]) == ("spire.spiffe.io/v1alpha1", "ClusterSPIFFEID")
    spec = ids["spec"]
    (selector,) = spec["namespaceSelector"]["matchExpressions"]
    assert (selector["key"], selector["operator"]) == ("kubernetes.io/metadata.name", "In")
    assert set(selector["values"]) == {"ryu-nsm", FORWARDER_NAMESPACE}
    for pod in (controller_pod(), one(render(), "DaemonSet")["spec"]["template"]):
        assert spec["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        # NSM's own ClusterSPIFFEID selects this label: a second SVID would make the default one a guess.
        assert "spiffe.io/spiffe-id" not in pod["metadata"]["labels"]
    assert spiffe_id_of_pod("ryu-nsm", controller_pod()["spec"]) == "spiffe://example.org/ns/ryu-nsm/sa/ryu-nsm"
    assert spiffe_id_of_pod(FORWARDER_NAMESPACE, forwarder_pod()) == \
        "spiffe://example.org/ns/ryu-nsm-forwarder/sa/default"
    readme = (DEPLOY / "README.md").read_text()
    assert SPIRE_IDS in readme and "spire-server entry create" in readme


# --- dry-run render -----------------------------------------------------------------------------------

def test_kustomization_lists_every_manifest_but_nsms_own():
    listed = kustomization()["resources"]
    assert len(listed) == len(set(listed))
    assert all((DEPLOY / relpath).is_file() for relpath in listed)
    assert set(manifest_files()) == {*listed, "kustomization.yaml", NSM_OPTIONAL, POLICY_OPTIONAL, SPIRE_IDS}


def test_render_is_a_consistent_set():
    docs = render()
    keys = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(keys) == len(set(keys)), "an object is defined twice"
    forwarder = {(d["kind"], d["metadata"]["name"]) for d in load_docs(FORWARDER)}
    for kind, ns, name in keys:
        expected = "ryu-nsm" if (kind, name) not in forwarder else FORWARDER_NAMESPACE
        assert ns == (None if kind in CLUSTER_SCOPED else expected), (kind, name)
    index = set(keys)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert ("ServiceAccount", "ryu-nsm", pod["serviceAccountName"]) in index
    for volume in pod["volumes"]:
        if "configMap" in volume:
            config = one(docs, "ConfigMap", volume["configMap"]["name"])
            assert {i["key"] for i in volume["configMap"]["items"]} <= config["data"].keys()
    for binding in (d for d in docs if d["kind"].endswith("RoleBinding")):
        ref_ns = None if binding["roleRef"]["kind"] == "ClusterRole" else binding["metadata"]["namespace"]
        assert (binding["roleRef"]["kind"], ref_ns, binding["roleRef"]["name"]) in index
        for subject in binding["subjects"]:
            assert (subject["kind"], subject["namespace"], subject["name"]) in index


def test_rbac_names_resources_the_crds_define():
    crds = [d for relpath in (OUR_CRD, LEVEL_CRD, NSM_OPTIONAL, POLICY_OPTIONAL) for d in load_docs(relpath)]
    defined = {(c["spec"]["group"], c["spec"]["names"]["plural"]) for c in crds}
    with_status = {(c["spec"]["group"], c["spec"]["names"]["plural"]) for c in crds
                   if any("status" in v.get("subresources", {}) for v in c["spec"]["versions"])}
    builtin = {"", "events.k8s.io", "coordination.k8s.io"}
    for _, group, resource, _, _ in granted():
        if group in builtin:
            continue
        plural, _, sub = resource.partition("/")
        assert (group, plural) in (with_status if sub == "status" else defined), (group, resource)
    # Only our CRD is shipped by `apply -k`: NSM's come from NSM.
    shipped = [c for c in render() if c["kind"] == "CustomResourceDefinition"]
    assert [c["spec"]["group"] for c in shipped] == ["ryu-nsm.io", "ryu-nsm.io"]


# --- Dockerfile ---------------------------------------------------------------------------------------

def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    lines, pending = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        if not pending and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        instruction, _, args = (pending + raw).strip().partition(" ")
        lines.append((instruction.upper(), args.strip()))
        pending = ""
    return lines


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Each stage's instructions (its FROM first) by the name it is given with `AS`."""
    stages: dict[str, list[tuple[str, str]]] = {}
    for instruction, args in dockerfile():
        if instruction == "FROM":
            words = args.split()
            assert len(words) == 3 and words[1].upper() == "AS", f"an unnamed stage: FROM {args}"
            stages[words[2]] = []
        stages[next(reversed(stages))].append((instruction, args))
    return stages


def stage_parents(stage: str) -> list[str]:
    """The stages `stage` starts from (FROM) or takes files from (COPY --from, RUN --mount from=)."""
    stages = dockerfile_stages()
    parents = []
    for instruction, args in stages[stage]:
        words = args.split()
        if instruction == "FROM":
            parents.append(words[0])
        elif instruction == "COPY":
            parents += [w.removeprefix("--from=") for w in words if w.startswith("--from=")]
        elif instruction == "RUN":
            parents += re.findall(r"--mount=\S*\bfrom=([^,\s]+)", args)
    return [p for p in parents if p in stages]


def target_stages(target: str) -> list[str]:
    """`target` and every stage it needs, in Dockerfile order (BuildKit builds no other)."""
    needed, todo = set(), [target]
    while todo:
        stage = todo.pop()
        if stage not in needed:
            needed.add(stage)
            todo += stage_parents(stage)
    return [stage for stage in dockerfile_stages() if stage in needed]


def target_instructions(target: str, kind: str) -> list[str]:
    """The arguments of every `kind` instruction of the stages `target` needs."""
    stages = dockerfile_stages()
    return [args for stage in target_stages(target) for instruction, args in stages[stage]
            if instruction == kind]


def target_image(target: str) -> list[tuple[str, str]]:
    """The instructions that make the image of `target`: its own and its FROM ancestors', oldest first."""
    stages = dockerfile_stages()
    chain = [target]
    while (base := stages[chain[-1]][0][1].split()[0]) in stages:
        chain.append(base)
    return [line for stage in reversed(chain) for line in stages[stage]]


def context_sources(target: str) -> list[str]:
    """Paths of the build context that the stages of `target` COPY (COPY --from takes from a stage)."""
    sources = []
    for args in target_instructions(target, "COPY"):
        words = shlex.split(args)
        if not any(w.startswith("--from=") for w in words):
            sources += [w for w in words[:-1] if not w.startswith("--")]
    return sources


def target_user(target: str) -> int:
    """The UID the image of `target` runs as (root when no USER says otherwise)."""
    users = [args for instruction, args in target_image(target) if instruction == "USER"]
    return int(users[-1].split(":")[0]) if users else 0


def dockerfile_user() -> int:
    """The controller image's UID."""
    return target_user("controller")


def packaged_dirs() -> set[str]:
    """The top-level packages pyproject.toml's setuptools find includes."""
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    return {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()
            and any(fnmatch.fnmatchcase(p.name, pattern) for pattern in include["include"])}


def docker_included(relpath: str) -> bool:
    """Whether .dockerignore leaves a path in the build context (last matching pattern wins)."""
    included = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        parts = relpath.split("/")
        if any(fnmatch.fnmatchcase("/".join(parts[:i]), pattern) for i in range(1, len(parts) + 1)):
            included = keep
    return included


def pinned(requirement: str, args: str) -> str | None:
    """The version a command line pins `requirement` to (NAME==VERSION), or None."""
    match = re.search(rf"(?<![\w.-]){re.escape(requirement)}==([\w.]+)", args)
    return match.group(1) if match else None


def test_dockerfile_starts_from_python_slim_or_an_earlier_stage():
    seen = []
    for stage, lines in dockerfile_stages().items():
        base = lines[0][1].split()[0]
        assert base == "python:3.11-slim" or base in seen, f"{stage} starts from {base}"
        seen.append(stage)


def test_dockerfile_has_a_target_per_role_and_builds_the_controller_by_default():
    stages = list(dockerfile_stages())
    assert {"controller", "forwarder"} <= set(stages)
    assert stages[-1] == "controller"
    readme = (DEPLOY / "README.md").read_text()
    for target, tag in (("controller", "ryu-nsm:0.1.0"), ("forwarder", "ryu-nsm-forwarder:0.1.0")):
        assert f"docker build --target {target} -t {tag} ." in readme, target


@pytest.mark.parametrize(("target", "script"), [("controller", "ryu-nsm"), ("forwarder", "ovs-forwarder")])
def test_dockerfile_entrypoint_is_the_console_script_in_exec_form(target, script):
    (entrypoint,) = [args for instruction, args in dockerfile_stages()[target] if instruction == "ENTRYPOINT"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert json.loads(entrypoint) == [script] and script in scripts


def test_controller_image_ends_unprivileged():
    assert dockerfile_user() != 0
    last_user = [args for instruction, args in target_image("controller") if instruction == "USER"][-1]
    assert last_user.split(":")[0] not in ("root", "0")


def test_forwarder_image_is_root_on_purpose():
    # Said, not inherited: its capabilities reach only a root process (see the Dockerfile's comment).
    users = [args for instruction, args in dockerfile_stages()["forwarder"] if instruction == "USER"]
    assert users == ["0:0"]


@pytest.mark.parametrize("target", ["controller", "forwarder"])
def test_dockerfile_installs_every_package_from_the_build_context(target):
    runs = " ".join(target_instructions(target, "RUN"))
    assert re.search(r"pip wheel [^&]*\.(\s|$)", runs), "the package itself is not built"
    assert re.search(r"pip install [^&]*ryu-nsm", runs), "the package itself is not installed"
    sources = context_sources(target)
    assert {"pyproject.toml", "README.md"} | packaged_dirs() <= set(sources)
    assert packaged_dirs() == {"ryu_nsm", "nsm_api", "hubble_api", "ovs_forwarder"}
    for src in sources:
        assert (ROOT / src).exists() and docker_included(src), src
    for package in packaged_dirs():
        for module in (ROOT / package).rglob("*.py"):
            assert docker_included(str(module.relative_to(ROOT))), module
    for kept_out in (".venv/bin/python", ".git/HEAD", "tests/test_deploy.py", "ryu_nsm/__pycache__/cli.pyc"):
        assert not docker_included(kept_out), kept_out


@pytest.mark.parametrize("target", ["controller", "forwarder"])
def test_dockerfile_installs_the_ovs_library_the_tests_run_against(target):
    # ryu_nsm.sources.ovsdb and ovs_forwarder.ovsdb import it; pyproject.toml does not list it.
    wheel = [pinned("ovs", args) for args in target_instructions(target, "RUN") if "pip wheel" in args]
    install = [pinned("ovs", args) for args in target_instructions(target, "RUN") if "pip install" in args]
    assert len(set(wheel + install)) == 1 and None not in wheel + install, (wheel, install)
    tested = importlib.metadata.version("ovs").split(".")[:2]
    assert wheel[0].split(".")[:2] == tested, f"the image's ovs {wheel[0]}, the tests' {tested}"


def test_forwarder_image_has_the_schema_its_ovsdb_idl_reads():
    from ovs_forwarder.ovsdb import DEFAULT_SCHEMA

    copies = [shlex.split(args) for args in target_instructions("forwarder", "COPY") if "--from=" in args]
    assert any(words[-1] == DEFAULT_SCHEMA and words[-2] == DEFAULT_SCHEMA for words in copies), copies
    (schema_stage,) = [words[0].removeprefix("--from=") for words in copies if words[-1] == DEFAULT_SCHEMA]
    runs = " ".join(args for instruction, args in dockerfile_stages()[schema_stage] if instruction == "RUN")
    assert f".{DEFAULT_SCHEMA}" in runs and "apt-get download openvswitch-switch" in runs
