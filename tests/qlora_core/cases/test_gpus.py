"""GPU profile registry, name matching, emulation decisions and detection without a GPU."""

from __future__ import annotations

import dataclasses

import pytest

from qlora_core.cases.gpus import (
    CPU_DTYPES_ENV,
    PROFILE_NAMES,
    PROFILES,
    CpuDtypesError,
    DetectedGpu,
    UnknownProfileError,
    cpu_native_dtypes,
    detect_gpu,
    get_profile,
    is_emulated,
    profile_for_device,
    resolve_profile,
)


def test_registry_has_every_documented_profile():
    singles = {"t4", "l4", "a10g", "a6000", "a100-40gb", "a100-80gb", "h100", "h200", "cpu"}
    assert set(PROFILE_NAMES) == singles | {"t4x2", "l4x2", "h200x2"}


@pytest.mark.parametrize(
    ("name", "capability", "native_bf16"),
    [
        ("t4", (7, 5), False),
        ("l4", (8, 9), True),
        ("a10g", (8, 6), True),
        ("a100-40gb", (8, 0), True),
        ("a100-80gb", (8, 0), True),
        ("h100", (9, 0), True),
        ("h200", (9, 0), True),
        ("cpu", (0, 0), False),
    ],
)
def test_capability_decides_native_bf16(name, capability, native_bf16):
    profile = get_profile(name)
    assert profile.capability == capability
    assert profile.native_bf16 is native_bf16


# Marketed sizes in GB (10**9), from the vendors' datasheets: an independent check of total_gib.
MARKETED_GB = {
    "t4": 16, "l4": 24, "a10g": 24, "a6000": 48, "a100-40gb": 40, "a100-80gb": 80, "h100": 80, "h200": 141
}  # fmt: skip


def _near_marketed(name: str, total_gib: float) -> bool:
    # The driver's total in GB lies near the marketed size: HBM parts are sized in GiB (A100:
    # 40 GiB = 42.9 GB), GDDR parts reserve a little (T4: 15,360 MiB of 16 GB).
    return 0.95 * MARKETED_GB[name] < total_gib * 1.073741824 <= MARKETED_GB[name] * 1.08


def test_profiles_are_physically_plausible():
    gpus = [p for p in PROFILES.values() if p.is_gpu and p.count == 1]
    assert sorted(p.name for p in gpus) == sorted(MARKETED_GB)
    for profile in gpus:
        assert _near_marketed(profile.name, profile.total_gib), profile
    assert get_profile("T4") is PROFILES["t4"]


def test_plausibility_check_rejects_a_wrong_memory_size():
    assert not _near_marketed("t4", 16.0 * 1.08)  # 16 GiB+8% is more than the card has
    assert not _near_marketed("h200", 80.0)  # an H100's memory on an H200 profile


def test_unknown_profile_lists_allowed_names():
    with pytest.raises(UnknownProfileError) as err:
        get_profile("v100")
    for name in PROFILE_NAMES:
        assert name in str(err.value)
    assert "auto" in str(err.value)


@pytest.mark.parametrize(
    ("device_name", "gib", "expected"),
    [
        ("Tesla T4", 14.6, "t4"),
        ("NVIDIA L4", 22.5, "l4"),
        ("NVIDIA A10G", 22.5, "a10g"),
        ("NVIDIA A100-SXM4-40GB", 39.4, "a100-40gb"),
        ("NVIDIA A100 80GB PCIe", 79.2, "a100-80gb"),
        ("NVIDIA RTX A6000", 47.99, "a6000"),
        ("NVIDIA H100 80GB HBM3", 79.1, "h100"),
        ("NVIDIA H200", 140.4, "h200"),
        ("NVIDIA RTX 4090", 24, None),
    ],
)
def test_device_names_map_to_profiles(device_name, gib, expected):
    match = profile_for_device(device_name, gib)
    assert (match.name if match else None) == expected


def test_emulation_only_on_a_different_gpu():
    h200 = DetectedGpu("NVIDIA H200", 140.4, (9, 0), "580")
    assert is_emulated(get_profile("t4"), h200)
    assert not is_emulated(get_profile("h200"), h200)
    assert not is_emulated(get_profile("h200x2"), h200) and is_emulated(get_profile("t4x2"), h200)
    assert not is_emulated(get_profile("cpu"), h200)
    assert not is_emulated(get_profile("t4"), None)


def test_without_gpu_auto_is_cpu_and_gpu_profiles_refuse():
    if detect_gpu() is not None:
        pytest.skip("this machine has a GPU; the no-GPU behaviour is tested on CI")
    profile, gpu = resolve_profile("auto")
    assert profile.name == "cpu" and gpu is None
    with pytest.raises(UnknownProfileError, match="needs a GPU"):
        resolve_profile("t4")
    with pytest.raises(UnknownProfileError, match="unknown GPU profile"):
        resolve_profile("tpu")


@pytest.mark.gpu
def test_detects_the_gpu_present(gpu_required):
    gpu = detect_gpu()
    assert gpu is not None and gpu.total_gib > 1 and gpu.capability >= (7, 0)
    profile, _ = resolve_profile("auto")
    assert profile.is_gpu


class _RecordingNvml:
    """NVML's two lookups, answering with what was asked (no GPU on the CPU runners)."""

    @staticmethod
    def nvmlDeviceGetHandleByIndex(index):
        return ("index", index)

    @staticmethod
    def nvmlDeviceGetHandleByUUID(uuid):
        return ("uuid", uuid)


@pytest.mark.parametrize(
    ("visible", "cuda_index", "handle"),
    [
        (None, 0, ("index", 0)),
        ("", 1, ("index", 1)),
        ("1", 0, ("index", 1)),  # a run pinned to the second GPU reads NVML device 1
        ("3,2", 1, ("index", 2)),
        ("GPU-aaaa, GPU-bbbb", 1, ("uuid", "GPU-bbbb")),
    ],
)
def test_nvml_reads_the_gpu_cuda_uses(monkeypatch, visible, cuda_index, handle):
    from qlora_core.cases.gpus import nvml_handle

    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert nvml_handle(_RecordingNvml, cuda_index) == handle


def test_nvml_refuses_a_device_cuda_cannot_see(monkeypatch):
    from qlora_core.cases.gpus import nvml_handle

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with pytest.raises(ValueError, match="CUDA device 1 is not visible"):
        nvml_handle(_RecordingNvml, 1)


def test_two_card_profiles_cap_each_rank_like_their_card(monkeypatch):
    t4x2 = get_profile("t4x2")
    assert (t4x2.count, t4x2.card_name, t4x2.total_gib) == (2, "t4", get_profile("t4").total_gib)
    assert is_emulated(t4x2, DetectedGpu("NVIDIA H200", 140.4, (9, 0), "580", count=2))
    assert not is_emulated(t4x2, DetectedGpu("Tesla T4", 14.6, (7, 5), "580", count=2))  # the real pair
    one = DetectedGpu("NVIDIA H200", 140.4, (9, 0), "580", count=1)
    monkeypatch.setattr("qlora_core.cases.gpus.detect_gpu", lambda: one)
    with pytest.raises(UnknownProfileError, match="needs 2 GPUs and 1 found"):
        resolve_profile("t4x2")
    two = dataclasses.replace(one, count=2)
    monkeypatch.setattr("qlora_core.cases.gpus.detect_gpu", lambda: two)
    assert resolve_profile("t4x2")[0] is t4x2


def test_a_run_pinned_to_one_gpu_sees_one(monkeypatch):
    from qlora_core.cases.gpus import visible_gpu_count

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpu_count(2) == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert visible_gpu_count(2) == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert visible_gpu_count(2) == 2


# /proc/cpuinfo excerpts: one line of flags (x86) or features (Arm) is all that is read.
_EPYC_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
_SKYLAKE_SP = "flags\t\t: avx avx2 avx512f avx512dq avx512bw avx512vl\n"
_SAPPHIRE_RAPIDS = "flags\t\t: avx2 avx512f avx512bw avx512vl avx512dq avx512_bf16 avx512_fp16 amx_bf16\n"
_GRAVITON3 = "Features\t: fp asimd asimdhp bf16 sve\n"
_GRAVITON2 = "Features\t: fp asimd asimdhp\n"


@pytest.mark.parametrize(
    ("cpuinfo", "dtypes"),
    [
        (_EPYC_AVX2, {"fp32"}),
        (_SKYLAKE_SP, {"fp32", "bf16"}),  # oneDNN's bf16 path on AVX-512; no fp16 instructions
        (_SAPPHIRE_RAPIDS, {"fp32", "bf16", "fp16"}),
        (_GRAVITON3, {"fp32", "bf16", "fp16"}),
        (_GRAVITON2, {"fp32", "fp16"}),
        ("processor\t: 0\n", {"fp32", "bf16", "fp16"}),  # no flags line: nothing left out on a guess
    ],
)
def test_cpu_native_dtypes_read_the_flags(cpuinfo, dtypes):
    assert cpu_native_dtypes(cpuinfo, override="") == dtypes


def test_cpu_dtypes_override_replaces_the_flags_and_refuses_what_it_cannot_use(monkeypatch):
    monkeypatch.setenv(CPU_DTYPES_ENV, "fp32, bf16")
    assert cpu_native_dtypes(_EPYC_AVX2) == {"fp32", "bf16"}
    for bad in ("bf16", "fp32,int8", ","):
        with pytest.raises(CpuDtypesError, match="fp32, bf16, fp16"):
            cpu_native_dtypes(_EPYC_AVX2, override=bad)
