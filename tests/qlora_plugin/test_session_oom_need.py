"""--resume and the uncapped rerun of an OOM (qlora_core.process.oom_need) through BenchSession.

The stored row is an OOM under a cap that the host exceeds, as an emulated T4 on an H200 stores
it; on this machine its rerun really runs (the tiny shape on the CPU).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from qlora_core.cases.case import Case
from qlora_core.cases.matrix import PlannedCase
from qlora_core.measurement.result import Result, result_file_name, write_atomic
from qlora_core.process.oom_need import uncapped_file_name
from qlora_plugin.session import CaseRun
from reports.run.folder import CASES_DIR, RESULTS_JSONL, append_line, read_results_jsonl
from tests.qlora_plugin.test_session import make_options, open_quietly

TINY = Case("tiny", seq_len=64, batch_size=2, warmup_steps=1, measured_steps=2)


def stored_oom(run_dir: Path, **changes: object) -> Result:
    """A capped OOM row and its case file, as a session stores them."""
    row = Result.for_case(TINY, "cpu", "ladder:0")
    row.status, row.hardware.memory_cap_gib, row.hardware.gpu_total_gib = "oom", 14.5, 139.8
    row.started_at, row.reason = "2026-01-01T00:00:00+00:00", "training: out of memory"
    row.set_fields(changes)
    write_atomic(run_dir / CASES_DIR / result_file_name(TINY.hash), row.to_json())
    append_line(run_dir / RESULTS_JSONL, row.to_json())
    return row


@pytest.mark.slow
def test_resume_runs_only_a_missing_rerun_and_never_twice(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stored_oom(run_dir)
    run = CaseRun(PlannedCase(TINY, ["ladder:0"]))
    session, _ = open_quietly(make_options(tmp_path, resume=run_dir))
    row = session.run(run)
    session.close()
    assert (row.status, row.needed.needed_status, row.needed.needed_on) == ("oom", "ok", "cpu")
    assert row.started_at == "2026-01-01T00:00:00+00:00"  # the capped run's row, completed
    rerun_file = run_dir / CASES_DIR / uncapped_file_name(TINY.hash)
    assert rerun_file.exists()
    (last,) = read_results_jsonl(run_dir / RESULTS_JSONL)  # the last line for the case wins
    assert last.needed.needed_status == "ok" and last.needed.needed_optimizer_state_bytes

    stamp = rerun_file.stat().st_mtime_ns
    again, _ = open_quietly(make_options(tmp_path, resume=run_dir))
    assert again.run(run).needed.needed_status == "ok"
    again.close()
    assert again.reused == {(TINY.hash, 0)} and rerun_file.stat().st_mtime_ns == stamp


def test_no_oom_rerun_reuses_the_stored_oom_as_it_is(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stored_oom(run_dir)
    options = dataclasses.replace(make_options(tmp_path, resume=run_dir), oom_rerun=False)
    session, _ = open_quietly(options)
    row = session.run(CaseRun(PlannedCase(TINY, ["ladder:0"])))
    session.close()
    assert row.needed.needed_status is None and session.reused == {(TINY.hash, 0)}
    assert not (run_dir / CASES_DIR / uncapped_file_name(TINY.hash)).exists()
