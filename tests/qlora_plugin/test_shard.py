"""--shard I/N: parsing, every case in exactly one shard, balance, determinism, recorded costs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qlora_core.cases.case import Case
from qlora_core.cases.gpus import PROFILES
from qlora_core.cases.matrix import MATRICES, PlannedCase, build_matrix
from qlora_core.measurement.result import Result
from qlora_plugin.shard import (
    START_S,
    Shard,
    assign_shards,
    case_costs,
    estimated_run_s,
    parse_shard,
    recorded_run_s,
    run_cost_s,
    select_shard,
)
from reports.gate.baseline import save_run_baseline
from reports.run.frame import load_run

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("raw", "shard"), [("1/1", Shard(1, 1)), ("2/3", Shard(2, 3)), (" 7 / 7 ", Shard(7, 7))]
)
def test_parse_shard_reads_index_and_count(raw, shard):
    assert parse_shard(raw) == (shard, "")


@pytest.mark.parametrize("raw", ["0/3", "4/3", "3", "a/b", "1/0", "-1/2", "1/2/3", ""])
def test_parse_shard_refuses_bad_values_naming_the_form(raw):
    shard, problem = parse_shard(raw)
    assert shard is None
    assert "must be I/N with 1 <= I <= N" in problem and repr(raw) in problem


def test_no_shard_given_is_no_problem():
    assert parse_shard(None) == (None, "")


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("tier", MATRICES)
def test_every_case_lands_in_exactly_one_shard(profile, tier):
    cases = build_matrix(PROFILES[profile], tier)
    for count in range(1, 8):
        shards = [select_shard(cases, Shard(i, count), None) for i in range(1, count + 1)]
        ids = [p.case.id for shard in shards for p in shard]
        assert sorted(ids) == sorted(p.case.id for p in cases), (profile, tier, count)
        assert len(ids) == len(set(ids))
        # Matrix order kept within a shard: the session's rounds stay in the usual order.
        order = {p.case.id: k for k, p in enumerate(cases)}
        for shard in shards:
            assert [order[p.case.id] for p in shard] == sorted(order[p.case.id] for p in shard)


def test_a_broken_assignment_would_be_caught():
    # The check above can fail: dropping a shard's cases loses them.
    cases = build_matrix(PROFILES["cpu"], "smoke")
    kept = [p.case.id for i in (1, 2) for p in select_shard(cases, Shard(i, 3), None)]
    assert sorted(kept) != sorted(p.case.id for p in cases)


def test_shards_are_balanced_by_cost_and_deterministic():
    cases = build_matrix(PROFILES["t4"], "default")
    costs = case_costs(cases, None)
    first = assign_shards(cases, costs, 4)
    # Another order of the same cases gives every case the same shard.
    reordered = list(reversed(cases))
    again = assign_shards(reordered, list(reversed(costs)), 4)
    assert {p.case.id: s for p, s in zip(cases, first)} == {p.case.id: s for p, s in zip(reordered, again)}
    loads = [sum(c for c, s in zip(costs, first) if s == k) for k in range(1, 5)]
    # Greedy longest-first: no shard exceeds another by more than the largest single case.
    assert max(loads) - min(loads) <= max(costs)


def test_repeats_weigh_a_case_and_recorded_wall_times_win_over_the_estimate():
    cases = build_matrix(PROFILES["cpu"], "smoke")
    one = case_costs(cases, None)
    assert case_costs(cases, 3) == pytest.approx([3 * c for c in one])
    slow = cases[0].case.id
    recorded = case_costs(cases, None, {slow: 1000.0})
    assert recorded[0] == 1000.0 and recorded[1:] == one[1:]
    # The recorded heavy case sits alone in its shard of 2.
    shard_of = assign_shards(cases, recorded, 2)
    assert [s for s in shard_of].count(shard_of[0]) == 1


def test_the_estimate_grows_with_the_case_size():
    small = Case(model="tiny", batch_size=1, seq_len=64)
    big = Case(model="llama-3.1-8b", batch_size=4, seq_len=2048)
    assert START_S < estimated_run_s(small) < estimated_run_s(big)
    assert estimated_run_s(big.replace(batch_size=8)) > estimated_run_s(big)
    assert estimated_run_s(Case(model="org/unknown-model")) > START_S  # a hub id gets the default size


def test_on_the_cpu_a_case_on_real_text_costs_many_tiny_cases():
    """The CPU tier runs its tiny cases first and SmolLM2 on text last: the estimate that the time
    left is weighed by must tell them apart there (on a GPU both are mostly the child's start)."""
    cases = {p.case.data: p.case for p in build_matrix(PROFILES["cpu"], "smoke")}
    tiny, text = cases["synthetic"], cases["text"]
    assert estimated_run_s(text, "cpu") > 5 * estimated_run_s(tiny, "cpu")  # measured: ~7x
    assert estimated_run_s(text) < 2 * estimated_run_s(tiny)  # the GPU's rate (the default)
    assert run_cost_s(text, {text.id: 30.0}, "cpu") == 30.0  # a recorded time wins on any device


def test_recorded_run_s_reads_mean_wall_times_of_a_run_folder(tmp_path):
    case = Case(model="tiny")
    rows = [Result.for_case(case, "cpu").replaced(wall_s=w, repeat=r) for r, w in enumerate((10.0, 20.0))]
    (tmp_path / "results.jsonl").write_text("".join(r.to_json() + "\n" for r in rows))
    assert recorded_run_s(tmp_path) == {case.id: 15.0}
    with pytest.raises(FileNotFoundError, match="expected a run folder or a baseline file"):
        recorded_run_s(tmp_path / "nowhere")


def test_recorded_run_s_reads_the_wall_times_a_baseline_stores(tmp_path):
    fast, slow, unrecorded = (
        Case(model="tiny"),
        Case(model="tiny", batch_size=4),
        Case(model="tiny", seq_len=64),
    )
    rows = [
        Result.for_case(case, "cpu").replaced(status="ok", wall_s=wall)
        for case, wall in ((fast, 10.0), (slow, 30.0), (unrecorded, None))
    ]
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.jsonl").write_text("".join(r.to_json() + "\n" for r in rows))
    baseline = tmp_path / "cpu.json"
    save_run_baseline(baseline, load_run(run), command="pytest bench")
    assert recorded_run_s(baseline) == {fast.id: 10.0, slow.id: 30.0}
    # The costs it gives balance shards as the folder's do.
    planned = [PlannedCase(c) for c in (fast, slow, unrecorded)]
    assert case_costs(planned, None, recorded_run_s(baseline)) == case_costs(
        planned, None, recorded_run_s(run)
    )


def _collect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "bench", "-p", "no:cacheprovider", "--collect-only", "-q", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_shard_collection_keeps_ids_and_skips_session_tests_until_merge():
    whole = _collect("--matrix", "smoke", "--repeat", "2")
    parts = [_collect("--matrix", "smoke", "--repeat", "2", "--shard", f"{i}/3") for i in (1, 2, 3)]
    for proc in (whole, *parts):
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def case_ids(proc):
        return sorted(line for line in proc.stdout.splitlines() if "::test_case[cpu-" in line)

    assert sorted(i for p in parts for i in case_ids(p)) == case_ids(whole)
    for part in parts:  # both repeats of a case in the same shard
        ids = case_ids(part)
        assert all(i.replace("-r2]", "]") in ids for i in ids)
    bad = _collect("--shard", "4/3")
    assert bad.returncode == 4 and "--shard '4/3' must be I/N" in bad.stderr


def test_shard_costs_must_be_a_run_folder_or_a_baseline(tmp_path):
    proc = _collect("--shard", "1/2", "--shard-costs", str(tmp_path))
    assert proc.returncode == 4 and "--shard-costs" in proc.stderr
    assert "neither a baseline file nor a run folder" in proc.stderr
    (tmp_path / "results.jsonl").write_text(json.dumps({}) + "\n")
    assert _collect("--matrix", "smoke", "--shard", "1/2", "--shard-costs", str(tmp_path)).returncode == 0


def test_a_shard_skips_kernels_claims_and_the_gate_until_the_merge(tmp_path):
    args = (
        "--matrix",
        "smoke",
        "--out",
        str(tmp_path),
        "-rs",
        "-k",
        "test_kernel or test_claim or test_gate",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "bench", "-p", "no:cacheprovider", "--shard", "2/3", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "passed" not in proc.stdout.splitlines()[-1] and "skipped" in proc.stdout.splitlines()[-1]
    assert proc.stdout.count("merge first: a shard holds part of the matrix") >= 3
