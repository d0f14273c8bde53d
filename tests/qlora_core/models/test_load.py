"""The recipe on the CPU: an eval-mode forward must not change later gradients; the LoRA count."""

from __future__ import annotations

import pytest
import torch

from qlora_core.cases.case import Case
from qlora_core.engines.data import synthetic_batches
from qlora_core.measurement import quality
from qlora_core.models import SHAPES, load
from qlora_core.models.resolve import resolve_model

CASE = Case("tiny", batch_size=2, seq_len=64, gradient_checkpointing=False)


def _lora_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = load.load_model(CASE, resolve_model("tiny", device="cpu").path, "cpu")
    return load.add_lora(load.prepare(model, CASE), CASE)


def _first_layer_grads(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Gradient of the first layer's q_proj LoRA A: it flows back through every frozen 4-bit layer."""
    model.train()
    model.zero_grad()
    model(input_ids=batch, labels=batch).loss.backward()
    name, param = next((n, p) for n, p in model.named_parameters() if "layers.0.self_attn.q_proj.lora_A" in n)
    assert param.grad is not None, name
    return param.grad.clone()


def _grads_after_eval_forward(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    quality.perplexity(model, batch, "cpu")  # eval mode, no grad: what the runner does before training
    return _first_layer_grads(model, batch)


def test_gradients_are_the_same_after_an_eval_forward() -> None:
    """On a CPU with AVX512-BF16, bitsandbytes repacks 4-bit weights for inference in an eval
    forward without grad (our perplexity before training) and torch then warns that
    `gemv_4bit` has no autograd kernel. The gradients stay right: pinned here, since a silent
    change would falsify every text case trained after its perplexity."""
    batch = synthetic_batches(SHAPES["tiny"].vocab_size, 2, 64, 1, seed=0)[0]
    clean = _first_layer_grads(_lora_model(), batch)
    after_eval = _grads_after_eval_forward(_lora_model(), batch)
    torch.testing.assert_close(after_eval, clean)


def test_lora_count_names_unknown_modules() -> None:
    assert SHAPES["tiny"].lora_params(8, ("q_proj",)) == 2 * 8 * (128 + 128)
    with pytest.raises(ValueError, match="known"):
        SHAPES["tiny"].lora_params(8, ("qkv_proj",))
