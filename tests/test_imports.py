"""No import cycle inside curate/: module-level and function-level imports alike.

Every ``import`` statement anywhere in a module (also inside functions) is an edge to
the curate module it names; ``from package import name`` is an edge to the submodule
``package.name`` when there is one, else to ``package``; importing ``a.b.c`` is also an
edge to the packages ``a.b`` and ``a`` (Python runs their ``__init__`` first). Edges to a
module's own ancestor packages are left out: Python imports those before the module in
any case.
A cycle is a strongly connected component of more than one module, or a module that
imports itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

CURATE = Path(__file__).resolve().parent.parent / "curate"


def module_name(path: Path) -> str:
    parts = path.relative_to(CURATE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in CURATE.rglob("*.py")}


def edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                for a in node.names:
                    sub = f"{origin}.{a.name}"
                    targets.append(sub if sub in mods else origin)
            for t in targets:
                while t and t not in mods:  # import a.b.c of a package: the longest known prefix
                    t = t.rpartition(".")[0]
                # importing a.b.c runs a/__init__ and a/b/__init__ first: edges to those too
                while t and t in mods:
                    if not (mod == t or mod.startswith(t + ".")):
                        out[mod].add(t)
                    t = t.rpartition(".")[0]
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one node."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walker_sees_function_level_imports_and_finds_a_planted_cycle():
    graph = edges(modules())
    assert "curate.mix.compile" in graph["curate.mix.frame"]
    planted = {k: set(v) for k, v in graph.items()}
    planted["curate.config"].add("curate.mix.policy")  # policy -> config -> policy
    assert any("curate.config" in c and "curate.mix.policy" in c for c in cycles(planted))


def test_curate_has_no_import_cycle():
    found = cycles(edges(modules()))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)
