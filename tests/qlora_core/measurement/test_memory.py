"""qlora_core.measurement.memory.params_device: where a model's parameter bytes are (after the load, and as
an engine holds the model in training: FSDP's CPU offload shows as "cpu")."""

from __future__ import annotations

import torch

from qlora_core.measurement.memory import params_device


def test_the_device_holding_most_parameter_bytes_wins() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(2, 2))
    assert params_device(model) == "cpu"
    # a larger part on the meta device (a rank that loaded no weight) outweighs a small one on cpu
    model[0].to_empty(device="meta")
    assert params_device(model) == "meta"
    model[1].to_empty(device="meta")
    model.append(torch.nn.Linear(1, 1))
    assert params_device(model) == "meta"


def test_a_model_without_parameters_is_on_no_device() -> None:
    assert params_device(torch.nn.ReLU()) == ""
