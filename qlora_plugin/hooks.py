"""The matrix as pytest tests: parametrization, ordering, fixtures, and the end of the session.

Every planned case is tested by exactly one `bench/test_<family>.py` module (`module_for`); test
ids are `<profile>-<case id>`, repeats ordered round by round. See docs/design.md#the-pytest-hooks.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator

import pytest

from qlora_core.cases.families import Family
from qlora_core.cases.matrix import PlannedCase, build_matrix, family_name
from qlora_core.measurement.result import Result, repeat_suffix
from qlora_plugin.interrupt import ReportsInterrupted, StopGuard, stop_paragraph
from qlora_plugin.options import bench_options
from qlora_plugin.session import BenchSession, CaseRun, ResultNotStoredError
from qlora_plugin.shard import SHARD_SKIP_REASON, recorded_run_s, select_shard
from reports.run.folder import RESULTS_JSONL, RunFolderInUseError
from reports.run.frame import RunData

# Which module tests a case: the first of its families found here, in this order.
_MODULE_BY_FAMILY: tuple[tuple[Family, str], ...] = (
    (Family.MULTIGPU, "multigpu"),  # multi-GPU
    (Family.QUALITY, "quality"),
    (Family.STABILITY, "stability"),
    (Family.NAN, "stability"),  # the NaN advice's learning-rate grid: numerics on text, like stability
    (Family.LADDER, "memory"),
    (Family.COMPAT, "memory"),
    (Family.WEIGHTS, "weights"),
    (Family.FACTORIAL, "throughput"),
    (Family.FP32, "throughput"),
    (Family.SPEED, "throughput"),
    (Family.ENGINE, "throughput"),
    (Family.GC, "memory"),
    (Family.PREPARE, "memory"),
    (Family.SWEEP, "memory"),
    (Family.REFERENCE, "memory"),
)
# The formats' measurements and the kernel timings run in this process and, on a GPU, create a
# CUDA context, which NVML would count in every later case: they go after the cases. Claims and
# the gate read every case.
_LAST_MODULES = ("test_quantization.py", "test_kernels.py", "test_claims.py", "test_gate.py")
# Of those, what a shard leaves to the merged folder (each shard still measures the formats: the
# merge keeps one copy of a measurement the shards agree on).
_MERGE_FIRST_MODULES = ("test_kernels.py", "test_claims.py", "test_gate.py")
# Outcomes that are findings about the case (recorded, reported) rather than suite failures.
# `unsupported` is only ever a library refusal `qlora_core.process.outcomes` recognises (e.g. TRL's
# SFTTrainer with fp16 on a QLoRA model on a GPU): what a user of that stack gets for the case.
EXPECTED_FAILURE_STATUSES = frozenset({"oom", "nan", "unsupported"})
# Enough for a refusal's reason: its stage, the refusal, the cause its engine names, torch's words.
_XFAIL_REASON_CHARS = 600
_SESSION_KEY = pytest.StashKey[BenchSession]()
_MATRIX_KEY = pytest.StashKey[list[PlannedCase]]()
_SHARD_KEY = pytest.StashKey[list[PlannedCase]]()
_SELECTED_KEY = pytest.StashKey[list[CaseRun]]()
_REPORT_ERROR_KEY = pytest.StashKey[str]()
_CLAIMS_KEY = pytest.StashKey[list]()  # reports.render.ClaimSummary per claim, at session end
_REPORTS_KEY = pytest.StashKey[dict]()  # the reports written: name -> path (reports.render.render_run)
GATE_LINES_KEY = pytest.StashKey[list[str]]()
"""The release gate's verdict lines (`bench/test_gate.py`), shown on the session's end screen."""
_GUARD_KEY = pytest.StashKey[StopGuard]()
_NO_REPORT_KEY = pytest.StashKey[str]()


def module_for(planned: PlannedCase) -> str:
    """The family module (`bench/test_<family>.py`) that tests this case."""
    tags = [family_name(t) for t in planned.families]
    for family, module in _MODULE_BY_FAMILY:
        if family in tags:
            return module
    raise ValueError(f"case {planned.case.id} has no family a bench module tests: {planned.families}")


def planned_cases(config: pytest.Config) -> list[PlannedCase]:
    """The session's whole matrix, built once from the options (every shard's cases)."""
    if _MATRIX_KEY not in config.stash:
        options = bench_options(config)
        config.stash[_MATRIX_KEY] = build_matrix(
            options.profile, options.matrix, options.models or None, options.cpu_dtypes
        )
    return config.stash[_MATRIX_KEY]


def session_cases(config: pytest.Config) -> list[PlannedCase]:
    """The cases this session runs: the matrix, or with --shard I/N its shard I."""
    if _SHARD_KEY not in config.stash:
        options = bench_options(config)
        cases = planned_cases(config)
        if options.shard is not None:
            recorded = recorded_run_s(options.shard_costs) if options.shard_costs else None
            cases = select_shard(cases, options.shard, options.repeat, recorded)
        config.stash[_SHARD_KEY] = cases
    return config.stash[_SHARD_KEY]


def case_runs(cases: list[PlannedCase], repeat: int | None) -> list[CaseRun]:
    """Every run of `cases`, round by round: `repeat` (--repeat) overrides each case's count."""
    counts = [repeat if repeat is not None else p.repeats for p in cases]
    rounds = max(counts, default=0)
    return [CaseRun(p, r) for r in range(rounds) for p, n in zip(cases, counts) if r < n]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case_run" not in metafunc.fixturenames:
        return
    family = metafunc.module.FAMILY
    options = bench_options(metafunc.config)
    cases = [p for p in session_cases(metafunc.config) if module_for(p) == family]
    runs = case_runs(cases, options.repeat)
    ids = [f"{options.profile.name}-{run.planned.case.id}{repeat_suffix(run.repeat)}" for run in runs]
    metafunc.parametrize("case_run", runs, ids=ids, scope="function")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Bench cases first, round by round across every module (repeat 1 of every case, then repeat
    # 2, ...), in matrix order within a round; then kernels, claims, the gate. Other tests (a
    # `pytest tests bench` call) keep their place: the sort is stable. A shard's kernels, claims
    # and gate wait for the merged folder: they are skipped.
    def key(item: pytest.Item) -> tuple[int, int]:
        name = item.path.name
        is_bench = "bench_session" in getattr(item, "fixturenames", ())
        if is_bench and name in _LAST_MODULES:
            return _LAST_MODULES.index(name) + 1, 0
        run = getattr(getattr(item, "callspec", None), "params", {}).get("case_run")
        return 0, run.repeat if isinstance(run, CaseRun) else 0

    items.sort(key=key)
    if bench_options(config).shard is not None:
        for item in items:
            if item.path.name in _MERGE_FIRST_MODULES and "bench_session" in getattr(
                item, "fixturenames", ()
            ):
                item.add_marker(pytest.mark.skip(reason=SHARD_SKIP_REASON))


def pytest_collection_finish(session: pytest.Session) -> None:
    # The runs this session will make (after -k and deselection): the progress lines count them.
    # A module with no case of this matrix has one skipped item without a CaseRun.
    params = (getattr(getattr(item, "callspec", None), "params", {}) for item in session.items)
    session.config.stash[_SELECTED_KEY] = [
        p["case_run"] for p in params if isinstance(p.get("case_run"), CaseRun)
    ]


@pytest.fixture(scope="session")
def bench_session(request: pytest.FixtureRequest) -> Iterator[BenchSession]:
    """The session's run folder and results, opened at the first bench test."""
    config = request.config
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")

    def write_line(line: str) -> None:
        if reporter is None:
            print(line)
            return
        # Lines come while a test runs, when pytest captures the terminal's file descriptor:
        # without suspending capture they would land in the test's captured output, unseen.
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            reporter.ensure_newline()
            reporter.write_line(line)

    # From here to the end of the session, Ctrl-C and SIGTERM stop it cleanly (qlora_plugin.interrupt).
    guard = config.stash.setdefault(_GUARD_KEY, StopGuard())
    guard.install()
    try:
        matrix_ids = [p.case.id for p in planned_cases(config)]
        session = BenchSession.open(bench_options(config), write_line, matrix_ids, planned_runs(config))
    except RunFolderInUseError as exc:
        pytest.exit(f"qlora-bench: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
    session.planned = config.stash.get(_SELECTED_KEY, [])
    config.stash[_SESSION_KEY] = session
    write_line(f"qlora-bench: run folder {session.run_dir}")
    for note in session.matrix_notes:
        write_line(f"qlora-bench: not planned on this host: {note}")
    yield session


@pytest.fixture(scope="session")
def completed_run(bench_session: BenchSession) -> RunData:
    """The run as stored, read back after every case module (ordering guarantees it)."""
    return bench_session.load()


def check_outcome(result: Result) -> None:
    """Fail when the suite could not measure the case; xfail an OOM, a NaN or a recognised library
    refusal (a finding, recorded with its reason)."""
    if result.status == "ok":
        return
    if result.status in EXPECTED_FAILURE_STATUSES:
        pytest.xfail(f"{result.status} (recorded outcome): {result.reason[:_XFAIL_REASON_CHARS]}")
    pytest.fail(f"{result.status}: {result.reason}", pytrace=False)


@pytest.fixture
def case_result(case_run: CaseRun, bench_session: BenchSession, request: pytest.FixtureRequest) -> Result:
    """Run this test's case and repeat (or reuse it on --resume); OOM/NaN/unsupported xfail,
    failures fail."""
    try:
        result = bench_session.run(case_run)
    except ResultNotStoredError as exc:
        # A full disk fails every later case too: stop here, with the message, after this test.
        request.session.shouldstop = f"qlora-bench: results can no longer be stored: {exc}"
        raise
    check_outcome(result)
    return result


def planned_runs(config: pytest.Config) -> dict[str, int]:
    """The runs the session's run folder is to hold: every case of its matrix (of its shard with
    --shard) and its repeats, whatever -k selects (`reports.run.completeness`)."""
    repeat = bench_options(config).repeat
    return {p.case.id: repeat if repeat is not None else p.repeats for p in session_cases(config)}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    bench = config.stash.get(_SESSION_KEY, None)
    guard = config.stash.get(_GUARD_KEY, None)
    if bench is None:
        if guard is not None:
            guard.restore()
        return
    if guard is not None:
        guard.writing_reports = True  # a signal now stops only the reports' writing
    try:
        bench.finish()
        if not (bench.run_dir / RESULTS_JSONL).exists():
            config.stash[_NO_REPORT_KEY] = "no run finished, so no report was written"
            return
        # Imported here: rendering pulls in matplotlib and the claims, which `pytest tests` and
        # option errors never need. An import error is a report failure like any other.
        from reports.claims import evaluate_all
        from reports.render import render_run, summarize_claims

        # Reports are re-rendered from the stored results, exactly as `python -m reports render`.
        config.stash[_REPORTS_KEY] = render_run(bench.run_dir)
        config.stash[_CLAIMS_KEY] = summarize_claims(evaluate_all(bench.load()))
    except ReportsInterrupted as stop:
        config.stash[_NO_REPORT_KEY] = (
            f"not written (stopped again by {stop} while writing them); write them with:"
            f" python -m reports render {bench.run_dir}"
        )
    except Exception:
        config.stash[_REPORT_ERROR_KEY] = traceback.format_exc()
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    finally:
        if guard is not None:
            guard.writing_reports = False
        bench.close()


def pytest_unconfigure(config: pytest.Config) -> None:
    guard = config.stash.get(_GUARD_KEY, None)
    if guard is not None:
        guard.restore()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> Iterator[None]:
    """The session's answer, as the console's last screen: this wrapper is the outermost, so
    pytest's own summary (failures, the `-ra` lines) and pytest-benchmark's kernel tables are
    written before it, and only pytest's one-line count follows it."""
    result = yield
    bench = config.stash.get(_SESSION_KEY, None)
    if bench is not None:
        for line in end_screen(bench, config, terminalreporter.config.get_terminal_writer().fullwidth):
            terminalreporter.write_line(line)
        error = config.stash.get(_REPORT_ERROR_KEY, None)
        if error is not None:
            terminalreporter.write_line(
                f"qlora-bench: REPORTS NOT WRITTEN, the session fails. Every result is kept in"
                f" {bench.run_dir}; after fixing the cause, the same command with --resume"
                f" {bench.run_dir} writes them (finished cases are reused, not rerun).",
                red=True,
                bold=True,
            )
            terminalreporter.write_line(error.rstrip(), red=True)
    return result


def end_screen(bench: BenchSession, config: pytest.Config, width: int = 120) -> list[str]:
    """The console's last lines: the cases (`BenchSession.summary_lines`), what a stopped or
    incomplete run lacks and how to complete it (`completion_lines`), the claims counted once
    each with the ids of the refuted and inconclusive ones, the gate's verdict when gated
    (`GATE_LINES_KEY`), and the reports' paths, last."""
    lines = ["", f"{' qlora-bench ':=^{max(width, 20)}}", *bench.summary_lines()]
    lines += completion_lines(config, bench)
    summaries = config.stash.get(_CLAIMS_KEY, None)
    if summaries is not None:
        lines += claims_lines(summaries, width)
    if bench.options.baseline is not None:
        gate_lines = config.stash.get(GATE_LINES_KEY, None)
        lines += [
            f"  {line}" for line in gate_lines or ["gate: not run (its test was deselected or did not run)"]
        ]
    reports = config.stash.get(_REPORTS_KEY, {})
    lines += [f"  {reports[name].name}: {reports[name]}" for name in ("claims", "tables") if name in reports]
    return lines


def claims_lines(summaries: list, width: int = 120) -> list[str]:
    """The per-claim tally (`reports.render.claim_tally`), then one line naming the refuted claims
    and one the inconclusive ones, each within `width`."""
    # With the reports, at session end (see pytest_sessionfinish): `pytest tests` never needs them.
    from reports.claims import Verdict
    from reports.render import claim_tally, tally_text

    evaluations = sum(len(s.evaluations) for s in summaries)
    counts = tally_text(claim_tally(summaries), ", ")
    lines = [f"  claims: {len(summaries)}, each counted once ({evaluations} evaluations): {counts}"]
    refuted = [s for s in summaries if s.verdict is Verdict.REFUTED]
    if refuted:
        names = [s.claim.id + ("*" if s.claim.known_doc_error else "") for s in refuted]
        lines.append(names_line("    refuted: ", names, width))
    inconclusive = [s.claim.id for s in summaries if s.verdict is Verdict.INCONCLUSIVE]
    if inconclusive:
        lines.append(names_line("    inconclusive: ", inconclusive, width))
    if any(s.claim.known_doc_error for s in refuted):
        lines.append("    (* a known documentation error: its test xfails)")
    return lines


def names_line(head: str, names: list[str], width: int) -> str:
    """`head` and the names, comma-separated, within `width` where the first name allows: the
    names that do not fit are counted ("(+3 more)")."""
    shown: list[str] = []
    for i, name in enumerate(names):
        more = len(names) - i - 1
        candidate = head + ", ".join([*shown, name]) + (f" (+{more} more)" if more else "")
        if len(candidate) > width and shown:
            return head + ", ".join(shown) + f" (+{len(names) - len(shown)} more)"
        shown.append(name)
    return head + ", ".join(shown)


def completion_lines(config: pytest.Config, bench: BenchSession) -> list[str]:
    """After a stop: the paragraph of what finished and how to resume; else, for a run that lacks
    runs of its plan (-k, a failure that stopped the session), the incomplete line."""
    guard = config.stash.get(_GUARD_KEY, None)
    missing = bench.incompleteness()
    no_report = config.stash.get(_NO_REPORT_KEY, None)
    if guard is None or guard.received is None:
        lines = [f"  {missing.line()}"] if missing else []
        return lines + ([f"  reports: {no_report}"] if no_report else [])
    if config.stash.get(_REPORT_ERROR_KEY, None) is not None:
        no_report = "not written: an error, shown below"
    elif no_report is None:
        marked = ", marked incomplete" if missing else ""
        no_report = f"claims.md and tables.md written{marked}"
    profile = bench.options.profile.name
    return stop_paragraph(
        guard,
        bench.run_dir,
        len(bench.planned_runs),
        missing,
        ran=len(bench.results) - len(bench.reused),
        reused=len(bench.reused),
        reports=no_report,
        label=lambda case_id: f"{profile}-{case_id}",
    )
