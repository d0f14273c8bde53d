"""bench/test_gate.py inside a pytest session with a stand-in bench_session: skipped without
options, saving a baseline, failing on regressions, a bad baseline and speed not compared."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from qlora_core.measurement.result import Result
from reports.gate.baseline import BASELINE_DIFF_MD, load_baseline
from tests.reports.gate.gate_cases import CASE_A, CASE_C, CASES, clean_results, make_result, scaled

pytest_plugins = ("pytester",)

REPO = Path(__file__).resolve().parents[3]


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
