"""`--shard I/N`: a deterministic, balanced part of the matrix for one of N runners.

Every planned case goes to exactly one shard, with all of its repeats, balanced greedily
longest-first by cost (`run_cost_s`: recorded seconds, else `estimated_run_s`); the session's time
left reads the same costs. See docs/shards.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

from qlora_core.cases.case import HELDOUT_WINDOWS, Case
from qlora_core.cases.matrix import PlannedCase
from qlora_core.models import REAL_MODEL
from qlora_core.models.registry import SHAPES
from reports.gate.baseline import CASE_WALL_S, load_baseline
from reports.run.folder import RESULTS_JSONL, read_results_jsonl

SHARD_SKIP_REASON = (
    "merge first: a shard holds part of the matrix; kernels, claims and the gate run on the"
    " merged folder (python -m reports merge, then render and gate)"
)
# The estimate's constants (seconds): a child's start and imports, the model's load per billion
# parameters, and a nominal training rate (FLOP/s) for the steps' 6 x params x tokens.
START_S = 20.0
LOAD_S_PER_BILLION_PARAMS = 6.0
NOMINAL_FLOP_PER_S = 5e13
CPU_START_S = 10.0
"""A CPU case's fixed cost: the child's hand-over from a warm spare, the load, the steps of a
model too small to count (the cpu tier's tiny cases took 5-22 s, median 13 s, on a 2-core
AVX2-only machine: reports/reference/cpu-default-avx2)."""
CPU_NOMINAL_FLOP_PER_S = 3.5e10
"""The CPU tier's rate through bitsandbytes' 4-bit CPU path, in a compute dtype the CPU has
(fp32 everywhere; the matrix plans bf16/fp16 text cases only where the CPU has them): SmolLM2-135M
on text, 2.6e12 FLOPs of steps and perplexity, took 73-144 s a case in the same run (the core
loop 73-90 s, the Trainer 92 s, SFTTrainer 144 s), so a text case costs ~7 tiny cases. The
earlier 4e9, measured in bf16 without the instructions, made it ~30: the time left read 3.9x
the truth after the second run and 0.65x after the text cases; these constants keep it within
0.73x-1.32x (`tests/qlora_plugin/test_progress.py` replays that run)."""
# A model the registry cannot size (a local checkpoint, a hub id) is costed as this many params.
UNKNOWN_MODEL_PARAMS = 1_000_000_000
_REAL_MODEL_SHAPE = "smollm2-135m"  # the real model's architecture among the registered shapes
_SHARD_PATTERN = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """Shard `index` (1-based) of `count`."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(raw: str | None) -> tuple[Shard | None, str]:
    """--shard's value as a Shard (None when not given), or the problem with it."""
    if raw is None:
        return None, ""
    match = _SHARD_PATTERN.match(str(raw))
    if match:
        index, count = int(match.group(1)), int(match.group(2))
        if 1 <= index <= count:
            return Shard(index, count), ""
    return None, f"--shard {raw!r} must be I/N with 1 <= I <= N (e.g. 2/3: the second of three runners)"


def model_params(model: str) -> int:
    """Parameters of a registered shape or the real model; UNKNOWN_MODEL_PARAMS for others."""
    name = _REAL_MODEL_SHAPE if model == REAL_MODEL else model
    spec = SHAPES.get(name)
    return spec.total_params if spec is not None else UNKNOWN_MODEL_PARAMS


def estimated_run_s(case: Case, device: str = "cuda") -> float:
    """A documented estimate of one run's seconds from the case's size on `device` ("cuda" or
    "cpu"; see the module docstring)."""
    params = model_params(case.model)
    load_s = LOAD_S_PER_BILLION_PARAMS * params / 1e9
    steps = case.warmup_steps + case.measured_steps
    flops = 6 * params * case.tokens_per_step * steps
    if case.data == "text":  # perplexity before and after training, forward only
        flops += 2 * 2 * params * HELDOUT_WINDOWS * case.seq_len
    if device == "cuda":
        return START_S + load_s + flops / NOMINAL_FLOP_PER_S
    return CPU_START_S + load_s + flops / CPU_NOMINAL_FLOP_PER_S


def run_cost_s(case: Case, recorded: Mapping[str, float], device: str = "cuda") -> float:
    """One run's expected seconds: recorded for its case id where `recorded` has it, else estimated."""
    one_run = recorded.get(case.id)
    return one_run if one_run is not None else estimated_run_s(case, device)


def recorded_run_s(source: Path) -> dict[str, float]:
    """Case id -> wall seconds of one run, for the cases with a wall time: the mean over a previous
    run folder's runs, or what a baseline file stores (`CASE_WALL_S`; older baselines lack it)."""
    source = Path(source)
    if source.is_file():
        cases = load_baseline(source)["cases"]
        return {
            case_id: float(entry[CASE_WALL_S])
            for case_id, entry in cases.items()
            if entry.get(CASE_WALL_S) is not None and entry[CASE_WALL_S] > 0
        }
    path = source / RESULTS_JSONL
    if not path.is_file():
        raise FileNotFoundError(
            f"--shard-costs {source}: no {RESULTS_JSONL} (expected a run folder or a baseline file)"
        )
    walls: dict[str, list[float]] = {}
    for result in read_results_jsonl(path):
        if result.timing.wall_s is not None and result.timing.wall_s > 0:
            walls.setdefault(result.case_id, []).append(result.timing.wall_s)
    return {case_id: mean(values) for case_id, values in walls.items()}


def case_costs(
    cases: Sequence[PlannedCase], repeat: int | None, recorded: Mapping[str, float] | None = None
) -> list[float]:
    """Each case's cost in seconds: its runs (`repeat`, else its own count) x one run's seconds,
    recorded where `recorded` has the case id, else estimated."""
    recorded = recorded or {}
    costs = []
    for planned in cases:
        runs = repeat if repeat is not None else planned.repeats
        costs.append(runs * run_cost_s(planned.case, recorded))
    return costs


def assign_shards(cases: Sequence[PlannedCase], costs: Sequence[float], count: int) -> list[int]:
    """The 1-based shard of each case (in `cases` order): greedy longest-first over `count` shards."""
    if count < 1:
        raise ValueError(f"shard count {count} must be >= 1")
    if len(costs) != len(cases):
        raise ValueError(f"{len(costs)} costs for {len(cases)} cases")
    order = sorted(range(len(cases)), key=lambda i: (-costs[i], cases[i].case.hash))
    loads = [0.0] * count
    shard_of = [0] * len(cases)
    for i in order:
        target = min(range(count), key=lambda s: (loads[s], s))
        loads[target] += costs[i]
        shard_of[i] = target + 1
    return shard_of


def select_shard(
    cases: Sequence[PlannedCase],
    shard: Shard,
    repeat: int | None,
    recorded: Mapping[str, float] | None = None,
) -> list[PlannedCase]:
    """The cases of `shard`, in matrix order."""
    shard_of = assign_shards(cases, case_costs(cases, repeat, recorded), shard.count)
    return [planned for planned, s in zip(cases, shard_of) if s == shard.index]
