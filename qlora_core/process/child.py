"""The child process: runs one Case and writes its Result, one function per stage.

Started by `runner.run_case` (through `launch`) as `python -m qlora_core.process.child REQUEST`,
REQUEST a `request.ChildRequest` file; the stages run in `stages.STAGES` order (`_STAGE_STEPS`).
See docs/design.md#the-childs-stages.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qlora_core.cases.case import HELDOUT_WINDOWS, Case
from qlora_core.cases.gpus import DetectedGpu, GpuProfile, detect_gpu, get_profile
from qlora_core.measurement.result import Result, Status
from qlora_core.measurement.row_summary import record_mfu, summarize_steps
from qlora_core.models import Prequant
from qlora_core.models.registry import NO_16BIT_CHECKPOINT, shape_spec
from qlora_core.process import faults
from qlora_core.process.checkpointer import Checkpointer
from qlora_core.process.cuda_setup import setup_cuda
from qlora_core.process.lifecycle import arm_stack_dump, die_with_parent, materialize, now_iso
from qlora_core.process.outcomes import classify_exception, recognised_refusal
from qlora_core.process.request import ChildRequest, RunOptions, quiet_offline_kernel_notices
from qlora_core.process.stages import STAGES

if TYPE_CHECKING:  # typing only: these import torch, which the child imports once it runs a case
    import torch

    from qlora_core.engines.pacing import StepPlan
    from qlora_core.measurement.memory import NvmlSampler
    from qlora_core.models.resolve import ResolvedModel

# This module imports no torch at import time (the session and the spare pool import it in the
# parent): torch and the modules that import it (engines with engines.data, models.load,
# models.resolve, measurement.memory, measurement.quality) are imported in the functions that use
# them, once the child runs its case.
_REASON_CHARS = 2000
# The innermost frames and the message are at the end of a traceback; keep those.
_TRACEBACK_CHARS = 16000


def environment_fields() -> dict[str, str]:
    """Library versions of this process, as Result fields."""

    def version(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return ""

    import torch  # here: the parent's session asks too, and only then loads torch

    return {
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda or "",
        "transformers_version": version("transformers"),
        "peft_version": version("peft"),
        "bitsandbytes_version": version("bitsandbytes"),
        "accelerate_version": version("accelerate"),
        "trl_version": version("trl"),
    }


def child_main(request_path: str, spare_import_s: float | None = None) -> None:
    """Entry point of the child: read the request, run the case, write the Result, exit 0.
    `spare_import_s`: in a warm spare (`qlora_core.process.spare`), what its imports took before."""
    main_at = time.time()
    quiet_offline_kernel_notices()  # before bitsandbytes is imported
    request = ChildRequest.read(Path(request_path))
    die_with_parent(request.parent_pid)
    arm_stack_dump()
    spawned_at = request.spawned_at
    start_s = max(0.0, main_at - spawned_at) if spawned_at is not None else None
    run_child(request.case, request.options, request.result_path, request.fault(), start_s, spare_import_s)
    # Leave without running atexit handlers of CUDA libraries that may hang after an error; the
    # result is already on disk.
    os._exit(0)


def run_child(
    case: Case,
    options: RunOptions,
    result_path: Path,
    fault: str,
    start_s: float | None = None,
    spare_import_s: float | None = None,
) -> Result:
    """Run `case` through its stages, injecting `fault` (KIND@STAGE or ""); the Result, also on disk.
    `start_s`: seconds from the parent's spawn (or hand-over to a spare) to the child's main, when
    the parent said; `spare_import_s`: a warm spare's imports before the hand-over (None: cold).

    The body of a child, and of each rank of a multi-GPU case (`qlora_core.process.rank`).
    """
    result = Result.for_case(case, options.profile, options.families)
    result.started_at = now_iso()
    result.overrides = options.overrides
    result.repeat = options.repeat
    result.timing.start_s = start_s
    result.timing.warm_spare = spare_import_s is not None
    result.timing.spare_import_s = spare_import_s
    ckpt = Checkpointer(result, result_path)
    ckpt.stage("start-up")  # from here on the result file exists, whatever happens
    tb = ""
    try:
        ckpt.arm(fault)
        faults.slowdown_of(case)  # a bad slowdown knob is a config_error before any heavy work
        status, reason = _run_stages(case, options, ckpt)
    except BaseException as exc:  # every outcome is a row: classify, keep the measurements
        status = classify_exception(exc)
        stage = ckpt.result.reason.removeprefix("died during ")  # with the fault, if one fired
        refusal = recognised_refusal(exc) if status == Status.UNSUPPORTED else None
        what = f"{refusal.why}: " if refusal else ""
        message = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        reason = f"{stage}: {what}{message}"[:_REASON_CHARS]
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-_TRACEBACK_CHARS:]
    ckpt.finish(status, reason, tb)
    return ckpt.result


@dataclass
class _CaseRun:
    """What the child's stages hand each other, beside the Result they fill (`ckpt.result`)."""

    case: Case
    options: RunOptions
    ckpt: Checkpointer
    profile: GpuProfile
    gpu: DetectedGpu | None
    device: str  # "cuda" or "cpu"
    sampler: NvmlSampler | None = None  # started on CUDA by the CUDA set-up
    resolved: ResolvedModel | None = None
    model: Any = None
    prepare_s: float = 0.0  # prepare_model_for_kbit_training's seconds, until LoRA adds its own
    plan: StepPlan | None = None
    batches: list[torch.Tensor] = field(default_factory=list)
    heldout: torch.Tensor | None = None  # held-out windows (data == "text")

    @property
    def r(self) -> Result:
        return self.ckpt.result


StageStep = Callable[[_CaseRun], tuple[Status, str] | None]
"""A stage's work: None to go on to the next stage, or the outcome that ends the case there."""


def _run_stages(case: Case, options: RunOptions, ckpt: Checkpointer) -> tuple[Status, str]:
    """The start-up (its stage entered by `run_child`), then each later stage of `STAGES` that
    applies to the case (`_STAGE_STEPS`), entered (`Checkpointer.stage`: the Result written, a
    fault fired) before its work."""
    run = _start_up(case, options, ckpt)
    judged = _judge_16bit_without_checkpoint(case, run.profile, run.r)
    if judged is not None:
        return judged
    if run.device != "cuda":  # no model creation stage: the ML stack comes at the end of start-up
        _import_ml_stack(run)
    for name in STAGES[1:]:
        applies, step = _STAGE_STEPS[name]
        if applies(run):
            ckpt.stage(name)
            outcome = step(run)
            if outcome is not None:
                return outcome
    return Status.OK, ""


def _start_up(case: Case, options: RunOptions, ckpt: Checkpointer) -> _CaseRun:
    """The device, torch (timed), the share of the host's cores."""
    r = ckpt.result
    profile = get_profile(options.profile)
    gpu = detect_gpu() if profile.is_gpu else None
    run = _CaseRun(case, options, ckpt, profile, gpu, "cuda" if gpu is not None else "cpu")
    r.hardware.device = run.device
    t0 = time.perf_counter()
    import torch  # touches no device: NVML's base reading (the CUDA set-up) stays the device's own

    r.timing.import_s = time.perf_counter() - t0
    r.hardware.side_by_side = options.shared_device if options.shared_device > 1 else None
    r.hardware.lane_share_gib = options.lane_share_gib
    if r.hardware.side_by_side:
        # N cases share the host's cores: each takes its share for its CPU-side work (LoRA's init,
        # the data), not every core N times over (prepare + LoRA took 16-30 s so on the H200).
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // options.shared_device))
    r.hardware.torch_threads = torch.get_num_threads()
    return run


def _create_model(run: _CaseRun) -> None:
    """CUDA only: the shape's checkpoint created in a process of its own (timed when it was not
    in the cache), the CUDA set-up (`cuda_setup.setup_cuda`), then the ML stack."""
    t0 = time.perf_counter()
    if materialize(run.case.model, run.device, Prequant.of_case(run.case)):
        run.r.timing.create_s = time.perf_counter() - t0
    run.sampler = setup_cuda(run.r, run.profile, run.gpu, run.options)
    _import_ml_stack(run)


def _import_ml_stack(run: _CaseRun) -> None:
    """Import the ML stack (added to `import_s`), record the library versions, seed torch."""
    t0 = time.perf_counter()
    # After the CUDA set-up: bitsandbytes loads its CUDA library when imported. Our modules that
    # need the ML stack come with it, timed together (`Timing.import_s`); the module's top
    # imports none of them (see there), and the stages' own imports of them find them loaded.
    import bitsandbytes  # noqa: F401
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401

    from qlora_core.engines import (
        data,  # noqa: F401
        run_training,  # noqa: F401
    )
    from qlora_core.measurement import memory, quality  # noqa: F401
    from qlora_core.models import load  # noqa: F401
    from qlora_core.models.resolve import resolve_model  # noqa: F401

    run.r.timing.import_s = (run.r.timing.import_s or 0.0) + time.perf_counter() - t0
    run.r.set_fields(environment_fields())
    torch.manual_seed(run.case.seed)


def _resolve_model(run: _CaseRun) -> None:
    from qlora_core.models.resolve import resolve_model  # imported by _import_ml_stack (timed)

    run.resolved = resolve_model(run.case.model, device=run.device, prequant=Prequant.of_case(run.case))


def _load(run: _CaseRun) -> tuple[Status, str] | None:
    """The load (timed), where the weights went and their bytes, the memory after it; a load-only
    case (`Case.load_only`) ends here, ok."""
    from qlora_core.measurement import memory  # imported by _import_ml_stack (timed)
    from qlora_core.models import load  # imported by _import_ml_stack (timed)

    assert run.resolved is not None
    r = run.r
    t0 = time.perf_counter()
    run.model = load.load_model(run.case, run.resolved.path, run.device)
    r.timing.load_s = time.perf_counter() - t0
    r.ranks.loaded_on = memory.params_device(run.model)
    if r.ranks.loaded_on != "meta":  # a rank holding no weight has none to count: left None
        counted = memory.weight_bytes(run.model)
        r.weights.weight_bytes = counted.weight_bytes
        r.weights.quant_data_bytes = counted.quant_data_bytes
        r.weights.quant_stats_bytes = counted.quant_stats_bytes
        r.weights.quantized_params = counted.quantized_params
        r.weights.footprint_bytes = counted.footprint_bytes
    _record_stage(r, "load", run.device)
    if run.case.load_only:
        _record_load_only(r, run.model, run.device, run.sampler)
        return Status.OK, ""
    return None


def _prepare(run: _CaseRun) -> None:
    """prepare_model_for_kbit_training. Entering it also saved what load measured, so a crash from
    here keeps it."""
    from qlora_core.models import load  # imported by _import_ml_stack (timed)

    t0 = time.perf_counter()
    run.model = load.prepare(run.model, run.case)
    run.prepare_s = time.perf_counter() - t0
    _record_stage(run.r, "prepare", run.device)


def _add_lora(run: _CaseRun) -> None:
    """The LoRA adapters (their seconds added to prepare's), the parameters and their bytes."""
    from qlora_core.measurement import memory  # imported by _import_ml_stack (timed)
    from qlora_core.models import load  # imported by _import_ml_stack (timed)

    r = run.r
    t0 = time.perf_counter()
    run.model = load.add_lora(run.model, run.case)
    r.timing.prepare_s = run.prepare_s + time.perf_counter() - t0
    r.weights.trainable_params, r.weights.total_params = memory.parameter_counts(run.model)
    r.weights.trainable_dtypes = memory.trainable_dtypes(run.model)
    r.weights.trainable_bytes = memory.trainable_bytes(run.model)
    _record_stage(r, "lora", run.device)


def _data(run: _CaseRun) -> None:
    """The step plan and the batches for it (text: the held-out windows too)."""
    from qlora_core.engines import (
        data,  # imported by _import_ml_stack (timed)
        plan_steps,
    )

    case, options, resolved = run.case, run.options, run.resolved
    assert resolved is not None
    # An uncapped rerun wants memory only (oom_need): its peak, in a few fixed steps.
    # Side by side (qlora_core.process.side_by_side), kernel time would be shared too: no profiler window.
    # Nor adaptive pacing, which reads step times: side by side, the case's own steps, fixed.
    shared = options.shared_device > 1
    run.plan = plan_steps(
        case,
        run.device,
        adaptive=False if shared else options.adaptive_steps,
        profile=False if shared else None,
        memory_only=options.uncapped,
    )
    # The batches cover the step cap, for every rank (each draws its share).
    count = run.plan.max_total_steps * case.grad_accum * case.num_gpus
    if case.data == "text":
        ids = data.cached_corpus_ids(resolved.tokenizer_path, resolved.vocab_size)
        train_ids, heldout_ids = data.split_train_heldout(ids)
        run.batches = data.text_batches(train_ids, case.batch_size, case.seq_len, count, case.seed)
        run.heldout = data.heldout_windows(heldout_ids, case.seq_len, max_windows=HELDOUT_WINDOWS)
    else:
        run.batches = data.synthetic_batches(
            resolved.vocab_size, case.batch_size, case.seq_len, count, case.seed
        )


def _perplexity_before(run: _CaseRun) -> None:
    from qlora_core.measurement import quality  # imported by _import_ml_stack (timed)

    assert run.heldout is not None
    t0 = time.perf_counter()
    run.r.quality.ppl_before = quality.perplexity(run.model, run.heldout, run.device)
    run.r.timing.eval_s = time.perf_counter() - t0


def _train(run: _CaseRun) -> tuple[Status, str] | None:
    """The warm-up, measured and profiled steps (`engines.run_training`), the Result on disk as they
    go; then the peaks, the step summary and MFU. A non-finite loss ends the case: nan."""
    from qlora_core.engines import TrainStats, run_training
    from qlora_core.measurement import memory  # imported by _import_ml_stack (timed)

    case, r, ckpt = run.case, run.r, run.ckpt
    if run.device == "cuda":
        memory.reset_cuda_peaks()
    r.training.tokens_per_step = case.tokens_per_step

    def on_step(step: int, stats: TrainStats) -> None:
        r.training.losses, r.training.grad_norms, r.training.step_ms = (
            stats.losses,
            stats.grad_norms,
            stats.step_ms,
        )
        r.precision.params_on_in_training = stats.params_on_in_training  # kept by a row that fails later
        if stats.train_s is not None and r.timing.train_s is None:
            # The timed steps are over: on disk at once, so a child that dies from here on (the
            # profiler window, perplexity) keeps its training time.
            r.timing.train_s = stats.train_s
            ckpt.save()
        else:
            ckpt.save_progress()  # between steps, outside their timed region

    def on_start(stats: TrainStats) -> None:  # on disk before step 1: a failed case keeps it
        r.set_fields(stats.start_fields())
        ckpt.save()

    stats = run_training(
        run.model, case, run.batches, run.device, on_step=on_step, plan=run.plan, on_start=on_start
    )
    if run.device == "cuda":
        r.memory.peak_alloc_gib, r.memory.peak_reserved_gib = memory.cuda_peaks()
    if run.sampler is not None:
        r.memory.nvml_peak_gib = run.sampler.stop()
        r.memory.nvml_own_peak_gib = run.sampler.own_peak_gib
    r.memory.cpu_peak_rss_gib = memory.peak_rss_gib()
    r.set_fields(stats.result_fields())
    r.training.first_loss = stats.losses[0] if stats.losses else None
    r.training.final_loss = stats.losses[-1] if stats.losses else None
    # Beside other cases the step times are theirs too: kept, not summarized.
    if r.hardware.side_by_side is None:
        summarize_steps(r)
    record_mfu(r, case, run.model.config, run.gpu)
    if stats.diverged:
        return Status.NAN, f"non-finite loss or gradient norm at step {stats.first_nonfinite_step}"
    return None


def _perplexity_after(run: _CaseRun) -> None:
    from qlora_core.measurement import quality  # imported by _import_ml_stack (timed)

    assert run.heldout is not None
    t0 = time.perf_counter()
    run.r.quality.ppl_after = quality.perplexity(run.model, run.heldout, run.device)
    run.r.timing.eval_s = (run.r.timing.eval_s or 0.0) + time.perf_counter() - t0


def _always(run: _CaseRun) -> bool:
    return True


def _on_cuda(run: _CaseRun) -> bool:
    return run.device == "cuda"


def _with_heldout(run: _CaseRun) -> bool:
    return run.heldout is not None


_STAGE_STEPS: dict[str, tuple[Callable[[_CaseRun], bool], StageStep]] = {
    "model creation": (_on_cuda, _create_model),
    "model resolution": (_always, _resolve_model),
    "load": (_always, _load),
    "prepare": (_always, _prepare),
    "LoRA": (_always, _add_lora),
    "data": (_always, _data),
    "perplexity before training": (_with_heldout, _perplexity_before),
    "training": (_always, _train),
    "perplexity after training": (_with_heldout, _perplexity_after),
}
"""Each stage after start-up (`STAGES`, which orders them): whether it runs for the case, and its
work."""


def _judge_16bit_without_checkpoint(case: Case, profile: GpuProfile, r: Result) -> tuple[Status, str] | None:
    """A 16-bit case of a shape whose 16-bit checkpoint is never written (`NO_16BIT_CHECKPOINT`):
    oom when the exact weight bytes, counted on the meta device, exceed the profile's whole memory
    (it cannot load, whatever else it holds); labelled computed, not measured. None otherwise (a
    case that might fit is left to resolution, which says why it cannot run here)."""
    if case.is_quantized or case.model not in NO_16BIT_CHECKPOINT or not profile.is_gpu:
        return None
    from qlora_core.measurement.memory import meta_weight_bytes  # imports torch: see the module's imports

    r.weights.computed_weight_bytes = meta_weight_bytes(shape_spec(case.model))
    need_gib, have_gib = r.weights.computed_weight_bytes / 2**30, profile.total_gib
    if need_gib <= have_gib:
        return None
    return Status.OOM, (
        f"load: computed, not measured: the 16-bit weights of {case.model} are"
        f" {r.weights.computed_weight_bytes:,} bytes ({need_gib:.2f} GiB) on the meta device, more than the"
        f" {have_gib:.2f} GiB of {profile.name}: it does not fit at load"
    )


def _record_load_only(r: Result, model: Any, device: str, sampler: Any) -> None:
    """What a load-only case measures after its load: the parameter count (peft's counter), the
    load's allocator peaks (nothing ran before it in this process) and the device's used memory."""
    from qlora_core.measurement import memory  # imports torch: see the module's imports

    r.weights.total_params = memory.base_parameter_count(model)
    if device == "cuda":
        r.memory.load_peak_alloc_gib, r.memory.load_peak_reserved_gib = memory.cuda_peaks()
    if sampler is not None:
        sampler.stop()
        r.memory.load_nvml_gib = sampler.used_gib()
        r.memory.nvml_own_peak_gib = sampler.own_peak_gib
    r.memory.cpu_peak_rss_gib = memory.peak_rss_gib()


def _record_stage(r: Result, stage: str, device: str) -> None:
    from qlora_core.measurement import memory  # imports torch: see the module's imports

    if device == "cuda":
        alloc, reserved = memory.cuda_stage_memory()
    else:
        # On the CPU the process RSS is what the stage costs; reserved has no meaning.
        alloc, reserved = memory.current_rss_gib(), None
    r.set_fields({f"{stage}_alloc_gib": alloc, f"{stage}_reserved_gib": reserved})


if __name__ == "__main__":
    child_main(sys.argv[1])
