"""The package's layers: arch/runc/ is the floor that shim/, checkpoint/ and container/ build on.

Read from the source with `ast`, so the rules hold for every import a module makes at load time
and under TYPE_CHECKING alike (mypy follows those too).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "arch"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _arch_imports(path: Path, *, load_time_only: bool) -> set[str]:
    """The arch.* modules `path` imports; with load_time_only, only those run when it loads."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.startswith("arch"):
                    found.add(node.module)  # and `from arch.pkg import module`:
                    found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name.startswith("arch"))
            elif isinstance(node, ast.If):
                test = node.test
                type_checking = isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"
                if not (load_time_only and type_checking):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if not load_time_only:
                    visit(node.body)
            elif isinstance(node, (ast.Try, ast.With)):
                visit(node.body)

    visit(tree.body)
    return found


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


@pytest.mark.parametrize("name", [name for name in _modules() if name.startswith("arch.runc")])
def test_runc_package_imports_only_itself(name: str) -> None:
    imported = _arch_imports(_modules()[name], load_time_only=False)
    assert {module for module in imported if not module.startswith("arch.runc")} == set()


@pytest.mark.parametrize("layer", ["arch.checkpoint", "arch.container", "arch.runc"])
def test_lower_layers_never_import_the_front_or_the_cli(layer: str) -> None:
    offenders = {
        name: sorted(
            module
            for module in _arch_imports(path, load_time_only=False)
            if module.startswith(("arch.shim", "arch.cli"))
        )
        for name, path in _modules().items()
        if name.startswith(layer)
    }
    assert {name: found for name, found in offenders.items() if found} == {}


@pytest.mark.parametrize("load_time_only", [True, False], ids=["load-time", "any-import"])
def test_no_import_cycle(load_time_only: bool) -> None:
    """No circle, neither among the imports that run at load time nor counting the deferred
    ones inside functions (a deferred import only hides a circle from Python, not from a reader)."""
    modules = _modules()
    graph = {
        name: {
            module
            for module in _arch_imports(path, load_time_only=load_time_only)
            if module in modules and module != name
        }
        for name, path in modules.items()
    }
    done: set[str] = set()

    def walk(name: str, trail: list[str]) -> None:
        if name in trail:
            pytest.fail("import cycle: " + " -> ".join([*trail[trail.index(name) :], name]))
        if name in done:
            return
        for imported in sorted(graph[name]):
            walk(imported, [*trail, name])
        done.add(name)

    for name in sorted(graph):
        walk(name, [])
