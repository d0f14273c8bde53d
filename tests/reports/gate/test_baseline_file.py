"""Release gate: baselines made, saved, loaded back and refused when bad, each bad file with its own
error naming it (hand-made results, no GPU)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reports.gate.baseline import (
    BASELINE_SCHEMA_VERSION,
    BaselineContentError,
    BaselineError,
    BaselineFileError,
    BaselineProfileError,
    BaselineSchemaError,
    BaselineTierError,
    load_baseline,
    make_baseline,
    save_baseline,
    save_run_baseline,
)
from reports.gate.baseline_choice import BaselineFolderError
from reports.run.frame import RunData, results_frame
from tests.reports.gate.gate_cases import (
    CASE_A,
    CASE_B,
    CASES,
    COMMAND,
    ENVIRONMENT,
    PROFILE,
    clean_results,
    make_result,
)


# -- make / save / load ---------------------------------------------------------------------------
def test_save_and_load_round_trip(baseline_path: Path) -> None:
    loaded = load_baseline(baseline_path, profile=PROFILE)
    assert loaded["schema_version"] == BASELINE_SCHEMA_VERSION
    assert loaded["profile"] == PROFILE
    assert loaded["gpu_name"] == "Tesla T4"
    assert loaded["command"] == COMMAND
    assert loaded["versions"] == {
        "torch": "2.11.0",
        "transformers": "5.1.0",
        "peft": "0.21.0",
        "bitsandbytes": "0.50.1",
        "cuda": "12.8",
        "driver": "570.86.15",
    }
    assert sorted(loaded["cases"]) == sorted(c.id for c in CASES)
    entry = loaded["cases"][CASE_B.id]
    assert entry["case_hash"] == CASE_B.hash
    assert entry["status"] == "ok"
    assert entry["tokens_per_s"] == pytest.approx(make_result(CASE_B).training.tokens_per_s)
    assert entry["peak_alloc_gib"] == pytest.approx(12.0)


def test_saved_file_is_sorted_indented_and_written_atomically(baseline_path: Path) -> None:
    text = baseline_path.read_text()
    data = json.loads(text)
    assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"
    assert [p.name for p in baseline_path.parent.iterdir()] == ["t4.json"]  # no temp file left
    # Overwriting replaces the file whole.
    save_baseline(baseline_path, results_frame([make_result(CASE_A)]), command="again", environment={})
    assert list(load_baseline(baseline_path)["cases"]) == [CASE_A.id]
    assert [p.name for p in baseline_path.parent.iterdir()] == ["t4.json"]


def test_unmeasured_metrics_are_stored_as_null(tmp_path: Path) -> None:
    on_cpu = {"profile": "cpu", "device": "cpu", "cuda_version": "", "nvml_peak_gib": None}
    cpu = make_result(CASE_A, **on_cpu)
    crashed = make_result(CASE_B, **on_cpu, status="crashed", tokens_per_s=None, final_loss=None)
    path = tmp_path / "cpu.json"
    save_baseline(path, results_frame([cpu, crashed]), command=COMMAND, environment={})
    raw = json.loads(path.read_text())
    assert raw["cases"][CASE_A.id]["nvml_peak_gib"] is None
    assert raw["cases"][CASE_B.id]["tokens_per_s"] is None
    assert raw["cases"][CASE_B.id]["final_loss"] is None
    assert raw["versions"]["cuda"] == ""


def test_environment_falls_back_to_environment_json() -> None:
    bare = make_result(CASE_A).replaced(torch_version="", gpu_name="")
    baseline = make_baseline(
        results_frame([bare]),
        command=COMMAND,
        environment={"torch_version": "2.12.0", "gpu_present": "NVIDIA L4"},
    )
    assert baseline["versions"]["torch"] == "2.12.0"
    assert baseline["gpu_name"] == "NVIDIA L4"


def test_make_baseline_refuses_an_empty_run_and_mixed_profiles() -> None:
    with pytest.raises(ValueError, match="no cases"):
        make_baseline(results_frame([]), command=COMMAND, environment=ENVIRONMENT)
    mixed = results_frame([make_result(CASE_A), make_result(CASE_B, profile="l4")])
    with pytest.raises(ValueError, match="several profiles"):
        make_baseline(mixed, command=COMMAND, environment=ENVIRONMENT)


def test_save_run_baseline_loads_back(tmp_path: Path) -> None:
    run = RunData(results_frame(clean_results()), environment=ENVIRONMENT)
    saved = save_run_baseline(tmp_path / "b.json", run, command=COMMAND)
    loaded = load_baseline(tmp_path / "b.json")
    assert loaded == json.loads(json.dumps(saved))  # what was written is what is read, every field
    assert sorted(loaded["cases"]) == sorted(case.id for case in CASES)
    assert (loaded["profile"], loaded["command"]) == (PROFILE, COMMAND)


def test_the_gate_and_baselines_read_no_needed_field():
    """What an OOM needed uncapped (qlora_core.process.oom_need) is no measurement of the capped run."""
    from reports.gate.baseline import CASE_FIELDS, GATED_METRICS

    assert not [name for name in (*GATED_METRICS, *CASE_FIELDS) if name.startswith("needed_")]


# -- bad baselines: each a distinct error naming the file -----------------------------------------
def _truncate(path: Path) -> None:
    text = path.read_text()
    path.write_text(text[: len(text) // 2])


def _empty(path: Path) -> None:
    path.write_text("")


def _edit(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))

    return apply


def _drop_metric(data: dict[str, Any]) -> None:
    del data["cases"][CASE_B.id]["peak_reserved_gib"]


BAD_BASELINES: dict[str, tuple[Callable[[Path], None], type[BaselineError], str]] = {
    "truncated": (_truncate, BaselineFileError, "not valid JSON"),
    "empty": (_empty, BaselineFileError, "empty"),
    "missing": (lambda p: p.unlink(), BaselineFileError, "not found"),
    "not an object": (lambda p: p.write_text("[]"), BaselineFileError, "JSON object"),
    "newer schema": (
        _edit(lambda d: d.update(schema_version=99)),
        BaselineSchemaError,
        "schema_version is 99, newer than this qlora-bench reads \\(2 to 3\\): a newer qlora-bench wrote"
        " it; update qlora-bench, or regenerate it .*--save-baseline",
    ),
    "old schema": (
        _edit(lambda d: d.update(schema_version=1)),
        BaselineSchemaError,
        "schema_version is 1, expected 2 to 3 \\(an older baseline: it lacks the per-repeat tokens/s,"
        " kernel time and noise the speed rules need\\); regenerate it with `pytest bench --gpu t4"
        " --repeat 3 --save-baseline",
    ),
    "no schema": (
        _edit(lambda d: d.pop("schema_version")),
        BaselineSchemaError,
        "schema_version is 'missing': not a qlora-bench baseline",
    ),
    "text schema": (_edit(lambda d: d.update(schema_version="3")), BaselineSchemaError, "an integer"),
    "empty object": (lambda p: p.write_text("{}"), BaselineSchemaError, "an empty JSON object"),
    "random bytes": (
        lambda p: p.write_bytes(bytes([0xD9, 0x00, 0xFF, 0x13]) * 64),
        BaselineFileError,
        "not a text file \\(byte 0 is not UTF-8\\)",
    ),
    "a folder": (lambda p: (p.unlink(), p.mkdir()), BaselineFileError, "not a file"),
    "bad tier": (_edit(lambda d: d.update(matrix=7)), BaselineContentError, "matrix=7 must be"),
    "missing metric": (
        _edit(_drop_metric),
        BaselineContentError,
        f"case '{CASE_B.id}': missing field 'peak_reserved_gib'",
    ),
    "no cases": (_edit(lambda d: d.update(cases={})), BaselineContentError, "no cases"),
    "bad metric value": (
        _edit(lambda d: d["cases"][CASE_A.id].update(final_loss="2.5")),
        BaselineContentError,
        "final_loss='2.5' must be a finite number",
    ),
    "missing header field": (
        _edit(lambda d: d.pop("versions")),
        BaselineContentError,
        "missing field 'versions'",
    ),
    "other profile": (_edit(lambda d: d.update(profile="a100-80gb")), BaselineProfileError, "a100-80gb"),
    "other tier": (_edit(lambda d: d.update(matrix="smoke")), BaselineTierError, "tier 'smoke'.*'default'"),
}


@pytest.mark.parametrize("kind", list(BAD_BASELINES))
def test_bad_baseline_raises_its_own_error_naming_the_file(baseline_path: Path, kind: str) -> None:
    spoil, error, message = BAD_BASELINES[kind]
    spoil(baseline_path)
    with pytest.raises(BaselineError) as info:
        load_baseline(baseline_path, profile=PROFILE, matrix="default")
    assert type(info.value) is error
    assert "codec" not in str(info.value) and "Errno" not in str(info.value)  # words, not a library's
    assert str(baseline_path) in str(info.value)
    assert info.value.path == baseline_path
    assert re.search(message, str(info.value)), str(info.value)


def test_error_classes_are_distinct_value_errors() -> None:
    classes = {
        BaselineFileError,
        BaselineSchemaError,
        BaselineContentError,
        BaselineProfileError,
        BaselineTierError,
        BaselineFolderError,
    }
    assert len(classes) == 6
    for cls in classes:
        assert issubclass(cls, BaselineError) and issubclass(cls, ValueError)
        assert not any(issubclass(cls, other) for other in classes - {cls})
