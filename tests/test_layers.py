"""The package layering of docs/architecture.md §Packages, checked on the source (an AST walk): no
package imports one above it, packages of one floor do not import each other, and the package
graph has no cycle. Imports inside functions count as much as those at the top of a module."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

FLOORS: dict[str, int] = {
    "conventions": 0,  # pose/action/camera, depth, limits, errors, metrics, file writes, progress
    "kernels": 1, "memory": 1, "scenes": 1,
    "worldmodel": 2,  # the generator and its training and play engines
    "game": 3,  # the pygame loop, sessions, frame sources, replay
    "worldmodel.env": 4,  # the agents' API: drives the game's frame sources
    "tools": 5,  # command-line programs and the `worldmodel` command
}
"""Each unit of the graph and its floor; a module belongs to the longest unit its name starts with."""


def unit_of(module: str) -> str | None:
    matches = [u for u in FLOORS if module == u or module.startswith(u + ".")]
    return max(matches, key=len) if matches else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in the file, relative ones resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, node.lineno))
            found += [(f"{target}.{alias.name}", node.lineno) for alias in node.names]  # `from pkg import mod`
    return found


def project_files() -> list[Path]:
    roots = {u.split(".")[0] for u in FLOORS}
    return sorted(p for root in roots for p in (REPO / root).rglob("*.py"))


def unit_graph() -> tuple[dict[str, set[str]], list[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    violations = []
    for path in project_files():
        source = unit_of(module_name(path))
        for target_module, line in imported_modules(path):
            target = unit_of(target_module)
            if target is None or target == source:
                continue
            if target_module in FLOORS and unit_of(target_module.rpartition(".")[0] or target_module) == source:
                continue  # `from worldmodel import env` style names resolve inside the unit itself
            graph[source].add(target)
            if FLOORS[target] > FLOORS[source]:
                violations.append(f"{path.relative_to(REPO)}:{line}: {source} (floor {FLOORS[source]}) imports "
                                  f"{target_module} ({target}, floor {FLOORS[target]}, above it)")
            elif FLOORS[target] == FLOORS[source]:
                violations.append(f"{path.relative_to(REPO)}:{line}: {source} imports {target_module}: "
                                  f"{target} is on the same floor ({FLOORS[source]})")
    return graph, violations


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_package_imports_one_above_it_or_beside_it():
    _, violations = unit_graph()
    assert violations == [], "\n".join(violations)


def test_the_package_graph_has_no_cycle():
    graph, _ = unit_graph()
    assert find_cycle(graph) is None, find_cycle(graph)


def test_the_check_sees_a_violation(tmp_path):
    """The walk itself: an upward import inside a function is found (the check can fail)."""
    probe = REPO / "memory" / "_layer_probe_tmp.py"
    probe.write_text("def f():\n    from game.session import PlaySession\n    return PlaySession\n")
    try:
        _, violations = unit_graph()
    finally:
        probe.unlink()
    assert any("_layer_probe_tmp.py:2: memory (floor 1) imports game.session" in v for v in violations)
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
