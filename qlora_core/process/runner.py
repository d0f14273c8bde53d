"""The parent side of a case: start the child, wait, classify how it ended, return the Result.

The child (`qlora_core.process.child`) is a fresh interpreter, never a fork (forking after CUDA init is
undefined behaviour), so every case starts from a clean device: an OOM, a NaN, a hang, a crash
or a poisoned CUDA context is a recorded outcome of that case and cannot leak into the next one.
It runs in a process group of its own, which the parent kills whole on a timeout or when the
parent itself is interrupted. The child writes its Result atomically as each stage starts, so a
child that dies still leaves what it measured; the parent adds the exit code or the timeout.
How the child starts (cold, in a warm spare, under `accelerate launch`) is `launch.launch`'s
choice; the runner waits for it alike. This module imports no torch.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

from qlora_core.cases.case import Case
from qlora_core.measurement.result import Result, Status, read_result, write_atomic
from qlora_core.process import distributed
from qlora_core.process.launch import launch, launch_cold
from qlora_core.process.lifecycle import STACK_DUMP_SIGNAL, now_iso
from qlora_core.process.request import ChildRequest, RunOptions
from qlora_core.process.spare import SparePool

_KILL_GRACE_S = 5.0
_POLL_S = 0.25
"""How often the parent looks at the running child's Result file (for the moment to start the
next spare): a JSON parse of a few kB, four times a second."""


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
    interpreter (`python -m qlora_core.process.child REQUEST`) in its own process group, so a timeout
    kills it together with anything it started. Bad options raise here, before any child starts.
    `spares`: a pool of warm spares (`qlora_core.process.spare`) that runs single-GPU cases with their
    imports done and is given a new spare as soon as this case's child runs; None: cold.
    `on_wait`: called with `[result_path]` at every poll while the child runs, in this thread
    (the session's heartbeat reads the child's Result file there).
    """
    options.check()
    cleanup = result_path is None
    if result_path is None:
        fd, name = tempfile.mkstemp(prefix=f"qlora-{case.hash}-", suffix=".json")
        os.close(fd)
        result_path = Path(name)
    result_path.unlink(missing_ok=True)
    # Wall clock (comparable across processes): the child's start_s starts here.
    request = ChildRequest(case, options, result_path, parent_pid=os.getpid(), spawned_at=time.time())
    started = time.monotonic()
    started_at = now_iso()
    launched = launch(request, spares)
    timed_out = _wait(launched.process, request, spares, cancel, on_wait)
    if launched.spare is not None:
        shutil.move(launched.spare.log_path, request.log_path)  # its imports, then the case
        if not timed_out and not result_path.exists():
            # The spare died before it read the request (no Result file, not even start-up's): it
            # never had the case. Run it cold; the case is never lost to a dead spare.
            launched = launch_cold(request)
            timed_out = _wait(launched.process, request, spares, cancel, on_wait)
    wall_s = time.monotonic() - started
    if spares is not None:
        spares.ensure()  # for the next case, if none was started while this one ran
    request.path.unlink(missing_ok=True)
    if case.num_gpus > 1:  # multi-GPU: the case's row from its ranks' rows
        distributed.merge_rank_files(case, options.profile, options.families, result_path, request.log_path)
    result = _collect(request, launched.process.returncode, timed_out, started_at, wall_s)
    if cleanup:
        result_path.unlink(missing_ok=True)
        request.log_path.unlink(missing_ok=True)
        distributed.remove_rank_files(case, result_path)
    return result


def _wait(
    child: subprocess.Popen,
    request: ChildRequest,
    spares: SparePool | None,
    cancel: threading.Event | None = None,
    on_wait: OnWait | None = None,
) -> bool:
    """Wait for the case's child; whether it timed out (then it was killed, after its stacks were
    written). Starts the next spare while the child runs."""
    deadline = time.monotonic() + request.options.timeout_s
    try:
        while True:
            try:
                child.wait(timeout=max(0.0, min(_POLL_S, deadline - time.monotonic())))
                return False
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    _dump_stacks(child)
                    _kill_group(child)
                    return True
            if cancel is not None and cancel.is_set():
                _kill_group(child)
                raise CaseCancelled(f"case {request.case.id} was stopped before it ended")
            if spares is not None:
                spares.ensure()  # the next cases' spares import while this one runs (process.spare)
            if on_wait is not None:
                on_wait([request.result_path])
    except BaseException:
        # Interrupted (Ctrl-C, pytest stopping): the child has a session of its own and would
        # outlive us, holding the GPU. Take it down before going. (A parent killed outright
        # cannot; the child then dies with it: lifecycle.die_with_parent.)
        _kill_group(child)
        raise


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
    write its threads' Python stacks to the case's log (`lifecycle.STACK_DUMP_SIGNAL`), then give them
    `_STACK_DUMP_WAIT_S`. Only the suite's own processes: the launcher would take the signal's
    default action (end) and take its ranks down before they wrote."""
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
    `accelerate launch ... -m qlora_core.process.rank`, whose own module is accelerate's."""
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
    request: ChildRequest, exitcode: int | None, timed_out: bool, started_at: str, wall_s: float
) -> Result:
    """The child's last written Result, completed with what only the parent knows."""
    options, result_path = request.options, request.result_path
    try:
        result = read_result(result_path)
    except (OSError, ValueError, TypeError):
        result = Result.for_case(request.case, options.profile, options.families)
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
        tail = _log_tail(request.log_path)
        if tail:
            result.reason = f"{result.reason}\n--- last lines of {request.log_path.name} ---\n{tail}"
    result.started_at = result.started_at or started_at
    result.finished_at = now_iso()
    result.timing.wall_s = wall_s
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
