"""Rollout batches of online RL (PPO, GRPO): a left-padded prompt followed by a right-padded response per row.

Every response starts in the same column P (the widest prompt), with explicit position ids counted over real
tokens — what generation used — so the logits of columns P−1 .. P+R−2 predict the response tokens of every row.
``micro_batch`` cuts rows out of a rollout and drops the columns that are padding in all of them.
"""

from __future__ import annotations

import torch
from torch import nn

from rlhf_lab.data.records import Prompt
from rlhf_lab.data.templates import render_prompt


def rollout_queries(prompts: list[Prompt], tokenizer, template: str, max_prompt_length: int,
                    ) -> tuple[list[Prompt], list[list[int]]]:
    """The prompts whose rendered text is 1 .. ``max_prompt_length`` tokens, and their token ids (the queries the
    policy answers); longer prompts are left out, not cut, so every query is the whole conversation."""
    kept, ids = [], []
    for p in prompts:
        q = tokenizer(render_prompt(p.messages, template, tokenizer), add_special_tokens=False)["input_ids"]
        if 0 < len(q) <= max_prompt_length:
            kept.append(p)
            ids.append(list(q))
    return kept, ids


def rollout_tensors(queries: list[list[int]], responses: list[list[int]], pad_id: int) -> dict:
    """Rows ``[pad… prompt | response …pad]``: every response starts at column P (the widest prompt).

    ``responses`` / ``response_mask`` are (B, R); ``query_pad`` the left padding of each row; the logits of
    columns P−1 .. P+R−2 predict the response tokens.
    """
    width_q = max(len(q) for q in queries)
    width_r = max(1, max(len(r) for r in responses))
    batch = len(queries)
    input_ids = torch.full((batch, width_q + width_r), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    response_mask = torch.zeros((batch, width_r))
    for row, (q, r) in enumerate(zip(queries, responses, strict=True)):
        input_ids[row, width_q - len(q):width_q] = torch.tensor(q)
        input_ids[row, width_q:width_q + len(r)] = torch.tensor(r, dtype=torch.long)
        attention_mask[row, width_q - len(q):width_q + len(r)] = 1
        response_mask[row, :len(r)] = 1.0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "responses": input_ids[:, width_q:],
            "response_mask": response_mask, "query_pad": torch.tensor([width_q - len(q) for q in queries]),
            "query_width": width_q}


def micro_batch(rollout: dict, rows: torch.Tensor | list[int]) -> dict:
    """The rows' model inputs, trimmed to their own padding (all-pad columns on either side dropped).

    ``start`` is the column whose logits predict the first response token.
    """
    rows = torch.as_tensor(rows)
    left = int(rollout["query_pad"][rows].min())
    response_len = int(rollout["response_mask"][rows].sum(1).max())
    right = rollout["query_width"] + max(response_len, 1)
    input_ids = rollout["input_ids"][rows, left:right]
    attention_mask = rollout["attention_mask"][rows, left:right]
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            # the positions generation used: counted over real tokens only
            "position_ids": (attention_mask.cumsum(1) - 1).clamp(min=0),
            "start": rollout["query_width"] - 1 - left,
            "responses": rollout["responses"][rows, :right - rollout["query_width"]],
            "response_mask": rollout["response_mask"][rows, :right - rollout["query_width"]]}


def pad_columns(x: torch.Tensor, width: int) -> torch.Tensor:
    """Right-pad the last dimension of ``x`` with zeros to ``width`` columns."""
    return torch.nn.functional.pad(x, (0, width - x.size(1)))


def row_chunks(n: int, size: int) -> list[list[int]]:
    """``[0, size)``, ``[size, 2·size)``, … covering ``range(n)``."""
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def causal_lm(model: nn.Module) -> nn.Module:
    """The causal LM inside a PEFT wrapper (adapters stay active), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def response_hidden(model: nn.Module, batch: dict) -> torch.Tensor:
    """Last hidden states of the columns ``start .. T−2`` of a ``micro_batch`` (the positions that predict the
    response tokens)."""
    lm = causal_lm(model)
    return lm.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            position_ids=batch["position_ids"], use_cache=False).last_hidden_state[:, batch["start"]:-1]


def response_logits(model: nn.Module, batch: dict) -> torch.Tensor:
    """The LM logits of the columns that predict the response tokens of a ``micro_batch``: (B, R, V)."""
    return causal_lm(model).get_output_embeddings()(response_hidden(model, batch))


def reference_logits(policy: nn.Module, ref_model: nn.Module | None, batch: dict) -> torch.Tensor:
    """π_ref's response logits: the policy with its LoRA adapter disabled (``ref_model`` None), or the frozen copy
    of a full fine-tune."""
    if ref_model is None:
        with policy.disable_adapter():
            return response_logits(policy, batch)
    return response_logits(ref_model, batch)
