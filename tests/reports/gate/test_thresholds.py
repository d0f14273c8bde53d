"""Gate thresholds: one dataclass is the source of names, defaults, units and the CLI options."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from reports.__main__ import EXIT_OK, EXIT_REGRESSION, EXIT_USAGE, main
from reports.gate.thresholds import Thresholds, resolve_thresholds, threshold_options


def test_every_field_is_an_option_with_its_unit_default_and_meaning():
    options = {o.name: o for o in threshold_options()}
    assert list(options) == list(Thresholds.allowed_keys())
    defaults = Thresholds()
    for f in dataclasses.fields(Thresholds):
        option = options[f.name]
        assert option.flag == "--" + f.name.replace("_", "-")
        assert f"Default: {getattr(defaults, f.name):g}" in option.help
        assert f.metadata["meaning"] in option.help
    assert options["memory_rise_min_mib"].metavar == "MIB"


def test_the_gate_command_has_the_same_options(capsys):
    with pytest.raises(SystemExit):
        main(["gate", "--help"])
    help_text = capsys.readouterr().out
    for option in threshold_options():
        assert f"{option.flag} {option.metavar}" in help_text


def test_resolution_order_defaults_then_pyproject_then_options(tmp_path: Path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text("[tool.qlora-bench]\nmemory_rise_pct = 5\nfinal_loss_rise_pct = 4.0\n")
    given = {"final_loss_rise_pct": 9.0}
    thresholds = resolve_thresholds(pyproject, given.get)
    assert thresholds == Thresholds(memory_rise_pct=5.0, final_loss_rise_pct=9.0)
    assert resolve_thresholds(None, given.get) == Thresholds(final_loss_rise_pct=9.0)
    assert resolve_thresholds(tmp_path / "absent.toml", {}.get) == Thresholds()


def test_pyproject_values_must_be_numbers(tmp_path: Path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.qlora-bench]\nmemory_rise_pct = "3"\nfinal_loss_rise_pct = true\n')
    with pytest.raises(ValueError, match=r"memory_rise_pct='3' must be .*final_loss_rise_pct=True must be"):
        Thresholds.from_pyproject(pyproject)


def test_gate_command_reads_threshold_options(build, synthetic_run_dir, tmp_path, capsys):
    baseline = tmp_path / "base.json"
    assert main(["baseline", str(synthetic_run_dir), str(baseline)]) == EXIT_OK
    slower = build.synthetic_results()
    for result in slower:
        if result.status == "ok" and result.training.tokens_per_s:
            result.training.tokens_per_s *= 0.7
    slow_dir = build.write_run_dir(tmp_path / "slow", slower, environment=build.synthetic_environment())
    args = ["gate", str(slow_dir), str(baseline), "--pyproject", str(tmp_path / "none.toml")]
    assert main(args) == EXIT_REGRESSION
    assert main([*args, "--tokens-per-s-drop-pct", "31"]) == EXIT_OK
    capsys.readouterr()
    assert main([*args, "--tokens-per-s-drop-pct", "-5"]) == EXIT_USAGE
    assert "tokens_per_s_drop_pct=-5.0 must be a finite number >= 0" in capsys.readouterr().err


def test_pyproject_values_are_read_and_unknown_keys_rejected(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text("[tool.qlora-bench]\ntokens_per_s_drop_pct = 10\nmemory_rise_pct = 1.5\n")
    assert Thresholds.from_pyproject(path) == Thresholds(tokens_per_s_drop_pct=10.0, memory_rise_pct=1.5)
    path.write_text("[tool.qlora-bench]\ntokens_drop = 5.0\n")
    with pytest.raises(ValueError, match=r"tokens_drop.*allowed keys.*tokens_per_s_drop_pct"):
        Thresholds.from_pyproject(path)
    path.write_text("[tool.qlora-bench]\nmemory_rise_pct = -1\n")
    with pytest.raises(ValueError, match=r"memory_rise_pct=-1\.0 must be a finite number >= 0"):
        Thresholds.from_pyproject(path)


def test_defaults_without_a_file_or_a_table(tmp_path: Path) -> None:
    assert Thresholds.from_pyproject(tmp_path / "absent.toml") == Thresholds()
    path = tmp_path / "pyproject.toml"
    path.write_text('[project]\nname = "x"\n')
    assert Thresholds.from_pyproject(path) == Thresholds()


def test_overrides_ignore_none_and_reject_unknown_or_invalid_values() -> None:
    assert Thresholds().with_overrides(memory_rise_pct=None, final_loss_rise_pct=5.0) == Thresholds(
        final_loss_rise_pct=5.0
    )
    with pytest.raises(ValueError, match="unknown threshold"):
        Thresholds().with_overrides(speed=1.0)
    with pytest.raises(ValueError, match="kernel_ms_rise_pct"):
        Thresholds(kernel_ms_rise_pct=float("nan"))
    with pytest.raises(ValueError, match=r"speed_alpha=1.5 must be a probability in \(0, 1\]"):
        Thresholds(speed_alpha=1.5)
    with pytest.raises(ValueError, match=r"speed_alpha=0\.0 must be a probability"):
        Thresholds(speed_alpha=0.0)
