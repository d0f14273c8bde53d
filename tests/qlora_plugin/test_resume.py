"""--resume's checks and inheritance (qlora_plugin.resume): what is a run folder, which settings
come from it, and every conflicting option named with both values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qlora_core.measurement.result import RESULT_SCHEMA_VERSION
from qlora_plugin.options import parse_force
from qlora_plugin.resume import (
    MatrixSettings,
    folder_settings,
    force_args,
    profile_conflict,
    recorded_settings,
    resolve_settings,
    run_folder_problem,
)
from reports.run.folder import ENVIRONMENT_SCHEMA_VERSION

NO_OPTIONS = {"--model": [], "--force": []}  # what pytest gives for options not on the command line


def getoption(**given: Any):
    """pytest's config.getoption for a command line holding `given` (e.g. matrix="default")."""
    values = {**NO_OPTIONS, **{f"--{name.replace('_', '-')}": value for name, value in given.items()}}
    return lambda name: values.get(name)


def run_folder(tmp_path: Path, **environment: Any) -> Path:
    """A folder whose environment.json is a smoke run's on the cpu profile, with `environment`."""
    run_dir = tmp_path / "cpu-smoke-run"
    run_dir.mkdir()
    env = {"profile": "cpu", "matrix": "smoke", "forced": {}, "shard": None, **environment}
    (run_dir / "environment.json").write_text(json.dumps(env))
    return run_dir


def resolve(resume: Path | None, **given: Any) -> tuple[MatrixSettings, list[str]]:
    return resolve_settings(getoption(**given), resume, parse_force)


# -- what is a run folder -------------------------------------------------------------------------
def test_a_run_folder_is_one_with_the_environment_a_session_writes(tmp_path):
    assert run_folder_problem(run_folder(tmp_path)) is None


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda d: None, "no such run folder"),
        (lambda d: d.write_text("x"), "not a folder"),
        (lambda d: d.mkdir(), "not a qlora-bench run folder (no environment.json"),
        (lambda d: (d.mkdir(), (d / "environment.json").write_text("{")), "environment.json is not JSON"),
        (
            lambda d: (d.mkdir(), (d / "environment.json").write_bytes(b"\xd9\x00\xff")),
            "environment.json is not JSON",
        ),
        (lambda d: (d.mkdir(), (d / "environment.json").write_text("[]")), "is not a JSON object"),
        (
            lambda d: (d.mkdir(), (d / "environment.json").write_text('{"profile": "cpu"}')),
            "names profile 'cpu' and tier None; expected one of",
        ),
    ],
)
def test_what_is_not_a_run_folder_is_named(tmp_path, make, words):
    candidate = tmp_path / "candidate"
    make(candidate)
    problem = run_folder_problem(candidate)
    assert problem is not None and problem.startswith(f"--resume {candidate}: ") and words in problem
    assert "Traceback" not in problem and "codec" not in problem


def test_a_folder_of_a_newer_schema_is_not_resumed(tmp_path):
    newer_environment = run_folder(tmp_path, schema_version=ENVIRONMENT_SCHEMA_VERSION + 1)
    assert run_folder_problem(newer_environment) == (
        f"--resume {newer_environment}: environment.json: schema_version {ENVIRONMENT_SCHEMA_VERSION + 1}"
        f" is newer than this qlora-bench reads ({ENVIRONMENT_SCHEMA_VERSION}); read it with the"
        " qlora-bench that wrote it, or a newer one"
    )
    (tmp_path / "rows").mkdir()
    newer_rows = run_folder(tmp_path / "rows")
    (newer_rows / "results.jsonl").write_text(json.dumps({"schema_version": RESULT_SCHEMA_VERSION + 1}))
    problem = run_folder_problem(newer_rows)
    assert problem is not None and problem.startswith(f"--resume {newer_rows}: results.jsonl line 1:")
    assert f"schema_version {RESULT_SCHEMA_VERSION + 1} is newer" in problem


def test_a_folder_that_is_not_a_run_folder_is_one_problem_among_the_options(tmp_path):
    settings, problems = resolve(tmp_path, matrix="smoke")
    assert settings.matrix == "smoke" and len(problems) == 1 and "not a qlora-bench run folder" in problems[0]


# -- what the folder gives ------------------------------------------------------------------------
def test_without_resume_the_command_line_or_the_defaults(tmp_path):
    assert resolve(None) == (MatrixSettings(), [])
    assert resolve(None, matrix="smoke", repeat="2")[0] == MatrixSettings(matrix="smoke", repeat="2")


def test_resume_without_options_keeps_every_setting_of_the_folder(tmp_path):
    costs = tmp_path / "costs.json"
    recorded = recorded_settings(("tiny",), 3, costs)
    run_dir = run_folder(tmp_path, forced={"prepare_kbit": True}, shard="2/3", **recorded)
    settings, problems = resolve(run_dir)
    assert problems == []
    assert settings == MatrixSettings(
        gpu="cpu",
        matrix="smoke",
        models=("tiny",),
        force=("prepare_kbit=true",),
        repeat="3",
        shard="2/3",
        shard_costs=costs.resolve(),
    )
    # Not the defaults a bare command line gets: the folder's tier is kept, not "default".
    assert settings.matrix != MatrixSettings().matrix


def test_the_same_values_given_again_are_no_conflict(tmp_path):
    run_dir = run_folder(tmp_path, forced={"lr": 0.001}, models=["tiny"], shard="1/2")
    settings, problems = resolve(run_dir, matrix="smoke", model=["tiny"], force=["lr=1e-3"], shard=" 1 / 2 ")
    assert problems == [] and settings.force == ("lr=1e-3",)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"matrix": "default"}, "--matrix default conflicts with the folder's smoke"),
        (
            {"model": ["smollm2-135m-instruct"]},
            "--model smollm2-135m-instruct conflicts with the folder's tiny",
        ),
        (
            {"force": ["prepare_kbit=true"]},
            "--force prepare_kbit=true conflicts with the folder's unforced cases",
        ),
        ({"shard": "1/2"}, "--shard 1/2 conflicts with the folder's whole matrix (no --shard)"),
    ],
)
def test_a_conflicting_option_is_refused_naming_both_values(tmp_path, given, expected):
    run_dir = run_folder(tmp_path, models=["tiny"])
    _, problems = resolve(run_dir, **given)
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected) and str(run_dir / "environment.json") in problems[0]
    assert "leave" in problems[0]  # and how to keep the folder's value


def test_every_conflict_is_reported_at_once(tmp_path):
    _, problems = resolve(run_folder(tmp_path, shard="1/2"), matrix="full", shard="2/2")
    assert [p.split(" conflicts")[0] for p in problems] == ["--matrix full", "--shard 2/2"]


def test_repeat_given_on_resume_sets_the_folders_count(tmp_path):
    # Raising the count adds the missing repeats to a finished run: not a conflict.
    settings, problems = resolve(run_folder(tmp_path, repeat=1), repeat="3")
    assert problems == [] and settings.repeat == "3"


def test_an_older_folder_without_a_setting_takes_the_command_lines(tmp_path):
    run_dir = run_folder(tmp_path)  # no models, repeat or shard_costs recorded
    settings, problems = resolve(run_dir, model=["tiny"], repeat="2")
    assert problems == [] and settings.models == ("tiny",) and settings.repeat == "2"
    assert "models" not in folder_settings(run_dir)


def test_the_profile_resolved_here_must_be_the_folders(tmp_path):
    run_dir = run_folder(tmp_path, profile="t4")
    assert profile_conflict("t4", "t4", run_dir) is None
    assert profile_conflict("auto", "cpu", run_dir).startswith(
        "--gpu auto (cpu here) conflicts with the folder's t4"
    )
    assert profile_conflict("cpu", "cpu", run_dir).startswith("--gpu cpu conflicts with the folder's t4")
    assert profile_conflict("cpu", "cpu", None) is None


def test_forced_fields_read_back_from_environment_json_as_the_force_options_that_give_them():
    given = [
        "prepare_kbit=true",
        "target_modules=q_proj,v_proj",
        "extra=slowdown:10,fault:exit@load",
        "lr=0.002",
    ]
    forced = dict(parse_force(given))
    stored = json.loads(json.dumps(forced, default=list))  # as environment.json holds it
    assert dict(parse_force(list(force_args(stored)))) == forced
    broken = {**stored, "extra": [["slowdown", "20"]]}
    assert dict(parse_force(list(force_args(broken)))) != forced
