"""The package's import structure: no import cycles, no function-local imports of its own modules.

The graph is read from the source with ``ast`` (nothing is imported): every ``import`` and
``from ... import`` of a ``mtl_lora_vl`` module, at module level or inside functions, with relative
imports resolved. ``from pkg import name`` imports ``pkg`` (its ``__init__``) and ``pkg.name`` when that
is a module. Imports under ``if TYPE_CHECKING:`` never run and are left out.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = "mtl_lora_vl"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, local: bool = False):
    """(node, inside a function or class) for every import that can run, skipping TYPE_CHECKING blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from _imports(ast.Module(body=node.orelse, type_ignores=[]), local)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, local
        inner = local or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda)
        yield from _imports(node, inner)


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The package modules an import statement executes."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == PACKAGE]
    if node.level:
        base = module if _is_package(module) else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        source = f"{base}.{node.module}" if node.module else base
    else:
        source = node.module or ""
    if source.split(".")[0] != PACKAGE:
        return []
    out = [source]
    out += [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in MODULES]
    return out


def import_graph() -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    """Edges module -> imported package modules, and the (module, target) pairs imported inside functions."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    local: set[tuple[str, str]] = set()
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, inside in _imports(tree):
            for target in _targets(module, node):
                if target != module:
                    graph[module].add(target)
                    if inside:
                        local.add((module, target))
    return graph, local


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_one_cycle(graph, set(c)) for c in components]


def _one_cycle(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected component, for the message."""
    start = min(comp)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return sorted(comp)


def test_graph_sees_the_package():
    graph, _ = import_graph()
    assert "mtl_lora_vl.tasks.registry" in graph and "mtl_lora_vl.training.train" in graph
    assert "mtl_lora_vl.tasks.base" in graph["mtl_lora_vl.tasks.vqa"]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph, _ = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in the package:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_function_local_imports_of_the_package():
    _, local = import_graph()
    new = sorted(local)
    assert not new, ("imports of package modules inside functions (import at module level; lazy imports are "
                     "only for optional heavy dependencies):\n" + "\n".join(f"{m} imports {t}" for m, t in new))


def test_registry_is_a_leaf():
    graph, _ = import_graph()
    assert graph["mtl_lora_vl.tasks.registry"] == set()


def test_evaluation_does_not_import_training():
    graph, _ = import_graph()
    for module, targets in graph.items():
        if module.startswith(f"{PACKAGE}.evaluation"):
            assert not any(t.startswith(f"{PACKAGE}.training") for t in targets), module


def test_io_training_tasks_import_no_family_backbone():
    """Model-family knowledge stays in families.py and the backbone classes: io, training, tasks, evaluation and
    multitask reach a family's backbone through the table (``backbone_class``), never by importing its module (io
    imported Qwen2VLBackbone for the default image area)."""
    graph, _ = import_graph()
    families = {m for m, p in MODULES.items() if m.startswith(f"{PACKAGE}.backbones.")
                and re.search(r"^@register_backbone\(", p.read_text(encoding="utf-8"), re.M)}
    assert f"{PACKAGE}.backbones.qwen2_vl" in families and f"{PACKAGE}.backbones.base" not in families
    parts = ("io", "training", "tasks", "evaluation", "multitask")
    found = sorted((m, t) for m, targets in graph.items() if m.partition(".")[2].split(".")[0] in parts
                   for t in targets & families)
    assert not found, "family backbone modules imported outside the backbones:\n" + "\n".join(
        f"{m} imports {t}" for m, t in found)


def test_no_module_imports_another_modules_private_names():
    """A name other modules import is public (no leading underscore), with a docstring (tests/test_public_docs.py):
    the world's scene helpers, the seed mixer, the truth-value table and the CLI's exit code were imported as
    ``_name``."""
    found = []
    for module, path in MODULES.items():
        for node, _ in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and _targets(module, node):
                found += [f"{module} imports {a.name} from {node.module or '.'}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, "private names imported across modules:\n" + "\n".join(found)
