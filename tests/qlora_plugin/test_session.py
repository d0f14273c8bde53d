"""BenchSession without a child process: --force identity, the run folder's lock, whole appends,
and what --resume reuses from a folder that a fault left behind.

The folders resumed here are copies of the committed H200 reference run (real rows and case
files); the end-to-end faults with real CPU cases are in test_session_faults.py.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import pytest

from qlora_core.cases.case import Case
from qlora_core.cases.gpus import get_profile
from qlora_core.cases.matrix import PlannedCase
from qlora_core.measurement.result import Result
from qlora_plugin.options import BenchOptions, parse_force
from qlora_plugin.progress import format_duration
from qlora_plugin.session import BenchSession, CaseRun, ResultNotStoredError
from qlora_plugin.shard import Shard, recorded_run_s
from reports.gate.thresholds import Thresholds
from reports.run.folder import RunFolderInUseError, read_results_jsonl

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "reports" / "reference" / "h200-smoke"


def make_options(out: Path, **changes) -> BenchOptions:
    options = BenchOptions(
        gpu="cpu",
        profile=get_profile("cpu"),
        gpu_present=None,
        matrix="smoke",
        models=(),
        out=out,
        resume=None,
        case_timeout_s=60,
        baseline=None,
        save_baseline=None,
        thresholds=Thresholds(),
        force=(),
        command_line="pytest bench",
    )
    return dataclasses.replace(options, **changes)


def open_quietly(options: BenchOptions) -> tuple[BenchSession, list[str]]:
    lines: list[str] = []
    return BenchSession.open(options, write_line=lines.append), lines


@pytest.fixture
def reference_copy(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(REFERENCE, run_dir)
    return run_dir


def test_forced_case_runs_changed_but_keeps_the_matrix_identity(tmp_path):
    command = "pytest bench --force prepare_kbit=true"
    options = make_options(tmp_path, force=parse_force(["prepare_kbit=true"]), command_line=command)
    session, _ = open_quietly(options)
    planned = PlannedCase(Case("tiny", prepare_kbit=False), ["prepare"])
    executed = session.executed_case(planned)
    assert executed.prepare_kbit is True and planned.case.prepare_kbit is False
    assert executed.hash != planned.case.hash
    env = session.environment()
    assert env["forced"] == {"prepare_kbit": True} and env["commands"] == [options.command_line]
    session.close()


# -- the lock -------------------------------------------------------------------------------------
def test_a_second_session_on_a_run_folder_is_refused_until_the_first_closes(reference_copy):
    first, _ = open_quietly(make_options(reference_copy.parent, resume=reference_copy))
    with pytest.raises(RunFolderInUseError, match=r"in use by another qlora-bench session \(pid \d+"):
        open_quietly(make_options(reference_copy.parent, resume=reference_copy))
    first.close()
    second, _ = open_quietly(make_options(reference_copy.parent, resume=reference_copy))
    second.close()


def test_two_new_sessions_started_together_get_two_folders(tmp_path):
    one, _ = open_quietly(make_options(tmp_path))
    two, _ = open_quietly(make_options(tmp_path))
    assert one.run_dir != two.run_dir and one.run_dir.parent == two.run_dir.parent == tmp_path
    one.close()
    two.close()


def test_a_row_that_cannot_be_stored_is_a_loud_error(tmp_path):
    session, _ = open_quietly(make_options(tmp_path))
    (session.run_dir / "results.jsonl").mkdir()  # any OSError on the append
    result = read_results_jsonl(REFERENCE / "results.jsonl")[0]
    expected = f"case {result.case_id} ran .* --resume {session.run_dir}"
    with pytest.raises(ResultNotStoredError, match=expected):
        session.record(result)
    assert (result.case_hash, result.repeat) not in session.results and not session.results
    session.close()


def test_progress_lines_count_and_estimate_the_time_left_from_recorded_costs(tmp_path):
    """Each run's expected cost is its case's recorded wall time (here --shard-costs: the reference
    run): the time left scales the costs of the runs left by how the runs made compared."""
    rows = read_results_jsonl(REFERENCE / "results.jsonl")[:4]
    session, lines = open_quietly(make_options(tmp_path, shard_costs=REFERENCE))
    session.planned = [CaseRun(PlannedCase(Case.from_dict(r.case), [r.families])) for r in rows]
    recorded = recorded_run_s(REFERENCE)  # each case's mean wall time over its runs there
    walls = [recorded[r.case_id] for r in rows]
    session._opened_at = time.monotonic() - 60  # a minute into the session
    session.record(rows[0])
    assert lines[-1].startswith(f"[1/4] cpu-{rows[0].case_id}  ")
    left = format_duration(60 / walls[0] * sum(walls[1:]))
    assert lines[-1].endswith(f"1:00 elapsed, ~{left} left"), lines[-1]
    # Not 60 s per run x 3 runs left: the runs left cost what they were recorded to cost.
    assert not lines[-1].endswith("~3:00 left")
    session.reused.add((rows[1].case_hash, rows[1].repeat))  # a reused run takes no time
    session.record(rows[1])
    assert lines[-1].endswith(f"1:00 elapsed, ~{format_duration(60 / walls[0] * sum(walls[2:]))} left")
    session.reused = {(r.case_hash, r.repeat) for r in rows}
    session.record(rows[2])
    assert lines[-1].endswith("elapsed, time left unknown")  # nothing run yet to time
    session.close()


def test_without_a_record_the_cost_is_the_shard_estimate_for_the_device(tmp_path):
    from qlora_plugin.shard import estimated_run_s

    rows = read_results_jsonl(REFERENCE / "results.jsonl")[:2]
    session, _ = open_quietly(make_options(tmp_path))
    session.planned = [CaseRun(PlannedCase(Case.from_dict(r.case), [r.families])) for r in rows]
    expected = session._expected_costs()
    assert expected == {(r.case_hash, 0): estimated_run_s(Case.from_dict(r.case), "cpu") for r in rows}
    session.close()


def test_format_duration_reads_as_a_clock():
    assert [format_duration(s) for s in (0, 59.6, 61, 3725, -3)] == [
        "0:00",
        "1:00",
        "1:01",
        "1:02:05",
        "0:00",
    ]


def test_the_environment_records_the_shard_and_the_whole_matrix(tmp_path):
    options = make_options(tmp_path, shard=Shard(2, 3))
    session = BenchSession.open(options, write_line=lambda _: None, matrix_case_ids=["a", "b", "c"])
    env = json.loads((session.run_dir / "environment.json").read_text())
    assert env["shard"] == "2/3" and env["matrix_case_ids"] == ["a", "b", "c"]
    session.close()


# -- resuming a folder left by a fault ------------------------------------------------------------
def test_resume_repairs_a_last_line_cut_mid_write(reference_copy):
    log = reference_copy / "results.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    torn = lines[-1][: len(lines[-1]) // 2]
    log.write_text("".join(lines[:-1]) + torn)
    torn_id = json.loads(lines[-1])["case_id"]

    session, printed = open_quietly(make_options(reference_copy.parent, resume=reference_copy))
    session.close()
    assert f"case {torn_id}) was cut mid-write" in "\n".join(printed)
    assert log.read_text() == "".join(lines[:-1])  # every whole line kept, the file ends whole
    assert (reference_copy / "results.jsonl.torn").read_text() == torn + "\n"
    assert {r.case_id for r in session.stored.values()} == {json.loads(x)["case_id"] for x in lines[:-1]}


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda p: p.write_text('{"case_id": "cut'), "is unreadable (JSONDecodeError"),
        (lambda p: p.write_text("[]"), "is unreadable (ValueError: expected a JSON object"),
        (lambda p: p.unlink(), "is missing"),
        (
            lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "status": "crashed"})),
            "does not match its row",
        ),
    ],
)
def test_resume_reruns_a_case_whose_case_file_is_damaged(reference_copy, damage, problem):
    rows = read_results_jsonl(reference_copy / "results.jsonl")
    victim = rows[0]  # its first repeat: cases/<hash>.json (later repeats: <hash>-rK.json)
    damage(reference_copy / "cases" / f"{victim.case_hash}.json")
    session, printed = open_quietly(make_options(reference_copy.parent, resume=reference_copy))
    session.close()
    assert (victim.case_hash, victim.repeat) not in session.stored and len(session.stored) == len(rows) - 1
    (warning,) = session.warnings
    assert problem in warning and f"case {victim.case_id} is treated as not measured and reruns" in warning
    assert any(warning in line for line in printed)


def test_a_run_is_named_as_its_test_is(reference_copy):
    # The summary's slowest runs: repeats of one case must read apart, as their test ids do.
    from qlora_plugin.session import run_label

    rows = read_results_jsonl(reference_copy / "results.jsonl")
    labels = [run_label(r) for r in rows]
    assert len(set(labels)) == len(rows)
    first = rows[0]
    assert run_label(first) == first.case_id
    assert run_label(first.replaced(repeat=2)) == f"{first.case_id}-r3"


@pytest.mark.slow
def test_shareable_runs_go_side_by_side_once_and_the_rest_alone(tmp_path):
    """The first shareable run takes every shareable run still to make with it (here 3, two at a
    time); each is recorded once, and its own test item then gets the stored row; a case of
    another family still runs alone."""
    session, lines = open_quietly(make_options(tmp_path, side_by_side=2))
    tiny = Case("tiny", seq_len=32, warmup_steps=0, measured_steps=2)
    shareable = [CaseRun(PlannedCase(tiny.replace(seed=s), ["quality"])) for s in range(3)]
    alone = CaseRun(PlannedCase(tiny.replace(seed=9), ["speed"]))
    session.planned = [shareable[0], alone, *shareable[1:]]
    try:
        first = session.run(shareable[0])
        assert len(session.results) == 3 and first.hardware.side_by_side == 2
        assert [session.run(r) for r in shareable[1:]] == [
            session.results[(r.planned.case.hash, 0)] for r in shareable[1:]
        ]
        after = session.run(alone)  # the probe spare waited through the group: still the one used
        assert after.hardware.side_by_side is None and after.timing.warm_spare is True
    finally:
        session.close()
    rows = read_results_jsonl(session.run_dir / "results.jsonl")
    assert sorted(r.case_id for r in rows) == sorted(r.planned.case.id for r in [*shareable, alone])
    assert sum(1 for line in lines if line.startswith("[")) == 4


def _alone_row(own_peak_gib: float) -> Result:
    """A row that ran alone on the GPU: 8.0 GiB device-wide over the base, its own line `own`."""
    nvml = {"nvml_peak_gib": 8.5, "nvml_base_gib": 0.5, "nvml_own_peak_gib": own_peak_gib}
    return Result.from_dict(
        dict(case_id="a", case_hash="h", profile="t4", case={}, device="cuda", context_gib=0.6, **nvml)
    )


def test_a_gpu_session_shares_only_after_a_row_alone_showed_its_own_nvml_line_agrees(tmp_path):
    t4 = get_profile("t4")
    session, lines = open_quietly(make_options(tmp_path, gpu="t4", profile=t4, side_by_side=4))
    run = CaseRun(PlannedCase(Case("tiny"), ["quality"]))
    try:
        assert not session._shares(run)  # no row yet: the first shareable case runs alone, quietly
        assert not any("shareable cases run alone" in line for line in lines)
        session.results[("h", 0)] = _alone_row(own_peak_gib=7.0)  # its own line disagreed
        assert not session._shares(run) and not session._shares(run)
        assert sum("shareable cases run alone" in line for line in lines) == 1  # said once
        session.results[("h2", 0)] = _alone_row(own_peak_gib=8.0)
        assert session._shares(run)
    finally:
        session.close()
