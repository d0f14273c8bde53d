"""The release gate, run by `pytest bench` after every matrix test (the plugin orders it last).

`--baseline PATH` compares this run with a stored baseline (PATH a file, or a folder of baselines
to choose from by profile, tier and GPU, checked by the options before the run) and fails on any
regression; `--save-baseline
PATH` stores this run as the baseline. Against a baseline from another GPU, speed is not compared
and the console says so; `--require-speed` makes that a failure. Given both (even the same path), the
comparison runs first, against the old file. The logic lives in `reports.gate.verdict` (the comparison)
and `reports.gate.baseline` (the file).
"""

from __future__ import annotations

from typing import Any

import pytest

from qlora_plugin.checks import assert_baseline_reproduces_run
from qlora_plugin.hooks import GATE_LINES_KEY
from reports.gate.baseline import BASELINE_DIFF_MD, BaselineError, save_run_baseline
from reports.gate.baseline_choice import save_target
from reports.gate.verdict import gate


# Defined first so that with --baseline and --save-baseline on one path, the old file is judged
# before it is replaced.
def test_regression_gate(bench_session: Any, request: pytest.FixtureRequest) -> None:
    """This run against --baseline: any regression fails, listing each; writes baseline-diff.md."""
    options = bench_session.options
    if options.baseline is None:
        pytest.skip("no --baseline PATH given: this run was not compared with a baseline")
    run = bench_session.load()
    # Cases deselected with -k were not meant to run: listed in the diff, not failures.
    selected = bench_session.selected_case_ids()
    try:
        report = gate(
            options.baseline,
            run,
            options.thresholds,
            bench_session.run_dir,
            options.allow_noisy,
            selected,
            options.require_speed,
        )
    except BaselineError as e:
        request.config.stash[GATE_LINES_KEY] = [f"gate: FAIL: unusable baseline {options.baseline}"]
        pytest.fail(f"unusable baseline, the gate cannot pass: {e}", pytrace=False)
    diff = bench_session.run_dir / BASELINE_DIFF_MD
    # The verdict, why speed was not compared and which baseline a folder gave, for the session's
    # end screen (qlora_plugin.hooks.end_screen).
    notes = [note for note in (report.speed_not_compared, report.baseline_note) if note]
    for note in notes:  # in the test's output too (a failure shows it)
        print(note)
    verdict = [f"gate: {report.verdict} against {options.baseline} ({diff})"]
    request.config.stash[GATE_LINES_KEY] = verdict + [f"  {note}" for note in notes]
    for flag in report.flags:
        print(f"baseline flag: {flag}")
    for noisy in report.too_noisy:
        print(f"{noisy.verdict}: {noisy.case_id}: {noisy.why}")
    if not report.passed:
        lines = "\n".join(f"  - {line}" for line in report.failures)
        pytest.fail(
            f"{len(report.failures)} regression(s) against {options.baseline} (see {diff}):\n{lines}",
            pytrace=False,
        )


def test_save_baseline(bench_session: Any) -> None:
    """Store this run as --save-baseline; read back, it must gate this very run as a pass."""
    options = bench_session.options
    if options.save_baseline is None:
        pytest.skip("no --save-baseline PATH given: no baseline written")
    run = bench_session.load()
    path = save_target(options.save_baseline, run)  # a folder: <profile>-<tier>-<gpu>.json in it
    loaded = save_run_baseline(path, run, command=options.command_line)
    assert_baseline_reproduces_run(loaded, run)
    print(f"baseline written: {path} ({len(loaded['cases'])} cases)")
