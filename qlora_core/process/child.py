"""The child process: runs one Case and writes its Result. Started by `runner.run_case` as

    python -m qlora_core.process.child REQUEST

where REQUEST is a `request.ChildRequest` file (the case, its `RunOptions`, where the Result goes,
the parent's pid); the child dies with that parent (`lifecycle.die_with_parent`).
The stages (`faults.STAGES`) run in order: on CUDA, the checkpoint is created in a process of its
own, NVML is read and the allocator capped (emulation); then model resolution, 4-bit load,
prepare_model_for_kbit_training, LoRA, data, (perplexity,) training, (perplexity); a load-only
case (`Case.load_only`) stops after the load. The Result is
written atomically as each stage starts, marked "died during <stage>", so a child that dies keeps
what it measured before; an exception is classified (`outcomes.classify_exception`) and recorded
with its traceback. The child always exits 0 itself; any other exit is a death the parent reads.

**Fault injection (tests only).** A fault `KIND@STAGE` fires as the child enters STAGE:
`RunOptions.inject_fault` for one run (outside the case's identity: the same case can fault, then
rerun clean), or `Case.extra=(("fault", "KIND@STAGE"),)` for every run of a case (part of its id,
so it cannot hide in a production matrix). Kinds (`faults.FAULT_KINDS`): sigkill, sigsegv, exit,
hang, oom, error, cuda-assert (CUDA only). A fired fault is named in the row's reason.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from qlora_core.gpus import DetectedGpu, GpuProfile, detect_gpu, get_profile, is_emulated
from qlora_core.lanes import lane_cap_gib
from qlora_core.models import Prequant
from qlora_core.models.registry import NO_16BIT_CHECKPOINT, shape_spec
from qlora_core.process import faults
from qlora_core.process.checkpointer import Checkpointer
from qlora_core.process.distributed import local_device_index
from qlora_core.process.lifecycle import arm_stack_dump, die_with_parent, materialize, now_iso
from qlora_core.process.outcomes import classify_exception, recognised_refusal
from qlora_core.process.request import ChildRequest, RunOptions, quiet_offline_kernel_notices
from qlora_core.result import Result, Status
from qlora_core.row_summary import record_mfu, summarize_steps
from qlora_core.spec import HELDOUT_WINDOWS, Case

# This module imports no torch at import time (the session and the spare pool import it in the
# parent): torch and the modules that import it (data, load, measure, quality, engines,
# models.resolve) are imported in the functions that use them, once the child runs its case.
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
    result.start_s = start_s
    result.warm_spare = spare_import_s is not None
    result.spare_import_s = spare_import_s
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


def _run_stages(case: Case, options: RunOptions, ckpt: Checkpointer) -> tuple[Status, str]:
    r = ckpt.result
    profile = get_profile(options.profile)
    gpu = detect_gpu() if profile.is_gpu else None
    device = "cuda" if gpu is not None else "cpu"
    r.device = device
    sampler = None
    t0 = time.perf_counter()
    import torch  # touches no device: NVML's base reading below stays the device's own

    r.import_s = time.perf_counter() - t0
    r.side_by_side = options.shared_device if options.shared_device > 1 else None
    r.lane_share_gib = options.lane_share_gib
    if r.side_by_side:
        # N cases share the host's cores: each takes its share for its CPU-side work (LoRA's init,
        # the data), not every core N times over (prepare + LoRA took 16-30 s so on the H200).
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // options.shared_device))
    r.torch_threads = torch.get_num_threads()
    judged = _judge_16bit_without_checkpoint(case, profile, r)
    if judged is not None:
        return judged
    if device == "cuda":
        ckpt.stage("model creation")
        t0 = time.perf_counter()
        if materialize(case.model, device, Prequant.of_case(case)):
            r.create_s = time.perf_counter() - t0
        sampler = _setup_cuda(r, profile, gpu, options)
    t0 = time.perf_counter()
    # After the CUDA set-up: bitsandbytes loads its CUDA library when imported. Our modules that
    # need the ML stack come with it, timed together (`Result.import_s`); the module's top
    # imports none of them (see there).
    import bitsandbytes  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401

    from qlora_core import data as data_mod
    from qlora_core import load, measure, quality
    from qlora_core.engines import TrainStats, plan_steps, run_training
    from qlora_core.models.resolve import resolve_model

    r.import_s += time.perf_counter() - t0

    for key, value in environment_fields().items():
        setattr(r, key, value)
    torch.manual_seed(case.seed)

    ckpt.stage("model resolution")
    resolved = resolve_model(case.model, device=device, prequant=Prequant.of_case(case))

    ckpt.stage("load")
    t0 = time.perf_counter()
    model = load.load_model(case, resolved.path, device)
    r.load_s = time.perf_counter() - t0
    r.loaded_on = measure.params_device(model)
    if r.loaded_on != "meta":  # a rank holding no weight has none to count: left None
        counted = measure.weight_bytes(model)
        r.weight_bytes = counted.weight_bytes
        r.quant_data_bytes = counted.quant_data_bytes
        r.quant_stats_bytes = counted.quant_stats_bytes
        r.quantized_params = counted.quantized_params
        r.footprint_bytes = counted.footprint_bytes
    _record_stage(r, "load", device)
    if case.load_only:
        _record_load_only(r, model, device, sampler)
        return Status.OK, ""

    ckpt.stage("prepare")  # also saves what load measured, so a crash from here keeps it
    t0 = time.perf_counter()
    model = load.prepare(model, case)
    prepare_s = time.perf_counter() - t0
    _record_stage(r, "prepare", device)

    ckpt.stage("LoRA")
    t0 = time.perf_counter()
    model = load.add_lora(model, case)
    r.prepare_s = prepare_s + time.perf_counter() - t0
    r.trainable_params, r.total_params = measure.parameter_counts(model)
    r.trainable_dtypes = measure.trainable_dtypes(model)
    r.trainable_bytes = measure.trainable_bytes(model)
    _record_stage(r, "lora", device)

    ckpt.stage("data")
    # An uncapped rerun wants memory only (oom_need): its peak, in a few fixed steps.
    # Side by side (qlora_core.process.side_by_side), kernel time would be shared too: no profiler window.
    # Nor adaptive pacing, which reads step times: side by side, the case's own steps, fixed.
    shared = options.shared_device > 1
    plan = plan_steps(
        case,
        device,
        adaptive=False if shared else options.adaptive_steps,
        profile=False if shared else None,
        memory_only=options.uncapped,
    )
    # The batches cover the step cap, for every rank (each draws its share).
    count = plan.max_total_steps * case.grad_accum * case.num_gpus
    heldout = None
    if case.data == "text":
        ids = data_mod.cached_corpus_ids(resolved.tokenizer_path, resolved.vocab_size)
        train_ids, heldout_ids = data_mod.split_train_heldout(ids)
        batches = data_mod.text_batches(train_ids, case.batch_size, case.seq_len, count, case.seed)
        heldout = data_mod.heldout_windows(heldout_ids, case.seq_len, max_windows=HELDOUT_WINDOWS)
        ckpt.stage("perplexity before training")
        t0 = time.perf_counter()
        r.ppl_before = quality.perplexity(model, heldout, device)
        r.eval_s = time.perf_counter() - t0
    else:
        batches = data_mod.synthetic_batches(
            resolved.vocab_size, case.batch_size, case.seq_len, count, case.seed
        )

    ckpt.stage("training")
    if device == "cuda":
        measure.reset_cuda_peaks()
    r.tokens_per_step = case.tokens_per_step

    def on_step(step: int, stats: TrainStats) -> None:
        r.losses, r.grad_norms, r.step_ms = stats.losses, stats.grad_norms, stats.step_ms
        r.params_on_in_training = stats.params_on_in_training  # kept by a row that fails later
        if stats.train_s is not None and r.train_s is None:
            # The timed steps are over: on disk at once, so a child that dies from here on (the
            # profiler window, perplexity) keeps its training time.
            r.train_s = stats.train_s
            ckpt.save()
        else:
            ckpt.save_progress()  # between steps, outside their timed region

    def on_start(stats: TrainStats) -> None:  # on disk before step 1: a failed case keeps it
        for name, value in stats.start_fields().items():
            setattr(r, name, value)
        ckpt.save()

    stats = run_training(model, case, batches, device, on_step=on_step, plan=plan, on_start=on_start)
    if device == "cuda":
        r.peak_alloc_gib, r.peak_reserved_gib = measure.cuda_peaks()
    if sampler is not None:
        r.nvml_peak_gib = sampler.stop()
        r.nvml_own_peak_gib = sampler.own_peak_gib
    r.cpu_peak_rss_gib = measure.peak_rss_gib()
    for name, value in stats.result_fields().items():
        setattr(r, name, value)
    r.first_loss = stats.losses[0] if stats.losses else None
    r.final_loss = stats.losses[-1] if stats.losses else None
    if r.side_by_side is None:  # beside other cases the step times are theirs too: kept, not summarized
        summarize_steps(r)
    record_mfu(r, case, model.config, gpu)
    if stats.diverged:
        return Status.NAN, f"non-finite loss or gradient norm at step {stats.first_nonfinite_step}"
    if heldout is not None:
        ckpt.stage("perplexity after training")
        t0 = time.perf_counter()
        r.ppl_after = quality.perplexity(model, heldout, device)
        r.eval_s = (r.eval_s or 0.0) + time.perf_counter() - t0
    return Status.OK, ""


def _judge_16bit_without_checkpoint(case: Case, profile: GpuProfile, r: Result) -> tuple[Status, str] | None:
    """A 16-bit case of a shape whose 16-bit checkpoint is never written (`NO_16BIT_CHECKPOINT`):
    oom when the exact weight bytes, counted on the meta device, exceed the profile's whole memory
    (it cannot load, whatever else it holds); labelled computed, not measured. None otherwise (a
    case that might fit is left to resolution, which says why it cannot run here)."""
    if case.is_quantized or case.model not in NO_16BIT_CHECKPOINT or not profile.is_gpu:
        return None
    from qlora_core.measure import meta_weight_bytes  # imports torch: see the module's imports

    r.computed_weight_bytes = meta_weight_bytes(shape_spec(case.model))
    need_gib, have_gib = r.computed_weight_bytes / 2**30, profile.total_gib
    if need_gib <= have_gib:
        return None
    return Status.OOM, (
        f"load: computed, not measured: the 16-bit weights of {case.model} are"
        f" {r.computed_weight_bytes:,} bytes ({need_gib:.2f} GiB) on the meta device, more than the"
        f" {have_gib:.2f} GiB of {profile.name}: it does not fit at load"
    )


def _record_load_only(r: Result, model: Any, device: str, sampler: Any) -> None:
    """What a load-only case measures after its load: the parameter count (peft's counter), the
    load's allocator peaks (nothing ran before it in this process) and the device's used memory."""
    from qlora_core import measure  # imports torch: see the module's imports

    r.total_params = measure.base_parameter_count(model)
    if device == "cuda":
        r.load_peak_alloc_gib, r.load_peak_reserved_gib = measure.cuda_peaks()
    if sampler is not None:
        sampler.stop()
        r.load_nvml_gib = sampler.used_gib()
        r.nvml_own_peak_gib = sampler.own_peak_gib
    r.cpu_peak_rss_gib = measure.peak_rss_gib()


def _record_stage(r: Result, stage: str, device: str) -> None:
    from qlora_core import measure  # imports torch: see the module's imports

    if device == "cuda":
        alloc, reserved = measure.cuda_stage_memory()
    else:
        # On the CPU the process RSS is what the stage costs; reserved has no meaning.
        alloc, reserved = measure.current_rss_gib(), None
    setattr(r, f"{stage}_alloc_gib", alloc)
    setattr(r, f"{stage}_reserved_gib", reserved)


def _setup_cuda(r: Result, profile: GpuProfile, gpu: DetectedGpu | None, options: RunOptions) -> Any:
    """Read NVML before anything touches the device, create the context, cap the allocator.

    Emulating a smaller GPU: the cap is the profile's device memory minus this process's CUDA
    context (measured here, since the allocator cannot see it), as a fraction of the real card.
    A lane of a real card shared side by side (`RunOptions.lane_share_gib`): its share less the
    context, the same way (`lanes.lane_cap_gib`). Returns the started NVML sampler.
    """
    # Here, not at the top: torch, and measure, which imports it (see the module's imports).
    import torch

    from qlora_core.measure import NVML_DEVICE, NVML_PROCESS, NvmlSampler, gib

    index = local_device_index()  # 0, or this rank's GPU in a multi-GPU case
    shared = options.shared_device > 1
    # Side by side, NVML's device-wide "used" counts the other cases: this process's own line only.
    sampler = NvmlSampler(index, NVML_PROCESS if shared else NVML_DEVICE)
    r.nvml_scope = sampler.scope
    r.nvml_base_gib = sampler.base_gib
    torch.cuda.set_device(index)
    _free, total_b = torch.cuda.mem_get_info(index)  # creates the context, allocates nothing
    total = gib(total_b)
    r.context_gib = sampler.own_gib()
    context_gib = max(0.0, sampler.used_gib() - sampler.base_gib)
    if shared:  # other cases use the device too: only this process's own reading is its context
        if r.context_gib is None:
            raise RuntimeError(
                "side by side, the CUDA context must be read from NVML's per-process list, which does"
                " not name this process here; run the case alone (--side-by-side 1)"
            )
        context_gib = r.context_gib
    props = torch.cuda.get_device_properties(index)
    r.gpu_name = props.name
    r.gpu_capability = f"{props.major}.{props.minor}"
    r.gpu_total_gib = total
    r.gpus_visible = torch.cuda.device_count()
    r.driver_version = gpu.driver_version if gpu else ""
    r.bf16_native = (props.major, props.minor) >= (8, 0)
    r.bf16_torch_supported = bool(torch.cuda.is_bf16_supported())
    cap = None if options.uncapped else options.memory_cap_gib  # oom_need: measure what it needs
    if cap is None and is_emulated(profile, gpu) and not options.uncapped:
        cap = profile.total_gib - context_gib
        r.emulated = True
        r.emulated_on = props.name
        # What the emulated card would say about bf16, not the host's answer.
        r.bf16_native = profile.native_bf16
    if cap is not None:
        r.memory_cap_gib = cap
    elif options.lane_share_gib is not None and not options.uncapped:
        # A lane of a real card: the suite's cap, kept apart from the profile's (memory_cap_gib).
        cap = r.lane_cap_gib = lane_cap_gib(options.lane_share_gib, context_gib)
    if cap is not None:
        torch.cuda.set_per_process_memory_fraction(min(1.0, max(cap, 0.01) / total), index)
    return sampler.start()


if __name__ == "__main__":
    child_main(sys.argv[1])
