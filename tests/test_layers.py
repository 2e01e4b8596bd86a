"""The package's layers, checked from its source: no cycles, no upward or sideways imports, small modules.

Layers, bottom up (``torchseq/`` relative names):

* leaves: ``errors``, ``rng``, ``records``, ``state``, ``protocol``, ``context``, ``plan/``;
* middle: ``sources/``, ``stages/``, ``batching/`` -- each imports leaves only, never another middle package;
* the composition root: ``pipeline/`` -- the only package whose modules combine every middle package;
* on top: ``mixing``, ``meter``, ``lightning``, ``tools/``, ``cli/``, and the package's ``__init__``.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "torchseq"
LEAVES = {"errors", "rng", "records", "state", "protocol", "context", "plan"}
MIDDLE = {"sources", "stages", "batching"}
ROOT = {"pipeline"}
TOP = {"mixing", "meter", "lightning", "tools", "cli", "__init__", "__main__"}
RANK = {**dict.fromkeys(LEAVES, 0), **dict.fromkeys(MIDDLE, 1), **dict.fromkeys(ROOT, 2), **dict.fromkeys(TOP, 3)}
#: Modules that may import torchseq inside functions: the CLI (fast start-up) and optional integrations.
LAZY_ALLOWED = ("cli", "lightning")
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def top_unit(name: str) -> str:
    """The layer unit of a module: its first component under ``torchseq`` (``__init__`` for the package)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def resolve(node: ast.ImportFrom | ast.Import, here: str) -> list[str]:
    """The torchseq modules an import statement loads (``from pkg import sub`` names the submodule)."""
    known = modules()
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "torchseq"]
    base = node.module or ""
    if node.level:
        package = here if modules()[here].name == "__init__.py" else here.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}".rstrip(".")
    if base.split(".")[0] != "torchseq":
        return []
    out = []
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        out.append(candidate if candidate in known else base)
    return out


@cache
def imports() -> dict[str, dict[str, list[tuple[int, bool]]]]:
    """``module -> imported module -> [(line, at module level)]``."""
    graph: dict[str, dict[str, list[tuple[int, bool]]]] = {}
    for name, path in modules().items():
        tree = ast.parse(path.read_text(), str(path))
        top_level = {id(n) for n in tree.body}
        # Imports guarded by ``if TYPE_CHECKING`` or ``try`` at module level still count as module level.
        for node in tree.body:
            if isinstance(node, (ast.If, ast.Try)):
                top_level |= {id(n) for n in ast.walk(node)}
        edges: dict[str, list[tuple[int, bool]]] = {}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in resolve(node, name):
                    if target != name:
                        edges.setdefault(target, []).append((node.lineno, id(node) in top_level))
        graph[name] = edges
    return graph


def test_the_package_is_parsed() -> None:
    names = set(modules())
    assert {"torchseq.pipeline.core", "torchseq.sources.base", "torchseq.plan.epoch"} <= names
    assert all(top_unit(n) in RANK for n in names), sorted(n for n in names if top_unit(n) not in RANK)


def test_no_import_cycles() -> None:
    graph = {m: [t for t in edges if t in modules()] for m, edges in imports().items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in graph[node]:
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node)
    assert cycles == []


def test_no_upward_or_sideways_imports() -> None:
    bad = []
    for module, edges in imports().items():
        unit = top_unit(module)
        for target in edges:
            other = top_unit(target)
            if other == unit or other == "__init__" and target == "torchseq":
                if other == "__init__" and unit != "__init__":
                    bad.append(f"{module} imports the package root {target}")
                continue
            if RANK[other] > RANK[unit]:
                bad.append(f"{module} imports {target} (upward)")
            elif RANK[other] == RANK[unit] == 1:
                bad.append(f"{module} imports {target} (sideways between middle packages)")
    assert bad == []


def test_plan_imports_only_errors_and_seeds() -> None:
    for module, edges in imports().items():
        if top_unit(module) == "plan":
            assert {top_unit(t) for t in edges} <= {"plan", "errors", "rng"}, module


def test_only_pipeline_combines_every_middle_package() -> None:
    combining = sorted(
        module for module, edges in imports().items()
        if MIDDLE <= {top_unit(t) for t in edges}
    )
    assert combining, "some module of pipeline/ must compose sources, stages and batching"
    assert all(top_unit(m) == "pipeline" for m in combining), combining


def test_no_function_local_torchseq_imports() -> None:
    lazy = [
        f"{module}:{line} imports {target}"
        for module, edges in imports().items()
        if top_unit(module) not in LAZY_ALLOWED
        for target, places in edges.items()
        for line, at_top in places
        if not at_top
    ]
    assert lazy == []


@pytest.mark.parametrize("name", sorted(modules()))
def test_module_is_small(name: str) -> None:
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name}: {lines} lines (split it: one concept per module)"
