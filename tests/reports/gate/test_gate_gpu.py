"""Baselines per GPU kind: the device kind, a folder of baselines chosen by profile, tier and GPU,
memory gated across GPUs while speed is "not compared" (and --require-speed failing on that), the
schema migration that records a baseline's tier. Constructed rows, no GPU."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from qlora_core.measurement.result import Result
from reports.__main__ import EXIT_OK, EXIT_REGRESSION, EXIT_USAGE, main
from reports.gate.baseline import BASELINE_DIFF_MD, load_baseline, save_baseline, tier_of_command
from reports.gate.baseline_choice import (
    BaselineFolderError,
    choose_baseline,
    device_kind,
    file_name_for,
    save_target,
    speed_not_compared,
)
from reports.gate.thresholds import Thresholds
from reports.gate.verdict import compare, gate
from reports.run.frame import RunData, results_frame

H200 = "NVIDIA H200"
H100 = "NVIDIA H100 80GB HBM3"
REPO = Path(__file__).resolve().parents[3]
NOT_COMPARED_LINE = f"speed not compared: baseline from {H200}, run on {H100}"


def rows(build: SimpleNamespace, gpu_name: str = H200, **changes: Any) -> list[Result]:
    """Two device-bound t4 cases emulated on `gpu_name`, three fresh processes each."""
    out = []
    for batch in (1, 4):
        base = build.result(
            "llama-3.2-3b",
            families="speed",
            batch_size=batch,
            seq_len=1024,
            **{**build.gpu(), "gpu_name": gpu_name, "emulated_on": gpu_name},
            **build.memory(2.1, 2.4, 2.5, 4.0 + batch),
            **build.training(1000.0 * batch, spread=0.005),
            kernel_ms_per_step=100.0 * batch,
            gpu_busy=0.97,
            host_bound=False,
            step_ms_rel_iqr=0.005,
            torch_version="2.11.0",
        )
        out += build.in_processes(base.replaced(**changes), [1000.0 * batch] * 3)
    return out


def scaled(results: list[Result], **factors: float) -> list[Result]:
    return [r.replaced(**{name: r.get_field(name) * f for name, f in factors.items()}) for r in results]


def save(path: Path, results: list[Result], matrix: str = "default") -> Path:
    command = f"pytest bench --gpu t4 --matrix {matrix} --save-baseline {path.name}"
    save_baseline(path, results_frame(results), command=command, environment={"matrix": matrix})
    return path


# -- the device kind ------------------------------------------------------------------------------
def test_the_device_kind_is_the_gpu_name_normalized_the_cpu_or_unknown():
    assert device_kind(H100, "h100") != device_kind(H200, "h100")
    assert device_kind("NVIDIA H100 PCIe", "h100") != device_kind(H100, "h100")  # a different speed
    assert device_kind("  nvidia  H200 ", "t4") == device_kind(H200, "t4")
    assert device_kind(f"{H200}, {H100}", "t4") == device_kind(f"{H100}, {H200}", "t4")
    assert device_kind("", "cpu") == "cpu"
    assert device_kind("", "h200") == ""  # a GPU run without its name: matches nothing


def test_speed_is_comparable_on_one_kind_only():
    h200 = {"profile": "t4", "gpu_name": H200}
    assert speed_not_compared(h200, H200, "t4") == ""
    assert speed_not_compared(h200, H100, "t4") == NOT_COMPARED_LINE
    assert speed_not_compared({"profile": "t4", "gpu_name": ""}, "", "t4") == (
        "speed not compared: baseline from an unrecorded GPU, run on an unrecorded GPU"
    )
    assert speed_not_compared({"profile": "cpu", "gpu_name": ""}, "", "cpu") == ""


# -- memory gated across GPUs, speed not compared -------------------------------------------------
def test_across_gpus_memory_is_gated_and_speed_is_not_compared(build, tmp_path):
    baseline = load_baseline(save(tmp_path / "t4.json", rows(build)))
    # The H100 is 12% slower at these kernels: the hardware, not a regression.
    h100 = scaled(rows(build, H100), kernel_ms_per_step=1.12, tokens_per_s=0.88)
    report = compare(baseline, results_frame(h100), Thresholds())
    assert report.passed, report.failures
    assert report.speed_not_compared == NOT_COMPARED_LINE
    assert report.summary.endswith(f"; {NOT_COMPARED_LINE}")
    speed = [c for c in report.comparisons if c.metric in ("tokens_per_s", "kernel_ms_per_step")]
    assert len(speed) == 4 and {(c.verdict, c.why) for c in speed} == {("n/a", NOT_COMPARED_LINE)}
    memory = [c for c in report.comparisons if c.metric in ("peak_alloc_gib", "final_loss")]
    assert {c.verdict for c in memory} == {"pass"}
    # The same slowdown on the baseline's own GPU is a regression: the n/a above is the GPU's.
    same_gpu = compare(baseline, results_frame(scaled(rows(build), kernel_ms_per_step=1.12)), Thresholds())
    assert not same_gpu.passed and "kernel_ms_per_step" in "\n".join(same_gpu.failures)


def test_a_memory_regression_still_fails_across_gpus(build, tmp_path):
    baseline = load_baseline(save(tmp_path / "t4.json", rows(build)))
    report = compare(baseline, results_frame(scaled(rows(build, H100), peak_alloc_gib=1.10)), Thresholds())
    assert not report.passed
    failing = [(c.case_id, c.metric) for c in report.comparisons if c.fails]
    assert [metric for _, metric in failing] == ["peak_alloc_gib", "peak_alloc_gib"]
    assert all("beyond the limit" in line for line in report.failures)
    assert report.summary.startswith("FAIL") and report.summary.endswith(NOT_COMPARED_LINE)


def test_require_speed_fails_a_run_whose_speed_could_not_be_compared(build, tmp_path):
    baseline = load_baseline(save(tmp_path / "t4.json", rows(build)))
    report = compare(baseline, results_frame(rows(build, H100)), Thresholds(), require_speed=True)
    assert not report.passed
    assert report.failures == [
        f"{NOT_COMPARED_LINE}, and --require-speed demands speed gating: gate against a baseline"
        " measured on this GPU"
    ]
    # On the baseline's GPU the flag asks for nothing more: speed was compared.
    assert compare(baseline, results_frame(rows(build)), Thresholds(), require_speed=True).passed


def test_the_diff_says_why_speed_was_not_compared(build, tmp_path):
    path = save(tmp_path / "t4.json", rows(build))
    run = RunData(results_frame(rows(build, H100)), environment={"matrix": "default"})
    report = gate(path, run, Thresholds(), tmp_path / "run")
    diff = (tmp_path / "run" / BASELINE_DIFF_MD).read_text()
    assert report.passed and diff.startswith("# Baseline comparison: PASS")
    assert f"## Speed not compared\n\n**{NOT_COMPARED_LINE}.**" in diff
    assert "`--require-speed` makes this a failure" in diff
    assert (
        f"| kernel_ms_per_step | another GPU | 100.00 ms | 100.00 ms |  |  | n/a | {NOT_COMPARED_LINE} |"
        in diff
    )
    assert "| tier | default | default |" in diff


# -- a folder of baselines ------------------------------------------------------------------------
@pytest.fixture
def folder(build, tmp_path) -> Path:
    store = tmp_path / "baselines"
    store.mkdir()
    save(store / "t4-default-h200.json", rows(build, H200))
    save(store / "t4-default-h100.json", rows(build, H100))
    save(store / "t4-smoke-h100.json", rows(build, H100), matrix="smoke")
    (store / "notes.txt").write_text("not a baseline")
    return store


def test_a_folder_gives_the_baseline_of_this_runs_profile_tier_and_gpu(folder):
    assert choose_baseline(folder, "t4", "default", H100).path.name == "t4-default-h100.json"
    assert choose_baseline(folder, "t4", "default", H200).path.name == "t4-default-h200.json"
    choice = choose_baseline(folder, "t4", "smoke", " nvidia h100 80gb hbm3")
    assert choice.path.name == "t4-smoke-h100.json"
    assert choice.note == (
        f"baseline t4-smoke-h100.json chosen from {folder} (profile t4, tier smoke, GPU {H100})"
    )


def test_of_several_for_one_key_the_newest_is_chosen(folder, build):
    newer = json.loads((folder / "t4-default-h100.json").read_text())
    newer["created_at"] = "2999-01-01T00:00:00+00:00"
    (folder / "a-newer.json").write_text(json.dumps(newer))
    choice = choose_baseline(folder, "t4", "default", H100)
    assert choice.path.name == "a-newer.json" and "1 older one(s) of the same key left aside" in choice.note


def test_a_folder_without_a_match_lists_what_it_holds_and_the_command_that_makes_one(folder):
    (folder / "broken.json").write_bytes(b"\xd9\x00\xff")
    with pytest.raises(BaselineFolderError) as info:
        choose_baseline(folder, "t4", "default", "NVIDIA A100-SXM4-80GB")
    message = str(info.value)
    wanted = "profile t4, tier default, GPU NVIDIA A100-SXM4-80GB"
    assert message.startswith(f"baseline {folder}: no baseline of this run's {wanted} in this folder.")
    assert f"  - t4-default-h200.json: profile t4, tier default, GPU {H200}" in message
    assert f"  - t4-smoke-h100.json: profile t4, tier smoke, GPU {H100}" in message
    assert "  - unreadable: broken.json: not a text file (byte 0 is not UTF-8)" in message
    target = folder / "t4-default-nvidia-a100-sxm4-80gb.json"
    command = f"pytest bench --gpu t4 --matrix default --repeat 3 --save-baseline {target}"
    assert f"Make one on this GPU with: {command}" in message
    assert f"--baseline {folder / 't4-default-h100.json'}" in message
    with pytest.raises(BaselineFolderError, match="no baseline of this run's profile l4"):
        choose_baseline(folder, "l4", "default", H100)
    with pytest.raises(BaselineFolderError, match="holds no readable baseline"):
        choose_baseline(folder / "..", "t4", "default", H100)  # a folder without baselines


def test_the_gate_and_its_command_line_choose_from_a_folder(build, folder, tmp_path, capsys):
    run_dir = build.write_run_dir(tmp_path / "run", rows(build, H100), environment={"matrix": "default"})
    assert main(["gate", str(run_dir), str(folder)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "baseline t4-default-h100.json chosen from" in out and "PASS" in out
    assert "speed not compared" not in out
    # A GPU the folder has no baseline of: refused in words, exit 2.
    a100 = build.write_run_dir(
        tmp_path / "a100", rows(build, "NVIDIA A100-SXM4-80GB"), environment={"matrix": "default"}
    )
    assert main(["gate", str(a100), str(folder)]) == EXIT_USAGE
    assert "Make one on this GPU with: pytest bench --gpu t4" in capsys.readouterr().err


def test_the_command_line_says_speed_was_not_compared_and_require_speed_fails(build, tmp_path, capsys):
    baseline = save(tmp_path / "h200.json", rows(build))
    run_dir = build.write_run_dir(tmp_path / "run", rows(build, H100), environment={"matrix": "default"})
    assert main(["gate", str(run_dir), str(baseline)]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"{NOT_COMPARED_LINE}\n" in out
    assert f"PASS: no regressions (8 metric checks made); {NOT_COMPARED_LINE}" in out
    assert main(["gate", str(run_dir), str(baseline), "--require-speed"]) == EXIT_REGRESSION
    assert "--require-speed demands speed gating" in capsys.readouterr().out


def test_save_baseline_into_a_folder_names_the_file_by_profile_tier_and_gpu(build, tmp_path):
    run = RunData(results_frame(rows(build, H100)), environment={"matrix": "smoke"})
    assert save_target(tmp_path, run) == tmp_path / "t4-smoke-nvidia-h100-80gb-hbm3.json"
    assert save_target(tmp_path / "b.json", run) == tmp_path / "b.json"
    assert file_name_for("cpu", "smoke", "") == "cpu-smoke-cpu.json"


# -- the schema: the tier recorded, version 2 read as 3 -------------------------------------------
def test_a_baseline_records_its_tier_and_an_older_file_gets_it_from_its_command(build, tmp_path):
    saved = json.loads(save(tmp_path / "t4.json", rows(build), matrix="smoke").read_text())
    assert (saved["schema_version"], saved["matrix"]) == (3, "smoke")
    old = {k: v for k, v in saved.items() if k != "matrix"} | {"schema_version": 2}
    (tmp_path / "v2.json").write_text(json.dumps(old))
    migrated = load_baseline(tmp_path / "v2.json", profile="t4", matrix="smoke")
    assert (migrated["schema_version"], migrated["matrix"], migrated["migrated_from"]) == (3, "smoke", 2)
    assert tier_of_command("pytest bench --gpu t4") == "default"  # the option's default
    assert tier_of_command("pytest bench --matrix=full") == "full"
    assert tier_of_command("python -m reports merge --out m a b") is None
    assert tier_of_command("pytest 'unbalanced") is None


@pytest.mark.parametrize(
    ("name", "profile", "matrix"),
    [("h200-smoke.json", "h200", "smoke"), ("t4-default-emulated-h200.json", "t4", "default")],
)
def test_the_committed_baselines_of_schema_2_still_load(name, profile, matrix):
    baseline = load_baseline(REPO / "reports" / "baselines" / name, profile=profile, matrix=matrix)
    assert baseline["migrated_from"] == 2 and baseline["gpu_name"] == H200
