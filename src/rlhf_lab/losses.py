"""Every loss as a pure tensor function, its formula in the docstring.

Shapes: B = batch, T = sequence length, V = vocabulary. ``mask`` tensors are 1 where a token counts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log π(y_t | y_<t) for each target token: ``logits`` (B, T, V) scored against ``targets`` (B, T).

    ``logits[:, t]`` must already be the prediction for ``targets[:, t]`` (the caller shifts by one).
    Computed as −cross_entropy, which never materialises the full (B, T, V) log-softmax twice.
    """
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), reduction="none")
    return -nll.view(targets.shape)


def sft_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
             num_tokens: int | torch.Tensor | None = None) -> torch.Tensor:
    """Supervised fine-tuning NLL: L = −(1/N) Σ_{b,t} m_{b,t} · log π(y_{b,t} | y_{b,<t}).

    N defaults to Σ m. Pass ``num_tokens`` = the token count of the whole optimizer step (all micro-batches,
    all processes) so that gradient accumulation and data parallelism give exactly the loss of one big batch.
    """
    logp = token_logprobs(logits, targets)
    denominator = mask.sum() if num_tokens is None else num_tokens
    return -(logp * mask).sum() / denominator


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: float | torch.Tensor = 0.0,
                       score_l2: float = 0.0, center_coefficient: float = 0.0) -> torch.Tensor:
    """Reward-model loss per pair (Bradley-Terry / InstructGPT), shape (B,):

        L = −log σ(r_c − r_r − m) + l2 · ½(r_c² + r_r²) + c · (r_c + r_r)²

    m is a margin (Llama-2), the l2 term is Coste et al. 2023's ``score_l2_reg`` (0.001 there) and the last term
    TRL's ``center_rewards_coefficient``. −log σ(x) is computed as softplus(−x), exact for large |x|.
    """
    loss = F.softplus(-(r_chosen - r_rejected - margin))
    if score_l2:
        loss = loss + score_l2 * 0.5 * (r_chosen.pow(2) + r_rejected.pow(2))
    if center_coefficient:
        loss = loss + center_coefficient * (r_chosen + r_rejected).pow(2)
    return loss


# ---- Disentangled length head (ODIN, Chen et al. 2024, "ODIN: Disentangled Reward Mitigates Hacking in RLHF") ----
# The reward model has two linear heads on one trunk, r = r_Q + r_L; the Bradley-Terry loss is taken on r and
#     L = L_BT(r) + λ_L · L_length + λ_O · L_orthogonal
# Only r_Q is kept for scoring (the length head is dropped after training).


def pearson_correlation(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Sample Pearson correlation of two (N,) vectors, differentiable:

        ρ(x, y) = Σ (x_i − x̄)(y_i − ȳ) / ( √Σ (x_i − x̄)² · √Σ (y_i − ȳ)² )

    The denominator is clamped at ``eps``, so a constant vector gives ρ = 0 (no length signal to follow or to
    avoid) rather than NaN.
    """
    dx, dy = x - x.mean(), y - y.mean()
    return (dx * dy).sum() / (dx.norm() * dy.norm()).clamp_min(eps)


def odin_length_loss(r_quality: torch.Tensor, r_length: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """ODIN's length loss (Chen et al. 2024, Sec. 4), a scalar over one batch of N responses:

        L_length = |ρ(r_Q, ℓ)| − ρ(r_L, ℓ)

    ρ is the Pearson correlation over the batch (``pearson_correlation``; the paper takes it over the global batch
    of all chosen and rejected responses), ℓ the response lengths in tokens. The first term decorrelates the
    quality head from length, whichever the sign; the second makes the length head correlate positively with
    it. Range [−1, 2]; its minimum −1 is r_Q uncorrelated with ℓ and r_L an increasing linear function of ℓ.
    """
    lengths = lengths.to(r_quality.dtype)
    return pearson_correlation(r_quality, lengths).abs() - pearson_correlation(r_length, lengths)


def odin_orthogonal_loss(w_quality: torch.Tensor, w_length: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """ODIN's orthogonality loss (Chen et al. 2024, Sec. 4) on the two heads' weight vectors (D,) or (1, D):

        L_orthogonal = |w_Qᵀ w_L| / (‖w_Q‖ ‖w_L‖)

    The paper writes |W_Qᵀ W_L|; normalising the weights first (as its authors' re-implementation in
    RLHFlow/RLHF-Reward-Modeling does) keeps the loss from being minimised by shrinking the heads instead of
    turning them apart.
    Orthogonal heads read disjoint directions of the shared features, so length information the length head
    uses is not also in r_Q.
    """
    wq, wl = w_quality.reshape(-1), w_length.reshape(-1)
    return (wq @ wl).abs() / (wq.norm() * wl.norm()).clamp_min(eps)


# ---- PPO (recipes/ppo.py) ------------------------------------------------------------------------------------
# Shapes: (B, R) with R = the longest response of the batch; ``mask`` is 1 on real response tokens (responses are
# right-padded, so a row's real tokens are columns 0..len−1).


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ m·x / Σ m (over ``dim``, or over everything)."""
    if dim is None:
        return (x * mask).sum() / mask.sum()
    return (x * mask).sum(dim) / mask.sum(dim)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  mean: torch.Tensor | None = None, var: torch.Tensor | None = None) -> torch.Tensor:
    """Whitening over the masked entries: (x − μ) / √(σ² + 1e-8), μ = masked mean, σ² = unbiased masked variance
    Σ m (x − μ)² / (Σ m − 1). ``shift_mean=False`` adds μ back (TRL's reward whitening keeps the mean).

    ``mean`` / ``var`` may be passed in (statistics gathered over every process of a data-parallel run).
    Masked-out entries come back as 0.
    """
    if mean is None or var is None:
        mean = masked_mean(x, mask)
        n = mask.sum()
        var = ((x - mean) ** 2 * mask).sum() / (n - 1).clamp(min=1)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def gae_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                   lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) per response token, from the last token back:

        δ_t = r_t + γ·V_{t+1} − V_t          (V_{t+1} = 0 after the last real token: the episode ends there)
        A_t = δ_t + γ·λ·A_{t+1}
        returns R_t = A_t + V_t              (the value-function target)

    Rewards and values at padded positions are ignored (treated as 0), so a short row ends at its last real
    token. Returns ``(advantages, returns)``, both 0 where ``mask`` is 0.
    """
    rewards = rewards * mask
    values = values * mask
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, cliprange: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate (Schulman et al. 2017), as a loss to minimise:

        ρ_t = exp(log π(y_t) − log π_old(y_t))
        L   = mean_t max(−A_t·ρ_t, −A_t·clip(ρ_t, 1 − ε, 1 + ε))      (masked token mean)

    Also returns ``clipfrac`` (fraction of tokens where the clipped term is the larger one), ``approxkl``
    (½·mean (log ρ)², TRL's policy/approxkl) and ``ratio`` (mean ρ).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask),
                 "approxkl": 0.5 * masked_mean(log_ratio.pow(2), mask),
                 "ratio": masked_mean(ratio, mask)}
    return loss, stats


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                   cliprange_value: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped value loss (as in OpenAI baselines / trlx / TRL):

        V_clip = V_old + clip(V − V_old, −ε_v, ε_v)
        L_V    = ½ · mean_t max((V_t − R_t)², (V_clip,t − R_t)²)       (masked token mean)

    Returns ``(loss, clipfrac)``; clipfrac = fraction of tokens where the clipped error is the larger.
    """
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    error = (values - returns).pow(2)
    clipped_error = (clipped_values - returns).pow(2)
    loss = 0.5 * masked_mean(torch.maximum(error, clipped_error), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped_error > error).float(), mask)
    return loss, clipfrac


def kl_estimates(policy_logps: torch.Tensor, ref_logps: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-token estimators of KL(π‖π_ref) from samples y ~ π (Schulman, "Approximating KL divergence"):

        r  = log π_ref(y) − log π(y)
        k1 = −r              (unbiased, high variance, can be negative)
        k2 = ½ r²            (biased, low variance; what the PPO of Coste et al. 2023 logs)
        k3 = (eʳ − 1) − r    (unbiased, always ≥ 0)

    Summing a row's per-token values over its response gives the sequence KL estimate.
    """
    log_ratio = ref_logps.float() - policy_logps.float()
    return {"k1": -log_ratio, "k2": 0.5 * log_ratio.pow(2), "k3": torch.expm1(log_ratio) - log_ratio}


def sequence_kl(policy_logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
    """Sequence estimates of KL(π‖π_ref) per row, KL_k = Σ_t k_t · mask_t over the response tokens, for the
    estimators k1, k2, k3 of ``kl_estimates``. ``policy_logps`` / ``ref_logps`` hold log-probs of the sampled
    tokens, (B, R) with ``mask`` (B, R) = 1 on real response tokens, or one row (R,) without a mask."""
    return {name: (est if mask is None else est * mask).sum(-1)
            for name, est in kl_estimates(policy_logps, ref_logps).items()}


def kl_penalty_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """The per-token KL(π‖π_ref) estimate that the reward is penalised with (``estimator`` k1, k2 or k3 of
    ``kl_estimates``; k1 is the trlx / TRL default)."""
    if estimator not in ("k1", "k2", "k3"):
        raise ValueError(f"unknown KL estimator {estimator!r} (k1, k2 or k3)")
    return kl_estimates(logprobs, ref_logprobs)[estimator]


def ppo_token_rewards(kl: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor,
                      kl_coef: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-token reward of RLHF-PPO (Ziegler et al. 2019; Stiennon et al. 2020):

        r_t = −β · KL_t                       on every response token
        r_T = r_T + score                     on the last real response token T (not on a pad)

    ``kl`` (B, R) is the per-token estimate, ``scores`` (B,) the sequence reward. Returns
    ``(rewards, non_score_rewards)`` with non_score_rewards = −β·KL·mask.
    """
    non_score = -kl_coef * kl * mask
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)
    rewards = non_score.clone()
    rows = torch.arange(rewards.size(0), device=rewards.device)
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards, non_score


def adaptive_kl_coef(kl_coef: float, current_kl: float, target: float, horizon: int, n_steps: int) -> float:
    """The adaptive KL controller of Ziegler et al. 2019 (trlx's AdaptiveKLController):

        e = clip(KL / KL_target − 1, −0.2, 0.2)
        β ← β · (1 + e · n_steps / horizon)

    ``current_kl`` is the batch mean of the sequence KL, ``n_steps`` the number of samples in the batch.
    """
    error = min(max(current_kl / target - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * n_steps / horizon)


# ---- preference optimisation: DPO / IPO / RRHF (recipes/dpo.py) --------------------------------------------------

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0,
             chosen_lengths: torch.Tensor | None = None, rejected_lengths: torch.Tensor | None = None,
             length_normalize: bool | None = None, rdpo_alpha: float = 0.0,
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Direct preference optimisation and relatives, per pair. Returns ``(losses, chosen_rewards, rejected_rewards)``.

    Inputs are sequence log-probs (summed over response tokens), shape (B,). With the log-ratios
    ρ_w = log π(y_w|x) − log π_ref(y_w|x), ρ_l likewise, and the margin

        h = ρ_w − ρ_l                       (or ρ_w/|y_w| − ρ_l/|y_l| when length-normalised),
        z = β·h − α·(|y_w| − |y_l|)         (α = ``rdpo_alpha``, R-DPO; Park et al. 2024),

    the losses are

        sigmoid  DPO (Rafailov et al. 2023), with conservative label smoothing ε (cDPO, Mitchell 2023):
                 L = −(1−ε)·log σ(z) − ε·log σ(−z)
        robust   rDPO (Chowdhury et al. 2024), ε = flip probability:
                 L = (−(1−ε)·log σ(z) + ε·log σ(−z)) / (1 − 2ε)
        hinge    SLiC (Zhao et al. 2023):  L = max(0, 1 − z)
        ipo      IPO (Azar et al. 2023, eq. 17), β playing τ:  L = (h − 1/(2β))²

    IPO follows TRL's convention: h is always on the *average* per-token log-ratio (ρ/|y|), which the IPO authors
    confirmed to TRL is what their experiments used; it needs the lengths, and the R-DPO term does not apply.
    ``length_normalize`` (default: True for ipo, False otherwise) turns the other losses into their
    length-normalised form (TRL's ``sigmoid_norm``). The implicit rewards are always the unnormalised
    β·(log π − log π_ref) (TRL's ``rewards/chosen`` and ``rewards/rejected``).
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose from {', '.join(DPO_LOSS_TYPES)}")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    normalize = (loss_type == "ipo") if length_normalize is None else length_normalize
    if (normalize or rdpo_alpha) and (chosen_lengths is None or rejected_lengths is None):
        raise ValueError("length normalisation, IPO and the R-DPO term need chosen_lengths and rejected_lengths")
    if normalize:
        h = (chosen_logratios / chosen_lengths.clamp(min=1)) - (rejected_logratios / rejected_lengths.clamp(min=1))
    else:
        h = chosen_logratios - rejected_logratios
    if loss_type == "ipo":
        if rdpo_alpha:
            raise ValueError("the R-DPO length term applies to the sigmoid, robust and hinge losses, not IPO")
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        z = beta * h
        if rdpo_alpha:
            z = z - rdpo_alpha * (chosen_lengths - rejected_lengths).to(z.dtype)
        if loss_type == "sigmoid":
            losses = -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
        elif loss_type == "robust":
            losses = (-(1.0 - label_smoothing) * F.logsigmoid(z) + label_smoothing * F.logsigmoid(-z)) / (
                1.0 - 2.0 * label_smoothing)
        else:  # hinge
            losses = torch.relu(1.0 - z)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def rrhf_loss(token_logps: torch.Tensor, mask: torch.Tensor, rewards: torch.Tensor, rrhf_weight: float = 1.0,
              length_penalty: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RRHF (Yuan et al. 2023), per prompt. Returns ``(losses, rank_losses, sft_losses)``, each shape (B,).

    ``token_logps`` (B, K, T) are the per-token log-probs of K responses per prompt, ``mask`` (B, K, T) marks real
    response tokens, ``rewards`` (B, K) their scores (for a preference pair: chosen 1, rejected 0). With the
    length-normalised score p_i = Σ_t log π(y_{i,t} | x, y_{i,<t}) / |y_i|^λ (λ = ``length_penalty``),

        L_rank = Σ_{i,j: r_i < r_j} max(0, p_i − p_j)
        L_ft   = −(1/|y_b|) Σ_t log π(y_{b,t} | x, y_{b,<t}),    b = argmax_i r_i
        L      = w · L_rank + L_ft                                 (w = ``rrhf_weight``)

    Ties in reward give no ranking term. L_ft is the mean NLL over the best response's own tokens (the paper
    writes a sum; its code takes a mean over the padded row, which depends on the padding).
    """
    mask = mask.to(token_logps.dtype)
    lengths = mask.sum(-1).clamp(min=1)
    scores = (token_logps * mask).sum(-1) / lengths.pow(length_penalty)  # p_i, (B, K)
    # better[b, i, j] = r_j > r_i: response j must outscore response i
    better = rewards.unsqueeze(-1) < rewards.unsqueeze(-2)
    violation = torch.relu(scores.unsqueeze(-1) - scores.unsqueeze(-2))  # max(0, p_i − p_j) at [b, i, j]
    rank = (violation * better).sum(dim=(-1, -2))
    best = rewards.argmax(dim=-1)
    rows = torch.arange(token_logps.size(0), device=token_logps.device)
    sft = -(token_logps[rows, best] * mask[rows, best]).sum(-1) / lengths[rows, best]
    return rrhf_weight * rank + sft, rank, sft



# ---- preference optimisation against length bias: SimPO, CPO, ORPO, LD-DPO, KTO (recipes/dpo.py) --------------
# Reference-free losses (SimPO, CPO, ORPO) take only the policy's log-probs; LD-DPO changes which log-probs DPO
# sees; KTO scores single replies labelled desirable or undesirable.


def simpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
               chosen_lengths: torch.Tensor, rejected_lengths: torch.Tensor, beta: float, gamma: float,
               label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimPO (Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward"), per pair.

    The reward is the length-normalised log-prob r(y) = (β/|y|)·log π(y|x) — no reference model — and the loss a
    Bradley-Terry loss with a target margin γ:

        L = −log σ(r(y_w) − r(y_l) − γ)                          (eq. 6)
          = −log σ(β·(log π(y_w)/|y_w| − log π(y_l)/|y_l|) − γ)

    ``label_smoothing`` ε gives the conservative form −(1−ε)·log σ(z) − ε·log σ(−z) (TRL's CPOTrainer, 0 in the
    paper). Inputs are summed log-probs and token counts, shape (B,). Returns ``(losses, r(y_w), r(y_l))``.
    """
    chosen_rewards = beta * policy_chosen_logps / chosen_lengths.clamp(min=1)
    rejected_rewards = beta * policy_rejected_logps / rejected_lengths.clamp(min=1)
    z = chosen_rewards - rejected_rewards - gamma
    losses = -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


def cpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, beta: float,
             chosen_nll: torch.Tensor, cpo_alpha: float = 1.0, label_smoothing: float = 0.0,
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CPO (Xu et al. 2024, "Contrastive Preference Optimization: Pushing the Boundaries of LLM Performance in
    Machine Translation"), per pair: DPO with the reference dropped (π_ref uniform), plus an NLL term on y_w:

        L = −log σ(β·(log π(y_w|x) − log π(y_l|x))) + α·NLL(y_w)            (eq. 3 + the NLL regulariser)

    ``policy_*_logps`` are summed log-probs (B,); ``chosen_nll`` (B,) is the NLL of each chosen reply (the recipe
    passes the per-token mean −log π(y_w|x)/|y_w|); α = ``cpo_alpha``. ``label_smoothing`` ε as in ``simpo_loss``.
    Returns ``(losses, β·log π(y_w|x), β·log π(y_l|x))`` — TRL's logged rewards.
    """
    z = beta * (policy_chosen_logps - policy_rejected_logps)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    losses = losses + cpo_alpha * chosen_nll
    return losses, beta * policy_chosen_logps.detach(), beta * policy_rejected_logps.detach()


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x < 0 without cancellation (Mächler 2012: expm1 near 0, log1p far from it)."""
    return torch.where(x < -math.log(2.0), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(policy_chosen_avg_logps: torch.Tensor, policy_rejected_avg_logps: torch.Tensor, lam: float,
              chosen_nll: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """ORPO (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model"), per pair.

    With the length-normalised log-likelihood ℓ(y) = log π(y|x)/|y| (the inputs, shape (B,)) and the odds
    odds(y) = P/(1 − P), P = exp ℓ(y):

        log OR = log odds(y_w) − log odds(y_l) = (ℓ_w − ℓ_l) − (log(1 − e^{ℓ_w}) − log(1 − e^{ℓ_l}))
        L      = NLL(y_w) − λ·log σ(log OR)                                  (eqs. 6–7)

    ``chosen_nll`` is the per-token NLL of y_w (= −ℓ_w), λ = ``lam`` (TRL's ORPO ``beta``). Returns
    ``(losses, λ·ℓ_w, λ·ℓ_l, log OR)`` — the rewards are TRL's logged ones.
    """
    chosen = policy_chosen_avg_logps.float()
    rejected = policy_rejected_avg_logps.float()
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
    losses = chosen_nll - lam * F.logsigmoid(log_odds)
    return losses, lam * chosen.detach(), lam * rejected.detach(), log_odds.detach()


def ld_dpo_logps(chosen_token_logps: torch.Tensor, chosen_mask: torch.Tensor, rejected_token_logps: torch.Tensor,
                 rejected_mask: torch.Tensor, ld_alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The length-desensitised sequence log-probs of LD-DPO (Liu et al. 2024, "Length Desensitization in
    Direct Preference Optimization"), for the policy and for the reference alike.

    With l_p = min(|y_w|, |y_l|) the length the two replies share, the longer reply's log-prob is split into its
    first l_p tokens and the verbose tail, and the tail is weighted by α ∈ [0, 1]:

        log π̂(y|x) = Σ_{t ≤ l_p} log π(y_t|x, y_<t) + α · Σ_{t > l_p} log π(y_t|x, y_<t)

    (the shorter reply is unchanged). α = 1 is DPO; α = 0 compares only the shared-length prefixes. LD-DPO's loss
    is ``dpo_loss`` on these log-probs. Inputs (B, T) with masks marking each reply's tokens in order (any
    padding layout); "the t-th token" counts masked tokens. Returns the two (B,) sums.
    """
    chosen_mask, rejected_mask = chosen_mask.to(chosen_token_logps.dtype), rejected_mask.to(rejected_token_logps.dtype)
    shared = torch.minimum(chosen_mask.sum(-1), rejected_mask.sum(-1)).unsqueeze(-1)

    def weighted(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        position = mask.cumsum(-1)  # 1-based index of each real token (0 before the first)
        weights = torch.where(position <= shared, 1.0, ld_alpha).to(token_logps.dtype) * mask
        return (token_logps * weights).sum(-1)

    return weighted(chosen_token_logps, chosen_mask), weighted(rejected_token_logps, rejected_mask)


def kto_reference_point(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z0 = max(0, mean_j log π(y'_j|x_j)/π_ref(y'_j|x_j)), detached (Ethayarajh et al. 2024).

    y'_j is a mismatched reply (another example's completion) to prompt x_j, so the mean estimates KL(π‖π_ref)
    over the batch; it is clamped at 0 and carries no gradient.
    """
    return (policy_kl_logps - ref_kl_logps).mean().detach().clamp(min=0)


def kto_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, labels: torch.Tensor, reference_point: torch.Tensor,
             beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", eq. 7), per reply.

    With the implicit reward r = log π(y|x) − log π_ref(y|x) (summed log-probs, shape (B,)) and the reference
    point z0 (``kto_reference_point``, a detached scalar):

        desirable   (label true):   L = λ_D · (1 − σ(β·(r − z0)))
        undesirable (label false):  L = λ_U · (1 − σ(β·(z0 − r)))

    λ_D, λ_U = ``desirable_weight``, ``undesirable_weight``. Returns ``(losses, β·r)``, both (B,), in input order.
    """
    labels = labels.bool()
    logratios = policy_logps - ref_logps
    z = beta * (logratios - reference_point)
    losses = torch.where(labels, desirable_weight * (1.0 - torch.sigmoid(z)),
                         undesirable_weight * (1.0 - torch.sigmoid(-z)))
    return losses, beta * logratios.detach()


# ---- model averaging (recipes/ama.py) ----------------------------------------------------------------------------


def ama_alphas(logits: torch.Tensor, init_val: float, epsilon: float) -> torch.Tensor:
    """Adaptive model averaging's normalised ratios, one per group g of G (Lin et al. 2023, §5):

        α̃_g = init · (σ(a_g) + ε) / ((1/G) Σ_{g'} (σ(a_{g'}) + ε))

    so mean_g α̃_g = init for any logits a; ε pulls every α̃_g towards init (ε → ∞ gives α̃ ≡ init).
    """
    s = torch.sigmoid(logits) + epsilon
    return init_val * s / s.mean()


def ama_regularizer(alphas: torch.Tensor, init_val: float, weights: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Lin et al.'s (AMA) penalty on moving away from init, summed over groups with weights w_g:

        R = Σ_g w_g · ρ(α̃_g − init),   ρ(x) = |x| (``l1``), x² (``l2``), 1 + x (``linear``)

    (The seed sums over every linear module m, ``w(layer_m)·ρ(α̃_m − init)``; pass w_g = Σ_{m∈g} w(layer_m).)
    """
    diff = alphas - init_val
    if kind == "l1":
        rho = diff.abs()
    elif kind == "l2":
        rho = diff.pow(2)
    elif kind == "linear":
        rho = 1.0 + diff
    else:
        raise ValueError(f"unknown regulariser kind {kind!r}")
    return (weights * rho).sum()
