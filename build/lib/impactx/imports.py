"""The project's own import graph, read from the source (module-level imports and those inside
functions): what tests/test_architecture.py checks, no cycle, and each DVC stage's code deps.

Registries (impactx.methods, impactx.attribution) import their modules at run time, by discovery; those
edges are not in the source. A stage names the registered modules it runs: the method in its command
(`python -m stages.train impactx 0`), the attribution methods in its deps (`${attribution.method}`)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGES = ("impactx", "stages")  # the project's own top-level packages


def module_file(root: Path, module: str) -> Path | None:
    """impactx.attribution → impactx/attribution/__init__.py; impactx.owen → impactx/owen.py."""
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(root: Path, path: Path) -> set[str]:
    """The project modules `path` imports, at any depth of its code (resolved to existing modules)."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(root, path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]  # `from pkg import module`
        for name in names:
            if name.split(".")[0] in PACKAGES and module_file(root, name):
                found.add(name)
    return found


def graph(root: Path) -> dict[str, set[str]]:
    """module → the project modules it imports, for every module of PACKAGES (parents of a module are
    imported with it: impactx.attribution.deeplift runs impactx/attribution/__init__.py first)."""
    out: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            name = module_name(root, path)
            deps = set()
            for dep in imports_of(root, path):
                parts = dep.split(".")
                deps |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
            out[name] = deps - {name}
    return out


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), the package root excluded: it
    holds only ImpactXError and imports nothing."""
    g = {k: {d for d in v if d in g and d not in PACKAGES} for k, v in g.items() if k not in PACKAGES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
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
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def closure(root: Path, modules: list[str], g: dict[str, set[str]] | None = None) -> set[Path]:
    """The files of `modules` and of everything they import, transitively, relative to root."""
    g = g or graph(root)
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += sorted(g.get(m, ()))
    return {p.relative_to(root) for m in seen if (p := module_file(root, m)) is not None}
