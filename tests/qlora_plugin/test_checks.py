"""The shared bench checks pass on real measurements and fail on each kind of broken one.

Real rows: the H200 reference run committed in reports/reference/h200-smoke (CUDA, 16-bit and
4-bit cases). Broken rows are those rows with one figure made inconsistent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qlora_core.cases.case import Case
from qlora_core.measurement.result import Result
from qlora_core.process.distributed import merge_ranks
from qlora_plugin.checks import (
    assert_adapters_only_train,
    assert_baseline_reproduces_run,
    assert_memory_consistent,
    assert_ranks_consistent,
)
from reports.gate.baseline import make_baseline
from reports.run.folder import read_results_jsonl
from reports.run.frame import RunData, load_run

REFERENCE = Path(__file__).resolve().parents[2] / "reports" / "reference" / "h200-smoke"


@pytest.fixture(scope="module")
def reference_rows() -> list[Result]:
    rows = read_results_jsonl(REFERENCE / "results.jsonl")
    assert rows and all(r.status == "ok" and r.hardware.device == "cuda" for r in rows)
    return rows


@pytest.fixture
def quantized(reference_rows: list[Result]) -> Result:
    # The 3B shape's row: its figures are GiB-sized, so each broken value below is clearly wrong.
    return next(
        r for r in reference_rows if r.case["quant_type"] == "nf4" and r.case["model"] == "llama-3.2-3b"
    )


def test_real_rows_pass(reference_rows: list[Result]) -> None:
    for row in reference_rows:
        assert_memory_consistent(row)
        assert_adapters_only_train(row)


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ({"peak_alloc_gib": 0.5}, "below the .* held after LoRA"),
        ({"peak_reserved_gib": 0.1}, "reserved peak .* < allocated peak"),
        ({"nvml_peak_gib": 0.2}, "NVML saw .* less than the allocator"),
        ({"nvml_peak_gib": None}, r"not measured: \['nvml_peak_gib'\]"),
        ({"quantized_params": 0}, "no parameter counted in 4-bit"),
        ({"quant_stats_bytes": None}, "without quantization statistics"),
        ({"weight_bytes": 1000}, "do not include the statistics"),
    ],
)
def test_memory_check_fails_on_inconsistent_cuda_figures(quantized: Result, broken, message) -> None:
    with pytest.raises(AssertionError, match=message):
        assert_memory_consistent(quantized.replaced(**broken))


def test_memory_check_on_the_cpu_compares_peak_and_stage_rss(quantized: Result) -> None:
    cpu = quantized.replaced(device="cpu", lora_alloc_gib=0.45, cpu_peak_rss_gib=0.47)
    assert_memory_consistent(cpu)
    with pytest.raises(AssertionError, match=r"peak RSS .* is below the RSS after LoRA"):
        # e.g. ru_maxrss read in the wrong unit
        assert_memory_consistent(cpu.replaced(cpu_peak_rss_gib=0.47 / 1024))
    with pytest.raises(AssertionError, match="CPU memory not measured"):
        assert_memory_consistent(cpu.replaced(cpu_peak_rss_gib=None))


@pytest.mark.parametrize(
    ("trainable", "total", "message"),
    [(0, 10**9, "not counted"), (10**9, 10**9, "base model is not frozen"), (5, None, "not counted")],
)
def test_adapter_check_fails_when_the_base_trains_or_nothing_was_counted(
    quantized: Result, trainable, total, message
) -> None:
    with pytest.raises(AssertionError, match=message):
        assert_adapters_only_train(quantized.replaced(trainable_params=trainable, total_params=total))


def test_baseline_check_passes_on_its_own_run_and_fails_on_a_changed_one() -> None:
    run = load_run(REFERENCE)
    baseline = make_baseline(run.results, command="pytest bench", environment=run.environment)
    assert_baseline_reproduces_run(baseline, run)

    case_id = next(iter(baseline["cases"]))
    lost_status = {**baseline, "cases": {**baseline["cases"], case_id: {**baseline["cases"][case_id]}}}
    lost_status["cases"][case_id]["status"] = "oom"
    with pytest.raises(AssertionError, match=f"{case_id}: status changed oom -> ok"):
        assert_baseline_reproduces_run(lost_status, run)

    dropped = {**baseline, "cases": {k: v for k, v in baseline["cases"].items() if k != case_id}}
    with pytest.raises(AssertionError, match=f"{case_id}: in this run but not in the baseline"):
        assert_baseline_reproduces_run(dropped, run)

    doubled = RunData(run.results.assign(peak_alloc_gib=run.results["peak_alloc_gib"] * 2), run.environment)
    with pytest.raises(AssertionError, match="peak_alloc_gib rose"):
        assert_baseline_reproduces_run(baseline, doubled)


def test_ranks_check_passes_a_merged_row_and_fails_each_broken_one(quantized: Result) -> None:
    """Two real CUDA rows as the ranks of a DDP case, merged as the runner does."""
    case = Case.from_dict(quantized.case).replace(engine="trainer", num_gpus=2, strategy="ddp")
    ranks = [quantized.replaced(case=case.to_dict()) for _ in range(2)]
    ranks[1].memory.peak_alloc_gib += 0.5
    ranks[1].memory.peak_reserved_gib += 0.5
    merged = merge_ranks(case, quantized.profile, "multigpu", ranks)
    assert_ranks_consistent(merged)
    broken = {
        "rank outcomes": merged.replaced(rank_statuses=["ok", "crashed"]),
        "not the largest": merged.replaced(peak_alloc_gib=ranks[0].memory.peak_alloc_gib),
        "reserved < allocated": merged.replaced(rank_peak_reserved_gib=[0.0, 0.0]),
        "per-rank peaks not measured": merged.replaced(rank_peak_alloc_gib=[None, 1.0]),
        "ranks merged": merged.replaced(world_size=1),
    }
    for words, row in broken.items():
        with pytest.raises(AssertionError, match=words):
            assert_ranks_consistent(row)
