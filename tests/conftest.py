"""Shared fixtures for the unit tests: the one place that decides whether a GPU test can run, the
session's checkpoint cache, and reading a checkpoint's tensors back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from qlora_core.cases.gpus import detect_gpu
from qlora_core.models.cache import CACHE_ENV


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("qlora-bench-cache")


@pytest.fixture
def tmp_cache(session_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The per-session temp cache, as $QLORA_BENCH_CACHE for this test (each checkpoint is built
    once per session)."""
    monkeypatch.setenv(CACHE_ENV, str(session_cache))
    return session_cache


@pytest.fixture(scope="session")
def read_safetensors() -> Callable[[Path], dict[str, Any]]:
    """A function: every tensor of the *.safetensors files in a directory, by key."""
    from safetensors import safe_open

    def read(directory: Path) -> dict[str, Any]:
        tensors: dict[str, Any] = {}
        for file in sorted(Path(directory).glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as f:
                tensors.update({key: f.get_tensor(key) for key in f.keys()})  # noqa: SIM118 (not a dict)
        return tensors

    return read


@pytest.fixture(scope="session")
def gpu_required():
    """Skip (with the reason) unless a CUDA GPU is present. Use with @pytest.mark.gpu."""
    if detect_gpu() is None:
        pytest.skip("needs a CUDA GPU (none found through NVML)")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("NVML sees a GPU but this torch build has no CUDA")
