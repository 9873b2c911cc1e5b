"""The dependency direction of docs/ARCHITECTURE.md, read from the code's own imports (an
`ast` walk over ember/, so the check cannot drift from the code): no import circles, and
no stage importing against the direction. Imports inside functions and under
`if TYPE_CHECKING:` count too: a circle of types is still a circle a reader has to hold."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent / "ember"

# Stage -> what it may import besides itself. Leaf modules (errors, paths, workers) import
# no stage, and every stage may use them.
LEAVES = {"ember.errors", "ember.paths", "ember.workers"}
ALLOWED = {
    "ir": set(),
    "frontends": {"ir"},
    "lowering": {"ir"},
    "codegen": {"ir"},
    "runtime": {"codegen", "ir"},
    "tuning": {"runtime", "codegen", "ir"},
}
# What ties the stages together: no stage imports these (nor the package face, `ember`).
TIES = {"ember", "ember.compiler", "ember.loaded", "ember.feeds", "ember.cli",
        "ember.onnx_backend",
        "ember.summary", "ember.__main__", "ember.quantization"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> nx.DiGraph:
    """module -> the ember modules it imports (a `from pkg import mod` counts as mod)."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] == "ember":
                found = [f"{node.module}.{a.name}" for a in node.names
                         if f"{node.module}.{a.name}" in modules] or [node.module]
            elif isinstance(node, ast.Import):
                found = [a.name for a in node.names if a.name.split(".")[0] == "ember"]
            else:
                continue
            graph.add_edges_from((name, target) for target in found
                                 if target in modules and target != name)
    return graph


GRAPH = import_graph()


def stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else None


def test_the_walk_sees_the_stages():
    assert {"ember.compiler", "ember.codegen.registry", "ember.runtime.opencl",
            "ember.tuning.tuner", "ember.ir.graph"} <= set(GRAPH)
    assert GRAPH.has_edge("ember.runtime.opencl", "ember.codegen.types")


def test_no_import_circles():
    circles = [sorted(c) for c in nx.strongly_connected_components(GRAPH) if len(c) > 1]
    assert not circles, f"import circles: {circles}"


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_stages_import_only_downwards(name):
    wrong = []
    for source, target in GRAPH.edges:
        if stage(source) != name or stage(target) == name or target in LEAVES:
            continue
        if target in TIES or stage(target) not in ALLOWED[name]:
            wrong.append(f"{source} -> {target}")
    assert not wrong, f"{name} imports against the direction: {wrong}"


def test_leaves_import_no_stage():
    wrong = [f"{s} -> {t}" for s, t in GRAPH.edges if s in LEAVES and t not in LEAVES]
    assert not wrong, wrong
