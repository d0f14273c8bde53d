"""The matrix as pytest tests: one test per case, ids are `<profile>-<case id>`.

Each `bench/test_<family>.py` module declares `FAMILY`; every planned case is tested by exactly
one module (`module_for`), even when it serves several families. Claims and the release gate
read the whole run, so their modules are ordered after every case.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from qlora_core.matrix import PlannedCase, build_matrix
from qlora_core.result import Result
from reports.frame import RunData
from reports.session import BenchOptions, BenchSession

# Which module tests a case: the first of its families found here, in this order.
_MODULE_BY_FAMILY: tuple[tuple[str, str], ...] = (
    ("quality", "quality"),
    ("stability", "stability"),
    ("ladder", "memory"),
    ("compat", "memory"),
    ("factorial", "throughput"),
    ("fp32", "throughput"),
    ("gc", "memory"),
    ("prepare", "memory"),
    ("sweep", "memory"),
    ("reference", "memory"),
)
# Kernel timings run in this process and create a CUDA context, which NVML would count in
# every later case: they go after the cases.
_LAST_MODULES = ("test_kernels.py", "test_claims.py", "test_gate.py")
# Outcomes that are findings about the case (recorded, reported) rather than suite failures.
EXPECTED_FAILURE_STATUSES = frozenset({"oom", "nan"})
_SESSION_KEY = pytest.StashKey[BenchSession]()


def module_for(planned: PlannedCase) -> str:
    tags = [t.split(":")[0] for t in planned.families]
    for family, module in _MODULE_BY_FAMILY:
        if family in tags:
            return module
    raise ValueError(f"case {planned.case.id} has no family a bench module tests: {planned.families}")


def _options(config: pytest.Config) -> BenchOptions:
    return config.qlora_options  # type: ignore[attr-defined]


def planned_cases(config: pytest.Config) -> list[PlannedCase]:
    cached = getattr(config, "_qlora_matrix", None)
    if cached is None:
        options = _options(config)
        cached = build_matrix(options.profile, options.matrix, options.models or None)
        config._qlora_matrix = cached  # type: ignore[attr-defined]
    return cached


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "planned_case" not in metafunc.fixturenames:
        return
    family = metafunc.module.FAMILY
    profile = _options(metafunc.config).profile.name
    cases = [p for p in planned_cases(metafunc.config) if module_for(p) == family]
    metafunc.parametrize(
        "planned_case", cases, ids=[f"{profile}-{p.case.id}" for p in cases], scope="function"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Cases first, in matrix order per module; then claims, then the gate.
    def key(item: pytest.Item) -> int:
        name = item.path.name
        return _LAST_MODULES.index(name) + 1 if name in _LAST_MODULES else 0

    items.sort(key=key)


@pytest.fixture(scope="session")
def bench_session(request: pytest.FixtureRequest) -> Iterator[BenchSession]:
    config = request.config
    reporter = config.pluginmanager.get_plugin("terminalreporter")

    def write_line(line: str) -> None:
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(line)
        else:
            print(line)

    session = BenchSession.open(_options(config), write_line)
    session.planned = planned_cases(config)
    config.stash[_SESSION_KEY] = session
    write_line(f"qlora-bench: run folder {session.run_dir}")
    yield session


@pytest.fixture(scope="session")
def completed_run(bench_session: BenchSession) -> RunData:
    """The run as stored, read back after every case module (ordering guarantees it)."""
    return bench_session.load()


def check_outcome(result: Result) -> None:
    """Fail when the suite could not measure the case; xfail an OOM or NaN (a finding)."""
    if result.status == "ok":
        return
    if result.status in EXPECTED_FAILURE_STATUSES:
        pytest.xfail(f"{result.status} (recorded outcome): {result.reason[:300]}")
    pytest.fail(f"{result.status}: {result.reason}", pytrace=False)


@pytest.fixture
def case_result(planned_case: PlannedCase, bench_session: BenchSession) -> Result:
    """Run this test's case (or reuse it on --resume); OOM/NaN xfail, failures fail."""
    result = bench_session.run(planned_case)
    check_outcome(result)
    return result


def assert_memory_measured(result: Result) -> None:
    """Every stage's memory and the training peak were measured, and are consistent."""
    if result.device == "cuda":
        for name in (
            "load_alloc_gib",
            "lora_alloc_gib",
            "peak_alloc_gib",
            "peak_reserved_gib",
            "nvml_peak_gib",
        ):
            assert getattr(result, name) is not None, f"{name} not measured"
        assert result.peak_alloc_gib >= result.lora_alloc_gib * 0.999
        assert result.peak_reserved_gib >= result.peak_alloc_gib
        assert result.nvml_peak_gib >= result.peak_reserved_gib * 0.99
    else:
        assert result.cpu_peak_rss_gib and result.cpu_peak_rss_gib > 0
    assert result.weight_bytes and result.weight_bytes > 0
    if result.case["quant_type"] != "none":
        assert result.quant_stats_bytes and result.quant_stats_bytes > 0
        assert result.quantized_params and result.quantized_params > 0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    bench = session.config.stash.get(_SESSION_KEY, None)
    if bench is None:
        return
    bench.finish()
    try:
        from reports.render import render_run
    except ImportError:
        return
    # Reports are re-rendered from the stored results, exactly as `python -m reports render`.
    render_run(bench.run_dir)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    bench = config.stash.get(_SESSION_KEY, None)
    if bench is None:
        return
    terminalreporter.section("qlora-bench")
    for line in bench.summary_lines():
        terminalreporter.write_line(line)
    claims_md = bench.run_dir / "claims.md"
    if claims_md.exists():
        from collections import Counter

        from reports.claims import evaluate_all

        verdicts = Counter(e.verdict.value for _, e in evaluate_all(bench.load()))
        counts = ", ".join(f"{n} {v}" for v, n in verdicts.most_common())
        terminalreporter.write_line(f"  claims: {counts} ({claims_md})")
