"""`--shard I/N`: a deterministic, balanced part of the matrix for one of N runners.

Every planned case goes to exactly one shard, with all of its repeats (a repeat is a fresh
process of the same case; splitting them would let machine drift between runners pass for noise
between processes). Balancing is greedy longest-first: cases sorted by cost, largest first (ties
by case hash, so the order never depends on the matrix's order or on the machine), each given
to the shard with the least cost so far (ties: the lowest index). The result depends only on the
case set, the costs and N, so N runners given the same options agree without talking.

Cost of a case = its runs (repeats) x the seconds one run takes:
- recorded: the mean `wall_s` of that case id's runs in a previous run folder, or the `wall_s` a
  baseline file stores per case (`--shard-costs RUN_DIR|BASELINE.json`); every runner must be
  given the same one, or their shards would disagree;
- else estimated from the case's size (`estimated_run_s`): a fixed start (process start, imports,
  the model's load, which grows with its parameters) plus the training FLOPs of its warm-up and
  measured steps (6 x parameters x tokens) and, for a case on real text, its two held-out
  perplexity passes (2 x parameters x tokens each) at a nominal rate for the device (a GPU's, or
  a CPU's, far lower). The estimate only has to rank cases and be of the order of the recorded
  seconds; both are documented in docs/shards.md.

The session's time left (`qlora_plugin.progress`) reads the same costs (`run_cost_s`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

from qlora_core.matrix import PlannedCase
from qlora_core.models import REAL_MODEL
from qlora_core.models.registry import SHAPES
from qlora_core.spec import HELDOUT_WINDOWS, Case
from reports.baseline import CASE_WALL_S, load_baseline
from reports.run_folder import RESULTS_JSONL, read_results_jsonl

SHARD_SKIP_REASON = (
    "merge first: a shard holds part of the matrix; kernels, claims and the gate run on the"
    " merged folder (python -m reports merge, then render and gate)"
)
# The estimate's constants (seconds): a child's start and imports, the model's load per billion
# parameters, and a nominal training rate (FLOP/s) for the steps' 6 x params x tokens.
START_S = 20.0
LOAD_S_PER_BILLION_PARAMS = 6.0
NOMINAL_FLOP_PER_S = 5e13
CPU_NOMINAL_FLOP_PER_S = 4e9
"""The CPU tier's rate, of the order measured on 2 cores through bitsandbytes' 4-bit CPU path
(SmolLM2-135M's perplexity over 16 x 64 held-out tokens, 2.8e11 FLOPs: ~300 s on a machine shared
four ways), so that a SmolLM2 case on text costs ~30 tiny cases, not one as a GPU rate makes it."""
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
    rate = NOMINAL_FLOP_PER_S if device == "cuda" else CPU_NOMINAL_FLOP_PER_S
    return START_S + load_s + flops / rate


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
