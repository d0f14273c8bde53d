"""A session's run folder (its owner: reports.run.folder): the lock removed by the session on every
exit, and the plan it records for its readers (reports.run.completeness)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from qlora_plugin.session import BenchSession
from reports.run.completeness import INCOMPLETE, PLANNED_RUNS
from reports.run.folder import (
    LOCK_FILE,
    read_results_jsonl,
)
from tests.qlora_plugin.test_session import REFERENCE, make_options


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
