"""Architecture shapes built with seeded random bf16 weights, as cached safetensors checkpoints.

A shape's checkpoint lives under `cache_dir()/shapes/<name>-<config-hash>/` and is written once
(`cache.build_once`); `count_params` builds a shape on the meta device to check the registry's
expected sizes without memory or init cost.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from qlora_core.models.cache import cache_dir, library_versions
from qlora_core.models.registry import INIT_SEED, ShapeSpec, shape_spec

if TYPE_CHECKING:  # typing only: transformers is imported where a model is built, not here
    from transformers import PreTrainedModel

# Small shards bound the extra host memory save_pretrained needs beyond the weights themselves.
_MAX_SHARD_SIZE = "2GB"


def build_meta_model(spec: ShapeSpec) -> PreTrainedModel:
    """The shape as a bf16 model on the meta device: sizes without memory or init cost."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(spec.config(), dtype=torch.bfloat16)


def _count(model: PreTrainedModel) -> tuple[int, int]:
    """(total parameters, weights of nn.Linear layers in the decoder) of a causal LM."""
    # parameters() yields a tied parameter once, as the published totals count it.
    total = sum(p.numel() for p in model.parameters())
    decoder = model.get_decoder()  # excludes lm_head, which bitsandbytes keeps in 16-bit
    linear = sum(m.weight.numel() for m in decoder.modules() if isinstance(m, torch.nn.Linear))
    return total, linear


def count_params(name: str) -> tuple[int, int]:
    """(total, linear-in-decoder) parameters of shape `name`, built on the meta device."""
    return _count(build_meta_model(shape_spec(name)))


def default_device() -> str:
    """Where a shape is built when the caller does not say: cuda if present, else cpu."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def draw_param_(name: str, param: torch.Tensor, std: float, generator: torch.Generator) -> None:
    """One parameter as the models' own init draws it, minus its per-module cost: N(0, std)
    matrices, unit norms, zero biases. The one init rule of the shapes (16-bit and pre-quantized)."""
    if name.endswith(".bias"):
        param.zero_()
    elif param.ndim == 1:  # RMSNorm weights
        param.fill_(1.0)
    else:
        param.normal_(0.0, std, generator=generator)


@torch.no_grad()
def _init_random_(model: torch.nn.Module, std: float, generator: torch.Generator) -> None:
    """Every parameter drawn in `named_parameters` order (a tied parameter is listed, and drawn, once)."""
    for name, param in model.named_parameters():
        draw_param_(name, param, std, generator)


def write_shape_checkpoint(spec: ShapeSpec, out: Path, device: str) -> dict[str, Any]:
    """Write `spec` with seeded random bf16 weights as a safetensors checkpoint into `out`."""
    model = build_meta_model(spec)
    # to_empty allocates without initializing (no nn.Linear kaiming pass, which would be thrown
    # away). It gives every parameter new storage, which unties lm_head from the embedding, so
    # tie again before drawing: the tied weight must be drawn once and saved once.
    model.to_empty(device=device)
    model.tie_weights()
    generator = torch.Generator(device=device).manual_seed(INIT_SEED)
    _init_random_(model, model.config.initializer_range, generator)
    # The rotary inv_freq buffers are left uninitialized by to_empty; they are non-persistent,
    # so they are not saved, and from_pretrained recomputes them.
    model.save_pretrained(out, max_shard_size=_MAX_SHARD_SIZE)
    return {"source": "shape", "shape": spec.name, "device": str(device), **library_versions()}


def shape_dir(spec: ShapeSpec) -> Path:
    """The cache directory of `spec`'s checkpoint (it may not exist yet)."""
    return cache_dir() / "shapes" / f"{spec.name}-{spec.config_hash}"
