"""The qlora-bench command-line options: declared in one group, read once, validated into `BenchOptions`.

A bad value fails at configuration, every problem in one message with the allowed values, before
any case runs or any run folder exists. Reading the options imports no torch: profile detection
goes through NVML, and model names are checked against the registry only.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qlora_core.case_fields import parse_fields
from qlora_core.gpus import (
    ALL_CPU_DTYPES,
    CpuDtypesError,
    DetectedGpu,
    GpuProfile,
    cpu_native_dtypes,
    is_emulated,
)
from qlora_core.matrix import DEFAULT_MAX, MATRICES, SMOKE_MAX
from qlora_core.models import model_problem
from qlora_core.process.shared_options import (
    GPU,
    REPEAT,
    add_shared_options,
    case_timeout_problem,
    parse_gpu,
    parse_repeat,
)
from qlora_core.process.side_by_side import MAX_LANES, auto_lanes
from qlora_core.spec import FIELD_NAMES, CaseError
from qlora_plugin.resume import profile_conflict, resolve_settings
from qlora_plugin.shard import Shard, parse_shard
from reports.baseline import BaselineError, load_baseline
from reports.baseline_choice import CPU_PROFILE, baseline_option_problems
from reports.run_folder import RESULTS_JSONL
from reports.thresholds import Thresholds, add_threshold_options, resolve_thresholds

_OPTIONS_KEY = pytest.StashKey["BenchOptions"]()
# What the help adds after the default of an option --resume takes from the folder.
_RESUMED = "on --resume: the folder's"
# Every Case field but the model (--model chooses it).
_FORCEABLE = tuple(f for f in FIELD_NAMES if f != "model")


@dataclass(frozen=True)
class BenchOptions:
    """The `qlora-bench` command-line options, validated."""

    gpu: str
    profile: GpuProfile
    gpu_present: DetectedGpu | None
    matrix: str
    models: tuple[str, ...]
    out: Path
    resume: Path | None
    case_timeout_s: float
    baseline: Path | None
    save_baseline: Path | None
    thresholds: Thresholds
    force: tuple[tuple[str, Any], ...]
    command_line: str
    repeat: int | None = None
    """--repeat N: fresh-process runs of every case; None: each planned case's own count."""
    allow_noisy: bool = False
    """--allow-noisy: the gate lists cases too noisy to gate instead of failing on them."""
    shard: Shard | None = None
    """--shard I/N: this session runs shard I of N of the matrix (`qlora_plugin.shard`)."""
    shard_costs: Path | None = None
    """--shard-costs RUN_DIR|BASELINE: a previous run folder or a baseline file whose wall times
    balance the shards."""
    oom_rerun: bool = True
    """Rerun a case that ran out of memory under an emulated cap uncapped on the host GPU and
    record what it needed (`qlora_core.process.oom_need`); --no-oom-rerun turns it off."""
    side_by_side: int = 1
    """--side-by-side N|auto: how many shareable cases may run on the device at once
    (`qlora_core.process.side_by_side`); 1: every case alone."""
    require_speed: bool = False
    """--require-speed: the gate fails when speed could not be compared (another GPU's baseline)."""
    cpu_dtypes: frozenset[str] = ALL_CPU_DTYPES
    """The cpu profile: the compute dtypes this CPU multiplies at speed (`gpus.cpu_native_dtypes`),
    which decide the dtypes of the real model's text cases (`tiers.text_dtype`); every one on a GPU."""

    @property
    def emulated(self) -> bool:
        return is_emulated(self.profile, self.gpu_present)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qlora-bench", "qlora-bench: the QLoRA measurement matrix")
    # --gpu, --case-timeout, --repeat, --no-oom-rerun: declared with tools/run_cases.py's.
    add_shared_options(
        group.addoption, notes={GPU.flag: _RESUMED, REPEAT.flag: f"or a case's own count; {_RESUMED}"}
    )
    group.addoption(
        "--matrix",
        default=None,  # default; on --resume the folder's tier
        metavar="TIER",
        help=f"matrix tier: {', '.join(MATRICES)} (smoke <= {SMOKE_MAX} cases, default <= {DEFAULT_MAX})."
        " Default: default"
        " (on --resume: the folder's).",
    )
    group.addoption(
        "--model",
        action="append",
        default=[],
        metavar="MODEL",
        help="model to run instead of the profile's set (repeatable): a shape name, a local path"
        " or a hub id. Default: the profile's model set.",
    )
    group.addoption(
        "--out",
        default="bench-results",
        type=Path,
        metavar="DIR",
        help="folder for run folders. Default: bench-results/.",
    )
    group.addoption(
        "--resume",
        default=None,
        type=Path,
        metavar="RUN_DIR",
        help="continue RUN_DIR: keep its finished cases, rerun the missing and failed ones. The"
        " folder's profile, tier, --model, --force and --shard are kept (a conflicting one is"
        " refused), and its --repeat unless given.",
    )
    group.addoption(
        "--shard",
        default=None,
        metavar="I/N",
        help="run shard I of N (1-based) of the matrix, every repeat of a case in the same shard,"
        " balanced by cost; kernels, claims and the gate are skipped (merge the N run folders"
        " with python -m reports merge). Test ids are unchanged. Default: the whole matrix.",
    )
    group.addoption(
        "--shard-costs",
        default=None,
        type=Path,
        metavar="RUN_DIR|BASELINE",
        help="balance --shard by the wall times recorded in this earlier run folder or baseline"
        " file (give every runner the same one). Default: an estimate from each case's size.",
    )
    group.addoption(
        "--force",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="run every case with this Case field forced (e.g. prepare_kbit=true), keeping the"
        " matrix's case ids: simulates a changed code path for the release gate. Repeatable.",
    )
    group.addoption(
        "--save-baseline",
        default=None,
        type=Path,
        metavar="PATH",
        help="write this run's metrics as a baseline JSON.",
    )
    group.addoption(
        "--baseline",
        default=None,
        type=Path,
        metavar="PATH",
        help="compare this run with a baseline JSON; regressions fail the session. PATH may be a"
        " folder of baselines: the one of this run's profile, tier and GPU is used. Against a"
        " baseline from another GPU, speed is not compared (see --require-speed).",
    )
    group.addoption(
        "--side-by-side",
        default="auto",
        metavar="N|auto",
        help="run up to N cases of the families that read no speed on the device at once; their"
        " rows then have no speed, and their device memory is their own NVML line. auto (default):"
        " on an emulated profile as many of its caps as the host GPU holds, on a real card of the"
        f" profile one per two host cores, each capped at its estimated need (at most {MAX_LANES}); 1 on"
        " the CPU.",
    )
    add_threshold_options(group.addoption)


def pytest_configure(config: pytest.Config) -> None:
    # Validated for every session (cheap: NVML only, no torch) so that a typo fails at once; the
    # run folder itself is created only when a bench test runs.
    config.stash[_OPTIONS_KEY] = read_options(config)


def bench_options(config: pytest.Config) -> BenchOptions:
    """The session's validated options (read at configuration)."""
    return config.stash[_OPTIONS_KEY]


def read_options(config: pytest.Config) -> BenchOptions:
    """Validate the qlora-bench options of `config`; a pytest.UsageError lists every problem."""
    resume = config.getoption("--resume")
    # The options that decide the runs; on --resume the folder's where not given (or conflicting).
    settings, problems = resolve_settings(config.getoption, resume, parse_force)
    matrix = settings.matrix
    if matrix not in MATRICES:
        problems.append(f"--matrix {matrix!r} is not one of: {', '.join(MATRICES)}")
    models = settings.models
    problems += [f"--model: {p}" for m in models if (p := model_problem(m))]
    try:
        force = parse_force(list(settings.force))
    except CaseError as exc:
        problems += exc.problems
        force = ()
    repeat, repeat_problem = parse_repeat(settings.repeat)
    if repeat_problem:
        problems.append(repeat_problem)
    shard, shard_problem = parse_shard(settings.shard)
    if shard_problem:
        problems.append(shard_problem)
    shard_costs = settings.shard_costs
    if shard_costs is not None and not (shard_costs.is_file() or (shard_costs / RESULTS_JSONL).is_file()):
        problems.append(
            f"--shard-costs {shard_costs}: neither a baseline file nor a run folder (no {RESULTS_JSONL})"
        )
    elif shard_costs is not None and shard_costs.is_file():
        try:
            load_baseline(shard_costs)
        except BaselineError as exc:
            problems.append(f"--shard-costs: {exc}")
    timeout = config.getoption("--case-timeout")
    if timeout_problem := case_timeout_problem(timeout):
        problems.append(timeout_problem)
    profile, gpu, gpu_problem = parse_gpu(settings.gpu)
    if gpu_problem:
        problems.append(gpu_problem)
    if profile is not None and (mismatch := profile_conflict(settings.gpu, profile.name, resume)):
        problems.append(mismatch)
    require_speed = bool(config.getoption("require_speed"))
    baseline = config.getoption("--baseline")
    if baseline is not None:
        # Read, validated and matched to this run's profile, tier and GPU now, not after the run
        # (the gate chooses from a folder again at the end, by the GPU its rows recorded).
        run_gpu = gpu.name if gpu is not None and profile is not None and profile.name != CPU_PROFILE else ""
        problems += baseline_option_problems(
            baseline,
            profile.name if profile is not None else None,
            matrix if matrix in MATRICES else None,
            run_gpu,
            require_speed,
        )
    thresholds = Thresholds()
    try:
        # The rootdir's pyproject.toml, where pytest found its configuration; absent is fine.
        thresholds = resolve_thresholds(config.rootpath / "pyproject.toml", config.getoption)
    except ValueError as exc:
        problems.append(f"gate thresholds: {exc}")
    side_by_side, side_problem = parse_side_by_side(config.getoption("--side-by-side"), profile, gpu)
    if side_problem:
        problems.append(side_problem)
    cpu_dtypes = ALL_CPU_DTYPES
    if profile is not None and not profile.is_gpu:
        try:
            cpu_dtypes = cpu_native_dtypes()
        except CpuDtypesError as exc:
            problems.append(str(exc))
    if problems or profile is None:
        raise pytest.UsageError("qlora-bench options:\n  " + "\n  ".join(problems))
    return BenchOptions(
        gpu=settings.gpu,
        profile=profile,
        gpu_present=gpu,
        matrix=matrix,
        models=models,
        out=config.getoption("--out"),
        resume=resume,
        case_timeout_s=timeout,
        baseline=baseline,
        save_baseline=config.getoption("--save-baseline"),
        thresholds=thresholds,
        force=force,
        command_line=command_line(),
        repeat=repeat,
        allow_noisy=bool(config.getoption("allow_noisy")),
        shard=shard,
        shard_costs=shard_costs,
        oom_rerun=not config.getoption("no_oom_rerun"),
        side_by_side=side_by_side,
        require_speed=require_speed,
        cpu_dtypes=cpu_dtypes,
    )


def parse_side_by_side(raw: str, profile: GpuProfile | None, gpu: DetectedGpu | None) -> tuple[int, str]:
    """--side-by-side's lanes (`auto`: `side_by_side.auto_lanes`), or the problem with the value."""
    if raw == "auto":
        return (auto_lanes(profile, gpu) if profile is not None else 1), ""
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LANES:
        return 1, f"--side-by-side {raw!r} must be auto or a whole number from 1 to {MAX_LANES}"
    return int(raw), ""


def parse_force(items: list[str]) -> tuple[tuple[str, Any], ...]:
    """`FIELD=VALUE` pairs for --force, typed like the Case fields (`qlora_core.case_fields`, the
    rule `tools/run_cases.py --case` reads too); one CaseError names every bad item."""
    try:
        return tuple(parse_fields(items, _FORCEABLE).items())
    except CaseError as exc:
        raise CaseError([f"--force {problem}" for problem in exc.problems]) from None


def command_line() -> str:
    """This process's command line as a `pytest ...` string (stored in environment.json)."""
    return shlex.join(["pytest", *sys.argv[1:]]) if sys.argv else "pytest"
