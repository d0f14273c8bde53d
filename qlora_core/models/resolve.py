"""Model resolution: a Case's model name -> a directory (or hub id) `from_pretrained` accepts.

Every source ends as something `AutoModelForCausalLM.from_pretrained(path, ...)` accepts, so the
4-bit loader treats them all alike: a shape's cached random-init checkpoint, the converted real
model, a local checkpoint directory (passed through), or a hub id (only where a hub is reachable).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from qlora_core.models.cache import build_once, is_complete
from qlora_core.models.prequantized import (
    PREQUANT_RECIPE,
    check_prequantized_dir,
    prequant_dir,
    write_prequantized_checkpoint,
)
from qlora_core.models.real import REAL_RECIPE, materialize_real_model, real_dir
from qlora_core.models.registry import (
    NO_16BIT_CHECKPOINT,
    REAL_MODEL,
    SHAPE_RECIPE,
    SHAPES,
    ModelUnavailableError,
    Prequant,
    ShapeSpec,
    is_hub_id,
    model_problem,
)
from qlora_core.models.shapes import default_device, shape_dir, write_shape_checkpoint

Source = Literal["shape", "real", "local", "hub"]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass(frozen=True)
class ResolvedModel:
    """Where to load a model from: `from_pretrained(path)` accepts `path`."""

    name: str
    source: Source
    path: str
    """Checkpoint directory, or hub id."""
    tokenizer_path: str | None
    """Where `AutoTokenizer.from_pretrained` finds the tokenizer; None for random-init shapes."""
    vocab_size: int


def _config_vocab_size(where: str) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(where).get_text_config().vocab_size)


def _resolve_local(name: str, path: Path) -> ResolvedModel:
    if not (path / "config.json").is_file():
        raise ModelUnavailableError(
            f"local model directory {path} has no config.json; give a directory written by save_pretrained"
        )
    has_tokenizer = any((path / f).is_file() for f in _TOKENIZER_FILES)
    return ResolvedModel(
        name=name,
        source="local",
        path=str(path),
        tokenizer_path=str(path) if has_tokenizer else None,
        vocab_size=_config_vocab_size(str(path)),
    )


def _resolve_hub(name: str) -> ResolvedModel:
    try:
        vocab_size = _config_vocab_size(name)
    except (OSError, ValueError) as error:
        raise ModelUnavailableError(
            f"hub id {name!r}: could not fetch its config ({type(error).__name__}: {error}). A hub id works"
            f" only where the hub is reachable; otherwise pass a local checkpoint directory or a shape"
            f" name ({sorted(SHAPES)})."
        ) from error
    return ResolvedModel(name=name, source="hub", path=name, tokenizer_path=name, vocab_size=vocab_size)


def _check_disk(final: Path, needed_bytes: int, what: str) -> None:
    """Refuse, before writing anything, a checkpoint the cache's disk cannot hold (a 70B shape's
    16-bit checkpoint, 138 GB, on a 64 GiB disk would fill it and fail after minutes)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(final.parent).free
    if needed_bytes > free:
        raise ModelUnavailableError(
            f"{what} needs {needed_bytes / 1e9:.1f} GB on disk, {final.parent} has {free / 1e9:.1f} GB free;"
            " a 4-bit case can load a pre-quantized checkpoint instead (Case prequantized=True)"
        )


def _bf16_bytes(spec: ShapeSpec) -> int:
    return 2 * spec.total_params


def _prequant_bytes(spec: ShapeSpec) -> int:
    """Upper bound of a 4-bit checkpoint: half a byte per quantized weight plus 5% for the
    statistics (blocksize 64: at most 4 bytes per 64 weights, 12.5%/2), 2 bytes for the rest."""
    return int(spec.linear_params * 0.5 * 1.13) + 2 * (spec.total_params - spec.linear_params)


def is_materialized(name: str, prequant: Prequant | None = None) -> bool:
    """True when `name` needs no creation or conversion before loading (cheap: reads a marker).

    Shapes and the real model are materialized once into the cache; paths and hub ids need
    nothing from us.
    """
    if name in SHAPES and prequant is not None:
        return is_complete(prequant_dir(SHAPES[name], prequant), PREQUANT_RECIPE)
    if name in SHAPES:
        return is_complete(shape_dir(SHAPES[name]), SHAPE_RECIPE)
    if name == REAL_MODEL:
        return is_complete(real_dir(), REAL_RECIPE)
    return True


def _resolve_prequantized_shape(spec: ShapeSpec, prequant: Prequant, device: str) -> ResolvedModel:
    final = prequant_dir(spec, prequant)

    def build(out: Path) -> dict[str, Any]:
        return write_prequantized_checkpoint(spec, prequant, out, device)

    if not is_complete(final, PREQUANT_RECIPE):
        _check_disk(final, _prequant_bytes(spec), f"the {prequant.label} checkpoint of {spec.name}")
    path = build_once(final, PREQUANT_RECIPE, build)
    return ResolvedModel(spec.name, "shape", str(path), None, spec.vocab_size)


def resolve_model(name: str, *, device: str | None = None, prequant: Prequant | None = None) -> ResolvedModel:
    """Materialize what `name` needs and say where to load it from.

    A shape's checkpoint is created on first use (random init on `device`, default cuda if present
    else cpu): its 16-bit checkpoint, or with `prequant` its pre-quantized 4-bit checkpoint built
    layer by layer; the real model is downloaded and converted on first use. A local directory
    given with `prequant` must be a 4-bit checkpoint of those settings (CaseError otherwise).
    Raises ModelUnavailableError when the model cannot be provided.
    """
    if name in SHAPES:
        spec = SHAPES[name]
        target = device or default_device()
        if prequant is not None:
            return _resolve_prequantized_shape(spec, prequant, target)
        if name in NO_16BIT_CHECKPOINT:
            raise ModelUnavailableError(
                f"{name} has no 16-bit checkpoint ({_bf16_bytes(spec) / 1e9:.0f} GB is never written); its"
                " 4-bit cases load a pre-quantized checkpoint (Case prequantized=True)"
            )

        def build(out: Path) -> dict[str, Any]:
            return write_shape_checkpoint(spec, out, target)

        if not is_complete(shape_dir(spec), SHAPE_RECIPE):
            _check_disk(shape_dir(spec), _bf16_bytes(spec), f"the 16-bit checkpoint of {spec.name}")
        path = build_once(shape_dir(spec), SHAPE_RECIPE, build)
        return ResolvedModel(name, "shape", str(path), None, spec.vocab_size)
    if prequant is not None and not Path(name).expanduser().is_dir():
        raise ModelUnavailableError(
            f"prequantized=True needs a shape ({sorted(SHAPES)}) or a local pre-quantized checkpoint"
            f" directory, not {name!r}"
        )
    if name == REAL_MODEL:
        real = materialize_real_model()
        return ResolvedModel(name, "real", str(real), str(real), _config_vocab_size(str(real)))
    path = Path(name).expanduser()
    if name.strip() and path.is_dir():
        if prequant is not None:
            check_prequantized_dir(path, prequant)
        return _resolve_local(name, path)
    if is_hub_id(name):
        return _resolve_hub(name)
    if path.is_absolute() or name.startswith((".", "~")) or os.sep in name:
        raise ModelUnavailableError(f"local model path {path} does not exist")
    raise ModelUnavailableError(str(model_problem(name)))
