"""Model loading: the embedded default, the tiny test model, any HF directory."""

from rlhf_lab.models.batching import pad_right
from rlhf_lab.models.load import (
    DEFAULT_MODEL_ALIASES,
    cache_root,
    load_causal_lm,
    load_tokenizer,
    resolve_model_path,
)

__all__ = [
    "DEFAULT_MODEL_ALIASES",
    "cache_root",
    "load_causal_lm",
    "load_tokenizer",
    "pad_right",
    "resolve_model_path",
]
