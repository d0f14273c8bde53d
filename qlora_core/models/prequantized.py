"""Pre-quantized bitsandbytes 4-bit checkpoints of a shape, built one tensor at a time (a 70B
shape's 16-bit checkpoint, 138 GB, never exists), loadable as users load a pre-quantized
checkpoint. Peak memory: one 16-bit tensor on the device, one shard (`_SHARD_BYTES`) on the host.
See docs/matrix.md#70b-on-one-card.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from qlora_core.cases.case import CaseError
from qlora_core.models.cache import cache_dir, library_versions
from qlora_core.models.registry import INIT_SEED, SHAPE_RECIPE, ModelUnavailableError, Prequant, ShapeSpec
from qlora_core.models.shapes import build_meta_model, draw_param_

if TYPE_CHECKING:  # typing only: transformers is imported where a model is built, not here
    from transformers import PreTrainedModel

PREQUANT_RECIPE = f"prequant-v1: layer by layer, Params4bit quantize, save_pretrained layout; {SHAPE_RECIPE}"
_SHARD_BYTES = 2 * 10**9
_DTYPES: dict[str, torch.dtype] = {
    "uint8": torch.uint8,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp32": torch.float32,
}
INDEX_FILE = "model.safetensors.index.json"


def prequant_dir(spec: ShapeSpec, prequant: Prequant) -> Path:
    """The cache directory of `spec`'s pre-quantized checkpoint (it may not exist yet)."""
    return cache_dir() / "prequantized" / f"{spec.name}-{spec.config_hash}-{prequant.label}"


def bnb_config_of(prequant: Prequant) -> Any:
    """The BitsAndBytesConfig a user would have quantized with (fp32 compute: the default)."""
    from transformers import BitsAndBytesConfig

    kwargs: dict[str, Any] = {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": prequant.quant_type,
        "bnb_4bit_use_double_quant": prequant.double_quant,
        "bnb_4bit_quant_storage": _DTYPES[prequant.quant_storage],
    }
    if prequant.compute_dtype != "fp32":
        kwargs["bnb_4bit_compute_dtype"] = _DTYPES[prequant.compute_dtype]
    return BitsAndBytesConfig(**kwargs)


def _quantized_weight_names(model: PreTrainedModel) -> set[str]:
    """Weights transformers quantizes: the decoder's nn.Linear layers (lm_head stays 16-bit)."""
    decoder = model.get_decoder()
    prefix = next(name for name, module in model.named_modules() if module is decoder)
    return {
        f"{prefix}.{name}.weight"
        for name, module in decoder.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


def _quantize(weight: torch.Tensor, prequant: Prequant) -> dict[str, torch.Tensor]:
    """`weight` as Linear4bit saves it: the packed data and its packed QuantState, keyed by suffix."""
    import bitsandbytes as bnb

    param = bnb.nn.Params4bit(
        weight,
        requires_grad=False,
        compress_statistics=prequant.double_quant,
        quant_type=prequant.quant_type,
        quant_storage=_DTYPES[prequant.quant_storage],
    )._quantize(weight.device)
    entries = {"": param.data}
    entries |= {f".{key}": value for key, value in param.quant_state.as_dict(packed=True).items()}
    return entries


class _ShardWriter:
    """Writes tensors into numbered safetensors shards, then names them `-of-N` and indexes them."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.files: list[tuple[str, list[str]]] = []  # (temp file name, its keys)
        self.total_bytes = 0

    def add(self, key: str, tensor: torch.Tensor) -> None:
        tensor = tensor.detach().to("cpu").contiguous()
        self.pending[key] = tensor
        size = tensor.numel() * tensor.element_size()
        self.pending_bytes += size
        self.total_bytes += size

    def flush_if_full(self) -> None:
        if self.pending_bytes >= _SHARD_BYTES:
            self.flush()

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.pending:
            return
        name = f"shard-{len(self.files):05d}.tmp"
        save_file(self.pending, str(self.out / name), metadata={"format": "pt"})
        self.files.append((name, sorted(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> None:
        self.flush()
        count = len(self.files)
        weight_map: dict[str, str] = {}
        for number, (temp, keys) in enumerate(self.files, start=1):
            final = f"model-{number:05d}-of-{count:05d}.safetensors"
            os.rename(self.out / temp, self.out / final)
            weight_map |= dict.fromkeys(keys, final)
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


@torch.no_grad()
def write_prequantized_checkpoint(
    spec: ShapeSpec, prequant: Prequant, out: Path, device: str
) -> dict[str, Any]:
    """Write `spec` (seeded random weights, as its 16-bit checkpoint has them) as a pre-quantized
    bnb 4-bit checkpoint into `out`, one tensor at a time; facts for the cache marker."""
    model = build_meta_model(spec)
    quantized = _quantized_weight_names(model)
    std = model.config.initializer_range
    generator = torch.Generator(device=device).manual_seed(INIT_SEED)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    writer = _ShardWriter(out)
    # named_parameters lists a tied weight once, in the order write_shape_checkpoint draws them.
    for name, meta in model.named_parameters():
        value = torch.empty(meta.shape, dtype=meta.dtype, device=device)
        draw_param_(name, value, std, generator)
        if name in quantized:
            for suffix, tensor in _quantize(value, prequant).items():
                writer.add(name + suffix, tensor)
        else:
            writer.add(name, value)
        del value
        writer.flush_if_full()
    writer.finish()
    model.config.quantization_config = bnb_config_of(prequant)
    model.config.dtype = torch.bfloat16  # the non-quantized tensors' dtype, as save_pretrained records
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    peak_device = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return {
        "source": "prequantized",
        "shape": spec.name,
        "prequant": prequant.label,
        "device": device,
        "bytes": writer.total_bytes,
        "peak_device_alloc_gib": peak_device,
        **library_versions(),
    }


def prequant_problems(prequant: Prequant, config: dict[str, Any]) -> list[str]:
    """How a checkpoint's config.json disagrees with the settings a Case expects; [] if it agrees."""
    found = config.get("quantization_config")
    if (
        not isinstance(found, dict)
        or found.get("quant_method") != "bitsandbytes"
        or not found.get("load_in_4bit")
    ):
        return ["its config.json has no bitsandbytes 4-bit quantization_config: it is not pre-quantized"]
    compute = found.get("bnb_4bit_compute_dtype") or "float32"
    names = {"uint8": "uint8", "fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
    expected = {
        "bnb_4bit_quant_type": (prequant.quant_type, found.get("bnb_4bit_quant_type")),
        "bnb_4bit_use_double_quant": (prequant.double_quant, found.get("bnb_4bit_use_double_quant")),
        "bnb_4bit_quant_storage": (names[prequant.quant_storage], found.get("bnb_4bit_quant_storage")),
        "bnb_4bit_compute_dtype": (names[prequant.compute_dtype], compute),
    }
    return [
        f"{key}: the case asks {want!r}, the checkpoint has {have!r}"
        for key, (want, have) in expected.items()
        if want != have
    ]


def check_prequantized_dir(path: Path, prequant: Prequant) -> None:
    """Raise CaseError unless `path` is a bnb 4-bit checkpoint of `prequant`'s settings.

    A pre-quantized checkpoint fixes its quantization (from_pretrained takes it from config.json),
    so a Case that says otherwise would measure something else than its id says.
    """
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as error:
        problem = f"pre-quantized checkpoint {path}: unreadable config.json ({error})"
        raise ModelUnavailableError(problem) from error
    problems = prequant_problems(prequant, config)
    if problems:
        where = f"pre-quantized checkpoint {path} does not match the case ({prequant.label})"
        raise CaseError([f"{where}: {problem}" for problem in problems])
