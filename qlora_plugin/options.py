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

from qlora_core.cases.case import FIELD_NAMES, CaseError
from qlora_core.cases.case_fields import parse_fields
from qlora_core.cases.gpus import (
    ALL_CPU_DTYPES,
    CpuDtypesError,
    DetectedGpu,
    GpuProfile,
    cpu_native_dtypes,
    is_emulated,
)
from qlora_core.cases.matrix import DEFAULT_MAX, MATRICES, SMOKE_MAX
from qlora_core.models import model_problem
from qlora_core.process.shared_options import (
    GPU,
    REPEAT,
    OptionSpec,
    add_shared_options,
    case_timeout_problem,
    parse_gpu,
    parse_repeat,
)
from qlora_core.process.side_by_side import MAX_LANES, auto_lanes
from qlora_plugin.resume import profile_conflict, resolve_settings
from qlora_plugin.shard import Shard, parse_shard
from reports.gate.baseline import BaselineError, load_baseline
from reports.gate.baseline_choice import CPU_PROFILE, baseline_option_problems
from reports.gate.thresholds import Thresholds, add_threshold_options, resolve_thresholds
from reports.run.folder import RESULTS_JSONL

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


# The options only `pytest bench` has, in --help's order (after the shared ones, before the
# gate's thresholds); declared like `SHARED_OPTIONS`, so "Default: ..." is written one way.
_BENCH_OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "--matrix",
        f"matrix tier: {', '.join(MATRICES)} (smoke <= {SMOKE_MAX} cases, default <= {DEFAULT_MAX}).",
        default=None,  # default; on --resume the folder's tier
        shown_default="default",
        metavar="TIER",
    ),
    OptionSpec(
        "--model",
        "model to run instead of the profile's set (repeatable): a shape name, a local path or a hub id.",
        # argparse's append copies its default before appending: this list is never changed.
        default=[],
        shown_default="the profile's model set",
        metavar="MODEL",
        action="append",
    ),
    OptionSpec(
        "--out",
        "folder for run folders.",
        default="bench-results",
        shown_default="bench-results/",
        metavar="DIR",
        type=Path,
    ),
    OptionSpec(
        "--resume",
        "continue RUN_DIR: keep its finished cases, rerun the missing and failed ones. The"
        " folder's profile, tier, --model, --force and --shard are kept (a conflicting one is"
        " refused), and its --repeat unless given.",
        metavar="RUN_DIR",
        type=Path,
    ),
    OptionSpec(
        "--shard",
        "run shard I of N (1-based) of the matrix, every repeat of a case in the same shard,"
        " balanced by cost; kernels, claims and the gate are skipped (merge the N run folders"
        " with python -m reports merge). Test ids are unchanged.",
        shown_default="the whole matrix",
        metavar="I/N",
    ),
    OptionSpec(
        "--shard-costs",
        "balance --shard by the wall times recorded in this earlier run folder or baseline"
        " file (give every runner the same one).",
        shown_default="an estimate from each case's size",
        metavar="RUN_DIR|BASELINE",
        type=Path,
    ),
    OptionSpec(
        "--force",
        "run every case with this Case field forced (e.g. prepare_kbit=true), keeping the"
        " matrix's case ids: simulates a changed code path for the release gate. Repeatable.",
        default=[],
        metavar="FIELD=VALUE",
        action="append",
    ),
    OptionSpec(
        "--save-baseline",
        "write this run's metrics as a baseline JSON.",
        metavar="PATH",
        type=Path,
    ),
    OptionSpec(
        "--baseline",
        "compare this run with a baseline JSON; regressions fail the session. PATH may be a"
        " folder of baselines: the one of this run's profile, tier and GPU is used. Against a"
        " baseline from another GPU, speed is not compared (see --require-speed).",
        metavar="PATH",
        type=Path,
    ),
    OptionSpec(
        "--side-by-side",
        "run up to N cases of the families that read no speed on the device at once; their"
        " rows then have no speed, and their device memory is their own NVML line. auto (default):"
        " on an emulated profile as many of its caps as the host GPU holds, on a real card of the"
        f" profile one per two host cores, each capped at its estimated need (at most {MAX_LANES}); 1 on"
        " the CPU.",
        default="auto",  # its help says so in its own words
        metavar="N|auto",
    ),
)


def pytest_addoption(parser: pytest.Parser) -> None:
    """The qlora-bench group: the shared options, `pytest bench`'s own, the gate's thresholds."""
    group = parser.getgroup("qlora-bench", "qlora-bench: the QLoRA measurement matrix")
    # --gpu, --case-timeout, --repeat, --no-oom-rerun: declared with tools/run_cases.py's.
    add_shared_options(
        group.addoption, notes={GPU.flag: _RESUMED, REPEAT.flag: f"or a case's own count; {_RESUMED}"}
    )
    add_shared_options(group.addoption, notes={"--matrix": _RESUMED}, only=_BENCH_OPTIONS)
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
    problems += _tier_and_model_problems(settings.matrix, settings.models)
    force, force_problems = _read_force(settings.force)
    repeat, repeat_problem = parse_repeat(settings.repeat)
    shard, shard_problem = parse_shard(settings.shard)
    timeout = config.getoption("--case-timeout")
    problems += [
        *force_problems,
        repeat_problem,
        shard_problem,
        _shard_costs_problem(settings.shard_costs),
        case_timeout_problem(timeout),
    ]
    profile, gpu, gpu_problem = parse_gpu(settings.gpu)
    problems.append(gpu_problem)
    if profile is not None:
        problems.append(profile_conflict(settings.gpu, profile.name, resume) or "")
    require_speed = bool(config.getoption("require_speed"))
    baseline = config.getoption("--baseline")
    problems += _baseline_problems(baseline, profile, gpu, settings.matrix, require_speed)
    thresholds, thresholds_problem = _read_thresholds(config)
    side_by_side, side_problem = parse_side_by_side(config.getoption("--side-by-side"), profile, gpu)
    cpu_dtypes, cpu_problem = _read_cpu_dtypes(profile)
    # The parse_* helpers return "" for a usable value: only the real problems are shown.
    problems = [p for p in [*problems, thresholds_problem, side_problem, cpu_problem] if p]
    if problems or profile is None:
        raise pytest.UsageError("qlora-bench options:\n  " + "\n  ".join(problems))
    return BenchOptions(
        gpu=settings.gpu,
        profile=profile,
        gpu_present=gpu,
        matrix=settings.matrix,
        models=settings.models,
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
        shard_costs=settings.shard_costs,
        oom_rerun=not config.getoption("no_oom_rerun"),
        side_by_side=side_by_side,
        require_speed=require_speed,
        cpu_dtypes=cpu_dtypes,
    )


def _tier_and_model_problems(matrix: str, models: tuple[str, ...]) -> list[str]:
    """The problems with --matrix and each --model (an unknown tier, a model not found)."""
    problems = [] if matrix in MATRICES else [f"--matrix {matrix!r} is not one of: {', '.join(MATRICES)}"]
    return problems + [f"--model: {p}" for m in models if (p := model_problem(m))]


def _read_force(items: tuple[str, ...]) -> tuple[tuple[tuple[str, Any], ...], list[str]]:
    """--force's typed pairs (`parse_force`), or none and every problem with them."""
    try:
        return parse_force(list(items)), []
    except CaseError as exc:
        return (), exc.problems


def _shard_costs_problem(shard_costs: Path | None) -> str:
    """The problem with --shard-costs: neither a readable baseline file nor a run folder ("" when
    it is usable or not given)."""
    if shard_costs is None:
        return ""
    if not (shard_costs.is_file() or (shard_costs / RESULTS_JSONL).is_file()):
        return f"--shard-costs {shard_costs}: neither a baseline file nor a run folder (no {RESULTS_JSONL})"
    if shard_costs.is_file():
        try:
            load_baseline(shard_costs)
        except BaselineError as exc:
            return f"--shard-costs: {exc}"
    return ""


def _baseline_problems(
    baseline: Path | None,
    profile: GpuProfile | None,
    gpu: DetectedGpu | None,
    matrix: str,
    require_speed: bool,
) -> list[str]:
    """--baseline read, validated and matched to this run's profile, tier and GPU now, not after
    the run (the gate chooses from a folder again at the end, by the GPU its rows recorded)."""
    if baseline is None:
        return []
    run_gpu = gpu.name if gpu is not None and profile is not None and profile.name != CPU_PROFILE else ""
    return baseline_option_problems(
        baseline,
        profile.name if profile is not None else None,
        matrix if matrix in MATRICES else None,
        run_gpu,
        require_speed,
    )


def _read_thresholds(config: pytest.Config) -> tuple[Thresholds, str]:
    """The gate's thresholds (options over the rootdir's pyproject.toml, where pytest found its
    configuration; absent is fine), or the defaults and the problem."""
    try:
        return resolve_thresholds(config.rootpath / "pyproject.toml", config.getoption), ""
    except ValueError as exc:
        return Thresholds(), f"gate thresholds: {exc}"


def _read_cpu_dtypes(profile: GpuProfile | None) -> tuple[frozenset[str], str]:
    """The compute dtypes this host multiplies at speed on the cpu profile (every one on a GPU),
    or every one and the problem with reading them."""
    if profile is None or profile.is_gpu:
        return ALL_CPU_DTYPES, ""
    try:
        return cpu_native_dtypes(), ""
    except CpuDtypesError as exc:
        return ALL_CPU_DTYPES, str(exc)


def parse_side_by_side(raw: str, profile: GpuProfile | None, gpu: DetectedGpu | None) -> tuple[int, str]:
    """--side-by-side's lanes (`auto`: `side_by_side.auto_lanes`), or the problem with the value."""
    if raw == "auto":
        return (auto_lanes(profile, gpu) if profile is not None else 1), ""
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LANES:
        return 1, f"--side-by-side {raw!r} must be auto or a whole number from 1 to {MAX_LANES}"
    return int(raw), ""


def parse_force(items: list[str]) -> tuple[tuple[str, Any], ...]:
    """`FIELD=VALUE` pairs for --force, typed like the Case fields (`qlora_core.cases.case_fields`, the
    rule `tools/run_cases.py --case` reads too); one CaseError names every bad item."""
    try:
        return tuple(parse_fields(items, _FORCEABLE).items())
    except CaseError as exc:
        raise CaseError([f"--force {problem}" for problem in exc.problems]) from None


def command_line() -> str:
    """This process's command line as a `pytest ...` string (stored in environment.json)."""
    return shlex.join(["pytest", *sys.argv[1:]]) if sys.argv else "pytest"
