"""Which layer of ryu_nsm may import which, read from the source: every import statement counts,
top-level or inside a function, relative or absolute, under TYPE_CHECKING too (a cycle there is
still a cycle in the design). Plus: the pure core and qos import without os-ken & co installed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ryu_nsm"
FIRST_PARTY = {"ryu_nsm", "nsm_api", "hubble_api", "ovs_forwarder", "tests", "mininet_tests", "bench"}
PURE_THIRD_PARTY = {"networkx", "yaml"}

QOS_FROM_CORE = ("ryu_nsm.qos", "ryu_nsm.qos.service_level", "ryu_nsm.qos.admission*", "ryu_nsm.qos.measure")
CORE_DATA = tuple(f"ryu_nsm.core.{name}" for name in ("model", "fabric", "pathing", "units", "validation",
                                                      "values"))
# package -> the ryu_nsm modules it may import, as patterns (`x` is x and its submodules, `x*` any
# module whose name starts with x), and whether it may import third-party code beyond PURE_THIRD_PARTY.
RULES: dict[str, tuple[tuple[str, ...], bool]] = {
    "core": (("ryu_nsm.core", *QOS_FROM_CORE), False),
    "qos": (("ryu_nsm.qos", *CORE_DATA), False),
    "sources": (("ryu_nsm.sources", "ryu_nsm.core", "ryu_nsm.qos", "ryu_nsm.observe", "ryu_nsm.trust",
                 "nsm_api"), True),
    "openflow": (("ryu_nsm.openflow", "ryu_nsm.core", "ryu_nsm.qos", "ryu_nsm.observe", "ryu_nsm.trust"),
                 True),
    "k8s": (("ryu_nsm.k8s", "ryu_nsm.core", "ryu_nsm.qos", "ryu_nsm.sources", "ryu_nsm.observe",
             "ryu_nsm.trust"), True),
    "observe": (("ryu_nsm.observe", "ryu_nsm.core", "ryu_nsm.qos", "ryu_nsm.trust", "hubble_api"), True),
    # trust may read observe.health (supervised loops) and logs; every channel's layer may import it.
    "trust": (("ryu_nsm.trust", "ryu_nsm.observe.health", "ryu_nsm.observe.logs"), True),
    "lab": (("*",), True),
    "top": (("*",), True),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def package_of(module: str) -> str:
    """A module's layer: its first component under ryu_nsm; modules directly in ryu_nsm are "top"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else "top"


def _imports(module: str) -> set[str]:
    """The modules `module` imports anywhere in its source: ryu_nsm modules by their full name,
    others by their top-level name."""
    path = MODULES[module]
    base = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(_named(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                anchor = base.split(".")[: len(base.split(".")) - node.level + 1]
                source = ".".join(anchor + ([source] if source else []))
            for alias in node.names:
                found.add(_named(f"{source}.{alias.name}") if f"{source}.{alias.name}" in MODULES
                          else _named(source))
    return found - {module}


def _named(name: str) -> str:
    """The longest prefix of `name` that is a ryu_nsm module, else its top-level name."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in MODULES:
            return ".".join(parts[:end])
    return parts[0]


GRAPH = nx.DiGraph()
GRAPH.add_nodes_from(MODULES)
GRAPH.add_edges_from((module, imported) for module in MODULES for imported in _imports(module))


def _matches(imported: str, pattern: str) -> bool:
    if pattern.endswith("*"):
        return imported.startswith(pattern[:-1])
    return imported == pattern or imported.startswith(pattern + ".")


def _breach(module: str, imported: str) -> str | None:
    """Why `module` may not import `imported`, or None when it may."""
    package = package_of(module)
    allowed, any_third_party = RULES[package]
    top = imported.split(".")[0]
    if top not in FIRST_PARTY:
        if any_third_party or top in sys.stdlib_module_names or top in PURE_THIRD_PARTY:
            return None
        return f"{package} may import only the standard library and {', '.join(sorted(PURE_THIRD_PARTY))}"
    if any(_matches(imported, pattern) for pattern in allowed):
        return None
    return f"{package} may import only {', '.join(allowed)}"


def test_packages_import_only_what_their_layer_may():
    breaches = [f"{module} imports {imported}: {reason}"
                for module, imported in sorted(GRAPH.edges)
                if (reason := _breach(module, imported))]
    assert not breaches, "\n".join(breaches)


def test_no_import_cycle():
    graph = GRAPH.subgraph(MODULES).copy()
    cycles = sorted(" -> ".join([*cycle, cycle[0]]) for cycle in nx.simple_cycles(graph))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_rules_catch_a_breach_and_a_cycle():
    assert _breach("ryu_nsm.core.planner", "ryu_nsm.openflow.shell")
    assert _breach("ryu_nsm.qos.admission", "ryu_nsm.core.planner")
    assert _breach("ryu_nsm.core.model", "os_ken")
    assert _breach("ryu_nsm.observe.report", "ryu_nsm.sources.files")
    assert _breach("ryu_nsm.openflow.shell", "os_ken") is None
    assert _breach("ryu_nsm.lab.demo", "ryu_nsm.openflow.shell") is None
    assert package_of("ryu_nsm.cli") == "top" and package_of("ryu_nsm.core") == "core"


BLOCKED = ("os_ken", "kubernetes", "grpc", "pyroute2", "ovs", "prometheus_client", "nsm_api", "hubble_api")

_WITHOUT_IO_LIBRARIES = textwrap.dedent(f"""
    import sys

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {BLOCKED!r}:
                raise ImportError(f"blocked: {{name}}")

    assert not set({BLOCKED!r}) & {{name.split(".")[0] for name in sys.modules}}, "imported too early"
    sys.meta_path.insert(0, Blocker())

    import importlib, pkgutil
    import ryu_nsm.core, ryu_nsm.qos

    for package in (ryu_nsm.core, ryu_nsm.qos):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(info.name)
    for name in sys.argv[1:]:
        importlib.import_module(name)
""")


def _import_without_io_libraries(*extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _WITHOUT_IO_LIBRARIES, *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_core_and_qos_import_without_io_libraries():
    done = _import_without_io_libraries()
    assert done.returncode == 0, done.stderr


def test_the_blocker_blocks():
    done = _import_without_io_libraries("ryu_nsm.openflow.shell")
    assert done.returncode != 0 and "blocked: os_ken" in done.stderr, done.stderr


MAX_MODULE_LINES = 600  # one idea per module: past this a module holds two
MAX_FUNCTION_LINES = 80  # past this a function holds passes that want names
HAND_WRITTEN_PACKAGES = ("ryu_nsm", "ovs_forwarder", "nsm_api", "hubble_api")


def hand_written_modules() -> list[Path]:
    """Every module we write ourselves: the stubs `scripts/gen-proto` makes are not ours to shape."""
    return sorted(path for package in HAND_WRITTEN_PACKAGES for path in (ROOT / package).rglob("*.py")
                  if not path.name.endswith(("_pb2.py", "_pb2_grpc.py")))


def test_readability_covers_every_hand_written_package_and_no_generated_stub():
    checked = {str(path.relative_to(ROOT)) for path in hand_written_modules()}
    assert {"ryu_nsm/cli.py", "ovs_forwarder/server.py", "nsm_api/serving.py",
            "hubble_api/__init__.py"} <= checked
    assert not {"nsm_api/connection_pb2.py", "nsm_api/connection_pb2_grpc.py",
                "hubble_api/observer_pb2_grpc.py"} & checked


def test_modules_and_functions_stay_readable():
    too_long = []
    for path in hand_written_modules():
        source = path.read_text()
        where = path.relative_to(ROOT)
        if source.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{where}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{where}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, "\n".join(too_long)
