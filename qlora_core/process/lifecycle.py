"""The life of a case's processes, shared by the child, a warm spare, each rank and the multi-GPU
launcher: each dies with its parent (`die_with_parent`), writes its threads' stacks on
`STACK_DUMP_SIGNAL` (`arm_stack_dump`), and a model's checkpoint is created in a process of its
own (`materialize`). No torch is imported here at import time: the runner imports this module.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import faulthandler
import os
import signal
import subprocess
import sys

from qlora_core.models import ModelUnavailableError, Prequant
from qlora_core.process.request import child_env

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

STACK_DUMP_SIGNAL = signal.SIGUSR1
"""On this signal a case's process writes every thread's Python stack to its log (faulthandler)
and runs on: the runner sends it to a case that timed out before killing it, so a hang (a
collective that never completes, a deadlocked loader) leaves where it hung."""


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second (the Result's timestamps: a case's start in its
    child, its end in the runner)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def arm_stack_dump() -> None:
    """Dump every thread's stack to stderr (the case's log) on `STACK_DUMP_SIGNAL`."""
    faulthandler.register(STACK_DUMP_SIGNAL, all_threads=True, chain=False)


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when the parent dies (Linux).

    The parent kills the child's group when it is interrupted, but a parent that is killed
    outright (SIGKILL, a crashed runner) cannot; without this the child would run on, holding
    the GPU, until its own end.
    """
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def materialize(model: str, device: str, prequant: Prequant | None) -> bool:
    """Create a shape's checkpoint (or convert the real model) in a process of its own; whether it
    had to (False: the cache had it).

    Creating an 8B checkpoint allocates 16 GB on the GPU: done in this process it would run into
    an emulated profile's cap and count in this case's NVML and allocator numbers.
    """
    # Here, not at the top: models.resolve imports torch (through models.shapes), and the runner,
    # which must not, imports this module.
    from qlora_core.models.resolve import is_materialized

    if is_materialized(model, prequant):
        return False
    code = (
        "import sys; from qlora_core.models import Prequant; from qlora_core.models.resolve import"
        " resolve_model; resolve_model(sys.argv[1], device=sys.argv[2],"
        " prequant=Prequant.from_label(sys.argv[3]) if sys.argv[3] else None)"
    )
    label = prequant.label if prequant is not None else ""
    proc = subprocess.run(
        [sys.executable, "-c", code, model, device, label], capture_output=True, text=True, env=child_env()
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-6:])
        if "ModelUnavailableError" in proc.stderr:
            raise ModelUnavailableError(tail)
        raise RuntimeError(f"creating the checkpoint of {model} failed:\n{tail}")
    return True
