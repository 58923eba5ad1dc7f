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


def shared_prompt_layout(lengths: list[tuple[int, ...]], dtype: torch.dtype = torch.float32) -> dict:
    """Attention mask and positions of right-padded rows holding ``prompt + reply_1 + … + reply_m``, from each
    row's (len(prompt), len(reply_1), …): every reply token sees exactly what it would see in its own
    ``prompt + reply`` row — the prompt and its own reply's earlier tokens, never another reply.

    ``attention_mask`` is a 4-D additive mask (B, 1, T, T); ``position_ids`` (B, T) restart every reply at
    len(prompt); ``reply_ends`` lists per row the position of each reply's last token (where a reward model
    reads its score). Rows of exactly two replies also get ``first_end`` / ``second_end`` (B,) tensors.
    """
    totals = [sum(row) for row in lengths]
    b, width = len(lengths), max(totals)
    position_ids = torch.zeros((b, width), dtype=torch.long)
    allowed = torch.zeros((b, width, width), dtype=torch.bool)
    reply_ends: list[list[int]] = []
    for row, (n_p, *replies) in enumerate(lengths):
        position_ids[row, :n_p] = torch.arange(n_p)
        allowed[row, :n_p, :n_p] = torch.ones(n_p, n_p, dtype=torch.bool).tril()
        start, ends = n_p, []
        for n_y in replies:
            stop = start + n_y
            position_ids[row, start:stop] = torch.arange(n_p, n_p + n_y)
            allowed[row, start:stop, :n_p] = True  # the prompt
            allowed[row, start:stop, start:stop] = torch.ones(n_y, n_y, dtype=torch.bool).tril()  # itself
            ends.append(stop - 1)
            start = stop
        allowed[row, totals[row]:, 0] = True  # padding rows attend somewhere (an all-masked row would give NaN)
        reply_ends.append(ends)
    attention_mask = torch.zeros((b, 1, width, width), dtype=dtype).masked_fill(
        ~allowed[:, None], torch.finfo(dtype).min)
    out = {"attention_mask": attention_mask, "position_ids": position_ids, "reply_ends": reply_ends}
    if all(len(ends) == 2 for ends in reply_ends):
        out["first_end"] = torch.tensor([ends[0] for ends in reply_ends])
        out["second_end"] = torch.tensor([ends[1] for ends in reply_ends])
    return out


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


def pair_rows(chosen: list[list[int]], rejected: list[list[int]], pad_id: int,
              dtype: torch.dtype = torch.float32) -> dict:
    """``shared_prompt_rows`` for pairs of whole texts: each pair's longest common prefix (``split_shared_prefix``,
    the prompt) once, then the rest of the chosen and of the rejected text. Adds ``splits``: the prefix lengths."""
    splits = [split_shared_prefix(c, r) for c, r in zip(chosen, rejected, strict=True)]
    rows = shared_prompt_rows([c[:n] for c, n in zip(chosen, splits, strict=True)],
                              [c[n:] for c, n in zip(chosen, splits, strict=True)],
                              [r[n:] for r, n in zip(rejected, splits, strict=True)], pad_id, dtype)
    return {**rows, "splits": splits}


def group_rows(prompts: list[list[int]], replies: list[list[list[int]]], pad_id: int,
               dtype: torch.dtype = torch.float32) -> dict:
    """``shared_prompt_rows`` for any number of replies: row b holds ``prompts[b] + replies[b][0] + … +
    replies[b][G−1]``, the prompt read once for its G replies (GRPO's groups).

    Returns the model inputs (``input_ids``, 4-D ``attention_mask``, ``position_ids``) and, for output row
    n = Σ_{b'<b} G_b' + g (the g-th reply of prompt b, in order): ``row`` (N,) its input row, ``positions`` (N, L)
    the input position whose logits predict reply token t, ``targets`` (N, L) that token, ``mask`` (N, L) 1 on
    real tokens (L = the longest reply, at least 1), and ``first_position``: the first position any reply needs.
    """
    layout = shared_prompt_layout([(len(p), *(len(r) for r in rs)) for p, rs in zip(prompts, replies, strict=True)],
                                  dtype)
    input_ids = torch.full(layout["position_ids"].shape, pad_id, dtype=torch.long)
    n = sum(len(rs) for rs in replies)
    width = max(1, max(len(r) for rs in replies for r in rs))
    row = torch.zeros(n, dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    targets = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width))
    out = 0
    for b, (p, rs) in enumerate(zip(prompts, replies, strict=True)):
        ids = p + [t for r in rs for t in r]
        input_ids[b, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        start = len(p)
        for r in rs:
            # reply token 0 is predicted at the prompt's last position, token t > 0 at its own position t − 1
            row[out] = b
            if r:
                positions[out, :len(r)] = torch.tensor([len(p) - 1, *range(start, start + len(r) - 1)])
                targets[out, :len(r)] = torch.tensor(r, dtype=torch.long)
                mask[out, :len(r)] = 1.0
            else:
                positions[out] = len(p) - 1
            start += len(r)
            out += 1
    first_position = max(min(len(p) for p in prompts) - 1, 0)
    return {"input_ids": input_ids, "attention_mask": layout["attention_mask"],
            "position_ids": layout["position_ids"], "row": row, "positions": positions, "targets": targets,
            "mask": mask, "first_position": first_position}
