"""One `pytest bench` session: its run folder, resume, progress lines and outputs.

`BenchSession.open` takes the run folder under an exclusive lock; `BenchSession.run` runs one
`CaseRun` and appends its row; `finish` writes results.csv/.parquet and environment.json.
See docs/usage.md#faults-of-the-session.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import platform
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

import pandas as pd

from qlora_core.cases.case import Case
from qlora_core.cases.matrix import PlannedCase
from qlora_core.cases.tiers import cpu_text_note
from qlora_core.measurement.result import FINAL_STATUSES, Result, repeat_suffix, write_atomic
from qlora_core.process.child import environment_fields
from qlora_core.process.lanes import Lane, card_budget_gib, lane_rerun_reason, plan_lane, set_aside_lane_run
from qlora_core.process.oom_need import (
    measure_need,
    run_case_measuring_need,
    uncapped_file_name,
    why_no_rerun,
)
from qlora_core.process.request import RunOptions
from qlora_core.process.side_by_side import Job, ran_alone_on_gpu, run_side_by_side, sharing_supported
from qlora_core.process.spare import SparePool
from qlora_plugin.options import BenchOptions
from qlora_plugin.progress import Heartbeat, Watched, recorded_walls, steps_planned, timing_text
from qlora_plugin.resume import recorded_settings
from qlora_plugin.shard import run_cost_s
from reports.run import folder
from reports.run.completeness import INCOMPLETE, PLANNED_RUNS, Incompleteness, folder_incompleteness
from reports.run.frame import MATRIX_NOTES, RunData, load_run, write_result_tables
from reports.run.repeats import fold_repeats
from reports.tables.wall_time import wall_time_line


class CaseRun(NamedTuple):
    """One run of a planned case: its 0-based repeat (each repeat is a fresh child process)."""

    planned: PlannedCase
    repeat: int = 0


RunKey = tuple[str, int]  # (case hash, repeat): what --resume keys finished work by


class ResultNotStoredError(RuntimeError):
    """A case's row could not be appended to results.jsonl (e.g. the disk is full)."""


@dataclass
class BenchSession:
    """Run folder and results of one session. Create with `BenchSession.open`; `close` at the end."""

    options: BenchOptions
    run_dir: Path
    planned: list[CaseRun] = field(default_factory=list)  # the runs selected, every repeat
    results: dict[RunKey, Result] = field(default_factory=dict)  # this session's runs
    stored: dict[RunKey, Result] = field(default_factory=dict)  # from --resume, reusable
    reused: set[RunKey] = field(default_factory=set)
    write_line: Callable[[str], None] = print
    started_at: str = ""
    earlier_commands: list[str] = field(default_factory=list)  # sessions this run resumed
    warnings: list[str] = field(default_factory=list)  # shown again in the summary
    matrix_case_ids: list[str] = field(default_factory=list)  # the whole matrix (every shard's)
    planned_runs: dict[str, int] = field(default_factory=dict)  # the folder's cases -> repeats
    _opened_at: float = field(default_factory=time.monotonic)  # for the progress line's times
    _lock: IO[str] | None = None
    spares: SparePool = field(default_factory=SparePool)  # warm spare children (qlora_core/process/spare.py)
    _sharing_note_given: bool = False
    _expected_s: dict[RunKey, float] | None = None  # each planned run's expected cost (time left)
    _heartbeat: Heartbeat | None = None

    @classmethod
    def open(
        cls,
        options: BenchOptions,
        write_line: Callable[[str], None] = print,
        matrix_case_ids: list[str] | None = None,
        planned_runs: dict[str, int] | None = None,
    ) -> BenchSession:
        """Take the run folder (RunFolderInUseError if another session holds it) and read what
        --resume can reuse. `matrix_case_ids`: the whole matrix's ids, recorded so that a merge of
        shards can name the cases no shard ran; `planned_runs`: the runs the folder is to hold
        (its shard's cases with --shard), recorded so that every reader can tell what is missing
        (`reports.run.completeness`)."""
        name = f"{options.profile.name}-{options.matrix}"
        run_dir = options.resume if options.resume is not None else folder.new_run_dir(options.out, name)
        session = cls(options, run_dir, write_line=write_line, matrix_case_ids=list(matrix_case_ids or []))
        session.planned_runs = dict(planned_runs or {})
        session._lock = folder.lock_run_dir(run_dir)
        try:
            session._open_folder()
        except BaseException:  # interrupted or failed while opening: the lock goes with it
            session.close()
            raise
        return session

    def _open_folder(self) -> None:
        """Read what --resume can reuse, record the environment, start the first spare."""
        if self.options.resume is not None:
            self._read_stored()
            earlier = folder.read_environment(self.run_dir)
            if earlier:
                self.earlier_commands = earlier.get("commands") or [earlier.get("command", "")]
        self.started_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self._heartbeat = Heartbeat(self.write_line, self._watched)
        self.write_environment()
        self.spares.prime()  # the first case's spare, and the probe of what spares may import

    def close(self) -> None:
        """End the waiting spare; release and remove the run folder's lock (a dead process
        releases it too, but leaves the file)."""
        try:
            self.spares.shutdown()
        finally:
            if self._lock is not None:
                folder.unlock_run_dir(self._lock, self.run_dir)
                self._lock = None

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self.write_line(f"qlora-bench: warning: {message}")

    def _read_stored(self) -> None:
        torn = folder.repair_torn_tail(self.run_dir / folder.RESULTS_JSONL)
        if torn:
            self.warn(torn)
        stored = folder.read_results(self.run_dir / folder.RESULTS_JSONL)
        for note in stored.notes:
            self.warn(note)
        for result in stored.results:
            problem = (
                folder.case_file_problem(self.run_dir, result) if result.status in FINAL_STATUSES else None
            )
            if problem:
                self.warn(f"{problem}: case {result.case_id} is treated as not measured and reruns")
                continue
            self.stored[(result.case_hash, result.repeat)] = result

    # -- running ---------------------------------------------------------------------------------
    def selected_case_ids(self) -> set[str]:
        """Ids of the cases this session selected (after `-k` and deselection)."""
        return {case_run.planned.case.id for case_run in self.planned}

    def executed_case(self, planned: PlannedCase) -> Case:
        """The case as run: the matrix's case with any --force fields applied."""
        if not self.options.force:
            return planned.case
        return planned.case.replace(**dict(self.options.force))

    def run(self, run: CaseRun) -> Result:
        """Run (or, on --resume, reuse) one repeat of a planned case; append and report its Result.
        A shareable case runs side by side with every other shareable run still to make
        (`_run_side_by_side`) when the session shares the device."""
        planned, case = run.planned, run.planned.case
        key = (case.hash, run.repeat)
        if key in self.results:  # already run, side by side with an earlier one
            return self.results[key]
        previous = self._stored_final(key)
        path = self._result_path(run)
        if previous is not None:
            if self.options.oom_rerun and why_no_rerun(previous) is None:
                # Stored before its uncapped rerun was (an older run, or --no-oom-rerun): only the
                # rerun runs, and the row is appended again with what it needed.
                executed, options = self.executed_case(planned), self._run_options(run)
                measure_need(executed, options, previous, path, self.spares, self._beat)
                self.record(previous)
                return previous
            self.reused.add(key)
            self.results[key] = previous
            self._progress(previous, reused=True)
            return previous
        if self._shares(run):
            self._run_side_by_side(run)
            return self.results[key]
        executed = self.executed_case(planned)
        result = run_case_measuring_need(
            executed, self._run_options(run), path, self.options.oom_rerun, self.spares, self._beat
        )
        self._record_as_planned(result, run)
        return result

    def _stored_final(self, key: RunKey) -> Result | None:
        """The stored (--resume) Result of a run that needs no new run, else None."""
        previous = self.stored.get(key)
        if previous is None or previous.status not in FINAL_STATUSES or self.options.force:
            return None
        return previous

    def _result_path(self, run: CaseRun) -> Path:
        return folder.case_result_path(self.run_dir, run.planned.case.hash, run.repeat)

    def _record_as_planned(self, result: Result, run: CaseRun) -> None:
        # The matrix's identity stays the key (the gate matches on it); what ran is in `case`.
        result.case_id, result.case_hash = run.planned.case.id, run.planned.case.hash
        self.record(result)

    def _shares(self, run: CaseRun) -> bool:
        """Whether `run` goes side by side: a shareable case, --side-by-side above 1, and a session
        where sharing is known to be measured right (`side_by_side.sharing_supported`)."""
        if self.options.side_by_side <= 1 or not run.planned.shareable:
            return False
        alone = self._lane(run).alone
        if alone:  # its estimated need does not fit beside another case on the real card
            self.write_line(f"qlora-bench: {run_label(run)} runs alone: {alone}")
            return False
        rows = [*self.results.values(), *self.stored.values()]
        if sharing_supported(self.options.profile, rows):
            return True
        ran_alone = [r for r in rows if ran_alone_on_gpu(r)]
        if ran_alone and not self._sharing_note_given:  # before any row alone: no evidence yet, no problem
            self._sharing_note_given = True
            self.warn(
                f"{len(ran_alone)} row(s) of this session ran alone, and in none did its own line of NVML's"
                " per-process list agree with the device's reading (side_by_side.own_line_agrees),"
                " so shareable cases run alone"
            )
        return False

    def _run_side_by_side(self, first: CaseRun) -> None:
        """Run `first` and every other shareable run of the session still to make, up to
        --side-by-side at once; then, alone, the uncapped rerun of any that ran out of memory."""
        runs = [first] + [
            r
            for r in self.planned
            if r != first
            and r.planned.shareable
            and not self._lane(r).alone
            and (r.planned.case.hash, r.repeat) not in self.results
            and self._stored_final((r.planned.case.hash, r.repeat)) is None
        ]
        planned = [(r, self._lane(r)) for r in runs]
        # The largest shares first: they start while the card is free, the small ones fill around.
        planned.sort(key=lambda pair: -(pair[1].share_gib or 0.0))
        jobs = {self._lane_job(r, lane): (r, lane) for r, lane in planned}
        finished: list[tuple[Job, Result]] = []
        again: list[tuple[Job, str]] = []  # lane runs of a real card to run again alone

        def done(job: Job, result: Result) -> None:
            run, lane = jobs[job]
            why = lane_rerun_reason(job.case, lane, result)
            if why is not None:  # not the profile's verdict: its row is the rerun's, alone
                set_aside_lane_run(job.result_path)
                self.write_line(f"qlora-bench: {run_label(run)}: {why}; it runs again alone")
                again.append((job, why))
                return
            self._record_as_planned(result, run)
            finished.append((job, result))

        budget = card_budget_gib(self.options.profile, self.options.gpu_present)
        run_side_by_side(list(jobs), self.options.side_by_side, done, self.spares, budget, self._beat)
        for job, why in again:
            self._rerun_alone(job, jobs[job][0], why)
        for job, result in finished:
            if self.options.oom_rerun and why_no_rerun(result) is None:
                measure_need(job.case, job.options, result, job.result_path, self.spares, self._beat)
                self.record(result)  # appended again, with what it needed

    def _rerun_alone(self, job: Job, run: CaseRun, why: str) -> None:
        """Run a case alone, uncapped, whose run sharing a real card cannot stand (`why`); its row
        says so (`lane_rerun_reason`, `lane_rerun_share_gib`)."""
        alone = run_case_measuring_need(
            job.case, self._run_options(run), job.result_path, self.options.oom_rerun, self.spares, self._beat
        )
        alone.hardware.lane_rerun_reason, alone.hardware.lane_rerun_share_gib = why, job.share_gib
        write_atomic(job.result_path, alone.to_json())
        self._record_as_planned(alone, run)

    def _lane(self, run: CaseRun) -> Lane:
        """How a shareable run shares this session's device (`lanes.plan_lane`)."""
        return plan_lane(self.executed_case(run.planned), self.options.profile, self.options.gpu_present)

    def _lane_job(self, run: CaseRun, lane: Lane) -> Job:
        """The run as a job side by side: capped at its share on a real card (`lane_share_gib`)."""
        options = self._run_options(run)
        if lane.real_card:
            options = dataclasses.replace(options, lane_share_gib=lane.share_gib)
        return Job(self.executed_case(run.planned), options, self._result_path(run), lane.share_gib)

    def _run_options(self, run: CaseRun) -> RunOptions:
        return RunOptions(
            profile=self.options.profile.name,
            timeout_s=self.options.case_timeout_s,
            families=run.planned.tags,
            overrides=",".join(f"{k}={v}" for k, v in self.options.force),
            repeat=run.repeat,
        )

    def record(self, result: Result) -> None:
        """Append `result` to results.jsonl (whole, or not at all) and print its progress line."""
        path = self.run_dir / folder.RESULTS_JSONL
        try:
            folder.append_result(self.run_dir, result)
        except OSError as exc:
            raise ResultNotStoredError(
                f"case {result.case_id} ran ({result.status}) but its row could not be appended to {path}:"
                f" {exc}. Every earlier row is intact; the case's own result is in"
                f" {folder.case_result_path(self.run_dir, result.case_hash, result.repeat)}."
                " Free the space and run"
                f" again with --resume {self.run_dir}: this case reruns."
            ) from exc
        self.results[(result.case_hash, result.repeat)] = result
        self._progress(result)

    def _progress(self, r: Result, reused: bool = False) -> None:
        done = len(self.results)
        total = len(self.planned) or done
        speed = f"{r.training.tokens_per_s:,.0f} tok/s" if r.training.tokens_per_s else "-"
        peak = (
            r.memory.peak_reserved_gib
            if r.memory.peak_reserved_gib is not None
            else r.memory.cpu_peak_rss_gib
        )
        peak_text = f"peak {peak:.2f} GiB" if peak is not None else "peak -"
        took = "reused" if reused else f"{r.timing.wall_s or 0:.1f} s"
        name = self._run_name(r)
        line = f"[{done}/{total}] {name}  {r.status}  {speed}  {peak_text}  ({took})  {self._timing(total)}"
        if r.status != "ok" and r.reason:
            line += f"  {r.reason.splitlines()[0][:160]}"
        self.write_line(line)

    def _timing(self, total: int) -> str:
        """Elapsed time of the session and the time left for its remaining runs, from each run's
        expected cost (`progress.timing_text`; reused runs take none)."""
        expected = self._expected_costs()
        made = [expected.get(key, 0.0) for key in self.results if key not in self.reused]
        left = [cost for key, cost in expected.items() if key not in self.results]
        return timing_text(time.monotonic() - self._opened_at, made, left, total - len(self.results))

    def _expected_costs(self) -> dict[RunKey, float]:
        """Each planned run's expected seconds (computed once): the wall time recorded for its case
        (this folder's earlier rows on --resume, else --shard-costs, else --baseline), else the
        estimate shards are balanced by (`shard.run_cost_s`)."""
        if self._expected_s is None:
            sources = (self.options.baseline, self.options.shard_costs)
            recorded = recorded_walls(sources, self.stored.values())
            device = "cuda" if self.options.profile.is_gpu else "cpu"
            self._expected_s = {
                (r.planned.case.hash, r.repeat): run_cost_s(r.planned.case, recorded, device)
                for r in self.planned
            }
        return self._expected_s

    # -- the heartbeat -------------------------------------------------------------------------------
    def _beat(self, running: Sequence[Path]) -> None:
        """`runner.OnWait`: the heartbeat's tick while children run."""
        if self._heartbeat is not None:
            self._heartbeat.tick(running)

    def _watched(self, result_path: Path) -> Watched | None:
        """The run whose child writes `result_path` (its own file or its uncapped rerun's)."""
        adaptive = self.options.profile.is_gpu  # the step plan adapts on CUDA only (engines.pacing)
        for run in self.planned:
            case, name = run.planned.case, self._run_name(run)
            if result_path == self._result_path(run):
                return Watched(name, result_path, steps_planned(case, adaptive))
            if result_path.name == uncapped_file_name(case.hash, run.repeat):
                return Watched(f"{name} (uncapped rerun)", result_path)
        return None

    def _run_name(self, run: CaseRun | Result) -> str:
        """A run's name in the progress and heartbeat lines: its test id."""
        return f"{self.options.profile.name}-{run_label(run)}"

    def record_measurement(self, name: str, rows: list[dict[str, Any]]) -> Path:
        """Store an in-process measurement table as measurements/<name>.csv (replacing it)."""
        return folder.write_measurement(self.run_dir, name, pd.DataFrame(rows).to_csv(index=False))

    def append_measurement(self, name: str, row: dict[str, Any]) -> Path:
        """Add one row to measurements/<name>.csv (rows from earlier in this session are kept)."""
        path = folder.measurement_path(self.run_dir, name)
        rows = pd.read_csv(path).to_dict("records") if path.exists() else []
        return self.record_measurement(name, [*rows, row])

    # -- reading back ----------------------------------------------------------------------------
    def load(self) -> RunData:
        return load_run(self.run_dir)

    # -- outputs ---------------------------------------------------------------------------------
    @property
    def matrix_notes(self) -> list[str]:
        """What this host left out of the matrix, and why (`tiers.cpu_text_note`)."""
        note = cpu_text_note(self.options.profile, self.options.cpu_dtypes)
        return [note] if note else []

    def environment(self) -> dict[str, Any]:
        gpu = self.options.gpu_present
        return {
            "profile": self.options.profile.name,
            "matrix": self.options.matrix,
            "gpu_present": gpu.name if gpu else None,
            "gpu_total_gib": gpu.total_gib if gpu else None,
            "gpu_capability": ".".join(map(str, gpu.capability)) if gpu else None,
            "driver_version": gpu.driver_version if gpu else None,
            # A run pinned to one GPU of several (another run may have used the others meanwhile).
            "gpus_present": gpu.count if gpu else 0,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "emulated": self.options.emulated,
            "emulated_on": gpu.name if (gpu and self.options.emulated) else None,
            "forced": dict(self.options.force),
            "shard": str(self.options.shard) if self.options.shard else None,
            "matrix_case_ids": self.matrix_case_ids,
            # What the host left out of the matrix, and why (a CPU without half precision).
            MATRIX_NOTES: self.matrix_notes,
            **recorded_settings(self.options.models, self.options.repeat, self.options.shard_costs),
            PLANNED_RUNS: self.planned_runs,
            "command": self.options.command_line,
            # Every session that added to this folder (--resume), oldest first.
            "commands": [*self.earlier_commands, self.options.command_line],
            "host": platform.node(),
            "platform": platform.platform(),
            "started_at": self.started_at,
            **environment_fields(),
        }

    def write_environment(self, **ended: Any) -> None:
        """environment.json: `environment()`, the `ended` fields, what the folder lacks (`INCOMPLETE`)."""
        env = {**self.environment(), **ended}
        env[INCOMPLETE] = self._incomplete_json(env)
        folder.write_environment(self.run_dir, env)

    def incompleteness(self) -> Incompleteness | None:
        """What the folder lacks of its plan now (`reports.run.completeness`); None when complete."""
        return folder_incompleteness(self.run_dir, {PLANNED_RUNS: self.planned_runs})

    def _incomplete_json(self, env: dict[str, Any]) -> dict[str, Any] | None:
        # Written when the folder opens too: a session killed outright leaves the mark as of
        # its start (never "complete"); readers recompute it from results.jsonl.
        missing = folder_incompleteness(self.run_dir, env)
        return missing.as_json() if missing else None

    def finish(self) -> dict[str, Path]:
        """Write results.csv/.parquet and the environment; return the paths written."""
        ended = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.write_environment(
            finished_at=ended, cases=len({k[0] for k in self.results}), runs=len(self.results)
        )
        paths, problems = write_result_tables(self.run_dir)  # one row per case, its repeats folded
        for problem in problems:
            self.warn(problem)
        return paths

    def summary_lines(self) -> list[str]:
        """Cases by status (repeats folded), the slowest runs, memory that differs between
        repeats, the warnings, the folder."""
        results = list(self.results.values())
        folded = fold_repeats(results)
        counts = Counter(row["status"] for row in folded)
        runs = f" ({len(results)} runs in fresh processes)" if len(results) > len(folded) else ""
        where, gpu = self.options.profile.name, self.options.gpu_present
        where += f" (emulated on {gpu.name})" if self.options.emulated and gpu is not None else ""
        statuses = ", ".join(f"{n} {s}" for s, n in counts.most_common())
        lines = [f"qlora-bench: {len(folded)} cases on profile {where}{runs}: {statuses}"]
        lines += [
            f"  memory differs between repeats of {row['case_id']}: {row['repeat_memory_note']}"
            for row in folded
            if row["repeat_memory_note"]
        ]
        if self.reused:
            lines.append(f"  {len(self.reused)} reused from {self.run_dir} (--resume)")
        slow = sorted((r for r in results if r.timing.wall_s), key=lambda r: -(r.timing.wall_s or 0))[:5]
        if slow:
            lines.append("  slowest: " + ", ".join(f"{run_label(r)} {r.timing.wall_s:.0f} s" for r in slow))
        timing = wall_time_line(self.run_dir)  # where the time went, by stage (reports.tables.wall_time)
        if timing:
            lines.append(f"  {timing}")
        lines += [f"  not planned on this host: {note}" for note in self.matrix_notes]
        lines += [f"  warning: {w}" for w in self.warnings]
        lines.append(f"  run folder: {self.run_dir}")
        return lines


def run_label(run: CaseRun | Result) -> str:
    """A run's name as its test names it: the case id, and `-r2`, `-r3` for later repeats."""
    return (run.planned.case.id if isinstance(run, CaseRun) else run.case_id) + repeat_suffix(run.repeat)
