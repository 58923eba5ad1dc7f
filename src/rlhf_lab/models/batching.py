"""Batching token sequences: right padding with an explicit attention mask (never rely on the pad id)."""

from __future__ import annotations

import torch


def pad_right(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of shape (B, longest); row b holds seqs[b] then padding."""
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        input_ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
        attention_mask[row, : len(s)] = 1
    return input_ids, attention_mask


def shared_prompt_layout(lengths: list[tuple[int, int, int]],
                         dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Attention mask and positions of right-padded rows holding ``prompt + first + second``, from the
    (len(prompt), len(first), len(second)) of each row: every token of ``second`` sees exactly what it would
    see in its own ``prompt + second`` row.

    ``attention_mask`` is a 4-D additive mask (B, 1, T, T), causal, with ``second`` blocked from ``first``;
    ``position_ids`` (B, T) restart ``second`` at len(prompt); ``first_end`` / ``second_end`` (B,) are the
    positions of each reply's last token (where a reward model reads its score).
    """
    totals = [n_p + n_x + n_y for n_p, n_x, n_y in lengths]
    b, width = len(lengths), max(totals)
    position_ids = torch.zeros((b, width), dtype=torch.long)
    allowed = torch.zeros((b, width, width), dtype=torch.bool)
    for row, ((n_p, n_x, n_y), n) in enumerate(zip(lengths, totals, strict=True)):
        position_ids[row, :n_p + n_x] = torch.arange(n_p + n_x)
        position_ids[row, n_p + n_x:n] = torch.arange(n_p, n_p + n_y)
        allowed[row, :n, :n] = torch.ones(n, n, dtype=torch.bool).tril()
        allowed[row, n_p + n_x:n, n_p:n_p + n_x] = False  # second never sees first
        allowed[row, n:, 0] = True  # padding rows attend somewhere (an all-masked row would give NaN)
    attention_mask = torch.zeros((b, 1, width, width), dtype=dtype).masked_fill(
        ~allowed[:, None], torch.finfo(dtype).min)
    return {"attention_mask": attention_mask, "position_ids": position_ids,
            "first_end": torch.tensor([n_p + n_x - 1 for n_p, n_x, _ in lengths]),
            "second_end": torch.tensor(totals) - 1}


def shared_prompt_rows(prompts: list[list[int]], first: list[list[int]], second: list[list[int]], pad_id: int,
                       dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """One right-padded row per prompt holding ``prompt + first + second``: the prompt is read once for both.

    ``input_ids`` (B, T) plus ``shared_prompt_layout``'s mask, positions and reply ends.
    """
    rows = [p + x + y for p, x, y in zip(prompts, first, second, strict=True)]
    layout = shared_prompt_layout([(len(p), len(x), len(y)) for p, x, y in zip(prompts, first, second, strict=True)],
                                  dtype)
    input_ids = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, :len(ids)] = torch.tensor(ids)
    return {"input_ids": input_ids, **layout}


def split_shared_prefix(first: list[int], second: list[int]) -> int:
    """Length of the longest common prefix of two token sequences, leaving each at least one token of its own
    (a reply's last token must be its own position)."""
    limit = min(len(first), len(second)) - 1
    n = 0
    while n < limit and first[n] == second[n]:
        n += 1
    return max(n, 0)
