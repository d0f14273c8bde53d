"""qlora_core.process.checkpointer: the child's Result file while a case runs: written as each stage
starts and, in training, at most every PROGRESS_SAVE_S (what the parent's heartbeat reads)."""

from __future__ import annotations

from qlora_core.cases.case import Case
from qlora_core.measurement.result import Result, read_result
from qlora_core.process import checkpointer


def test_training_progress_is_written_at_most_every_interval(tmp_path, monkeypatch):
    path = tmp_path / "case.json"
    result = Result.for_case(Case("tiny"), "cpu")
    ckpt = checkpointer.Checkpointer(result, path)
    ckpt.stage("training")
    assert read_result(path).reason == "died during training" and read_result(path).training.losses == []
    result.training.losses = [2.5]
    ckpt.save_progress()  # the stage's own write was just now: not again yet
    assert read_result(path).training.losses == []
    monkeypatch.setattr(checkpointer, "PROGRESS_SAVE_S", 0.0)
    ckpt.save_progress()
    written = read_result(path)
    assert written.training.losses == [2.5] and written.reason == "died during training"  # still in the stage
