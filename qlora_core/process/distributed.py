"""Multi-GPU cases: the accelerate config, the launch, and one row from the ranks.

`launch_command` starts `python -m qlora_core.process.distributed REQUEST CONFIG`, which execs
`accelerate launch` of one `qlora_core.process.rank` per GPU; `merge_rank_files` makes the case's
row from the ranks' Results. No torch at import time: the runner imports it.
See docs/multi-gpu.md#the-process-tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

import psutil

from qlora_core.cases.case import Case, CaseError
from qlora_core.cases.gpus import get_profile
from qlora_core.measurement.result import Result, Status, read_result, write_atomic
from qlora_core.measurement.row_summary import summarize_steps
from qlora_core.models import Prequant
from qlora_core.process.lifecycle import arm_stack_dump, die_with_parent, materialize
from qlora_core.process.request import ChildRequest

MIXED_PRECISION_BY_COMPUTE = {"fp16": "fp16", "bf16": "bf16", "fp32": "no"}
"""accelerate's `mixed_precision` for a case's compute dtype (fp32 compute: no mixed precision)."""
# Memory fields whose multi-GPU value is the max over ranks: what each GPU must hold.
_PER_GPU_MAX_FIELDS: tuple[str, ...] = (
    "load_alloc_gib",
    "load_reserved_gib",
    "prepare_alloc_gib",
    "prepare_reserved_gib",
    "lora_alloc_gib",
    "lora_reserved_gib",
    "peak_alloc_gib",
    "peak_reserved_gib",
    "nvml_peak_gib",
    "cpu_peak_rss_gib",
)
# A rank's own outcome beats `crashed`, which in a rank is most often torchrun stopping it after
# another rank failed. In this order.
_STATUS_PRIORITY: tuple[str, ...] = (
    Status.OOM.value,
    Status.NAN.value,
    Status.CUDA_ERROR.value,
    Status.UNSUPPORTED.value,
    Status.CONFIG_ERROR.value,
    Status.MISSING_MODEL.value,
    Status.TIMEOUT.value,
    Status.CRASHED.value,
)
# torchelastic's failure summary names the rank it saw fail first.
_ROOT_CAUSE = re.compile(r"Root Cause \(first observed failure\):.*?rank\s*:\s*(\d+)", re.DOTALL)


def local_device_index() -> int:
    """This process's GPU: torchrun's LOCAL_RANK in a rank, 0 in a single-process child."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def loads_on_rank0_only(case: Case) -> bool:
    """Whether the case's ranks load as FSDP-QLoRA users load a model too big for one card (peft's
    and Answer.AI's recipe, accelerate's `fsdp_cpu_ram_efficient_loading`): rank 0 into CPU RAM,
    the others on the meta device (`load.load_on_meta`), FSDP then materializing each wrapped layer
    on its GPU and broadcasting rank 0's shards (`sync_module_states`). Every FSDP case from a
    pre-quantized checkpoint: the other ranks take the 4-bit statistics from the checkpoint. A
    case quantized at load keeps every rank loading onto its own GPU: its statistics exist only
    after quantizing, on the rank that quantized.
    """
    return case.strategy == "fsdp" and case.num_gpus > 1 and case.prequantized


def accelerate_config(case: Case, port: int) -> dict[str, Any]:
    """The `accelerate launch --config_file` contents for `case` (num_gpus > 1).

    FSDP as peft's FSDP-QLoRA guide sets it: full sharding, transformer-layer wrapping (the
    Trainer replaces the policy by peft's, which also wraps each trainable LoRA layer), module
    states synced from rank 0, original parameters not kept, activation checkpointing left to the
    Trainer's `gradient_checkpointing`. The 4-bit storage dtype is the compute dtype (the Case
    validates that), so FSDP can shard the packed weights; the Trainer sets FSDP's mixed precision
    to it. `fsdp_cpu_ram_efficient_loading` is on where `loads_on_rank0_only` (the config is the
    case's record of it: the Result's `rank_loaded_on` shows where each rank's weights were);
    otherwise every rank loads the quantized model onto its GPU before FSDP shards it.

    `fsdp_offload_params` is the case's `cpu_offload` (the FSDP-QLoRA recipe for 70B on two 24 GB
    GPUs: Answer.AI's `--use_cpu_offload`, the alignment-handbook's `fsdp_qlora.yaml`). accelerate
    passes it to FSDP1 as `CPUOffload(offload_params=True)`; transformers' Trainer adds nothing
    (its own `fsdp_config` is unset). FSDP then keeps each rank's shard of every flattened
    parameter in pinned host RAM together with a pinned gradient buffer of the same size (for the
    frozen 4-bit weights too), and moves a layer to the GPU only while it computes. The 4-bit
    statistics (QuantState) are no FSDP parameter and stay on the GPU (`load._move_quant_states`).
    What the host gives is each rank's peak RSS in the row (`rank_cpu_peak_rss_gib`).
    """
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "FSDP" if case.strategy == "fsdp" else "MULTI_GPU",
        "num_machines": 1,
        "machine_rank": 0,
        "num_processes": case.num_gpus,
        "gpu_ids": "all",
        "mixed_precision": MIXED_PRECISION_BY_COMPUTE[case.compute_dtype],
        "main_process_port": port,
        "rdzv_backend": "static",
        "same_network": True,
        # On the CPU too: `use_cpu` would pick accelerate's single-process launcher; each rank
        # trains on the CPU (gloo) because its TrainingArguments say `use_cpu`.
        "use_cpu": False,
    }
    if case.strategy == "fsdp":
        config["fsdp_config"] = {
            "fsdp_version": 1,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_sharding_strategy": "FULL_SHARD",
            "fsdp_backward_prefetch": "BACKWARD_PRE",
            "fsdp_forward_prefetch": False,
            "fsdp_offload_params": case.cpu_offload,
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_sync_module_states": True,
            "fsdp_use_orig_params": False,
            "fsdp_cpu_ram_efficient_loading": loads_on_rank0_only(case),
            "fsdp_activation_checkpointing": False,
        }
    return config


def free_port() -> int:
    """A TCP port free right now on this host, for the ranks' rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_command(request: ChildRequest) -> list[str]:
    """The command that starts a multi-GPU case (`launch.launch_accelerate`): writes its
    accelerate config beside the Result; the process execs `accelerate launch` (see the module
    docstring). A CaseError when the profile has fewer GPUs than the case needs."""
    case, profile = request.case, request.options.profile
    machine = get_profile(profile)
    if machine.is_gpu and case.num_gpus > machine.count:
        raise CaseError(
            [f"num_gpus={case.num_gpus} needs {case.num_gpus} GPUs; profile {profile!r} has {machine.count}"]
        )
    if case.strategy == "fsdp" and not machine.is_gpu:
        # accelerate's FullyShardedDataParallelPlugin raises "no available devices" on the CPU.
        raise CaseError(["strategy='fsdp' needs a GPU profile: accelerate's FSDP plugin refuses the CPU"])
    config = config_path(request.result_path)
    write_atomic(config, json.dumps(accelerate_config(case, free_port()), indent=2))
    return [sys.executable, "-m", "qlora_core.process.distributed", str(request.path), str(config)]


def config_path(result_path: Path) -> Path:
    """The case's accelerate config, beside its Result."""
    return result_path.with_name(result_path.name + ".accelerate.json")


def accelerate_launch_argv(request: Path, config: Path) -> list[str]:
    """`accelerate launch --config_file CONFIG -m qlora_core.process.rank REQUEST`, as a Python command.

    `python -m accelerate.commands.launch` is the `accelerate launch` command (its module and
    `main`), found through this interpreter rather than PATH.
    """
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        "--quiet",
        "-m",
        "qlora_core.process.rank",
        str(request),
    ]


def rank_result_path(result_path: Path, rank: int) -> Path:
    """Where rank `rank` writes its Result (beside the case's own, not a `*.json`)."""
    return result_path.with_name(f"{result_path.name}.rank{rank}")


def process_groups(pid: int) -> list[int]:
    """The process groups of `pid`'s descendants other than its own (each rank's, under torchrun).

    Read before anything is signalled: once the launcher dies, its ranks are no longer its
    descendants.
    """
    groups: list[int] = []
    try:
        descendants = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return groups
    own = _pgid(pid)
    for process in descendants:
        pgid = _pgid(process.pid)
        if pgid is not None and pgid != own and pgid not in groups:
            groups.append(pgid)
    return groups


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def merge_rank_files(case: Case, profile: str, families: str, result_path: Path, log_path: Path) -> None:
    """Merge the ranks' Results into the case's (at `result_path`); nothing when no rank wrote
    one. Removes the case's accelerate config."""
    config_path(result_path).unlink(missing_ok=True)
    ranks: list[Result | None] = []
    for rank in range(case.num_gpus):
        try:
            ranks.append(read_result(rank_result_path(result_path, rank)))
        except (OSError, ValueError, TypeError):
            ranks.append(None)
    if all(r is None for r in ranks):
        return
    log = ""
    with contextlib.suppress(OSError):
        log = log_path.read_text(errors="replace")
    write_atomic(result_path, merge_ranks(case, profile, families, ranks, first_failed_rank(log)).to_json())


def remove_rank_files(case: Case, result_path: Path) -> None:
    for rank in range(case.num_gpus if case.num_gpus > 1 else 0):
        rank_result_path(result_path, rank).unlink(missing_ok=True)


def first_failed_rank(launcher_log: str) -> int | None:
    """The rank torchrun saw fail first (its "Root Cause" summary), or None."""
    match = _ROOT_CAUSE.search(launcher_log)
    return int(match.group(1)) if match else None


def merge_ranks(
    case: Case, profile: str, families: str, ranks: list[Result | None], root_cause: int | None = None
) -> Result:
    """One row from every rank's Result (None: a rank that wrote none).

    The case's outcome is a failed rank's: a recorded outcome (oom, nan, ...) first, then the
    rank torchrun saw fail first (`root_cause`), then the lowest rank; its reason names the rank.
    """
    base = next(r for r in ranks if r is not None)
    merged = Result.from_dict(json.loads(base.to_json()))
    merged.families = families
    merged.profile = profile
    merged.ranks.world_size = len(ranks)
    merged.ranks.rank_statuses = [r.status if r is not None else Status.CRASHED.value for r in ranks]
    for name in _PER_GPU_MAX_FIELDS:
        values = [r.get_field(name) if r is not None else None for r in ranks]
        measured = [v for v in values if v is not None]
        merged.set_fields({name: max(measured) if measured else None})
        if name in ("peak_alloc_gib", "peak_reserved_gib", "nvml_peak_gib", "cpu_peak_rss_gib"):
            merged.set_fields({f"rank_{name}": values})
        if name in ("peak_alloc_gib", "peak_reserved_gib", "nvml_peak_gib"):
            merged.set_fields({f"{name}_sum": sum(measured) if measured else None})
    merged.ranks.rank_loaded_on = [r.ranks.loaded_on if r is not None else "" for r in ranks]
    merged.ranks.rank_step_ms = [list(r.training.step_ms) if r is not None else [] for r in ranks]
    # A data-parallel step ends when its slowest rank does.
    merged.training.step_ms = [max(times) for times in zip(*merged.ranks.rank_step_ms, strict=False)]
    merged.training.step_ms_median = merged.training.step_ms_spread = merged.training.tokens_per_s = None
    merged.training.tokens_per_step = case.tokens_per_step
    summarize_steps(merged)
    failed = _failed_rank(merged.ranks.rank_statuses, root_cause)
    merged.ranks.failed_rank = failed
    if failed is None:
        merged.status, merged.reason, merged.traceback = Status.OK.value, "", ""
        return merged
    merged.status = merged.ranks.rank_statuses[failed]
    why = [f"rank {failed}: {_reason(ranks[failed])}"]
    why += [f"rank {i}: {_reason(r)}" for i, r in enumerate(ranks) if i != failed and _failed(r)]
    merged.reason = "; ".join(why)
    failed_result = ranks[failed]
    merged.traceback = failed_result.traceback if failed_result is not None else ""
    return merged


def _failed(result: Result | None) -> bool:
    return result is None or result.status != Status.OK.value


def _reason(result: Result | None) -> str:
    return "wrote no result" if result is None else f"{result.status}, {result.reason or 'no reason'}"


def _failed_rank(statuses: list[str], root_cause: int | None) -> int | None:
    failed = [i for i, s in enumerate(statuses) if s != Status.OK.value]
    if not failed:
        return None
    recorded = [i for i in failed if statuses[i] != Status.CRASHED.value]
    if recorded:
        return min(recorded, key=lambda i: (_priority(statuses[i]), i))
    return root_cause if root_cause in failed else failed[0]


def _priority(status: str) -> int:
    return _STATUS_PRIORITY.index(status) if status in _STATUS_PRIORITY else len(_STATUS_PRIORITY)


def launcher_main(request_path: str, config: str) -> None:
    """Die with the runner, create the model's checkpoint once, then become `accelerate launch`
    (exec keeps the pid and PDEATHSIG)."""
    request = ChildRequest.read(Path(request_path))
    die_with_parent(request.parent_pid)
    arm_stack_dump()  # until the exec: a hang creating the checkpoint shows where
    # Once, here: ranks that each found it missing would all write the same checkpoint at once.
    # A failure is left to the ranks, which record it as their outcome (e.g. missing_model).
    device = "cuda" if get_profile(request.options.profile).is_gpu else "cpu"
    with contextlib.suppress(Exception):
        materialize(request.case.model, device, Prequant.of_case(request.case))
    argv = accelerate_launch_argv(Path(request_path), Path(config))
    os.execv(argv[0], argv)


if __name__ == "__main__":
    launcher_main(sys.argv[1], sys.argv[2])
