"""The SFT micro-step shared by SFT, RAFT and AMA: the token-level NLL of a collated micro-batch, and the mean
NLL over held-out examples.

    loss = −(1/N) Σ_t mask_t · log π(y_t | y_<t),   N = ``num_tokens`` (the loss tokens of the whole optimizer step,
           so micro-batches of an accumulated step add up to the step's mean)
"""

from __future__ import annotations

import torch

from rlhf_lab.data.collate import TokenizedExample, collate
from rlhf_lab.losses import sft_loss


def micro_batch_loss(model, batch: dict[str, torch.Tensor], num_tokens: float) -> torch.Tensor:
    """Σ over the micro-batch's loss tokens of −log π(y_t | y_<t), divided by ``num_tokens`` (a ``collate`` batch)."""
    width = batch["input_ids"].size(1)
    keep = width - batch["first_target"]  # skip the lm_head on leading prompt positions (22% of SmolLM2's FLOPs)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    logits = logits[:, : keep - 1] if keep > 1 else logits[:, :0]
    start = batch["first_target"]
    return sft_loss(logits, batch["targets"][:, start:], batch["target_mask"][:, start:], num_tokens)


@torch.no_grad()
def evaluate_nll(model, examples: list[TokenizedExample], pad_id: int, batch_size: int) -> float:
    """Mean NLL per loss token over ``examples`` (its exp is the perplexity)."""
    model.eval()
    total, tokens = 0.0, 0.0
    for i in range(0, len(examples), batch_size):
        batch = collate(examples[i:i + batch_size], pad_id)
        n = float(batch["target_mask"].sum())
        total += float(micro_batch_loss(model, batch, 1.0))
        tokens += n
    model.train()
    return total / max(tokens, 1.0)
