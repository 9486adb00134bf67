"""The package's import graph, built from the AST (imports inside functions included): no cycle
between files, and no import from a lower stage into a higher one (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fedmia"
# Stages in dependency order: a stage imports only stages to its left. Top-level modules
# (registry, seeding, errors) sit below every stage.
STAGES = ("data", "models", "signals", "training", "fl", "attacks", "threats", "audit", "experiment")
BASE = ("fedmia.registry", "fedmia.seeding", "fedmia.errors")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """fedmia modules ``path`` imports at run time (``if TYPE_CHECKING:`` blocks are annotations only)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if _type_checking_block(node):
            skip.update(id(n) for n in ast.walk(node))
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fedmia"):
            # `from fedmia.x import y` imports module fedmia.x.y when y is a module, else fedmia.x
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names
            ]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("fedmia")]
        out.update(n for n in names if n in modules)
    return out


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: imports_of(p, set(files)) - {m} for m, p in files.items()}


def stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph (as a path that returns to its start), or None."""
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        colour[m] = 1
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if colour.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if colour.get(n) is None and (found := visit(n)) is not None:
                return found
        stack.pop()
        colour[m] = 2
        return None

    for m in sorted(edges):
        if colour.get(m) is None and (found := visit(m)) is not None:
            return found
    return None


def test_the_graph_is_read_from_the_source() -> None:
    """The checks below are not vacuous: known edges are found, including a function-level import."""
    g = graph()
    assert "fedmia.training.train" in g["fedmia.training.batched"]
    assert "fedmia.experiment.config" in g["fedmia.experiment.runner"]
    assert len(g) > 50


def test_no_import_cycle_between_files() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_imports_point_down_the_stages() -> None:
    upward = []
    for m, targets in graph().items():
        for t in targets:
            a, b = stage(m), stage(t)
            if m in BASE and t not in BASE:
                upward.append(f"{m} -> {t} (a base module imports a stage)")
            elif a is not None and b is not None and STAGES.index(b) > STAGES.index(a):
                upward.append(f"{m} -> {t}")
    assert not upward, "imports from a lower stage into a higher one:\n" + "\n".join(sorted(upward))


@pytest.mark.parametrize(
    ("edges", "has_cycle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
        ({"a": {"a"}}, True),
    ],
)
def test_cycle_finder_on_known_graphs(edges: dict[str, set[str]], has_cycle: bool) -> None:
    assert (find_cycle(edges) is not None) == has_cycle


def test_function_level_imports_are_seen(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fedmia.a import X\n"
        "def f():\n    from fedmia.b import y\n"
    )
    assert imports_of(src, {"fedmia.a", "fedmia.b"}) == {"fedmia.b"}
