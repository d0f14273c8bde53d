"""The option group: --force parsing, threshold options, and reading options without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qlora_core.cases.case import CaseError
from qlora_core.cases.gpus import get_profile
from qlora_plugin.options import parse_force, parse_side_by_side

pytest_plugins = ("pytester",)

ROOT = Path(__file__).resolve().parents[2]


def test_parse_force_types_values_like_the_case_fields():
    forced = dict(parse_force(["prepare_kbit=true", "batch_size=2", "lr=1e-3", "compute_dtype=fp16"]))
    assert forced == {"prepare_kbit": True, "batch_size": 2, "lr": 1e-3, "compute_dtype": "fp16"}
    assert dict(parse_force(["target_modules=q_proj,v_proj"])) == {"target_modules": ("q_proj", "v_proj")}


def test_force_adds_a_test_only_knob_to_every_case():
    # How a run simulates a known slowdown under the matrix's ids, to show the gate catch it.
    assert dict(parse_force(["extra=slowdown:10"])) == {"extra": (("slowdown", "10"),)}
    assert dict(parse_force(["extra=fault:exit@load"])) == {"extra": (("fault", "exit@load"),)}
    with pytest.raises(CaseError) as err:
        parse_force(["extra=slowdown:0", "extra=speedup:5", "extra=slowdown"])
    assert len(err.value.problems) == 3
    assert "must be a percentage in (0, 100]" in err.value.problems[0]
    assert "KEY one of ['fault', 'slowdown']" in err.value.problems[1]


def test_parse_force_collects_every_problem():
    with pytest.raises(CaseError) as err:
        parse_force(["batchsize=2", "prepare_kbit=maybe", "model=x", "lr=fast"])
    assert len(err.value.problems) == 4
    assert "batch_size" in str(err.value)  # the allowed fields are listed


def _imports_torch(module: str) -> bool:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return proc.stdout.strip() == "True"


def test_reading_options_imports_no_torch():
    # The plugin adds no torch import of its own; the model registry is another module's job.
    if _imports_torch("qlora_core.models"):
        pytest.skip("qlora_core.models still imports torch (the torch-free registry is not in this tree)")
    assert not _imports_torch("qlora_plugin.options")


@pytest.fixture
def plugin_session(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    """Run pytest in-process with only the option group loaded, in a folder with a pyproject."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")

    def run(*args: str, pyproject: str = "") -> pytest.RunResult:
        pytester.makefile(".toml", pyproject=pyproject)
        return pytester.runpytest("-p", "qlora_plugin.options", "--collect-only", "-q", *args)

    return run


def test_threshold_options_override_pyproject_which_overrides_defaults(plugin_session, pytester):
    pytester.makeconftest(
        "from qlora_plugin.options import bench_options\n"
        "def pytest_collection_finish(session):\n"
        "    print('THRESHOLDS', bench_options(session.config).thresholds)\n"
    )
    table = "[tool.qlora-bench]\nmemory_rise_pct = 5\nfinal_loss_rise_pct = 4.0\n"
    result = plugin_session("--final-loss-rise-pct", "9", pyproject=table)
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["THRESHOLDS *tokens_per_s_drop_pct=7.0, memory_rise_pct=5.0,*"])
    result.stdout.fnmatch_lines(["THRESHOLDS *final_loss_rise_pct=9.0*"])


def test_bad_threshold_values_fail_as_option_errors(plugin_session):
    table = "[tool.qlora-bench]\nmemory_rise = 5\n"
    result = plugin_session("--kernel-ms-rise-pct", "-1", pyproject=table)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "gate thresholds:" in result.stderr.str()
    assert "unknown key(s) ['memory_rise']" in result.stderr.str()
    assert "allowed keys: ['tokens_per_s_drop_pct', 'memory_rise_pct'," in result.stderr.str()
    result = plugin_session("--kernel-ms-rise-pct", "-1", "--speed-alpha", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "kernel_ms_rise_pct=-1.0 must be a finite number >= 0" in result.stderr.str()
    assert "speed_alpha=2.0 must be a probability in (0, 1]" in result.stderr.str()


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_repeat_must_be_a_whole_number_of_at_least_one(plugin_session, value):
    result = plugin_session("--repeat", value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"--repeat {value!r} must be an integer >= 1" in result.stderr.str()


def test_repeat_and_allow_noisy_are_read_into_the_options(plugin_session, pytester):
    pytester.makeconftest(
        "from qlora_plugin.options import bench_options\n"
        "def pytest_collection_finish(session):\n"
        "    o = bench_options(session.config)\n"
        "    print('OPTIONS', o.repeat, o.allow_noisy)\n"
    )
    plugin_session("--repeat", "3", "--allow-noisy").stdout.fnmatch_lines(["OPTIONS 3 True"])
    plugin_session().stdout.fnmatch_lines(["OPTIONS None False"])


def test_oom_rerun_is_on_unless_no_oom_rerun(plugin_session, pytester):
    pytester.makeconftest(
        "from qlora_plugin.options import bench_options\n"
        "def pytest_collection_finish(session):\n"
        "    print('OOM_RERUN', bench_options(session.config).oom_rerun)\n"
    )
    plugin_session().stdout.fnmatch_lines(["OOM_RERUN True"])
    plugin_session("--no-oom-rerun").stdout.fnmatch_lines(["OOM_RERUN False"])


@pytest.mark.parametrize(
    ("raw", "lanes", "problem"),
    [
        ("auto", 1, ""),
        ("3", 3, ""),
        ("0", 1, "--side-by-side '0'"),
        ("9", 1, "from 1 to 8"),
        ("x", 1, "auto or"),
    ],
)
def test_side_by_side_is_auto_or_a_lane_count(raw, lanes, problem):
    got, why = parse_side_by_side(raw, get_profile("cpu"), None)
    assert got == lanes and (problem in why if problem else why == "")
