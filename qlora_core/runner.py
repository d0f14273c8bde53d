"""The parent side of a case: start the child, wait, classify how it ended, return the Result.

The child (`qlora_core.child`) is a fresh interpreter, never a fork (forking after CUDA init is
undefined behaviour), so every case starts from a clean device: an OOM, a NaN, a hang, a crash
or a poisoned CUDA context is a recorded outcome of that case and cannot leak into the next one.
It runs in a process group of its own, which the parent kills whole on a timeout or when the
parent itself is interrupted. The child writes its Result atomically as each stage starts, so a
child that dies still leaves what it measured; the parent adds the exit code or the timeout.
This module imports neither torch nor the child.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from qlora_core import distributed, faults
from qlora_core.gpus import first_visible_gpu, get_profile
from qlora_core.models.registry import needs_hub
from qlora_core.result import Result, Status, read_result, write_atomic
from qlora_core.spare import Spare, SparePool, hand_over
from qlora_core.spec import Case, CaseError

DEFAULT_TIMEOUT_S = 1800.0
_KILL_GRACE_S = 5.0
_POLL_S = 0.25
"""How often the parent looks at the running child's Result file (for the moment to start the
next spare): a JSON parse of a few kB, four times a second."""


@dataclass(frozen=True)
class RunOptions:
    """How the child runs a case (not part of the case's identity)."""

    profile: str = "cpu"
    timeout_s: float = DEFAULT_TIMEOUT_S
    memory_cap_gib: float | None = None
    """Cap the caching allocator at this many GiB (overrides the profile's emulation cap)."""
    families: str = ""
    overrides: str = ""
    repeat: int = 0
    """Which fresh-process repeat of the case this run is (0-based); recorded in the Result."""
    inject_fault: str = ""
    """Tests only: a fault `KIND@STAGE` the child inflicts on itself in this run (see
    `qlora_core.child`); "" for none. Not part of the case's identity."""
    adaptive_steps: bool | None = None
    """Measure until the step times are steady (`engines.pacing`); None: on CUDA only, where
    the time is the point (the CPU runs stay deterministic)."""
    uncapped: bool = False
    """The memory-only rerun of a case that ran out of memory under an emulated cap
    (`qlora_core.oom_need`): no allocator cap (the row says memory_cap_gib=None, emulated=False),
    `engines.pacing.MEMORY_ONLY_STEPS` fixed steps and no profiler window."""
    shared_device: int = 1
    """How many cases run on the device at once with this one (`qlora_core.side_by_side`); above 1
    its speed is not measured (None: other processes share the device), and its device memory is
    NVML's per-process line for its own process (`measure.NVML_PROCESS`)."""
    lane_share_gib: float | None = None
    """Side by side on a real card of the profile (`qlora_core.lanes`): this run's share of the
    device, GiB with its CUDA context; the child caps its allocator at the share less its measured
    context (`Result.lane_cap_gib`). Not the profile's cap (`memory_cap_gib` stays None): an OOM
    under it is the suite's, and the case reruns alone. None: no lane cap."""


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second (the Result's timestamps)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


OnWait = Callable[[Sequence[Path]], None]
"""Called while children run, in the thread that waits for them, with the Result files of the
children running (the session's heartbeat, `qlora_plugin.progress`, reads them)."""


class CaseCancelled(RuntimeError):
    """`run_case` was told to stop (`cancel` set): its child was killed; nothing to record."""


def run_case(
    case: Case,
    options: RunOptions,
    result_path: Path | None = None,
    spares: SparePool | None = None,
    cancel: threading.Event | None = None,
    on_wait: OnWait | None = None,
) -> Result:
    """Run `case` in a fresh child; always returns a Result (never raises for the case's fault).

    `result_path`: where the child writes its Result (a temp file when None). The child is a new
    interpreter (`python -m qlora_core.child REQUEST`) in its own process group, so a timeout
    kills it together with anything it started. Bad options raise here, before any child starts.
    `spares`: a pool of warm spares (`qlora_core.spare`) that runs single-GPU cases with their
    imports done and is given a new spare as soon as this case's child runs; None: cold.
    `on_wait`: called with `[result_path]` at every poll while the child runs, in this thread
    (the session's heartbeat reads the child's Result file there).
    """
    _check_options(options)
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
            {
                "case": case.to_dict(),
                "options": dataclasses.asdict(options),
                "result": str(result_path),
                "parent_pid": os.getpid(),
                # Wall clock (comparable across processes): the child's start_s starts here.
                "spawned_at": time.time(),
            }
        ),
    )
    log_path = result_path.with_suffix(".log")
    started = time.monotonic()
    started_at = now_iso()
    # A hub model's child runs online (`child_env`): not in a spare, which was started offline.
    hub_model = needs_hub(case.model)
    warm = spares.take() if spares is not None and case.num_gpus == 1 and not hub_model else None
    if warm is not None and not hand_over(warm, request):
        warm = None
    child, timed_out = _run_child(
        case, options, request, result_path, log_path, warm, spares, cancel, on_wait
    )
    if warm is not None:
        shutil.move(warm.log_path, log_path)  # the spare's log: its imports, then the case
        if not timed_out and not result_path.exists():
            # The spare died before it read the request (no Result file, not even start-up's):
            # it never had the case. Run it cold; the case is never lost to a dead spare.
            child, timed_out = _run_child(
                case, options, request, result_path, log_path, None, spares, cancel, on_wait
            )
    wall_s = time.monotonic() - started
    if spares is not None:
        spares.ensure()  # for the next case, if none was started while this one ran
    request.unlink(missing_ok=True)
    if case.num_gpus > 1:  # multi-GPU: the case's row from its ranks' rows
        distributed.merge_rank_files(case, options.profile, options.families, result_path, log_path)
    result = _collect(case, options, result_path, child.returncode, timed_out, started_at, wall_s)
    if cleanup:
        result_path.unlink(missing_ok=True)
        log_path.unlink(missing_ok=True)
        distributed.remove_rank_files(case, result_path)
    return result


def _run_child(
    case: Case,
    options: RunOptions,
    request: Path,
    result_path: Path,
    log_path: Path,
    warm: Spare | None,
    spares: SparePool | None,
    cancel: threading.Event | None = None,
    on_wait: OnWait | None = None,
) -> tuple[subprocess.Popen, bool]:
    """Start the case's child (or take the warm spare it was handed to) and wait for it; the
    child and whether it timed out. Starts the next spare while the child runs."""
    if warm is not None:
        child = warm.process
    else:
        command = [sys.executable, "-m", "qlora_core.child", str(request)]
        if case.num_gpus > 1:  # multi-GPU: `accelerate launch`, one process per rank
            command = distributed.launch_command(case, options.profile, request, result_path)
        with log_path.open("w") as log:
            env = child_env(case.num_gpus, hub_model=needs_hub(case.model))
            child = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
    deadline = time.monotonic() + options.timeout_s
    try:
        while True:
            try:
                child.wait(timeout=max(0.0, min(_POLL_S, deadline - time.monotonic())))
                return child, False
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    _dump_stacks(child)
                    _kill_group(child)
                    return child, True
            if cancel is not None and cancel.is_set():
                _kill_group(child)
                raise CaseCancelled(f"case {case.id} was stopped before it ended")
            if spares is not None:
                spares.ensure()  # the next cases' spares import while this one runs (qlora_core.spare)
            if on_wait is not None:
                on_wait([result_path])
    except BaseException:
        # Interrupted (Ctrl-C, pytest stopping): the child has a session of its own and would
        # outlive us, holding the GPU. Take it down before going. (A parent killed outright
        # cannot; the child then dies with it: child._die_with_parent.)
        _kill_group(child)
        raise


def _check_options(options: RunOptions) -> None:
    """Raise on options the child could not honour, naming the allowed values."""
    profile = get_profile(options.profile)
    if type(options.repeat) is not int or options.repeat < 0:
        raise CaseError([f"repeat={options.repeat!r} must be an integer >= 0 (0-based repeat index)"])
    if type(options.shared_device) is not int or options.shared_device < 1:
        raise CaseError([f"shared_device={options.shared_device!r} must be an integer >= 1 (1: alone)"])
    share = options.lane_share_gib
    if share is not None and (type(share) not in (int, float) or not share > 0):
        raise CaseError([f"lane_share_gib={share!r} must be a number of GiB > 0 (None: no lane cap)"])
    fault = faults.parse_fault(options.inject_fault)
    if fault is not None and fault.kind in faults.CUDA_ONLY_KINDS and not profile.is_gpu:
        raise CaseError([f"fault {fault} needs a GPU profile; profile {profile.name!r} runs on the CPU"])


OFFLINE_ENV = "HF_HUB_OFFLINE"
"""huggingface_hub's offline switch, on in every child whose model is local: bitsandbytes (0.50)
asks the `kernels` package for a CPU kernel from the hub (`kernels-community`) when imported on a
CPU with AVX512-BF16, and `kernels` resolves it from the local cache alone (no publisher check,
no download) when this is on. None is cached, so bitsandbytes keeps its built-in CPU kernel, as
it did when the hub was unreachable; CUDA kernels are not affected."""
_OFFLINE_KERNEL_LOGGERS = ("kernels._internals.hf_hub", "bitsandbytes.backends.cpu.ops")


class _OfflineKernelNotice(logging.Filter):
    """Drops what the two libraries log, in every child process, about the hub kernel that
    `OFFLINE_ENV` keeps out: its publisher check skipped, the kernel not in the local cache. An
    online attempt's lines (a failed publisher check, a download error) are kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("kernels-community" in message and "offline mode" in message)


def quiet_offline_kernel_notices() -> None:
    """Install `_OfflineKernelNotice` (the child, before it imports bitsandbytes)."""
    for name in _OFFLINE_KERNEL_LOGGERS:
        logging.getLogger(name).addFilter(_OfflineKernelNotice())


def child_env(num_gpus: int = 1, hub_model: bool = False) -> dict[str, str]:
    """The parent's environment, with the libraries' progress bars off (the log stays readable).

    No network: `OFFLINE_ENV` is on (unless the parent set it) except for a case whose model is a
    hub id (`registry.needs_hub`, `hub_model=True`): that child fetches the model, and says so
    clearly where the hub is unreachable (`resolve._resolve_hub`).

    A one-GPU case sees one GPU: the first the parent sees (`gpus.first_visible_gpu`). Shown
    several, transformers' `TrainingArguments` sets `n_gpu` to all of them and `Trainer` trains
    n_gpu x `per_device_train_batch_size` rows a step (a 4-bit model on one GPU; a 16-bit one
    under DataParallel on all): a one-GPU row measured so is another case's. A multi-GPU case
    (`accelerate launch`) is given every GPU the parent sees.

    Without pytest's PYTEST_CURRENT_TEST: pytest rewrites it at every phase of every test, so a
    warm spare started during one case's test would differ from the environment at the next
    case's hand-over and be discarded, every time (`spare.SparePool.take`); no child reads it.
    """
    env = dict(os.environ)
    env.pop("PYTEST_CURRENT_TEST", None)
    if num_gpus == 1:
        env["CUDA_VISIBLE_DEVICES"] = first_visible_gpu()
    if not hub_model:
        env.setdefault(OFFLINE_ENV, "1")
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


_STACK_DUMP_WAIT_S = 2.0
"""How long a timed-out case's processes get to write their stacks before they are killed."""


def _dump_stacks(child: subprocess.Popen) -> None:
    """Ask every process of a timed-out case (its child; under `accelerate launch`, each rank) to
    write its threads' Python stacks to the case's log (`child.STACK_DUMP_SIGNAL`), then give them
    `_STACK_DUMP_WAIT_S`. Only the suite's own processes: the launcher would take the signal's
    default action (end) and take its ranks down before they wrote."""
    import psutil

    from qlora_core.child import STACK_DUMP_SIGNAL

    try:
        parent = psutil.Process(child.pid)
        processes = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    signalled = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            if _runs_module_of_the_suite(process.cmdline()):
                process.send_signal(STACK_DUMP_SIGNAL)
                signalled += 1
    if signalled:
        time.sleep(_STACK_DUMP_WAIT_S)


def _runs_module_of_the_suite(argv: list[str]) -> bool:
    """Whether a process runs `python ... -m qlora_core.<module>` itself (a child, a rank); not
    `accelerate launch ... -m qlora_core.rank`, whose own module is accelerate's."""
    if "-m" not in argv:
        return False
    position = argv.index("-m") + 1
    return position < len(argv) and argv[position].startswith("qlora_core.")


def _kill_group(child: subprocess.Popen) -> None:
    """SIGTERM the child's process group, then SIGKILL what is left after a grace period.

    With the groups of its descendants in sessions of their own: the ranks of a multi-GPU case.
    """
    groups = [child.pid, *distributed.process_groups(child.pid)]
    for sig, wait_s in ((signal.SIGTERM, _KILL_GRACE_S), (signal.SIGKILL, None)):
        for group in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, sig)
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
        where = f" (in {stage})" if stage else ""
        result.reason = f"no result after {options.timeout_s:g} s{where}; its threads' stacks are in its log"
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
    result.repeat = options.repeat
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
