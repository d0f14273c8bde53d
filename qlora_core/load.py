"""The lesson's recipe, from a Case: 4-bit load -> prepare_model_for_kbit_training -> LoRA.

Each stage is its own function so the runner can measure memory between them.
"""

from __future__ import annotations

from typing import Any

import torch

from qlora_core.spec import Case, CaseError

TORCH_DTYPES: dict[str, torch.dtype] = {
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp32": torch.float32,
}


def bnb_config(case: Case) -> Any:
    """BitsAndBytesConfig for a 4-bit (or 8-bit) case; None for unquantized weights.

    8-bit: `load_in_8bit` with bitsandbytes' defaults (LLM.int8(), outlier threshold 6.0).
    fp32 compute is expressed by *omitting* bnb_4bit_compute_dtype: that is bitsandbytes'
    default, the configuration the lesson's "float32" row describes.
    """
    if not case.is_quantized:
        return None
    from transformers import BitsAndBytesConfig

    if case.quant_type == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    kwargs: dict[str, Any] = {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": case.quant_type,
        "bnb_4bit_use_double_quant": case.double_quant,
        "bnb_4bit_quant_storage": TORCH_DTYPES.get(case.quant_storage, torch.uint8),
    }
    if case.compute_dtype != "fp32":
        kwargs["bnb_4bit_compute_dtype"] = TORCH_DTYPES[case.compute_dtype]
    return BitsAndBytesConfig(**kwargs)


def load_model(case: Case, path: str, device: str) -> torch.nn.Module:
    """Load the checkpoint at `path` as the case asks (4-bit, 8-bit, or unquantized in the
    compute dtype: 16-bit for the reference, fp32 too for a load-only case).

    Non-quantized parameters (embeddings, norms, lm_head) load in the compute dtype, as they
    would for a user who sets both; prepare_model_for_kbit_training may cast them to fp32 later.
    A pre-quantized checkpoint (`case.prequantized`) loads as users load one, without a
    quantization_config: its own config.json says how it is quantized (checked against the case
    at resolution, `models.prequantized.check_prequantized_dir`).
    """
    from transformers import AutoModelForCausalLM

    from qlora_core.distributed import local_device_index

    # Each rank of a multi-GPU case loads onto its own GPU (issue 13).
    device_map = {"": local_device_index()} if device == "cuda" else {"": "cpu"}
    # An explicit quantization_config=None would make transformers ignore the checkpoint's own.
    quantization = {} if case.prequantized else {"quantization_config": bnb_config(case)}
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=TORCH_DTYPES[case.compute_dtype],
        device_map=device_map,
        low_cpu_mem_usage=True,
        **quantization,
    )
    # The cache is useless in training and wrong with checkpointing.
    model.config.use_cache = False
    return model


def prepare(model: torch.nn.Module, case: Case) -> torch.nn.Module:
    """prepare_model_for_kbit_training when the case asks; otherwise only checkpointing.

    peft turns gradient checkpointing on by default here; we pass the case's choice so the
    checkpointing axis is measured independently of the prepare axis.
    """
    if case.prepare_kbit:
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=case.gradient_checkpointing)
    if case.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        # Reentrant checkpointing needs an input that requires grad when the embeddings are
        # frozen, or no gradient reaches the adapters (peft's prepare does the same).
        model.enable_input_require_grads()
    return model


def check_target_modules(model: torch.nn.Module, case: Case) -> None:
    """Raise CaseError unless every target module names linear layers of `model`.

    peft matches a target against the end of each module's dotted name; a target that matches
    nothing is a mistake in the case, reported with the names the model does have.
    """
    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    missing = [t for t in case.target_modules if not any(n == t or n.endswith(f".{t}") for n in names)]
    if missing:
        available = sorted({name.rsplit(".", 1)[-1] for name in names})
        problem = f"target_modules {missing} match no linear layer of {case.model}; it has {available}"
        raise CaseError([problem])


def add_lora(model: torch.nn.Module, case: Case) -> Any:
    """get_peft_model with the case's LoRA settings (peft's defaults otherwise, as the lesson)."""
    from peft import LoraConfig, get_peft_model

    check_target_modules(model, case)

    config = LoraConfig(
        r=case.lora_r,
        lora_alpha=case.lora_alpha,
        lora_dropout=case.lora_dropout,
        target_modules=list(case.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
