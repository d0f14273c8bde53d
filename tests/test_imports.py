"""The project's own imports: no cycle among its modules, and an import inside a function only with
a comment saying why it cannot sit at the module's top (keeping torch out of the parent, a library
that must come after the CUDA set-up, a heavy dependency only one path needs).

The graph holds every import a module runs, at its top or inside a function: a cycle that a local
import hides is still a cycle. Imports under `if TYPE_CHECKING:` never run and are left out.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("qlora_core", "qlora_plugin", "reports")
_NOT_A_REASON = ("noqa", "type:", "fmt:", "pragma")


@dataclass(frozen=True)
class Import:
    """One import of a project module: where it is, and whether it runs at the module's top."""

    importer: str
    imported: str
    line: int
    at_top: bool
    commented: bool


def project_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> file, for every module of `packages` under `root`."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _targets(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: dict[str, Path]
) -> list[str]:
    """The project modules an import statement loads (`from pkg import mod` loads pkg.mod)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join([*package, *([node.module] if node.module else [])])
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    found = []
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module and name not in found:
            found.append(name)
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _has_reason(text: str) -> bool:
    comment = text.partition("#")[2].strip()
    return bool(comment) and not comment.startswith(_NOT_A_REASON)


def _group_commented(body: list[ast.stmt], index: int, lines: list[str]) -> bool:
    """Whether the run of import statements around `body[index]` carries a comment: on one of its
    lines, or in the comment lines right above its first statement."""
    first = last = index
    while first > 0 and isinstance(body[first - 1], (ast.Import, ast.ImportFrom)):
        first -= 1
    while last + 1 < len(body) and isinstance(body[last + 1], (ast.Import, ast.ImportFrom)):
        last += 1
    start, end = body[first].lineno, body[last].end_lineno or body[last].lineno
    if any(_has_reason(lines[n - 1]) for n in range(start, end + 1) if "#" in lines[n - 1]):
        return True
    above = start - 1
    while above >= 1 and lines[above - 1].strip().startswith("#"):
        if _has_reason(lines[above - 1]):
            return True
        above -= 1
    return False


def imports_of(module: str, path: Path, known: dict[str, Path]) -> Iterator[Import]:
    """Every project import `module` runs, with where it sits."""
    lines = path.read_text().splitlines()
    is_package = path.name == "__init__.py"

    def walk(body: list[ast.stmt], at_top: bool) -> Iterator[Import]:
        for index, node in enumerate(body):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                commented = at_top or _group_commented(body, index, lines)
                for target in _targets(node, module, is_package, known):
                    yield Import(module, target, node.lineno, at_top, commented)
            elif isinstance(node, ast.If) and _is_type_checking(node):
                continue
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield from walk(node.body, False)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    block = getattr(node, field, None)
                    if isinstance(block, list) and block and isinstance(block[0], ast.AST):
                        yield from walk(block, at_top)  # a class or an if at the top runs at import

    yield from walk(ast.parse(path.read_text(), str(path)).body, True)


def all_imports(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[Import]:
    known = project_modules(root, packages)
    return [imp for module, path in known.items() for imp in imports_of(module, path, known)]


def find_cycle(imports: list[Import]) -> list[str] | None:
    """One import cycle among the modules (the first module again at its end), or None."""
    graph: dict[str, list[str]] = {}
    for imp in imports:
        graph.setdefault(imp.importer, []).append(imp.imported)
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        path.append(module)
        for imported in graph.get(module, []):
            cycle = visit(imported)
            if cycle is not None:
                return cycle
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module)
        if cycle is not None:
            return cycle
    return None


def test_the_projects_modules_import_no_cycle() -> None:
    imports = all_imports(ROOT)
    importers = {imp.importer for imp in imports}
    assert {"qlora_core.process.runner", "qlora_plugin.session", "reports.render"} <= importers  # found
    cycle = find_cycle(imports)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_an_import_inside_a_function_says_why() -> None:
    local = [imp for imp in all_imports(ROOT) if not imp.at_top]
    assert local, "no function-level import found: the walk is broken"
    unexplained = [f"{imp.importer}:{imp.line} imports {imp.imported}" for imp in local if not imp.commented]
    why = "imports inside a function with no comment saying why:\n"
    assert unexplained == [], why + "\n".join(unexplained)


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in {"pkg/__init__.py": "", **files}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_the_checker_finds_a_cycle_a_local_import_hides(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "pkg/a.py": "from pkg import b\n",
            "pkg/b.py": "import pkg.c\n",
            "pkg/c.py": "def f():\n    from pkg.a import x  # here: a imports us\n    return x\n",
        },
    )
    assert find_cycle(all_imports(root, ("pkg",))) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    # Python itself runs it (the cycle is hidden): only the checker sees it.
    (root / "pkg/a.py").write_text("from pkg import b\nx = 1\n")
    run = [sys.executable, "-c", "import pkg.a, pkg.c; print(pkg.c.f())"]
    assert subprocess.run(run, cwd=root, capture_output=True, text=True, check=True).stdout == "1\n"
    assert find_cycle(all_imports(root, ("pkg",))) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    # Broken at c, no cycle is left; a TYPE_CHECKING import never runs and is no edge.
    (root / "pkg/c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n"
    )
    assert find_cycle(all_imports(root, ("pkg",))) is None


def test_the_checker_finds_a_cycle_at_the_module_tops(tmp_path: Path) -> None:
    root = _package(tmp_path, {"pkg/a.py": "from . import b\n", "pkg/b.py": "from .a import y\n"})
    assert find_cycle(all_imports(root, ("pkg",))) == ["pkg.a", "pkg.b", "pkg.a"]


@pytest.mark.parametrize(
    ("body", "commented"),
    [
        ("def f():\n    from pkg import b\n", False),
        ("def f():\n    from pkg import b  # noqa: F401\n", False),
        ("def f():\n    from pkg import b  # b imports torch\n", True),
        (
            "def f():\n    # b imports torch\n    import os\n\n    from pkg import b\n",
            True,
        ),
        ("def f():\n    # b imports torch\n    x = 1\n    from pkg import b\n", False),
    ],
)
def test_the_checker_wants_a_reason_for_a_local_import(tmp_path: Path, body: str, commented: bool) -> None:
    root = _package(tmp_path, {"pkg/a.py": body, "pkg/b.py": ""})
    (found,) = all_imports(root, ("pkg",))
    assert (found.importer, found.imported, found.at_top, found.commented) == (
        "pkg.a",
        "pkg.b",
        False,
        commented,
    )


def test_the_parent_imports_no_torch() -> None:
    """The runner's side of the process layer (and the modules the session imports for it) never
    imports torch: a case's libraries load in its child, never in the pytest process."""
    modules = ", ".join(f"qlora_core.process.{m}" for m in ("runner", "launch", "side_by_side", "oom_need"))
    code = f"import sys, {modules}; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
    # The check can fail: a module that imports torch is seen.
    code = "import sys, qlora_core.measurement.memory; print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "True"
