"""FLOPs of one optimizer step of LoRA/QLoRA training, and MFU from them (`mfu` from the median
wall step, `mfu_kernel` from the kernel time per step).
See docs/gate.md#flops-and-mfu for the model and what it leaves out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

LLAMA_LIKE_ARCHS: tuple[str, ...] = ("llama", "mistral", "qwen2")
"""Model types whose decoder layers have exactly the seven projections this model counts."""


@dataclass(frozen=True)
class DecoderDims:
    """What the FLOPs model needs of a Llama-style decoder."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    def projections(self) -> dict[str, tuple[int, int]]:
        """(d_in, d_out) of each projection of one decoder layer."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {
            "q_proj": (self.hidden, q),
            "k_proj": (self.hidden, kv),
            "v_proj": (self.hidden, kv),
            "o_proj": (q, self.hidden),
            "gate_proj": (self.hidden, self.intermediate),
            "up_proj": (self.hidden, self.intermediate),
            "down_proj": (self.intermediate, self.hidden),
        }

    def decoder_weights(self) -> int:
        """Weights of the decoder layers' projections (what bitsandbytes quantizes)."""
        return self.layers * sum(d_in * d_out for d_in, d_out in self.projections().values())


def dims_of(config: Any) -> DecoderDims | None:
    """The dims of a transformers config; None for an architecture the model does not cover."""
    if getattr(config, "model_type", None) not in LLAMA_LIKE_ARCHS:
        return None
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return DecoderDims(
        hidden=config.hidden_size,
        intermediate=config.intermediate_size,
        layers=config.num_hidden_layers,
        heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        vocab=config.vocab_size,
    )


def step_flops(
    dims: DecoderDims,
    *,
    batch_size: int,
    seq_len: int,
    grad_accum: int,
    lora_r: int,
    target_modules: Sequence[str],
    gradient_checkpointing: bool,
) -> float:
    """FLOPs of one optimizer step (see the module docstring)."""
    sequences = batch_size * grad_accum
    tokens = sequences * seq_len
    lm_head = dims.hidden * dims.vocab
    decoder = dims.decoder_weights()
    projections = dims.projections()
    unknown = sorted(set(target_modules) - set(projections))
    if unknown:
        raise ValueError(f"target_modules {unknown} are not among {sorted(projections)}")
    adapter_weights = dims.layers * sum(lora_r * sum(projections[m]) for m in target_modules)
    attention_fwd = dims.layers * sequences * 4 * seq_len**2 * dims.heads * dims.head_dim
    decoder_fwd = 2 * decoder * tokens + 2 * adapter_weights * tokens + attention_fwd
    forward = decoder_fwd + 2 * lm_head * tokens
    backward = 2 * (decoder + lm_head) * tokens + 4 * adapter_weights * tokens + 2 * attention_fwd
    recompute = decoder_fwd if gradient_checkpointing else 0
    return float(forward + backward + recompute)


def mfu(flops_per_step: float | None, step_ms: float | None, peak_tflops: float | None) -> float | None:
    """Achieved FLOP/s over the peak; None when any input is unknown."""
    if not flops_per_step or not step_ms or not peak_tflops:
        return None
    return flops_per_step / (step_ms / 1000.0) / (peak_tflops * 1e12)
