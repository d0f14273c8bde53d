"""GPU profiles and detection.

A profile is the GPU a run targets: the memory a process sees on it and its compute capability
(which decides native bf16). `--gpu t4` on a bigger card emulates the T4 by capping the child's
caching allocator (see `qlora_core.process.child`).

`total_gib` is what the driver reports to a process (nvidia-smi "MiB" total / 1024), which is a
little below the marketed size: T4 15,360 MiB (16 GB), L4 23,034 MiB (24 GB), A10G 23,028 MiB
(24 GB), A100-40GB 40,960 MiB, A100-80GB 81,920 MiB, RTX A6000 49,140 MiB (48 GB), H100 SXM
81,559 MiB (80 GB), H200 SXM 143,771 MiB (141 GB; read on an H200). Compute capabilities are
NVIDIA's (CUDA GPUs list): T4 7.5, L4 8.9, A10G and RTX A6000 8.6, A100 8.0, H100 and H200 9.0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_MIB_IN_GIB = 1024


@dataclass(frozen=True)
class GpuProfile:
    name: str
    """Profile key, as given to `--gpu`."""
    total_gib: float
    """Memory the driver reports for the device, GiB. 0 for the cpu profile."""
    capability: tuple[int, int]
    # Dense (non-sparse) peak TFLOPS from NVIDIA's datasheets, the sparse figure halved where the
    # sheet gives only that: T4 (65 fp16 tensor, 8.1 fp32; no bf16), L4 (242 fp16/bf16 sparse,
    # 30.3 fp32), A100 40/80 GB SXM (312 fp16/bf16, 19.5 fp32), H100 SXM and H200 SXM (1,979
    # fp16/bf16 sparse, 67 fp32). A10G: NVIDIA publishes no sheet for it, so None (no MFU).
    # fp32 is the CUDA-core figure (bitsandbytes' fp32 compute uses no TF32 tensor core).
    fp16_tflops: float | None = None
    bf16_tflops: float | None = None
    fp32_tflops: float | None = None

    # multi-GPU: a machine of `count` such cards, each rank capped like one of them.
    count: int = 1
    card: str = ""
    """The single-card profile this machine's cards are ("t4" for t4x2); "" for a single card."""

    @property
    def card_name(self) -> str:
        """The profile of one card of this machine (its own name for a single-card profile)."""
        return self.card or self.name

    def peak_tflops(self, compute_dtype: str) -> float | None:
        """Dense peak at a compute dtype ("fp16", "bf16", "fp32"); None if not known."""
        return {"fp16": self.fp16_tflops, "bf16": self.bf16_tflops, "fp32": self.fp32_tflops}.get(
            compute_dtype
        )

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
        GpuProfile("t4", 15360 / _MIB_IN_GIB, (7, 5), 65.0, None, 8.1),
        GpuProfile("l4", 23034 / _MIB_IN_GIB, (8, 9), 121.0, 121.0, 30.3),
        GpuProfile("a10g", 23028 / _MIB_IN_GIB, (8, 6)),
        # RTX A6000 (48 GB GDDR6, the QLoRA paper's single 48 GB GPU): 309.7 fp16/bf16 tensor
        # TFLOPS sparse (154.8 dense), 38.7 fp32; the driver reports 49,140 MiB.
        GpuProfile("a6000", 49140 / _MIB_IN_GIB, (8, 6), 154.8, 154.8, 38.7),
        GpuProfile("a100-40gb", 40960 / _MIB_IN_GIB, (8, 0), 312.0, 312.0, 19.5),
        GpuProfile("a100-80gb", 81920 / _MIB_IN_GIB, (8, 0), 312.0, 312.0, 19.5),
        GpuProfile("h100", 81559 / _MIB_IN_GIB, (9, 0), 989.5, 989.5, 67.0),
        GpuProfile("h200", 143771 / _MIB_IN_GIB, (9, 0), 989.5, 989.5, 67.0),
        GpuProfile("cpu", 0.0, (0, 0)),
        # Two-card machines: two T4s (a common free offering), two 24 GB cards, and two
        # H200s, where nothing is emulated: the speed (and the scaling efficiency) is the cards'
        # own, at the large tier's device-bound point.
        GpuProfile("t4x2", 15360 / _MIB_IN_GIB, (7, 5), 65.0, None, 8.1, count=2, card="t4"),
        GpuProfile("l4x2", 23034 / _MIB_IN_GIB, (8, 9), 121.0, 121.0, 30.3, count=2, card="l4"),
        GpuProfile("h200x2", 143771 / _MIB_IN_GIB, (9, 0), 989.5, 989.5, 67.0, count=2, card="h200"),
    )
}
PROFILE_NAMES: tuple[str, ...] = tuple(PROFILES)

# Substrings of torch/NVML device names, most specific first, mapped to profiles.
_NAME_HINTS: tuple[tuple[str, str], ...] = (
    ("h200", "h200"),
    ("h100", "h100"),
    ("a100", "a100-80gb"),  # refined by memory below
    ("a6000", "a6000"),
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
    count: int = 1
    """GPUs present (all assumed to be of the first one's kind)."""


def _visible_entries() -> list[str] | None:
    """CUDA_VISIBLE_DEVICES' entries (indices or UUIDs), None when it is not set."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return None if visible is None else [e.strip() for e in visible.split(",") if e.strip()]


def nvml_handle(pynvml: Any, cuda_index: int = 0) -> Any:
    """The NVML handle of the device CUDA calls `cuda_index` in this process.

    NVML numbers devices physically and ignores CUDA_VISIBLE_DEVICES; CUDA numbers the visible
    ones. A run pinned to the second GPU (CUDA_VISIBLE_DEVICES=1) must read NVML device 1, or
    its memory figures are another GPU's. Entries may be indices or UUIDs (GPU-...).
    """
    entries = _visible_entries()
    if not entries:
        return pynvml.nvmlDeviceGetHandleByIndex(cuda_index)
    if cuda_index >= len(entries):
        raise ValueError(
            f"CUDA device {cuda_index} is not visible (CUDA_VISIBLE_DEVICES={','.join(entries)!r})"
        )
    entry = entries[cuda_index]
    if entry.isdigit():
        return pynvml.nvmlDeviceGetHandleByIndex(int(entry))
    return pynvml.nvmlDeviceGetHandleByUUID(entry)


def first_visible_gpu() -> str:
    """The CUDA_VISIBLE_DEVICES entry of the first GPU this process sees ("0" when it is not set;
    "" when it is set to none): what a one-GPU child is shown (`request.child_env`)."""
    entries = _visible_entries()
    if entries is None:
        return "0"
    return entries[0] if entries else ""


def visible_gpu_count(physical: int) -> int:
    """GPUs this process's CUDA sees: CUDA_VISIBLE_DEVICES' entries when set, else every one."""
    entries = _visible_entries()
    return physical if entries is None else min(physical, len(entries))


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
        handle = nvml_handle(pynvml, 0)
        name = pynvml.nvmlDeviceGetName(handle)
        name = name.decode() if isinstance(name, bytes) else name
        total = pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
        return DetectedGpu(
            name, total, (major, minor), driver, visible_gpu_count(pynvml.nvmlDeviceGetCount())
        )
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
        if profile.count > gpu.count:
            raise UnknownProfileError(
                f"--gpu {profile.name} needs {profile.count} GPUs and {gpu.count} found; use a"
                f" single-card profile ({', '.join(n for n, p in PROFILES.items() if p.count == 1)})"
            )
    return profile, gpu


def is_emulated(profile: GpuProfile, gpu: DetectedGpu | None) -> bool:
    """True when the profile runs on a larger GPU that is not the profile's own kind."""
    if not profile.is_gpu or gpu is None:
        return False
    own = profile_for_device(gpu.name, gpu.total_gib)
    return own is None or own.name != profile.card_name


# The CPU's half precision -----------------------------------------------------------------
HALF_DTYPES: tuple[str, ...] = ("fp16", "bf16")
ALL_CPU_DTYPES: frozenset[str] = frozenset({"fp32", *HALF_DTYPES})
# torch multiplies bf16/fp16 on the CPU in oneDNN where the CPU has the instructions its check
# asks for (torch's mkldnn_bf16_device_check / mkldnn_fp16_device_check), else in a scalar
# fallback: 75x slower than fp32 on an AVX2-only EPYC (128x576 @ 576x1536: 207 ms vs 2.7 ms, bf16
# and fp16 alike), 37 s per step of the real model at b2 s64 against 1.7 s in fp32.
_NATIVE_FLAGS: dict[str, dict[str, tuple[frozenset[str], ...]]] = {
    # /proc/cpuinfo's key of the flags line -> dtype -> sets of flags, any one of which is enough
    "flags": {  # x86
        "bf16": (frozenset({"avx512bw", "avx512vl", "avx512dq"}), frozenset({"amx_bf16"})),
        "fp16": (frozenset({"avx512_fp16"}), frozenset({"amx_fp16"})),
    },
    "Features": {"bf16": (frozenset({"bf16"}),), "fp16": (frozenset({"asimdhp"}),)},  # Arm
}


CPU_DTYPES_ENV = "QLORA_BENCH_CPU_DTYPES"
"""Overrides the reading of the flags: a comma-separated list of fp32, bf16, fp16 (e.g. ``fp32``
for a test suite whose duration must not depend on the host, ``fp32,bf16,fp16`` to run half
precision on a CPU without its instructions, slowly)."""


class CpuDtypesError(ValueError):
    pass


def cpu_native_dtypes(cpuinfo: str | None = None, override: str | None = None) -> frozenset[str]:
    """The compute dtypes this host's CPU multiplies at speed: fp32, and bf16/fp16 where its
    /proc/cpuinfo flags (x86) or features (Arm) carry the instructions torch's oneDNN path needs;
    `override` (default: `CPU_DTYPES_ENV`) replaces the reading. Where the flags cannot be read
    (no /proc/cpuinfo), every dtype: nothing is left out on a guess. Read without torch, before
    the session imports anything heavy."""
    override = os.environ.get(CPU_DTYPES_ENV) if override is None else override
    if override:
        named = {d.strip() for d in override.split(",") if d.strip()}
        if not named or not named <= ALL_CPU_DTYPES or "fp32" not in named:
            raise CpuDtypesError(
                f"{CPU_DTYPES_ENV}={override!r}: a comma-separated list of fp32, bf16, fp16 that"
                " includes fp32"
            )
        return frozenset(named)
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return ALL_CPU_DTYPES
    for line in cpuinfo.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key in _NATIVE_FLAGS:
            flags = set(value.split())
            native = {d for d, needs in _NATIVE_FLAGS[key].items() if any(n <= flags for n in needs)}
            return frozenset({"fp32", *native})
    return ALL_CPU_DTYPES
