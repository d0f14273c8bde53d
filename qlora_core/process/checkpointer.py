"""The child's Result file while a case runs (`qlora_core.process.child`): written atomically as each stage
starts, marked "died during <stage>" until the case ends, so a child that dies keeps what it
measured before; in training, after a step at most every `PROGRESS_SAVE_S`, for the parent's
heartbeat. Test-only faults (`qlora_core.process.faults`) fire as their stage starts."""

from __future__ import annotations

import time
from pathlib import Path

from qlora_core.measurement.result import Result, Status, write_atomic
from qlora_core.process import faults
from qlora_core.process.stages import STAGES

PROGRESS_SAVE_S = 10.0
"""During training the Result is written at most this often (after a step): the parent's
heartbeat (`qlora_plugin.progress`, every 30 s) reads the step count from it."""


class Checkpointer:
    """Writes the Result as each stage starts, marked as dying in it until the case ends."""

    def __init__(self, result: Result, path: Path) -> None:
        self.result = result
        self.path = path
        self.current = ""
        self.fault: faults.Fault | None = None
        self._saved_at = time.monotonic()

    def stage(self, name: str) -> None:
        if name not in STAGES:
            raise AssertionError(f"stage {name!r} is not in stages.STAGES")
        self.current = name
        self.result.status = Status.CRASHED.value
        self.result.reason = f"died during {name}"
        write_atomic(self.path, self.result.to_json())
        self._fire_if_due()

    def save(self) -> None:
        """Write the Result as it stands, in the current stage."""
        write_atomic(self.path, self.result.to_json())
        self._saved_at = time.monotonic()

    def save_progress(self) -> None:
        """`save`, at most every `PROGRESS_SAVE_S`: the steps so far, for the parent's heartbeat
        (it reads the file while it waits) and for a child that dies later in the stage."""
        if time.monotonic() - self._saved_at >= PROGRESS_SAVE_S:
            self.save()

    def arm(self, spec: str) -> None:
        """Inject the fault `spec` (KIND@STAGE, "" for none); fires now if STAGE is the current one."""
        self.fault = faults.parse_fault(spec)
        self._fire_if_due()

    def _fire_if_due(self) -> None:
        if self.fault is not None and self.fault.stage == self.current:
            self.result.reason += f" (injected fault {self.fault})"
            write_atomic(self.path, self.result.to_json())
            faults.fire(self.fault)

    def finish(self, status: Status, reason: str = "", tb: str = "") -> None:
        self.result.status = status.value
        self.result.reason = reason
        self.result.traceback = tb
        write_atomic(self.path, self.result.to_json())
