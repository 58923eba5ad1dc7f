"""Sequence-reward shaping of the length-correlations code (Singhal et al. 2023, "A Long Way to Go", ``rl_utils.py``).

All lengths L are response lengths in tokens. Per PPO batch, on the raw rewards r_b:

    running statistics  μ = mean of the last 10 batch means, σ = mean of the last 10 batch stdevs
                        (the current batch included)
    --len_only N        r = 1 − |L/N − 1|                     (peaks at L = N; the reward model is ignored)
    --len_penalty       r ← r + 2σ·(1 − 0.01·L)               (zero at 100 tokens)
    --scale_reward      r ← clip((r − μ)/σ, −0.3, 0.3)        (after the length penalty)

The batch stdev is the unbiased one (``torch.std``). ``RunningRewardStats`` keeps the window and is saved in
PPO checkpoints, so a resumed run shapes its rewards exactly as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def len_only_reward(lengths: torch.Tensor, target: int) -> torch.Tensor:
    """r = 1 − |L/N − 1|: 1 at L = N, 0 at L = 0 and L = 2N, negative beyond."""
    return 1.0 - (lengths.double() / target - 1.0).abs()


def length_penalty(rewards: torch.Tensor, lengths: torch.Tensor, sigma: float) -> torch.Tensor:
    """r + 2σ·(1 − 0.01·L): a bonus for short responses that crosses zero at L = 100 tokens."""
    return rewards + 2.0 * sigma * (1.0 - 0.01 * lengths.to(rewards.dtype))


def scale_reward(rewards: torch.Tensor, mu: float, sigma: float, clip: float = 0.3) -> torch.Tensor:
    """clip((r − μ)/σ, −clip, clip); σ is floored at 1e-8 (a batch of equal rewards has σ = 0)."""
    return ((rewards - mu) / max(sigma, 1e-8)).clamp(-clip, clip)


class RunningRewardStats:
    """Batch means and stdevs of the raw rewards over the last ``window`` batches."""

    def __init__(self, window: int = 10, means: Sequence[float] = (), stds: Sequence[float] = ()) -> None:
        self.window = window
        self.means = list(means)[-window:]
        self.stds = list(stds)[-window:]

    def update(self, batch_rewards: torch.Tensor) -> tuple[float, float]:
        """Add one batch; return (μ, σ) over the window including it."""
        rewards = batch_rewards.double().flatten()
        self.means = [*self.means, float(rewards.mean())][-self.window:]
        self.stds = [*self.stds, float(rewards.std()) if rewards.numel() > 1 else 0.0][-self.window:]
        return self.mu, self.sigma

    @property
    def mu(self) -> float:
        return sum(self.means) / len(self.means)

    @property
    def sigma(self) -> float:
        return sum(self.stds) / len(self.stds)

    def state(self) -> dict[str, list[float]]:
        return {"means": list(self.means), "stds": list(self.stds)}
