"""reports.fit.model: the device-peak model recovers a known model; leave-one-out is computed right."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from qlora_core.models.registry import SHAPES
from reports.fit.advisor import REFERENCE_DIR
from reports.fit.model import (
    GIB,
    VISIBLE_GPUS,
    FitError,
    activation_features,
    fit,
    leave_one_out,
    lm_head_copy_gib,
    memory_rows,
    run_frame,
    summarize,
    trained_batch,
)
from reports.run.frame import load_run

TRUE_COEFFICIENTS = np.array([0.25, 12.0, 1.5, 3.0, 16.0, 5.0])
CONTEXT = 0.75
BASE = 0.6


def _row(
    model: str, batch: int, seq: int, gc: bool = True, quant: str = "nf4", noise: float = 0.0, seen: int = 1
) -> dict:
    """A row the known model generates; `seen`: the GPUs its session saw (its Trainer trains
    `seen` x batch rows a step on one GPU when the model is quantized)."""
    shape = SHAPES[model]
    fields = {
        "case_id": f"{model}-{quant}-b{batch}-s{seq}-{'gc' if gc else 'nogc'}",
        "status": "ok",
        "engine": "trainer",
        "model": model,
        "quant_type": quant,
        "double_quant": True,
        "compute_dtype": "bf16",
        "quant_storage": "uint8",
        "prepare_kbit": True,
        "lora_r": 16,
        "batch_size": batch,
        "seq_len": seq,
        "gradient_checkpointing": gc,
        "optimizer": "adamw",
        "num_gpus": 1,
        "trainable_params": 10_000_000,
        "optimizer_state_bytes": 80_000_000,
        "lora_alloc_gib": shape.total_params * {"nf4": 0.6, "int8": 1.1}.get(quant, 2) / GIB,
        "nvml_base_gib": BASE,
        VISIBLE_GPUS: seen,
    }
    trained = dict(fields, batch_size=batch * seen)
    footprint = CONTEXT + fields["lora_alloc_gib"] + 10_000_000 * 12 / GIB + lm_head_copy_gib(fields, shape)
    footprint += float(activation_features(shape, trained) @ TRUE_COEFFICIENTS) + noise
    fields["nvml_peak_gib"] = BASE + footprint
    fields["peak_reserved_gib"] = footprint - CONTEXT
    return fields


def _synthetic(noise: float = 0.0) -> pd.DataFrame:
    rows = [
        _row(model, b, s, gc, quant)
        for model in ("llama-3.2-3b", "llama-3.1-8b", "smollm2-135m")
        for b, s in ((1, 512), (4, 2048))
        for gc in (True, False)
        for quant in ("nf4", "none", "int8")
    ]
    for i, row in enumerate(rows):
        row["nvml_peak_gib"] += noise * (-1) ** i
    return pd.DataFrame(rows)


def test_fitting_synthetic_rows_recovers_the_model() -> None:
    model = fit(memory_rows([_synthetic()]))
    assert model.context_gib == pytest.approx(CONTEXT)
    assert model.optimizer_bytes_per_param == {"adamw": pytest.approx(8.0)}
    np.testing.assert_allclose(model.activation_coefficients, TRUE_COEFFICIENTS, rtol=1e-6)
    held = summarize(leave_one_out(memory_rows([_synthetic()])))
    assert held.max == pytest.approx(0.0, abs=1e-9) and held.not_predictable == 0


def test_a_wrong_model_is_seen_in_the_held_out_error() -> None:
    """Rows that do not follow the model (noise of 1 GiB) give a held-out error, not zero."""
    held = summarize(leave_one_out(memory_rows([_synthetic(noise=1.0)])))
    assert held.max is not None and held.max > 0.02


def test_leave_one_out_is_the_error_of_a_fit_without_the_row() -> None:
    rows = memory_rows([_synthetic(noise=0.3)])
    held = leave_one_out(rows)
    first = held[0]
    rest = [r for r in rows if r.case_id != first.row.case_id]
    predicted = fit(rest).predict(first.row.fields, static=(first.row.static_gib, 10_000_000)).footprint_gib
    assert first.predicted_gib == pytest.approx(predicted)
    assert first.error == pytest.approx(abs(predicted - first.row.footprint_gib) / first.row.footprint_gib)
    errors = sorted(h.error for h in held if h.error is not None)
    assert summarize(held).median == pytest.approx(float(np.median(errors)))


def test_a_row_the_others_do_not_span_is_not_predicted() -> None:
    frame = pd.DataFrame([_row("llama-3.2-3b", 1, 512), _row("llama-3.2-3b", 1, 512, gc=False)])
    held = leave_one_out(memory_rows([frame]))
    assert all(h.predicted_gib is None for h in held)
    assert "do not span" in held[1].why_not


def test_an_int8_row_is_not_predicted_from_rows_of_other_weights() -> None:
    """LLM.int8()'s kept layer inputs are a term of their own: rows without int8 cannot give it."""
    frame = _synthetic()
    others = frame[frame["quant_type"] != "int8"]
    int8 = frame[(frame["quant_type"] == "int8")].iloc[[0]]
    held = {h.row.case_id: h for h in leave_one_out(memory_rows([pd.concat([others, int8])]))}
    assert held[int8.iloc[0]["case_id"]].predicted_gib is None
    assert "do not span" in held[int8.iloc[0]["case_id"]].why_not
    assert all(h.predicted_gib is not None for case_id, h in held.items() if "-int8-" not in case_id)


def test_llm_int8_keeps_its_layer_inputs_through_non_reentrant_checkpointing(tmp_cache) -> None:
    """Why the int8 term exists: bitsandbytes' MatMul8bitLt (its CUDA training path, run here on
    its CPU kernels) holds each layer's input as a context attribute, which the saved-tensor hooks
    of non-reentrant checkpointing (transformers' default) never see; reentrant checkpointing runs
    the forward without grad, so nothing is kept. The suite's own recipe (`qlora_core.models.load`) on the
    tiny shape: every int8 projection of every layer keeps its input."""
    import bitsandbytes.autograd._functions as bnb_functions
    import torch

    from qlora_core.cases.case import Case
    from qlora_core.models import load
    from qlora_core.models.resolve import resolve_model

    case = Case("tiny", quant_type="int8", compute_dtype="bf16", batch_size=2, seq_len=32)
    shape = SHAPES["tiny"]
    path = resolve_model("tiny", device="cpu").path

    def kept_bytes(reentrant: bool) -> tuple[int, int]:
        model = load.load_model(case, path, "cpu")
        model = load.prepare(model, case, checkpointing_kwargs={"use_reentrant": reentrant})
        model = load.add_lora(model, case).train()
        ids = torch.randint(0, shape.vocab_size, (case.batch_size, case.seq_len))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        nodes, held, seen, stack = 0, {}, set(), [loss.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            if type(node).__name__ == "MatMul8bitLtBackward":
                nodes += 1
                for t in getattr(node, "tensors", ()) or ():
                    if isinstance(t, torch.Tensor):
                        held[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            stack += [fn for fn, _ in node.next_functions]
        loss.backward()
        return nodes, sum(held.values())

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bnb_functions, "MatMul8bitFp", bnb_functions.MatMul8bitLt)  # the CUDA path
        nodes, held = kept_bytes(reentrant=False)
        assert nodes == shape.num_layers * len(case.target_modules)
        # at least one hidden-sized input per layer stays alive, in 16 bits or more
        tokens = case.batch_size * case.seq_len
        assert held >= shape.num_layers * tokens * shape.hidden_size * 2, held
        assert kept_bytes(reentrant=True) == (0, 0)


def test_missing_rows_are_named() -> None:
    with pytest.raises(FitError, match="no usable measured rows"):
        fit([])
    model = fit(memory_rows([_synthetic()]))
    query = dict(_row("llama-3.2-3b", 2, 1024), optimizer="adamw_8bit")
    with pytest.raises(FitError, match="adamw_8bit"):
        model.predict(query)
    with pytest.raises(FitError, match="weight configuration"):
        model.predict(dict(_row("llama-3.2-3b", 2, 1024), lora_r=64))


def test_oom_rows_count_only_with_their_uncapped_rerun() -> None:
    oom = dict(_row("llama-3.2-3b", 4, 2048), status="oom")
    assert memory_rows([pd.DataFrame([oom])]) == []
    needed = dict(
        oom,
        needed_status="ok",
        needed_on="NVIDIA H200",
        needed_nvml_peak_gib=oom["nvml_peak_gib"],
        needed_nvml_base_gib=oom["nvml_base_gib"],
        needed_peak_reserved_gib=oom["peak_reserved_gib"],
        needed_optimizer_state_bytes=80_000_000,
    )
    (row,) = memory_rows([pd.DataFrame([needed])])
    assert row.source == "needed (measured uncapped on NVIDIA H200)"


def test_a_trainer_that_saw_several_gpus_trained_that_many_times_its_batch() -> None:
    """transformers sizes a single-process Trainer's step by every GPU it sees (n_gpu); a quantized
    model is not wrapped in DataParallel, so the one GPU trains all those rows."""
    row = _row("llama-3.1-8b", 4, 512, seen=2)
    assert trained_batch(row) == (8, "trained 8 rows a step, not its case's 4: Trainer saw 2 GPUs (n_gpu)")
    assert trained_batch(dict(row, engine="sft"))[0] == 8
    assert trained_batch(dict(row, engine="loop")) == (4, "")  # the core loop feeds its own batches
    assert trained_batch(dict(row, num_gpus=2)) == (4, "")  # a distributed launch: n_gpu is 1 per rank
    assert trained_batch(dict(row, **{VISIBLE_GPUS: 1})) == (4, "")
    assert trained_batch(dict(row, **{VISIBLE_GPUS: None})) == (4, "")  # not recorded: the case's
    batch, why = trained_batch(dict(row, quant_type="none"))
    assert batch is None and "DataParallel" in why
    assert memory_rows([pd.DataFrame([dict(row, quant_type="none")])]) == []  # not one card's peak


def _with_trainers_that_saw_two_gpus() -> pd.DataFrame:
    """The synthetic rows plus 8B and 3B Trainer rows whose session saw 2 GPUs (as multigpu-t4x2's)."""
    models = ("llama-3.1-8b", "llama-3.2-3b")
    extra = [_row(model, 4, 512, seen=2, gc=gc) for model in models for gc in (True, False)]
    return pd.concat([_synthetic(), pd.DataFrame(extra)], ignore_index=True)


def test_rows_trained_at_several_gpus_batch_recover_the_model() -> None:
    rows = memory_rows([_with_trainers_that_saw_two_gpus()])
    assert sorted({row.trained_batch for row in rows if row.fields[VISIBLE_GPUS] == 2}) == [8]
    np.testing.assert_allclose(fit(rows).activation_coefficients, TRUE_COEFFICIENTS, rtol=1e-6)
    held = summarize(leave_one_out(rows))
    assert held.max == pytest.approx(0.0, abs=1e-9) and held.not_predictable == 0


def test_reading_the_cases_batch_instead_gives_the_error_it_causes() -> None:
    """The same rows without the GPUs their sessions saw (the fit before this term): read at their
    case's batch, they miss the target (max 10%) as the committed multigpu rows did (24.7%)."""
    frame = _with_trainers_that_saw_two_gpus().drop(columns=[VISIBLE_GPUS])
    held = summarize(leave_one_out(memory_rows([frame])))
    assert held.max is not None and held.max > 0.10


def test_the_committed_one_card_rows_trained_their_cases_batch_on_one_visible_gpu() -> None:
    """multigpu-t4x2's session saw both GPUs (environment.json gpus_present 2); its one-card rows
    were re-measured with one GPU shown to their child (`gpus_visible` 1) and trained their case's
    batch, where an earlier run had trained 8 rows a step (`trained_batch` of a row without the field:
    the next test)."""
    run = load_run(REFERENCE_DIR / "multigpu-t4x2")
    assert run.environment["gpus_present"] == 2
    rows = memory_rows([run_frame(run)])
    assert {row.case_id: (row.trained_batch, row.fields["gpus_visible"]) for row in rows} == {
        "llama-3.1-8b-nf4-dq-fp16-b4-s512-w2m8-trainer": (4, 1),
        "llama-3.1-8b-nf4-dq-fp16-b4-s512-noprep-qs-fp16-w2m8-trainer": (4, 1),
    }
    pinned = load_run(REFERENCE_DIR / "t4-default-on-h200")  # CUDA_VISIBLE_DEVICES=0: one GPU seen
    assert all(row.trained_batch == int(row.fields["batch_size"]) for row in memory_rows([run_frame(pinned)]))


def test_a_rows_own_visible_gpus_come_before_its_sessions() -> None:
    """A row that recorded the GPUs its child saw (`gpus_visible`, a pinned one-GPU child: 1) trained
    its case's batch whatever its session saw; a row from before that field falls back to it."""
    run = load_run(REFERENCE_DIR / "multigpu-t4x2")
    one_card = run.results["num_gpus"].astype(int) == 1
    pinned = dataclasses.replace(run, results=run.results.assign(gpus_visible=None))
    pinned.results.loc[one_card, "gpus_visible"] = 1
    rows = memory_rows([run_frame(pinned)])
    assert rows and all(row.trained_batch == int(row.fields["batch_size"]) for row in rows)
    unrecorded = dataclasses.replace(run, results=run.results.assign(gpus_visible=None))
    unpinned = memory_rows([run_frame(unrecorded)])
    assert {row.trained_batch for row in unpinned} == {8}
