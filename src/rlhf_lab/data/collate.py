"""Tokenised training examples and preference pairs, shared by every recipe that trains on text
(SFT and RAFT's and AMA's SFT steps on examples; DPO and the reward model on pairs).

    example   = prompt ids + response ids, with a loss mask (1 where the token carries the loss)
    collate   = right-padded rows; targets = inputs shifted left; the target mask says which targets count
    pair      = prompt ids, chosen-reply ids, rejected-reply ids (kept apart; ``.chosen`` = prompt + chosen)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlhf_lab.data.records import Pair, Sample
from rlhf_lab.data.templates import render_prompt, render_response


@dataclass
class TokenizedExample:
    input_ids: list[int]
    loss_mask: list[int]


def tokenize_examples(samples: list[Sample], tokenizer, *, template: str, max_length: int,
                      truncation: str = "truncate", loss_on: str = "response") -> tuple[list[TokenizedExample], int]:
    """Token ids and loss masks of (prompt, response) samples; returns the examples and how many were dropped.

    An example longer than ``max_length`` tokens has its response cut (``truncation="truncate"``) or is dropped
    (``"drop"``, or when the prompt alone leaves no room). ``loss_on="response"`` masks the prompt tokens;
    ``"all"`` puts the loss on every token and groups the examples into ``max_length`` blocks (``group_texts``).
    """
    examples, dropped = [], 0
    for sample in samples:
        prompt_text = render_prompt(sample.prompt.messages, template, tokenizer) if sample.prompt.messages else ""
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"] if prompt_text else []
        response_ids = tokenizer(render_response(sample.response, template, tokenizer),
                                 add_special_tokens=False)["input_ids"]
        if len(prompt_ids) + len(response_ids) > max_length:
            if truncation == "drop" or len(prompt_ids) >= max_length - 1:
                dropped += 1
                continue
            response_ids = response_ids[: max_length - len(prompt_ids)]
        prompt_mask = 0 if loss_on == "response" else 1
        examples.append(TokenizedExample(prompt_ids + response_ids,
                                         [prompt_mask] * len(prompt_ids) + [1] * len(response_ids)))
    if loss_on == "all":
        examples = group_texts(examples, max_length)
    return examples, dropped


@dataclass
class TokenizedPair:
    """A preference pair as token ids. ``prompt_ids`` is empty when ``fit_pair(..., keep="end")`` cut into the
    prompt: then each reply's ids start with what is left of its own copy of the prompt."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    uid: int = -1  # the pair's ``uid`` (``meta["uid"]``, else its position in the list tokenised)
    source: Pair | None = field(default=None, repr=False)  # the pair it came from (its reply texts)
    reply_lengths: tuple[int, int] = (0, 0)  # tokens of the chosen and the rejected reply before any cut

    @property
    def chosen(self) -> list[int]:
        """Prompt + chosen reply: the sequence a reward model scores."""
        return self.prompt_ids + self.chosen_ids

    @property
    def rejected(self) -> list[int]:
        return self.prompt_ids + self.rejected_ids

    @property
    def length(self) -> int:
        """Tokens of the longer of the two sequences (what padding a batch depends on)."""
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))


def tokenize_pairs(pairs: list[Pair], tokenizer, *, template: str, max_length: int, truncation: str,
                   keep: str) -> tuple[list[TokenizedPair], int]:
    """Token ids of each pair's rendered prompt and replies, fitted to ``max_length`` by ``fit_pair``; returns
    the pairs that fit and how many were dropped."""
    out, dropped = [], 0
    for index, pair in enumerate(pairs):
        prompt_ids = tokenizer(render_prompt(pair.prompt.messages, template, tokenizer),
                               add_special_tokens=False)["input_ids"]
        chosen, rejected = (tokenizer(render_response(text, template, tokenizer), add_special_tokens=False)["input_ids"]
                            for text in (pair.chosen, pair.rejected))
        whole = TokenizedPair(prompt_ids, chosen, rejected, int(pair.meta.get("uid", index)), pair,
                              (len(chosen), len(rejected)))
        fitted = fit_pair(whole, max_length, truncation, keep)
        if fitted is None:
            dropped += 1
        else:
            out.append(fitted)
    return out, dropped


def fit_pair(pair: TokenizedPair, max_length: int, truncation: str, keep: str) -> TokenizedPair | None:
    """``pair`` if prompt + longer reply fits in ``max_length`` tokens; else ``None`` with ``truncation="drop"``,
    else cut. ``keep="start"`` (policy log-probs: DPO and its variants) keeps the prompt whole and cuts both replies
    to the room left (``None`` if no room or an empty reply); ``keep="end"`` (reward models, which read the score
    at the reply's end marker) keeps the last ``max_length`` tokens of prompt + reply, for each reply apart."""
    if keep == "end":
        if pair.length <= max_length:
            return pair
        if truncation == "drop":
            return None
        return TokenizedPair([], pair.chosen[-max_length:], pair.rejected[-max_length:], pair.uid, pair.source,
                             pair.reply_lengths)
    room = max_length - len(pair.prompt_ids)
    chosen, rejected = pair.chosen_ids, pair.rejected_ids
    if max(len(chosen), len(rejected)) > room:
        if truncation == "drop" or room < 1:
            return None
        chosen, rejected = chosen[:room], rejected[:room]
    if not chosen or not rejected:
        return None
    return TokenizedPair(pair.prompt_ids, chosen, rejected, pair.uid, pair.source, pair.reply_lengths)


def group_texts(examples: list[TokenizedExample], block_size: int) -> list[TokenizedExample]:
    """LMFlow's group_texts: concatenate every example and cut into full blocks (the remainder is dropped)."""
    ids = [t for e in examples for t in e.input_ids]
    usable = len(ids) // block_size * block_size
    return [TokenizedExample(ids[i:i + block_size], [1] * block_size) for i in range(0, usable, block_size)]


def collate(examples: list[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch; targets are the inputs shifted left, masked where no loss is taken."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    loss_mask = torch.zeros((len(examples), width), dtype=torch.float)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids)
        attention_mask[row, :n] = 1
        loss_mask[row, :n] = torch.tensor(e.loss_mask, dtype=torch.float)
    # position t predicts token t+1: the loss mask of the target token decides
    first_target = int(loss_mask[:, 1:].argmax(dim=1).min()) if loss_mask[:, 1:].any() else 0
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "targets": input_ids[:, 1:],
        "target_mask": loss_mask[:, 1:],
        # logits are only needed from the first position that predicts a loss token onwards
        "first_target": first_target,
    }
