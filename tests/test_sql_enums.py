"""No SQL in the project spells an enum value as a literal (DESIGN §2, STYLE "Seams are typed").

SQL that filters on an enum column takes the value as a parameter
(`{"active": UserState.ACTIVE}`), never as text (`WHERE state = 'active'`): a literal survives a
renamed or removed choice silently, and nothing links it to the enum when searching for uses.

The test reads the production modules of the apps (not tests/, not migrations/) with `ast`,
keeps every string constant that looks like SQL (SELECT/INSERT/UPDATE/DELETE as upper-case
words; for f-strings, their constant parts joined), and reports each quoted literal `'…'` in it
that equals a value of a `models.TextChoices` subclass of the project (or of another closed value
set listed in EXTRA_ENUMS). Other literals (`''`, `'{}'`, `'1 day'`, …) are fine. It also reports
an f-string that interpolates a choice member (`f"… = '{UsageState.PENDING}'"`). Docstrings and
other bare string statements are not SQL and are skipped.
"""

from __future__ import annotations

import ast
import importlib
import re
from dataclasses import dataclass
from pathlib import Path

from django.db import models

BASE_DIR = Path(__file__).resolve().parent.parent
# The packages whose code runs against the database (the simulator has none).
APPS = ("config", "core", "accounts", "registry", "billing", "router", "demo")
SKIPPED_DIRS = {"tests", "migrations", "__pycache__"}

# Closed value sets stored in the database that are not TextChoices: (module, attribute).
EXTRA_ENUMS = (("registry.task_types", "TASKS"),)  # Mapping.task

SQL_WORD = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE)\b")
# A SQL string literal; '' inside one is an escaped quote.
SQL_LITERAL = re.compile(r"'((?:[^']|'')*)'")
PLACEHOLDER = "{…}"  # stands for an f-string's interpolated part


@dataclass(frozen=True)
class Violation:
    where: str  # module:CONSTANT or module:function, and the line
    literal: str
    enums: str
    context: str  # the SQL around the literal

    def __str__(self) -> str:
        return f"{self.where}: '{self.literal}' ({self.enums}) in: ...{self.context}..."


def production_files() -> list[Path]:
    files = []
    for app in APPS:
        root = BASE_DIR / app
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.py")):
            if not SKIPPED_DIRS.intersection(path.relative_to(BASE_DIR).parts):
                files.append(path)
    return files


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(BASE_DIR).with_suffix("").parts).removesuffix(".__init__")


def enum_values() -> dict[str, list[str]]:
    """Each choice value of the project, with the enums that hold it."""
    # Import every module that declares a Choices class, so that all subclasses exist.
    for path in production_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(
                "Choices" in ast.unparse(base) for base in node.bases
            ):
                importlib.import_module(module_name(path))
                break

    values: dict[str, list[str]] = {}

    def walk(cls: type) -> None:
        for sub in cls.__subclasses__():
            if sub.__module__.split(".")[0] in APPS:
                for value in sub.values:
                    values.setdefault(value, []).append(f"{sub.__module__}.{sub.__qualname__}")
            walk(sub)

    walk(models.TextChoices)
    for module, attribute in EXTRA_ENUMS:
        for value in getattr(importlib.import_module(module), attribute):
            values.setdefault(value, []).append(f"{module}.{attribute}")
    values.pop("", None)
    return values


def choice_class_names() -> set[str]:
    names: set[str] = set()

    def walk(cls: type) -> None:
        for sub in cls.__subclasses__():
            names.add(sub.__name__)
            walk(sub)

    walk(models.TextChoices)
    return names


@dataclass(frozen=True)
class SqlString:
    where: str
    text: str  # an f-string's interpolated parts are PLACEHOLDER
    expressions: list[ast.expr]  # an f-string's interpolated expressions


def sql_strings(module: str, tree: ast.Module) -> list[SqlString]:
    """Each string constant or f-string of the module that looks like SQL."""
    found: list[SqlString] = []

    def visit(node: ast.AST, scope: str) -> None:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant | ast.JoinedStr):
            return  # a docstring or a bare string: not SQL that runs
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            scope = f"{scope}.{node.name}" if scope else node.name
        elif isinstance(node, ast.Assign | ast.AnnAssign) and not scope:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            if names:  # a module constant: report it by name
                for child in ast.iter_child_nodes(node):
                    visit(child, names[0])
                return
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text, expressions = node.value, []
        elif isinstance(node, ast.JoinedStr):
            parts, expressions = [], []
            for value in node.values:
                if isinstance(value, ast.Constant):
                    parts.append(str(value.value))
                else:
                    parts.append(PLACEHOLDER)
                    expressions.append(value.value)  # a FormattedValue's expression
            text = "".join(parts)
        else:
            for child in ast.iter_child_nodes(node):
                visit(child, scope)
            return
        if SQL_WORD.search(text):
            where = f"{module}:{scope or '<module>'} (line {node.lineno})"
            found.append(SqlString(where, text, expressions))

    visit(tree, "")
    return found


def violations() -> list[Violation]:
    values = enum_values()
    assert values, "no TextChoices found: the enum collection is broken"
    class_names = choice_class_names()
    found: dict[tuple[str, str], Violation] = {}  # one per string and literal
    for path in production_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for sql in sql_strings(module_name(path), tree):
            for match in SQL_LITERAL.finditer(sql.text):
                literal = match.group(1).replace("''", "'")
                if literal in values:
                    context = " ".join(
                        sql.text[max(0, match.start() - 50) : match.end() + 20].split()
                    )
                    found.setdefault(
                        (sql.where, literal),
                        Violation(sql.where, literal, ", ".join(values[literal]), context),
                    )
            for expression in sql.expressions:
                # `UsageState.PENDING`, `models.UsageState.PENDING.value`, ...
                source = ast.unparse(expression)
                if any(name in class_names for name in source.split(".")[:-1]):
                    found.setdefault(
                        (sql.where, source),
                        Violation(sql.where, "{" + source + "}", "interpolated", source),
                    )
    return list(found.values())


def test_collection_sees_sql_and_enums():
    """Guards the scanner itself: it must see the project's SQL and its enums."""
    values = enum_values()
    assert "pending" in values  # billing.models.UsageState
    assert "active" in values  # registry.models.ProviderState
    sql = [
        found
        for path in production_files()
        for found in sql_strings(module_name(path), ast.parse(path.read_text()))
    ]
    assert len(sql) > 5


def test_no_enum_value_is_a_sql_literal():
    """Enum values reach SQL as parameters, never as quoted literals (see the module docstring)."""
    found = violations()
    assert not found, (
        f"{len(found)} enum value(s) written as SQL literals; pass them as parameters instead:\n"
        + "\n".join(f"  {violation}" for violation in found)
    )
