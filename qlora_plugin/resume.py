"""`--resume RUN_DIR` keeps the folder's settings: what it is checked for, and what it inherits.

The options that decide which runs belong in a folder (`MatrixSettings`) come from its
environment.json unless given; one given with another value is refused, naming both, except
`--repeat`, which may raise the count. A folder that is not a run folder is refused before
anything is written. See the `--resume` row of docs/usage.md#options.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlora_core.cases.case import CaseError
from qlora_core.cases.gpus import PROFILE_NAMES
from qlora_core.cases.matrix import MATRICES
from qlora_plugin.shard import parse_shard
from reports.run.folder import (
    ENVIRONMENT_JSON,
    RESULTS_JSONL,
    check_environment,
    read_environment,
    read_results,
)

DEFAULT_GPU = "auto"
DEFAULT_MATRIX = "default"
# environment.json keys of the settings older folders did not record (their absence: not known,
# so the option is the resuming session's own).
MODELS_KEY = "models"
REPEAT_KEY = "repeat"
SHARD_COSTS_KEY = "shard_costs"


@dataclass(frozen=True)
class MatrixSettings:
    """The options that decide a run folder's runs, as typed on the command line."""

    gpu: str = DEFAULT_GPU
    matrix: str = DEFAULT_MATRIX
    models: tuple[str, ...] = ()
    force: tuple[str, ...] = ()
    repeat: str | None = None
    shard: str | None = None
    shard_costs: Path | None = None


def given_settings(getoption: Callable[[str], Any]) -> dict[str, Any]:
    """The settings given on this command line; an option not given is absent."""
    raw = {
        "gpu": getoption("--gpu"),
        "matrix": getoption("--matrix"),
        "models": tuple(getoption("--model") or ()),
        "force": tuple(getoption("--force") or ()),
        "repeat": getoption("--repeat"),
        "shard": getoption("--shard"),
        "shard_costs": getoption("--shard-costs"),
    }
    return {name: value for name, value in raw.items() if value not in (None, ())}


def run_folder_problem(run_dir: Path) -> str | None:
    """Why `run_dir` cannot be resumed as a qlora-bench run folder (None when it can)."""
    if not run_dir.exists():
        return f"--resume {run_dir}: no such run folder"
    if not run_dir.is_dir():
        return f"--resume {run_dir}: not a folder (a run folder is <out>/<profile>-<tier>-<time>/)"
    path = run_dir / ENVIRONMENT_JSON
    if not path.is_file():
        return (
            f"--resume {run_dir}: not a qlora-bench run folder (no {ENVIRONMENT_JSON}, which"
            " pytest bench writes when it starts a run folder under --out); nothing was written to it"
        )
    try:
        environment = json.loads(path.read_text())
    except OSError as exc:
        return f"--resume {run_dir}: its {ENVIRONMENT_JSON} cannot be read ({exc.strerror})"
    except UnicodeDecodeError:
        return f"--resume {run_dir}: its {ENVIRONMENT_JSON} is not JSON (not UTF-8 text)"
    except ValueError as exc:
        return f"--resume {run_dir}: its {ENVIRONMENT_JSON} is not JSON ({_short(exc)})"
    if not isinstance(environment, dict):
        return f"--resume {run_dir}: its {ENVIRONMENT_JSON} is not a JSON object"
    try:
        check_environment(environment)
        read_results(run_dir / RESULTS_JSONL)  # a row of a newer schema refuses the folder
    except ValueError as exc:  # a newer schema (SchemaError), or a version that is none
        return f"--resume {run_dir}: {exc}"
    profile, matrix = environment.get("profile"), environment.get("matrix")
    if profile not in PROFILE_NAMES or matrix not in MATRICES:
        return (
            f"--resume {run_dir}: not a qlora-bench run folder (its {ENVIRONMENT_JSON} names profile"
            f" {profile!r} and tier {matrix!r}; expected one of {', '.join(PROFILE_NAMES)} and one of"
            f" {', '.join(MATRICES)})"
        )
    return None


def folder_settings(run_dir: Path) -> dict[str, Any]:
    """The settings recorded in a run folder's environment.json (one that `run_folder_problem`
    accepts), typed as `MatrixSettings` holds them; a setting the folder did not record is absent."""
    environment = read_environment(run_dir)
    settings: dict[str, Any] = {
        "gpu": environment["profile"],
        "matrix": environment["matrix"],
        "force": force_args(environment.get("forced") or {}),
        "shard": environment.get("shard"),
    }
    if MODELS_KEY in environment:
        settings["models"] = tuple(environment[MODELS_KEY] or ())
    if REPEAT_KEY in environment:
        repeat = environment[REPEAT_KEY]
        settings["repeat"] = None if repeat is None else str(repeat)
    if SHARD_COSTS_KEY in environment:
        costs = environment[SHARD_COSTS_KEY]
        settings["shard_costs"] = None if costs is None else Path(costs)
    return settings


def resolve_settings(
    getoption: Callable[[str], Any], resume: Path | None, parse_force: Callable[[list[str]], Any]
) -> tuple[MatrixSettings, list[str]]:
    """The session's settings: the command line's, on --resume the folder's where not given; the
    problems: a folder that cannot be resumed, an option that conflicts with the folder's value.
    `parse_force`: options.parse_force (compares --force values as typed Case fields)."""
    given = given_settings(getoption)
    if resume is None:
        return MatrixSettings(**given), []
    problem = run_folder_problem(resume)
    if problem:
        return MatrixSettings(**given), [problem]
    folder = folder_settings(resume)
    problems = [
        conflict(name, given[name], folder[name], resume)
        for name in ("matrix", "models", "force", "shard", "shard_costs")
        if name in given and name in folder and not _same(name, given[name], folder[name], parse_force)
    ]
    return MatrixSettings(**{**folder, **given}), problems


def profile_conflict(gpu: str, profile: str, resume: Path | None) -> str | None:
    """On --resume: the problem when the resolved profile is not the folder's (`gpu`: --gpu as
    given or inherited; `auto` resolves to the GPU present)."""
    if resume is None or run_folder_problem(resume):
        return None
    recorded = folder_settings(resume)["gpu"]
    if profile == recorded:
        return None
    shown = gpu if gpu.lower() == profile else f"{gpu} ({profile} here)"
    return conflict("gpu", shown, recorded, resume)


def conflict(name: str, given: Any, recorded: Any, resume: Path) -> str:
    flag = _FLAGS[name]
    return (
        f"{flag} {_shown(name, given)} conflicts with the folder's {_shown(name, recorded)}"
        f" ({resume / ENVIRONMENT_JSON}); leave {flag} out to keep the folder's, or start a new run"
        " folder (no --resume)"
    )


def recorded_settings(models: Sequence[str], repeat: int | None, shard_costs: Path | None) -> dict[str, Any]:
    """The settings environment.json records beside profile, matrix, forced and shard, so that a
    resume can keep them."""
    return {
        MODELS_KEY: list(models),
        REPEAT_KEY: repeat,
        SHARD_COSTS_KEY: str(Path(shard_costs).resolve()) if shard_costs is not None else None,
    }


def force_args(forced: Mapping[str, Any]) -> tuple[str, ...]:
    """environment.json's `forced` ({field: value}) as the `--force FIELD=VALUE` args that give it."""
    return tuple(f"{name}={_force_text(value)}" for name, value in forced.items())


def _force_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        # Case.extra: (key, value) pairs, written KEY:VALUE; a tuple field: comma-separated.
        return ",".join(":".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v) for v in value)
    return str(value)


_FLAGS = {
    "gpu": "--gpu",
    "matrix": "--matrix",
    "models": "--model",
    "force": "--force",
    "shard": "--shard",
    "shard_costs": "--shard-costs",
}


def _same(name: str, given: Any, recorded: Any, parse_force: Callable[[list[str]], Any]) -> bool:
    """Whether a given setting equals the folder's; a value that does not parse counts as the same
    (it is refused as a bad value, not as a conflict)."""
    if name == "force":
        try:
            return dict(parse_force(list(given))) == dict(parse_force(list(recorded)))
        except CaseError:
            return True
    if name == "shard":
        shard, problem = parse_shard(given)
        return bool(problem) or str(shard) == str(recorded)
    if name == "shard_costs":
        return recorded is not None and Path(given).resolve() == Path(recorded).resolve()
    if name == "models":
        return tuple(given) == tuple(recorded)
    return given == recorded


# How a setting the folder does not have reads in a conflict ("the folder's ...").
_UNSET = {
    "models": "profile models (no --model)",
    "force": "unforced cases (no --force)",
    "shard": "whole matrix (no --shard)",
    "shard_costs": "estimated costs (no --shard-costs)",
}


def _shown(name: str, value: Any) -> str:
    if value is None or value == ():
        return _UNSET.get(name, "none")
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:120]
