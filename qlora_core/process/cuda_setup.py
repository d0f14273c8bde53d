"""The child's CUDA set-up (`qlora_core.process.child`, its model creation stage): NVML's reading
before anything touches the device, the CUDA context, and the allocator cap of an emulated card or
of a lane of a shared one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qlora_core.cases.gpus import DetectedGpu, GpuProfile, is_emulated
from qlora_core.measurement.result import Result
from qlora_core.process.distributed import local_device_index
from qlora_core.process.lanes import lane_cap_gib
from qlora_core.process.request import RunOptions

if TYPE_CHECKING:  # typing only: measure imports torch, which the child imports once it runs a case
    from qlora_core.measurement.memory import NvmlSampler


def setup_cuda(r: Result, profile: GpuProfile, gpu: DetectedGpu | None, options: RunOptions) -> NvmlSampler:
    """Read NVML before anything touches the device, create the context, cap the allocator.

    Emulating a smaller GPU: the cap is the profile's device memory minus this process's CUDA
    context (measured here, since the allocator cannot see it), as a fraction of the real card.
    A lane of a real card shared side by side (`RunOptions.lane_share_gib`): its share less the
    context, the same way (`lanes.lane_cap_gib`). Returns the started NVML sampler.
    """
    # Here, not at the top: torch, and measure, which imports it (see the module's imports).
    import torch

    from qlora_core.measurement.memory import NVML_DEVICE, NVML_PROCESS, NvmlSampler, gib

    index = local_device_index()  # 0, or this rank's GPU in a multi-GPU case
    shared = options.shared_device > 1
    # Side by side, NVML's device-wide "used" counts the other cases: this process's own line only.
    sampler = NvmlSampler(index, NVML_PROCESS if shared else NVML_DEVICE)
    r.memory.nvml_scope = sampler.scope
    r.memory.nvml_base_gib = sampler.base_gib
    torch.cuda.set_device(index)
    _free, total_b = torch.cuda.mem_get_info(index)  # creates the context, allocates nothing
    total = gib(total_b)
    r.hardware.context_gib = sampler.own_gib()
    context_gib = max(0.0, sampler.used_gib() - sampler.base_gib)
    if shared:  # other cases use the device too: only this process's own reading is its context
        if r.hardware.context_gib is None:
            raise RuntimeError(
                "side by side, the CUDA context must be read from NVML's per-process list, which does"
                " not name this process here; run the case alone (--side-by-side 1)"
            )
        context_gib = r.hardware.context_gib
    props = torch.cuda.get_device_properties(index)
    r.hardware.gpu_name = props.name
    r.hardware.gpu_capability = f"{props.major}.{props.minor}"
    r.hardware.gpu_total_gib = total
    r.hardware.gpus_visible = torch.cuda.device_count()
    r.environment.driver_version = gpu.driver_version if gpu else ""
    r.hardware.bf16_native = (props.major, props.minor) >= (8, 0)
    r.hardware.bf16_torch_supported = bool(torch.cuda.is_bf16_supported())
    cap = None if options.uncapped else options.memory_cap_gib  # oom_need: measure what it needs
    if cap is None and is_emulated(profile, gpu) and not options.uncapped:
        cap = profile.total_gib - context_gib
        r.hardware.emulated = True
        r.hardware.emulated_on = props.name
        # What the emulated card would say about bf16, not the host's answer.
        r.hardware.bf16_native = profile.native_bf16
    if cap is not None:
        r.hardware.memory_cap_gib = cap
    elif options.lane_share_gib is not None and not options.uncapped:
        # A lane of a real card: the suite's cap, kept apart from the profile's (memory_cap_gib).
        cap = r.hardware.lane_cap_gib = lane_cap_gib(options.lane_share_gib, context_gib)
    if cap is not None:
        torch.cuda.set_per_process_memory_fraction(min(1.0, max(cap, 0.01) / total), index)
    return sampler.start()
