"""Session-level faults, end to end: `pytest bench` in subprocesses on real tiny CPU cases.

Each fault is recorded as it happened, nothing measured is lost, and a `--resume` afterwards
ends with the same rows (identity and status; timings and measurements aside) as the
uninterrupted run. Every resumed folder is a copy of a finished run, so each resume also starts
on a lock file left by a session that has ended: a stale lock does not block.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reports.run.folder import lock_run_dir, read_results_jsonl

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TWO_TINY_CASES = ["--matrix", "smoke", "-k", "test_case and tiny and nf4 and not fp32"]
# What must match between a resumed run and an uninterrupted one.
IDENTITY = ("case_hash", "status", "profile", "families", "overrides", "case")

# Loaded with -p into the `pytest bench` process: its second append to results.jsonl writes half
# the row, then the disk is "full" (os.write raises ENOSPC), as a real short write would go.
FULL_DISK_PLUGIN = textwrap.dedent(
    """
    import errno
    import os

    _write = os.write
    _calls = {"appends": 0, "failing": False}


    def _write_to_a_full_disk(fd, data):
        if not os.readlink(f"/proc/self/fd/{fd}").endswith("results.jsonl"):
            return _write(fd, data)
        if _calls["failing"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        _calls["appends"] += 1
        if _calls["appends"] == 2:
            _calls["failing"] = True
            return _write(fd, bytes(data[: len(data) // 2]))
        return _write(fd, data)


    os.write = _write_to_a_full_disk
    """
)


def bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "bench", "-p", "no:cacheprovider", *TWO_TINY_CASES, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )


def only_run_dir(out: Path) -> Path:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


def final_rows(run_dir: Path) -> dict[str, dict]:
    """The last row per case, reduced to what a resume must reproduce."""
    rows = read_results_jsonl(run_dir / "results.jsonl")
    return {r.case_id: {k: getattr(r, k) for k in IDENTITY} for r in rows}


def started(run_dir: Path) -> dict[str, str]:
    return {r.case_id: r.started_at for r in read_results_jsonl(run_dir / "results.jsonl")}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of the two cases: the reference every resume is compared with."""
    out = tmp_path_factory.mktemp("finished")
    proc = bench("--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # One progress line per case as it finishes, shown while pytest captures the test's output.
    assert "\n[1/2] cpu-tiny-" in proc.stdout and "\n[2/2] cpu-tiny-" in proc.stdout, proc.stdout
    run_dir = only_run_dir(out)
    assert len(final_rows(run_dir)) == 2 and {r["status"] for r in final_rows(run_dir).values()} == {"ok"}
    return run_dir


@pytest.fixture
def copy_of(finished_run: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / finished_run.name
    shutil.copytree(finished_run, run_dir)
    return run_dir


def resume(run_dir: Path) -> subprocess.CompletedProcess:
    proc = bench("--out", str(run_dir.parent), "--resume", str(run_dir))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_a_last_line_cut_mid_write_is_repaired_and_its_case_reruns(finished_run, copy_of):
    log = copy_of / "results.jsonl"
    first, second = log.read_text().splitlines(keepends=True)
    log.write_text(first + second[:100])
    cut_id = json.loads(second)["case_id"]

    proc = resume(copy_of)
    assert f"case {cut_id}) was cut mid-write; moved to results.jsonl.torn, the case reruns" in proc.stdout
    assert (copy_of / "results.jsonl.torn").read_text() == second[:100] + "\n"
    assert final_rows(copy_of) == final_rows(finished_run)
    before, after = started(finished_run), started(copy_of)
    assert after[cut_id] != before[cut_id]  # reran
    assert [after[k] == before[k] for k in before if k != cut_id] == [True]  # the other reused


def test_a_corrupted_case_file_is_treated_as_not_measured(finished_run, copy_of):
    victim = read_results_jsonl(copy_of / "results.jsonl")[0]
    (copy_of / "cases" / f"{victim.case_hash}.json").write_text('{"case_id": "')

    proc = resume(copy_of)
    assert f"case {victim.case_id} is treated as not measured and reruns" in proc.stdout
    assert "warning: cases/" in proc.stdout  # again in the summary
    assert final_rows(copy_of) == final_rows(finished_run)
    assert started(copy_of)[victim.case_id] != victim.started_at
    assert json.loads((copy_of / "cases" / f"{victim.case_hash}.json").read_text())["status"] == "ok"


def test_a_second_session_on_a_busy_run_folder_is_refused(copy_of):
    log_before = (copy_of / "results.jsonl").read_bytes()
    holder = lock_run_dir(copy_of)  # a live session, as far as the folder can tell
    try:
        proc = bench("--out", str(copy_of.parent), "--resume", str(copy_of))
    finally:
        holder.close()
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout[-3000:]
    assert f"run folder {copy_of} is in use by another qlora-bench session (pid {os.getpid()}" in proc.stdout
    assert (copy_of / "results.jsonl").read_bytes() == log_before  # nothing interleaved


def test_a_full_disk_fails_the_session_keeps_every_row_and_resume_reruns_the_case(finished_run, tmp_path):
    (tmp_path / "full_disk.py").write_text(FULL_DISK_PLUGIN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "out"
    proc = bench("--out", str(out), "-p", "full_disk", env=env)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, proc.stdout[-3000:]
    assert "No space left on device" in proc.stdout and "could not be appended" in proc.stdout
    assert "results can no longer be stored" in proc.stdout  # the session stopped
    run_dir = only_run_dir(out)
    text = (run_dir / "results.jsonl").read_text()
    assert text.endswith("\n") and len(text.splitlines()) == 1  # the first row whole, no torn second
    (stored,) = read_results_jsonl(run_dir / "results.jsonl")
    (lost,) = set(final_rows(finished_run)) - {stored.case_id}
    lost_hash = final_rows(finished_run)[lost]["case_hash"]
    assert json.loads((run_dir / "cases" / f"{lost_hash}.json").read_text())["status"] == "ok"  # measured

    proc = resume(run_dir)
    assert "1 reused" in proc.stdout
    assert final_rows(run_dir) == final_rows(finished_run)


def test_a_report_that_cannot_be_written_fails_the_session_and_keeps_the_results(copy_of):
    log_before = (copy_of / "results.jsonl").read_bytes()
    (copy_of / "claims.md").unlink()
    (copy_of / "claims.md").mkdir()  # render cannot write it
    proc = bench("--out", str(copy_of.parent), "--resume", str(copy_of))
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED, proc.stdout[-3000:]
    assert "2 passed" in proc.stdout  # every case was fine: the report alone fails the session
    assert "REPORTS NOT WRITTEN, the session fails" in proc.stdout
    assert "IsADirectoryError" in proc.stdout and "claims.md" in proc.stdout
    assert (copy_of / "results.jsonl").read_bytes() == log_before
