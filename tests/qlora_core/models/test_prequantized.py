"""The layer-by-layer pre-quantized checkpoint against transformers' own (real CPU 4-bit kernels)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qlora_core.cases.case import Case, CaseError
from qlora_core.models import ModelUnavailableError, Prequant, load
from qlora_core.models.prequantized import INDEX_FILE, bnb_config_of, check_prequantized_dir
from qlora_core.models.resolve import is_materialized, resolve_model

NF4_DQ = Prequant("nf4", True, "uint8", "bf16")


def _save_pretrained_reference(prequant: Prequant, out: Path) -> Path:
    """What users get: the 16-bit checkpoint quantized at load by transformers, then saved."""
    from transformers import AutoModelForCausalLM

    bf16 = resolve_model("tiny", device="cpu")
    model = AutoModelForCausalLM.from_pretrained(
        bf16.path, dtype=torch.bfloat16, quantization_config=bnb_config_of(prequant), device_map={"": "cpu"}
    )
    model.save_pretrained(out)
    return out


@pytest.mark.parametrize("prequant", [NF4_DQ, Prequant("fp4", False, "bf16", "fp16")], ids=lambda p: p.label)
def test_layer_by_layer_checkpoint_equals_save_pretrained(
    prequant: Prequant, tmp_cache: Path, tmp_path: Path, read_safetensors
) -> None:
    ours = Path(resolve_model("tiny", device="cpu", prequant=prequant).path)
    reference = read_safetensors(_save_pretrained_reference(prequant, tmp_path / "reference"))
    mine = read_safetensors(ours)
    assert sorted(mine) == sorted(reference)
    for key, tensor in reference.items():
        assert (mine[key].dtype, mine[key].shape) == (tensor.dtype, tensor.shape), key
        # Same seed, same draw order, same device, bitsandbytes' own quantizer: the same bytes.
        assert torch.equal(mine[key].view(torch.uint8), tensor.view(torch.uint8)), key
    config = json.loads((ours / "config.json").read_text())
    expected = json.loads((tmp_path / "reference" / "config.json").read_text())
    assert config["quantization_config"] == expected["quantization_config"]
    assert config["dtype"] == expected["dtype"] and config["architectures"] == expected["architectures"]
    index = json.loads((ours / INDEX_FILE).read_text())
    assert set(index["weight_map"]) == set(mine)
    assert is_materialized("tiny", prequant)
    assert not is_materialized("tiny", Prequant("nf4", False, "uint8", "bf16"))


def test_prequantized_case_loads_and_trains_a_qlora_step(tmp_cache: Path) -> None:
    import bitsandbytes as bnb

    case = Case("tiny", compute_dtype="bf16", seq_len=32, prequantized=True)
    resolved = resolve_model(case.model, device="cpu", prequant=Prequant.of_case(case))
    model = load.load_model(case, resolved.path, "cpu")
    linear4 = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4) == 14  # 7 projections x 2 layers
    assert all(m.weight.quant_state.quant_type == "nf4" and m.weight.quant_state.nested for m in linear4)
    model = load.add_lora(load.prepare(model, case), case)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ids = torch.randint(0, 1024, (1, case.seq_len), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(3):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_a_case_that_disagrees_with_its_checkpoint_is_refused(tmp_cache: Path) -> None:
    path = Path(resolve_model("tiny", device="cpu", prequant=NF4_DQ).path)
    check_prequantized_dir(path, NF4_DQ)  # agrees: no error
    other = Prequant("fp4", False, "uint8", "fp16")
    with pytest.raises(CaseError, match="bnb_4bit_quant_type: the case asks 'fp4', the checkpoint has 'nf4'"):
        resolve_model(str(path), device="cpu", prequant=other)
    bf16 = resolve_model("tiny", device="cpu").path
    with pytest.raises(CaseError, match="not pre-quantized"):
        resolve_model(bf16, device="cpu", prequant=NF4_DQ)
    with pytest.raises(ModelUnavailableError, match="needs a shape"):
        resolve_model("org/model", device="cpu", prequant=NF4_DQ)


def test_prequantized_case_fields() -> None:
    case = Case("llama-2-70b", prequantized=True)
    assert case.id.endswith("-preq") and case.hash != Case("llama-2-70b").hash
    assert Prequant.of_case(case) == Prequant("nf4", True, "uint8", "bf16")
    assert Prequant.from_label(Prequant.of_case(case).label) == Prequant.of_case(case)
    with pytest.raises(CaseError, match="a pre-quantized checkpoint is 4-bit"):
        Case("tiny", quant_type="none", prequantized=True)
    with pytest.raises(ValueError, match="not a pre-quantized label"):
        Prequant.from_label("nf5-bf16")


def test_big_model_cases_plan_70b_qlora_and_a_computed_16bit_row_where_it_cannot_load() -> None:
    from qlora_core.cases.gpus import PROFILES
    from qlora_core.cases.matrix import build_matrix

    def big(profile: str, tier: str) -> list[Case]:
        return [p.case for p in build_matrix(PROFILES[profile], tier) if p.case.model == "llama-2-70b"]

    for profile in ("a6000", "a100-40gb", "a100-80gb", "h100"):
        cases = big(profile, "full")
        assert [c.quant_type for c in cases] == ["nf4", "none"], profile
        assert cases[0].prequantized and cases[0].gradient_checkpointing and cases[0].batch_size == 1
        assert cases[0].engine == "trainer" and not cases[1].prequantized
        assert big(profile, "default") == []
    assert [c.quant_type for c in big("h200", "full")] == ["nf4"]  # 128.5 GiB of weights fit 140 GiB
    assert big("t4", "full") == [] and big("t4x2", "full") == []
    # two 24 GB cards: the 70B only on both, FSDP with and without CPU offload
    # (test_matrix checks it)
    assert [(c.num_gpus, c.strategy, c.cpu_offload) for c in big("l4x2", "full")] == [
        (2, "fsdp", True),
        (2, "fsdp", False),
    ]


def test_16bit_70b_is_judged_from_meta_weight_bytes_only_where_they_exceed_the_card() -> None:
    from qlora_core.cases.gpus import PROFILES
    from qlora_core.measurement.result import Result, Status
    from qlora_core.process.child import _judge_16bit_without_checkpoint

    case = Case("llama-2-70b", quant_type="none")
    row = Result.for_case(case, "a100-80gb", "")
    status, reason = _judge_16bit_without_checkpoint(case, PROFILES["a100-80gb"], row)
    assert status == Status.OOM and reason.startswith("load: computed, not measured")
    # bf16 parameters, plus the rotary inv_freq and original_inv_freq buffers (64 fp32 each)
    assert row.weights.computed_weight_bytes == 2 * 68_976_648_192 + 512
    # A card that could hold the weights is not judged; a 4-bit case or another shape never is.
    assert _judge_16bit_without_checkpoint(case, PROFILES["h200"], Result.for_case(case, "h200", "")) is None
    q = Case("llama-2-70b", prequantized=True)
    assert _judge_16bit_without_checkpoint(q, PROFILES["a6000"], Result.for_case(q, "a6000", "")) is None
    small = Case("tiny", quant_type="none")
    assert _judge_16bit_without_checkpoint(small, PROFILES["t4"], Result.for_case(small, "t4", "")) is None


def test_no_16bit_checkpoint_is_ever_written_for_70b(tmp_cache: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="has no 16-bit checkpoint"):
        resolve_model("llama-2-70b", device="cpu")
