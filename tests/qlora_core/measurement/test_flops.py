"""The FLOPs model of one LoRA/QLoRA optimizer step, checked against numbers computed by hand,
and MFU against the datasheet peaks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from qlora_core.cases.case import LESSON_TARGET_MODULES
from qlora_core.cases.gpus import PROFILES, get_profile
from qlora_core.measurement.flops import DecoderDims, dims_of, mfu, step_flops
from qlora_core.models import SHAPES

TOY = DecoderDims(hidden=4, intermediate=8, layers=1, heads=2, kv_heads=1, head_dim=2, vocab=10)
TOY_STEP = dict(batch_size=1, seq_len=3, grad_accum=1, lora_r=1, target_modules=("q_proj",))


def test_a_toy_step_counted_by_hand():
    # Projections: q 4x4, k 4x2, v 4x2, o 4x4, gate/up 4x8, down 8x4 -> 144 weights; lm_head 40.
    assert TOY.decoder_weights() == 144
    # 3 tokens. Adapter on q: 1 x (4 + 4) = 8 weights. Attention: 4 x 3^2 x (2 x 2) = 144.
    decoder_fwd = 2 * 144 * 3 + 2 * 8 * 3 + 144  # 1056
    forward = decoder_fwd + 2 * 40 * 3  # + lm_head: 1296
    backward = 2 * (144 + 40) * 3 + 4 * 8 * 3 + 2 * 144  # input grads, adapter grads, attention
    assert step_flops(TOY, **TOY_STEP, gradient_checkpointing=False) == forward + backward == 2784
    # Checkpointing recomputes the decoder layers' forward, not lm_head.
    assert step_flops(TOY, **TOY_STEP, gradient_checkpointing=True) == 2784 + decoder_fwd


def test_grad_accum_and_batch_scale_the_count_alike():
    one = step_flops(TOY, **{**TOY_STEP, "batch_size": 2}, gradient_checkpointing=True)
    two = step_flops(TOY, **{**TOY_STEP, "grad_accum": 2}, gradient_checkpointing=True)
    assert one == two == 2 * step_flops(TOY, **TOY_STEP, gradient_checkpointing=True)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_the_decoder_weights_are_the_shapes_linear_params(name):
    from transformers import AutoConfig

    spec = SHAPES[name]
    dims = dims_of(AutoConfig.for_model(spec.arch, **spec.config_kwargs()))
    assert dims is not None and dims.decoder_weights() == spec.linear_params


def test_an_8b_step_without_checkpointing_is_about_4_n_t():
    from transformers import AutoConfig

    spec = SHAPES["llama-3.1-8b"]
    dims = dims_of(AutoConfig.for_model(spec.arch, **spec.config_kwargs()))
    assert dims is not None
    n = dims.decoder_weights() + dims.hidden * dims.vocab
    flops = step_flops(
        dims, batch_size=1, seq_len=512, grad_accum=1, lora_r=16,
        target_modules=LESSON_TARGET_MODULES, gradient_checkpointing=False,
    )  # fmt: skip
    assert 1.0 < flops / (4 * n * 512) < 1.1  # adapters and attention add a few percent


def test_unknown_architectures_and_modules_are_refused():
    assert dims_of(SimpleNamespace(model_type="gpt2")) is None
    with pytest.raises(ValueError, match="c_attn"):
        step_flops(TOY, **{**TOY_STEP, "target_modules": ("c_attn",)}, gradient_checkpointing=False)


def test_mfu_against_the_datasheet_peaks():
    assert mfu(1e12, 1000.0, 1.0) == pytest.approx(1.0)
    assert mfu(989.5e12 / 2, 1000.0, get_profile("h200").peak_tflops("bf16")) == pytest.approx(0.5)
    assert mfu(1e12, 1000.0, None) is None and mfu(None, 1000.0, 1.0) is None and mfu(1e12, None, 1.0) is None
    assert get_profile("t4").peak_tflops("bf16") is None  # no bf16 in a T4's hardware
    assert get_profile("t4").peak_tflops("fp16") == 65.0
    assert get_profile("a10g").peak_tflops("bf16") is None  # no NVIDIA datasheet
    assert get_profile("cpu").peak_tflops("fp32") is None
    assert all(p.peak_tflops("fp4") is None for p in PROFILES.values())
