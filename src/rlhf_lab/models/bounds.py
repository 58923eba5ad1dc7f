"""Bounds checked before any work: sequence length against the context window, and a memory estimate of the
largest batch against the memory available. Both read only the model's ``config.json`` and its safetensors
headers, so a command fails in a second with one line naming the flag, not after loading data and the model.

The memory estimate is a lower bound (it refuses only what cannot fit):

    weights   = P · b                               P parameters (from the safetensors headers), b bytes per weight
    sampling  = weights + B · (2 · L · d_kv · T · b  +  4 · V)
                the KV cache of every layer over T tokens, kept for the whole generation, plus one step's fp32 logits
    training  = weights + B · T · H · b · L_back
                the input of every layer the backward pass goes through (L_back), kept from forward to backward

with B sequences in the batch, T tokens per sequence, L layers, d_kv = key/value heads × head size, H the hidden
size, V the vocabulary. Optimizer state, gradients, attention scores and the allocator's slack come on top, so a
batch that passes can still run out of memory; one that fails cannot fit. The memory compared against is the
host's ``MemAvailable`` (Linux); on a CUDA machine, or where it cannot be read, only the context is checked.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from rlhf_lab.errors import UserError
from rlhf_lab.models.load import resolve_model_path
from rlhf_lab.rundir import read_safetensors_header

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class ModelShape:
    context: int | None  # max_position_embeddings
    hidden: int
    layers: int
    kv_dim: int  # key/value heads × head size
    vocab: int
    params: int


def model_shape(name: str, online: bool = False) -> ModelShape | None:
    """The shape of model ``name`` from its config.json and safetensors headers (None for a hub id: not local)."""
    path = Path(resolve_model_path(name, online))
    if not path.is_dir():
        return None
    if not (path / "config.json").is_file() and (path / "adapter_config.json").is_file():
        base = json.loads((path / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
        return model_shape(base, online) if base else None
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path / 'config.json'}: unreadable ({e})") from None
    config = config.get("text_config", config)
    hidden = int(config.get("hidden_size") or config.get("n_embd") or 0)
    heads = int(config.get("num_attention_heads") or config.get("n_head") or 1)
    head_dim = int(config.get("head_dim") or (hidden // heads if heads else 0))
    kv_heads = int(config.get("num_key_value_heads") or heads)
    context = config.get("max_position_embeddings") or config.get("n_positions")
    params = 0
    for file in path.glob("*.safetensors"):
        try:
            _, header = read_safetensors_header(file)
        except (OSError, ValueError):
            continue  # a damaged file is reported when it is loaded (or by `rlhf-lab verify`)
        params += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return ModelShape(context=int(context) if context else None, hidden=hidden,
                      layers=int(config.get("num_hidden_layers") or config.get("n_layer") or 0),
                      kv_dim=kv_heads * head_dim, vocab=int(config.get("vocab_size") or 0), params=params)


def available_memory() -> int | None:
    """Bytes of host memory available now (``MemAvailable``), or None on a CUDA machine or without /proc."""
    import torch

    if torch.cuda.is_available():
        return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_lower_bound(shape: ModelShape, batch: int, tokens: int, dtype: str = "float32",
                       backward_layers: int | None = None) -> int:
    """Bytes a batch needs at least (module docstring): sampling when ``backward_layers`` is None, else training."""
    b = _DTYPE_BYTES.get(dtype, 4)
    weights = shape.params * b
    if backward_layers is None:
        return weights + batch * (2 * shape.layers * shape.kv_dim * tokens * b + 4 * shape.vocab)
    return weights + batch * tokens * shape.hidden * b * max(1, backward_layers)


def check_bounds(model_name: str, *, tokens: int, tokens_flag: str, batch: int, batch_flag: str,
                 online: bool = False, dtype: str = "float32", backward_layers: int | None = None,
                 prompt_note: str = "", sequences_per_item: int = 1) -> None:
    """Raise a one-line ``UserError`` when ``tokens`` per sequence exceed the context window of ``model_name``,
    or the memory lower bound of ``batch × sequences_per_item`` sequences exceeds the memory available.
    ``backward_layers``: None for sampling, else the layers the backward pass goes through (-1 = all of them);
    ``sequences_per_item``: 2 when a batch item is a pair (chosen and rejected)."""
    shape = model_shape(model_name, online)
    if shape is None:
        return
    if shape.context is not None and tokens > shape.context:
        raise UserError(f"--{tokens_flag}: {tokens} tokens per sequence{prompt_note} exceed the context window of "
                        f"{model_name} (max_position_embeddings = {shape.context})")
    available = available_memory()
    if available is None:
        return
    layers = shape.layers if backward_layers == -1 else backward_layers
    need = memory_lower_bound(shape, batch * sequences_per_item, tokens, dtype, layers)
    if need > available:
        pairs = f" ({batch * sequences_per_item} sequences)" if sequences_per_item > 1 else ""
        raise UserError(f"--{batch_flag} {batch}{pairs} with {tokens} tokens per sequence needs at least "
                        f"{need / 2**30:.1f} GiB (a lower bound: weights, "
                        f"{'KV cache and logits' if layers is None else 'activations kept for the backward pass'}), "
                        f"more than the {available / 2**30:.1f} GiB available; lower --{batch_flag} or --{tokens_flag}")
