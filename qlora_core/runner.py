"""Run one Case in a fresh child process and return its Result.

The child is *spawned* (never forked: forking after CUDA init is undefined behaviour) so every
case starts from a clean device: an OOM, a NaN, a hang, a crash or a poisoned CUDA context is a
recorded outcome of that case and cannot leak into the next one. The child writes its Result
atomically after every stage, so a child that dies still leaves what it measured; the parent
adds the exit code or the timeout and returns the row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from qlora_core.gpus import GpuProfile, detect_gpu, get_profile, is_emulated
from qlora_core.result import Result, Status, read_result, write_atomic
from qlora_core.spec import Case, CaseError

DEFAULT_TIMEOUT_S = 1800.0
_KILL_GRACE_S = 5.0


@dataclass(frozen=True)
class RunOptions:
    """How the child runs a case (not part of the case's identity)."""

    profile: str = "cpu"
    timeout_s: float = DEFAULT_TIMEOUT_S
    memory_cap_gib: float | None = None
    """Cap the caching allocator at this many GiB (overrides the profile's emulation cap)."""
    families: str = ""
    overrides: str = ""


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def run_case(case: Case, options: RunOptions, result_path: Path | None = None) -> Result:
    """Run `case` in a fresh child; always returns a Result (never raises for the case's fault).

    `result_path`: where the child writes its Result (a temp file when None). The child is a new
    interpreter (`python -m qlora_core.runner REQUEST`) in its own process group, so a timeout
    kills it together with anything it started.
    """
    get_profile(options.profile)  # fail fast, in the parent, on a bad profile
    cleanup = result_path is None
    if result_path is None:
        fd, name = tempfile.mkstemp(prefix=f"qlora-{case.hash}-", suffix=".json")
        os.close(fd)
        result_path = Path(name)
    result_path.unlink(missing_ok=True)
    request = result_path.with_name(result_path.name + ".request")
    write_atomic(
        request,
        json.dumps(
            {"case": case.to_dict(), "options": dataclasses.asdict(options), "result": str(result_path)}
        ),
    )
    log_path = result_path.with_suffix(".log")
    started = time.monotonic()
    started_at = now_iso()
    with log_path.open("w") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "qlora_core.runner", str(request)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=_child_env(),
        )
        timed_out = False
        try:
            child.wait(timeout=options.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(child)
        except BaseException:
            # Interrupted (Ctrl-C, a killed session): the child has a session of its own and
            # would outlive us, holding the GPU. Take it down before going.
            _kill_group(child)
            raise
    wall_s = time.monotonic() - started
    request.unlink(missing_ok=True)
    result = _collect(case, options, result_path, child.returncode, timed_out, started_at, wall_s)
    if cleanup:
        result_path.unlink(missing_ok=True)
        log_path.unlink(missing_ok=True)
    return result


def _child_env() -> dict[str, str]:
    """The parent's environment, with the libraries' progress bars off (the log stays readable)."""
    env = dict(os.environ)
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    env.setdefault("TQDM_DISABLE", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _log_tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def _kill_group(child: subprocess.Popen) -> None:
    """SIGTERM the child's process group, then SIGKILL what is left after a grace period."""
    for sig, wait_s in ((signal.SIGTERM, _KILL_GRACE_S), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, sig)
        try:
            child.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _collect(
    case: Case,
    options: RunOptions,
    result_path: Path,
    exitcode: int | None,
    timed_out: bool,
    started_at: str,
    wall_s: float,
) -> Result:
    """The child's last written Result, completed with what only the parent knows."""
    try:
        result = read_result(result_path)
    except (OSError, ValueError, TypeError):
        result = Result.for_case(case, options.profile, options.families)
        result.reason = "the child wrote no result"
    if timed_out:
        stage = result.reason.removeprefix("died during ") if result.status == "crashed" else ""
        result.status = Status.TIMEOUT.value
        result.reason = f"no result after {options.timeout_s:g} s" + (f" (in {stage})" if stage else "")
    elif exitcode != 0 and result.status in ("crashed", ""):
        result.status = Status.CRASHED.value
        how = _describe_exit(exitcode)
        result.reason = f"{result.reason}; child {how}" if result.reason else f"child {how}"
    if result.status in ("crashed", "timeout", "cuda_error"):
        log_path = result_path.with_suffix(".log")
        tail = _log_tail(log_path)
        if tail:
            result.reason = f"{result.reason}\n--- last lines of {log_path.name} ---\n{tail}"
    result.started_at = result.started_at or started_at
    result.finished_at = now_iso()
    result.wall_s = wall_s
    result.families = options.families
    result.overrides = options.overrides
    write_atomic(result_path, result.to_json())
    return result


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "did not exit"
    if exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-exitcode).name}"
        return f"killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


# ---------------------------------------------------------------------------------------------
# The child
# ---------------------------------------------------------------------------------------------


def classify_exception(exc: BaseException) -> Status:
    """Map an exception raised while running a case to its outcome."""
    import torch

    from qlora_core.models import ModelUnavailableError

    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text.lower():
        return Status.OOM
    if "DefaultCPUAllocator: can't allocate memory" in text:
        return Status.OOM
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if (accelerator_error is not None and isinstance(exc, accelerator_error)) or any(
        marker in text
        for marker in ("CUDA error", "device-side assert", "illegal memory access", "cuBLAS error")
    ):
        return Status.CUDA_ERROR
    if isinstance(exc, ModelUnavailableError):
        return Status.MISSING_MODEL
    if isinstance(exc, NotImplementedError) or "not supported" in text.lower():
        return Status.UNSUPPORTED
    if isinstance(exc, (CaseError, ValueError, KeyError, TypeError)):
        return Status.CONFIG_ERROR
    return Status.CRASHED


def environment_fields() -> dict[str, str]:
    """Library versions of this process, as Result fields."""
    import importlib.metadata as md

    def version(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return ""

    import torch

    return {
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda or "",
        "transformers_version": version("transformers"),
        "peft_version": version("peft"),
        "bitsandbytes_version": version("bitsandbytes"),
        "accelerate_version": version("accelerate"),
    }


class _Checkpointer:
    """Writes the Result after each stage, marked as dying in the next one until it ends."""

    def __init__(self, result: Result, path: Path) -> None:
        self.result = result
        self.path = path

    def stage(self, name: str) -> None:
        self.result.status = Status.CRASHED.value
        self.result.reason = f"died during {name}"
        write_atomic(self.path, self.result.to_json())

    def finish(self, status: Status, reason: str = "") -> None:
        self.result.status = status.value
        self.result.reason = reason
        write_atomic(self.path, self.result.to_json())


def child_main(request_path: str) -> None:
    """Entry point of the child: read the request, run the case, write the Result, exit 0."""
    request = json.loads(Path(request_path).read_text())
    case = Case.from_dict(request["case"])
    options = RunOptions(**request["options"])
    result_path = request["result"]
    result = Result.for_case(case, options.profile, options.families)
    result.started_at = now_iso()
    result.overrides = options.overrides
    ckpt = _Checkpointer(result, Path(result_path))
    ckpt.stage("start-up")
    try:
        status, reason = _run_in_child(case, options, ckpt)
    except BaseException as exc:  # every outcome is a row: classify, keep the measurements
        status = classify_exception(exc)
        tail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        reason = f"{ckpt.result.reason.removeprefix('died during ')}: {tail}"[:2000]
    ckpt.finish(status, reason)
    # Flush and leave without running atexit handlers of CUDA libraries that may hang after an
    # error; the result is already on disk.
    os._exit(0)


def _apply_fault(case: Case, where: str) -> None:
    """Test-only fault injection through `case.extra` (e.g. ('fault', 'exit')); no-op otherwise."""
    fault = dict(case.extra).get("fault")
    if fault == "exit" and where == "before-prepare":
        os._exit(3)
    if fault == "hang" and where == "before-prepare":
        time.sleep(10**6)


def _run_in_child(case: Case, options: RunOptions, ckpt: _Checkpointer) -> tuple[Status, str]:
    r = ckpt.result
    profile = get_profile(options.profile)
    gpu = detect_gpu() if profile.is_gpu else None
    device = "cuda" if gpu is not None else "cpu"
    r.device = device
    sampler = None
    if device == "cuda":
        ckpt.stage("model creation")
        _materialize(case.model, device)
        sampler = _setup_cuda(r, profile, gpu, options)
    import torch

    from qlora_core import data as data_mod
    from qlora_core import load, measure, quality, train
    from qlora_core.models.resolve import resolve_model

    for key, value in environment_fields().items():
        setattr(r, key, value)
    torch.manual_seed(case.seed)

    ckpt.stage("model resolution")
    resolved = resolve_model(case.model, device=device)

    ckpt.stage("load")
    t0 = time.perf_counter()
    model = load.load_model(case, resolved.path, device)
    r.load_s = time.perf_counter() - t0
    counted = measure.weight_bytes(model)
    r.weight_bytes = counted.weight_bytes
    r.quant_data_bytes = counted.quant_data_bytes
    r.quant_stats_bytes = counted.quant_stats_bytes
    r.quantized_params = counted.quantized_params
    r.footprint_bytes = counted.footprint_bytes
    _record_stage(r, "load", device)

    ckpt.stage("prepare")  # also saves what load measured, so a crash from here keeps it
    _apply_fault(case, "before-prepare")
    model = load.prepare(model, case)
    _record_stage(r, "prepare", device)

    ckpt.stage("LoRA")
    model = load.add_lora(model, case)
    r.trainable_params, r.total_params = measure.parameter_counts(model)
    r.trainable_dtypes = measure.trainable_dtypes(model)
    r.trainable_bytes = measure.trainable_bytes(model)
    _record_stage(r, "lora", device)

    ckpt.stage("data")
    steps = case.warmup_steps + case.measured_steps
    count = steps * case.grad_accum
    heldout = None
    if case.data == "text":
        ids = data_mod.tokenize_corpus(resolved.tokenizer_path, resolved.vocab_size)
        train_ids, heldout_ids = data_mod.split_train_heldout(ids)
        batches = data_mod.text_batches(train_ids, case.batch_size, case.seq_len, count, case.seed)
        heldout = data_mod.heldout_windows(heldout_ids, case.seq_len, max_windows=16)
        ckpt.stage("perplexity before training")
        r.ppl_before = quality.perplexity(model, heldout, device)
    else:
        batches = data_mod.synthetic_batches(
            resolved.vocab_size, case.batch_size, case.seq_len, count, case.seed
        )

    ckpt.stage("training")
    if device == "cuda":
        measure.reset_cuda_peaks()
    r.tokens_per_step = case.tokens_per_step

    def on_step(step: int, stats: train.TrainStats) -> None:
        r.losses, r.grad_norms, r.step_ms = stats.losses, stats.grad_norms, stats.step_ms

    stats = train.train(model, case, batches, device, on_step=on_step)
    if device == "cuda":
        r.peak_alloc_gib, r.peak_reserved_gib = measure.cuda_peaks()
    if sampler is not None:
        r.nvml_peak_gib = sampler.stop()
    r.cpu_peak_rss_gib = measure.peak_rss_gib()
    r.losses, r.grad_norms, r.step_ms = stats.losses, stats.grad_norms, stats.step_ms
    r.first_loss = stats.losses[0] if stats.losses else None
    r.final_loss = stats.losses[-1] if stats.losses else None
    r.first_nonfinite_step = stats.first_nonfinite_step
    r.optimizer_state_bytes = stats.optimizer_state_bytes
    summarize_steps(r)
    if stats.diverged:
        return Status.NAN, f"non-finite loss or gradient norm at step {stats.first_nonfinite_step}"
    if heldout is not None:
        ckpt.stage("perplexity after training")
        r.ppl_after = quality.perplexity(model, heldout, device)
    return Status.OK, ""


def _materialize(model: str, device: str) -> None:
    """Create a shape's checkpoint (or convert the real model) in a process of its own.

    Creating an 8B checkpoint allocates 16 GB on the GPU: done in this process it would run into
    an emulated profile's cap and count in this case's NVML and allocator numbers.
    """
    from qlora_core.models import ModelUnavailableError
    from qlora_core.models.resolve import is_materialized

    if is_materialized(model):
        return
    code = (
        "import sys; from qlora_core.models.resolve import resolve_model;"
        " resolve_model(sys.argv[1], device=sys.argv[2])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, model, device], capture_output=True, text=True, env=_child_env()
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-6:])
        if "ModelUnavailableError" in proc.stderr:
            raise ModelUnavailableError(tail)
        raise RuntimeError(f"creating the checkpoint of {model} failed:\n{tail}")


def summarize_steps(r: Result) -> None:
    """Median step time, its relative spread (p90 - p10) / median, and tokens/s."""
    if not r.step_ms:
        return
    ordered = sorted(r.step_ms)
    median = statistics.median(ordered)
    r.step_ms_median = median

    def pct(q: float) -> float:
        pos = q * (len(ordered) - 1)
        lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)

    r.step_ms_spread = (pct(0.9) - pct(0.1)) / median if median > 0 else None
    if r.tokens_per_step and median > 0:
        r.tokens_per_s = r.tokens_per_step / (median / 1000.0)


def _record_stage(r: Result, stage: str, device: str) -> None:
    from qlora_core import measure

    if device == "cuda":
        alloc, reserved = measure.cuda_stage_memory()
    else:
        # On the CPU the process RSS is what the stage costs; reserved has no meaning.
        alloc, reserved = measure.current_rss_gib(), None
    setattr(r, f"{stage}_alloc_gib", alloc)
    setattr(r, f"{stage}_reserved_gib", reserved)


def _setup_cuda(r: Result, profile: GpuProfile, gpu, options: RunOptions):
    """Read NVML before anything touches the device, create the context, cap the allocator.

    Emulating a smaller GPU: the cap is the profile's device memory minus this process's CUDA
    context (measured here, since the allocator cannot see it), as a fraction of the real card.
    """
    import torch

    from qlora_core.measure import NvmlSampler, gib

    sampler = NvmlSampler(0)
    r.nvml_base_gib = sampler.base_gib
    _free, total_b = torch.cuda.mem_get_info(0)  # creates the context, allocates nothing
    total = gib(total_b)
    context_gib = max(0.0, sampler.used_gib() - sampler.base_gib)
    props = torch.cuda.get_device_properties(0)
    r.gpu_name = props.name
    r.gpu_capability = f"{props.major}.{props.minor}"
    r.gpu_total_gib = total
    r.driver_version = gpu.driver_version if gpu else ""
    r.bf16_native = (props.major, props.minor) >= (8, 0)
    r.bf16_torch_supported = bool(torch.cuda.is_bf16_supported())
    cap = options.memory_cap_gib
    if cap is None and is_emulated(profile, gpu):
        cap = profile.total_gib - context_gib
        r.emulated = True
        r.emulated_on = props.name
        # What the emulated card would say about bf16, not the host's answer.
        r.bf16_native = profile.native_bf16
    if cap is not None:
        torch.cuda.set_per_process_memory_fraction(min(1.0, max(cap, 0.01) / total), 0)
        r.memory_cap_gib = cap
    return sampler.start()


if __name__ == "__main__":
    child_main(sys.argv[1])
