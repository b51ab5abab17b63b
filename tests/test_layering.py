"""The package's layers (README, Architecture): decoder <- experiments <- attacks <- views <- CLI.

Every module is imported (so a broken move fails here), and every import statement of the package,
including the ones inside functions, is read from the source and checked against the layers and
for cycles.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import raintools

PKG = Path(raintools.__file__).resolve().parent
SUBPACKAGES = ("experiments", "attacks", "views")
# What each layer must not import (the CLI is `raintools.cli` and `raintools.__main__`).
FORBIDDEN = {
    "decoder": ("raintools.experiments", "raintools.attacks", "raintools.views", "raintools.cli",
                "raintools.__main__"),
    "experiments": ("raintools.attacks", "raintools.views", "raintools.cli", "raintools.__main__"),
    "attacks": ("raintools.views", "raintools.cli", "raintools.__main__"),
    "views": ("raintools.cli", "raintools.__main__"),
    "cli": (),
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rsplit(".", 1)[0]


def layer(name: str) -> str:
    parts = name.split(".")
    if len(parts) > 1 and parts[1] in SUBPACKAGES:
        return parts[1]
    if name in ("raintools.cli", "raintools.__main__"):
        return "cli"
    return "decoder"


def known(name: str, modules: set[str]) -> str | None:
    """The package module `name` refers to (a name imported from a module maps to the module)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        pkg = package_of(name, path)
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" for a in node.names] + [mod]
            for t in targets:
                k = known(t, modules)
                if k is not None and k != name and not name.startswith(k + "."):
                    deps.add(k)
        graph[name] = deps
    return graph


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(raintools.__path__, "raintools.")]
    for sub in SUBPACKAGES:
        assert f"raintools.{sub}" in names
    for name in names:
        if name == "raintools.__main__":
            continue  # runs the CLI on import
        importlib.import_module(name)


def test_graph_sees_the_known_edges():
    """The checker itself: it must see imports that are known to exist (else it checks nothing)."""
    g = import_graph()
    assert "raintools.search" in g["raintools.experiments.methods"]          # ..search (lazy)
    assert "raintools.experiments.records" in g["raintools.attacks.run"]    # ..experiments.records
    assert "raintools.attacks.gcg" in g["raintools.attacks"]                 # package re-export
    assert "raintools.experiments.runner" in g["raintools.cli"]              # CLI assembles


# the CLI is the top layer: nothing is above it, so it has no import rule of its own; what guards
# it is that no other layer imports it (each layer's FORBIDDEN names the CLI) and
# test_only_the_entry_point_imports_the_cli
@pytest.mark.parametrize("lay", sorted(lay for lay, above in FORBIDDEN.items() if above))
def test_layers(lay):
    graph = import_graph()
    assert any(layer(m) == lay for m in graph), f"no module is in the {lay} layer"
    bad = [(m, d) for m, deps in graph.items() if layer(m) == lay
           for d in deps if d.startswith(FORBIDDEN[lay])]
    assert not bad, f"{lay} modules import from layers above them: {bad}"


def test_only_the_entry_point_imports_the_cli():
    graph = import_graph()
    assert "raintools.cli" in graph["raintools.__main__"]
    importers = sorted(m for m, deps in graph.items() if "raintools.cli" in deps)
    assert importers == ["raintools.__main__"], importers
    assert FORBIDDEN["cli"] == () and all("raintools.cli" in FORBIDDEN[lay]
                                          for lay in FORBIDDEN if lay != "cli")


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
