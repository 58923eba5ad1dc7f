"""Frozen-trunk features for reward-model training, computed once and optionally kept on disk.

With ``--trainable head`` the feature of a text is its pooled final hidden state (D,); with ``top:K`` it is the
(T, D) hidden states entering the top K layers. The trunk is frozen, so a text's feature never changes: the disk
cache is content-addressed (a hash of the token ids under a namespace naming the model, layer split and dtype)
and any later run — another data treatment, another ensemble size, a resumed run — reuses what is there.
A ``head`` run also reuses a ``top:K`` cache of the same model: it only runs the top K layers on the cached
states (``upstream``), e.g. 2 of SmolLM2's 30 layers instead of all of them.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from rlhf_lab.models.batching import pad_right, pair_rows, shared_prompt_layout
from rlhf_lab.rewards.model import TopStack, pool_last, trunk_hidden

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


def find_upstream(directory: str | None, model_path: str, num_layers: int, dtype: torch.dtype,
                  max_top: int = 8) -> tuple[FeatureStore, int] | None:
    """The smallest existing ``top:K`` cache (K ≤ max_top) of this model under ``directory``, for a head run."""
    if directory is None:
        return None
    for k in range(1, min(max_top, num_layers - 1) + 1):
        store = FeatureStore(directory, cache_namespace(model_path, num_layers, k, dtype))
        if store.index:
            return store, k
    return None


@torch.no_grad()
def compute_features(backbone: torch.nn.Module, texts: list[list[int]], top_layers: int, pad_id: int,
                     batch_size: int, dtype: torch.dtype, store: FeatureStore | None = None,
                     progress: bool = False, upstream: tuple[FeatureStore, int] | None = None,
                     paired: bool = False) -> list[torch.Tensor]:
    """Frozen-trunk feature of every text: pooled (D,) for ``head``, (T, D) for ``top:K``.

    Texts are batched by length (little padding); right padding, so a text's states are its first T rows.
    Duplicate texts (a prompt's chosen reply reused by R-DA, say) are computed once. With ``upstream`` =
    (a ``top:K`` store, K) and ``top_layers == 0``, texts found there only go through the top K layers.
    With ``paired``, texts 2i and 2i+1 are the chosen and rejected text of pair i: when both are to be computed
    they share one row (``pair_rows``), their common prefix read once, and each text's states are cut
    back out of it — the same values as its own row, up to float rounding.
    """
    keys = [text_key(t) for t in texts]
    known = store.load(list(set(keys))) if store is not None else {}
    backbone.eval()
    missing = {k for k in keys if k not in known}
    if upstream is not None and top_layers == 0 and missing:
        derived = _finish_upstream(backbone, sorted(missing), *upstream, batch_size, dtype)
        if store is not None:
            store.save(derived)
        known.update(derived)
        missing -= set(derived)
    pair_jobs: list[int] = []  # i: texts 2i and 2i+1 run as one shared row
    if paired:
        for i in range(len(texts) // 2):
            kc, kr = keys[2 * i], keys[2 * i + 1]
            if kc != kr and kc in missing and kr in missing:
                pair_jobs.append(i)
                missing -= {kc, kr}
    singles = sorted({k: i for i, k in enumerate(keys) if k in missing}.items(), key=lambda kv: len(texts[kv[1]]))
    pair_jobs.sort(key=lambda i: len(texts[2 * i]) + len(texts[2 * i + 1]))
    fresh: dict[str, torch.Tensor] = {}
    bar = None
    if progress and (singles or pair_jobs):
        from tqdm.auto import tqdm

        bar = tqdm(total=len(singles) + 2 * len(pair_jobs), desc="trunk features", unit="text")

    def keep(values: dict[str, torch.Tensor]) -> None:
        nonlocal fresh
        fresh.update({k: v.to(dtype).clone() for k, v in values.items()})
        if bar is not None:
            bar.update(len(values))
        if store is not None and len(fresh) >= SHARD_TEXTS:  # a killed run keeps what it computed
            store.save(fresh)
            known.update(fresh)
            fresh = {}

    per_pass = max(1, batch_size // 2)
    for start in range(0, len(pair_jobs), per_pass):
        batch = pair_jobs[start:start + per_pass]
        rows = pair_rows([texts[2 * i] for i in batch], [texts[2 * i + 1] for i in batch], pad_id,
                         next(backbone.parameters()).dtype)
        splits = rows["splits"]
        hidden = trunk_hidden(backbone, rows["input_ids"], rows["attention_mask"], top_layers, rows["position_ids"])
        values = {}
        for row, (i, n) in enumerate(zip(batch, splits, strict=True)):
            end_c, end_r = int(rows["first_end"][row]), int(rows["second_end"][row])
            if top_layers == 0:
                values[keys[2 * i]], values[keys[2 * i + 1]] = hidden[row, end_c], hidden[row, end_r]
            else:
                values[keys[2 * i]] = hidden[row, :end_c + 1]
                values[keys[2 * i + 1]] = torch.cat([hidden[row, :n], hidden[row, end_c + 1:end_r + 1]])
        keep(values)
    for start in range(0, len(singles), batch_size):
        batch = singles[start:start + batch_size]
        seqs = [texts[i] for _, i in batch]
        input_ids, attention_mask = pad_right(seqs, pad_id)
        hidden = trunk_hidden(backbone, input_ids, attention_mask, top_layers)
        if top_layers == 0:
            pooled = pool_last(hidden, attention_mask)
        keep({key: pooled[row] if top_layers == 0 else hidden[row, : len(seqs[row])]
              for row, (key, _) in enumerate(batch)})
    if bar is not None:
        bar.close()
    if store is not None:
        store.save(fresh)
    known.update(fresh)
    return [known[k] for k in keys]


def stack_features(features: list[torch.Tensor], pooled: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cached features as a float batch: pooled (B, D) with no mask, or (T, D) states right-padded to (B, T, D)
    with their attention mask."""
    if pooled:
        return torch.stack(features).float(), None
    width = max(f.size(0) for f in features)
    hidden = torch.zeros((len(features), width, features[0].size(1)))
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for row, f in enumerate(features):
        hidden[row, : f.size(0)] = f.float()
        mask[row, : f.size(0)] = 1
    return hidden, mask


def stack_pair_features(chosen: list[torch.Tensor], rejected: list[torch.Tensor],
                        splits: list[int]) -> tuple[torch.Tensor, ...]:
    """Cached (T, D) states of pairs as shared-prompt rows for the top layers: the first ``splits[i]`` states
    (the shared prefix) once, then the rest of the chosen and of the rejected text, with ``shared_prompt_layout``'s
    4-D mask and positions. Returns (hidden, attention_mask, position_ids, score_rows, score_positions): the
    scores are read at the chosen ends (rows 0..B−1) and then the rejected ends."""
    lengths = [(n, c.size(0) - n, r.size(0) - n) for c, r, n in zip(chosen, rejected, splits, strict=True)]
    layout = shared_prompt_layout(lengths)
    width = layout["position_ids"].size(1)
    hidden = torch.zeros((len(chosen), width, chosen[0].size(1)))
    for row, (c, r, n) in enumerate(zip(chosen, rejected, splits, strict=True)):
        hidden[row, :c.size(0)] = c.float()
        hidden[row, c.size(0):c.size(0) + r.size(0) - n] = r[n:].float()
    score_rows = torch.arange(len(chosen)).repeat(2)
    score_positions = torch.cat([layout["first_end"], layout["second_end"]])
    return hidden, layout["attention_mask"], layout["position_ids"], score_rows, score_positions


def _finish_upstream(backbone: torch.nn.Module, keys: list[str], source: FeatureStore, k: int, batch_size: int,
                     dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Pooled final features of the texts cached in a ``top:k`` store: its states through the top k layers."""
    top = TopStack(backbone, k, share=True).eval()
    states = source.load(keys)
    order = sorted(states, key=lambda key: states[key].size(0))
    out = {}
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        hidden, mask = stack_features([states[key] for key in batch], pooled=False)
        pooled = pool_last(top(hidden, mask), mask)
        out.update({key: pooled[row].to(dtype).clone() for row, key in enumerate(batch)})
    return out
