"""Group advantages and GRPO's clipped loss: hand computations, and parity with TRL 1.16.

The loss parity calls TRL's own ``GRPOTrainer._compute_loss`` (unbound) on a minimal stand-in object that carries
the attributes it reads and returns our fixed log-probs from ``_get_per_token_logps_and_entropies``. TRL's advantage
code sits inside ``_generate_and_score_completions`` (not callable alone), so the advantage references replicate its
few lines in this file, using TRL's own ``nanstd``.
"""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from rlhf_lab.rl_losses import (
    clipped_policy_loss,
    dr_grpo_advantages,
    grpo_advantages,
    per_token_kl,
    reinforce_pp_advantages,
    rloo_advantages,
)

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
from trl.trainer.utils import nanstd  # noqa: E402

NAN = float("nan")


# ---- advantages: hand computations ---------------------------------------------------------------------------

def test_grpo_advantages_by_hand_and_equal_group_is_zero():
    r = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0], dtype=torch.float64)
    a, zero = grpo_advantages(r, 3)
    std = 1.0  # unbiased std of (1, 2, 3)
    assert torch.allclose(a[:3], torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64) / (std + 1e-4))
    assert torch.equal(a[3:], torch.zeros(3, dtype=torch.float64))  # all equal: no signal, no NaN
    assert zero.tolist() == [False] * 3 + [True] * 3


def test_grpo_batch_scale_and_dr_grpo_mean_only():
    r = torch.tensor([0.0, 2.0, 1.0, 5.0], dtype=torch.float64)
    batch_std = float(torch.tensor([0.0, 2.0, 1.0, 5.0]).std())
    a, _ = grpo_advantages(r, 2, "batch")
    assert torch.allclose(a, torch.tensor([-1.0, 1.0, -2.0, 2.0], dtype=torch.float64) / (batch_std + 1e-4))
    assert torch.allclose(dr_grpo_advantages(r, 2), torch.tensor([-1.0, 1.0, -2.0, 2.0], dtype=torch.float64))


def test_rloo_by_hand():
    r = torch.tensor([1.0, 2.0, 6.0], dtype=torch.float64)
    # baselines: (2+6)/2 = 4, (1+6)/2 = 3.5, (1+2)/2 = 1.5
    assert torch.allclose(rloo_advantages(r, 3), torch.tensor([-3.0, -1.5, 4.5], dtype=torch.float64))
    assert torch.equal(rloo_advantages(torch.full((4,), 2.0), 2), torch.zeros(4))


def test_group_of_one_is_rejected_with_a_clear_error():
    with pytest.raises(ValueError, match="num_generations >= 2"):
        grpo_advantages(torch.ones(3), 1)
    with pytest.raises(ValueError, match="num_generations >= 2"):
        rloo_advantages(torch.ones(3), 1)
    with pytest.raises(ValueError, match="do not split"):
        grpo_advantages(torch.ones(5), 2)


def test_nan_reward_is_left_out_and_gets_zero_advantage():
    r = torch.tensor([1.0, NAN, 3.0, 0.0], dtype=torch.float64)
    a, _ = grpo_advantages(r, 4)
    scored = torch.tensor([1.0, 3.0, 0.0], dtype=torch.float64)
    expect = (scored - scored.mean()) / (scored.std() + 1e-4)
    assert a[1] == 0 and torch.allclose(a[[0, 2, 3]], expect)
    loo = rloo_advantages(r, 4)
    assert loo[1] == 0 and math.isclose(float(loo[0]), 1.0 - 1.5)


def test_reinforce_pp_by_hand():
    rewards = torch.tensor([1.0, -1.0], dtype=torch.float64)
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    beta = 0.5
    # token rewards: row 0: −.05, −.1, −.15 + 1 ; row 1: −.25 − 1 ; returns (reward-to-go)
    returns = [0.7, 0.75, 0.85, -1.25]
    mean = sum(returns) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in returns) / 3)
    expect = torch.tensor([[(returns[0] - mean) / sd, (returns[1] - mean) / sd, (returns[2] - mean) / sd],
                           [(returns[3] - mean) / sd, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(reinforce_pp_advantages(rewards, kl, mask, beta), expect, atol=1e-6)


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    delta = ref - logp
    assert torch.allclose(per_token_kl(logp, ref, "k1"), torch.tensor([0.5, -1.0]))
    assert torch.allclose(per_token_kl(logp, ref, "k3"), torch.exp(delta) - delta - 1)
    assert (per_token_kl(logp, ref, "k3") >= 0).all()


def test_loss_normalisers_by_hand_with_padding():
    logps = torch.zeros(2, 3, dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    # ratio 1 everywhere: ℓ = −A on real tokens; padding (ℓ would be 2) must not count
    common = dict(mask=mask, epsilon=0.2)
    grpo, _ = clipped_policy_loss(logps, logps, adv, loss_type="grpo", **common)
    assert math.isclose(float(grpo), ((-1.0) + 2.0) / 2)
    bnpo, _ = clipped_policy_loss(logps, logps, adv, loss_type="bnpo", **common)
    assert math.isclose(float(bnpo), (-3.0 + 2.0) / 4)
    dr, _ = clipped_policy_loss(logps, logps, adv, loss_type="dr_grpo", max_completion_length=5, **common)
    assert math.isclose(float(dr), (-3.0 + 2.0) / (2 * 5))
    dapo, _ = clipped_policy_loss(logps, logps, adv, loss_type="dapo", num_items=10, **common)
    assert math.isclose(float(dapo), (-3.0 + 2.0) / 10)


def test_clipping_by_hand():
    old = torch.zeros(1, 2)
    logps = torch.log(torch.tensor([[1.5, 0.5]]))
    mask = torch.ones(1, 2)
    # A > 0: the 1.5 ratio is clipped at 1 + ε_high = 1.28; the 0.5 ratio is not (min keeps 0.5)
    loss, stats = clipped_policy_loss(logps, old, torch.tensor([1.0]), mask, loss_type="bnpo", epsilon=0.2,
                                      epsilon_high=0.28)
    assert math.isclose(float(loss), -(1.28 + 0.5) / 2, rel_tol=1e-6)
    assert float(stats["clip_ratio/high_mean"]) == 0.5 and float(stats["clip_ratio/low_mean"]) == 0.0
    # A < 0: 0.5 clipped at 0.8 → −min(−0.5, −0.8) = 0.8; 1.5 → 1.5
    loss, stats = clipped_policy_loss(logps, old, torch.tensor([-1.0]), mask, loss_type="bnpo", epsilon=0.2)
    assert math.isclose(float(loss), (0.8 + 1.5) / 2, rel_tol=1e-6)
    assert float(stats["clip_ratio/low_mean"]) == 0.5 and float(stats["clip_ratio/region_mean"]) == 0.5


# ---- advantages: parity with TRL's lines ---------------------------------------------------------------------

def _trl_grpo_advantages(rewards, g, scale):
    # GRPOTrainer._generate_and_score_completions, sum_then_normalize branch (TRL 1.16)
    mean = torch.nanmean(rewards.view(-1, g), dim=1).repeat_interleave(g, dim=0)
    if scale in ("group", "none"):
        std = nanstd(rewards.view(-1, g), dim=1).repeat_interleave(g, dim=0)
    else:
        std = nanstd(rewards).expand_as(rewards)
    adv = rewards - mean
    if scale != "none":
        adv = adv / (std + 1e-4)
    return torch.nan_to_num(adv, nan=0.0), torch.isclose(std, torch.zeros_like(std))


def _trl_rloo_advantages(rewards, g, normalize):
    # RLOOTrainer._generate_and_score_completions (TRL 1.16)
    grouped = rewards.view(-1, g)
    counts = (~torch.isnan(grouped)).sum(dim=1, keepdim=True)
    total = torch.nansum(grouped, dim=1, keepdim=True)
    adv = rewards - ((total - grouped) / (counts - 1)).view(-1)
    if normalize:
        adv = (adv - torch.nanmean(adv)) / (nanstd(adv) + 1e-4)
    return torch.nan_to_num(adv, nan=0.0)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_advantages_match_trl(scale):
    torch.manual_seed(1)
    r = torch.randn(24)
    r[5] = NAN
    r[12:16] = 0.7  # a zero-std group
    ours, zero = grpo_advantages(r, 4, scale)
    ref, ref_zero = _trl_grpo_advantages(r, 4, scale)
    assert (ours - ref).abs().max() <= 1e-6
    assert torch.equal(zero, ref_zero)


@pytest.mark.parametrize("normalize", [False, True])
def test_rloo_advantages_match_trl(normalize):
    torch.manual_seed(2)
    r = torch.randn(20)
    r[3] = NAN
    ours = rloo_advantages(r, 5, normalize)
    assert (ours - _trl_rloo_advantages(r, 5, normalize)).abs().max() <= 1e-6


# ---- the loss: parity with TRL's GRPOTrainer._compute_loss ---------------------------------------------------

class _Accelerator:
    num_processes = 1

    def reduce(self, x, reduction="sum"):
        return x

    def gather(self, x):
        return x

    gather_for_metrics = gather


def _trl_loss(loss_type, logps, old, ref, adv, mask, beta, eps, eps_high, max_len):
    """TRL's own _compute_loss on a stand-in trainer; our fixed log-probs stand in for the model's."""
    b, t = mask.shape
    stand_in = SimpleNamespace(
        loss_type=loss_type, epsilon_low=eps, epsilon_high=eps_high, beta=beta, importance_sampling_level="token",
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, use_vllm=False, aux_loss_enabled=False,
        _entropy_bonus_enabled=False, current_gradient_accumulation_steps=1, max_completion_length=max_len,
        model=SimpleNamespace(training=True), accelerator=_Accelerator(), _metrics={"train": defaultdict(list)},
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1),
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
    )
    inputs = {"prompt_ids": torch.zeros(b, 2, dtype=torch.long), "prompt_mask": torch.ones(b, 2, dtype=torch.long),
              "completion_ids": torch.zeros(b, t, dtype=torch.long), "completion_mask": mask,
              "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": mask.sum()}
    loss = trl_grpo.GRPOTrainer._compute_loss(stand_in, None, inputs)
    return loss, stand_in._metrics["train"]


def _batch(seed, b=6, t=7, shift=0.3):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3
    logps = (old + shift * torch.randn(b, t, generator=g, dtype=torch.float64)).requires_grad_(True)
    ref = old + 0.2 * torch.randn(b, t, generator=g, dtype=torch.float64)
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = (torch.arange(t)[None] < lengths[:, None]).to(torch.float64)
    return logps, old, ref, adv, mask


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta,eps_high", [(0.0, 0.2), (0.04, 0.28)])
def test_loss_matches_trl_compute_loss(loss_type, beta, eps_high):
    logps, old, ref, adv, mask = _batch(3)
    trl_loss, trl_metrics = _trl_loss(loss_type, logps, old, ref, adv, mask, beta, 0.2, eps_high, max_len=9)
    ours, stats = clipped_policy_loss(logps, old, adv, mask, loss_type=loss_type, epsilon=0.2, epsilon_high=eps_high,
                                      beta=beta, ref_logps=ref, max_completion_length=9, num_items=mask.sum())
    assert abs(float(ours.detach()) - float(trl_loss.detach())) <= 1e-6
    (grad_ours,) = torch.autograd.grad(ours, logps)
    (grad_trl,) = torch.autograd.grad(trl_loss, logps)
    assert (grad_ours - grad_trl).abs().max() <= 1e-6
    for name in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
        assert abs(float(stats[name]) - trl_metrics[name][0]) <= 1e-6
    assert float(stats["clip_ratio/region_mean"]) > 0  # the batch does clip: the comparison covers clipping
    if beta:
        assert abs(float(stats["kl"]) - trl_metrics["kl"][0]) <= 1e-6


def test_loss_with_one_update_has_ratio_one_and_policy_gradient():
    """μ = 1: old = π detached, so ρ = 1 and ∇L = −A ∇log π / normaliser (TRL's shortcut)."""
    logps, _, _, adv, mask = _batch(4)
    loss, _ = clipped_policy_loss(logps, logps.detach(), adv, mask, loss_type="bnpo")
    (grad,) = torch.autograd.grad(loss, logps)
    assert torch.allclose(grad, -adv[:, None] * mask / mask.sum())
