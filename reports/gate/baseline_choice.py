"""Which baseline a run is gated against, and whether its speed can be compared with it: the
device kind (`gpu_name` normalized), the choice from a folder of baselines, and the file name
`--save-baseline DIR` writes (`save_target`). No torch here: the plugin reads this while it
validates its options, before any case runs. See docs/gate.md#baselines-per-gpu-kind.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reports.gate.baseline import BaselineError, load_baseline, run_environment, run_matrix, run_profile
from reports.gate.thresholds import REQUIRE_SPEED_FLAG
from reports.run.frame import RunData

CPU_KIND = "cpu"
CPU_PROFILE = "cpu"
_UNKNOWN_GPU = "an unrecorded GPU"


class BaselineFolderError(BaselineError):
    """A folder of baselines holds none of this run's profile, tier and device kind."""


# -- the device kind ------------------------------------------------------------------------------
def device_kind(gpu_name: str, profile: str | None) -> str:
    """The kind speed is compared within: the normalized GPU name(s), "cpu" for a CPU run, "" when
    unknown (a GPU run without a recorded name)."""
    names = sorted({" ".join(n.split()).casefold() for n in gpu_name.split(",") if n.strip()})
    if names:
        return ", ".join(names)
    return CPU_KIND if profile == CPU_PROFILE else ""


def device_label(gpu_name: str, profile: str | None) -> str:
    """The device as a reader knows it: the GPU name as recorded, "cpu", or "an unrecorded GPU"."""
    if gpu_name.strip():
        return gpu_name.strip()
    return CPU_KIND if profile == CPU_PROFILE else _UNKNOWN_GPU


def speed_not_compared(baseline: dict[str, Any], run_gpu_name: str, run_profile: str | None) -> str:
    """Why this run's speed cannot be compared with `baseline`'s ("" when it can): the two were
    measured on different device kinds, or one kind is unknown."""
    profile = baseline.get("profile")
    base_name = str(baseline.get("gpu_name") or "")
    base_kind = device_kind(base_name, profile)
    run_kind = device_kind(run_gpu_name, run_profile or profile)
    if base_kind and base_kind == run_kind:
        return ""
    return (
        f"speed not compared: baseline from {device_label(base_name, profile)},"
        f" run on {device_label(run_gpu_name, run_profile or profile)}"
    )


# -- choosing from a folder -----------------------------------------------------------------------
@dataclass(frozen=True)
class BaselineChoice:
    """The baseline file a run is gated against, and how it was found."""

    path: Path
    baseline: dict[str, Any]
    note: str = ""
    """How it was chosen from a folder ("" for a file named as it is)."""


def file_name_for(profile: str, matrix: str, gpu_name: str) -> str:
    """A baseline's file name in a folder of baselines: `<profile>-<tier>-<device>.json`."""
    device = re.sub(r"[^a-z0-9]+", "-", device_label(gpu_name, profile).casefold()).strip("-")
    return f"{profile}-{matrix}-{device or 'unknown'}.json"


def save_target(path: Path, run: RunData) -> Path:
    """Where `--save-baseline PATH` writes `run`'s baseline: PATH, or in a folder PATH the file
    `file_name_for` names (the name a folder's choice reads nothing from: it reads the headers)."""
    path = Path(path)
    if not path.is_dir():
        return path
    env = run_environment(run.results, run.environment)
    profile = run_profile(run) or "unknown"
    return path / file_name_for(profile, run_matrix(run) or "unknown", env["gpu_name"])


def save_command(profile: str, matrix: str, path: Path) -> str:
    """The `pytest bench` command that makes a baseline of this profile and tier at `path`
    (3 repeats: the speed rules need the noise between processes)."""
    words = ["pytest", "bench", "--gpu", profile, "--matrix", matrix, "--repeat", "3"]
    return shlex.join([*words, "--save-baseline", str(path)])


def choose_baseline(path: Path, profile: str | None, matrix: str | None, gpu_name: str) -> BaselineChoice:
    """The baseline for a run of `profile`, tier `matrix` on `gpu_name` ("" on the CPU): `path`
    itself when it is a file (checked for the profile and tier), else the one of the folder `path`
    that matches. Raises a BaselineError (a BaselineFolderError when the folder has no match)."""
    path = Path(path)
    if not path.is_dir():
        return BaselineChoice(path, load_baseline(path, profile=profile, matrix=matrix))
    files = sorted(p for p in path.glob("*.json") if p.is_file())
    readable: list[tuple[Path, dict[str, Any]]] = []
    unreadable: list[str] = []
    for file in files:
        try:
            readable.append((file, load_baseline(file)))
        except BaselineError as e:
            unreadable.append(f"{file.name}: {e.detail.splitlines()[0]}")
    kind = device_kind(gpu_name, profile)
    matches = [
        (file, data)
        for file, data in readable
        if data["profile"] == profile
        and (matrix is None or data["matrix"] in (matrix, None))
        and kind
        and device_kind(data["gpu_name"], data["profile"]) == kind
    ]
    if not matches:
        raise BaselineFolderError(path, _no_match(path, profile, matrix, gpu_name, readable, unreadable))
    # The newest (ISO 8601 timestamps sort as text); the file name breaks a tie.
    matches.sort(key=lambda m: (m[1]["created_at"], m[0].name))
    file, data = matches[-1]
    others = f"; {len(matches) - 1} older one(s) of the same key left aside" if len(matches) > 1 else ""
    skipped = f"; {len(unreadable)} unreadable file(s) skipped" if unreadable else ""
    device = device_label(data["gpu_name"], data["profile"])
    note = (
        f"baseline {file.name} chosen from {path} (profile {data['profile']}, tier"
        f" {data['matrix'] or 'unrecorded'}, GPU {device}){others}{skipped}"
    )
    return BaselineChoice(file, data, note)


def _no_match(
    folder: Path,
    profile: str | None,
    matrix: str | None,
    gpu_name: str,
    readable: list[tuple[Path, dict[str, Any]]],
    unreadable: list[str],
) -> str:
    """The refusal: what this run needs, what the folder holds, and the command that makes it."""
    device = device_label(gpu_name, profile)
    wanted = f"profile {profile or '?'}, tier {matrix or '?'}, GPU {device}"
    lines = [f"no baseline of this run's {wanted} in this folder."]
    if readable:
        lines.append("It holds:")
        lines += [
            f"  - {file.name}: profile {d['profile']}, tier {d['matrix'] or 'unrecorded'},"
            f" GPU {device_label(d['gpu_name'], d['profile'])}"
            for file, d in readable
        ]
    else:
        lines.append("It holds no readable baseline (*.json).")
    lines += [f"  - unreadable: {line}" for line in unreadable]
    if profile and matrix:
        target = folder / file_name_for(profile, matrix, gpu_name)
        lines.append(f"Make one on this GPU with: {save_command(profile, matrix, target)}")
    same_key = [f for f, d in readable if d["profile"] == profile and d["matrix"] in (matrix, None)]
    example = str(same_key[0]) if same_key else "FILE"
    lines.append(
        "To gate memory, statuses and losses against another GPU's baseline (speed is then not"
        f" compared), name its file: --baseline {example}"
    )
    return "\n".join(lines)


def baseline_option_problems(
    path: Path, profile: str | None, matrix: str | None, gpu_name: str, require_speed: bool
) -> list[str]:
    """The problems of `--baseline PATH` for a run not yet started (one string each, never a
    library's exception text); [] when a baseline is there to gate it. With `require_speed`, a
    baseline from another device kind is a problem too: its speed could not be compared."""
    try:
        choice = choose_baseline(path, profile, matrix, gpu_name)
    except BaselineError as e:
        return ["--baseline: " + str(e).replace("\n", "\n    ")]  # indented under its option
    why = speed_not_compared(choice.baseline, gpu_name, profile)
    if not (require_speed and why):
        return []
    make = ""
    if profile and matrix:
        target = choice.path.parent / file_name_for(profile, matrix, gpu_name)
        make = f"; make one with: {save_command(profile, matrix, target)}"
    return [
        f"{REQUIRE_SPEED_FLAG}: baseline {choice.path}: {why}, so its speed could not be gated;"
        f" use a baseline measured on {device_label(gpu_name, profile)}{make}"
    ]
