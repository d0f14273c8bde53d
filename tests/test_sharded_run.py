"""Sharding on the CPU: the cpu smoke tier as 3 shards in separate processes, merged,
gives the rows (measurements aside), verdicts and gate result of one unsharded run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from reports.__main__ import main as reports_main
from reports.claims import evaluate_all
from reports.run.frame import load_run

ROOT = Path(__file__).resolve().parents[1]
SHARDS = 3
# The gate's speed rules compare timings between processes on a shared 2-core CPU: loose limits
# (and --allow-noisy) leave statuses, cases, losses and memory to decide, which must agree exactly.
LOOSE = ["--tokens-per-s-drop-pct", "95", "--kernel-ms-rise-pct", "95", "--allow-noisy"]


def _bench(out: Path, *args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "pytest", "bench", "-p", "no:cacheprovider", "-rs", "--matrix", "smoke"]
    return subprocess.Popen(
        [*command, "--out", str(out), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _folder(out: Path) -> Path:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


def _rows(run_dir: Path) -> list[tuple]:
    """What must agree between runs: each case, repeat, status, what ran and its losses' length."""
    frame = load_run(run_dir).repeats
    return sorted(
        (r["case_id"], r["case_hash"], r["repeat"], r["status"], r["families"], len(r["losses"] or []))
        for r in frame.to_dict("records")
    )


def _verdicts(run_dir: Path) -> list[tuple[str, str, str]]:
    return sorted((c.id, e.condition, e.verdict.value) for c, e in evaluate_all(load_run(run_dir)))


@pytest.mark.slow
def test_three_shards_merged_equal_one_unsharded_run(tmp_path):
    whole_out = tmp_path / "whole"
    baseline = tmp_path / "baseline.json"
    whole = _bench(whole_out, "--save-baseline", str(baseline))
    whole_log, _ = whole.communicate(timeout=1800)
    assert whole.returncode == 0, whole_log[-4000:]
    # One shard after another: N runners are N machines, each with the whole of its CPU. Side by
    # side on this one 2-core machine each shard measured a third of it (tokens/s down 96-99%),
    # which the gate, rightly, fails against the unsharded run.
    for i in range(1, SHARDS + 1):
        proc = _bench(tmp_path / f"shard{i}", "--shard", f"{i}/{SHARDS}")
        log = proc.communicate(timeout=1800)[0]
        assert proc.returncode == 0, log[-4000:]
        assert "merge first" in log  # kernels, claims and the gate wait for the merge
    folders = [_folder(tmp_path / f"shard{i}") for i in range(1, SHARDS + 1)]
    merged = tmp_path / "merged"
    assert reports_main(["merge", *map(str, folders), "--out", str(merged)]) == 0

    whole_dir = _folder(whole_out)
    assert _rows(merged) == _rows(whole_dir)
    assert _verdicts(merged) == _verdicts(whole_dir)
    gate_whole = reports_main(["gate", str(whole_dir), str(baseline), *LOOSE])
    gate_merged = reports_main(["gate", str(merged), str(baseline), *LOOSE])
    assert gate_merged == gate_whole == 0
