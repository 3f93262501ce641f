"""The package's shape, read from its source: imports flow one way, FastAPI stays in its
own modules, and SQLAlchemy's private API is reached through ``_compat`` only.

These read the code rather than run it, so a change that breaks the layering fails here
at once, with the module and line to look at.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import fastapi_asyncdb

PACKAGE = Path(fastapi_asyncdb.__file__).parent
NAME = PACKAGE.name

# Modules allowed to know FastAPI and Starlette: the integration itself, the test plugin
# built on it, the console command (it finds an app's Database on app.state) and the
# package's front door, which re-exports the integration.
FASTAPI_MODULES = (f"{NAME}.fastapi", f"{NAME}.testing", f"{NAME}.cli", NAME)

# Private attributes reached outside ``_compat``, each for a reason of its own: none is
# SQLAlchemy's.
ALLOWED_PRIVATE = {
    # The test plugin's fault injection needs the Database's two roles.
    ("testing/faults.py", "database._primary"),
    ("testing/faults.py", "database._reader"),
    # FastAPI's validation errors keep their list in ``_errors``; redaction masks it.
    ("validation_errors.py", "error._errors"),
}


def _module_name(path: Path) -> str:
    parts = [NAME, *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _top_level_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements run at import: imports inside functions (lazy) and under
    ``TYPE_CHECKING`` (types only) do not tie modules together at run time."""
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _top_level_statements(node.orelse)
            continue
        yield node
        for field in ("body", "orelse", "finalbody"):
            yield from _top_level_statements(getattr(node, field, []))
        for handler in getattr(node, "handlers", []):
            yield from _top_level_statements(handler.body)


def _imported(module: str, path: Path, *, lazy_too: bool = False) -> set[str]:
    """Every module ``module`` imports, by absolute name (ours and others')."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nodes = ast.walk(tree) if lazy_too else _top_level_statements(tree.body)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(
                f"{target}.{alias.name}"
                for alias in node.names
                if f"{target}.{alias.name}" in MODULES
            )
    return found


def test_no_module_of_the_package_imports_another_that_imports_it_back() -> None:
    graph = {
        module: {
            imported
            for imported in _imported(module, path)
            # A submodule importing its own package runs after the package is set up.
            if imported in MODULES and imported != module and not module.startswith(f"{imported}.")
        }
        for module, path in MODULES.items()
    }
    cycles: list[list[str]] = []

    def visit(module: str, trail: list[str], done: set[str]) -> None:
        for imported in sorted(graph[module]):
            if imported in trail:
                cycles.append([*trail[trail.index(imported) :], imported])
            elif imported not in done:
                visit(imported, [*trail, imported], done)
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module], done)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_core_imports_neither_fastapi_nor_starlette_nor_the_integration() -> None:
    knowing: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        if module.startswith(FASTAPI_MODULES[:3]) or module == NAME:
            continue
        web = {
            imported
            for imported in _imported(module, path, lazy_too=True)
            if imported.split(".")[0] in {"fastapi", "starlette"}
            or imported.startswith(f"{NAME}.fastapi")
        }
        if web:
            knowing[module] = web
    assert not knowing, f"core modules that import the web layer: {knowing}"


def _private_attributes(path: Path) -> Iterator[tuple[int, str]]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            if node.attr.startswith("__") and node.attr.endswith("__"):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"}:
                continue
            yield node.lineno, ast.unparse(node)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
            private_module = any(part.startswith("_") for part in (node.module or "").split("."))
            for alias in node.names:
                if private_module or alias.name.startswith("_"):
                    yield node.lineno, f"from {node.module} import {alias.name}"


def test_private_sqlalchemy_api_is_reached_only_through_compat() -> None:
    outside = [
        f"{path.relative_to(PACKAGE)}:{line}: {expression}"
        for path in MODULES.values()
        if path.name != "_compat.py"
        for line, expression in _private_attributes(path)
        if (path.relative_to(PACKAGE).as_posix(), expression) not in ALLOWED_PRIVATE
    ]
    assert not outside, "private API outside _compat:\n" + "\n".join(outside)


def test_compiler_internals_are_read_only_in_compat() -> None:
    internals = {"positiontup", "result_tuple", "await_only", "bind_names"}
    outside = [
        f"{path.relative_to(PACKAGE)}:{node.lineno}: {ast.unparse(node)}"
        for path in MODULES.values()
        if path.name != "_compat.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if (isinstance(node, ast.Attribute) and node.attr in internals)
        or (isinstance(node, ast.alias) and node.name in internals)
    ]
    assert not outside, "SQLAlchemy internals outside _compat:\n" + "\n".join(outside)


def test_every_allowed_private_access_still_exists() -> None:
    # An entry left behind after the code changed would quietly allow a new access.
    present = {
        (path.relative_to(PACKAGE).as_posix(), expression)
        for path in MODULES.values()
        for _, expression in _private_attributes(path)
    }
    assert present >= ALLOWED_PRIVATE, ALLOWED_PRIVATE - present
