"""What the module's Reload button reloads: every VentricleSynthLib module already imported, each after the
library modules it imports when it loads (its package, then `import X` / `from X import y` outside functions),
so that a reloaded module binds the reloaded classes and functions, not the old ones."""

from __future__ import annotations

import ast
import importlib.util
import sys

PACKAGE = "VentricleSynthLib"


def _load_time_imports(tree: ast.Module):
    """Import statements that run when the module loads (everything but function bodies)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _imported_names(module) -> set[str]:
    """Full names of what `module` imports at load time (a `from X import y` counts as X and X.y)."""
    path = getattr(module, "__file__", None)
    try:
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
    except (OSError, TypeError, ValueError, SyntaxError):
        return set()
    names = set()
    for node in _load_time_imports(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
            continue
        try:
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), module.__package__ or "")
        except (ImportError, ValueError):
            continue
        names.add(base)
        names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def reload_order(package: str = PACKAGE, modules: dict | None = None) -> list[str]:
    """Names of the loaded modules of `package` (itself included), each after the loaded modules of the
    package it depends on when it loads; ties in name order."""
    modules = dict(sys.modules if modules is None else modules)
    loaded = {name: module for name, module in modules.items()
              if module is not None and (name == package or name.startswith(package + "."))}
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        parents = {name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)}
        for dependency in sorted((parents | _imported_names(loaded[name])) & set(loaded)):
            visit(dependency)
        order.append(name)

    for name in sorted(loaded):
        visit(name)
    return order
