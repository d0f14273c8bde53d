"""The run folder's owner (reports.run.folder): schema checks and migrations, whole-line appends
under the lock, reads that name what they leave out, and no writer that goes around it."""

from __future__ import annotations

import ast
import fcntl
import json
import multiprocessing
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qlora_core.cases.case import LATER_FIELD_DEFAULTS, LATER_FIELDS, Case
from qlora_core.measurement.result import RESULT_SCHEMA_VERSION, Result
from reports.__main__ import main as reports_main
from reports.run.folder import (
    CASE_FIELDS_ADDED,
    CASES_DIR,
    ENVIRONMENT_JSON,
    ENVIRONMENT_SCHEMA_VERSION,
    LOCK_FILE,
    MEASUREMENTS_DIR,
    RESULT_MIGRATIONS,
    RESULTS_CSV,
    RESULTS_JSONL,
    RESULTS_PARQUET,
    RunFolderInUseError,
    SchemaError,
    append_line,
    append_result,
    case_file_problem,
    holding_run_dir,
    lock_run_dir,
    read_environment,
    read_results,
    result_from_row,
    unlock_run_dir,
    write_environment,
)
from reports.run.frame import load_run

ROOT = Path(__file__).resolve().parents[3]
REFERENCE = ROOT / "reports" / "reference" / "h200-smoke"
# A row stored at schema 1 before the later Case fields existed (the reference runs have such rows).
V1_ROW: dict = next(
    row
    for row in map(json.loads, (REFERENCE / RESULTS_JSONL).read_text().splitlines())
    if row["schema_version"] == 1 and "cpu_offload" not in row["case"]
)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A copy of a reference run folder (never written in place)."""
    copy = tmp_path / "run"
    # without its reports: a render that should be refused must leave none behind
    shutil.copytree(REFERENCE, copy, ignore=shutil.ignore_patterns("plots", "*.md"))
    return copy


def write_rows(run_dir: Path, *rows: dict) -> None:
    (run_dir / RESULTS_JSONL).write_text("".join(json.dumps(r) + "\n" for r in rows))


# -- schema ------------------------------------------------------------------------------------------
def test_a_row_of_a_newer_schema_is_refused_naming_both_versions(run_dir, capsys):
    newer = {**V1_ROW, "schema_version": RESULT_SCHEMA_VERSION + 1, "a_later_field": 1.0}
    write_rows(run_dir, V1_ROW, newer)
    expected = (
        f"results.jsonl line 2: schema_version {RESULT_SCHEMA_VERSION + 1} is newer than this"
        f" qlora-bench reads \\({RESULT_SCHEMA_VERSION}\\)"
    )
    with pytest.raises(SchemaError, match=expected):
        read_results(run_dir / RESULTS_JSONL)
    with pytest.raises(SchemaError, match=expected):
        load_run(run_dir)
    assert reports_main(["render", str(run_dir)]) == 2
    newer = f"schema_version {RESULT_SCHEMA_VERSION + 1} is newer than this qlora-bench reads"
    assert f"{newer} ({RESULT_SCHEMA_VERSION})" in capsys.readouterr().err
    assert not (run_dir / "wall_time.md").exists()  # refused before anything is written


def test_an_environment_of_a_newer_schema_is_refused(run_dir, capsys):
    environment = json.loads((run_dir / ENVIRONMENT_JSON).read_text())
    assert "schema_version" not in environment  # written before environment.json had one: version 1
    assert read_environment(run_dir) == environment
    (run_dir / ENVIRONMENT_JSON).write_text(json.dumps({**environment, "schema_version": 2}))
    with pytest.raises(SchemaError, match=r"schema_version 2 is newer than this qlora-bench reads \(1\)"):
        read_environment(run_dir)
    assert reports_main(["render", str(run_dir)]) == 2
    assert "environment.json: schema_version 2 is newer" in capsys.readouterr().err


def test_an_older_row_is_migrated_to_this_schema(run_dir):
    write_rows(run_dir, V1_ROW)
    (result,) = read_results(run_dir / RESULTS_JSONL).results
    assert result.schema_version == RESULT_SCHEMA_VERSION == 2
    missing = [name for name in LATER_FIELDS if name not in V1_ROW["case"]]
    assert missing and all(result.case[name] == LATER_FIELD_DEFAULTS[name] for name in missing)
    # The migration reads the missing fields as the hash does: the row keeps its case's identity.
    assert Case.from_dict(result.case).hash == V1_ROW["case_hash"]
    # ...and the frame has them as values, not as "not recorded".
    frame = load_run(run_dir).results
    assert list(frame["cpu_offload"]) == [False] and list(frame["engine"]) == [V1_ROW["case"]["engine"]]


def test_every_older_schema_has_its_migration_and_every_later_case_field_one():
    assert set(RESULT_MIGRATIONS) == set(range(1, RESULT_SCHEMA_VERSION))
    filled = {name for names in CASE_FIELDS_ADDED.values() for name in names}
    assert filled == set(LATER_FIELDS), "a Case field added later needs a schema version and a migration"


def test_a_version_that_is_none_is_a_line_left_out_and_named(run_dir):
    write_rows(run_dir, {**V1_ROW, "schema_version": "2"}, V1_ROW)
    stored = read_results(run_dir / RESULTS_JSONL)
    assert len(stored.results) == 1
    assert stored.notes == [
        "results.jsonl line 1: not a result row (schema_version '2' is not a version (an integer"
        " from 1)); skipped"
    ]


# -- unknown keys --------------------------------------------------------------------------------------
def test_result_from_dict_refuses_a_key_that_is_not_a_field():
    row = json.loads(Result.from_dict({**V1_ROW, "schema_version": 2}).to_json())
    assert Result.from_dict(row).to_json() == json.dumps(row)
    with pytest.raises(ValueError, match=r"not a field of Result: peak_gib, oops \(row of schema_version 2"):
        Result.from_dict({**row, "peak_gib": 1.0, "oops": 2})


def test_a_stored_row_with_unknown_keys_is_read_without_them_and_named(run_dir, capsys):
    write_rows(run_dir, {**V1_ROW, "peak_gib": 1.0})
    result, note = result_from_row({**V1_ROW, "peak_gib": 1.0}, "a row")
    assert (
        note
        == "a row: peak_gib not a field of this qlora-bench's Result (schema_version 2); read without them"
    )
    assert result.case_id == V1_ROW["case_id"]
    stored = read_results(run_dir / RESULTS_JSONL)
    assert [r.case_id for r in stored.results] == [V1_ROW["case_id"]]
    assert stored.notes == [f"results.jsonl line 1: {note.removeprefix('a row: ')}"]
    assert load_run(run_dir).notes == stored.notes
    assert reports_main(["render", str(run_dir)]) == 0
    assert "note: results.jsonl line 1: peak_gib not a field" in capsys.readouterr().out


def test_lines_that_are_not_rows_are_named_with_their_line(run_dir):
    text = json.dumps(V1_ROW) + "\n" + '{"case_id": "x", "sta' + "\n" + "[1, 2]\n" + '{"a": 1}\n'
    (run_dir / RESULTS_JSONL).write_text(text)
    stored = read_results(run_dir / RESULTS_JSONL)
    assert len(stored.results) == 1
    assert [n.split(":")[0] for n in stored.notes] == [f"results.jsonl line {n}" for n in (2, 3, 4)]
    assert "not JSON (a line cut mid-write?)" in stored.notes[0]
    assert "not a result row" in stored.notes[1] and "not a result row" in stored.notes[2]


def test_a_case_file_of_a_newer_schema_cannot_vouch_for_its_row(run_dir):
    (result,) = [r for r in read_results(run_dir / RESULTS_JSONL).results if r.status == "ok"][:1]
    assert case_file_problem(run_dir, result) is None
    path = run_dir / CASES_DIR / f"{result.case_hash}.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "schema_version": 9}))
    assert "schema_version 9 is newer than this qlora-bench reads" in case_file_problem(run_dir, result)


def test_the_environment_is_written_stamped_with_its_schema(tmp_path):
    write_environment(tmp_path, {"profile": "cpu", "schema_version": 0})
    written = json.loads((tmp_path / ENVIRONMENT_JSON).read_text())
    assert written == {"schema_version": ENVIRONMENT_SCHEMA_VERSION, "profile": "cpu"}


# -- the lock and whole appends ------------------------------------------------------------------------
def test_the_holder_removes_the_lock_file_when_it_ends(tmp_path):
    handle = lock_run_dir(tmp_path)
    assert (tmp_path / LOCK_FILE).read_text().startswith("pid ")
    unlock_run_dir(handle, tmp_path)
    assert not (tmp_path / LOCK_FILE).exists() and handle.closed
    with holding_run_dir(tmp_path), pytest.raises(RunFolderInUseError, match="in use by another"):
        lock_run_dir(tmp_path)
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_session_that_locked_the_removed_file_takes_the_new_one(tmp_path):
    first = lock_run_dir(tmp_path)
    late = (tmp_path / LOCK_FILE).open("a+")  # opened just before the holder removed it
    unlock_run_dir(first, tmp_path)
    fcntl.flock(late, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the removed file's lock is free to take...
    second = lock_run_dir(tmp_path)  # ...so a check of the path is what keeps the lock exclusive
    with pytest.raises(RunFolderInUseError):
        lock_run_dir(tmp_path)
    late.close()
    unlock_run_dir(second, tmp_path)


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    code = (
        "import os, sys; from pathlib import Path; from reports.run.folder import lock_run_dir;"
        " lock_run_dir(Path(sys.argv[1])); os.kill(os.getpid(), 9)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "pid" in (tmp_path / LOCK_FILE).read_text()  # the dead holder's note is still there
    lock_run_dir(tmp_path).close()


def test_append_line_rolls_back_a_write_cut_short(tmp_path):
    path = tmp_path / RESULTS_JSONL
    append_line(path, '{"case_id": "a"}')
    before = path.read_bytes()
    # A real short write: the kernel stops at the file-size limit (EFBIG), as a full disk would.
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) + 100, hard))
    try:
        with pytest.raises(OSError, match="too large"):
            append_line(path, "x" * 1000)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert path.read_bytes() == before


def _append_many(path: str, mark: str, lines: int, line_bytes: int) -> None:
    for k in range(lines):
        append_line(Path(path), json.dumps({"writer": mark, "k": k, "pad": mark * line_bytes}))


def test_two_concurrent_appenders_give_whole_lines(tmp_path):
    path = tmp_path / RESULTS_JSONL
    lines, line_bytes = 60, 256 * 1024  # lines far above a pipe's atomic write size
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_append_many, args=(str(path), m, lines, line_bytes)) for m in "ab"]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    rows = [json.loads(line) for line in path.read_text().splitlines()]  # every line whole JSON
    for mark in "ab":
        assert [r["k"] for r in rows if r["writer"] == mark] == list(range(lines))
        assert all(len(r["pad"]) == line_bytes for r in rows if r["writer"] == mark)


def test_an_append_waits_for_the_results_file_lock(tmp_path):
    path = tmp_path / RESULTS_JSONL
    path.write_text("")
    context = multiprocessing.get_context("spawn")
    with path.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another appender mid-write
        writer = context.Process(target=_append_many, args=(str(path), "w", 1, 10))
        writer.start()
        time.sleep(1.5)
        assert path.read_text() == ""  # waited, did not write beside the holder
        fcntl.flock(held, fcntl.LOCK_UN)
    writer.join(timeout=60)
    assert writer.exitcode == 0 and json.loads(path.read_text())["writer"] == "w"


def test_append_result_adds_one_row_that_reads_back(tmp_path):
    result, _ = result_from_row(V1_ROW)
    append_result(tmp_path, result)
    append_result(tmp_path, result)
    assert [r.to_json() for r in read_results(tmp_path / RESULTS_JSONL).results] == [result.to_json()]


# -- no writer goes around the owner -------------------------------------------------------------------
SPELLED = {RESULTS_JSONL, RESULTS_CSV, RESULTS_PARQUET, ENVIRONMENT_JSON, LOCK_FILE}
FOLDERS = {CASES_DIR, MEASUREMENTS_DIR}
OWNER = ROOT / "reports" / "run" / "folder.py"
LAYOUT_NAMES = {
    "RESULTS_JSONL",
    "RESULTS_CSV",
    "RESULTS_PARQUET",
    "ENVIRONMENT_JSON",
    "CASES_DIR",
    "MEASUREMENTS_DIR",
    "LOCK_FILE",
}
SCANNED = ("qlora_core", "qlora_plugin", "reports", "tools", "bench", "conftest.py")
# Files that open another file for appending, not a run folder's: the file and what it opens.
APPENDS_ELSEWHERE = {"qlora_core/models/cache.py": "the model cache's build lock"}


def _is_append_mode(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and "a" in node.value
        and set(node.value) <= set("rwxabt+")
    )


def around_the_owner(source: str) -> list[str]:
    """Where `source` writes or names the run folder's files without `reports.run.folder`: a file
    opened for appending, O_APPEND, a layout name defined again, a layout file name spelled out,
    `/ "cases"` or `/ "measurements"`."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            modes = [*node.args[:2], *(k.value for k in node.keywords if k.arg == "mode")]
            if name == "open" and any(_is_append_mode(m) for m in modes):
                found.append((node.lineno, "opened for appending"))
        elif isinstance(node, ast.Attribute) and node.attr == "O_APPEND":
            found.append((node.lineno, "O_APPEND"))
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", "") in LAYOUT_NAMES for t in node.targets):
            found.append((node.lineno, "a layout name defined again"))
        elif isinstance(node, ast.Constant) and node.value in SPELLED:
            found.append((node.lineno, f"{node.value!r} spelled out"))
        elif (
            isinstance(node, ast.BinOp)
            and isinstance(node.op, ast.Div)
            and isinstance(node.right, ast.Constant)
            and node.right.value in FOLDERS
        ):
            found.append((node.lineno, f"/ {node.right.value!r}"))
    return [f"line {line}: {what}" for line, what in sorted(found, key=lambda item: item[0])]


def test_the_check_finds_a_writer_that_goes_around_the_owner():
    sample = (
        'with (args.out / "results.jsonl").open("a") as f:\n'
        "    f.write(row)\n"
        'path = args.out / "cases" / name\n'
        "fd = os.open(p, os.O_WRONLY | os.O_APPEND)\n"
        'open(p, mode="ab")\n'
        'open(p, "r")\n'
        'CASES_DIR = "cases"\n'
    )
    assert around_the_owner(sample) == [
        "line 1: opened for appending",
        "line 1: 'results.jsonl' spelled out",
        "line 3: / 'cases'",
        "line 4: O_APPEND",
        "line 5: opened for appending",
        "line 7: a layout name defined again",
    ]


def test_every_writer_and_reader_goes_through_the_owner():
    files = [ROOT / name for name in SCANNED if (ROOT / name).is_file()]
    files += [p for name in SCANNED for p in sorted((ROOT / name).rglob("*.py"))]
    assert len(files) > 50
    found = {}
    for path in files:
        name = str(path.relative_to(ROOT))
        problems = [] if path == OWNER else around_the_owner(path.read_text())
        if name in APPENDS_ELSEWHERE:
            problems = [p for p in problems if not p.endswith("opened for appending")]
        if problems:
            found[name] = problems
    assert found == {}
