"""Memory and parameter measurements.

On CUDA: the caching allocator's allocated/reserved bytes at each stage and at the training peak,
and the device's used memory from NVML, sampled in a background thread (NVML also sees the CUDA
context, cuBLAS workspaces and managed memory, which the allocator does not). On the CPU: the
child's peak RSS. Bytes of the quantized weights are counted from the tensors themselves,
including each 4-bit weight's quantization statistics, which `get_memory_footprint()` omits.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from dataclasses import dataclass
from typing import Any

import torch

from qlora_core.cases.gpus import nvml_handle
from qlora_core.models.registry import shape_spec
from qlora_core.models.shapes import build_meta_model

BYTES_IN_GIB = 1024**3
_NVML_SAMPLE_S = 0.02


def gib(num_bytes: float) -> float:
    return num_bytes / BYTES_IN_GIB


def cuda_stage_memory() -> tuple[float, float]:
    """(allocated, reserved) GiB right now; call after synchronize for a settled value."""
    torch.cuda.synchronize()
    return gib(torch.cuda.memory_allocated()), gib(torch.cuda.memory_reserved())


def reset_cuda_peaks() -> None:
    """Start a fresh peak window. empty_cache first, or the old reserved peak leaks in."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def cuda_peaks() -> tuple[float, float]:
    """(max allocated, max reserved) GiB since the last reset."""
    torch.cuda.synchronize()
    return gib(torch.cuda.max_memory_allocated()), gib(torch.cuda.max_memory_reserved())


def peak_rss_gib() -> float:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / BYTES_IN_GIB if sys.platform == "darwin" else maxrss * 1024 / BYTES_IN_GIB


def current_rss_gib() -> float:
    import psutil

    return gib(psutil.Process().memory_info().rss)


NVML_DEVICE, NVML_PROCESS = "device", "process"
"""What an NVML reading covers (`Result.memory.nvml_scope`): the device's used memory, minus what it held
before the process (`nvml_base_gib`); or this process's own line of NVML's per-process list,
which other processes on the device do not touch (cases side by side, `qlora_core.process.side_by_side`)."""


class NvmlSampler:
    """Samples used device memory every 20 ms in a daemon thread; `peak_gib` is the max.

    Scope `NVML_DEVICE` (a case alone): NVML's "used" is device-wide, so other processes count
    too, which is why the result also records `nvml_base_gib`, read before this process touched
    the device. This process's own line of the per-process list is sampled beside it
    (`own_peak_gib`): alone, the two agree, and that agreement is what lets a case read only its own
    line when it shares the device. Scope `NVML_PROCESS` (side by side): only the own line is
    sampled; the base is 0 (the process held nothing before it started).
    """

    def __init__(self, index: int = 0, scope: str = NVML_DEVICE) -> None:
        """`index`: the CUDA device index in this process (mapped to NVML's, see `nvml_handle`)."""
        import pynvml

        if scope not in (NVML_DEVICE, NVML_PROCESS):
            raise ValueError(f"scope {scope!r}; allowed: {NVML_DEVICE}, {NVML_PROCESS}")
        self._nvml = pynvml
        pynvml.nvmlInit()
        self._handle = nvml_handle(pynvml, index)
        self.scope = scope
        self.base_gib = self.used_gib() if scope == NVML_DEVICE else 0.0
        self.peak_gib = self.base_gib
        self.own_peak_gib: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)

    def used_gib(self) -> float:
        """Device used memory in this sampler's scope: device-wide, or this process's own line
        (0 while NVML does not list the process yet: no context, no memory)."""
        if self.scope == NVML_PROCESS:
            return self.own_gib() or 0.0
        return gib(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def own_gib(self) -> float | None:
        """This process's own device memory (NVML's per-process list), whatever else runs on the
        device; None where NVML does not name this process (a PID namespace it cannot see into)."""
        pid = os.getpid()
        for process in self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle):
            if process.pid == pid and process.usedGpuMemory is not None:
                return gib(process.usedGpuMemory)
        return None

    def _sample(self) -> None:
        own = self.own_gib()
        used = (own or 0.0) if self.scope == NVML_PROCESS else self.used_gib()
        self.peak_gib = max(self.peak_gib, used)
        if own is not None:
            self.own_peak_gib = own if self.own_peak_gib is None else max(self.own_peak_gib, own)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(_NVML_SAMPLE_S)

    def start(self) -> NvmlSampler:
        self._thread.start()
        return self

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(timeout=1.0)
        self._sample()
        return self.peak_gib


@dataclass(frozen=True)
class WeightBytes:
    weight_bytes: int
    """Every parameter and buffer, plus the quantization statistics of the 4-bit weights."""
    quant_data_bytes: int
    """The packed 4-bit payload of the quantized weights (8-bit: the int8 weights)."""
    quant_stats_bytes: int
    """absmax per block; with double quantization the 8-bit absmax, its nested fp32 absmax,
    the nested code table and the offset; plus each weight's 16-entry code table. 8-bit: the
    fp32 scale of each row (`SCB`)."""
    quantized_params: int
    """Parameters held in 4-bit or 8-bit (the original weights' element count)."""
    footprint_bytes: int
    """model.get_memory_footprint(), for comparison (it misses the statistics)."""


def _tensor_bytes(t: torch.Tensor | None, seen: set[int] | None = None) -> int:
    """Bytes of `t`; with `seen`, a storage already counted (a shared code table) counts 0."""
    if t is None:
        return 0
    if seen is not None:
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            return 0
        seen.add(ptr)
    return t.numel() * t.element_size()


def quant_state_bytes(quant_state: Any, seen: set[int] | None = None) -> int:
    """Bytes held by a bitsandbytes QuantState: absmax and code, and with double quantization
    the nested absmax, nested code and offset. Storage in `seen` is not counted again."""
    total = _tensor_bytes(quant_state.absmax, seen) + _tensor_bytes(getattr(quant_state, "code", None), seen)
    if getattr(quant_state, "nested", False):
        nested = quant_state.state2
        total += _tensor_bytes(nested.absmax, seen) + _tensor_bytes(getattr(nested, "code", None), seen)
        total += _tensor_bytes(getattr(quant_state, "offset", None), seen)
    return total


def weight_bytes(model: torch.nn.Module) -> WeightBytes:
    """Count the model's weight memory from its tensors, quantization statistics included."""
    quant_data = quant_stats = quantized = plain = 0
    seen: set[int] = set()  # storages counted so far: tied weights and shared tables count once
    for param in model.parameters():
        if param.untyped_storage().data_ptr() in seen:
            continue
        state = getattr(param, "quant_state", None)
        if state is not None:
            quant_data += _tensor_bytes(param, seen)
            quant_stats += quant_state_bytes(state, seen)
            quantized += int(torch.Size(state.shape).numel())
        elif param.__class__.__name__ == "Int8Params":
            # LLM.int8(): one int8 per weight and an fp32 scale per row (SCB), which, like the
            # 4-bit statistics, get_memory_footprint() does not see.
            quant_data += _tensor_bytes(param, seen)
            quant_stats += _tensor_bytes(getattr(param, "SCB", None), seen)
            quantized += param.numel()
        else:
            plain += _tensor_bytes(param, seen)
    buffers = sum(_tensor_bytes(b, seen) for b in model.buffers())
    footprint_of = getattr(model, "get_memory_footprint", None)  # transformers' models have it
    footprint = int(footprint_of()) if footprint_of is not None else 0
    return WeightBytes(
        weight_bytes=plain + buffers + quant_data + quant_stats,
        quant_data_bytes=quant_data,
        quant_stats_bytes=quant_stats,
        quantized_params=quantized,
        footprint_bytes=footprint,
    )


def meta_weight_bytes(spec: Any) -> int:
    """Exact bytes of a shape's 16-bit weights (parameters, a tied one once, and buffers), counted on
    the meta device: what loading it in 16-bit must hold, computed without memory or a checkpoint."""
    model = build_meta_model(spec)
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def parameter_counts(peft_model: Any) -> tuple[int, int]:
    """(trainable, total) exactly as peft's print_trainable_parameters counts them (4-bit packed
    parameters counted at their unpacked size)."""
    trainable, total = peft_model.get_nb_trainable_parameters()
    return int(trainable), int(total)


def base_parameter_count(model: torch.nn.Module) -> int:
    """Parameters of a model without adapters, counted by peft's own counter (4-bit packed
    weights at their unpacked size). The counter reads only `named_parameters()`, so it counts
    a plain transformers model exactly as it counts the same model inside a PeftModel."""
    from peft import PeftModel

    _trainable, total = PeftModel.get_nb_trainable_parameters(model)  # type: ignore[arg-type]
    return int(total)


def params_device(model: torch.nn.Module) -> str:
    """The device type holding most of the bytes of `model`'s parameters ("cuda", "cpu"; "meta"
    for a model built without weights); "" for a model without parameters. Read after the load
    (`Result.ranks.loaded_on`: "meta" on a rank that loaded none, under rank-0-only FSDP loading) and
    once the engine has wrapped the model (`Result.precision.params_on_in_training`: FSDP's flattened shards,
    on "cpu" under its CPU offload)."""
    bytes_by_device: dict[str, int] = {}
    for param in model.parameters():
        kind = param.device.type
        bytes_by_device[kind] = bytes_by_device.get(kind, 0) + param.numel() * param.element_size()
    return max(bytes_by_device, key=lambda kind: bytes_by_device[kind]) if bytes_by_device else ""


def trainable_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def trainable_dtypes(model: torch.nn.Module) -> str:
    """Sorted distinct dtypes of the trainable parameters, e.g. 'float32'."""
    names = {str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.requires_grad}
    return ",".join(sorted(names))


def empty_weight_counts(shape: str, lora_r: int, target_modules: tuple[str, ...]) -> dict[str, Any]:
    """Parameters of the shape's real architecture, instantiated without weights (accelerate's
    `init_empty_weights`) with LoRA applied, counted by peft's `get_nb_trainable_parameters`:
    what `print_trainable_parameters` prints for that config, on any machine, in seconds.

    The embedding is tied again after the build: under `init_empty_weights`, `from_config`
    leaves lm_head untied (transformers 5.24), which would count it twice.
    """
    from accelerate import init_empty_weights
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    spec = shape_spec(shape)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(spec.config())
    model.tie_weights()  # outside the context: inside it, tying leaves two parameters
    base = base_parameter_count(model)
    config = LoraConfig(
        r=lora_r, lora_alpha=lora_r, target_modules=list(target_modules), bias="none", task_type="CAUSAL_LM"
    )
    with init_empty_weights():  # the adapters on the meta device too
        trainable, total = parameter_counts(get_peft_model(model, config))
    return {
        "model": shape,
        "lora_r": lora_r,
        "target_modules": ",".join(target_modules),
        "trainable_params": trainable,
        "total_params": total,
        "base_params": base,
        "method": "init_empty_weights + peft get_nb_trainable_parameters",
    }
