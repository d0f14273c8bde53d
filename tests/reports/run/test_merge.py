"""`python -m reports merge`: shards of one run merged into a folder that renders and gates like the
unsharded run; each refusal (conflicting rows, other profile or tier, missing cases) and flag."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from reports.__main__ import main
from reports.claims import evaluate_all
from reports.gate.baseline import save_run_baseline
from reports.gate.thresholds import Thresholds
from reports.gate.verdict import gate
from reports.render import CLAIMS_MD, render_run
from reports.run.folder import ENVIRONMENT_JSON, RESULTS_JSONL
from reports.run.frame import load_run
from reports.run.merge import MergeError, merge_runs


def _shards(build, tmp_path: Path, count: int = 3, **env_changes) -> tuple[Path, list[Path]]:
    """The synthetic run whole, and split round-robin by case into `count` shard folders."""
    results = build.synthetic_results()
    ids = list(dict.fromkeys(r.case_id for r in results))
    env = {**build.synthetic_environment(), "matrix_case_ids": ids}
    whole = build.write_run_dir(tmp_path / "whole", results, build.synthetic_measurements(), env)
    shards = []
    for k in range(count):
        mine = set(ids[k::count])
        shard_env = {**env, "shard": f"{k + 1}/{count}", "command": f"pytest bench --shard {k + 1}/{count}"}
        shard_env.update(env_changes.get(f"shard{k + 1}", {}))
        # Measurements come from the shard that ran the quality cases: the first one here.
        shards.append(
            build.write_run_dir(
                tmp_path / f"shard{k + 1}",
                [r for r in results if r.case_id in mine],
                build.synthetic_measurements() if k == 0 else None,
                shard_env,
            )
        )
        (shards[-1] / "cases").mkdir()
        for r in results:
            if r.case_id in mine:
                (shards[-1] / "cases" / f"{r.case_hash}-r{r.repeat}.json").write_text(r.to_json())
    return whole, shards


def _verdicts(run):
    return [(c.id, e.condition, e.verdict.value, e.measured) for c, e in evaluate_all(run)]


def test_merged_shards_read_render_and_gate_as_the_whole_run(build, tmp_path):
    whole, shards = _shards(build, tmp_path)
    report = merge_runs(shards, tmp_path / "merged", command="python -m reports merge ...")
    merged, single = load_run(report.out), load_run(whole)
    key = ["case_hash"]
    pd.testing.assert_frame_equal(
        merged.results.sort_values(key).reset_index(drop=True),
        single.results.sort_values(key).reset_index(drop=True),
    )
    assert _verdicts(merged) == _verdicts(single)
    assert report.missing == [] and report.flags == []
    assert len(list((report.out / "cases").glob("*.json"))) == len(single.repeats)
    assert set(merged.measurements) == set(single.measurements)
    env = json.loads((report.out / ENVIRONMENT_JSON).read_text())
    assert [s["shard"] for s in env["shards"]] == ["1/3", "2/3", "3/3"]
    assert env["commands"][:3] == [f"pytest bench --shard {k}/3" for k in (1, 2, 3)]
    assert env["profile"] == "t4" and env["shard"] is None
    baseline = save_run_baseline(tmp_path / "baseline.json", single, command="pytest bench")
    assert baseline["cases"]
    assert gate(tmp_path / "baseline.json", merged, Thresholds(), report.out).passed
    render_run(report.out)
    assert "Partial merge" not in (report.out / CLAIMS_MD).read_text()


def test_the_same_row_in_two_folders_is_kept_once(build, tmp_path):
    whole, shards = _shards(build, tmp_path, 2)
    # A copy of shard 1's rows in shard 2's folder (e.g. a folder copied before resuming): no conflict.
    with (shards[1] / RESULTS_JSONL).open("a") as f:
        f.write((shards[0] / RESULTS_JSONL).read_text())
    report = merge_runs(shards, tmp_path / "merged")
    assert report.runs == len(load_run(whole).repeats)


def test_two_different_results_for_one_case_are_refused_naming_it(build, tmp_path):
    _, shards = _shards(build, tmp_path, 2)
    rows = [json.loads(line) for line in (shards[0] / RESULTS_JSONL).read_text().splitlines()]
    rerun = {**rows[0], "started_at": "2026-01-01T00:00:00", "tokens_per_s": 1.0}
    with (shards[1] / RESULTS_JSONL).open("a") as f:
        f.write(json.dumps(rerun) + "\n")
    with pytest.raises(MergeError, match="different results in two folders") as err:
        merge_runs(shards, tmp_path / "merged")
    assert rows[0]["case_id"] in str(err.value)
    assert not (tmp_path / "merged").exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("field", "value", "words"), [("profile", "l4", "profiles"), ("matrix", "full", "tiers")]
)
def test_shards_of_another_profile_or_tier_are_refused(build, tmp_path, field, value, words):
    _, shards = _shards(build, tmp_path, 2, shard2={field: value})
    with pytest.raises(MergeError, match=f"shards of different {words}") as err:
        merge_runs(shards, tmp_path / "merged")
    assert str(shards[1]) in str(err.value) and value in str(err.value)


def test_shards_of_different_matrices_are_refused(build, tmp_path):
    _, shards = _shards(build, tmp_path, 2, shard2={"matrix_case_ids": ["another-case"]})
    with pytest.raises(MergeError, match="different matrices"):
        merge_runs(shards, tmp_path / "merged")


def test_a_missing_shard_is_refused_naming_its_cases_unless_partial(build, tmp_path):
    _, shards = _shards(build, tmp_path, 3)
    absent = sorted(
        {json.loads(line)["case_id"] for line in (shards[2] / RESULTS_JSONL).read_text().splitlines()}
    )
    with pytest.raises(MergeError, match="are in no folder") as err:
        merge_runs(shards[:2], tmp_path / "refused")
    assert absent[0] in str(err.value) and "--partial" in str(err.value)
    report = merge_runs(shards[:2], tmp_path / "merged", partial=True)
    assert sorted(report.missing or []) == absent
    render_run(report.out)
    claims = (report.out / CLAIMS_MD).read_text()
    assert (
        "**Partial merge** of 2 folders" in claims
        and f"{len(absent)} case(s) of the matrix missing" in claims
    )


def test_different_library_versions_and_gpus_are_flagged_not_refused(build, tmp_path):
    _, shards = _shards(build, tmp_path, 2, shard2={"torch_version": "2.13.0", "gpu_present": "NVIDIA A100"})
    report = merge_runs(shards, tmp_path / "merged")
    assert [f.split(" ")[0] for f in report.flags] == ["gpu_present", "torch_version"]
    assert "2.13.0" in report.flags[1]
    render_run(report.out)
    assert "**Flag**: torch_version differs across shards" in (report.out / CLAIMS_MD).read_text()


def test_a_folder_from_before_shards_needs_partial(build, tmp_path):
    _, shards = _shards(build, tmp_path, 2)
    for shard in shards:
        env = json.loads((shard / ENVIRONMENT_JSON).read_text())
        env.pop("matrix_case_ids")
        (shard / ENVIRONMENT_JSON).write_text(json.dumps(env))
    with pytest.raises(MergeError, match="no folder records its matrix"):
        merge_runs(shards, tmp_path / "refused")
    assert merge_runs(shards, tmp_path / "merged", partial=True).missing is None


def test_merge_refuses_a_non_empty_out_and_a_folder_given_twice(build, tmp_path):
    _, shards = _shards(build, tmp_path, 2)
    with pytest.raises(MergeError, match="not empty"):
        merge_runs(shards, shards[0])
    with pytest.raises(MergeError, match="given twice"):
        merge_runs([shards[0], shards[0]], tmp_path / "merged")


def test_the_merge_command_renders_and_exits_2_on_a_refusal(build, tmp_path, capsys):
    _, shards = _shards(build, tmp_path, 2)
    out = tmp_path / "merged"
    assert main(["merge", *map(str, shards), "--out", str(out)]) == 0
    assert (out / CLAIMS_MD).is_file() and (out / "tables.md").is_file() and (out / "results.csv").is_file()
    assert "merged 2 folders" in capsys.readouterr().out
    env = json.loads((out / ENVIRONMENT_JSON).read_text())
    assert env["command"].startswith("python -m reports merge")
    assert main(["merge", str(shards[0]), "--out", str(tmp_path / "again")]) == 2
    assert "are in no folder" in capsys.readouterr().err


def test_a_merged_folder_gates_from_the_command_line(build, tmp_path):
    whole, shards = _shards(build, tmp_path, 3)
    save_run_baseline(tmp_path / "baseline.json", load_run(whole), command="pytest bench")
    assert main(["merge", *map(str, shards), "--out", str(tmp_path / "merged")]) == 0
    assert main(["gate", str(tmp_path / "merged"), str(tmp_path / "baseline.json")]) == 0
    # The gate still fails a merged run that regressed: a shard's speed rows at half.
    slow_dir = tmp_path / "slow"
    rows = [json.loads(line) for line in (shards[0] / RESULTS_JSONL).read_text().splitlines()]
    slowed = [{**r, "tokens_per_s": r["tokens_per_s"] and r["tokens_per_s"] / 2} for r in rows]
    (shards[0] / RESULTS_JSONL).write_text("".join(json.dumps(r) + "\n" for r in slowed))
    assert main(["merge", *map(str, shards), "--out", str(slow_dir)]) == 0
    assert main(["gate", str(slow_dir), str(tmp_path / "baseline.json")]) == 1
