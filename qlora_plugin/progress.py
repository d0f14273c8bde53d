"""What a session prints while it waits: a heartbeat for long cases (`Heartbeat.tick`, at most
every `HEARTBEAT_S`) and the time left, each run weighted by its expected cost
(`shard.run_cost_s`). See docs/usage.md#the-time-left.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean

from qlora_core.cases.case import Case
from qlora_core.measurement.result import Result
from qlora_plugin.shard import recorded_run_s
from reports.gate.baseline import BaselineError

HEARTBEAT_S = 30.0
"""The time between two heartbeat lines while cases run, and how long a case runs before its first."""
_DYING_IN = "died during "  # the child's reason while a stage runs (`checkpointer.Checkpointer.stage`)


@dataclass(frozen=True)
class Watched:
    """A run the heartbeat may report on: its name (as the progress line names it) and the Result
    file its child writes."""

    name: str
    result_path: Path
    steps_planned: str = ""
    """How many optimizer steps the child runs, as the line says it after "step k": "of 5" where
    the plan is fixed (the CPU), "of at least 10" where it adapts (CUDA), "" where not known."""


def steps_planned(case: Case, adaptive: bool) -> str:
    """`Watched.steps_planned` of a case's own run: its warm-up and (minimum) measured steps."""
    steps = case.warmup_steps + case.measured_steps
    return f"of at least {steps}" if adaptive else f"of {steps}"


def read_stage_and_step(result_path: Path) -> tuple[str, int | None]:
    """(the stage the child is in, the optimizer steps it recorded) from its Result file:
    ("starting", None) before the child wrote one; the last stage written otherwise."""
    try:
        data = json.loads(result_path.read_text())
    except (OSError, ValueError):
        return "starting", None
    reason = str(data.get("reason") or "")
    stage = reason.removeprefix(_DYING_IN) if reason.startswith(_DYING_IN) else "ending"
    losses = data.get("losses")
    return stage, len(losses) if isinstance(losses, list) else None


def heartbeat_line(watched: Watched, running_s: float) -> str:
    """E.g. "  ... cpu-tiny-nf4-...: training, step 3 of 5, running 1:02"."""
    stage, step = read_stage_and_step(watched.result_path)
    parts = [stage]
    if stage == "training" and step is not None:
        parts.append(f"step {step} {watched.steps_planned}".rstrip())
    parts.append(f"running {format_duration(running_s)}")
    return f"  ... {watched.name}: {', '.join(parts)}"


@dataclass
class Heartbeat:
    """Writes a line per long-running case at most every `interval_s` (see the module docstring)."""

    write_line: Callable[[str], None]
    describe: Callable[[Path], Watched | None]
    """The run whose child writes a Result file (None: not one this session watches)."""
    interval_s: float = HEARTBEAT_S
    clock: Callable[[], float] = time.monotonic
    _since: dict[Path, float] = field(default_factory=dict)  # when each running file was first seen
    _last_beat: float | None = None

    def tick(self, running: Sequence[Path]) -> None:
        """Called while waiting, with the Result files of the children running now."""
        now = self.clock()
        self._since = {path: self._since.get(path, now) for path in running}
        if self._last_beat is not None and now - self._last_beat < self.interval_s:
            return
        due = [(path, now - since) for path, since in self._since.items() if now - since >= self.interval_s]
        lines = []
        for path, running_s in due:
            watched = self.describe(path)
            if watched is not None:
                lines.append(heartbeat_line(watched, running_s))
        if lines:
            self._last_beat = now
            for line in lines:
                self.write_line(line)


def format_duration(seconds: float) -> str:
    """`1:02:03`, `2:03` (minutes:seconds under an hour)."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def time_left_s(
    elapsed_s: float, made_expected_s: Sequence[float], left_expected_s: Sequence[float]
) -> float | None:
    """Seconds left: the expected cost of the runs left, scaled by how long the runs made took
    against their expected cost (see the module docstring); None before any run was made."""
    made = sum(made_expected_s)
    if made <= 0:
        return None
    return elapsed_s / made * sum(left_expected_s)


def timing_text(
    elapsed_s: float, made_expected_s: Sequence[float], left_expected_s: Sequence[float], runs_left: int
) -> str:
    """ "1:00 elapsed, ~2:00 left" (`time_left_s`); "..., done" with no run left; "..., time left
    unknown" before a run was made."""
    elapsed = format_duration(elapsed_s)
    if runs_left <= 0:
        return f"{elapsed} elapsed, done"
    seconds = time_left_s(elapsed_s, made_expected_s, left_expected_s)
    return f"{elapsed} elapsed, " + (
        "time left unknown" if seconds is None else f"~{format_duration(seconds)} left"
    )


def recorded_walls(sources: Iterable[Path | None], rows: Iterable[Result]) -> dict[str, float]:
    """Case id -> recorded wall seconds of one run: from each source in turn (a run folder or a
    baseline, as `--shard-costs` reads them; a later one wins), then the mean over `rows` (a
    resumed folder's own runs, on this machine). An unreadable source is skipped: the options and
    the gate report it."""
    recorded: dict[str, float] = {}
    for source in sources:
        if source is not None:
            with contextlib.suppress(OSError, ValueError, BaselineError):
                recorded.update(recorded_run_s(source))
    walls: dict[str, list[float]] = {}
    for row in rows:
        if row.timing.wall_s:
            walls.setdefault(row.case_id, []).append(row.timing.wall_s)
    recorded.update({case_id: mean(values) for case_id, values in walls.items()})
    return recorded
