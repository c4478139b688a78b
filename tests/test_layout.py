"""The library's shape, read from its source: no import cycle between the modules of `converters/`
or of the plugin (`fixtures/`, installed as `vision_port_fixtures`), imports at function level
included (a lazy import is still a dependency); the library never imports the plugin, pytest or its
own facade; the plugin's option parsing has no side effects."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"converters": ROOT / "converters", "vision_port_fixtures": ROOT / "fixtures"}


def imports(package: str, folder: Path) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports (relative or absolute), anywhere in it."""
    modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for module in sorted(modules):
        found = set()
        for node in ast.walk(ast.parse((folder / f"{module}.py").read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level == 1 or base.split(".")[0] == package:
                    name = base.removeprefix(package).lstrip(".") if node.level == 0 else base
                    targets = [name.split(".")[0]] if name else [a.name for a in node.names]
                    found |= {t for t in targets if t in modules}
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith(package + ".") and a.name.split(".")[1] in modules}
        graph[module] = found - {module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_import_cycles(package):
    found = cycles(imports(package, PACKAGES[package]))
    assert not found, f"{package}: modules that import each other (directly or around a loop): {found}"


def test_a_cycle_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_library_imports_neither_the_plugin_nor_pytest_nor_its_facade():
    for path in sorted((ROOT / "converters").rglob("*.py")):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {(n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
        facade = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level >= 1 and not n.module
                  and path.parent.name == "converters" and n.level == 1 and any(a.name == "*" for a in n.names)]
        bad = sorted(n for n in names if n.split(".")[0] in {"pytest", "_pytest", "vision_port_fixtures", "fixtures"} or n == "converters")
        assert not bad and not facade, f"{path.relative_to(ROOT)} imports {bad}"
