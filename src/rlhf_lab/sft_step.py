"""The SFT step shared by SFT, RAFT and AMA: the gradients of one optimizer step's token-mean NLL, accumulated
over micro-batches and processes, and the mean NLL over held-out examples.

    loss = −(1/N) Σ_{rows, t} mask_t · log π(y_t | y_<t),   N = the loss tokens of the whole global batch
    each micro-batch contributes its own sum / N (× world size: DDP averages gradients over processes), so the
    accumulated gradient is exactly that of one big batch
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from rlhf_lab.data.collate import TokenizedExample, collate
from rlhf_lab.engine import Run, Throughput, check_finite, split_for_process
from rlhf_lab.losses import sft_loss


def sft_backward(run: Run, model, examples: list[TokenizedExample], indices: list[int], pad_id: int,
                 accumulation: int, step: int, source: str, throughput: Throughput | None = None) -> torch.Tensor:
    """Backward of one optimizer step's SFT loss over the global batch ``indices``: this process's micro-batches
    (``accumulation`` of them; DDP syncs on the last one). ``step`` and ``source`` name a non-finite loss.
    Returns this process's share of the step loss (sum it over processes for the step's loss)."""
    world = run.world_size
    indices = sorted(indices, key=lambda i: len(examples[i].input_ids))  # less padding; the loss is a sum
    step_tokens = sum(sum(examples[i].loss_mask[1:]) for i in indices)
    micro_batches = [m for m in split_for_process(indices, world, run.rank, accumulation) if m]
    total = torch.zeros(())
    for k, micro in enumerate(micro_batches):
        batch = collate([examples[i] for i in micro], pad_id)
        sync = k == len(micro_batches) - 1
        with run.accelerator.autocast(), (nullcontext() if sync else run.accelerator.no_sync(model)):
            loss = micro_batch_loss(model, batch, step_tokens) * world
            check_finite(loss, step, source, run.checkpoints)
            run.accelerator.backward(loss)
        total += loss.detach() / world
        if throughput is not None:
            throughput.add(int(batch["attention_mask"].sum()))
    return total


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
