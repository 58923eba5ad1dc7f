"""Metrics on generated responses shared by every recipe: diversity, EOS rate (the KL estimators are in
``rlhf_lab.losses``: ``kl_estimates``, ``sequence_kl``)."""

from __future__ import annotations

from collections.abc import Sequence


def distinct_n(texts_or_tokens: Sequence[Sequence], n: int) -> float:
    """distinct-n (Li et al. 2016): unique n-grams / total n-grams over all responses (0 when there are none).

    Accepts token-id lists or strings (split on whitespace).
    """
    total, unique = 0, set()
    for item in texts_or_tokens:
        tokens = item.split() if isinstance(item, str) else list(item)
        grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


def eos_rate(finished: Sequence[bool]) -> float:
    """Fraction of responses that ended with EOS / a stop token rather than the length limit."""
    return sum(bool(f) for f in finished) / len(finished) if finished else 0.0
