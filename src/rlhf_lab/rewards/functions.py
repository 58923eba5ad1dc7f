"""Reward *functions* (TRL's signature): Python callables that score completions, beside or instead of reward models.

A spec is ``module:function`` (an importable module, e.g. ``mypkg.rewards:brevity``) or ``path/file.py:function``
(a file, loaded under its own name). The function is called as TRL's ``GRPOTrainer`` calls one for a
conversational dataset::

    fn(prompts=[messages, ...], completions=[[{"role": "assistant", "content": text}], ...],
       completion_ids=[[int, ...], ...], **kwargs) -> list[float | None]

one entry per completion (None: this function does not score that completion). Several functions combine as
r = Σ_k w_k·r_k over the functions that returned a number (TRL's ``nansum``); a completion that no function
scored gets reward NaN ("no reward": advantage 0).

Loading checks everything it can before a model loads (bad spec, missing module / file / attribute, not callable:
one line, exit 2). A function that raises, returns the wrong number of values or a non-number during training stops
the run with one line naming the function and the step (exit 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlhf_lab.errors import UserError
from rlhf_lab.user_code import load_function


@dataclass
class RewardFunction:
    spec: str  # as given, e.g. "rewards.py:brevity"
    fn: Callable[..., Sequence[float | None]]

    @property
    def name(self) -> str:
        return self.spec.rsplit(":", 1)[-1]


def load_reward_function(spec: str, flag: str = "reward_funcs") -> RewardFunction:
    """``module:function`` or ``path/file.py:function`` → the callable; a UserError naming ``--flag`` otherwise."""
    return RewardFunction(spec, load_function(spec, flag))


def load_reward_functions(specs: Sequence[str], weights: Sequence[float] | None = None,
                          flag: str = "reward_funcs") -> tuple[list[RewardFunction], list[float]]:
    """Every spec loaded, and the weights (default 1 each; ``--reward_weights`` must have one per function)."""
    funcs = [load_reward_function(s, flag) for s in specs]
    if weights:
        if len(weights) != len(funcs):
            raise UserError(f"--reward_weights: {len(weights)} weight(s) for {len(funcs)} reward function(s) "
                            f"(--{flag}); give one weight per function")
        if not all(math.isfinite(w) for w in weights):
            raise UserError("--reward_weights: every weight must be finite")
        return funcs, [float(w) for w in weights]
    return funcs, [1.0] * len(funcs)


class RewardFunctionError(Exception):
    """A reward function failed during a run (the recipe turns it into a RunFailure naming the step)."""


def call_reward_functions(funcs: Sequence[RewardFunction], prompts: list[list[dict[str, str]]],
                          completions: list[str], completion_ids: list[list[int]],
                          **kwargs: Any) -> torch.Tensor:
    """(N, F) float64 rewards, NaN where a function returned None. Raises RewardFunctionError naming the function
    when it raises, returns a non-sequence, the wrong number of values, or a value that is not a number."""
    n = len(completions)
    out = torch.full((n, len(funcs)), float("nan"), dtype=torch.float64)
    conversations = [[{"role": "assistant", "content": text}] for text in completions]
    for k, f in enumerate(funcs):
        try:
            values = f.fn(prompts=prompts, completions=conversations, completion_ids=completion_ids, **kwargs)
        except Exception as e:
            raise RewardFunctionError(f"reward function {f.spec} raised {type(e).__name__}: {e}") from e
        try:
            values = list(values)
        except TypeError:
            raise RewardFunctionError(f"reward function {f.spec} returned {type(values).__name__}, not a list "
                                      f"of {n} numbers") from None
        if len(values) != n:
            raise RewardFunctionError(f"reward function {f.spec} returned {len(values)} values for {n} completions")
        for i, v in enumerate(values):
            if v is None:
                continue
            try:
                out[i, k] = float(v)
            except (TypeError, ValueError):
                raise RewardFunctionError(f"reward function {f.spec} returned {v!r} for completion {i}, not a "
                                          "number or None") from None
    return out


def weighted_reward(per_function: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """r_i = Σ_k w_k·r_ik over the functions that scored completion i; NaN when none did (TRL's rule)."""
    w = torch.tensor(list(weights), dtype=per_function.dtype)
    total = (per_function * w).nansum(dim=1)
    total[torch.isnan(per_function).all(dim=1)] = float("nan")
    return total
