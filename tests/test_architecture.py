"""The shape the stage contract promises, checked on the source: the runner, the partitions, the
config and the flows name no stage; only the store names the marker file and renames a stage
folder into place; no module imports one that imports it back; imports point down
(flows -> pipelines -> stages -> schemas; the command line, which starts the flows, above all)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO
from vidcurate.stages.registry import STAGES

PACKAGES = ("flows", "pipelines", "stages", "schemas")  # top to bottom
ENTRY_POINT = "pipelines.cli"  # the command line starts the flows: the one module above them all
GENERIC = [REPO / "pipelines" / "runner.py", REPO / "pipelines" / "partitions.py", REPO / "pipelines" / "config.py", *sorted((REPO / "flows").glob("*.py"))]


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _strings(path: Path) -> list[tuple[int, str]]:
    return [(node.lineno, node.value) for node in ast.walk(_tree(path)) if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def _modules() -> dict[str, Path]:
    return {f"{package}.{path.stem}": path for package in PACKAGES for path in sorted((REPO / package).glob("*.py")) if path.stem != "__init__"}


def _imports(path: Path) -> set[str]:
    """The project modules a module imports (at any depth of its code)."""
    found = set()
    for node in ast.walk(_tree(path)):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else [a.name for a in getattr(node, "names", [])] if isinstance(node, ast.Import) else []
        for name in names:
            name = name.removeprefix("vidcurate.")
            if name.split(".")[0] in PACKAGES:
                found.add(".".join(name.split(".")[:2]))
    return found


def test_the_generic_modules_name_no_stage():
    named = [(path.name, line, text) for path in GENERIC for line, text in _strings(path) if text in STAGES]
    assert named == []


def test_only_the_store_names_the_marker_and_renames_stage_folders():
    marker = [(name, line) for name, path in _modules().items() for line, text in _strings(path) if text == "_SUCCESS.json"]
    assert [name for name, _ in marker] == ["pipelines.store"]
    renames = [
        (name, node.lineno)
        for name, path in _modules().items()
        if name.startswith("pipelines.") or name.startswith("flows.")
        for node in ast.walk(_tree(path))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "replace" and getattr(node.func.value, "id", "") == "os"
    ]
    assert [name for name, _ in renames] == ["pipelines.store", "pipelines.store"]  # a stage folder (commit) and a file (write_atomically)


def test_no_import_cycle_and_imports_point_down():
    graph = {name: {m for m in _imports(path) if m in _modules() and m != name} for name, path in _modules().items()}
    upward = [
        (a, b)
        for a, deps in graph.items()
        for b in deps
        if PACKAGES.index(b.split(".")[0]) < PACKAGES.index(a.split(".")[0]) and a != ENTRY_POINT
    ]
    assert upward == []
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                return path + [dep]
            if dep not in state and (cycle := visit(dep, path + [dep])):
                return cycle
        state[node] = "done"
        return None

    cycles = [cycle for node in sorted(graph) if node not in state and (cycle := visit(node, [node]))]
    assert cycles == []
