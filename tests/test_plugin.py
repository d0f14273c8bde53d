"""The `pytest bench` plugin end to end, in subprocesses: option errors, the CPU smoke run and
its run folder, and --resume after a real interruption."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from qlora_core.cases.gpus import CPU_DTYPES_ENV
from qlora_core.cases.matrix import DEFAULT_MAX, SMOKE_MAX

ROOT = Path(__file__).resolve().parents[1]
TINY_CASES = "test_case and tiny"  # -k expression: the tiny shape's training cases only
# Two of them, in two modules (memory, throughput); "-r2" ids contain these names too.
TWO_CASES = "test_case and (tiny-lora16-bf16-b4-s128-w1m4-trainer or tiny-nf4-dq-bf16-b4-s128-w1m4-trainer)"


def bench(
    *args: str, out: Path, timeout: float = 900, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "bench", "-p", "no:cacheprovider", "--out", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


# The session's line per case: "[3/6] cpu-tiny-nf4-dq-bf16-b4-s128-w1m4-trainer  ok  1,234 tok/s  ...".
_PROGRESS_LINE = re.compile(r"^\[(\d+)/(\d+)\] (\S+)  (\S+)  ", re.MULTILINE)


def progress_lines(stdout: str) -> list[tuple[int, int, str, str]]:
    """(done, total, profile-case id, status) of each progress line, in order."""
    return [(int(n), int(t), name, status) for n, t, name, status in _PROGRESS_LINE.findall(stdout)]


def run_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir())


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--gpu", "v100"], ["--gpu", "unknown GPU profile 'v100'", "t4", "h200", "cpu"]),
        (["--matrix", "huge"], ["--matrix 'huge'", "smoke, default, full"]),
        (["--model", "llama-9000"], ["--model", "llama-3.2-3b", "tiny"]),
        (["--force", "batchsize=2"], ["--force", "batch_size"]),
        (["--case-timeout", "0"], ["--case-timeout"]),
        (["--resume", "/no/such/run"], ["--resume", "no such run folder"]),
    ],
)
def test_bad_options_fail_before_anything_runs(tmp_path, args, words):
    proc = bench("--collect-only", "-q", *args, out=tmp_path)
    assert proc.returncode == 4, proc.stdout + proc.stderr  # pytest's usage error
    for word in words:
        assert word in proc.stderr, proc.stderr
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # no run folder was created


def test_several_bad_options_are_reported_together(tmp_path):
    proc = bench("--collect-only", "--gpu", "v100", "--matrix", "huge", out=tmp_path)
    assert "--gpu" in proc.stderr and "--matrix" in proc.stderr


def test_collection_ids_are_profile_and_case_ids(tmp_path):
    proc = bench("--collect-only", "-q", "--matrix", "smoke", out=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ids = [line for line in proc.stdout.splitlines() if "::test_case[cpu-" in line]
    assert len(ids) == 6
    assert any("test_case[cpu-tiny-nf4-dq-bf16-b4-s128-w1m4-trainer]" in i for i in ids)


def test_the_host_cpus_half_precision_decides_the_real_models_text_dtype(tmp_path):
    def text_ids(dtypes: str) -> list[str]:
        proc = bench("--collect-only", "-q", out=tmp_path, env={CPU_DTYPES_ENV: dtypes})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return [line for line in proc.stdout.splitlines() if "::test_case[cpu-smollm2" in line]

    everything, fp32_only = text_ids("fp32,bf16,fp16"), text_ids("fp32")
    assert len(everything) > len(fp32_only) and any("-bf16-" in i for i in everything)
    assert fp32_only and all("-fp32-" in i for i in fp32_only)
    refused = bench("--collect-only", "-q", out=tmp_path, env={CPU_DTYPES_ENV: "bf16"})
    assert refused.returncode == 4 and "a comma-separated list of fp32, bf16, fp16" in refused.stderr
    assert not any(tmp_path.iterdir())  # no run folder was created


def test_progress_lines_are_not_pytests_own_progress_markers():
    pytest_only = "bench/test_memory.py ..   [ 33%]\nbench/test_throughput.py .... [100%]\n"
    assert pytest_only.count("[") >= 2  # what the old check counted: met without a single case line
    assert progress_lines(pytest_only) == []
    ours = "[1/2] cpu-tiny-nf4-bf16-b1-s64-w1m4  ok  1,706 tok/s  peak 0.47 GiB  (11.6 s)\n"
    assert progress_lines(ours) == [(1, 2, "cpu-tiny-nf4-bf16-b1-s64-w1m4", "ok")]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    proc = bench("--matrix", "smoke", out=out)
    return proc, out


@pytest.mark.slow
def test_cpu_smoke_writes_the_run_folder(smoke_run):
    proc, out = smoke_run
    (run_dir,) = run_dirs(out)
    frame = pd.read_csv(run_dir / "results.csv")
    assert len(frame) == 6 and frame["case_id"].is_unique
    assert set(frame["status"]) == {"ok"}, proc.stdout[-3000:]
    # The session's runner hands every case to a warm spare, the first to the probe it started at
    # its opening (qlora_core.process.spare); no context seen (none on the CPU), every spare imported the
    # libraries too, so no case imported anything after its hand-over.
    assert frame["warm_spare"].tolist() == [True] * 6, frame[["case_id", "warm_spare"]]
    assert (frame["import_s"] < 0.5).all(), frame[["case_id", "import_s"]]
    assert pd.read_parquet(run_dir / "results.parquet").shape[0] == 6
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["profile"] == "cpu" and env["torch_version"] and env["cases"] == 6
    for name in ("claims.md", "tables.md", "measurements/quant_codes.csv", "measurements/kernels.csv"):
        assert (run_dir / name).exists(), name
    # The CPU tier decides the parameter claim from the count without weights.
    assert (run_dir / "measurements/param_counts.csv").exists()
    claims = (run_dir / "claims.md").read_text()
    evidence = claims[claims.index("### print-trainable-3b: refuted") :]  # ValueError if it is not
    assert (
        "- **refuted** (trainable params (architecture without weights)): trainable params 24,313,856"
        in evidence
    )
    assert "  - the measurements support: r=16" in evidence
    # One progress line per case, counting up, and the summary.
    progress = progress_lines(proc.stdout)
    assert [(n, total) for n, total, _, _ in progress] == [(i, 6) for i in range(1, 7)], proc.stdout
    assert sorted(name for _, _, name, _ in progress) == sorted(f"cpu-{c}" for c in frame["case_id"])
    assert "qlora-bench: 6 cases on profile cpu" in proc.stdout
    assert f"run folder: {run_dir}" in proc.stdout


def _interrupted_run(out: Path, after_rows: int, *args: str) -> Path:
    """Start a run and kill it (with its children) once `after_rows` runs are stored."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "bench",
            "-p",
            "no:cacheprovider",
            "--out",
            str(out),
            "--matrix",
            "smoke",
            *(args or ("-k", TINY_CASES)),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            dirs = run_dirs(out) if out.exists() else []
            if dirs and (dirs[0] / "results.jsonl").exists() and len(rows(dirs[0])) >= after_rows:
                break
            assert proc.poll() is None, "the run finished before it could be interrupted"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return run_dirs(out)[0]


@pytest.mark.slow
def test_resume_reruns_only_missing_and_failed_cases(tmp_path):
    full = bench("--matrix", "smoke", "-k", TINY_CASES, out=tmp_path / "full")
    assert full.returncode == 0, full.stdout[-3000:]
    reference = {r["case_id"]: r for r in rows(run_dirs(tmp_path / "full")[0])}
    assert len(reference) == 5

    run_dir = _interrupted_run(tmp_path / "cut", after_rows=2)
    kept = rows(run_dir)
    assert 2 <= len(kept) < 5
    # Mark one stored case as crashed, as a case that died would be: resume must rerun it.
    failed = dict(kept[0], status="crashed", reason="simulated crash")
    with (run_dir / "results.jsonl").open("a") as f:
        f.write(json.dumps(failed) + "\n")
    reused = {r["case_id"]: r for r in kept[1:]}

    resumed = bench("--matrix", "smoke", "-k", TINY_CASES, "--resume", str(run_dir), out=tmp_path / "cut")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert run_dirs(tmp_path / "cut") == [run_dir]  # no second folder
    final = pd.read_csv(run_dir / "results.csv")
    by_id = {r.case_id: r for r in final.itertuples()}
    assert set(by_id) == set(reference)
    for case_id, row in by_id.items():
        assert row.status == reference[case_id]["status"] == "ok"
        # Same seeds, same machine: the rerun and reused cases reproduce the uninterrupted run.
        assert json.loads(row.losses) == pytest.approx(reference[case_id]["losses"], rel=1e-4)
        if case_id in reused:
            assert row.started_at == reused[case_id]["started_at"]  # reused, not rerun
    assert by_id[failed["case_id"]].started_at != failed["started_at"]  # the failed one reran
    assert f"{len(reused)} reused" in resumed.stdout
    commands = json.loads((run_dir / "environment.json").read_text())["commands"]
    assert len(commands) == 2 and "--resume" not in commands[0] and "--resume" in commands[1]


@pytest.mark.slow
def test_repeats_run_interleaved_and_resume_reruns_only_the_missing_repeats(tmp_path):
    args = ("--matrix", "smoke", "--repeat", "2", "-k", TWO_CASES)
    run_dir = _interrupted_run(tmp_path, 3, *args)
    kept = rows(run_dir)[:3]
    # Round by round: both cases' first repeat, then the second repeat of the first case.
    first, second = kept[0]["case_id"], kept[1]["case_id"]
    assert first != second
    assert [(r["case_id"], r["repeat"]) for r in kept] == [(first, 0), (second, 0), (first, 1)]
    assert (run_dir / "cases" / f"{kept[2]['case_hash']}-r2.json").exists()  # each repeat its own file

    resumed = bench(*args, "--resume", str(run_dir), out=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    stored = rows(run_dir)
    assert [(r["case_id"], r["repeat"]) for r in stored[3:]] == [(second, 1)]  # only the missing repeat ran
    assert [r["started_at"] for r in stored[:3]] == [r["started_at"] for r in kept]
    assert [name for _, _, name, _ in progress_lines(resumed.stdout)] == [
        f"cpu-{first}",
        f"cpu-{second}",
        f"cpu-{first}-r2",
        f"cpu-{second}-r2",
    ]
    assert (
        "3 reused" in resumed.stdout
        and "2 cases on profile cpu (4 runs in fresh processes)" in resumed.stdout
    )
    # The reports read one row per case, its two repeats folded.
    final = pd.read_csv(run_dir / "results.csv")
    assert len(final) == 2 and set(final["repeats"]) == {2} and set(final["status"]) == {"ok"}
    for row in final.itertuples():
        per_repeat = json.loads(row.tokens_per_s_repeats)
        assert len(per_repeat) == 2 and row.tokens_per_s == pytest.approx(sum(per_repeat) / 2)
        assert row.tokens_per_s_ci_low <= row.tokens_per_s <= row.tokens_per_s_ci_high


# One training case, pytest-benchmark's kernel timings and every claim's test (their skip and
# xfail reasons are the `-ra` lines): what a full run prints, at the cost of one tiny case.
_CASE_KERNELS_AND_CLAIMS = "tiny-nf4-dq-bf16-b4-s128-w1m4-trainer or (test_kernel and matmul) or test_claim"
_END_SCREEN_LINES = 15


@pytest.mark.slow
def test_the_console_ends_with_the_claims_tally_and_the_report_paths(tmp_path):
    proc = bench("--matrix", "smoke", "-k", _CASE_KERNELS_AND_CLAIMS, out=tmp_path)
    (run_dir,) = run_dirs(tmp_path)
    lines = proc.stdout.splitlines()
    tail = lines[-_END_SCREEN_LINES:]
    tally = [line for line in tail if line.startswith("  claims: ")]
    assert len(tally) == 1, "\n".join(lines[-40:])
    # Claims, each counted once: the counts add up to the number of claims, not of evaluations.
    match = re.match(r"  claims: (\d+), each counted once \((\d+) evaluations\): (.*)$", tally[0])
    assert match, tally[0]
    claims, evaluations = int(match.group(1)), int(match.group(2))
    counts = [int(n) for n in re.findall(r"(\d+) (?:hold|refuted|inconclusive|not run)", match.group(3))]
    assert len(counts) == 4 and sum(counts) == claims < evaluations
    assert f"  claims.md: {run_dir / 'claims.md'}" in tail and f"  tables.md: {run_dir / 'tables.md'}" in tail
    assert lines[-1].startswith("=") and "passed" in lines[-1]  # pytest's own count closes the screen
    # Above that screen: pytest-benchmark's table and pytest's short summary (-ra) of the claims.
    qlora = next(i for i, line in enumerate(lines) if re.match(r"^=+ qlora-bench =+$", line))
    kernels = next(i for i, line in enumerate(lines) if "benchmark '4-bit matmul" in line)
    short = next(i for i, line in enumerate(lines) if "short test summary info" in line)
    assert kernels < qlora and short < qlora
    assert sum(line.startswith(("SKIPPED", "XFAIL", "FAILED")) for line in lines[short:qlora]) > 10


def test_help_quotes_the_tier_ceilings_from_the_matrix(tmp_path):
    proc = bench("--help", out=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())  # argparse wraps the help text
    assert f"smoke <= {SMOKE_MAX} cases, default <= {DEFAULT_MAX})" in text
