"""Score (prompt, response) pairs with one reward model or several, and with ensembles.

Reward models that are heads (or own top layers) on one frozen trunk are scored with one trunk pass: at load,
every member is matched against the trunks already loaded (``shared_leading_layers``: equal embeddings and
equal bottom layers), so the members of a ``train-rm --trainable head|top:K --ensemble_size k`` ensemble, and
reward models from different runs on the same base model reading different layers (a gold on layer 30 and
proxies on layer 10 of SmolLM2), all read their hidden states from the same pass (``trunk_states``); each runs
only its own layers above the shared depth, its final norm and its head. Replies to the same prompt (best-of-n
samples, preference pairs) share rows that hold the prompt once.
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
    last_token_index,
    reward_model_dirs,
    shared_leading_layers,
    trunk_states,
)

MAX_ROW_TOKENS = 2048  # a shared-prompt row's width cap: the attention mask and scores grow with its square


@dataclass
class Member:
    name: str
    model: torch.nn.Module
    reward_mean: float | None
    reward_std: float | None
    trunk: int = 0  # which of the scorer's trunks computes this member's bottom layers
    depth: int = 0  # how many bottom layers it shares with that trunk
    top: TopStack | None = None  # its own layers above ``depth`` (None when it has none)


class RewardScorer:
    """Scores with every member of one or more reward models; ``score`` returns a (k, N) tensor.

    ``share_trunk=False`` runs every member's whole network on its own (the reference the shared path is tested
    and benchmarked against)."""

    def __init__(self, names: list[str], dtype: torch.dtype = torch.float32, batch_size: int = 16,
                 allow_pickle: bool = False, share_prompt: bool = True, share_trunk: bool = True) -> None:
        self.batch_size = batch_size
        self.share_prompt = share_prompt
        self.members: list[Member] = []
        self.trunks: list[torch.nn.Module] = []  # backbones that run once per batch
        tokenizer_dir = None
        for name in names:
            dirs = reward_model_dirs(name)
            for d in dirs:
                model = AutoModelForSequenceClassification.from_pretrained(
                    d, dtype=dtype, use_safetensors=not allow_pickle, local_files_only=True)
                if model.config.num_labels != 1:
                    raise UserError(f"{d}: a reward model has num_labels=1, this one has {model.config.num_labels}")
                model.eval().requires_grad_(False)
                label = name if len(dirs) == 1 else f"{name}/{d.relative_to(Path(name))}"
                member = Member(label, model, getattr(model.config, "reward_mean", None),
                                getattr(model.config, "reward_std", None))
                self._attach(member, share_trunk)
                self.members.append(member)
                tokenizer_dir = tokenizer_dir or d
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        self.template = getattr(self.members[0].model.config, "rlhf_lab_template", "chat")
        self.pad_id = self.members[0].model.config.pad_token_id

    def _attach(self, member: Member, share_trunk: bool) -> None:
        """Give ``member`` the loaded trunk it shares the most bottom layers with, or make it a trunk itself."""
        backbone = member.model.base_model
        depths = [shared_leading_layers(trunk, backbone) if share_trunk else 0 for trunk in self.trunks]
        if depths and max(depths) > 0:
            member.trunk = max(range(len(depths)), key=depths.__getitem__)
            member.depth = depths[member.trunk]
        else:
            member.trunk, member.depth = len(self.trunks), len(decoder_layers(backbone))
            self.trunks.append(backbone)
        own = len(decoder_layers(backbone)) - member.depth
        member.top = TopStack(backbone, own, share=True) if own else None

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
            rows = torch.arange(len(batch))
            scores[:, batch] = self._score_batch(input_ids, attention_mask, None, (rows, last_token_index(attention_mask)))
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
            scores[:, targets] = self._score_batch(input_ids, layout["attention_mask"], layout["position_ids"], at)
        return scores

    def _score_batch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None,
                     at: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """(k, len(at[0])) scores of every member read at the (row, position) pairs ``at``: each trunk runs once,
        up to the deepest layer one of its members needs; a member then runs its own top layers (if any), its
        final norm and its head."""
        out = torch.zeros((len(self.members), at[0].numel()))
        for t, trunk in enumerate(self.trunks):
            members = [(m, member) for m, member in enumerate(self.members) if member.trunk == t]
            states = trunk_states(trunk, input_ids, attention_mask, {member.depth for _, member in members},
                                  position_ids)
            for m, member in members:
                hidden = states[member.depth]
                if member.top is not None:  # its own layers (and norm) on the whole rows: attention needs them
                    last = member.top(hidden, attention_mask, position_ids)[at]
                else:  # a head on the trunk: the final norm is per token, so only the read positions need it
                    last = member.model.base_model.norm(hidden[at])
                out[m] = member.model.score(last)[:, 0].float()
        return out
