"""qlora_core.process.lanes: on a real card each shareable case gets a share sized from its estimated need,
the shares running at once fit the card, a case too big to share runs alone, and a lane's OOM
(or a reserved peak near its cap) is never the profile's verdict: the case runs again alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from qlora_core.cases.case import Case, CaseError
from qlora_core.cases.gpus import DetectedGpu, get_profile
from qlora_core.cases.matrix import build_matrix
from qlora_core.measurement.result import Result
from qlora_core.process.lanes import (
    CARD_HEADROOM_GIB,
    OUTSIDE_ALLOCATOR_GIB,
    Lane,
    card_budget_gib,
    creation_gib,
    estimated_need_gib,
    lane_cap_gib,
    lane_rerun_reason,
    lane_share_gib,
    largest_allocation_gib,
    plan_lane,
    set_aside_lane_run,
)
from qlora_core.process.request import RunOptions
from qlora_core.process.runner import run_case
from qlora_core.process.side_by_side import MAX_LANES, auto_lanes
from reports.run.folder import read_results_jsonl

ROOT = Path(__file__).resolve().parents[3]
H100 = DetectedGpu("NVIDIA H100 80GB HBM3", 81559 / 1024, (9, 0), "570.133.20", 1)
H200 = DetectedGpu("NVIDIA H200", 139.8, (9, 0), "580.159.04", 1)
EIGHT_B = Case("llama-3.1-8b", batch_size=4, seq_len=2048, optimizer="adamw_8bit")


def committed_footprints() -> dict[str, tuple[Case, float]]:
    """Case id -> (case, device memory it used on one GPU) from every committed reference run:
    NVML's peak minus the device's use before it, an OOM's uncapped rerun's, a load's reading."""
    found: dict[str, tuple[Case, float]] = {}
    for path in sorted((ROOT / "reports" / "reference").glob("**/results.jsonl")):
        for r in read_results_jsonl(path):
            case = Case.from_dict(r.case)
            if r.hardware.device != "cuda" or case.num_gpus != 1:
                continue
            if r.status == "ok" and r.memory.nvml_peak_gib is not None:
                used = r.memory.nvml_peak_gib - (r.memory.nvml_base_gib or 0.0)
            elif r.status == "ok" and r.memory.load_nvml_gib is not None:
                used = r.memory.load_nvml_gib - (r.memory.nvml_base_gib or 0.0)
            elif (
                r.status == "oom"
                and r.needed.needed_status == "ok"
                and r.needed.needed_nvml_peak_gib is not None
            ):
                used = r.needed.needed_nvml_peak_gib - (r.needed.needed_nvml_base_gib or 0.0)
            else:
                continue
            found[r.case_id] = (case, used)
    return found


def test_the_estimate_is_above_every_committed_measurement_and_not_far_above():
    measured = committed_footprints()
    # the committed runs span what the estimate must cover: the models, checkpointing off, int8,
    # 16-bit LoRA, loads alone, 70B, the real model
    cases = [case for case, _ in measured.values()]
    assert len(measured) >= 50
    assert {c.model for c in cases} >= {"llama-3.2-3b", "llama-3.1-8b", "llama-2-7b", "smollm2-135m-instruct"}
    assert any(not c.gradient_checkpointing for c in cases) and any(c.quant_type == "int8" for c in cases)
    assert any(c.load_only for c in cases) and any(c.quant_type == "none" for c in cases)
    for case_id, (case, used_gib) in measured.items():
        estimate = estimated_need_gib(case)
        assert estimate is not None and estimate >= used_gib, (case_id, estimate, used_gib)
        if case.engine != "sft":  # SFTTrainer's fused LM head holds far less than the logits term
            assert estimate <= 1.35 * used_gib + 0.5, (case_id, estimate, used_gib)


def test_the_estimate_grows_with_what_takes_memory():
    base = estimated_need_gib(EIGHT_B)
    assert base is not None
    assert estimated_need_gib(EIGHT_B.replace(gradient_checkpointing=False)) > 2 * base
    assert estimated_need_gib(EIGHT_B.replace(batch_size=1)) < base
    assert estimated_need_gib(EIGHT_B.replace(quant_type="none", double_quant=False)) > base
    assert estimated_need_gib(EIGHT_B.replace(load_only=True)) < base
    assert estimated_need_gib(Case("some-org/unknown-model")) is None  # no registered shape: alone


def test_on_a_real_80gb_h100_lanes_are_one_per_two_cores_and_each_case_gets_its_own_share():
    h100 = get_profile("h100")
    assert auto_lanes(h100, H100, host_cores=16) == MAX_LANES == 8
    assert auto_lanes(h100, H100, host_cores=6) == 3
    assert auto_lanes(h100, H100, host_cores=1) == 1
    budget = card_budget_gib(h100, H100)
    assert budget == pytest.approx(81559 / 1024 - CARD_HEADROOM_GIB)
    planned = [p for p in build_matrix(h100) if p.shareable]
    lanes = {p.case.id: plan_lane(p.case, h100, H100) for p in planned}
    shared = {cid: lane for cid, lane in lanes.items() if not lane.alone}
    alone = {cid: lane for cid, lane in lanes.items() if lane.alone}
    for lane in lanes.values():
        assert lane.real_card
    for case_id, lane in shared.items():
        case = next(p.case for p in planned if p.case.id == case_id)
        assert lane.share_gib is not None and lane.share_gib <= budget
        assert lane.share_gib == pytest.approx(lane_share_gib(case))
        assert lane.share_gib > estimated_need_gib(case) + largest_allocation_gib(case)
        assert lane.share_gib >= creation_gib(case)  # a cold cache draws the checkpoint on the card
    # the SmolLM2 text cases are small: fifteen of them would fit the card at once
    smol = [lane.share_gib for cid, lane in shared.items() if cid.startswith("smollm2")]
    assert len(smol) == 15 and max(smol) < budget / 15
    # the two ladder steps without checkpointing at b4/b2 s2048 (8B) do not fit beside anything
    big = {cid for cid in alone if "-nogc-" in cid and ("-b4-s2048" in cid or "-b2-s2048" in cid)}
    assert big == set(alone) and len(big) == 2, alone
    assert all(
        "of the card the lanes share" in lane.alone and lane.share_gib is None for lane in alone.values()
    )


def test_creating_a_shapes_checkpoint_is_its_16bit_weights_on_the_device():
    thirteen_b = Case("llama-2-13b")
    assert creation_gib(thirteen_b) > 13.0e9 * 2 / 2**30  # 26 GB of bf16 weights
    # the 13B QLoRA case needs far less than its creation: its share covers the creation
    assert estimated_need_gib(thirteen_b) * 1.5 < creation_gib(thirteen_b) <= lane_share_gib(thirteen_b)
    assert creation_gib(Case("smollm2-135m-instruct", data="text")) == 0.0  # converted on the CPU
    assert creation_gib(Case("llama-3.1-8b", prequantized=True)) == 0.0  # built one tensor at a time


def test_an_emulated_profile_gives_each_lane_its_card_and_the_cpu_no_budget():
    t4 = get_profile("t4")
    lane = plan_lane(EIGHT_B, t4, H100)
    assert lane == Lane(t4.total_gib) and not lane.real_card and not lane.alone
    assert auto_lanes(t4, H100) == int(H100.total_gib // t4.total_gib) == 5
    assert auto_lanes(t4, H200) == MAX_LANES
    assert plan_lane(EIGHT_B, get_profile("cpu"), None) == Lane(None)
    assert card_budget_gib(get_profile("cpu"), None) is None


def test_a_lane_cap_is_its_share_less_the_context_and_what_lives_outside_the_allocator():
    assert lane_cap_gib(10.0, 0.5) == pytest.approx(10.0 - 0.5 - OUTSIDE_ALLOCATOR_GIB)


def _lane_row(status: str = "ok", cap: float | None = 12.0, reserved: float | None = 6.0) -> Result:
    fields = {"status": status, "lane_share_gib": 13.0, "lane_cap_gib": cap, "peak_reserved_gib": reserved}
    return Result.from_dict({"case_id": "c", "case_hash": "h", "profile": "h100", "case": {}, **fields})


def test_a_lane_oom_on_a_real_card_reruns_alone_and_on_an_emulated_one_is_the_verdict():
    case = Case("llama-3.2-3b", batch_size=1, seq_len=512)
    real, emulated = Lane(13.0, real_card=True), Lane(15.0)
    assert "oom sharing the card under a lane share of 13.00 GiB" in lane_rerun_reason(
        case, real, _lane_row("oom")
    )
    assert "cuda_error" in lane_rerun_reason(case, real, _lane_row("cuda_error"))
    assert lane_rerun_reason(case, emulated, _lane_row("oom")) is None  # the profile's cap: its verdict
    assert lane_rerun_reason(case, real, _lane_row("ok")) is None  # well clear of its cap
    assert lane_rerun_reason(case, real, _lane_row("nan")) is None  # numerics do not depend on sharing
    # a reserved peak within the case's largest allocation of the cap: the cap may have bitten
    near = 12.0 - largest_allocation_gib(case) + 0.01
    assert "came within its largest allocation" in lane_rerun_reason(case, real, _lane_row(reserved=near))
    load = Result.from_dict(
        {
            "case_id": "c",
            "case_hash": "h",
            "profile": "h100",
            "case": {},
            "lane_cap_gib": 12.0,
            "load_peak_reserved_gib": 11.9,
        }
    )
    assert lane_rerun_reason(case.replace(load_only=True), real, load) is not None


def test_a_lane_run_set_aside_keeps_its_file_and_log_beside_the_case(tmp_path: Path):
    result_path = tmp_path / "cases" / "abc-r2.json"
    result_path.parent.mkdir()
    result_path.write_text("{}")
    result_path.with_suffix(".log").write_text("log")
    moved = set_aside_lane_run(result_path)
    assert moved.name == "abc-r2-lane.json" and moved.read_text() == "{}"
    assert (tmp_path / "cases" / "abc-r2-lane.log").read_text() == "log"
    assert not result_path.exists() and not result_path.with_suffix(".log").exists()


@pytest.mark.parametrize("share", [0, -1.0, "8"])
def test_a_bad_lane_share_is_refused_before_any_child(tmp_path: Path, share):
    with pytest.raises(CaseError, match=r"lane_share_gib=.* must be a number of GiB > 0"):
        run_case(Case("tiny"), RunOptions(lane_share_gib=share), tmp_path / "r.json")


@pytest.mark.gpu
@pytest.mark.slow
def test_on_a_real_card_a_lane_is_capped_at_its_share_and_not_at_the_profiles(gpu_required, tmp_path: Path):
    """The GPU present, as its own profile: a lane's cap is its share less its measured context,
    recorded as the lane's and never as the profile's; a share too small to train in is an OOM
    under the lane cap, which the same case does not hit alone."""
    from qlora_core.cases.gpus import resolve_profile

    profile, gpu = resolve_profile("auto")
    case = Case("tiny", seq_len=128, warmup_steps=0, measured_steps=3)
    options = RunOptions(profile=profile.name, shared_device=2, lane_share_gib=4.0)
    row = run_case(case, options, tmp_path / "lane.json")
    assert row.status == "ok" and row.hardware.side_by_side == 2, row.reason
    assert row.hardware.memory_cap_gib is None and not row.hardware.emulated
    assert row.hardware.lane_share_gib == 4.0 and row.hardware.context_gib is not None
    assert row.hardware.lane_cap_gib == pytest.approx(lane_cap_gib(4.0, row.hardware.context_gib))
    tight = RunOptions(
        profile=profile.name,
        shared_device=2,
        lane_share_gib=row.hardware.context_gib + OUTSIDE_ALLOCATOR_GIB + 0.001,
    )
    starved = run_case(case.replace(batch_size=8, seq_len=512), tight, tmp_path / "tight.json")
    assert starved.status == "oom" and starved.hardware.memory_cap_gib is None, starved.reason
    assert lane_rerun_reason(case, Lane(tight.lane_share_gib, real_card=True), starved) is not None
    alone = run_case(
        case.replace(batch_size=8, seq_len=512), RunOptions(profile=profile.name), tmp_path / "alone.json"
    )
    assert alone.status == "ok" and alone.hardware.lane_cap_gib is None and gpu is not None, alone.reason
