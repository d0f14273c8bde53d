"""reports.tables.plots: every plot written for a full run, each skipped when its rows are absent."""

from __future__ import annotations

from pathlib import Path

from qlora_core.cases.gpus import get_profile
from reports.tables.plots import PLOTS, memory_vs_seq_figure, plot_memory_vs_seq, render_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000


def test_render_plots_writes_every_plot_of_a_full_run(synthetic_run, tmp_path):
    written = render_plots(synthetic_run, tmp_path / "plots")
    assert [p.name for p in written] == [name for name, _ in PLOTS]
    assert all(_is_png(p) for p in written)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(p.name for p in written)


def test_render_plots_skips_plots_without_rows(build, tmp_path):
    assert render_plots(build.run([]), tmp_path / "empty") == []
    assert not (tmp_path / "empty").exists()
    sweep = [
        build.result(
            families="sweep", seq_len=s, **build.gpu(), **build.memory(2.0, 2.8, 2.9, 3.0 + s / 1024)
        )
        for s in (512, 1024)
    ]
    written = render_plots(build.run(sweep), tmp_path / "sweep")
    assert [p.name for p in written] == ["peak_memory_vs_seq.png"]  # no tokens/s, losses or perplexity
    stability_only = [build.result(families="stability", data="text", **build.training(900.0))]
    written = render_plots(build.run(stability_only), tmp_path / "stability")
    assert [p.name for p in written] == ["tokens_per_s.png"]


def test_memory_plot_marks_oom_points_and_uses_rss_off_gpu(build, tmp_path):
    rows = [
        build.result(families="sweep", **build.gpu(), **build.memory(2.0, 2.8, 2.9, 4.0)),
        build.result(families="sweep", seq_len=2048, status="oom", **build.gpu()),
    ]
    (ax,) = memory_vs_seq_figure(build.run(rows)).axes
    assert ax.get_ylabel() == "peak reserved (GiB)"
    (ok_line, t4_line) = ax.get_lines()  # the ok point, and the T4's memory as a dashed line
    assert list(ok_line.get_ydata()) == [4.3] and list(ok_line.get_xdata()) == [512]
    t4_gib = get_profile("t4").total_gib
    assert list(t4_line.get_ydata()) == [t4_gib, t4_gib] and t4_line.get_linestyle() == "--"
    (oom,) = ax.collections  # the OOM point: a cross at the T4's memory, labelled as such
    assert oom.get_label() == "nf4+dq b1: oom" and oom.get_offsets()[:, 1].tolist() == [t4_gib]
    assert _is_png(plot_memory_vs_seq(build.run(rows), tmp_path / "gpu.png"))
    cpu = [
        build.result(
            families="sweep,reference", profile="cpu", device="cpu", seq_len=s, cpu_peak_rss_gib=1.0 + s / 64
        )
        for s in (32, 64)
    ]
    (ax,) = memory_vs_seq_figure(build.run(cpu)).axes
    assert ax.get_ylabel() == "process peak RSS (GiB)"
    assert [list(line.get_ydata()) for line in ax.get_lines()] == [[1.5, 2.0]]  # no GPU memory line
    assert not ax.collections
    failed_only = [build.result(families="sweep", status="crashed", **build.gpu())]
    assert memory_vs_seq_figure(build.run(failed_only)) is None
    assert plot_memory_vs_seq(build.run(failed_only), tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
