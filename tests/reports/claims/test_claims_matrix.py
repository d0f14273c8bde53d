"""reports.claims.matrix and `python -m reports claims-matrix`: the claims x runs table, on run
folders written in a temporary folder (a t4 run at the top, an h100 run nested one level down)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reports.__main__ import EXIT_OK, EXIT_USAGE, main
from reports.claims import CLAIMS, claim_by_id
from reports.claims.matrix import MatrixError, cell, cell_verdict, claims_matrix, find_run_dirs, short
from reports.claims.model import holds, inconclusive, not_run, refuted

THREE = "llama-3.2-3b"
H100 = {
    "device": "cuda",
    "gpu_name": "NVIDIA H100 80GB HBM3",
    "gpu_capability": "9.0",
    "bf16_native": True,
    "bf16_torch_supported": True,
}


def _h100_sweep(build):
    """An h100 run's sweep: every point within 2-8 GB above the LoRA stage, b4 s2048 included."""
    peaks = {(1, 512): 5.0, (1, 2048): 7.0, (4, 512): 7.0, (4, 2048): 9.5}
    return [
        build.result(
            THREE,
            families="sweep",
            profile="h100",
            compute_dtype="bf16",
            batch_size=b,
            seq_len=s,
            **build.params(THREE),
            **H100,
            **build.memory(2.0, 2.8, 2.9, peak),
        )
        for (b, s), peak in peaks.items()
    ]


@pytest.fixture
def root(tmp_path, build) -> Path:
    base = tmp_path / "reference"
    build.write_run_dir(
        base / "t4-run",
        build.synthetic_results(),
        build.synthetic_measurements(),
        build.synthetic_environment(),
    )
    build.write_run_dir(base / "nested" / "h100-run", _h100_sweep(build))
    return base


def _row(text: str, claim_id: str) -> list[str]:
    line = next(x for x in text.splitlines() if x.startswith(f"| {claim_id} |"))
    return [c.strip() for c in line.strip("|").split(" | ")]


def test_the_table_cells_runs_and_where_verdicts_differ(root):
    """One page (evaluating the synthetic t4 run takes a while): its table, its runs, its cells and
    the section naming the points where a claim holds on one run and is refuted on another."""
    text = claims_matrix(root)
    header = next(x for x in text.splitlines() if x.startswith("| Claim |"))
    assert header == (
        "| Claim | nested/h100-run (h100 on NVIDIA H100 80GB HBM3) | t4-run (t4 on NVIDIA H200, emulated) |"
    )
    for claim in CLAIMS:
        assert len(_row(text, claim.id)) == 3, claim.id
    assert f"{len(CLAIMS)} claims x 2 run folders" in text
    assert "| nested/h100-run | h100 | NVIDIA H100 80GB HBM3 | no | 4 (4 ok) |" in text
    # cells: the verdict, a figure, and for a claim not run, why
    h100, t4 = _row(text, "overhead-activations")[1:]
    assert h100.startswith("**holds**: 2.10 GiB (2.25 GB) to 6.60 GiB (7.09 GB) over 4 points")
    assert t4.startswith("**refuted** (known error)")
    assert _row(text, "t4-budget-8b")[1] == "**not run**: applies to profile t4"
    # where a claim holds on one run and is refuted on another: each run's points
    section = text.split("## Where a claim holds on one run and is refuted on another", 1)[1]
    block = section.split("- **overhead-activations**", 1)[1].split("\n- **", 1)[0]
    assert "(judged at the batch sizes and sequence lengths" in block
    assert "  - nested/h100-run (h100 on NVIDIA H100 80GB HBM3): holds" in block
    assert "at llama-3.2-3b b1 s512, b1 s2048, b4 s512, b4 s2048" in block
    assert "  - t4-run (t4 on NVIDIA H200, emulated): refuted" in block


def test_cell_verdict_order_counts_and_figures():
    claim = claim_by_id("overhead-activations")
    mixed = [holds("1.0 GiB; more"), refuted("9.0 GiB", "wrong"), not_run("no rows")]
    assert cell_verdict(mixed).value == "refuted"
    assert cell(claim, mixed) == "**refuted** (known error) 1/3: 9.0 GiB"
    assert cell(claim_by_id("lora-99pct"), [holds("99.3%; detail")]) == "**holds**: 99.3%"
    assert (
        cell(claim, [inconclusive("within noise; more"), not_run("x")])
        == "**inconclusive** 1/2: within noise"
    )
    assert short("x" * 100, 10) == "x" * 9 + "…"


def test_find_run_dirs_refuses_a_root_without_runs(tmp_path):
    with pytest.raises(MatrixError, match="no run folder"):
        find_run_dirs(tmp_path)
    with pytest.raises(MatrixError, match="is not a folder"):
        find_run_dirs(tmp_path / "missing")


def test_cli_writes_the_table_and_exits_2_without_runs(build, tmp_path, capsys):
    root = build.write_run_dir(tmp_path / "runs" / "h100-run", _h100_sweep(build)).parent
    out = tmp_path / "out" / "claims-matrix.md"
    assert main(["claims-matrix", str(root), "--out", str(out)]) == EXIT_OK
    assert f"claims matrix: {out}" in capsys.readouterr().out
    assert out.read_text().startswith("# The lesson's claims on every run")
    assert main(["claims-matrix", str(tmp_path / "out"), "--out", str(out)]) == EXIT_USAGE
    assert "no run folder" in capsys.readouterr().err
