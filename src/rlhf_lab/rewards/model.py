"""Reward models: a causal LM with a scalar head, read at the last real token.

A reward model is a standard ``AutoModelForSequenceClassification(num_labels=1)`` built from any causal LM, so
transformers and TRL load what we export. Two things are done with care:

* Pooling. HF's sequence classifier reads the rightmost token that is not ``pad_token_id``. When pad == eos
  (SmolLM2, GPT-2, Llama-2 chat setups) and every text ends with eos, that silently reads the token *before*
  eos (EasyRLHF's quirk). We pool at the last attended position from the attention mask, and the exported
  config gets a pad id that differs from eos (``reward_pad_token_id``), so HF's own pooling agrees with ours.
* Cheap training and ensembles. With ``trainable = head`` or ``top:K`` most of the network is frozen: the frozen
  trunk runs once per example and its output is cached, and k ensemble members (own head, own copy of the top
  K layers) train on the shared cache. ``TopStack`` runs the top layers of a decoder on cached hidden states.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerBase

from rlhf_lab.errors import UserError
from rlhf_lab.models.load import resolve_model_path

MANIFEST = "reward_models.json"


def reward_pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """A pad id that is not eos, so HF's "last non-pad token" pooling finds the real last token."""
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return tokenizer.pad_token_id
    for candidate in (tokenizer.unk_token_id, tokenizer.bos_token_id, 0):
        if candidate is not None and candidate != tokenizer.eos_token_id:
            return candidate
    return 1 if tokenizer.eos_token_id == 0 else 0


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the rightmost attended position of each row (works for left and right padding)."""
    width = attention_mask.size(1)
    return width - 1 - attention_mask.flip(1).to(torch.long).argmax(dim=1)


def pool_last(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """hidden (B, T, D) → (B, D) at each row's last real token."""
    rows = torch.arange(hidden.size(0), device=hidden.device)
    return hidden[rows, last_token_index(attention_mask)]


def load_reward_backbone(model_name: str, tokenizer: PreTrainedTokenizerBase, num_layers: int | None = None,
                         dtype: torch.dtype = torch.float32, online: bool = False,
                         trust_remote_code: bool = False) -> nn.Module:
    """``AutoModelForSequenceClassification(num_labels=1)`` from a causal LM (its LM head is dropped).

    ``num_layers`` keeps only the first L decoder layers (the small RMs the upstream codebases cut from a bigger LM).
    """
    path = resolve_model_path(model_name, online)
    overrides = {"num_labels": 1, "pad_token_id": reward_pad_token_id(tokenizer)}
    if num_layers is not None:
        overrides["num_hidden_layers"] = num_layers
    model = AutoModelForSequenceClassification.from_pretrained(
        path, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code,
        local_files_only=not online, **overrides,
    )
    return model


def decoder_layers(backbone: nn.Module) -> nn.ModuleList:
    layers = getattr(backbone, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise UserError(f"{type(backbone).__name__}: top:K training needs a decoder with a `layers` list")
    return layers


class TopStack(nn.Module):
    """The top K decoder layers and the final norm of ``backbone``, run on cached hidden states.

    Built as a K-layer instance of the backbone's own class (so masks and rotary embeddings are computed the
    way the model does it), fed through ``inputs_embeds``; its tiny embedding table is never used.
    """

    def __init__(self, backbone: nn.Module, k: int, share: bool = False) -> None:
        """``share=False`` copies the layers (a trainable member); ``share=True`` reuses them (scoring)."""
        super().__init__()
        layers = decoder_layers(backbone)
        config = copy.deepcopy(backbone.config)
        config.num_hidden_layers = k
        config.vocab_size = 1  # inputs_embeds are given: no embedding table needed
        config.pad_token_id = None
        take = (lambda m: m) if share else copy.deepcopy
        self.stack = type(backbone)(config)
        self.stack.layers = nn.ModuleList(take(layer) for layer in layers[len(layers) - k:])
        if not share:  # the layer index only matters for a KV cache, which is never used here
            for index, layer in enumerate(self.stack.layers):
                if hasattr(getattr(layer, "self_attn", None), "layer_idx"):
                    layer.self_attn.layer_idx = index
        self.stack.norm = take(backbone.norm)
        if not share:  # a member's own copy trains, whatever the frozen backbone it was copied from
            self.stack.requires_grad_(True)
        self.stack.embed_tokens.requires_grad_(False)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.stack(inputs_embeds=hidden, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).last_hidden_state


def parse_trainable(trainable: str, num_layers: int | None, flag: str = "trainable") -> tuple[str, int]:
    """``head`` | ``top:K`` | ``lora`` | ``full`` → (mode, K). ``num_layers=None`` (layer count not known yet, as
    in a config's ``validate``) checks only K >= 1."""
    if trainable in ("head", "lora", "full"):
        return trainable, 0
    if trainable.startswith("top:"):
        try:
            k = int(trainable[4:])
        except ValueError:
            k = -1
        if not 1 <= k <= (num_layers if num_layers is not None else k):
            bound = f"1 <= K <= {num_layers} layers" if num_layers is not None else "an integer K >= 1"
            raise UserError(f"--{flag}: top:K needs {bound}, got {trainable!r}")
        return "top", k
    raise UserError(f"--{flag}: expected head, top:K, lora or full, got {trainable!r}")


@contextmanager
def bottom_layers_only(backbone: nn.Module, keep: int) -> Iterator[None]:
    """Within the block, ``backbone`` runs only its first ``keep`` decoder layers and skips the final norm."""
    layers, norm = backbone.layers, backbone.norm
    backbone.layers, backbone.norm = nn.ModuleList(list(layers)[:keep]), nn.Identity()
    try:
        yield
    finally:
        backbone.layers, backbone.norm = layers, norm


def trunk_hidden(backbone: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 top_layers: int, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The hidden states entering the top ``top_layers`` layers (the final normed output when 0).

    Only the frozen bottom layers run: the top ones are the members' business.
    """
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
              "use_cache": False}
    if top_layers == 0:
        return backbone(**kwargs).last_hidden_state
    with bottom_layers_only(backbone, len(decoder_layers(backbone)) - top_layers):
        return backbone(**kwargs).last_hidden_state


# ---------------------------------------------------------------------------------------------------------
# Scoring with trained reward models (one, or an ensemble read from a manifest)
# ---------------------------------------------------------------------------------------------------------


def reward_model_dirs(name: str) -> list[Path]:
    """A reward model dir, a ``train-rm`` output dir whose manifest lists the members, or an embedded name."""
    from rlhf_lab.rewards.embedded import resolve_reward_model

    path = Path(resolve_reward_model(name))
    if (path / MANIFEST).is_file():
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        return [path / member["path"] for member in manifest["members"]]
    if (path / "config.json").is_file():
        return [path]
    raise UserError(f"{name}: not a reward model directory (no config.json or {MANIFEST})")


def read_manifest(name: str) -> dict | None:
    from rlhf_lab.rewards.embedded import resolve_reward_model

    path = Path(resolve_reward_model(name)) / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
