"""reports.claims.noise_floors: floors derived from repeated runs, stored with their evidence, picked by
point class and GPU kind."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from reports.claims.noise_floors import (
    DEVICE_BOUND,
    FLOORS_JSON,
    HOST_BOUND,
    UNMEASURED,
    Z_95,
    FloorTable,
    NoiseFloorError,
    check,
    derive,
    main,
    pair_floor,
    read_floors,
    stored_floors,
)

THREE = "llama-3.2-3b"
H200 = "NVIDIA H200"


def _cases(build, tokens: dict[str, list[float]], **fields) -> list:
    """One case per entry (told apart by batch size), each in one process per tokens/s value."""
    rows = []
    for batch, values in enumerate(tokens.values(), start=1):
        row = build.result(THREE, profile="h200", batch_size=batch, **build.training(1.0), **fields)
        rows += build.in_processes(row, values)
    return rows


DEVICE = {"gpu_name": "Tesla T4", "device": "cuda", "gpu_busy": 0.97, "host_bound": False}


def test_derive_takes_the_largest_cv_times_sqrt2_z_and_records_each_case(build, tmp_path: Path):
    quiet, noisy = [1000.0, 1002.0, 999.0], [1000.0, 1010.0, 995.0]
    folder = build.write_run_dir(tmp_path / "run", _cases(build, {"a": quiet, "b": noisy}, **DEVICE))
    entry = derive([folder])["Tesla T4"]
    floor = entry[DEVICE_BOUND]
    noisy_cv = pd.Series(noisy).std() / pd.Series(noisy).mean()
    expected = math.ceil(math.sqrt(2) * Z_95 * noisy_cv * 10_000) / 10_000
    assert floor["value"] == pytest.approx(expected) and floor["value"] > 1010 / 995 - 1
    assert floor["max_difference"] == pytest.approx(1010 / 995 - 1, abs=1e-6)
    assert [c["processes"] for c in floor["cases"]] == [3, 3] and "2 cases x 3 processes" in floor[
        "statistic"
    ]
    assert entry["sources"] == [str(folder)] and HOST_BOUND not in entry


def test_derive_never_goes_below_an_observed_difference(build, tmp_path: Path):
    # Two close processes and one 3% away: CV 1.7%, the floor still covers the 3% difference.
    folder = build.write_run_dir(tmp_path / "run", _cases(build, {"a": [1000.0, 1000.0, 1030.0]}, **DEVICE))
    floor = derive([folder])["Tesla T4"][DEVICE_BOUND]
    assert floor["value"] >= 0.03 and floor["max_difference"] == pytest.approx(0.03)


def test_derive_leaves_out_knobs_two_gpus_failures_and_short_repeats(build, tmp_path: Path):
    good = _cases(build, {"a": [1000.0, 1001.0, 999.0]}, **DEVICE)
    knob = _cases(build, {"a": [1000.0, 1200.0, 900.0]}, extra=(("slowdown", "10"),), **DEVICE)
    ddp = {"num_gpus": 2, "strategy": "ddp", "engine": "trainer"}
    two = _cases(build, {"a": [1000.0, 1300.0, 900.0]}, **ddp, **DEVICE)
    short = _cases(build, {"a": [1000.0, 1300.0]}, seq_len=1024, **DEVICE)
    failed = _cases(build, {"a": [1000.0, 1300.0, 900.0]}, seq_len=2048, **DEVICE)
    failed[1] = failed[1].replaced(status="crashed")
    host = _cases(build, {"a": [600.0, 900.0, 800.0]}, seq_len=128, **{**DEVICE, "host_bound": True})
    folder = build.write_run_dir(tmp_path / "run", good + knob + two + short + failed + host)
    entry = derive([folder])["Tesla T4"]
    assert len(entry[DEVICE_BOUND]["cases"]) == 1 and entry[DEVICE_BOUND]["max_cv"] < 0.01
    # host-bound cases are recorded as evidence of why they are left out, with no floor
    assert entry[HOST_BOUND]["value"] is None and entry[HOST_BOUND]["max_difference"] == pytest.approx(0.5)


def test_derive_refuses_a_folder_without_evidence(build, tmp_path: Path):
    with pytest.raises(NoiseFloorError, match=r"no results.jsonl"):
        derive([tmp_path])
    single = build.write_run_dir(
        tmp_path / "single", [build.result(THREE, **build.training(1000.0), **DEVICE)]
    )
    with pytest.raises(NoiseFloorError, match=r"--repeat 3"):
        derive([single])


def test_the_stored_floors_recompute_from_the_committed_reference_folders():
    assert check() == []
    h200 = stored_floors().gpus[H200]
    assert all((Path(__file__).parents[3] / s / "results.jsonl").is_file() for s in h200["sources"])
    # the committed device-bound repeats are far quieter than the conservative floor
    assert 0 < h200[DEVICE_BOUND]["value"] < stored_floors().conservative / 4


def test_check_fails_on_a_floor_typed_in_rather_than_derived(tmp_path: Path):
    data = json.loads(FLOORS_JSON.read_text())
    data["gpus"][H200][DEVICE_BOUND]["value"] = 0.005
    tampered = tmp_path / "floors.json"
    tampered.write_text(json.dumps(data))
    (problem,) = check(tampered)
    assert "NVIDIA H200: stored device-bound floor 0.005" in problem


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(schema=2), "schema must be 1"),
        (lambda d: d["unmeasured"].update(value=15), "unmeasured.value=15"),
        (lambda d: d["gpus"][H200][DEVICE_BOUND].update(value=0.5), "must be a fraction in"),
        (lambda d: d["gpus"][H200][DEVICE_BOUND].update(cases=[]), "names no evidence cases"),
    ],
)
def test_read_floors_refuses_a_bad_file(tmp_path: Path, change, message):
    data = json.loads(FLOORS_JSON.read_text())
    change(data)
    path = tmp_path / "floors.json"
    path.write_text(json.dumps(data))
    with pytest.raises(NoiseFloorError, match=message):
        read_floors(path)


def _row(**fields) -> pd.Series:
    return pd.Series({"gpu_name": H200, **fields})


def _table(**gpus: float) -> FloorTable:
    entries = {
        name.replace("_", " "): {DEVICE_BOUND: {"value": value, "cases": [{"processes": 3}] * 4}}
        for name, value in gpus.items()
    }
    return FloorTable(0.15, "", entries)


def test_pair_floor_by_point_class():
    table = _table(NVIDIA_H200=0.02)
    device = _row(gpu_busy=0.97, host_bound=False)
    floor = pair_floor(device, device, table)
    assert (floor.value, floor.point_class) == (0.02, DEVICE_BOUND)
    assert floor.text == "device-bound floor ±2.0% from 4 cases x 3 processes on NVIDIA H200"
    host = pair_floor(device, _row(gpu_busy=0.3, host_bound=True), table)
    assert (host.value, host.point_class) == (0.15, HOST_BOUND) and "conservative floor ±15.0%" in host.text
    unmeasured = pair_floor(device, _row(), table)
    assert (unmeasured.value, unmeasured.point_class) == (0.15, UNMEASURED)
    assert "no device-time measurement" in unmeasured.text
    other = pair_floor(device, _row(gpu_name="NVIDIA H100 80GB HBM3", host_bound=False), table)
    assert other.value == 0.15 and "different GPUs" in other.text


def test_pair_floor_picks_the_rows_gpu_else_says_it_took_another_gpus():
    h100 = _row(gpu_name="NVIDIA H100 80GB HBM3", gpu_busy=0.97, host_bound=False)
    borrowed = pair_floor(h100, h100, _table(NVIDIA_H200=0.02))
    assert borrowed.value == 0.02
    assert borrowed.text.endswith("on NVIDIA H200 (none measured on NVIDIA H100 80GB HBM3: another GPU's)")
    # adding the H100's evidence is a data change: its rows then read its own floor
    own = pair_floor(h100, h100, _table(NVIDIA_H200=0.02, NVIDIA_H100_80GB_HBM3=0.03))
    assert own.value == 0.03 and own.text.endswith("on NVIDIA H100 80GB HBM3")
    none = pair_floor(h100, h100, FloorTable(0.15, "", {}))
    assert none.value == 0.15 and "no device-bound evidence" in none.text


def test_cli_derive_prints_and_check_passes(build, tmp_path: Path, capsys):
    folder = build.write_run_dir(tmp_path / "run", _cases(build, {"a": [1000.0, 1001.0, 999.0]}, **DEVICE))
    assert main(["derive", str(folder)]) == 0
    assert '"Tesla T4"' in capsys.readouterr().out
    assert main(["derive", str(tmp_path / "missing")]) == 2
    assert "no results.jsonl" in capsys.readouterr().err
    assert main(["check"]) == 0
