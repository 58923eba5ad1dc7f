"""The sequence reward of online RL (PPO, GRPO): reward model(s) combined by an ensemble objective, or the
length-only reward, then shaped (Singhal et al. 2023 "A Long Way to Go"; TRL's missing-EOS penalty; trlx's clip).

Per batch of rollouts (prompt x, response y of L tokens, EOS not counted):

    members   = s_k(x, y) for each reward-model member k                       (``SequenceReward.member_scores``)
    raw       = combine(members; mean | WCO | UWO λ, ddof) − b, or 1 − |L/N − 1| − b   (``SequenceReward.raw``)
    μ, σ      = running mean / stdev of the raw rewards over the last 10 global batches  (``RunningRewardStats``)
    score     = raw → + 2σ(1 − 0.01·L) (len_penalty) → clip((r − μ)/σ, ±0.3) (scale_reward)
                → − missing_eos_penalty if y has no EOS → clip to ±cliprange_reward      (``RewardShaping.apply``)

``omit_long`` (Singhal et al. 2023) replaces a response that hit the length limit, with its prompt, by a random
finished one of the batch before scoring.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_lab.data.records import Prompt
from rlhf_lab.generation import Generation
from rlhf_lab.rewards.ensemble import combine_scores, objective_name
from rlhf_lab.rewards.shaping import len_only_reward, length_penalty, scale_reward


class SequenceReward:
    """Member scores of the reward model(s) for (prompt, response text) pairs and their combination.

    ``len_only`` = N > 0 selects the length-only reward 1 − |L/N − 1| (no reward model is loaded); otherwise
    ``reward_models`` (train-rm run dirs or RM dirs) are scored through one ``RewardScorer`` and combined by
    ``objective`` (mean, WCO or UWO with weight ``uwo_weight``; across-member variance with ``ensemble_ddof``).
    ``baseline`` is subtracted from every raw reward.
    """

    def __init__(self, reward_models: list[str], *, objective: str = "mean", uwo_weight: float = 0.1,
                 ensemble_ddof: int = 1, len_only: int = 0, baseline: float = 0.0, batch_size: int = 16,
                 allow_pickle: bool = False) -> None:
        self.objective = objective_name(objective)
        self.uwo_weight = uwo_weight
        self.ensemble_ddof = ensemble_ddof
        self.len_only = len_only
        self.baseline = baseline
        self.scorer = None
        if reward_models:
            from rlhf_lab.rewards.scorer import RewardScorer

            self.scorer = RewardScorer(reward_models, batch_size=batch_size, allow_pickle=allow_pickle)
        self.source = "len_only" if len_only else "reward model " + ",".join(reward_models)

    @property
    def num_members(self) -> int:
        return len(self.scorer.members) if self.scorer is not None else 0

    def member_scores(self, prompts: list[Prompt], texts: list[str]) -> torch.Tensor | None:
        """(K, B) float64 scores of the K members, or None without a reward model."""
        if self.scorer is None:
            return None
        return self.scorer.score([p.messages for p in prompts], texts).double()

    def combined(self, members: torch.Tensor | None, lengths: torch.Tensor) -> torch.Tensor:
        """The proxy reward (B,): the members combined (mean / WCO / UWO), or the length-only reward."""
        if self.len_only:
            return len_only_reward(lengths, self.len_only)
        return combine_scores(members, self.objective, self.uwo_weight, self.ensemble_ddof)

    def raw(self, members: torch.Tensor | None, lengths: torch.Tensor) -> torch.Tensor:
        """The raw reward r_b = combined − baseline (the input of the running statistics and of the shaping)."""
        return self.combined(members, lengths) - self.baseline


@dataclass
class RewardShaping:
    """What happens to the raw reward before it enters the loss (see the module docstring for the order)."""

    len_penalty: bool = False
    scale_reward: bool = False
    missing_eos_penalty: float | None = None
    cliprange_reward: float = 0.0

    def apply(self, raw: torch.Tensor, lengths: torch.Tensor, finished: torch.Tensor, mu: float,
              sigma: float) -> torch.Tensor:
        """score = clip(scale(raw + length bonus) − eos penalty, ±cliprange_reward), float64 like ``raw``."""
        scores = raw.clone()
        if self.len_penalty:
            scores = length_penalty(scores, lengths, sigma)
        if self.scale_reward:
            scores = scale_reward(scores, mu, sigma)
        if self.missing_eos_penalty is not None:
            scores = scores - self.missing_eos_penalty * (~finished).double()
        if self.cliprange_reward:
            scores = scores.clamp(-self.cliprange_reward, self.cliprange_reward)
        return scores


def omit_long(local: list[int], gens: list[Generation], seed: int) -> tuple[list[int], list[Generation]]:
    """Every response that hit the length limit, with its prompt, is replaced by a random finished sample of the
    batch (Singhal et al. 2023). A batch without a finished sample, or with no unfinished one, is kept as it is.
    ``local`` are the prompts' indices, ``seed`` names the draw."""
    done = [i for i, g in enumerate(gens) if g.finished]
    if not done or len(done) == len(gens):
        return local, gens
    generator = torch.Generator().manual_seed(seed)
    new_local, new_gens = list(local), list(gens)
    for i, g in enumerate(gens):
        if not g.finished:
            j = done[int(torch.randint(len(done), (1,), generator=generator))]
            new_local[i], new_gens[i] = local[j], gens[j]
    return new_local, new_gens
