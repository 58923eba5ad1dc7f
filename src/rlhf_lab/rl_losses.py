"""Critic-free online RL: group advantages and the clipped policy loss of GRPO and its variants, as pure functions.

Shapes: N = completions in the batch, laid out group by group (the G completions of prompt 0, then prompt 1, ...);
(B, T) per-token tensors with ``mask`` = 1 on real completion tokens. A reward of NaN means "no reward for this
completion" (every reward function returned None): it is left out of its group's statistics and gets advantage 0,
as TRL does.

Papers: GRPO — Shao et al. 2024, "DeepSeekMath"; Dr. GRPO — Liu et al. 2025, "Understanding R1-Zero-Like
Training: A Critical Perspective"; RLOO — Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style
Optimization for Learning from Human Feedback in LLMs"; REINFORCE++ — Hu 2025, "REINFORCE++: A Simple and
Efficient Approach for Aligning Large Language Models"; DAPO — Yu et al. 2025; k3 KL estimator — Schulman 2020,
"Approximating KL divergence".
"""

from __future__ import annotations

import torch

ADVANTAGES = ("grpo", "dr_grpo", "rloo", "reinforce_pp")
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")
STD_EPS = 1e-4  # TRL's ε in A = (r − mean) / (std + ε)
WHITEN_EPS = 1e-8


def _groups(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (got shape {tuple(rewards.shape)})")
    if num_generations < 1 or rewards.numel() % num_generations:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of num_generations={num_generations}")
    return rewards.view(-1, num_generations)


def nan_std(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """Unbiased standard deviation over the non-NaN entries: √(Σ (x − x̄)² / (n − 1)); NaN when n < 2."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    n = (~torch.isnan(x)).sum(dim=dim, keepdim=True) if dim is not None else (~torch.isnan(x)).sum()
    ss = torch.nansum((x - mean) ** 2, dim=dim, keepdim=True) if dim is not None else torch.nansum((x - mean) ** 2)
    var = torch.where(n > 1, ss / (n - 1).clamp(min=1), torch.full_like(ss, float("nan")))
    std = var.sqrt()
    if dim is not None and not keepdim:
        std = std.squeeze(dim)
    return std


def grpo_advantages(rewards: torch.Tensor, num_generations: int,
                    scale_rewards: str = "group") -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO's group-relative advantage (Shao et al. 2024), one per completion, TRL's ``scale_rewards`` semantics:

        A_i = (r_i − mean(r_group(i))) / (σ + 1e-4)
        σ   = std(r_group(i))  (group, the default) | std(r over the whole batch) (batch) | no division (none)

    Standard deviations are unbiased (n − 1); NaN rewards are left out of means and stds, their A is 0. Returns
    ``(advantages, std_is_zero)``: the second (N,) flags completions whose σ is 0 — for ``none`` the group σ is
    still computed for it (TRL's ``frac_reward_zero_std``). Needs G ≥ 2 for ``group``/``none``.
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS} (got {scale_rewards!r})")
    if num_generations < 2:
        raise ValueError(f"group advantages need num_generations >= 2 (got {num_generations}): a group of one "
                         "has no baseline")
    grouped = _groups(rewards, num_generations)
    mean = torch.nanmean(grouped, dim=1, keepdim=True).expand_as(grouped).reshape(-1)
    if scale_rewards == "batch":
        std = nan_std(rewards).expand_as(rewards)
    else:
        std = nan_std(grouped, dim=1, keepdim=True).expand_as(grouped).reshape(-1)
    advantages = rewards - mean
    if scale_rewards != "none":
        advantages = advantages / (std + STD_EPS)
    std_is_zero = torch.isclose(std, torch.zeros_like(std))
    return torch.nan_to_num(advantages, nan=0.0), std_is_zero


def dr_grpo_advantages(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Dr. GRPO's advantage (Liu et al. 2025): the group mean only, no division by the group std,

        A_i = r_i − mean(r_group(i))

    The std division up-weights groups whose rewards barely differ (too easy or too hard questions, or a reward
    model that cannot tell the answers apart): a question-level difficulty bias. NaN rewards get A = 0.
    """
    return grpo_advantages(rewards, num_generations, "none")[0]


def rloo_advantages(rewards: torch.Tensor, num_generations: int, normalize: bool = False) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024; Kool et al. 2019): each completion's baseline is the mean
    reward of the other G − 1 completions of its prompt,

        A_i = r_i − (Σ_{j ∈ group(i)} r_j − r_i) / (G − 1)  =  G / (G − 1) · (r_i − mean(r_group(i)))

    With NaN rewards the sum and G run over the scored completions; a completion with no scored sibling gets A = 0.
    ``normalize`` (TRL's ``normalize_advantages``) then whitens over the batch: (A − mean A) / (std A + 1e-4).
    Needs G ≥ 2.
    """
    if num_generations < 2:
        raise ValueError(f"RLOO needs num_generations >= 2 (got {num_generations}): the leave-one-out baseline "
                         "of a group of one is undefined")
    grouped = _groups(rewards, num_generations)
    scored = (~torch.isnan(grouped)).sum(1, keepdim=True)
    total = torch.nansum(grouped, dim=1, keepdim=True)
    baseline = (total - grouped) / (scored - 1)
    advantages = (grouped - baseline).reshape(-1)
    if normalize:
        advantages = (advantages - torch.nanmean(advantages)) / (nan_std(advantages) + STD_EPS)
    return torch.nan_to_num(advantages, nan=0.0, posinf=0.0, neginf=0.0)


def reinforce_pp_returns(rewards: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """REINFORCE++'s per-token return before normalisation (Hu 2025), the KL penalty inside the reward:

        r_t = −β·KL_t + 1[t = last token]·r,   G_t = Σ_{s ≥ t} r_s   (γ = 1)

    ``rewards`` (B,) (NaN → the row's reward term is dropped), ``kl`` and ``mask`` (B, T). Returns (B, T), 0 on
    padding.
    """
    mask = mask.to(kl.dtype)
    token_rewards = -beta * kl * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rows = torch.arange(mask.size(0))
    score = torch.nan_to_num(rewards.to(kl.dtype), nan=0.0) * (mask.sum(1) > 0)
    token_rewards[rows, last] = token_rewards[rows, last] + score
    return token_rewards.flip(1).cumsum(1).flip(1) * mask


def reinforce_pp_advantages(rewards: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float,
                            mean: torch.Tensor | None = None, var: torch.Tensor | None = None) -> torch.Tensor:
    """REINFORCE++ (Hu 2025): the KL penalty goes into the reward, the return is the reward-to-go, and the
    advantage is normalised over every token of the batch (no critic, no group baseline):

        r_t = −β·KL_t + 1[t = last token]·r          (KL_t per token, e.g. k1 = log π_old − log π_ref)
        A_t = Σ_{s ≥ t} r_s                          (γ = 1)
        A_t ← (A_t − mean(A)) / √(var(A) + 1e-8)      (masked mean and unbiased variance over the batch)

    ``mean`` / ``var`` may be passed in (moments over every process's batch). Returns (B, T), 0 on padding.
    """
    returns = reinforce_pp_returns(rewards, kl, mask, beta)
    mask = mask.to(returns.dtype)
    if mean is None or var is None:
        n = mask.sum()
        mean = returns.sum() / n
        var = (((returns - mean) ** 2) * mask).sum() / (n - 1).clamp(min=1)
    return (returns - mean) * torch.rsqrt(var + WHITEN_EPS) * mask


def per_token_kl(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimators of KL(π‖π_ref) on tokens sampled from π (Schulman 2020), with Δ = log π_ref − log π:

        k1 = −Δ               (unbiased, can be negative per token)
        k3 = exp(Δ) − Δ − 1    (unbiased, never negative; GRPO's, and TRL's)
    """
    delta = ref_logps - logps
    if estimator == "k1":
        return -delta
    if estimator == "k3":
        return torch.exp(delta) - delta - 1
    raise ValueError(f"KL estimator must be k1 or k3 (got {estimator!r})")


def clipped_policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: str = "dapo",
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    ref_logps: torch.Tensor | None = None,
    kl_estimator: str = "k3",
    max_completion_length: int | None = None,
    num_items: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO's clipped surrogate with a KL term, aggregated as TRL's ``loss_type`` says (one micro-batch, no
    accumulation; the caller divides by the accumulation steps where TRL does):

        ρ_t = exp(log π(y_t) − log π_old(y_t))      (with one update per batch, π_old = π detached: ρ = 1, ∇ρ = ∇log π)
        ℓ_t = −min(ρ_t·A, clip(ρ_t, 1 − ε, 1 + ε_high)·A) + β·KL_t      (KL_t = k3, or k1, to π_ref)

        grpo    (Shao et al. 2024)  L = 1/B Σ_b (Σ_t m ℓ / Σ_t m)       mean per sequence, then over sequences
        bnpo                        L = Σ m ℓ / Σ m                     token mean over this micro-batch
        dr_grpo (Liu et al. 2025)   L = Σ m ℓ / (B · L_max)             constant normaliser (max_completion_length)
        dapo    (Yu et al. 2025)    L = Σ m ℓ / N_items                 N_items = the tokens of the whole batch
                                                                        (``num_items``; default Σ m)

    Per-sequence normalisation (grpo) gives each token of a long completion less weight than one of a short
    completion: with a negative advantage, long wrong answers are penalised less per token, which lengthens them
    (Liu et al. 2025); the constant normaliser of dr_grpo / the batch token count of dapo do not.
    ``advantages`` is (B,) or (B, T). ε_high defaults to ε. Stats: ``clip_ratio/low_mean``, ``high_mean``,
    ``region_mean`` (token fractions: ρ < 1 − ε with A < 0, ρ > 1 + ε_high with A > 0, either), ``kl`` (masked
    token mean), each detached.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES} (got {loss_type!r})")
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    mask = mask.to(logps.dtype)
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high)
    per_token = -torch.min(ratio * advantages, clipped * advantages)
    kl = None
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta != 0 needs ref_logps")
        kl = per_token_kl(logps, ref_logps, kl_estimator)
        per_token = per_token + beta * kl
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type dr_grpo needs max_completion_length")
        loss = (per_token * mask).sum() / (per_token.size(0) * max_completion_length)
    else:
        denominator = mask.sum() if num_items is None else torch.as_tensor(num_items, dtype=per_token.dtype)
        loss = (per_token * mask).sum() / denominator.clamp(min=1.0)
    with torch.no_grad():
        count = mask.sum().clamp(min=1.0)
        low = ((ratio < 1 - epsilon) & (advantages < 0)).to(mask.dtype)
        high = ((ratio > 1 + epsilon_high) & (advantages > 0)).to(mask.dtype)
        region = torch.maximum(low, high)
        stats = {"clip_ratio/low_mean": (low * mask).sum() / count, "clip_ratio/high_mean": (high * mask).sum() / count,
                 "clip_ratio/region_mean": (region * mask).sum() / count}
        if kl is not None:
            stats["kl"] = (kl * mask).sum() / count
    return loss, stats
