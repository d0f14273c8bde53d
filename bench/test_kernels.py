"""Kernels: pytest-benchmark timings of 4-bit quantize, dequantize and matmul, NF4 vs FP4, on the
device the profile runs on (each call synchronizes, so the timer sees the kernel)."""

import pytest

from qlora_core.measurement import quantization

# Big enough to be past launch overhead on a GPU; small enough for 2 CPU cores.
_SIZE = {"cuda": 8192, "cpu": 1024}


@pytest.mark.parametrize("quant_type", quantization.QUANT_TYPES_4BIT)
@pytest.mark.parametrize("op", ["quantize", "dequantize", "matmul"])
def test_kernel(benchmark, bench_session, op, quant_type):
    device = "cuda" if bench_session.options.profile.is_gpu else "cpu"
    size = _SIZE[device]
    fn = quantization.kernel_ops(quant_type, size, device)[op]
    benchmark.group = f"4-bit {op} {size}x{size}"
    benchmark.pedantic(fn, rounds=20, iterations=1, warmup_rounds=3)
    stats = benchmark.stats.stats
    bench_session.append_measurement(
        "kernels",
        {
            "op": op,
            "quant_type": quant_type,
            "size": size,
            "device": device,
            "median_ms": stats.median * 1000,
            "iqr_ms": stats.iqr * 1000,
            "rounds": stats.rounds,
        },
    )
