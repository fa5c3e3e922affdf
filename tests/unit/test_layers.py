"""The floor plan, kept: which parts of runhouse may import which (ARCHITECTURE.md, section 2).

Every import counts, at module level or inside a function, also those made only for type checkers.
Layers, bottom up: the foundation (errors, protocol, serialization, paths, ...) -> the transport and the
daemon, which never import each other -> resources and the naming layer -> the face (``runhouse``'s
``__init__``, account, cli). Den sits beside resources and shares only the foundation and ``rns.names``.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

import runhouse

PACKAGE = Path(runhouse.__file__).parent

FOUNDATION = {
    "runhouse.errors", "runhouse.protocol", "runhouse.serialization", "runhouse.paths", "runhouse.daemon_files",
    "runhouse.version", "runhouse.prompts", "runhouse.config", "runhouse.lifetime", "runhouse.progress",
}
LAYER = {
    **{name: 0 for name in FOUNDATION},
    "runhouse.transport": 1,
    "runhouse.server": 1,
    "runhouse.rns": 2,
    "runhouse.resources": 2,
    "runhouse.den": 2,
    "runhouse.builtins": 2,
    "runhouse": 3,
    "runhouse.account": 3,
    "runhouse.cli": 3,
}
# Pairs of parts that never import one another, though their layers would allow it.
FORBIDDEN = {
    ("runhouse.server", "runhouse.transport"),
    ("runhouse.transport", "runhouse.server"),
    ("runhouse.rns", "runhouse.resources"),
    ("runhouse.den", "runhouse.resources"),
    ("runhouse.resources", "runhouse.den"),
    ("runhouse.rns", "runhouse.den"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The runhouse modules ``path`` imports (``from runhouse import x`` names the module ``runhouse.x``)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                is_module = (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").exists() or (
                    PACKAGE.parent / Path(*candidate.split("."))
                ).is_dir()
                found.add(candidate if is_module else base)
    return {name for name in found if name == "runhouse" or name.startswith("runhouse.")}


def _part(module: str) -> str:
    """The part a module belongs to: a foundation module itself, else its top package under runhouse."""
    if module in FOUNDATION or module == "runhouse":
        return module
    return ".".join(module.split(".")[:2])


GRAPH = {_module_name(path): _imports(path) for path in PACKAGE.rglob("*.py")}


def test_every_part_has_a_layer():
    assert {_part(module) for module in GRAPH} <= set(LAYER)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_go_down_or_sideways_within_the_rules(module):
    source = _part(module)
    for target in sorted(GRAPH[module]):
        part = _part(target)
        if part == source:
            continue
        assert LAYER[part] <= LAYER[source], f"{module} imports {target}, a layer above it"
        if LAYER[part] == LAYER[source]:
            assert (source, part) not in FORBIDDEN, f"{module} imports {target}"
        if source == "runhouse.den" and part == "runhouse.rns":
            assert target == "runhouse.rns.names", f"Den shares only rns.names, yet {module} imports {target}"


def test_the_daemon_imports_neither_resources_nor_the_transport():
    for module, targets in GRAPH.items():
        if module.startswith("runhouse.server"):
            assert not {t for t in targets if t.startswith(("runhouse.resources", "runhouse.transport"))}, module


def test_the_naming_layer_does_not_import_the_daemon():
    for module, targets in GRAPH.items():
        if module.startswith("runhouse.rns"):
            assert not {t for t in targets if t.startswith("runhouse.server")}, module


def test_no_import_cycle_crosses_parts():
    edges: dict[str, set[str]] = defaultdict(set)
    for module, targets in GRAPH.items():
        for target in targets:
            if _part(target) != _part(module):
                edges[_part(module)].add(_part(target))

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(edges.get(node, ()))
        return False

    cycles = sorted((a, b) for a in edges for b in edges[a] if reaches(b, a))
    assert cycles == []
