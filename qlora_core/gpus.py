"""GPU profiles and detection.

A profile is the GPU a run targets: its memory, its compute capability (which decides native
bf16), its datasheet peaks, and the memory a training process can really use. `--gpu t4` on a
bigger card emulates the T4 by capping the child's caching allocator (see `runner`).

Datasheet sources (dense, i.e. without 2:4 sparsity; tensor-core fp16/bf16 with fp32 accumulate
where the vendor gives it):
- T4: NVIDIA T4 Tensor Core GPU datasheet (65 TFLOP/s fp16 mixed precision, 320 GB/s, 16 GB).
- L4: NVIDIA L4 datasheet (242 TFLOP/s fp16/bf16 *with* sparsity -> 121 dense, 300 GB/s, 24 GB).
- A10G: AWS publishes no datasheet; NVIDIA A10 datasheet values are used (250 TFLOP/s with
  sparsity -> 125 dense, 600 GB/s, 24 GB). A10G's tensor rate is lower (~70); treat as an upper bound.
- A100 40GB/80GB SXM: NVIDIA A100 datasheet (312 TFLOP/s fp16/bf16 dense; 1,555 GB/s and
  2,039 GB/s).
- H100 SXM: NVIDIA H100 datasheet (1,979 TFLOP/s with sparsity -> 989 dense; 3.35 TB/s, 80 GB).
- H200 SXM: NVIDIA H200 datasheet (989 dense, as H100; 4.8 TB/s, 141 GB).
`total_gib` is what the driver reports to a process (nvidia-smi "MiB" total / 1024), which is a
little below the marketed size: T4 15,360 MiB, L4 23,034 MiB, A10G 23,028 MiB, A100-40GB
40,960 MiB, A100-80GB 81,920 MiB, H100 81,559 MiB, H200 143,771 MiB (the lent H200 here).
"""

from __future__ import annotations

from dataclasses import dataclass

_MIB_IN_GIB = 1024


@dataclass(frozen=True)
class GpuProfile:
    name: str
    """Profile key, as given to `--gpu`."""
    marketing_name: str
    memory_gb: float
    """Memory as marketed, in GB (10**9): what docs like the lesson quote ("15GB T4")."""
    total_gib: float
    """Memory the driver reports for the device, GiB. 0 for the cpu profile."""
    capability: tuple[int, int]
    fp16_tflops: float
    bf16_tflops: float
    """Dense tensor-core bf16 peak; 0.0 where the hardware has no bf16 (pre-Ampere)."""
    bandwidth_gbs: float

    @property
    def is_gpu(self) -> bool:
        return self.name != "cpu"

    @property
    def native_bf16(self) -> bool:
        """bf16 in hardware: compute capability 8.0 (Ampere) or later."""
        return self.is_gpu and self.capability >= (8, 0)


PROFILES: dict[str, GpuProfile] = {
    p.name: p
    for p in (
        GpuProfile("t4", "Tesla T4", 16, 15360 / _MIB_IN_GIB, (7, 5), 65.0, 0.0, 320.0),
        GpuProfile("l4", "NVIDIA L4", 24, 23034 / _MIB_IN_GIB, (8, 9), 121.0, 121.0, 300.0),
        GpuProfile("a10g", "NVIDIA A10G", 24, 23028 / _MIB_IN_GIB, (8, 6), 125.0, 125.0, 600.0),
        GpuProfile(
            "a100-40gb", "NVIDIA A100-SXM4-40GB", 40, 40960 / _MIB_IN_GIB, (8, 0), 312.0, 312.0, 1555.0
        ),
        GpuProfile(
            "a100-80gb", "NVIDIA A100-SXM4-80GB", 80, 81920 / _MIB_IN_GIB, (8, 0), 312.0, 312.0, 2039.0
        ),
        GpuProfile("h100", "NVIDIA H100 80GB HBM3", 80, 81559 / _MIB_IN_GIB, (9, 0), 989.0, 989.0, 3350.0),
        GpuProfile("h200", "NVIDIA H200", 141, 143771 / _MIB_IN_GIB, (9, 0), 989.0, 989.0, 4800.0),
        GpuProfile("cpu", "CPU", 0, 0.0, (0, 0), 0.0, 0.0, 0.0),
    )
}
PROFILE_NAMES: tuple[str, ...] = tuple(PROFILES)

# Substrings of torch/NVML device names, most specific first, mapped to profiles.
_NAME_HINTS: tuple[tuple[str, str], ...] = (
    ("h200", "h200"),
    ("h100", "h100"),
    ("a100", "a100-80gb"),  # refined by memory below
    ("a10g", "a10g"),
    ("l4", "l4"),
    ("t4", "t4"),
)


class UnknownProfileError(ValueError):
    pass


def get_profile(name: str) -> GpuProfile:
    """The profile called `name`; an error lists the allowed names (and `auto`)."""
    try:
        return PROFILES[name.lower()]
    except KeyError:
        raise UnknownProfileError(
            f"unknown GPU profile {name!r}; allowed: {', '.join(PROFILE_NAMES)} or auto"
        ) from None


def profile_for_device(name: str, total_gib: float) -> GpuProfile | None:
    """Match a device name (and memory) to a profile; None when no profile fits."""
    lowered = name.lower()
    for hint, key in _NAME_HINTS:
        if hint in lowered:
            if key == "a100-80gb" and total_gib < 60:
                key = "a100-40gb"
            return PROFILES[key]
    return None


@dataclass(frozen=True)
class DetectedGpu:
    name: str
    total_gib: float
    capability: tuple[int, int]
    driver_version: str


def detect_gpu() -> DetectedGpu | None:
    """The first GPU present, read through NVML so the calling process never initializes CUDA
    (the parent must stay fork-safe and CUDA-free; children are spawned). None without a GPU."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        if pynvml.nvmlDeviceGetCount() < 1:
            return None
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(handle)
        name = name.decode() if isinstance(name, bytes) else name
        total = pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
        return DetectedGpu(name, total, (major, minor), driver)
    finally:
        pynvml.nvmlShutdown()


def resolve_profile(requested: str) -> tuple[GpuProfile, DetectedGpu | None]:
    """`--gpu` value -> (profile, the GPU present). `auto` picks the GPU present, or cpu.

    A profile larger than the GPU present cannot be emulated: that is an error naming both.
    """
    gpu = detect_gpu()
    if requested.lower() == "auto":
        if gpu is None:
            return PROFILES["cpu"], None
        match = profile_for_device(gpu.name, gpu.total_gib)
        if match is None:
            raise UnknownProfileError(
                f"no profile matches the GPU present ({gpu.name}, {gpu.total_gib:.1f} GiB);"
                f" pass --gpu with one of: {', '.join(PROFILE_NAMES)}"
            )
        return match, gpu
    profile = get_profile(requested)
    if profile.is_gpu:
        if gpu is None:
            raise UnknownProfileError(
                f"--gpu {profile.name} needs a GPU and none was found; use --gpu cpu (or auto)"
            )
        if profile.total_gib > gpu.total_gib + 0.5:
            raise UnknownProfileError(
                f"--gpu {profile.name} ({profile.total_gib:.1f} GiB) cannot be emulated on"
                f" {gpu.name} ({gpu.total_gib:.1f} GiB): the profile is larger than the GPU"
            )
    return profile, gpu


def is_emulated(profile: GpuProfile, gpu: DetectedGpu | None) -> bool:
    """True when the profile runs on a larger GPU that is not the profile's own kind."""
    if not profile.is_gpu or gpu is None:
        return False
    own = profile_for_device(gpu.name, gpu.total_gib)
    return own is None or own.name != profile.name
