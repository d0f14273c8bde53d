"""The run folder's lock (qlora_plugin.run_folder): removed by its holder on every exit, never
shared by two sessions, and the plan a session records for its readers (reports.completeness)."""

from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

import pytest

from qlora_plugin.run_folder import LOCK_FILE, RunFolderInUseError, lock_run_dir, unlock_run_dir
from qlora_plugin.session import BenchSession
from reports.completeness import INCOMPLETE, PLANNED_RUNS
from reports.frame import read_results_jsonl
from tests.qlora_plugin.test_session import REFERENCE, make_options


def test_the_holder_removes_the_lock_file_when_it_ends(tmp_path):
    handle = lock_run_dir(tmp_path)
    assert (tmp_path / LOCK_FILE).read_text().startswith("pid ")
    unlock_run_dir(handle, tmp_path)
    assert not (tmp_path / LOCK_FILE).exists() and handle.closed


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


def test_a_closed_session_leaves_no_lock_file(tmp_path):
    session = BenchSession.open(make_options(tmp_path), write_line=lambda _: None)
    assert (session.run_dir / LOCK_FILE).exists()
    session.close()
    assert not (session.run_dir / LOCK_FILE).exists()
    session.close()  # twice is harmless


@pytest.fixture
def reference_copy(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(REFERENCE, run_dir)
    return run_dir


def test_the_environment_records_the_plan_and_what_the_folder_lacks_of_it(reference_copy):
    stored = {r.case_id for r in read_results_jsonl(reference_copy / "results.jsonl")}
    plan = {**dict.fromkeys(sorted(stored), 3), "not-run-yet": 3}
    options = make_options(reference_copy.parent, resume=reference_copy, repeat=3)
    session = BenchSession.open(options, write_line=lambda _: None, planned_runs=plan)
    try:
        env = json.loads((reference_copy / "environment.json").read_text())
        assert env[PLANNED_RUNS] == plan and env["repeat"] == 3 and env["models"] == []
        assert env[INCOMPLETE]["missing_case_ids"] == ["not-run-yet"]
        assert env[INCOMPLETE]["complete_with"] == f"pytest bench --resume {reference_copy}"
        session.finish()
        assert json.loads((reference_copy / "environment.json").read_text())[INCOMPLETE]["missing_runs"] == 3
        assert session.incompleteness().missing_cases == ("not-run-yet",)
        # Planned as stored: nothing lacks, and the environment says so.
        session.planned_runs = dict.fromkeys(stored, 3)
        session.finish()
        assert json.loads((reference_copy / "environment.json").read_text())[INCOMPLETE] is None
        assert session.incompleteness() is None
    finally:
        session.close()
