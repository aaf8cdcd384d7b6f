"""Imports flow one way: no cycle among the modules of src/imagen (function-local imports included), nothing in the
library imports the entry points (imagen.run, imagen.cli, train.py, scripts/), and importing imagen.run pulls in no
script."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import imagen

SRC = Path(imagen.__file__).resolve().parent
ENTRY_POINTS = {"imagen.run", "imagen.cli"}  # only train.py and scripts/ import these


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the imagen modules it imports anywhere in its body (`from imagen.a import b` counts imagen.a.b when
    that is a module, else imagen.a)."""
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                    )
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name and t != "imagen"}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 30
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_nothing_in_the_library_imports_an_entry_point():
    importers = {m: sorted(e & ENTRY_POINTS) for m, e in import_graph().items() if e & ENTRY_POINTS}
    assert importers == {}


@pytest.mark.slow
def test_importing_imagen_run_imports_no_script():
    root = SRC.parents[1]
    code = (
        "import json, sys, imagen.run; print(json.dumps(sorted(getattr(m, '__file__', None) or '' "
        "for m in list(sys.modules.values()))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root)
    assert out.returncode == 0, out.stderr
    files = [Path(f).resolve() for f in json.loads(out.stdout.splitlines()[-1]) if f]
    assert not [f for f in files if f.is_relative_to(root / "scripts") or f == root / "train.py"]
    assert any(f == SRC / "run.py" for f in files)
