"""`Case`: one frozen, validated description of a QLoRA (or 16-bit LoRA reference) run.

Every axis of the matrix is a field. Validation collects every problem into one `CaseError`
that names the field and the allowed values, so a bad matrix fails before any heavy work.
`case.id` is readable and used as the pytest id; `case.hash` is stable across runs, machines and
Python versions (sha256 of the canonical JSON of the fields; fields added later count only when
they differ from their default, see `LATER_FIELDS`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

QuantType = Literal["nf4", "fp4", "int8", "none"]
ComputeDtype = Literal["fp16", "bf16", "fp32"]
QuantStorage = Literal["uint8", "fp16", "bf16", "fp32"]
Optimizer = Literal["adamw", "adamw_8bit", "paged_adamw_8bit"]
DataKind = Literal["synthetic", "text"]
Engine = Literal["loop", "trainer", "sft"]
Strategy = Literal["single", "ddp", "fsdp"]

QUANT_TYPES: tuple[str, ...] = ("nf4", "fp4", "int8", "none")
FOUR_BIT_TYPES: tuple[str, ...] = ("nf4", "fp4")
COMPUTE_DTYPES: tuple[str, ...] = ("fp16", "bf16", "fp32")
QUANT_STORAGES: tuple[str, ...] = ("uint8", "fp16", "bf16", "fp32")
OPTIMIZERS: tuple[str, ...] = ("adamw", "adamw_8bit", "paged_adamw_8bit")
DATA_KINDS: tuple[str, ...] = ("synthetic", "text")
HELDOUT_WINDOWS = 16
"""Held-out windows (of `seq_len` tokens each) a text case's perplexity reads, before and after training."""
ENGINES: tuple[str, ...] = ("loop", "trainer", "sft")
STRATEGIES: tuple[str, ...] = ("single", "ddp", "fsdp")
MAX_GPUS = 64
# The lesson's LoRA recipe targets all seven projections of a Llama-style decoder.
LESSON_TARGET_MODULES: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


class CaseError(ValueError):
    """A Case (or a set of Case arguments) is invalid; `problems` lists every reason."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid case:\n  - " + "\n  - ".join(problems))


@dataclass(frozen=True)
class Case:
    """One run of the matrix. Field docstrings double as the documentation of the axes."""

    model: str
    """Architecture shape name (see `models.SHAPES`), the real model `smollm2-135m-instruct`,
    a local checkpoint path, or a hub id (org/name)."""
    quant_type: QuantType = "nf4"
    """4-bit data type; `none` is the 16-bit LoRA reference (weights in `compute_dtype`); `int8` is
    bitsandbytes' 8-bit weights (`load_in_8bit`, LLM.int8()), loaded only or with LoRA over them."""
    double_quant: bool = True
    """bnb_4bit_use_double_quant: quantize the per-block absmax scaling factors again."""
    compute_dtype: ComputeDtype = "bf16"
    """bnb_4bit_compute_dtype; for the 16-bit reference, the dtype of the weights (fp16/bf16)."""
    quant_storage: QuantStorage = "uint8"
    """bnb_4bit_quant_storage: the dtype that packs the 4-bit values."""
    batch_size: int = 1
    seq_len: int = 512
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step; each measured step is one optimizer step."""
    gradient_checkpointing: bool = True
    prepare_kbit: bool = True
    """Apply peft's prepare_model_for_kbit_training (casts non-quantized params to fp32)."""
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = LESSON_TARGET_MODULES
    optimizer: Optimizer = "adamw"
    lr: float = 2e-4
    warmup_steps: int = 2
    """Optimizer steps run before timing starts (CUDA kernels compile, allocator warms up)."""
    measured_steps: int = 10
    """Optimizer steps measured after warm-up: the minimum, where adaptive pacing may add more
    (`engines.pacing`); exactly this many for a case of `fixed_steps`."""
    seed: int = 0
    data: DataKind = "synthetic"
    """synthetic: seeded random tokens (speed, memory); text: Python's docs (loss, perplexity).
    A case on text trains a fixed number of steps on every device (`fixed_steps`)."""
    extra: tuple[tuple[str, str], ...] = field(default=())
    """Test-only knobs (e.g. ('fault', 'exit')) for outcome-classification tests; part of the id."""
    # -- fields added after runs were stored: see LATER_FIELDS (hashed only when not default) --
    engine: Engine = "loop"
    """How the case trains: `loop` (the core loop, mixed precision under autocast),
    `trainer` (transformers.Trainer) or `sft` (TRL's SFTTrainer), on the same token batches."""
    # multi-GPU: launched through `accelerate launch` (qlora_core.process.distributed)
    num_gpus: int = 1
    """Ranks the case trains on, one GPU each (one process each on the CPU), data-parallel:
    every rank trains `batch_size` rows per micro-batch, so a step covers `num_gpus` times more."""
    strategy: Strategy = "single"
    """How the ranks share the model: `fsdp` (FSDP shards the 4-bit weights, stored in the
    compute dtype), `ddp` (every rank holds the whole model); `single` for one rank."""
    cpu_offload: bool = False
    """FSDP's CPU offload of the parameters (accelerate's `fsdp_offload_params`; id tag `-offload`):
    each rank keeps its shard of the parameters and their gradients in pinned host RAM, copies a
    wrapped layer to its GPU for that layer's forward and backward, and steps the optimizer on the
    CPU. The FSDP-QLoRA recipe for a model larger than the cards (70B on two 24 GB GPUs). FSDP only."""
    prequantized: bool = False
    """Load a pre-quantized 4-bit checkpoint, as users load one (`from_pretrained(path)`), instead
    of quantizing 16-bit weights at load: for a shape, the checkpoint built layer by layer for this
    case's quant_type, double_quant, compute_dtype and quant_storage (`models.prequantized`; no
    16-bit checkpoint is written); for a local directory, its `quantization_config` must agree."""
    # weights by precision
    load_only: bool = False
    """Stop after loading the weights (the `weights` family): weight bytes, allocator and NVML
    after load, no training. Only a load-only case may hold unquantized fp32 weights."""

    def __post_init__(self) -> None:
        if self.quant_type in ("none", "int8"):
            # Not applicable to the 16-bit reference (nor double quantization to 8-bit weights):
            # normalized so the defaults just work and equal cases hash equally.
            object.__setattr__(self, "double_quant", False)
        if self.quant_type == "none" or self.load_only is True:
            # prepare_model_for_kbit_training runs after the load, which a load-only case stops at.
            object.__setattr__(self, "prepare_kbit", False)
        problems = validate(self)
        if problems:
            raise CaseError(problems)

    # -- identity --------------------------------------------------------------------------
    @property
    def id(self) -> str:
        """Readable id: `<model>-<quant>[-dq]-<dtype>-b<batch>-s<seq>` plus non-default axes."""
        model = self.model.rstrip("/").split("/")[-1].lower()
        quant: str = self.quant_type
        if quant == "none":
            # Unquantized weights: the 16-bit LoRA reference, or a load-only case's dense weights.
            quant = "dense" if self.load_only else "lora16"
        parts = [model, quant]
        if self.quant_type != "none" and self.double_quant:
            parts.append("dq")
        parts += [self.compute_dtype, f"b{self.batch_size}", f"s{self.seq_len}"]
        defaults = _DEFAULTS
        if self.grad_accum != 1:
            parts.append(f"ga{self.grad_accum}")
        if not self.gradient_checkpointing:
            parts.append("nogc")
        if not self.prepare_kbit and self.is_quantized and not self.load_only:
            parts.append("noprep")
        if self.quant_storage != defaults["quant_storage"]:
            parts.append(f"qs-{self.quant_storage}")
        if (self.lora_r, self.lora_alpha) != (defaults["lora_r"], defaults["lora_alpha"]):
            parts.append(f"r{self.lora_r}a{self.lora_alpha}")
        if self.lora_dropout != defaults["lora_dropout"]:
            parts.append(f"do{self.lora_dropout:g}")
        if self.target_modules != defaults["target_modules"]:
            parts.append("tm-" + "+".join(m.replace("_proj", "") for m in self.target_modules))
        if self.optimizer != defaults["optimizer"]:
            parts.append(self.optimizer.replace("_", ""))
        if self.lr != defaults["lr"]:
            parts.append(f"lr{self.lr:g}")
        if (self.warmup_steps, self.measured_steps) != (
            defaults["warmup_steps"],
            defaults["measured_steps"],
        ):
            parts.append(f"w{self.warmup_steps}m{self.measured_steps}")
        if self.seed != defaults["seed"]:
            parts.append(f"seed{self.seed}")
        if self.data != defaults["data"]:
            parts.append(self.data)
        if self.engine != defaults["engine"]:
            parts.append(self.engine)
        if self.num_gpus != 1 or self.strategy != defaults["strategy"]:
            parts.append(f"{self.num_gpus}gpu-{self.strategy}")
        if self.cpu_offload:
            parts.append("offload")
        if self.prequantized:
            parts.append("preq")
        if self.load_only:
            parts.append("load")
        parts += [f"{k}-{v}" for k, v in self.extra]
        return "-".join(parts)

    @property
    def hash(self) -> str:
        """12 hex digits of sha256 over the canonical JSON of the fields (see `LATER_FIELDS`)."""
        hashed = {
            name: value
            for name, value in self.to_dict().items()
            if name not in LATER_FIELDS or value != _DEFAULTS[name]
        }
        canonical = json.dumps(hashed, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    # -- (de)serialization ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["target_modules"] = list(self.target_modules)
        out["extra"] = [list(kv) for kv in self.extra]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Case:
        """Inverse of `to_dict`; unknown keys are an error that lists the known ones."""
        unknown = sorted(set(data) - set(FIELD_NAMES))
        if unknown:
            raise CaseError([f"unknown field(s) {unknown}; known fields: {list(FIELD_NAMES)}"])
        kwargs = dict(data)
        if "target_modules" in kwargs:
            kwargs["target_modules"] = tuple(kwargs["target_modules"])
        if "extra" in kwargs:
            kwargs["extra"] = tuple(tuple(kv) for kv in kwargs["extra"])
        return cls(**kwargs)

    def replace(self, **changes: Any) -> Case:
        """A new validated Case with some fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def is_quantized(self) -> bool:
        """Weights held by bitsandbytes (4-bit, or 8-bit for a load-only case)."""
        return self.quant_type != "none"

    @property
    def fixed_steps(self) -> bool:
        """The case trains exactly `warmup_steps + measured_steps` optimizer steps on every device,
        alone or side by side: no adaptive pacing, and a profiler window inside those steps
        (`engines.pacing.fixed_plan`). True for a case on text, the data whose losses and
        perplexities the claims compare between rows (the quality, stability and nan families):
        steps added by the device's pace made "final loss" mean different steps in the two rows of
        a pair. Derived from `data`, so no case id or hash changes."""
        return self.data == "text"

    @property
    def tokens_per_step(self) -> int:
        """Tokens processed by one optimizer step, over all ranks."""
        return self.batch_size * self.seq_len * self.grad_accum * self.num_gpus


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_choice(problems: list[str], name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        problems.append(f"{name}={value!r} is not one of {list(allowed)}")


def _check_int(problems: list[str], name: str, value: object, low: int, high: int) -> None:
    if not _is_int(value) or not low <= value <= high:  # type: ignore[operator]
        problems.append(f"{name}={value!r} must be an integer in [{low}, {high}]")


def _check_bool(problems: list[str], name: str, value: object) -> None:
    if not isinstance(value, bool):
        problems.append(f"{name}={value!r} must be True or False")


def validate(case: Case) -> list[str]:
    """Every problem with `case`, each naming the field and what is allowed; [] if valid."""
    p: list[str] = []
    if not isinstance(case.model, str) or not case.model.strip():
        p.append(f"model={case.model!r} must be a non-empty string (shape name, path or hub id)")
    _check_choice(p, "quant_type", case.quant_type, QUANT_TYPES)
    _check_bool(p, "double_quant", case.double_quant)
    _check_choice(p, "compute_dtype", case.compute_dtype, COMPUTE_DTYPES)
    _check_choice(p, "quant_storage", case.quant_storage, QUANT_STORAGES)
    _check_int(p, "batch_size", case.batch_size, 1, 4096)
    _check_int(p, "seq_len", case.seq_len, 8, 131072)
    _check_int(p, "grad_accum", case.grad_accum, 1, 4096)
    _check_bool(p, "gradient_checkpointing", case.gradient_checkpointing)
    _check_bool(p, "prepare_kbit", case.prepare_kbit)
    _check_int(p, "lora_r", case.lora_r, 1, 4096)
    _check_int(p, "lora_alpha", case.lora_alpha, 1, 65536)
    if (
        not isinstance(case.lora_dropout, (int, float))
        or isinstance(case.lora_dropout, bool)
        or not (0.0 <= case.lora_dropout < 1.0)
    ):
        p.append(f"lora_dropout={case.lora_dropout!r} must be a number in [0, 1)")
    if (
        not isinstance(case.target_modules, tuple)
        or not case.target_modules
        or not all(isinstance(m, str) and m for m in case.target_modules)
        or len(set(case.target_modules)) != len(case.target_modules)
    ):
        p.append(
            f"target_modules={case.target_modules!r} must be a non-empty tuple of distinct module"
            f" names, e.g. {list(LESSON_TARGET_MODULES)}"
        )
    _check_choice(p, "optimizer", case.optimizer, OPTIMIZERS)
    if not isinstance(case.lr, (int, float)) or isinstance(case.lr, bool) or not 0 < case.lr < 1e6:
        p.append(f"lr={case.lr!r} must be a positive number")
    _check_int(p, "warmup_steps", case.warmup_steps, 0, 100000)
    _check_int(p, "measured_steps", case.measured_steps, 1, 100000)
    _check_int(p, "seed", case.seed, 0, 2**31 - 1)
    _check_choice(p, "data", case.data, DATA_KINDS)
    _check_choice(p, "engine", case.engine, ENGINES)
    _check_int(p, "num_gpus", case.num_gpus, 1, MAX_GPUS)
    _check_choice(p, "strategy", case.strategy, STRATEGIES)
    _check_bool(p, "cpu_offload", case.cpu_offload)
    _check_bool(p, "prequantized", case.prequantized)
    if case.prequantized is True and case.quant_type == "none":
        p.append("prequantized=True with quant_type='none': a pre-quantized checkpoint is 4-bit (nf4, fp4)")
    _check_bool(p, "load_only", case.load_only)
    if not isinstance(case.extra, tuple) or not all(
        isinstance(kv, tuple) and len(kv) == 2 and all(isinstance(s, str) for s in kv) for kv in case.extra
    ):
        p.append(f"extra={case.extra!r} must be a tuple of (key, value) string pairs")
    # Cross-field rules.
    if case.quant_type in ("none", "int8"):
        if case.quant_type == "none" and case.compute_dtype == "fp32" and case.load_only is not True:
            p.append(
                "compute_dtype='fp32' with quant_type='none': the 16-bit reference needs fp16 or bf16"
                " (fp32 weights only with load_only=True)"
            )
        if case.quant_storage != "uint8":
            p.append(
                f"quant_storage applies only to 4-bit quant types; leave it 'uint8' for {case.quant_type!r}"
            )
    if case.load_only is True and case.num_gpus != 1:
        p.append(f"load_only=True with num_gpus={case.num_gpus}: a load-only case loads on one GPU")
    p += _multi_gpu_problems(case)
    return p


def _multi_gpu_problems(case: Case) -> list[str]:
    """Cross-field rules of the multi-GPU axes."""
    p: list[str] = []
    if not _is_int(case.num_gpus) or case.strategy not in STRATEGIES:
        return p  # reported above
    if (case.num_gpus > 1) != (case.strategy != "single"):
        p.append(
            f"num_gpus={case.num_gpus} with strategy={case.strategy!r}: one GPU is strategy 'single',"
            f" more need one of {[s for s in STRATEGIES if s != 'single']}"
        )
    if case.num_gpus > 1:
        if case.engine != "trainer":
            p.append(f"engine={case.engine!r} with num_gpus > 1: multi-GPU cases train with 'trainer'")
        if case.data != "synthetic":
            p.append("data='text' with num_gpus > 1: held-out perplexity runs on one GPU; use 'synthetic'")
    if case.strategy == "fsdp" and case.is_quantized and case.quant_storage != case.compute_dtype:
        # FSDP shards float tensors; bitsandbytes packs 4-bit values into the storage dtype.
        p.append(
            f"strategy='fsdp' needs quant_storage equal to compute_dtype ({case.compute_dtype!r}),"
            f" got {case.quant_storage!r}: FSDP shards the 4-bit weights only in a float storage dtype"
        )
    if case.cpu_offload is True and case.strategy != "fsdp":
        # DDP keeps every parameter on every GPU; only FSDP shards, and offloads, them.
        p.append(
            f"cpu_offload=True with strategy={case.strategy!r}: CPU offload of the sharded parameters is"
            " FSDP's (accelerate's fsdp_offload_params); use strategy='fsdp' with num_gpus > 1"
        )
    if case.strategy == "fsdp" and case.prepare_kbit:
        # FSDP flattens each wrapped layer into one tensor of one dtype; prepare casts the layer's
        # norms to fp32 beside weights stored in the compute dtype. peft's FSDP-QLoRA recipe (and
        # TRL, for sharded QLoRA) leaves prepare out.
        p.append("strategy='fsdp' needs prepare_kbit=False: prepare's fp32 norms cannot share an FSDP unit")
    return p


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Case))
# The hash rule. Stored results and baselines are keyed by `Case.hash`, the sha256 of every field
# as of the first release. A field added later enters the hash only when it differs from its
# default, so every case that existed before it keeps its hash (and its stored runs), while a case
# that sets it gets a new one. Add each new field here, with a default that means "as before".
LATER_FIELDS: tuple[str, ...] = (
    "engine",
    "num_gpus",
    "strategy",
    "prequantized",
    "load_only",
    "cpu_offload",
)
_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(Case) if f.default is not dataclasses.MISSING
}
LATER_FIELD_DEFAULTS: dict[str, Any] = {name: _DEFAULTS[name] for name in LATER_FIELDS}
"""What a row stored before a later field existed had: the field's default ("as before")."""


def reference_of(case: Case) -> Case:
    """The 16-bit LoRA reference at the same point (same model, batch, length, LoRA, optimizer)."""
    dtype = case.compute_dtype if case.compute_dtype != "fp32" else "bf16"
    return case.replace(quant_type="none", compute_dtype=dtype, quant_storage="uint8", prequantized=False)
