"""Release gate: baselines saved, loaded, validated and compared (hand-made results, no GPU).

Every regression is synthesized from a clean run of three cases, round-tripped through
save_baseline/load_baseline, and must fail naming its case and metric; noise within the
thresholds must pass.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qlora_core.cases.case import Case
from qlora_core.measurement.result import Result
from reports.gate.baseline import (
    BASELINE_DIFF_MD,
    BASELINE_SCHEMA_VERSION,
    GATED_METRICS,
    NVML_USED,
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
from reports.gate.thresholds import Thresholds
from reports.gate.verdict import GateReport, compare, gate, render_diff_markdown
from reports.run.frame import RunData, results_frame

pytest_plugins = ("pytester",)

REPO = Path(__file__).resolve().parents[3]
PROFILE = "t4"
COMMAND = "pytest bench --gpu t4 --save-baseline baselines/t4.json"
ENVIRONMENT: dict[str, Any] = {"profile": PROFILE, "hostname": "runner-1"}
_MIB = 1 / 1024  # one MiB in GiB

CASE_A = Case(model="llama-3.2-3b", compute_dtype="fp16", batch_size=4, seq_len=1024)
CASE_B = CASE_A.replace(batch_size=8)
CASE_C = CASE_A.replace(quant_type="fp4")
CASES = (CASE_A, CASE_B, CASE_C)

ENV_FIELDS: dict[str, Any] = {
    "device": "cuda",
    "gpu_name": "Tesla T4",
    "torch_version": "2.11.0",
    "transformers_version": "5.1.0",
    "peft_version": "0.21.0",
    "bitsandbytes_version": "0.50.1",
    "cuda_version": "12.8",
    "driver_version": "570.86.15",
}


def make_result(case: Case, profile: str = PROFILE, **changes: Any) -> Result:
    """An ok result with multi-GiB memory and a tight step-time spread, then `changes`."""
    scale = 1.0 + case.batch_size / 8
    values: dict[str, Any] = {
        **ENV_FIELDS,
        "status": "ok",
        "tokens_per_step": case.tokens_per_step,
        "step_ms_median": 2000.0 * scale,
        "step_ms_spread": 0.01,
        "tokens_per_s": case.tokens_per_step / (2.0 * scale),
        "kernel_ms_per_step": 1900.0 * scale,
        "peak_alloc_gib": 6.0 * scale,
        "peak_reserved_gib": 7.0 * scale,
        "nvml_base_gib": 0.5,
        "nvml_peak_gib": 0.5 + 7.5 * scale,
        "final_loss": 2.5,
    }
    values.update(changes)
    return Result.for_case(case, profile).replaced(**values)


def clean_results() -> list[Result]:
    return [make_result(case) for case in CASES]


def changed(case: Case, **changes: Any) -> list[Result]:
    """The clean run with one case's fields changed."""
    return [make_result(c, **changes) if c == case else make_result(c) for c in CASES]


def scaled(case: Case, metric: str, factor: float) -> list[Result]:
    """The clean run with one case's metric multiplied by `factor`."""
    return changed(case, **{metric: make_result(case).get_field(metric) * factor})


@pytest.fixture
def baseline_path(tmp_path: Path) -> Path:
    path = tmp_path / "baselines" / "t4.json"
    save_baseline(path, results_frame(clean_results()), command=COMMAND, environment=ENVIRONMENT)
    return path


def judge(baseline_path: Path, run: list[Result], thresholds: Thresholds | None = None) -> GateReport:
    """Load the saved baseline for the run's profile and compare the run with it."""
    baseline = load_baseline(baseline_path, profile=PROFILE)
    return compare(baseline, results_frame(run), thresholds or Thresholds())


def failing(report: GateReport) -> set[tuple[str, str]]:
    return {(c.case_id, c.metric) for c in report.comparisons if c.verdict == "fail"}


def verdict_of(report: GateReport, case: Case, metric: str) -> str:
    (comparison,) = [c for c in report.comparisons if (c.case_id, c.metric) == (case.id, metric)]
    return comparison.verdict


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


# -- the gate: clean runs and noise pass ----------------------------------------------------------
def test_identical_run_passes(baseline_path: Path) -> None:
    report = judge(baseline_path, clean_results())
    assert report.passed, report.failures
    assert report.failures == []
    assert report.flags == []
    assert len(report.comparisons) == len(CASES) * len(GATED_METRICS)
    assert {c.verdict for c in report.comparisons} == {"pass"}


def test_noise_within_thresholds_passes(baseline_path: Path) -> None:
    factors = {
        "tokens_per_s": 0.95,
        "peak_alloc_gib": 1.02,
        "peak_reserved_gib": 1.02,
        "nvml_peak_gib": 1.02,
        "final_loss": 1.01,
    }
    run = [make_result(c, **{m: make_result(c).get_field(m) * f for m, f in factors.items()}) for c in CASES]
    report = judge(baseline_path, run)
    assert report.passed, report.failures


def test_improvements_never_fail(baseline_path: Path) -> None:
    run = [
        make_result(
            c,
            tokens_per_s=make_result(c).training.tokens_per_s * 1.5,
            peak_alloc_gib=1.0,
            peak_reserved_gib=1.0,
            nvml_peak_gib=1.0,
            final_loss=0.5,
        )
        for c in CASES
    ]
    assert judge(baseline_path, run).passed


# -- the gate: each regression fails, naming case and metric --------------------------------------
def test_tokens_per_s_drop_of_10_pct_fails(baseline_path: Path) -> None:
    report = judge(baseline_path, scaled(CASE_B, "tokens_per_s", 0.90))
    assert not report.passed
    assert failing(report) == {(CASE_B.id, "tokens_per_s")}
    (line,) = report.failures
    assert line.startswith(f"{CASE_B.id}: tokens_per_s dropped 10.0% (")


@pytest.mark.parametrize(
    ("field", "metric"),
    [("peak_alloc_gib",) * 2, ("peak_reserved_gib",) * 2, ("nvml_peak_gib", NVML_USED)],
)
def test_memory_rise_of_5_pct_fails(baseline_path: Path, field: str, metric: str) -> None:
    report = judge(baseline_path, scaled(CASE_A, field, 1.05))
    assert failing(report) == {(CASE_A.id, metric)}
    (line,) = report.failures
    assert CASE_A.id in line and metric in line


def test_nvml_is_gated_on_what_the_process_used_not_on_what_the_device_held_before(
    baseline_path: Path,
) -> None:
    """Another process held 0.6 GiB more on this runner's device: the raw peak rose by that much,
    the case's own use did not."""
    clean = make_result(CASE_A)
    moved = changed(
        CASE_A, nvml_base_gib=clean.memory.nvml_base_gib + 0.6, nvml_peak_gib=clean.memory.nvml_peak_gib + 0.6
    )
    report = judge(baseline_path, moved)
    assert report.passed, report.failures
    assert verdict_of(report, CASE_A, NVML_USED) == "pass"
    # side by side, the row reads its own line: base 0, its peak what it used
    own = changed(
        CASE_A, nvml_base_gib=0.0, nvml_peak_gib=clean.memory.nvml_peak_gib - clean.memory.nvml_base_gib
    )
    assert judge(baseline_path, own).passed


def test_speed_missing_on_a_side_that_ran_side_by_side_is_not_compared(tmp_path: Path) -> None:
    """Which case of a shareable family runs alone first (the evidence that sharing measures
    right) depends on the run's order: a shard ran alone what the baseline ran side by side."""
    path = tmp_path / "t4.json"
    shared = changed(CASE_A, side_by_side=8, tokens_per_s=None, kernel_ms_per_step=None)
    save_baseline(path, results_frame(shared), command=COMMAND, environment=ENVIRONMENT)
    for run in (clean_results(), shared):
        report = judge(path, run)
        assert report.passed, report.failures
        for metric in ("tokens_per_s", "kernel_ms_per_step"):
            comparison = next(c for c in report.comparisons if (c.case_id, c.metric) == (CASE_A.id, metric))
            assert comparison.verdict == "n/a" and "side by side with 7 other case(s)" in comparison.why
    # the other way round too; and speed missing without a side-by-side reason still fails
    assert judge_path_passes(tmp_path, clean_results(), shared)
    report = judge(path, changed(CASE_B, tokens_per_s=None))
    assert failing(report) == {(CASE_B.id, "tokens_per_s")}


def judge_path_passes(tmp_path: Path, base: list[Result], run: list[Result]) -> bool:
    path = tmp_path / "other.json"
    save_baseline(path, results_frame(base), command=COMMAND, environment=ENVIRONMENT)
    return judge(path, run).passed


LOAD = Case("llama-2-7b", quant_type="int8", compute_dtype="fp16", load_only=True)


def _loaded(alloc: float = 6.64, reserved: float = 6.95, nvml: float = 8.07) -> Result:
    """A load-only row as the child writes one: its memory under the load's names only."""
    return Result.for_case(LOAD, PROFILE).replaced(
        **ENV_FIELDS,
        status="ok",
        load_peak_alloc_gib=alloc,
        load_peak_reserved_gib=reserved,
        load_nvml_gib=nvml,
        nvml_base_gib=0.6,
    )


def test_a_load_only_case_is_gated_on_its_loads_memory(tmp_path: Path) -> None:
    """The weights family trains nothing: its memory is its load's, and a rise of it fails."""
    path = tmp_path / "t4.json"
    save_baseline(path, results_frame([_loaded()]), command=COMMAND, environment=ENVIRONMENT)
    entry = load_baseline(path, profile=PROFILE)["cases"][LOAD.id]
    assert (entry["peak_alloc_gib"], entry["peak_reserved_gib"]) == (6.64, 6.95)
    assert entry["nvml_used_gib"] == pytest.approx(8.07 - 0.6)
    assert judge(path, [_loaded()]).passed
    grown = judge(path, [_loaded(alloc=6.64 * 1.05, reserved=6.95 * 1.05, nvml=0.6 + 7.47 * 1.05)])
    assert failing(grown) == {(LOAD.id, m) for m in ("peak_alloc_gib", "peak_reserved_gib", "nvml_used_gib")}


def test_final_loss_rise_beyond_limit_fails(baseline_path: Path) -> None:
    report = judge(baseline_path, scaled(CASE_C, "final_loss", 1.03))
    assert failing(report) == {(CASE_C.id, "final_loss")}


def test_status_flip_ok_to_oom_fails_and_skips_metrics(baseline_path: Path) -> None:
    run = changed(CASE_A, status="oom", tokens_per_s=None, final_loss=None)
    report = judge(baseline_path, run)
    assert not report.passed
    assert [(c.case_id, c.baseline, c.current) for c in report.status_changes] == [(CASE_A.id, "ok", "oom")]
    assert report.failures == [f"{CASE_A.id}: status changed ok -> oom"]
    assert {verdict_of(report, CASE_A, m) for m in GATED_METRICS} == {"n/a"}


def test_status_flip_oom_to_ok_fails_as_a_stale_baseline(tmp_path: Path) -> None:
    path = tmp_path / "t4.json"
    base = changed(CASE_A, status="oom", tokens_per_s=None, final_loss=None)
    save_baseline(path, results_frame(base), command=COMMAND, environment=ENVIRONMENT)
    report = judge(path, clean_results())
    assert report.failures == [f"{CASE_A.id}: status changed oom -> ok"]


def test_same_failed_status_on_both_sides_passes(tmp_path: Path) -> None:
    path = tmp_path / "t4.json"
    oom = changed(CASE_A, status="oom", tokens_per_s=None, final_loss=None, nvml_peak_gib=None)
    save_baseline(path, results_frame(oom), command=COMMAND, environment=ENVIRONMENT)
    # Measured on one side only, but the case is not ok on either: nothing to compare.
    report = judge(path, changed(CASE_A, status="oom", tokens_per_s=None, final_loss=3.0))
    assert report.passed, report.failures
    assert {verdict_of(report, CASE_A, m) for m in GATED_METRICS} == {"n/a"}


def test_missing_case_fails(baseline_path: Path) -> None:
    report = judge(baseline_path, [make_result(CASE_A), make_result(CASE_C)])
    assert report.only_in_baseline == [CASE_B.id]
    assert report.failures == [f"{CASE_B.id}: in the baseline but not in this run"]


def test_a_case_deselected_with_k_is_listed_not_failed(baseline_path: Path, tmp_path: Path) -> None:
    baseline = load_baseline(baseline_path, profile=PROFILE)
    ran = results_frame([make_result(CASE_A), make_result(CASE_C)])
    report = compare(baseline, ran, Thresholds(), selected={CASE_A.id, CASE_C.id})
    assert report.passed, report.failures
    assert report.not_selected == [CASE_B.id] and report.only_in_baseline == []
    # Selected but absent still fails; and a gate that compared nothing cannot pass.
    assert not compare(baseline, ran, Thresholds(), selected={CASE_A.id, CASE_B.id}).passed
    nothing = compare(baseline, results_frame([]), Thresholds(), selected=set())
    assert nothing.failures == ["no case of the baseline ran in this run: nothing was compared"]


def test_new_case_fails(baseline_path: Path) -> None:
    new = CASE_A.replace(seq_len=2048)
    report = judge(baseline_path, [*clean_results(), make_result(new)])
    assert report.only_in_run == [new.id]
    (line,) = report.failures
    assert line.startswith(f"{new.id}: in this run but not in the baseline")


def test_changed_case_hash_fails(baseline_path: Path) -> None:
    run = changed(CASE_C, case_hash="0123456789ab")
    report = judge(baseline_path, run)
    assert [(c.case_id, c.baseline, c.current) for c in report.hash_changes] == [
        (CASE_C.id, CASE_C.hash, "0123456789ab")
    ]
    (line,) = report.failures
    assert CASE_C.id in line and "case definition changed" in line
    assert {verdict_of(report, CASE_C, m) for m in GATED_METRICS} == {"n/a"}


# -- thresholds: absolute memory floor, one-sided metrics (speed rules: test_gate_rules.py) --------
def test_small_absolute_memory_rises_pass(tmp_path: Path) -> None:
    path = tmp_path / "small.json"
    small = [make_result(c, peak_alloc_gib=0.5) for c in CASES]
    save_baseline(path, results_frame(small), command=COMMAND, environment=ENVIRONMENT)

    def rise(mib: float) -> GateReport:
        run = [make_result(c, peak_alloc_gib=0.5 + (mib * _MIB if c == CASE_A else 0.0)) for c in CASES]
        return judge(path, run)

    # +50 MiB is +9.8% of 0.5 GiB, but under the 64 MiB floor.
    assert rise(50).passed
    assert rise(64).passed  # exactly at the limit
    assert failing(rise(100)) == {(CASE_A.id, "peak_alloc_gib")}


def test_metric_none_on_both_sides_is_not_applicable(tmp_path: Path) -> None:
    path = tmp_path / "cpu.json"
    cpu = [make_result(c, profile="cpu", nvml_peak_gib=None) for c in CASES]
    save_baseline(path, results_frame(cpu), command=COMMAND, environment={})
    report = compare(load_baseline(path, profile="cpu"), results_frame(cpu), Thresholds())
    assert report.passed
    assert {c.verdict for c in report.comparisons if c.metric == NVML_USED} == {"n/a"}


def test_metric_measured_then_missing_fails(baseline_path: Path) -> None:
    report = judge(baseline_path, changed(CASE_B, nvml_peak_gib=None))
    assert failing(report) == {(CASE_B.id, NVML_USED)}
    (line,) = report.failures
    assert "was measured" in line and "now missing" in line


def test_metric_missing_then_measured_fails(tmp_path: Path) -> None:
    path = tmp_path / "t4.json"
    save_baseline(path, results_frame(changed(CASE_B, final_loss=None)), command=COMMAND, environment={})
    report = judge(path, clean_results())
    assert failing(report) == {(CASE_B.id, "final_loss")}


def test_custom_thresholds_apply(baseline_path: Path) -> None:
    run = scaled(CASE_A, "tokens_per_s", 0.90)
    assert judge(baseline_path, run, Thresholds().with_overrides(tokens_per_s_drop_pct=12.0)).passed


# -- environment flags and profiles ---------------------------------------------------------------
def test_library_and_gpu_changes_are_flags_not_failures(baseline_path: Path) -> None:
    run = [make_result(c, torch_version="2.12.0", gpu_name="Tesla T4 (rev b)") for c in CASES]
    report = judge(baseline_path, run)
    assert report.passed
    assert report.flags == ["GPU: Tesla T4 -> Tesla T4 (rev b)", "torch: 2.11.0 -> 2.12.0"]


def test_mixed_versions_in_one_run_are_flagged(baseline_path: Path) -> None:
    run = [make_result(CASE_A, peft_version="0.21.1"), make_result(CASE_B), make_result(CASE_C)]
    assert judge(baseline_path, run).flags == ["peft: 0.21.0 -> 0.21.0, 0.21.1"]


def test_other_profile_is_a_profile_error(baseline_path: Path) -> None:
    with pytest.raises(BaselineProfileError, match=r"'t4'.*'l4'"):
        load_baseline(baseline_path, profile="l4")
    l4_run = results_frame([make_result(c, profile="l4") for c in CASES])
    with pytest.raises(BaselineProfileError):
        compare(load_baseline(baseline_path), l4_run, Thresholds())


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


# -- the diff report ------------------------------------------------------------------------------
def test_render_diff_markdown_shows_everything(baseline_path: Path) -> None:
    new = CASE_A.replace(seq_len=2048)
    run = [
        make_result(
            CASE_A, tokens_per_s=make_result(CASE_A).training.tokens_per_s * 0.8, torch_version="2.12.0"
        ),
        make_result(CASE_B, status="oom", torch_version="2.12.0"),
        make_result(new, torch_version="2.12.0"),
    ]
    frame = results_frame(run)
    baseline = load_baseline(baseline_path, profile=PROFILE)
    report = compare(baseline, frame, Thresholds())
    text = render_diff_markdown(report, baseline, frame)
    assert text.startswith("# Baseline comparison: FAIL\n")
    assert f"**Verdict: {report.summary}**" in text
    assert "torch: 2.11.0 -> 2.12.0" in text
    assert "| **torch** (changed) | 2.11.0 | 2.12.0 |" in text
    assert COMMAND in text
    for case in (CASE_A, CASE_B):
        for metric in GATED_METRICS:
            assert f"| {case.id} | {metric} |" in text
    assert f"| {CASE_B.id} | ok | oom |" in text
    assert f"## Cases in the baseline only\n\n- {CASE_C.id}" in text
    assert f"## Cases in this run only\n\n- {new.id}" in text
    for line in report.failures:
        assert line in text


def test_render_diff_markdown_of_a_clean_run(baseline_path: Path) -> None:
    frame = results_frame(clean_results())
    baseline = load_baseline(baseline_path, profile=PROFILE)
    text = render_diff_markdown(compare(baseline, frame, Thresholds()), baseline, frame)
    assert text.startswith("# Baseline comparison: PASS\n")
    assert "**Verdict: PASS: no regressions (18 metric checks made)**" in text
    assert "## Flags" not in text and "## Failures" not in text


# -- gate(): what bench/test_gate.py runs ---------------------------------------------------------
def test_gate_writes_the_diff_and_returns_the_report(baseline_path: Path, tmp_path: Path) -> None:
    run = RunData(results_frame(scaled(CASE_A, "peak_alloc_gib", 1.10)), environment=ENVIRONMENT)
    report = gate(baseline_path, run, Thresholds(), tmp_path / "run")
    assert failing(report) == {(CASE_A.id, "peak_alloc_gib")}
    diff = (tmp_path / "run" / BASELINE_DIFF_MD).read_text()
    assert diff.startswith("# Baseline comparison: FAIL")


def test_gate_flags_a_forced_run(baseline_path: Path, tmp_path: Path) -> None:
    run = RunData(results_frame(clean_results()), environment={"forced": {"prepare_kbit": False}})
    report = gate(baseline_path, run, Thresholds(), tmp_path)
    assert report.passed
    assert report.flags == ["forced fields (simulated code change): {'prepare_kbit': False}"]
    assert "forced fields" in (tmp_path / BASELINE_DIFF_MD).read_text()


def test_gate_raises_on_a_baseline_of_another_profile(baseline_path: Path, tmp_path: Path) -> None:
    run = RunData(results_frame([make_result(c, profile="l4") for c in CASES]))
    with pytest.raises(BaselineProfileError, match=str(baseline_path)):
        gate(baseline_path, run, Thresholds(), tmp_path)
    assert not (tmp_path / BASELINE_DIFF_MD).exists()


def test_save_run_baseline_loads_back(tmp_path: Path) -> None:
    run = RunData(results_frame(clean_results()), environment=ENVIRONMENT)
    saved = save_run_baseline(tmp_path / "b.json", run, command=COMMAND)
    loaded = load_baseline(tmp_path / "b.json")
    assert loaded == json.loads(json.dumps(saved))  # what was written is what is read, every field
    assert sorted(loaded["cases"]) == sorted(case.id for case in CASES)
    assert (loaded["profile"], loaded["command"]) == (PROFILE, COMMAND)


# -- bench/test_gate.py inside a pytest session with a stand-in bench_session ---------------------
FAKE_PLUGIN = textwrap.dedent(
    """
    import json
    from pathlib import Path
    from types import SimpleNamespace

    import pytest

    from reports.run.frame import load_run
    from reports.gate.thresholds import Thresholds


    @pytest.fixture(scope="session")
    def bench_session():
        cfg = json.loads(Path("session.json").read_text())
        run_dir = Path(cfg["run_dir"])
        options = SimpleNamespace(
            baseline=Path(cfg["baseline"]) if cfg["baseline"] else None,
            save_baseline=Path(cfg["save_baseline"]) if cfg["save_baseline"] else None,
            thresholds=Thresholds(),
            command_line="pytest bench --gpu t4",
            allow_noisy=False,
            require_speed=cfg.get("require_speed", False),
        )
        # None: the session selected every case (an unfiltered `pytest bench`).
        return SimpleNamespace(
            options=options, run_dir=run_dir, load=lambda: load_run(run_dir), selected_case_ids=lambda: None
        )
    """
)


@pytest.fixture
def bench_gate(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Callable[..., pytest.RunResult]:
    """Run a copy of bench/test_gate.py against a run folder of `results`."""
    # Third-party plugins (hypothesis, pytest-benchmark) are not needed inside and cost ~0.5 s a run.
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makeconftest(FAKE_PLUGIN)
    pytester.makepyfile(test_gate_copy=(REPO / "bench" / "test_gate.py").read_text())

    def run(
        results: list[Result],
        *,
        baseline: Path | None = None,
        save: Path | None = None,
        require_speed: bool = False,
    ) -> pytest.RunResult:
        run_dir = pytester.path / "run"
        run_dir.mkdir(exist_ok=True)
        lines = [r.to_json() for r in results]
        (run_dir / "results.jsonl").write_text("\n".join(lines) + "\n")
        config = {
            "run_dir": str(run_dir),
            "baseline": str(baseline) if baseline else None,
            "save_baseline": str(save) if save else None,
            "require_speed": require_speed,
        }
        (pytester.path / "session.json").write_text(json.dumps(config))
        return pytester.runpytest("-rs", "-s")

    return run


def test_bench_gate_skips_without_options(bench_gate: Callable[..., pytest.RunResult]) -> None:
    result = bench_gate(clean_results())
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*no --baseline*", "*no --save-baseline*"])


def test_bench_gate_saves_then_passes_a_clean_run(
    bench_gate: Callable[..., pytest.RunResult], tmp_path: Path
) -> None:
    path = tmp_path / "t4.json"
    bench_gate(clean_results(), save=path).assert_outcomes(passed=1, skipped=1)
    assert len(load_baseline(path)["cases"]) == len(CASES)
    bench_gate(clean_results(), baseline=path).assert_outcomes(passed=1, skipped=1)


def test_bench_gate_fails_on_regressions_listing_each(
    bench_gate: Callable[..., pytest.RunResult], baseline_path: Path, pytester: pytest.Pytester
) -> None:
    run = scaled(CASE_A, "tokens_per_s", 0.5)
    run = [r for r in run if r.case_id != CASE_C.id]
    run = [r.replaced(torch_version="2.12.0") for r in run]
    result = bench_gate(run, baseline=baseline_path)
    result.assert_outcomes(failed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*baseline flag: torch: 2.11.0 -> 2.12.0*",
            f"*{CASE_A.id}: tokens_per_s dropped*",
            f"*{CASE_C.id}: in the baseline but not in this run*",
        ]
    )
    diff = pytester.path / "run" / BASELINE_DIFF_MD
    assert f"(see {diff})" in result.stdout.str()
    assert CASE_A.id in diff.read_text()


def test_bench_gate_fails_on_a_bad_baseline(
    bench_gate: Callable[..., pytest.RunResult], baseline_path: Path
) -> None:
    baseline_path.write_text('{"schema_version": 1, "cases": {')
    result = bench_gate(clean_results(), baseline=baseline_path)
    result.assert_outcomes(failed=1, skipped=1)
    result.stdout.fnmatch_lines([f"*{baseline_path}*not valid JSON*"])


def test_the_gate_and_baselines_read_no_needed_field():
    """What an OOM needed uncapped (qlora_core.process.oom_need) is no measurement of the capped run."""
    from reports.gate.baseline import CASE_FIELDS, GATED_METRICS

    assert not [name for name in (*GATED_METRICS, *CASE_FIELDS) if name.startswith("needed_")]


def test_bench_gate_says_speed_was_not_compared_and_fails_on_it_with_require_speed(
    bench_gate: Callable[..., pytest.RunResult], baseline_path: Path
) -> None:
    h100 = [make_result(c, gpu_name="NVIDIA H100 80GB HBM3", kernel_ms_per_step=2500.0) for c in CASES]
    line = "*speed not compared: baseline from Tesla T4, run on NVIDIA H100 80GB HBM3*"
    result = bench_gate(h100, baseline=baseline_path)
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines([line])
    result = bench_gate(h100, baseline=baseline_path, require_speed=True)
    result.assert_outcomes(failed=1, skipped=1)
    result.stdout.fnmatch_lines([f"{line}--require-speed demands speed gating*"])
