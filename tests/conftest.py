"""Shared fixtures for the unit tests: the one place that decides whether a GPU test can run."""

from __future__ import annotations

import pytest

from qlora_core.gpus import detect_gpu


@pytest.fixture(scope="session")
def gpu_required():
    """Skip (with the reason) unless a CUDA GPU is present. Use with @pytest.mark.gpu."""
    if detect_gpu() is None:
        pytest.skip("needs a CUDA GPU (none found through NVML)")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("NVML sees a GPU but this torch build has no CUDA")
