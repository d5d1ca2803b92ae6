"""The router reaches other apps only through their typed ports and rules, never through
their SQL strings or row positions."""

import ast
import importlib
import re
from pathlib import Path

ROUTER = Path(__file__).resolve().parents[1]
OTHER_APPS = ("accounts", "registry", "billing", "core")
SQL_WORD = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE)\b")


def _imports_from_other_apps():
    for path in sorted(ROUTER.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in OTHER_APPS:
                for alias in node.names:
                    yield path.name, node.module, alias.name


def test_no_router_module_imports_sql_from_another_app():
    offending = []
    for filename, module, name in _imports_from_other_apps():
        value = getattr(importlib.import_module(module), name, None)
        if value is None:  # a submodule: `from billing import aio`
            value = importlib.import_module(f"{module}.{name}")
        if (isinstance(value, str) and SQL_WORD.search(value)) or name.endswith("_SQL"):
            offending.append(f"{filename}: from {module} import {name}")
    assert offending == []


def test_the_router_uses_no_other_app_sql_through_a_module_attribute():
    """`from billing import services` then `services.ROUTER_USAGE_INSERT_SQL` is the same leak."""
    leaks = []
    for path in sorted(ROUTER.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.endswith("_SQL"):
                leaks.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert leaks == []
