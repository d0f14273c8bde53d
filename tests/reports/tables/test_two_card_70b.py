"""reports.tables.two_card_70b: the "70B on two 24 GB GPUs" verdict on hand-made l4x2 rows, decided on
the recipe's configuration (FSDP with CPU offload), the same case without offload beside it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from qlora_core.measurement.result import Result
from reports.markdown import fit_width
from reports.tables.lesson import render_tables
from reports.tables.two_card_70b import RUN_COMMAND, section, verdicts

# The matrix's 70B two-card case (families.big_model_multigpu_cases), with and without offload.
BIG = {
    "quant_storage": "bf16", "prepare_kbit": False, "engine": "trainer", "num_gpus": 2, "strategy": "fsdp",
    "prequantized": True, "warmup_steps": 1, "measured_steps": 3,
}  # fmt: skip
RECIPE_ID = "llama-2-70b-nf4-dq-bf16-b1-s512-noprep-qs-bf16-w1m3-trainer-2gpu-fsdp-offload-preq"
PLAIN_ID = "llama-2-70b-nf4-dq-bf16-b1-s512-noprep-qs-bf16-w1m3-trainer-2gpu-fsdp-preq"
NEEDED = "needed (measured uncapped on NVIDIA H200)"


def _row(build: SimpleNamespace, status: str = "ok", profile: str = "l4x2", **fields: Any) -> Result:
    return build.result("llama-2-70b", families="multigpu", status=status, profile=profile, **BIG, **fields)


def _peaks(alloc: float, device: float) -> dict[str, Any]:
    """A two-rank row's peaks: allocated, reserved 0.8 above, NVML `device` over a 0.6 GiB base."""
    return {
        "peak_alloc_gib": alloc,
        "peak_reserved_gib": alloc + 0.8,
        "nvml_base_gib": 0.6,
        "nvml_peak_gib": 0.6 + device,
        "rank_peak_alloc_gib": [alloc, alloc - 0.1],
        "rank_peak_reserved_gib": [alloc + 0.8, alloc + 0.7],
    }


def recipe(build: SimpleNamespace, status: str = "ok", **fields: Any) -> Result:
    """The recipe's row: trained with its shards on the host, rank 0 holding the loaded model too."""
    ran = {
        "params_on_in_training": "cpu",
        "cpu_peak_rss_gib": 61.0,
        "rank_cpu_peak_rss_gib": [61.0, 35.5],
        "tokens_per_s": 120.0,
    }
    return _row(build, status, cpu_offload=True, **build.gpu(), **{**ran, **fields})


def plain_oom(build: SimpleNamespace) -> Result:
    """Without offload: out of memory under the 24 GB cap, what it needed measured uncapped."""
    return _row(build, "oom", **build.gpu(), **build.needed(21.82, 26.61))


def test_holds_when_the_recipe_fits_and_says_what_no_offload_needed(build: SimpleNamespace) -> None:
    (e,) = verdicts(build.run([recipe(build, **_peaks(3.1, 5.2)), plain_oom(build)]))
    assert e.verdict.value == "holds" and e.evidence == (RECIPE_ID, PLAIN_ID)
    assert "l4x2, 2 x 22.49 GiB, emulated on NVIDIA H200: llama-2-70b b1 s512 bf16" in e.condition
    assert e.condition.endswith("FSDP + CPU offload")
    assert f"{RECIPE_ID}: ok, per GPU allocated 3.10, reserved 3.90, device 5.20 GiB" in e.measured
    assert "fits the card: yes (device 5.20 of 22.49 GiB)" in e.measured
    assert "host RAM peak RSS 61.00 GiB (ranks 61.00, 35.50)" in e.measured and "120 tokens/s" in e.measured
    # what the same case needed without offload, labelled as the uncapped rerun's
    assert (
        f"without offload: {PLAIN_ID}: oom, per GPU allocated 21.82, reserved 22.22, device 26.61"
        in e.measured
    )
    assert f"GiB {NEEDED}, fits the card: no (oom under the cap)" in e.measured


def test_refuted_when_the_recipe_runs_out_of_memory_with_what_it_needed(build: SimpleNamespace) -> None:
    oom = recipe(build, "oom", **build.needed(23.0, 25.0))
    (e,) = verdicts(build.run([oom, plain_oom(build)]))
    assert e.verdict.value == "refuted"
    assert e.corrected == (
        "70B FSDP-QLoRA with CPU offload does not fit two l4 cards at this point: each GPU needs per GPU"
        f" allocated 23.00, reserved 23.40, device 25.00 GiB {NEEDED}"
    )
    # no uncapped rerun: the cap is all it can say
    (e,) = verdicts(build.run([recipe(build, "oom", peak_alloc_gib=21.6)]))
    assert e.verdict.value == "refuted" and e.corrected.endswith("needs more than the 22.49 GiB cap")
    assert "without offload: no row of the same case without offload" in e.measured


def test_refuted_when_an_ok_run_is_over_the_card_on_the_device(build: SimpleNamespace) -> None:
    # The allocator cap held, but what the GPU held for it (NVML) is over the L4's 22.49 GiB.
    (e,) = verdicts(build.run([recipe(build, **_peaks(20.5, 22.9))]))
    assert e.verdict.value == "refuted" and "device 22.90 GiB" in e.corrected
    assert "no (device 22.90 of 22.49 GiB)" in e.measured


def test_inconclusive_when_the_offload_was_not_in_effect_or_the_run_failed(build: SimpleNamespace) -> None:
    on_gpu = recipe(build, **_peaks(3.1, 5.2), params_on_in_training="cuda")
    (e,) = verdicts(build.run([on_gpu]))
    assert e.verdict.value == "inconclusive" and "parameters were on cuda in training" in e.why
    crashed = recipe(build, "crashed", reason="NCCL timeout")
    (e,) = verdicts(build.run([crashed]))
    assert e.verdict.value == "inconclusive" and e.why == "the recipe's row ended crashed: NCCL timeout"
    unmeasured = recipe(build)  # ok, but no peak read
    (e,) = verdicts(build.run([unmeasured]))
    assert e.verdict.value == "inconclusive" and "no peak measured" in e.why


def test_not_run_without_the_recipes_row_naming_what_ran_instead(build: SimpleNamespace) -> None:
    (e,) = verdicts(build.run([plain_oom(build)]))
    assert e.verdict.value == "not_run" and e.evidence == (PLAIN_ID,)
    assert "no 70B FSDP-QLoRA row with CPU offload" in e.why and f"this run has {PLAIN_ID}: oom" in e.why
    # rows the verdict does not read: the recipe on two 16 GB T4s, an 8B FSDP row on l4x2
    elsewhere = recipe(build, **_peaks(3.1, 5.2))
    elsewhere.profile = "t4x2"
    small = build.result(
        "llama-3.1-8b",
        families="multigpu",
        profile="l4x2",
        **{**BIG, "prequantized": False, "cpu_offload": True},
    )
    (e,) = verdicts(build.run([elsewhere, small]))
    assert e.verdict.value == "not_run" and f"`{RUN_COMMAND}`" in e.why and e.evidence == ()


def test_tables_md_carries_the_verdict_after_the_multi_gpu_table(build: SimpleNamespace) -> None:
    run = build.run([recipe(build, **_peaks(3.1, 5.2)), plain_oom(build)])
    text = render_tables(run)
    # tables.md holds the section within its line width (markdown.fit_width)
    table, verdict = (
        text.index("## Multi-GPU: per-GPU memory and scaling"),
        text.index(fit_width(section(run))),
    )
    assert table < verdict and "### 70B on two 24 GB GPUs" in section(run)
    assert '"fine-tuning a 70B model on two 24 GB GPUs"' in section(run) and "- **holds** [l4x2" in section(
        run
    )
    # a run of one card has no multi-card row: no verdict paragraph (the section says how to run them)
    single = build.result("llama-3.2-3b", families="compat", profile="t4", **build.gpu())
    assert section(build.run([single])) == "" and "### 70B on two" not in render_tables(build.run([single]))
