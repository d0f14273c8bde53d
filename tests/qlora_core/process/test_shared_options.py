"""The options of every front end that runs cases: one declaration each, added to argparse and to
pytest alike, and one check each."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from qlora_core.cases.gpus import PROFILE_NAMES
from qlora_core.process.request import DEFAULT_TIMEOUT_S
from qlora_core.process.shared_options import (
    CASE_TIMEOUT,
    GPU,
    REPEAT,
    SHARED_OPTIONS,
    add_shared_options,
    case_timeout_problem,
    parse_gpu,
    parse_repeat,
)

ROOT = Path(__file__).resolve().parents[3]


def _declared(**kwargs) -> dict[str, dict]:
    added: dict[str, dict] = {}
    add_shared_options(lambda flag, **options: added.setdefault(flag, options), **kwargs)
    return added


def test_each_option_is_declared_once_with_its_default_in_the_help():
    added = _declared()
    assert list(added) == ["--gpu", "--case-timeout", "--repeat", "--no-oom-rerun"]
    assert added["--gpu"]["default"] is None  # auto, and "not given" to --resume
    assert added["--gpu"]["help"].endswith(" Default: auto.")
    assert ", ".join(PROFILE_NAMES) in added["--gpu"]["help"]
    assert added["--case-timeout"] == {
        "default": DEFAULT_TIMEOUT_S,
        "help": f"{CASE_TIMEOUT.help} Default: {DEFAULT_TIMEOUT_S:g}.",
        "metavar": "SECONDS",
        "type": float,
    }
    assert (
        added["--no-oom-rerun"]["action"] == "store_true" and "Default" not in added["--no-oom-rerun"]["help"]
    )


def test_a_front_end_adds_its_own_default_and_notes_to_the_same_declaration():
    added = _declared(
        notes={REPEAT.flag: "on --resume: the folder's"}, defaults={GPU.flag: "cpu"}, only=(GPU, REPEAT)
    )
    assert added["--gpu"]["default"] == "cpu" and added["--gpu"]["help"].endswith(" Default: cpu.")
    assert added["--repeat"]["help"].endswith(" Default: 1 (on --resume: the folder's).")
    assert _declared(defaults={CASE_TIMEOUT.flag: 900.0})["--case-timeout"]["help"].endswith("Default: 900.")


def test_argparse_takes_the_declarations_as_pytest_does():
    parser = argparse.ArgumentParser()
    add_shared_options(parser.add_argument)
    args = parser.parse_args(["--gpu", "cpu", "--case-timeout", "60", "--repeat", "3", "--no-oom-rerun"])
    assert (args.gpu, args.case_timeout, args.repeat, args.no_oom_rerun) == ("cpu", 60.0, "3", True)
    assert "95% interval" in parser.format_help().replace("\n", " ").replace("  ", " ")  # %% escaped
    assert len(SHARED_OPTIONS) == 4


@pytest.mark.parametrize("raw", ["0", "-2", "two", "1.5"])
def test_repeat_is_a_whole_number_of_at_least_one(raw):
    assert parse_repeat(raw) == (
        None,
        f"--repeat {raw!r} must be an integer >= 1 (the fresh-process runs of each case)",
    )
    assert parse_repeat("3") == (3, "") and parse_repeat(None) == (None, "")


def test_gpu_and_timeout_problems_name_the_allowed_values():
    profile, gpu, problem = parse_gpu("nope")
    assert profile is None and gpu is None
    assert problem == f"--gpu: unknown GPU profile 'nope'; allowed: {', '.join(PROFILE_NAMES)} or auto"
    assert parse_gpu("cpu")[0].name == "cpu"  # type: ignore[union-attr]
    assert case_timeout_problem(0) == "--case-timeout 0 must be positive" and case_timeout_problem(1.5) == ""


def test_importing_the_options_imports_no_pytest_nor_torch():
    module = "qlora_core.process.shared_options"
    code = f"import sys, {module}; print(*(m in sys.modules for m in ('pytest', 'torch')))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["False", "False"]
