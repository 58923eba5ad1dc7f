"""Score (prompt, response) pairs with one reward model or an ensemble.

Members trained on a shared frozen trunk (``train-rm --trainable head|top:K --ensemble_size k``) are scored with
one trunk forward pass: the manifest says how many bottom layers the members share, the trunk runs once, and
each member runs only its own top layers and head. Other reward models run one full forward each. Replies to the
same prompt (best-of-n samples, preference pairs) share rows that hold the prompt once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rlhf_lab.data.records import Message
from rlhf_lab.data.templates import render_prompt, render_response
from rlhf_lab.errors import UserError
from rlhf_lab.models.batching import pad_right, shared_prompt_layout
from rlhf_lab.rewards.model import (
    TopStack,
    decoder_layers,
    pool_last,
    read_manifest,
    reward_model_dirs,
    trunk_hidden,
)

MAX_ROW_TOKENS = 2048  # a shared-prompt row's width cap: the attention mask and scores grow with its square


@dataclass
class Member:
    name: str
    model: torch.nn.Module
    reward_mean: float | None
    reward_std: float | None


class RewardScorer:
    """Scores with every member of one or more reward models; ``score`` returns a (k, N) tensor."""

    def __init__(self, names: list[str], dtype: torch.dtype = torch.float32, batch_size: int = 16,
                 allow_pickle: bool = False, share_prompt: bool = True) -> None:
        self.batch_size = batch_size
        self.share_prompt = share_prompt
        self.members: list[Member] = []
        self.groups: list[tuple[list[int], int]] = []  # (member indices, shared trunk layers)
        self.tops: dict[int, TopStack] = {}
        tokenizer_dir = None
        for name in names:
            dirs = reward_model_dirs(name)
            manifest = read_manifest(name)
            first = len(self.members)
            for d in dirs:
                model = AutoModelForSequenceClassification.from_pretrained(
                    d, dtype=dtype, use_safetensors=not allow_pickle, local_files_only=True)
                if model.config.num_labels != 1:
                    raise UserError(f"{d}: a reward model has num_labels=1, this one has {model.config.num_labels}")
                model.eval().requires_grad_(False)
                label = name if len(dirs) == 1 and manifest is None else f"{name}/{d.relative_to(Path(name))}"
                self.members.append(Member(label, model, getattr(model.config, "reward_mean", None),
                                           getattr(model.config, "reward_std", None)))
                tokenizer_dir = tokenizer_dir or d
            shared = manifest.get("shared_trunk_layers", 0) if manifest and len(dirs) > 1 else 0
            self.groups.append((list(range(first, len(self.members))), shared))
            top = len(decoder_layers(self.members[first].model.base_model)) - shared
            if shared and top:  # each member's own top layers, run on the shared trunk's output
                for m in range(first, len(self.members)):
                    self.tops[m] = TopStack(self.members[m].model.base_model, top, share=True)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        self.template = getattr(self.members[0].model.config, "rlhf_lab_template", "chat")
        self.pad_id = self.members[0].model.config.pad_token_id

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def tokenize_parts(self, prompts: list[list[Message]],
                       responses: list[str]) -> tuple[list[list[int]], list[list[int]]]:
        """Token ids of each rendered prompt and of each rendered reply (its end marker included)."""
        tok = self.tokenizer
        prompt_ids = [tok(render_prompt(messages, self.template, tok), add_special_tokens=False)["input_ids"]
                      for messages in prompts]
        reply_ids = [tok(render_response(response, self.template, tok), add_special_tokens=False)["input_ids"]
                     for response in responses]
        return prompt_ids, reply_ids

    def tokenize(self, prompts: list[list[Message]], responses: list[str]) -> list[list[int]]:
        prompt_ids, reply_ids = self.tokenize_parts(prompts, responses)
        return [p + r for p, r in zip(prompt_ids, reply_ids, strict=True)]

    @torch.no_grad()
    def score(self, prompts: list[list[Message]], responses: list[str]) -> torch.Tensor:
        """Scores of every member for every (prompt, response): shape (k, N).

        With ``share_prompt`` the replies to one prompt (best-of-n samples, a preference pair) share rows
        that read the prompt once (``shared_prompt_layout``); the scores equal a row per text up to rounding.
        """
        prompt_ids, reply_ids = self.tokenize_parts(prompts, responses)
        if not self.share_prompt:
            return self.score_ids([p + r for p, r in zip(prompt_ids, reply_ids, strict=True)])
        return self.score_shared(prompt_ids, reply_ids)

    @torch.no_grad()
    def score_ids(self, texts: list[list[int]]) -> torch.Tensor:
        """Scores of token-id texts, a row each: shape (k, N)."""
        scores = torch.zeros((len(self.members), len(texts)))
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # batches of similar length
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            input_ids, attention_mask = pad_right([texts[i] for i in batch], self.pad_id)
            for members, shared in self.groups:
                values = self._score_group(members, shared, input_ids, attention_mask)
                for m, v in zip(members, values, strict=True):
                    scores[m, batch] = v
        return scores

    def shared_batches(self, prompt_ids: list[list[int]],
                       reply_ids: list[list[int]]) -> list[list[tuple[list[int], list[int]]]]:
        """The forward passes ``score_shared`` makes: each a list of rows (prompt ids, indices of the replies the
        row holds). A row holds at most ``batch_size`` replies and ``MAX_ROW_TOKENS`` tokens (unless one reply is
        longer); rows are sorted by width, and a pass takes rows until it holds ``batch_size`` texts."""
        by_prompt: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(prompt_ids):
            by_prompt.setdefault(tuple(p), []).append(i)
        rows: list[tuple[list[int], list[int]]] = []
        for prompt, indices in by_prompt.items():
            chunk, width = [], len(prompt)
            for i in indices:
                if chunk and (len(chunk) == self.batch_size or width + len(reply_ids[i]) > MAX_ROW_TOKENS):
                    rows.append((list(prompt), chunk))
                    chunk, width = [], len(prompt)
                chunk.append(i)
                width += len(reply_ids[i])
            rows.append((list(prompt), chunk))
        rows.sort(key=lambda row: len(row[0]) + sum(len(reply_ids[i]) for i in row[1]))  # similar widths
        batches, start = [], 0
        while start < len(rows):
            stop, texts = start, 0
            while stop < len(rows) and (stop == start or texts + len(rows[stop][1]) <= self.batch_size):
                texts += len(rows[stop][1])
                stop += 1
            batches.append(rows[start:stop])
            start = stop
        return batches

    @torch.no_grad()
    def score_shared(self, prompt_ids: list[list[int]], reply_ids: list[list[int]]) -> torch.Tensor:
        """Scores of ``prompt + reply`` texts, the replies to one prompt packed into rows that hold the prompt
        once (``shared_batches``): shape (k, N)."""
        scores = torch.zeros((len(self.members), len(prompt_ids)))
        dtype = next(self.members[0].model.parameters()).dtype
        for batch in self.shared_batches(prompt_ids, reply_ids):
            layout = shared_prompt_layout([(len(p), *(len(reply_ids[i]) for i in idx)) for p, idx in batch], dtype)
            input_ids = torch.full(layout["position_ids"].shape, self.pad_id, dtype=torch.long)
            for r, (p, idx) in enumerate(batch):
                ids = p + [t for i in idx for t in reply_ids[i]]
                input_ids[r, :len(ids)] = torch.tensor(ids)
            where = [(r, end) for r, ends in enumerate(layout["reply_ends"]) for end in ends]
            at = (torch.tensor([r for r, _ in where]), torch.tensor([e for _, e in where]))
            targets = [i for _, idx in batch for i in idx]
            for members, shared in self.groups:
                values = self._score_group(members, shared, input_ids, layout["attention_mask"],
                                           layout["position_ids"], at)
                for m, v in zip(members, values, strict=True):
                    scores[m, targets] = v
        return scores

    def _score_group(self, members: list[int], shared: int, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     position_ids: torch.Tensor | None = None,
                     at: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Scores of one reward model's members; read at the last real token of each row (2-D mask), or at
        the (row, position) pairs ``at`` (shared-prompt rows)."""
        def read(hidden: torch.Tensor) -> torch.Tensor:
            return pool_last(hidden, attention_mask) if at is None else hidden[at]

        models = [self.members[m].model for m in members]
        if shared == 0:
            return [model.score(read(model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                                      position_ids=position_ids,
                                                      use_cache=False).last_hidden_state))[:, 0]
                    for model in models]
        total = len(decoder_layers(models[0].base_model))
        top = total - shared
        hidden = trunk_hidden(models[0].base_model, input_ids, attention_mask, top, position_ids)
        out = []
        for m, model in zip(members, models, strict=True):
            hidden_m = self.tops[m](hidden, attention_mask, position_ids) if top else hidden
            out.append(model.score(read(hidden_m))[:, 0])
        return out
