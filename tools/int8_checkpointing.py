"""LLM.int8() LoRA under gradient checkpointing, reentrant or not, beside its NF4 twin (on a GPU).

Prints one JSON line: the allocator's peak above the LoRA stage; run each in a fresh process.
See docs/fit.md#llmint8-under-gradient-checkpointing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's qlora_core, run from anywhere

MODEL = "llama-2-7b"
BATCH, SEQ, STEPS = 1, 512, 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("quant", choices=("int8", "nf4"))
    parser.add_argument("checkpointing", choices=("reentrant", "nonreentrant"))
    args = parser.parse_args()

    import bitsandbytes
    import peft
    import torch
    import transformers

    from qlora_core.cases.case import Case
    from qlora_core.models import load
    from qlora_core.models.resolve import resolve_model

    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU: bitsandbytes trains LLM.int8() through MatMul8bitLt on CUDA only")
    reentrant = args.checkpointing == "reentrant"
    # The suite's recipe (qlora_core.models.load) for the case, with the checkpointing mode set.
    case = Case(MODEL, quant_type=args.quant, compute_dtype="fp16", batch_size=BATCH, seq_len=SEQ)
    model = load.load_model(case, resolve_model(MODEL, device="cuda").path, "cuda")
    model = load.prepare(model, case, checkpointing_kwargs={"use_reentrant": reentrant})
    model = load.add_lora(model, case).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    torch.cuda.synchronize()
    lora_stage = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    ids = torch.randint(0, model.config.vocab_size, (BATCH, SEQ), device="cuda")
    start = time.perf_counter()
    for _ in range(STEPS):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    gib = 2**30
    print(
        json.dumps(
            {
                "model": MODEL,
                "quant": args.quant,
                "use_reentrant": reentrant,
                "batch": BATCH,
                "seq": SEQ,
                "steps": STEPS,
                "lora_stage_gib": lora_stage / gib,
                "peak_alloc_gib": peak / gib,
                "peak_above_lora_gib": (peak - lora_stage) / gib,
                "s_per_step": (time.perf_counter() - start) / STEPS,
                "loss": float(loss),
                "gpu": torch.cuda.get_device_name(0),
                "versions": {
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "peft": peft.__version__,
                    "bitsandbytes": bitsandbytes.__version__,
                },
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
