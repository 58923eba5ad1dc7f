"""Score (prompt, response) pairs with one reward model or an ensemble.

Members trained on a shared frozen trunk (``train-rm --trainable head|top:K --ensemble_size k``) are scored with
one trunk forward pass: the manifest says how many bottom layers the members share, the trunk runs once, and
each member runs only its own top layers and head. Other reward models run one full forward each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rlhf_lab.data.records import Message
from rlhf_lab.data.templates import render_prompt, render_response
from rlhf_lab.errors import UserError
from rlhf_lab.models.batching import pad_right
from rlhf_lab.rewards.model import (
    TopStack,
    decoder_layers,
    pool_last,
    read_manifest,
    reward_model_dirs,
    trunk_hidden,
)


@dataclass
class Member:
    name: str
    model: torch.nn.Module
    reward_mean: float | None
    reward_std: float | None


class RewardScorer:
    """Scores with every member of one or more reward models; ``score`` returns a (k, N) tensor."""

    def __init__(self, names: list[str], dtype: torch.dtype = torch.float32, batch_size: int = 16,
                 allow_pickle: bool = False) -> None:
        self.batch_size = batch_size
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

    def tokenize(self, prompts: list[list[Message]], responses: list[str]) -> list[list[int]]:
        tok = self.tokenizer
        out = []
        for messages, response in zip(prompts, responses, strict=True):
            prompt_ids = tok(render_prompt(messages, self.template, tok), add_special_tokens=False)["input_ids"]
            out.append(prompt_ids + tok(render_response(response, self.template, tok),
                                        add_special_tokens=False)["input_ids"])
        return out

    @torch.no_grad()
    def score(self, prompts: list[list[Message]], responses: list[str]) -> torch.Tensor:
        """Scores of every member for every (prompt, response): shape (k, N)."""
        return self.score_ids(self.tokenize(prompts, responses))

    @torch.no_grad()
    def score_ids(self, texts: list[list[int]]) -> torch.Tensor:
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

    def _score_group(self, members: list[int], shared: int, input_ids, attention_mask) -> list[torch.Tensor]:
        models = [self.members[m].model for m in members]
        if shared == 0:
            return [_full_score(model, input_ids, attention_mask) for model in models]
        total = len(decoder_layers(models[0].base_model))
        top = total - shared
        hidden = trunk_hidden(models[0].base_model, input_ids, attention_mask, top)
        out = []
        for m, model in zip(members, models, strict=True):
            hidden_m = self.tops[m](hidden, attention_mask) if top else hidden
            out.append(model.score(pool_last(hidden_m, attention_mask))[:, 0])
        return out


def _full_score(model, input_ids, attention_mask) -> torch.Tensor:
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return model.score(pool_last(hidden, attention_mask))[:, 0]
