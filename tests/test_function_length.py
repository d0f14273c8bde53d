"""No function of the project's code runs over `MAX_LINES` lines (its `def` through its last line,
docstring and comments included), except the few listed in `ALLOWED` with the reason: a long
function is split into named steps, so that it reads as the sequence it performs."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("qlora_core", "qlora_plugin", "reports", "tools", "bench")
MAX_LINES = 80

# "path::qualified name" -> why it may be longer. A declarative table (one literal, e.g. a list of
# option specs, built in a function) belongs here; logic does not.
ALLOWED: dict[str, str] = {}
"""`path::qualified name` -> why it may be longer: a declarative table written as a function."""


def long_functions(source: str, limit: int = MAX_LINES) -> dict[str, int]:
    """Qualified name (``Class.method``, ``outer.inner``) -> line count of every function of
    `source` longer than `limit` lines."""
    found: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    lines = (child.end_lineno or child.lineno) - child.lineno + 1
                    if lines > limit:
                        found[name] = lines
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def project_long_functions() -> dict[str, int]:
    """``path::name`` -> line count of every over-long function of `PACKAGES`."""
    found: dict[str, int] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            where = path.relative_to(ROOT).as_posix()
            for name, lines in long_functions(path.read_text()).items():
                found[f"{where}::{name}"] = lines
    return found


def test_no_function_is_over_the_limit():
    long = {name: lines for name, lines in project_long_functions().items() if name not in ALLOWED}
    assert not long, f"functions over {MAX_LINES} lines (split them into named steps): {long}"


def test_every_allowed_function_is_still_long():
    # An entry whose function was split or renamed would silently allow its successor.
    stale = set(ALLOWED) - set(project_long_functions())
    assert not stale, f"ALLOWED entries no longer over {MAX_LINES} lines (remove them): {sorted(stale)}"


def function_source(name: str, lines: int) -> str:
    """A function `lines` lines long: its def and `lines - 1` statements."""
    return f"def {name}():\n" + "".join(f"    x{i} = {i}\n" for i in range(lines - 1))


def test_the_check_finds_a_long_function_and_method():
    method = textwrap.indent(function_source("over", MAX_LINES + 1), "    ")
    source = function_source("at_limit", MAX_LINES) + f"\n\nclass C:\n{method}"
    assert long_functions(source) == {"C.over": MAX_LINES + 1}
    assert long_functions(source, limit=MAX_LINES + 1) == {}
    outer = function_source("outer", 3) + textwrap.indent(function_source("inner", MAX_LINES + 1), "    ")
    assert long_functions(outer) == {"outer": MAX_LINES + 4, "outer.inner": MAX_LINES + 1}
