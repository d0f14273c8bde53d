"""How a case's first process starts: one `launch(request)` over three launchers
(`launch_accelerate`, `launch_spare`, `launch_cold`); the runner waits for what it returns alike.
See docs/design.md#how-a-cases-process-starts.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

from qlora_core.models.registry import needs_hub
from qlora_core.process import distributed
from qlora_core.process.request import ChildRequest
from qlora_core.process.spare import Spare, SparePool, hand_over

LAUNCHERS: tuple[str, ...] = ("accelerate", "spare", "cold")
"""The launchers, in the order `launch` considers them."""


@dataclass(frozen=True)
class Launched:
    """A case's first process, started: the process, its launcher (one of `LAUNCHERS`), and the
    spare it runs in (the spare launcher only)."""

    process: subprocess.Popen
    launcher: str
    spare: Spare | None = None


def launch(request: ChildRequest, spares: SparePool | None = None) -> Launched:
    """Write `request` and start its case: under `accelerate launch` for a multi-GPU case, else in
    a warm spare from `spares` when one is waiting, else cold. A CaseError (before anything
    starts) when the profile cannot run the multi-GPU case."""
    request.write(request.path)
    if request.case.num_gpus > 1:
        return launch_accelerate(request)
    warm = launch_spare(request, spares) if spares is not None else None
    return warm if warm is not None else launch_cold(request)


def launch_accelerate(request: ChildRequest) -> Launched:
    """The multi-GPU launcher: its accelerate config beside the Result, then the launcher process."""
    return Launched(_start(distributed.launch_command(request), request), "accelerate")


def launch_spare(request: ChildRequest, spares: SparePool) -> Launched | None:
    """Hand the case to the pool's oldest usable spare; None when none can take it: none waits,
    or the case's model is a hub id (its child runs online, `request.child_env`; a spare was
    started offline), or the spare died before the hand-over."""
    if needs_hub(request.case.model):
        return None
    spare = spares.take()
    if spare is None or not hand_over(spare, request.path):
        return None
    return Launched(spare.process, "spare", spare)


def launch_cold(request: ChildRequest) -> Launched:
    """A fresh interpreter for the case's child."""
    return Launched(
        _start([sys.executable, "-m", "qlora_core.process.child", str(request.path)], request), "cold"
    )


def _start(command: list[str], request: ChildRequest) -> subprocess.Popen:
    with request.log_path.open("w") as log:
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=request.env()
        )
