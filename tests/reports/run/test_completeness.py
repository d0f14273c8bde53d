"""reports.run.completeness: a run folder's plan against its stored runs, the incomplete line at the
top of claims.md and tables.md, and `python -m reports` on folders it cannot read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reports.__main__ import EXIT_OK, EXIT_USAGE, main
from reports.render import incomplete_mark
from reports.run.completeness import INCOMPLETE, PLANNED_RUNS, completing_command, incompleteness
from reports.run.folder import read_results_jsonl
from reports.run.frame import load_run
from reports.run.merge import merge_runs

SIX = {f"case-{k}": 1 for k in range(1, 7)}


def test_a_run_with_every_planned_run_is_complete():
    stored = [(case_id, 0) for case_id in SIX]
    assert incompleteness({PLANNED_RUNS: SIX}, stored, "run") is None


def test_missing_cases_are_counted_named_and_completed_by_resume():
    stored = [(case_id, 0) for case_id in list(SIX)[:4]]
    missing = incompleteness({PLANNED_RUNS: SIX}, stored, "out/cpu-smoke-1")
    assert missing is not None and missing.missing_runs == 2
    assert missing.line() == (
        "incomplete: 2 of 6 cases missing (case-5, case-6);"
        " complete it with: pytest bench --resume out/cpu-smoke-1"
    )
    assert missing.as_json()["missing_case_ids"] == ["case-5", "case-6"]


def test_a_case_short_of_its_repeats_is_incomplete_too():
    plan = {"a": 3, "b": 3}
    stored = [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 5)]  # b's repeat 5 is not of this plan
    missing = incompleteness({PLANNED_RUNS: plan}, stored, "run")
    assert missing is not None and missing.missing_cases == () and missing.missing_runs == 2
    assert "1 short of their repeats (b 1 of 3 runs)" in missing.line()


def test_long_lists_are_shortened_in_the_line_and_whole_in_the_json():
    missing = incompleteness({PLANNED_RUNS: SIX}, [], "run")
    assert "(case-1, case-2, case-3, case-4 +2 more)" in missing.line()
    assert len(missing.as_json()["missing_case_ids"]) == 6


@pytest.mark.parametrize(
    "environment",
    [{}, {PLANNED_RUNS: {}}, {PLANNED_RUNS: SIX, "merge": {"sources": ["a", "b"]}}],
    ids=["older folder without a plan", "empty plan", "merged folder"],
)
def test_folders_without_a_plan_of_their_own_are_not_judged(environment):
    assert incompleteness(environment, [], "run") is None


def test_the_completing_command_quotes_the_folder():
    assert completing_command("runs/my run") == "pytest bench --resume 'runs/my run'"


def _plan_folder(run_dir: Path, extra: tuple[str, ...]) -> dict[str, int]:
    """Record a plan of the folder's stored cases plus `extra` in its environment.json."""
    stored = {r.case_id: 1 for r in read_results_jsonl(run_dir / "results.jsonl")}
    plan = {**stored, **dict.fromkeys(extra, 1)}
    env = json.loads((run_dir / "environment.json").read_text())
    (run_dir / "environment.json").write_text(json.dumps({**env, PLANNED_RUNS: plan}))
    return plan


def test_render_marks_claims_and_tables_of_an_incomplete_run_and_not_a_complete_one(
    synthetic_run_dir, capsys
):
    plan = _plan_folder(synthetic_run_dir, ("never-ran-a", "never-ran-b"))
    assert main(["render", str(synthetic_run_dir)]) == EXIT_OK
    expected = (
        f"incomplete: 2 of {len(plan)} cases missing (never-ran-a, never-ran-b); complete it with:"
        f" pytest bench --resume {synthetic_run_dir}"
    )
    for name in ("claims.md", "tables.md"):
        assert (synthetic_run_dir / name).read_text().splitlines()[0] == expected
    assert expected in capsys.readouterr().out  # python -m reports render says it too

    _plan_folder(synthetic_run_dir, ())  # the same folder once every planned case is stored
    assert incomplete_mark(load_run(synthetic_run_dir)) == ""


def test_merge_keeps_no_shards_plan_or_mark(build, tmp_path):
    env = {
        **build.synthetic_environment(),
        PLANNED_RUNS: {"x": 1},
        INCOMPLETE: {"summary": "incomplete: ..."},
    }
    shard = build.write_run_dir(tmp_path / "shard", build.synthetic_results(), None, env)
    merge_runs([shard], tmp_path / "merged", partial=True)
    merged = json.loads((tmp_path / "merged" / "environment.json").read_text())
    assert PLANNED_RUNS not in merged and INCOMPLETE not in merged
    assert merged["shards"][0][PLANNED_RUNS] == {"x": 1}  # kept with its shard


# -- python -m reports on what it cannot read ----------------------------------------------------
@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (
            lambda d: (d / "results.jsonl").write_bytes(b"\xd9 random bytes" * 20),
            "results.jsonl is not text (byte 0xd9",
        ),
        (
            lambda d: (d / "results.jsonl").write_text("hello\n"),
            "results.jsonl holds 1 lines and no result row",
        ),
        (lambda d: (d / "environment.json").write_text("{"), "environment.json is not JSON"),
        (lambda d: (d / "environment.json").write_text("[1]"), "environment.json is not a JSON object"),
        (
            lambda d: (d / "measurements" / "kernels.csv").write_text('a,b\n"x'),
            "measurements/kernels.csv is not a CSV table",
        ),
    ],
)
@pytest.mark.parametrize("verb", ["render", "baseline", "gate", "merge"])
def test_reports_names_the_unreadable_file_without_raw_exception_text(
    build, tmp_path, capsys, verb, damage, words
):
    rows, env = build.synthetic_results()[:2], build.synthetic_environment()
    run_dir = build.write_run_dir(tmp_path / "run", rows, {"kernels": [{"a": 1}]}, env)
    damage(run_dir)
    argv = {
        "render": ["render", str(run_dir)],
        "baseline": ["baseline", str(run_dir), str(tmp_path / "b.json")],
        "gate": ["gate", str(run_dir), str(tmp_path / "b.json")],
        "merge": ["merge", str(run_dir), "--out", str(tmp_path / "merged")],
    }[verb]
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run_dir} cannot be read as a qlora-bench run folder: ") and words in err
    assert "codec" not in err and "Traceback" not in err
    assert not (tmp_path / "merged").exists() and not (tmp_path / "b.json").exists()  # nothing written


def test_a_run_folder_stopped_before_its_first_case_ended_is_named_so(tmp_path, capsys):
    run_dir = tmp_path / "cpu-smoke-run"
    run_dir.mkdir()
    (run_dir / "environment.json").write_text(json.dumps({PLANNED_RUNS: SIX}))
    assert main(["render", str(run_dir)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "holds no finished run yet" in err and f"pytest bench --resume {run_dir}" in err
    assert main(["render", str(tmp_path)]) == EXIT_USAGE  # a folder that is no run folder at all
    assert "has no results.jsonl: not a qlora-bench run folder" in capsys.readouterr().err
