"""Quality measurements: perplexity of a model on held-out text.

Perplexity is exp(mean token cross-entropy) over non-overlapping held-out windows, computed in
eval mode without gradients. Comparable only within one run and one tokenizer.
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def perplexity(model: torch.nn.Module, windows: torch.Tensor, device: str, batch_size: int = 4) -> float:
    """Token-weighted perplexity of `model` over `windows` ([n, seq_len] token ids)."""
    was_training = model.training
    model.eval()
    total_loss = 0.0
    total_tokens = 0
    try:
        for start in range(0, windows.shape[0], batch_size):
            ids = windows[start : start + batch_size].to(device)
            loss = model(input_ids=ids, labels=ids).loss
            # transformers averages over the seq_len-1 shifted targets of each row.
            tokens = ids.shape[0] * (ids.shape[1] - 1)
            total_loss += float(loss) * tokens
            total_tokens += tokens
    finally:
        model.train(was_training)
    if total_tokens == 0:
        raise ValueError("perplexity needs at least one held-out window")
    mean = total_loss / total_tokens
    return math.exp(mean) if math.isfinite(mean) and mean < 700 else math.inf
