"""The import layers of docs/architecture.md#import-layers hold: every import between the
package's sub-packages is one the table allows, nothing in the library imports `api` or `cli`,
there are no import cycles (between packages or between modules, counting imports inside
functions), argparse lives only in `cli/`, and no module is over 600 lines.

The graph is read from the source with `ast` (nothing is imported), so the test sees imports in
every branch and function body.
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

pytestmark = pytest.mark.core

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "illada_jax"
MAX_LINES = 600


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: pathlib.Path) -> set[str]:
    """The illada_jax modules `path` imports (`from a import b` counts `a.b` when it is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("illada_jax")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("illada_jax"):
            submodules = {f"{node.module}.{a.name}" for a in node.names} & MODULES.keys()
            found |= submodules
            if len(submodules) < len(node.names):  # some names are attributes of the module
                found.add(node.module)
    return found


GRAPH = {name: imports_of(path) - {name} for name, path in MODULES.items()}


def package_of(module: str) -> str:
    """`illada_jax.train.loop` -> `train`; the top-level `illada_jax` package -> `illada_jax`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "illada_jax"


def allowed_table() -> dict[str, set[str]]:
    """The `| package | may import |` table of docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Import layers", 1)[1].split("\n## ", 1)[0]
    table = {}
    for package, allowed in re.findall(r"^\| `(\w+)` \| ([^|]*) \|$", section, re.M):
        table[package] = {a.strip() for a in allowed.split(",") if a.strip() not in ("", "—")}
    return table


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
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


def test_the_table_covers_every_package():
    table = allowed_table()
    packages = {package_of(m) for m in MODULES} - {"illada_jax"}
    assert packages - table.keys() == set(), "add these packages to docs/architecture.md"
    assert table.keys() - packages == set(), "the table names packages that do not exist"


def test_every_import_between_packages_is_allowed():
    table = allowed_table()
    bad = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if package_of(module) not in ("illada_jax",)
        and package_of(target) != package_of(module)
        and package_of(target) not in table[package_of(module)]
    )
    assert bad == [], "imports not allowed by docs/architecture.md#import-layers:\n" + "\n".join(
        bad
    )


def test_no_library_module_imports_api_or_cli_or_the_top_package():
    top = {"api", "cli", "illada_jax"}
    bad = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if package_of(module) not in top
        for target in targets
        if package_of(target) in top
    )
    assert bad == [], "\n".join(bad)


def test_no_import_cycles_between_packages():
    packages: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        source = package_of(module)
        packages.setdefault(source, set()).update(
            package_of(t) for t in targets if package_of(t) != source
        )
    assert find_cycle(packages) is None, find_cycle(packages)


def test_no_import_cycles_between_modules():
    # A package's __init__ importing its own modules is how packages expose names, not a cycle.
    graph = {
        module: {t for t in targets if not module.startswith(t + ".") and t != module}
        for module, targets in GRAPH.items()
    }
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_argparse_lives_only_in_the_cli_package():
    users = sorted(
        name
        for name, path in MODULES.items()
        if package_of(name) != "cli" and re.search(r"^\s*import argparse", path.read_text(), re.M)
    )
    assert users == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: module_name(p))
def test_no_module_is_over_600_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines; split it by job"


def test_the_checker_finds_cycles_and_forbidden_imports():
    """The checks above can fail: a cycle and a forbidden edge are found in made-up graphs."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert "config" not in allowed_table()["model"] or "train" not in allowed_table()["model"]
