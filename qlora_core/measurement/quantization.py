"""In-process measurements of bitsandbytes' 4-bit quantization itself (no training).

- `code_tables`: the 16 values NF4 and FP4 really use, read from bitsandbytes.
- `quant_state_layout`: what the scaling factors are stored as, with and without double
  quantization (dtype, bits, block sizes), read from a real QuantState.
- `reconstruction_errors`: per-layer relative error ||W - deq(q(W))|| / ||W|| of real weights.
- `kernel_ops`: the quantize / dequantize / 4-bit matmul callables that `bench/test_kernels.py`
  times.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from qlora_core.measurement.memory import quant_state_bytes

QUANT_TYPES_4BIT: tuple[str, ...] = ("nf4", "fp4")
BLOCKSIZE = 64  # what transformers' 4-bit loading uses (bnb_4bit_blocksize default)


def code_tables(device: str = "cpu") -> list[dict[str, Any]]:
    """Rows (quant_type, index, value): the code book each 4-bit type dequantizes through."""
    import bitsandbytes.functional as F

    rows = []
    for quant in QUANT_TYPES_4BIT:
        values = F.get_4bit_type(quant, device=device).float().cpu().tolist()
        rows += [{"quant_type": quant, "index": i, "value": v} for i, v in enumerate(values)]
    return rows


def quant_state_layout(device: str = "cpu") -> list[dict[str, Any]]:
    """How the per-block scaling factors are stored, with and without double quantization."""
    import bitsandbytes.functional as F

    weight = torch.randn(1024, 4096, dtype=torch.bfloat16, device=device)
    rows = []
    for dq in (False, True):
        _, state = F.quantize_4bit(weight, blocksize=BLOCKSIZE, quant_type="nf4", compress_statistics=dq)
        nested = state.state2 if state.nested else None
        rows.append(
            {
                "double_quant": dq,
                "blocksize": state.blocksize,
                "absmax_dtype": str(state.absmax.dtype).removeprefix("torch."),
                "absmax_bits": state.absmax.element_size() * 8,
                "nested_absmax_dtype": str(nested.absmax.dtype).removeprefix("torch.") if nested else "",
                "nested_blocksize": nested.blocksize if nested else None,
                "stats_bits_per_param": _stats_bits(state) / weight.numel(),
            }
        )
    return rows


def _stats_bits(state: Any) -> float:
    return quant_state_bytes(state) * 8.0


def reconstruction_errors(
    named_weights: Iterable[tuple[str, torch.Tensor]], device: str = "cpu"
) -> list[dict[str, Any]]:
    """Rows (layer, quant_type, double_quant, rel_error, numel) for every weight and 4-bit config."""
    import bitsandbytes.functional as F

    rows = []
    for name, weight in named_weights:
        w = weight.detach().to(device=device, dtype=torch.bfloat16)
        ref = w.float()
        norm = float(ref.norm())
        for quant in QUANT_TYPES_4BIT:
            for dq in (False, True):
                packed, state = F.quantize_4bit(
                    w, blocksize=BLOCKSIZE, quant_type=quant, compress_statistics=dq
                )
                restored = F.dequantize_4bit(packed, state).float()
                rows.append(
                    {
                        "layer": name,
                        "quant_type": quant,
                        "double_quant": dq,
                        "rel_error": float((restored - ref).norm()) / norm if norm else 0.0,
                        "numel": w.numel(),
                    }
                )
    return rows


def linear_weights(model: torch.nn.Module, suffixes: tuple[str, ...]) -> list[tuple[str, torch.Tensor]]:
    """(name, weight) of the nn.Linear layers whose name ends with one of `suffixes`."""
    return [
        (name, module.weight)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.split(".")[-1] in suffixes
    ]


def kernel_ops(quant_type: str, size: int, device: str) -> dict[str, Callable[[], Any]]:
    """Zero-argument callables for quantize, dequantize and a 4-bit matmul on a size x size
    bf16 weight; each synchronizes on CUDA so a wall-clock timer measures the kernel."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    gen = torch.Generator(device="cpu").manual_seed(0)
    weight = (torch.randn(size, size, generator=gen) * 0.02).to(device=device, dtype=torch.bfloat16)
    x = torch.randn(16, size, generator=gen).to(device=device, dtype=torch.bfloat16)
    packed, state = F.quantize_4bit(weight, blocksize=BLOCKSIZE, quant_type=quant_type)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def quantize() -> None:
        F.quantize_4bit(weight, blocksize=BLOCKSIZE, quant_type=quant_type)
        sync()

    def dequantize() -> None:
        F.dequantize_4bit(packed, state)
        sync()

    def matmul() -> None:
        bnb.matmul_4bit(x, packed.t(), quant_state=state)
        sync()

    return {"quantize": quantize, "dequantize": dequantize, "matmul": matmul}
