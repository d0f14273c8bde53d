"""The qlora-bench pytest plugin: command-line options, read once and validated.

`pytest bench --gpu t4 --matrix default` runs the matrix; `pytest tests` runs the unit tests.
A bad option value fails here, at configuration, with the allowed values, before any case runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qlora_core.gpus import PROFILE_NAMES, UnknownProfileError, resolve_profile
from qlora_core.matrix import MATRICES
from qlora_core.models import model_problem
from qlora_core.runner import DEFAULT_TIMEOUT_S
from qlora_core.spec import CaseError
from reports.session import BenchOptions, command_line, parse_force

ROOT = Path(__file__).parent


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qlora-bench", "qlora-bench: the QLoRA measurement matrix")
    group.addoption(
        "--gpu",
        default="auto",
        metavar="PROFILE",
        help=f"GPU profile: {', '.join(PROFILE_NAMES)} or auto (the GPU present, cpu without one)."
        " A profile smaller than the GPU present is emulated by capping memory. Default: auto.",
    )
    group.addoption(
        "--matrix",
        default="default",
        metavar="TIER",
        help=f"matrix tier: {', '.join(MATRICES)} (smoke <= 6 cases, default <= 40). Default: default.",
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
        help="continue RUN_DIR: keep its finished cases, rerun the missing and failed ones.",
    )
    group.addoption(
        "--case-timeout",
        default=DEFAULT_TIMEOUT_S,
        type=float,
        metavar="SECONDS",
        help="seconds before a case's child is killed and recorded as timeout."
        f" Default: {DEFAULT_TIMEOUT_S:g}.",
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
        help="compare this run with a baseline JSON; regressions fail the session.",
    )
    for name, unit in (
        ("tokens-per-s-drop-pct", "%"),
        ("memory-rise-pct", "%"),
        ("memory-rise-min-mib", "MiB"),
        ("final-loss-rise-pct", "%"),
        ("speed-noise-multiple", "x spread"),
    ):
        group.addoption(
            f"--{name}",
            default=None,
            type=float,
            metavar=unit.upper().split()[0].strip("%") or "PCT",
            help=f"gate threshold ({unit}); overrides [tool.qlora-bench] in pyproject.toml.",
        )


def _options(config: pytest.Config) -> BenchOptions:
    problems: list[str] = []
    matrix = config.getoption("--matrix")
    if matrix not in MATRICES:
        problems.append(f"--matrix {matrix!r} is not one of: {', '.join(MATRICES)}")
    models = tuple(config.getoption("--model"))
    problems += [f"--model: {p}" for m in models if (p := model_problem(m))]
    try:
        force = parse_force(config.getoption("--force"))
    except CaseError as exc:
        problems += exc.problems
        force = ()
    timeout = config.getoption("--case-timeout")
    if timeout <= 0:
        problems.append(f"--case-timeout {timeout:g} must be positive")
    resume = config.getoption("--resume")
    if resume is not None and not resume.is_dir():
        problems.append(f"--resume {resume}: no such run folder")
    baseline = config.getoption("--baseline")
    if baseline is not None and not baseline.exists():
        problems.append(f"--baseline {baseline}: no such file")
    try:
        profile, gpu = resolve_profile(config.getoption("--gpu"))
    except UnknownProfileError as exc:
        problems.append(f"--gpu: {exc}")
        profile, gpu = None, None
    thresholds = None
    try:
        from reports.baseline import Thresholds

        overrides = {
            key: config.getoption(f"--{key.replace('_', '-')}")
            for key in (
                "tokens_per_s_drop_pct",
                "memory_rise_pct",
                "memory_rise_min_mib",
                "final_loss_rise_pct",
                "speed_noise_multiple",
            )
        }
        thresholds = Thresholds.from_pyproject(ROOT / "pyproject.toml").with_overrides(**overrides)
    except ValueError as exc:
        problems.append(f"gate thresholds: {exc}")
    if problems:
        raise pytest.UsageError("qlora-bench options:\n  " + "\n  ".join(problems))
    assert profile is not None
    return BenchOptions(
        gpu=config.getoption("--gpu"),
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
    )


def pytest_configure(config: pytest.Config) -> None:
    # Validated for every session (cheap: no torch CUDA init, NVML only) so that a typo fails
    # at once; the run folder itself is created only when bench tests are collected.
    config.qlora_options = _options(config)  # type: ignore[attr-defined]
