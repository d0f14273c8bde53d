"""Lanes on a card: each shareable case's share of the device's memory, and which cases run alone.

`lane_share_gib` sizes a case's share from `estimated_need_gib` (a scheduling estimate, never
reported), `card_budget_gib` bounds the shares running at once, `alone_reason` and
`lane_rerun_reason` say which cases run alone. No torch here: the parent plans the lanes.
See docs/side-by-side.md#on-a-real-card-of-the-profile.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from qlora_core.cases.case import FOUR_BIT_TYPES, Case
from qlora_core.cases.gpus import DetectedGpu, GpuProfile, is_emulated
from qlora_core.measurement.result import Result, Status
from qlora_core.models.registry import REAL_MODEL, SHAPES, ShapeSpec

_GIB = 2**30
_SHAPE_OF_MODEL = {REAL_MODEL: "smollm2-135m"}  # the real model has the registered SmolLM2 shape

PROCESS_OVERHEAD_GIB = 1.0
"""A case's device memory outside its tensors: the CUDA context (0.51 GiB on the H200) and what
the process holds beyond its allocator (footprint minus reserved minus context: 0.24 GiB there)."""
OUTSIDE_ALLOCATOR_GIB = 0.5
"""What a lane's process holds on the device beyond its CUDA context and its caching allocator
(cuBLAS and bitsandbytes outside the allocator: 0.24 GiB on the H200), left out of its cap so
that the shares, not only the caps, fit the card."""
CARD_HEADROOM_GIB = 1.5
"""Of a real card, what the lanes leave unshared: the device's own use before any case (NVML's
base reading) and rounding."""

# Activation bytes per token and unit of shape: the fit model's terms (`reports.fit.model.
# ACTIVATION_TERMS`), each coefficient above its fit to the committed references (15.9 bytes
# x vocab, 1.6 x layers x hidden, +3.0 for a prepared 4-bit model, 14.8 x layers x (hidden +
# intermediate) without checkpointing, 9.4 for int8 weights checkpointed; 0.22 GiB constant).
_BYTES_PER_VOCAB = 20.0
_BYTES_PER_LAYER_HIDDEN = 2.5
_BYTES_PER_LAYER_HIDDEN_PREPARED = 4.0
_BYTES_PER_LAYER_UNIT_NO_CHECKPOINTING = 18.0
_BYTES_PER_LAYER_UNIT_INT8 = 12.0
_ACTIVATION_CONSTANT_GIB = 0.5
_OPTIMIZER_BYTES_PER_PARAM = {"adamw": 8.0, "adamw_8bit": 2.0, "paged_adamw_8bit": 2.0}
_ADAPTER_BYTES_PER_PARAM = 4 + 4  # fp32 adapters and their fp32 gradients
_STATS_BYTES_PER_WEIGHT = {"4bit": 4 / 64, "int8": 4 / 1024}  # absmax per 64-block; int8's row scales
_DTYPE_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}

LANE_MARGIN = 0.2
"""A lane's share above the estimated need: 20%, plus the case's largest allocation."""


def shape_of(model: str) -> ShapeSpec | None:
    return SHAPES.get(_SHAPE_OF_MODEL.get(model, model))


def _head_dim(shape: ShapeSpec) -> int:
    return shape.head_dim or shape.hidden_size // shape.num_heads


def lora_params(case: Case, shape: ShapeSpec) -> int:
    """The adapters' parameters: r x (in + out) of every targeted projection of every layer."""
    hidden, inter, head = shape.hidden_size, shape.intermediate_size, _head_dim(shape)
    dims = {
        "q_proj": (hidden, shape.num_heads * head),
        "k_proj": (hidden, shape.num_kv_heads * head),
        "v_proj": (hidden, shape.num_kv_heads * head),
        "o_proj": (shape.num_heads * head, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }
    per_layer = sum(sum(dims.get(m, (hidden, inter))) for m in case.target_modules)
    return case.lora_r * per_layer * shape.num_layers


def _prepared(case: Case) -> bool:
    return case.is_quantized and case.prepare_kbit


def weights_gib(case: Case, shape: ShapeSpec) -> float:
    """The weights as loaded (and prepared): the decoder's linear layers in 4 bits, 8 bits or the
    compute dtype with their statistics; the rest (embeddings, norms, lm_head) in the compute
    dtype, in fp32 once prepare_model_for_kbit_training cast them, plus autocast's 16-bit copy of
    the fp32 lm_head."""
    dtype_bytes = _DTYPE_BYTES[case.compute_dtype]
    linear, rest = shape.linear_params, shape.total_params - shape.linear_params
    if case.quant_type in FOUR_BIT_TYPES:
        linear_bytes = linear * (0.5 + _STATS_BYTES_PER_WEIGHT["4bit"])
    elif case.quant_type == "int8":
        linear_bytes = linear * (1 + _STATS_BYTES_PER_WEIGHT["int8"])
    else:
        linear_bytes = linear * dtype_bytes
    rest_bytes = rest * (max(4, dtype_bytes) if _prepared(case) else dtype_bytes)
    if _prepared(case) and case.compute_dtype != "fp32":
        rest_bytes += shape.vocab_size * shape.hidden_size * 2  # autocast's copy of lm_head
    return (linear_bytes + rest_bytes) / _GIB


def activations_gib(case: Case, shape: ShapeSpec) -> float:
    """The training step's activations, per micro-batch token, by the fit model's terms."""
    tokens = case.batch_size * case.seq_len
    layers_hidden = shape.num_layers * shape.hidden_size
    layer_units = shape.num_layers * (shape.hidden_size + shape.intermediate_size)
    per_token = _BYTES_PER_VOCAB * shape.vocab_size + _BYTES_PER_LAYER_HIDDEN * layers_hidden
    if case.quant_type in FOUR_BIT_TYPES and case.prepare_kbit:
        per_token += _BYTES_PER_LAYER_HIDDEN_PREPARED * layers_hidden
    if not case.gradient_checkpointing:
        per_token += _BYTES_PER_LAYER_UNIT_NO_CHECKPOINTING * layer_units
    elif case.quant_type == "int8":
        per_token += _BYTES_PER_LAYER_UNIT_INT8 * layer_units
    return _ACTIVATION_CONSTANT_GIB + tokens * per_token / _GIB


def estimated_need_gib(case: Case) -> float | None:
    """An upper estimate of the device memory `case` uses on one GPU (its CUDA context included):
    what a lane is sized from. None for a model without a registered shape or a multi-GPU case
    (such a case runs alone)."""
    shape = shape_of(case.model)
    if shape is None or case.num_gpus != 1:
        return None
    need = PROCESS_OVERHEAD_GIB + weights_gib(case, shape)
    if case.load_only:
        return need
    optimizer = _OPTIMIZER_BYTES_PER_PARAM.get(case.optimizer, 8.0)
    need += lora_params(case, shape) * (_ADAPTER_BYTES_PER_PARAM + optimizer) / _GIB
    return need + activations_gib(case, shape)


def largest_allocation_gib(case: Case) -> float:
    """A bound on the largest single tensor the case allocates: its fp32 logits (tokens x vocab)
    or an fp32 embedding-sized weight. A run whose reserved peak stayed this far below its cap
    never had an allocation refused by the cap."""
    shape = shape_of(case.model)
    if shape is None:
        return 0.0
    tokens = 0 if case.load_only else case.batch_size * case.seq_len
    return 4 * shape.vocab_size * max(tokens, shape.hidden_size) / _GIB


def creation_gib(case: Case) -> float:
    """Device memory of creating the case's checkpoint where the cache lacks it: a registered
    shape's random weights are drawn whole on the GPU in 16 bits (an untied lm_head for a moment),
    in a process of its own before the case's own process touches the device
    (`lifecycle.materialize`). 0 for the real model and pre-quantized checkpoints (built on the CPU,
    or one tensor at a time)."""
    shape = SHAPES.get(case.model)
    if shape is None or case.prequantized:
        return 0.0
    return PROCESS_OVERHEAD_GIB + (shape.total_params + shape.vocab_size * shape.hidden_size) * 2 / _GIB


def lane_share_gib(case: Case) -> float | None:
    """A lane's share of a real card for `case` (GiB, its CUDA context included): the estimated
    need, `LANE_MARGIN` above, plus its largest allocation, and at least what creating its
    checkpoint takes (the parent does not know whether the cache has it: that would import
    torch); None when the need cannot be estimated."""
    need = estimated_need_gib(case)
    if need is None:
        return None
    return max(need * (1 + LANE_MARGIN) + largest_allocation_gib(case), creation_gib(case))


def card_budget_gib(profile: GpuProfile, gpu: DetectedGpu | None) -> float | None:
    """The device memory the lanes share: the card present less `CARD_HEADROOM_GIB`; None on the
    CPU (nothing to share)."""
    if gpu is None or not profile.is_gpu:
        return None
    return gpu.total_gib - CARD_HEADROOM_GIB


@dataclass(frozen=True)
class Lane:
    """How one shareable case runs in a session that shares the device."""

    share_gib: float | None
    """Its share of the device (GiB, its context included): the emulated profile's memory, or on a
    real card `lane_share_gib`; None on the CPU."""
    alone: str = ""
    """Why it runs alone instead ("" when it shares)."""
    real_card: bool = False
    """Its cap is the suite's (a real card shared), not the profile's: an OOM under it reruns alone."""


def plan_lane(case: Case, profile: GpuProfile, gpu: DetectedGpu | None) -> Lane:
    """The lane of a shareable `case` on this session's device."""
    budget = card_budget_gib(profile, gpu)
    if budget is None:
        return Lane(None)
    if is_emulated(profile, gpu):
        return Lane(profile.total_gib)
    share = lane_share_gib(case)
    if share is None:
        why = "multi-GPU" if case.num_gpus != 1 else f"model {case.model!r} has no registered shape"
        return Lane(None, f"its memory need cannot be estimated ({why})", real_card=True)
    if share > budget:
        need = estimated_need_gib(case) or 0.0
        return Lane(
            None,
            f"its lane share ({share:.1f} GiB: its estimated need {need:.1f} GiB, {LANE_MARGIN:.0%}"
            f" more and its largest allocation) is more than the {budget:.1f} GiB of the card the"
            " lanes share",
            real_card=True,
        )
    return Lane(share, real_card=True)


def lane_cap_gib(share_gib: float, context_gib: float) -> float:
    """The allocator cap of a lane on a real card: its share less its CUDA context (measured in
    the child) and what it holds outside the allocator."""
    return share_gib - context_gib - OUTSIDE_ALLOCATOR_GIB


LANE_FAILURES: frozenset[str] = frozenset({Status.OOM.value, Status.CUDA_ERROR.value})
"""Outcomes that sharing a real card can cause: the allocator's cap or the device ran out (a
cuBLAS or bitsandbytes allocation outside the allocator fails as a CUDA error)."""


def lane_rerun_reason(case: Case, lane: Lane, result: Result) -> str | None:
    """Why a run that shared a real card must run again alone before its row is the case's; None
    when its row stands. `lane`: how it ran (`plan_lane`)."""
    if not lane.real_card or lane.share_gib is None:
        return None  # emulated: the cap is the profile's and its OOM the verdict
    share = f"a lane share of {lane.share_gib:.2f} GiB"
    if result.hardware.lane_cap_gib is not None:
        share += f" (allocator cap {result.hardware.lane_cap_gib:.2f} GiB)"
    if result.status in LANE_FAILURES:
        return f"{result.status} sharing the card under {share}"
    peak = max(result.memory.peak_reserved_gib or 0.0, result.memory.load_peak_reserved_gib or 0.0)
    clearance = largest_allocation_gib(case)
    if result.hardware.lane_cap_gib is not None and peak + clearance > result.hardware.lane_cap_gib:
        return (
            f"its reserved peak ({peak:.2f} GiB) came within its largest allocation"
            f" ({clearance:.2f} GiB) of its cap under {share}: the allocator may have flushed its"
            " cache to fit, so the peak may not be the card's own"
        )
    return None


LANE_SUFFIX = "-lane"


def set_aside_lane_run(result_path: Path) -> Path:
    """Move a lane run's Result file and log (`cases/<hash>[-rN].json`, `.log`) to `<hash>[-rN]-lane.json`
    and `.log`, where the case's rerun alone writes its own; the moved Result's path."""
    lane_path = result_path.with_name(result_path.stem + LANE_SUFFIX + result_path.suffix)
    for source, target in (
        (result_path, lane_path),
        (result_path.with_suffix(".log"), lane_path.with_suffix(".log")),
    ):
        if source.exists():
            os.replace(source, target)
    return lane_path
