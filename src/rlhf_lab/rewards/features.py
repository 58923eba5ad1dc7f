"""Frozen-trunk features for reward-model training, computed once and optionally kept on disk.

With ``--trainable head`` the feature of a text is its pooled final hidden state (D,); with ``top:K`` it is the
(T, D) hidden states entering the top K layers. The trunk is frozen, so a text's feature never changes: the disk
cache is content-addressed (a hash of the token ids under a namespace naming the model, layer split and dtype)
and any later run — another data treatment, another ensemble size, a resumed run — reuses what is there.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from rlhf_lab.models.batching import pad_right
from rlhf_lab.rewards.model import pool_last, trunk_hidden

SHARD_TEXTS = 512  # texts per cache shard written to disk


def cache_namespace(model_path: str, num_layers: int, top_layers: int, dtype: torch.dtype) -> str:
    text = f"{Path(model_path).resolve()}|layers={num_layers}|top={top_layers}|{dtype}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def text_key(ids: list[int]) -> str:
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:32]


class FeatureStore:
    """Features by text key, in memory, backed by safetensors shards under ``directory/namespace`` if given."""

    def __init__(self, directory: str | None, namespace: str) -> None:
        self.dir = Path(directory) / namespace if directory else None
        self.index: dict[str, Path] = {}
        if self.dir is not None and self.dir.is_dir():
            for shard in sorted(self.dir.glob("*.safetensors")):
                with safe_open(str(shard), framework="pt") as f:
                    for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                        self.index.setdefault(key, shard)

    def load(self, keys: list[str]) -> dict[str, torch.Tensor]:
        by_shard: dict[Path, list[str]] = {}
        for key in keys:
            if key in self.index:
                by_shard.setdefault(self.index[key], []).append(key)
        found = {}
        for shard, shard_keys in by_shard.items():
            with safe_open(str(shard), framework="pt") as f:
                for key in shard_keys:
                    found[key] = f.get_tensor(key)
        return found

    def save(self, features: dict[str, torch.Tensor]) -> None:
        if self.dir is None or not features:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".shard-", suffix=".tmp")
        os.close(fd)
        save_file({k: v.contiguous() for k, v in features.items()}, tmp)
        final = self.dir / f"{hashlib.sha256(''.join(sorted(features)).encode()).hexdigest()[:16]}.safetensors"
        os.replace(tmp, final)  # a shard appears whole or not at all
        for key in features:
            self.index.setdefault(key, final)


@torch.no_grad()
def compute_features(backbone: torch.nn.Module, texts: list[list[int]], top_layers: int, pad_id: int,
                     batch_size: int, dtype: torch.dtype, store: FeatureStore | None = None,
                     progress: bool = False) -> list[torch.Tensor]:
    """Frozen-trunk feature of every text: pooled (D,) for ``head``, (T, D) for ``top:K``.

    Texts are batched by length (little padding); right padding, so a text's states are its first T rows.
    Duplicate texts (a prompt's chosen reply reused by R-DA, say) are computed once.
    """
    keys = [text_key(t) for t in texts]
    known = store.load(list(set(keys))) if store is not None else {}
    todo = sorted({k: i for i, k in enumerate(keys) if k not in known}.items(), key=lambda kv: len(texts[kv[1]]))
    backbone.eval()
    fresh: dict[str, torch.Tensor] = {}
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="trunk features", unit="text")
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        seqs = [texts[i] for _, i in batch]
        input_ids, attention_mask = pad_right(seqs, pad_id)
        hidden = trunk_hidden(backbone, input_ids, attention_mask, top_layers)
        if top_layers == 0:
            pooled = pool_last(hidden, attention_mask)
        for row, (key, _) in enumerate(batch):
            value = pooled[row] if top_layers == 0 else hidden[row, : len(seqs[row])]
            fresh[key] = value.to(dtype).clone()
        if bar is not None:
            bar.update(len(batch))
        if store is not None and len(fresh) >= SHARD_TEXTS:  # a killed run keeps what it computed
            store.save(fresh)
            known.update(fresh)
            fresh = {}
    if bar is not None:
        bar.close()
    if store is not None:
        store.save(fresh)
    known.update(fresh)
    return [known[k] for k in keys]
