"""qlora_core.process.stages and the child's stage functions: one function per stage, entered in
the order of the one stage list that the checkpointer and the faults read too."""

from __future__ import annotations

import pytest

from qlora_core.cases.case import Case
from qlora_core.measurement.result import Result, read_result
from qlora_core.process import checkpointer, child, faults
from qlora_core.process.request import RunOptions
from qlora_core.process.stages import STAGES

CPU = RunOptions(profile="cpu", timeout_s=300)
TRAIN = Case("tiny", seq_len=32, warmup_steps=0, measured_steps=2)
LOAD = Case("tiny", quant_type="none", compute_dtype="fp32", load_only=True)


def test_the_child_runs_one_step_per_stage_after_start_up_in_the_lists_order(tmp_path):
    assert list(child._STAGE_STEPS) == list(STAGES[1:])
    assert faults.STAGES is STAGES  # a fault names a stage of this very list
    ckpt = checkpointer.Checkpointer(Result.for_case(TRAIN, "cpu"), tmp_path / "r.json")
    with pytest.raises(AssertionError, match="'warm-up' is not in stages"):
        ckpt.stage("warm-up")


def entered(case: Case, tmp_path, monkeypatch) -> tuple[list[str], Result]:
    """The stages `case` enters on the CPU, in order, and its Result."""
    names: list[str] = []
    stage = checkpointer.Checkpointer.stage

    def recording(self: checkpointer.Checkpointer, name: str) -> None:
        names.append(name)
        stage(self, name)

    monkeypatch.setattr(checkpointer.Checkpointer, "stage", recording)
    result = child.run_child(case, CPU, tmp_path / "r.json", "")
    assert result.status == "ok", result.reason
    assert read_result(tmp_path / "r.json").flat() == result.flat()  # on disk as returned
    return names, result


def test_a_training_case_on_the_cpu_enters_every_stage_but_the_cuda_and_text_ones(tmp_path, monkeypatch):
    names, result = entered(TRAIN, tmp_path, monkeypatch)
    skipped = {"model creation", "perplexity before training", "perplexity after training"}
    assert names == [name for name in STAGES if name not in skipped]
    timing, memory = result.timing, result.memory
    assert None not in (timing.import_s, timing.load_s, timing.prepare_s, timing.train_s)
    assert timing.create_s is None and timing.eval_s is None  # CUDA only; text only
    assert None not in (memory.load_alloc_gib, memory.prepare_alloc_gib, memory.lora_alloc_gib)
    assert result.weights.trainable_params and len(result.training.losses) == 2
    assert result.environment.torch_version and result.hardware.device == "cpu"


def test_a_load_only_case_ends_after_its_load(tmp_path, monkeypatch):
    names, result = entered(LOAD, tmp_path, monkeypatch)
    assert names == ["start-up", "model resolution", "load"]
    assert result.timing.load_s is not None and result.timing.prepare_s is None
    assert result.memory.load_alloc_gib is not None and result.memory.lora_alloc_gib is None
    assert result.weights.total_params and result.training.losses == []
