"""The lesson's recipe, from a Case: 4-bit load -> prepare_model_for_kbit_training -> LoRA.

Each stage is its own function so the runner can measure memory between them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from qlora_core.cases.case import Case, CaseError
from qlora_core.process.distributed import loads_on_rank0_only, local_device_index

if TYPE_CHECKING:  # typing only: transformers is imported where a model is built, not here
    from transformers import PreTrainedModel

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


def load_model(case: Case, path: str, device: str) -> PreTrainedModel:
    """Load the checkpoint at `path` as the case asks (4-bit, 8-bit, or unquantized in the
    compute dtype: 16-bit for the reference, fp32 too for a load-only case).

    Non-quantized parameters (embeddings, norms, lm_head) load in the compute dtype, as they
    would for a user who sets both; prepare_model_for_kbit_training may cast them to fp32 later.
    A pre-quantized checkpoint (`case.prequantized`) loads as users load one, without a
    quantization_config: its own config.json says how it is quantized (checked against the case
    at resolution, `models.prequantized.check_prequantized_dir`).
    """
    from transformers import AutoModelForCausalLM

    rank_device = f"cuda:{local_device_index()}" if device == "cuda" else "cpu"
    if loads_on_rank0_only(case) and local_device_index() != 0:
        model = load_on_meta(case, path, rank_device)
    else:
        # Each rank of a multi-GPU case loads onto its own GPU; under rank-0-only
        # loading rank 0 loads to CPU RAM and FSDP moves each wrapped layer to its GPU.
        on_cpu = device != "cuda" or loads_on_rank0_only(case)
        # An explicit quantization_config=None would make transformers ignore the checkpoint's own.
        quantization = {} if case.prequantized else {"quantization_config": bnb_config(case)}
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=TORCH_DTYPES[case.compute_dtype],
            device_map={"": "cpu" if on_cpu else local_device_index()},
            low_cpu_mem_usage=True,
            **quantization,
        )
        if on_cpu:
            _move_quant_states(model, rank_device)
    # The cache is useless in training and wrong with checkpointing.
    model.config.use_cache = False
    return model


def _move_quant_states(model: torch.nn.Module, device: str) -> None:
    """Move every 4-bit weight's QuantState (absmax, code tables: ~1/64 of the weights' bytes)
    to `device`, in place, leaving the packed data where it is.

    FSDP moves and shards the packed data (its parameters); the state is an attribute FSDP never
    sees, which bitsandbytes' `Linear4bit.forward` reattaches from the module after FSDP flattens
    the weight (`fix_4bit_weight_quant_state_from_module`): it must already be on the rank's GPU.
    This is where transformers 4.x left it under `is_fsdp_enabled()`.
    """
    for module in model.modules():
        state = getattr(module, "quant_state", None)
        if state is not None:
            state.to(device)  # QuantState.to moves its tensors in place


def load_on_meta(case: Case, path: str, device: str) -> PreTrainedModel:
    """A pre-quantized checkpoint's model with every parameter on the meta device and each 4-bit
    weight's QuantState on `device`: what a rank other than 0 holds under FSDP's rank-0-only
    loading (accelerate's `fsdp_cpu_ram_efficient_loading`), until FSDP materializes each wrapped
    layer on its GPU (`param_init_fn`: `to_empty`) and `sync_module_states` broadcasts rank 0's.

    transformers 4.x did this inside `from_pretrained` under `is_fsdp_enabled()`; 5.x (5.17 on the
    GPU machine, 5.24 here) no longer does for bitsandbytes: its quantizer maps an absent
    device_map to the current GPU on every rank, and a "meta" device_map fails the weight
    conversion. So this builds the skeleton as `from_pretrained` does (empty weights, the
    checkpoint's own quantizer replacing the linear layers by `Linear4bit`) and reads from the
    checkpoint only the small statistics tensors, never a packed weight.
    """
    import bitsandbytes as bnb
    from accelerate import init_empty_weights
    from bitsandbytes.functional import QuantState
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.quantizers import AutoHfQuantizer

    dtype = TORCH_DTYPES[case.compute_dtype]
    config = AutoConfig.from_pretrained(path)
    if getattr(config, "quantization_config", None) is None:
        raise CaseError([f"loading on the meta device needs a pre-quantized checkpoint; {path} is not one"])
    quantizer = AutoHfQuantizer.from_config(config.quantization_config, pre_quantized=True)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    quantizer.preprocess_model(model, device_map=None, dtype=dtype)
    linears = {name: m for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    for file in _checkpoint_files(path):
        with safe_open(file, framework="pt", device="cpu") as f:
            stats_keys: dict[str, list[str]] = {}  # "<module>.weight" -> its statistics' keys
            for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                weight, dot, _ = key.partition(".weight.")
                if dot:
                    stats_keys.setdefault(f"{weight}.weight", []).append(key)
            for name, module in linears.items():
                weight = f"{name}.weight"
                if weight not in stats_keys:
                    continue
                stats = {k[len(weight) + 1 :]: f.get_tensor(k) for k in stats_keys[weight]}
                state = QuantState.from_dict(qs_dict=stats, device=torch.device(device))
                module.weight = bnb.nn.Params4bit(
                    torch.empty(f.get_slice(weight).get_shape(), dtype=module.quant_storage, device="meta"),
                    requires_grad=False,
                    quant_state=state,
                    blocksize=state.blocksize,
                    compress_statistics=state.nested,
                    quant_type=state.quant_type,
                    quant_storage=module.quant_storage,
                    module=module,
                    bnb_quantized=True,
                )
                module.quant_state = state
    missing = [name for name, m in linears.items() if getattr(m.weight, "quant_state", None) is None]
    if missing:
        raise CaseError([f"the pre-quantized checkpoint at {path} has no 4-bit weight for {missing[:3]}"])
    # from_config leaves tied weights (lm_head = embeddings) untied; from_pretrained ties them, and
    # FSDP's sync broadcasts the module states of one model, each shared tensor once.
    model.tie_weights()
    quantizer.postprocess_model(model)
    model.hf_quantizer = quantizer
    return model


def _checkpoint_files(path: str) -> list[str]:
    return sorted(str(p) for p in Path(path).glob("*.safetensors"))


def prepare(
    model: PreTrainedModel, case: Case, checkpointing_kwargs: dict[str, Any] | None = None
) -> PreTrainedModel:
    """prepare_model_for_kbit_training when the case asks; otherwise only checkpointing.

    peft turns gradient checkpointing on by default here; we pass the case's choice so the
    checkpointing axis is measured independently of the prepare axis. `checkpointing_kwargs`
    (e.g. `{"use_reentrant": True}`) go to the checkpoint function; None: the libraries' default,
    what the suite's cases run (`tools/int8_checkpointing.py` sets it).
    """
    if case.prepare_kbit:
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=case.gradient_checkpointing,
            gradient_checkpointing_kwargs=checkpointing_kwargs,
        )
    if case.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing_kwargs)
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
