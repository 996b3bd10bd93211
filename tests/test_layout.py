"""The package layout: no import cycle inside vcache, data flowing down the stages, no module too long.

The graph is read from the source (every `import` / `from ... import` statement, at module level or inside a
function), so a lazy import inside a function counts as an edge too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"vcache": ROOT / "pipeline", "vcache.cli": ROOT / "cli"}

# Stages in the order data flows: a module may import its own stage and the stages above it in this list,
# never one below. The command line and the tables (which drive the command line) come last.
LAYERS = [
    ("vcache", "vcache.runtime"),
    ("vcache.data",),
    ("vcache.models",),
    ("vcache.store",),
    ("vcache.extract",),
    ("vcache.learn",),
    ("vcache.pretrain",),
    ("vcache.tables",),
    ("vcache.cli",),
]
MAX_LINES = 425  # "no module over about 400 lines"


def module_files() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg, folder in SOURCES.items():
        for f in folder.rglob("*.py"):
            rel = f.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([pkg, *parts]) if parts else pkg] = f
    return out


def _resolve(name: str, known: set[str]) -> str | None:
    """The longest known module that `name` (a module or a module.attribute) lies in."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import sub` names the submodule sub when there is one
                targets = [f"{base}.{a.name}" for a in node.names] or [base]
            for t in targets:
                if not t.startswith("vcache"):
                    continue
                dep = _resolve(t, known)
                if dep is not None and dep != mod:
                    graph[mod].add(dep)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state and (found := visit(d)) is not None:
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)) is not None:
            return found
    return None


def layer_of(mod: str) -> int:
    best, best_len = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and len(p) > best_len and (p != "vcache" or mod == p):
                best, best_len = i, len(p)
    return best


def test_the_graph_sees_real_imports() -> None:
    g = import_graph()
    assert "vcache.models.registry" in g["vcache.models.resnet3d"]
    assert "vcache.store.format" in g["vcache.store.cache"]
    assert "vcache.learn.probes" in g["vcache.cli.probe"]  # an import inside a function counts


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_inside_vcache() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_data_flows_down_the_stages() -> None:
    upward = []
    for mod, deps in import_graph().items():
        for d in deps:
            if layer_of(d) > layer_of(mod):
                upward.append(f"{mod} -> {d}")
    assert not upward, "imports against the flow of the stages:\n" + "\n".join(sorted(upward))


@pytest.mark.parametrize("name", sorted(module_files()))
def test_no_module_over_about_400_lines(name: str) -> None:
    n = len(module_files()[name].read_text().splitlines())
    assert n <= MAX_LINES, f"{name}: {n} lines"


def test_a_decode_worker_imports_no_torch() -> None:
    """Spawned decode workers import vcache.extract.workers; the package must not pull torch in with it."""
    code = "import sys, vcache.extract.workers; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
