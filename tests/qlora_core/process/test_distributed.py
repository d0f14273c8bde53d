"""Multi-GPU cases: the accelerate config, the rank merge, and on the CPU a 2-process
case launched through `accelerate launch` (gloo, DDP: accelerate's FSDP plugin refuses the CPU)
end to end, a rank killed mid-run and a timeout, each leaving no process of the launch behind.
FSDP on two GPUs: the `gpu` tests at the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from accelerate.commands.config.config_args import ClusterConfig

import qlora_core
from qlora_core.cases.case import Case, CaseError
from qlora_core.measurement.result import Result, read_result
from qlora_core.models import Prequant
from qlora_core.models.load import load_on_meta
from qlora_core.models.resolve import resolve_model
from qlora_core.process.distributed import (
    accelerate_config,
    accelerate_launch_argv,
    config_path,
    first_failed_rank,
    free_port,
    launch_command,
    loads_on_rank0_only,
    merge_ranks,
    rank_result_path,
)
from qlora_core.process.request import ChildRequest, RunOptions
from qlora_core.process.runner import run_case

DDP = Case(
    "tiny", seq_len=32, batch_size=2, warmup_steps=1, measured_steps=2, engine="trainer", num_gpus=2,
    strategy="ddp",
)  # fmt: skip
FSDP = DDP.replace(strategy="fsdp", quant_storage="bf16", prepare_kbit=False)
FSDP_PREQ = FSDP.replace(compute_dtype="bf16", prequantized=True)
FSDP_OFFLOAD = FSDP_PREQ.replace(cpu_offload=True)  # the FSDP-QLoRA recipe for 70B on two 24 GB GPUs
# torchelastic's failure summary, as `accelerate launch` prints it (abridged).
TORCHRUN_SUMMARY = """qlora_core.process.rank FAILED
Failures:
[1]:
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 2)
Root Cause (first observed failure):
[0]:
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 3)
"""


def _request(case: Case, profile: str, result_path: Path) -> ChildRequest:
    return ChildRequest(case, RunOptions(profile=profile), result_path, parent_pid=os.getpid())


def test_config_is_one_accelerate_reads_back(tmp_path):
    for case, kind in ((FSDP, "FSDP"), (DDP, "MULTI_GPU")):
        path = tmp_path / f"{kind}.json"
        launch_command(_request(case, "t4x2", path))
        config = ClusterConfig.from_json_file(json_file=str(config_path(path)))
        assert config.distributed_type == kind and config.num_processes == 2
        assert config.mixed_precision == "bf16" and not config.use_cpu
    fsdp = accelerate_config(FSDP, 29500)["fsdp_config"]
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_sharding_strategy"] == "FULL_SHARD"
    assert "fsdp_config" not in accelerate_config(DDP, 29500)


def _rank_environment(config: Path) -> dict[str, str]:
    """The environment `accelerate launch --config_file CONFIG` gives each rank: its own parser,
    its reading of the config file and its multi-GPU launcher's environment (no process started)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    argv = accelerate_launch_argv(Path("request.json"), config)
    args = launch_command_parser().parse_args(argv[argv.index("--config_file") :])
    args, _defaults, _mixed_precision = _validate_launch_command(args)
    return prepare_multi_gpu_env(args)


@pytest.mark.parametrize("case", [FSDP_OFFLOAD, FSDP_PREQ], ids=["offload", "no-offload"])
def test_cpu_offload_reaches_the_fsdp_plugin_the_trainer_builds(case, tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    launch_command(_request(case, "l4x2", path))
    config = ClusterConfig.from_json_file(json_file=str(config_path(path)))
    assert config.fsdp_config["fsdp_offload_params"] is case.cpu_offload
    env = _rank_environment(config_path(path))
    assert env["FSDP_OFFLOAD_PARAMS"] == str(case.cpu_offload).lower()
    assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"  # offload or not: rank 0 alone loads
    # What the Trainer's Accelerator builds from the ranks' environment, and hands FSDP1.
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import CPUOffload

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # Module-state syncing (which rank-0-only loading turns on) given as off: with it on, the plugin
    # looks up the GPU its param_init_fn fills, and there is none here. Every other field,
    # cpu_offload too, comes from the ranks' environment.
    plugin = FullyShardedDataParallelPlugin(sync_module_states=False, cpu_ram_efficient_loading=False)
    assert plugin.cpu_offload == CPUOffload(offload_params=case.cpu_offload)


def test_rank0_only_loading_is_decided_per_case_and_written_in_its_config():
    assert loads_on_rank0_only(FSDP_PREQ)
    assert accelerate_config(FSDP_PREQ, 29500)["fsdp_config"]["fsdp_cpu_ram_efficient_loading"] is True
    # quantized at load (no checkpoint to read statistics from) and DDP: every rank loads it all
    for case in (FSDP, DDP.replace(prequantized=True, compute_dtype="bf16")):
        assert not loads_on_rank0_only(case)
    assert accelerate_config(FSDP, 29500)["fsdp_config"]["fsdp_cpu_ram_efficient_loading"] is False


def test_launch_refuses_what_the_profile_cannot_run(tmp_path):
    with pytest.raises(CaseError, match="FSDP plugin refuses the CPU"):
        launch_command(_request(FSDP, "cpu", tmp_path / "r.json"))
    with pytest.raises(CaseError, match="profile 't4' has 1"):
        launch_command(_request(DDP, "t4", tmp_path / "r.json"))
    launch_command(_request(DDP, "t4x2", tmp_path / "r.json"))  # fits: no error


def _rank(status: str, step_ms: list[float], peak: float | None, reason: str = "") -> Result:
    r = Result.for_case(DDP, "t4x2")
    r.status, r.reason, r.training.step_ms, r.hardware.device = status, reason, step_ms, "cuda"
    r.memory.peak_alloc_gib, r.memory.peak_reserved_gib, r.memory.nvml_peak_gib = (
        peak,
        None if peak is None else peak + 1,
        None,
    )
    r.training.losses = [2.0, 1.5, 1.0]
    return r


def test_merge_keeps_every_rank_and_takes_max_sum_and_slowest_step():
    merged = merge_ranks(
        DDP, "t4x2", "multigpu", [_rank("ok", [10.0, 30.0], 3.0), _rank("ok", [20.0, 20.0], 5.0)]
    )
    assert merged.status == "ok" and merged.ranks.failed_rank is None and merged.ranks.world_size == 2
    assert merged.ranks.rank_peak_alloc_gib == [3.0, 5.0] and merged.memory.peak_alloc_gib == 5.0
    assert merged.ranks.peak_alloc_gib_sum == 8.0 and merged.ranks.peak_reserved_gib_sum == 10.0
    assert (
        merged.memory.nvml_peak_gib is None and merged.ranks.nvml_peak_gib_sum is None
    )  # not measured: None, not 0
    assert merged.ranks.rank_step_ms == [[10.0, 30.0], [20.0, 20.0]] and merged.training.step_ms == [
        20.0,
        30.0,
    ]
    # tokens over both ranks (2 x 2 rows x 32 tokens) per median slowest-rank step (25 ms)
    assert merged.training.tokens_per_step == 128 and merged.training.tokens_per_s == pytest.approx(
        128 / 0.025
    )


def test_merge_takes_a_ranks_own_outcome_over_a_peer_stopped_after_it():
    ranks = [_rank("crashed", [], 3.0, "died during training"), _rank("oom", [], None, "training: OOM")]
    merged = merge_ranks(DDP, "t4x2", "", ranks)
    assert (merged.status, merged.ranks.failed_rank) == ("oom", 1)
    assert merged.reason.startswith("rank 1: oom, training: OOM; rank 0: crashed")
    # every rank crashed: torchrun's first observed failure decides, else the lowest rank
    crashed = [_rank("crashed", [], 3.0), _rank("crashed", [], 3.0)]
    assert merge_ranks(DDP, "t4x2", "", crashed, root_cause=1).ranks.failed_rank == 1
    assert merge_ranks(DDP, "t4x2", "", crashed, root_cause=None).ranks.failed_rank == 0
    missing = merge_ranks(DDP, "t4x2", "", [_rank("ok", [1.0], 3.0), None])
    assert (missing.status, missing.ranks.rank_statuses) == ("crashed", ["ok", "crashed"])
    assert "rank 1: wrote no result" in missing.reason


def test_root_cause_read_from_torchruns_summary():
    assert first_failed_rank(TORCHRUN_SUMMARY) == 1
    assert first_failed_rank(TORCHRUN_SUMMARY.replace("Root Cause", "Summary")) is None


def _run_watching(case: Case, options: RunOptions, path: Path) -> tuple[Result, set[psutil.Process]]:
    """run_case in a thread while every process it starts (launcher, ranks) is recorded."""
    seen: set[psutil.Process] = set()
    out: list[Result] = []
    thread = threading.Thread(target=lambda: out.append(run_case(case, options, path)))
    thread.start()
    me = psutil.Process()
    while thread.is_alive():
        seen.update(me.children(recursive=True))
        time.sleep(0.05)
    thread.join()
    return out[0], seen


def _alive(processes: set[psutil.Process]) -> list[psutil.Process]:
    return [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.slow
def test_two_ranks_through_accelerate_launch_merge_into_one_row(tmp_path):
    result, seen = _run_watching(DDP, RunOptions(profile="cpu", timeout_s=300), tmp_path / "r.json")
    assert result.status == "ok", result.reason
    assert (
        result.ranks.world_size == 2
        and result.ranks.rank_statuses == ["ok", "ok"]
        and result.ranks.failed_rank is None
    )
    assert [len(steps) for steps in result.ranks.rank_step_ms] == [2, 2]
    assert result.training.tokens_per_step == 2 * 2 * 32 and result.training.tokens_per_s > 0
    assert len(result.training.losses) == 3 and all(loss == loss for loss in result.training.losses)
    assert None not in result.ranks.rank_cpu_peak_rss_gib and result.memory.cpu_peak_rss_gib == max(
        result.ranks.rank_cpu_peak_rss_gib
    )
    ranks = [read_result(rank_result_path(tmp_path / "r.json", i)) for i in (0, 1)]
    assert {r.status for r in ranks} == {"ok"}
    assert not config_path(tmp_path / "r.json").exists()  # the per-case config is cleaned up
    cmdlines = [" ".join(p.cmdline()) for p in seen if p.is_running()] + ["launcher gone"]
    assert len(seen) >= 3, f"launcher and two ranks expected, saw {cmdlines}"
    assert not _alive(seen)


@pytest.mark.slow
def test_ranks_measuring_adaptively_stop_at_the_same_step(tmp_path):
    # Each rank paces on its own clock (as on CUDA); without their agreement one stopped a step
    # early and left the other blocked in a collective until the timeout (the two-GPU DDP hang).
    options = RunOptions(profile="cpu", timeout_s=300, adaptive_steps=True)
    result = run_case(DDP, options, tmp_path / "r.json")
    assert result.status == "ok", result.reason
    steps = [len(ms) for ms in result.ranks.rank_step_ms]
    assert steps[0] == steps[1] >= DDP.measured_steps, steps
    ranks = [read_result(rank_result_path(tmp_path / "r.json", i)) for i in (0, 1)]
    assert all(r.training.stop_reason in ("target", "spread", "budget", "cap") for r in ranks), ranks


@pytest.mark.slow
def test_a_rank_killed_mid_run_is_the_recorded_outcome_and_nothing_survives(tmp_path):
    options = RunOptions(profile="cpu", timeout_s=300, inject_fault="sigkill@training@rank1")
    result, seen = _run_watching(DDP, options, tmp_path / "r.json")
    assert result.status == "crashed" and result.ranks.failed_rank == 1, result.reason
    assert result.reason.startswith(
        "rank 1: crashed, died during training (injected fault sigkill@training@rank1)"
    )
    assert len(seen) >= 3 and not _alive(seen)


@pytest.mark.slow
def test_a_timeout_takes_down_every_rank(tmp_path):
    # 30 s: both ranks reach the hang (their imports take ~10 s on a busy 2-core runner)
    options = RunOptions(profile="cpu", timeout_s=30, inject_fault="hang@start-up")
    result, seen = _run_watching(DDP, options, tmp_path / "r.json")
    assert result.status == "timeout", result.reason
    assert len(seen) >= 3 and not _alive(seen)
    # each rank wrote where it hung before it was killed (the launcher was not signalled)
    log = (tmp_path / "r.log").read_text()
    assert log.count("Current thread") == 2 and "qlora_core/process/faults.py" in log, log[-3000:]


@pytest.mark.slow
def test_rank1_loads_no_weight_and_syncs_to_rank0s_model(tmp_cache, tmp_path):
    """Two ranks (torchrun, gloo) load the tiny pre-quantized bf16-storage checkpoint as the 70B
    two-card case does: rank 0 into CPU RAM, rank 1 on the meta device with only the 4-bit
    statistics read; after FSDP's module-state sync, done here as FSDP does it (FSDP1 refuses
    `sync_module_states` on the CPU), both compute the same logits. The FSDP training step itself
    needs two GPUs (`test_two_gpus_each_capped_like_one_card[fsdp-rank0-load]`)."""
    path = resolve_model("tiny", device="cpu", prequant=Prequant.of_case(FSDP_PREQ)).path
    script = Path(__file__).with_name("fsdp_rank_load.py")
    port = str(free_port())
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", port]
    root = str(Path(qlora_core.__file__).parents[1])  # the script runs from tests/: import this copy
    run = subprocess.run(
        [*argv, str(script), json.dumps(FSDP_PREQ.to_dict()), path, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": root},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert (rank0["loaded_on"], rank1["loaded_on"]) == ("cpu", "meta")
    assert rank0["real_param_bytes"] > 0 and rank1["real_param_bytes"] == 0  # rank 1 held no weight
    assert rank1["logits"] == rank0["logits"]


def test_meta_load_refuses_a_checkpoint_that_is_not_prequantized(tmp_cache):
    with pytest.raises(CaseError, match="is not one"):
        load_on_meta(FSDP_PREQ, resolve_model("tiny", device="cpu").path, "cpu")


# -- two GPUs ---------------------------------------------------------------------------------
@pytest.fixture
def two_gpus(gpu_required):
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 CUDA GPUs, {torch.cuda.device_count()} present (nvidia-h200-x2)")


@pytest.mark.gpu
@pytest.mark.parametrize(
    "case", [FSDP, DDP, FSDP_PREQ, FSDP_OFFLOAD], ids=["fsdp", "ddp", "fsdp-rank0-load", "fsdp-offload"]
)
def test_two_gpus_each_capped_like_one_card(two_gpus, case, tmp_cache, tmp_path):
    result = run_case(case, RunOptions(profile="t4x2", timeout_s=600), tmp_path / "r.json")
    assert result.status == "ok", result.reason
    # the 70B two-card path: rank 0 loaded into CPU RAM, rank 1 no weight, FSDP trained both
    assert result.ranks.rank_loaded_on == (["cpu", "meta"] if loads_on_rank0_only(case) else ["cuda", "cuda"])
    # FSDP's CPU offload in effect, not only configured: the shards trained from host RAM
    assert result.precision.params_on_in_training == ("cpu" if case.cpu_offload else "cuda")
    assert None not in result.ranks.rank_cpu_peak_rss_gib
    assert result.ranks.rank_statuses == ["ok", "ok"] and result.hardware.emulated
    assert None not in result.ranks.rank_peak_alloc_gib and None not in result.ranks.rank_nvml_peak_gib
    assert (
        result.memory.peak_alloc_gib
        == max(result.ranks.rank_peak_alloc_gib)
        <= result.hardware.memory_cap_gib
    )
    # the ranks stopped measuring together (NCCL all-reduce of pacing's verdict); the collectives'
    # kernels are apart from the compute kernels' time
    assert len({len(steps) for steps in result.ranks.rank_step_ms}) == 1, result.ranks.rank_step_ms
    assert result.training.comm_ms_per_step is not None and result.training.comm_ms_per_step > 0
