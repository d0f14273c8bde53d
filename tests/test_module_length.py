"""No module of the project runs over `MAX_LINES` lines: a longer one is split along its themes into
modules named for them (a test module's shared helpers into a helper module or a conftest.py)."""

from __future__ import annotations

from pathlib import Path

from tests.test_function_length import PACKAGES, ROOT

FOLDERS = (*PACKAGES, "tests")
FILES = ("conftest.py",)
MAX_LINES = 500


def project_modules(root: Path = ROOT) -> list[Path]:
    """Every .py file of `FOLDERS` under `root`, and `FILES`."""
    modules = [path for folder in FOLDERS for path in sorted((root / folder).rglob("*.py"))]
    return modules + [root / name for name in FILES]


def long_modules(paths: list[Path], root: Path = ROOT, limit: int = MAX_LINES) -> dict[str, int]:
    """Path relative to `root` -> line count of every module of `paths` longer than `limit` lines."""
    found: dict[str, int] = {}
    for path in paths:
        lines = len(path.read_text().splitlines())
        if lines > limit:
            found[path.relative_to(root).as_posix()] = lines
    return found


def test_no_module_is_over_the_limit() -> None:
    long = long_modules(project_modules())
    assert not long, f"modules over {MAX_LINES} lines (split them along their themes): {long}"


def test_the_check_names_a_long_module(tmp_path: Path) -> None:
    for folder in FOLDERS:
        (tmp_path / folder / "sub").mkdir(parents=True)
    (tmp_path / "tests" / "sub" / "test_long.py").write_text("x = 1\n" * (MAX_LINES + 1))
    (tmp_path / "reports" / "at_limit.py").write_text("x = 1\n" * MAX_LINES)
    (tmp_path / "conftest.py").write_text("x = 1\n" * (MAX_LINES + 2))
    (tmp_path / "notes.py").write_text("x = 1\n" * (MAX_LINES + 3))  # outside the checked folders
    modules = project_modules(tmp_path)
    assert len(modules) == 3
    assert long_modules(modules, tmp_path) == {
        "tests/sub/test_long.py": MAX_LINES + 1,
        "conftest.py": MAX_LINES + 2,
    }
    assert long_modules(modules, tmp_path, limit=MAX_LINES + 2) == {}
