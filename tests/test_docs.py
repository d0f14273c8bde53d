"""The docs hold together: the README stays a first screen, every relative link and #anchor of the
pages resolves, the README's claims.md lines are copied from the folder it names, the tier
ceilings the docs quote are the matrix's, no page or module speaks in tracker or sitting numbers
(name the feature or the run folder instead), module docstrings stay short, pointing to docs/
pages whose anchors exist, and the figures the docs quote from the code (tier sizes, profiles,
families, the options and their defaults) are the code's."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

from qlora_core.cases.families import Family
from qlora_core.cases.gpus import PROFILE_NAMES, get_profile
from qlora_core.cases.matrix import DEFAULT_MAX, SHAREABLE_FAMILIES, SMOKE_MAX, build_matrix
from qlora_core.process.request import DEFAULT_TIMEOUT_S
from qlora_core.process.side_by_side import MAX_LANES
from qlora_plugin.options import pytest_addoption
from reports.gate.thresholds import threshold_options

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_MAX_BYTES = 12_000
TRACKER_WORDING = re.compile(r"issue [0-9]|session [0-9]|\blent\b", re.IGNORECASE)
# The command .ci/run proves, and the main one: the README keeps both byte for byte.
TWO_COMMANDS = (
    "pip install torch==2.13.0 -e '.[test]' && pytest bench     # the main job: the matrix + the report",
    "pip install torch==2.13.0 -e '.[test]' && pytest tests     # the tests (CI runs this: .ci/run)",
)
_SKIPPED_DIRS = {"__pycache__", "bench-results", "build", "dist", "node_modules", "site-packages"}
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6} +(.+?) *$", re.MULTILINE)
# A module docstring says what the module is for in a few lines and points to its docs/ page; the
# reasoning and the figures behind it live on that page.
PACKAGES = ("qlora_core", "qlora_plugin", "reports", "tools", "bench")
DOCSTRING_MAX_LINES = 12
_DOC_POINTER = re.compile(r"docs/([\w.-]+\.md)(?:#([\w-]+))?")


def doc_pages(root: Path = ROOT) -> list[Path]:
    """The pages a reader follows links through: the README, docs/, the reference runs' page."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md")), root / "reports/reference/README.md"]


def python_files(root: Path = ROOT) -> list[Path]:
    """Every .py file of the project (hidden folders, caches and run folders left out)."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [
            d
            for d in dirs
            if not d.startswith(".") and d not in _SKIPPED_DIRS and not d.endswith(".egg-info")
        ]
        found += [Path(folder, f) for f in files if f.endswith(".py")]
    return sorted(found)


def heading_anchors(markdown: str) -> set[str]:
    """The #anchors GitHub gives a page's headings (lowercase, punctuation dropped, spaces to
    hyphens, a repeated heading numbered -1, -2, ...); headings inside code blocks are none."""
    anchors: set[str] = set()
    for title in _HEADING.findall(_FENCE.sub("", markdown)):
        slug = re.sub(r"[^\w\- ]", "", title.replace("`", "").strip().lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def broken_links(page: Path) -> list[str]:
    """Each relative link of `page` whose file, or #anchor in that file, does not exist."""
    text = _INLINE_CODE.sub("", _FENCE.sub("", page.read_text()))
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{page.name}: {target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text()):
            broken.append(f"{page.name}: {target} (no heading #{anchor} in {linked.name})")
    return broken


def tracker_wording(path: Path) -> list[str]:
    """Each line of `path` that matches `TRACKER_WORDING`: a tracker's or a sitting's number."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [f"{path}:{i}: {line.strip()}" for i, line in enumerate(lines, 1) if TRACKER_WORDING.search(line)]


def package_modules(root: Path = ROOT) -> list[Path]:
    """Every .py file of the project's packages (`PACKAGES`)."""
    return [p for p in python_files(root) if p.relative_to(root).parts[0] in PACKAGES]


def module_docstring(path: Path) -> str:
    """`path`'s module docstring, "" when it has none."""
    return ast.get_docstring(ast.parse(path.read_text())) or ""


def long_docstrings(paths: list[Path], root: Path = ROOT, limit: int = DOCSTRING_MAX_LINES) -> list[str]:
    """Each module of `paths` whose docstring has more than `limit` lines, with its count."""
    counts = {p.relative_to(root).as_posix(): len(module_docstring(p).splitlines()) for p in paths}
    return [f"{rel}: {n} lines (at most {limit})" for rel, n in counts.items() if n > limit]


def broken_doc_pointers(path: Path, root: Path = ROOT) -> list[str]:
    """Each `docs/PAGE.md#anchor` a module docstring names whose page or heading does not exist."""
    broken = []
    for page, anchor in _DOC_POINTER.findall(module_docstring(path)):
        target = root / "docs" / page
        if not target.exists():
            broken.append(f"{path.name}: docs/{page} (no such file)")
        elif anchor and anchor not in heading_anchors(target.read_text()):
            broken.append(f"{path.name}: docs/{page}#{anchor} (no heading #{anchor} in {page})")
    return broken


def claims_excerpt_mismatches(readme: str, root: Path = ROOT) -> list[str]:
    """The README's claims.md lines (its first ```markdown block) that are not lines of the
    reference folder's claims.md it names just before the block."""
    named = re.search(
        r"`(reports/reference/[^`]+/claims\.md)`[^`]*?```markdown\n(.*?)\n```", readme, re.DOTALL
    )
    if named is None:
        return ["no `reports/reference/.../claims.md` named before a ```markdown block"]
    source = root / named.group(1)
    if not source.exists():
        return [f"{named.group(1)}: no such file"]
    lines = set(source.read_text().splitlines())
    return [
        f"not a line of {named.group(1)}: {line}" for line in named.group(2).splitlines() if line not in lines
    ]


def test_readme_is_a_first_screen_with_the_two_commands():
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, (
        f"README.md is {size} bytes (at most {README_MAX_BYTES}): move detail to docs/"
    )
    lines = README.read_text().splitlines()
    for command in TWO_COMMANDS:
        assert command in lines, f"README.md lost the command line {command!r}"
    assert any(line.startswith("| cpu | default | ") for line in lines), "README.md lost the cpu tier's row"


def test_every_relative_link_and_anchor_resolves():
    assert [p for p in doc_pages() if not p.exists()] == []
    assert [b for page in doc_pages() for b in broken_links(page)] == []


def test_a_missing_file_or_heading_is_reported(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## A run's folder\n\n```\n## not a heading\n```\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md) [ok](other.md#a-runs-folder) [ok](#mine) [web](https://example.org/x)\n"
        "`[code](not-a-link.md)`\n\n## Mine\n\n"
        "[gone](missing.md) [no anchor](other.md#nowhere) [in code](other.md#not-a-heading)\n"
    )
    assert broken_links(page) == [
        "page.md: missing.md (no such file)",
        "page.md: other.md#nowhere (no heading #nowhere in other.md)",
        "page.md: other.md#not-a-heading (no heading #not-a-heading in other.md)",
    ]
    assert heading_anchors("# A\n## A\n## `x.md` (y)\n") == {"a", "a-1", "xmd-y"}


def test_no_page_or_module_cites_tracker_or_sitting_numbers():
    files = [*doc_pages(), *python_files()]
    assert ROOT / "tests" / "test_docs.py" in files and len(files) > 100
    assert [hit for path in files for hit in tracker_wording(path)] == []


def test_tracker_wording_is_found(tmp_path):
    bad = tmp_path / "bad.py"
    # Built from pieces so that this file itself stays clean.
    bad.write_text(
        "\n".join(["# fine", "# see iss" + "ue 11", "# Sess" + "ion 7 ran it", "# the le" + "nt H200"])
    )
    assert [hit.split(":", 2)[1] for hit in tracker_wording(bad)] == ["2", "3", "4"]
    clean = tmp_path / "clean.md"
    clean.write_text("the session's lock; issues of the lesson; the talent; silent\n")
    assert tracker_wording(clean) == []


def test_readme_claims_lines_are_copied_from_the_folder_it_names():
    assert claims_excerpt_mismatches(README.read_text()) == [], (
        "copy the README's claims.md lines again from the folder it names (re-rendered?)"
    )
    edited = "`reports/reference/t4-default-on-h200/claims.md`:\n\n```markdown\n- profile: t4\n```\n"
    assert claims_excerpt_mismatches(edited) == [
        "not a line of reports/reference/t4-default-on-h200/claims.md: - profile: t4"
    ]


def test_the_tier_ceilings_the_docs_quote_are_the_matrix_s():
    usage = (ROOT / "docs" / "usage.md").read_text()
    quoted = re.search(r"`smoke` \(<= (\d+) cases\), `default` \(<= (\d+)\)", usage)
    assert quoted is not None, "docs/usage.md lost the --matrix row's ceilings"
    assert (int(quoted.group(1)), int(quoted.group(2))) == (SMOKE_MAX, DEFAULT_MAX)


def test_the_tier_ceilings_and_sizes_the_matrix_page_and_readme_quote_are_the_matrix_s():
    matrix_md, readme = (ROOT / "docs" / "matrix.md").read_text(), README.read_text()
    ceilings = re.search(
        r"`--matrix smoke` \(at most (\d+) cases.*?`default` \(at most (\d+):", matrix_md, re.DOTALL
    )
    assert ceilings is not None and (int(ceilings[1]), int(ceilings[2])) == (SMOKE_MAX, DEFAULT_MAX)
    assert re.search(rf"`--matrix smoke` runs at most {SMOKE_MAX} cases", readme)
    sizes = re.search(
        r"the t4 profile (\d+), h100 and h200 (\d+), cpu (\d+), or (\d+) on a CPU without", matrix_md
    )
    assert sizes is not None, "docs/matrix.md lost the default tier's sizes"
    cpu = get_profile("cpu")
    assert [int(n) for n in sizes.groups()] == [
        len(build_matrix(get_profile("t4"))),
        len(build_matrix(get_profile("h100"))),
        len(build_matrix(cpu)),
        len(build_matrix(cpu, cpu_dtypes=frozenset({"fp32"}))),
    ]
    assert len(build_matrix(get_profile("h200"))) == len(build_matrix(get_profile("h100")))
    cpu_row = re.search(
        r"\| cpu \| default \| [^|]*?(\d+) cases \|[^|]*?\((\d+) cases with AVX-512, (\d+) with", readme
    )
    assert cpu_row is not None, "README.md lost the cpu tier's sizes"
    assert [int(n) for n in cpu_row.groups()] == [
        len(build_matrix(cpu, cpu_dtypes=frozenset(dtypes)))
        for dtypes in (("fp32",), ("fp32", "bf16"), ("fp32", "bf16", "fp16"))
    ]


def test_the_readme_lists_every_single_card_profile():
    listed = re.search(r"`pytest bench --gpu t4` \(any of (.*?)\)\.\n", README.read_text(), re.DOTALL)
    assert listed is not None, "README.md lost the list of profiles"
    names = re.findall(r"`([\w-]+)`", listed[1])
    assert names == [name for name in PROFILE_NAMES if get_profile(name).count == 1]


def test_the_matrix_page_names_every_family():
    text = (ROOT / "docs" / "matrix.md").read_text()
    unnamed = [f.value for f in Family if f"`{f.value}`" not in text and f"`{f.value}:" not in text]
    assert unnamed == [], f"docs/matrix.md does not name the families {unnamed}"


def pytest_bench_options() -> dict[str, dict]:
    """`pytest bench`'s options as its plugin declares them: flag -> addoption's keyword arguments."""
    declared: dict[str, dict] = {}

    class Group:
        def addoption(self, *flags: str, **kwargs: object) -> None:
            declared.update({flag: kwargs for flag in flags if flag.startswith("--")})

    class Parser:
        def getgroup(self, *_: str) -> Group:
            return Group()

    pytest_addoption(Parser())  # type: ignore[arg-type]
    return declared


def usage_table_flags(usage: str) -> list[str]:
    """The flags the first column of docs/usage.md's options table names."""
    section = usage.split("## Options", 1)[1].split("\n## ", 1)[0]
    cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `--")]
    return [flag for cell in cells for flag in re.findall(r"`(--[\w-]+)", cell)]


def test_the_usage_table_has_every_option_of_pytest_bench_and_its_figures():
    usage = (ROOT / "docs" / "usage.md").read_text()
    declared, documented = pytest_bench_options(), usage_table_flags(usage)
    thresholds = {option.flag for option in threshold_options()}  # one row: "--tokens-per-s-drop-pct ..."
    assert len(declared) > 20 and documented[0] == "--gpu"
    assert sorted(set(declared) - thresholds - set(documented)) == [], "an option is missing from the table"
    assert sorted(set(documented) - set(declared)) == [], "the table names an option pytest bench lacks"
    row = {flag: line for line in usage.splitlines() for flag in re.findall(r"^\| `(--[\w-]+)", line)}
    assert f"(default {DEFAULT_TIMEOUT_S:g})" in row["--case-timeout"]
    assert f"(default `{declared['--out']['default']}/`)" in row["--out"]
    assert f"(at most {MAX_LANES})" in row["--side-by-side"]
    families = row["--side-by-side"].split("(numerics: ", 1)[1].split(")", 1)[0]
    assert set(re.findall(r"`(\w+)`", families)) == SHAREABLE_FAMILIES
    side_by_side = (ROOT / "docs" / "side-by-side.md").read_text()
    assert f"one lane per two\nhost cores (at most {MAX_LANES})" in side_by_side
    assert f"{declared['--out']['default']}/<profile>-<tier>-<time>/" in README.read_text()


def test_module_docstrings_are_short():
    modules = package_modules()
    assert len(modules) > 100
    too_long = long_docstrings(modules)
    assert too_long == [], "move the reasoning to the module's docs/ page and point to it"


def test_a_long_docstring_is_named(tmp_path):
    (tmp_path / "reports").mkdir()
    long = tmp_path / "reports" / "long.py"
    long.write_text('"""' + "\n".join(f"line {i}" for i in range(13)) + '"""\n')
    short = tmp_path / "reports" / "short.py"
    short.write_text('"""One line.\n\nSee docs/gate.md."""\n')
    (tmp_path / "reports" / "none.py").write_text("x = 1\n")
    assert package_modules(tmp_path) == [long, tmp_path / "reports" / "none.py", short]
    assert long_docstrings(package_modules(tmp_path), tmp_path) == ["reports/long.py: 13 lines (at most 12)"]


def test_docstring_pointers_to_docs_resolve():
    assert [b for path in package_modules() for b in broken_doc_pointers(path)] == []


def test_a_broken_docstring_pointer_is_named(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "gate.md").write_text("# Gate\n\n## Noise floors\n")
    mod = tmp_path / "mod.py"
    mod.write_text('"""See docs/gate.md#noise-floors, docs/gate.md#nowhere and docs/gone.md."""\n')
    assert broken_doc_pointers(mod, tmp_path) == [
        "mod.py: docs/gate.md#nowhere (no heading #nowhere in gate.md)",
        "mod.py: docs/gone.md (no such file)",
    ]
