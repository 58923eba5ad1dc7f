"""Per-token log-probabilities of responses under a causal LM — the quantity PPO, DPO, RRHF, KL and AMA all need.

A sequence is ``prompt_ids + response_ids``; only response tokens are scored. Rows are right-padded with an
explicit attention mask (pad may equal EOS), and logits are kept only from the first position that predicts a
response token, which skips the lm_head on the prompt.
"""

from __future__ import annotations

import torch

from rlhf_lab.losses import token_logprobs
from rlhf_lab.models.batching import pad_right, shared_prompt_rows


def concat_batch(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``prompt + response`` rows with the response mask aligned to the *targets*.

    Returns ``input_ids`` / ``attention_mask`` (B, T), ``targets`` (B, T−1) = inputs shifted left,
    ``response_mask`` (B, T−1) = 1 where the target token is a response token, and ``first_target``: the first
    column any row needs (every earlier position only predicts prompt tokens).
    """
    seqs = [p + r for p, r in zip(prompts, responses, strict=True)]
    input_ids, attention_mask = pad_right(seqs, pad_id)
    response_mask = torch.zeros_like(input_ids, dtype=torch.float)
    for row, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        response_mask[row, len(p): len(p) + len(r)] = 1.0
    first_target = max(min(len(p) for p in prompts) - 1, 0)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "targets": input_ids[:, 1:],
            "response_mask": response_mask[:, 1:], "first_target": first_target}


def batch_token_logprobs(model, batch: dict[str, torch.Tensor], return_logits: bool = False):
    """log π(y_t | x, y_<t) for every target column from ``batch['first_target']`` on: shape (B, T−1−first).

    Zero where ``response_mask`` is 0 is NOT applied here — multiply by ``batch['response_mask'][:, first:]``.
    With ``return_logits`` also returns the (B, T−1−first, V) logits (for entropy or value heads).
    """
    width = batch["input_ids"].size(1)
    start = batch["first_target"]
    keep = width - start
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   logits_to_keep=keep).logits[:, :-1]
    logps = token_logprobs(logits, batch["targets"][:, start:])
    return (logps, logits) if return_logits else logps


@torch.no_grad()
def response_logprobs(model, prompts: list[list[int]], responses: list[list[int]], pad_id: int,
                      batch_size: int = 8) -> list[torch.Tensor]:
    """Per-token log-probs of each response (a 1-D float tensor of len(response) per row), in input order.

    Rows are batched by total length so padding stays small; the model is put in eval mode for the call.
    """
    was_training = model.training
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(responses[i]))
    out: list[torch.Tensor | None] = [None] * len(prompts)
    for i in range(0, len(order), batch_size):
        rows = order[i:i + batch_size]
        batch = concat_batch([prompts[j] for j in rows], [responses[j] for j in rows], pad_id)
        logps = batch_token_logprobs(model, batch).float()
        start = batch["first_target"]
        for k, j in enumerate(rows):
            begin = len(prompts[j]) - 1 - start
            out[j] = logps[k, begin: begin + len(responses[j])].clone()
    model.train(was_training)
    return out  # type: ignore[return-value]


def shared_prompt_batch(prompts: list[list[int]], first: list[list[int]], second: list[list[int]],
                        pad_id: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """One row per prompt holding ``prompt + first + second`` (``shared_prompt_rows``), plus what scoring the
    replies' tokens needs: every reply token gets exactly the logits it would get in its own ``prompt + reply``
    row. Returns the model inputs, ``positions`` / ``targets`` / ``mask`` (2B, L): for output row r (0..B−1 =
    the ``first`` replies, B..2B−1 = the ``second`` ones) the input position whose logits predict reply token t,
    that token, and 1 where t is a real token (L = the longest reply), and ``first_position``: the first
    position any row needs.
    """
    b = len(prompts)
    rows = shared_prompt_rows(prompts, first, second, pad_id, dtype)
    reply_len = max(max(len(x) for x in first), max(len(y) for y in second))
    positions = torch.zeros((2 * b, reply_len), dtype=torch.long)
    targets = torch.full((2 * b, reply_len), pad_id, dtype=torch.long)
    mask = torch.zeros((2 * b, reply_len))
    for row, (p, x, y) in enumerate(zip(prompts, first, second, strict=True)):
        n_p, n_x = len(p), len(x)
        # first[t] is predicted at position n_p − 1 + t; second[0] at n_p − 1, second[t] at n_p + n_x + t − 1
        positions[row, :n_x] = torch.arange(n_p - 1, n_p - 1 + n_x)
        positions[b + row, :len(y)] = torch.tensor([n_p - 1, *range(n_p + n_x, n_p + n_x + len(y) - 1)])
        targets[row, :n_x], targets[b + row, :len(y)] = torch.tensor(x), torch.tensor(y)
        mask[row, :n_x], mask[b + row, :len(y)] = 1.0, 1.0
    first_position = max(min(len(p) for p in prompts) - 1, 0)
    return {"input_ids": rows["input_ids"], "attention_mask": rows["attention_mask"],
            "position_ids": rows["position_ids"], "positions": positions, "targets": targets, "mask": mask,
            "first_position": first_position}


def shared_prompt_logprobs(model, prompts: list[list[int]], first: list[list[int]], second: list[list[int]],
                           pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of two replies to each prompt from one forward pass that reads the prompt once.

    Returns ``(logps, mask)`` of shape (2B, L): rows 0..B−1 score ``first[i]``, rows B..2B−1 ``second[i]``, zero
    past each reply's end. Equal to scoring ``prompt + reply`` rows separately (``concat_batch``) up to float
    rounding, with a prompt of P tokens costing P instead of 2P; the lm_head runs only from the first position
    any reply needs.
    """
    dtype = next(model.parameters()).dtype
    batch = shared_prompt_batch(prompts, first, second, pad_id, dtype)
    start = batch["first_position"]
    width = batch["input_ids"].size(1)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"], logits_to_keep=width - start).logits
    b = len(prompts)
    rows = torch.arange(2 * b).remainder(b)[:, None].expand_as(batch["positions"])
    picked = logits[rows, (batch["positions"] - start).clamp(min=0)]
    logps = token_logprobs(picked, batch["targets"]) * batch["mask"]
    return logps, batch["mask"]


def group_logits(model, batch: dict) -> torch.Tensor:
    """The (N, L, V) logits that predict each reply token of ``models.batching.group_rows`` rows, from one pass
    that reads every prompt once for its G replies. The lm_head runs only on those N·L positions (not on the
    prompt, not once per row position). ``model`` is a causal LM (or a PEFT wrapper of one)."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = lm.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              position_ids=batch["position_ids"], use_cache=False).last_hidden_state
    picked = hidden[batch["row"][:, None].expand_as(batch["positions"]), batch["positions"]]
    return lm.get_output_embeddings()(picked)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H = −Σ_v p_v log p_v per position, p = softmax(logits) (computed in float32)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)
