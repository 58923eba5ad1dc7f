"""SimPO, CPO, ORPO, LD-DPO and KTO equal TRL 1.16's own implementations on fixed random batches (to 1e-6).

TRL's loss code is called directly on hand-made tensors: ``CPOTrainer.cpo_loss`` / ``get_batch_loss_metrics`` /
``get_batch_logps`` (SimPO and CPO), ``ORPOTrainer.odds_ratio_loss`` / ``get_batch_loss_metrics`` (ORPO),
``DPOTrainer._compute_loss`` with ``ld_alpha`` (LD-DPO) and ``KTOTrainer._compute_loss`` (KTO), each bound to a
stand-in ``self`` (a SimpleNamespace with the attributes the method reads) and, where TRL runs a model, a stand-in
model that returns given per-token log-probs. Each test also checks that a wrong hyper-parameter changes the value,
so it can fail.
"""

import collections
import math
import types

import pytest
import torch

from rlhf_lab.losses import (
    cpo_loss,
    dpo_loss,
    kto_loss,
    kto_reference_point,
    ld_dpo_logps,
    orpo_loss,
    simpo_loss,
    token_logprobs,
)

TOL = 1e-6
CPU = types.SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x)


def _metrics():
    return {"train": collections.defaultdict(list), "eval": collections.defaultdict(list)}


def _pairs(batch=6, seed=0):
    """Summed log-probs and lengths of chosen / rejected replies, float64."""
    g = torch.Generator().manual_seed(seed)
    lc, lr = torch.randint(3, 40, (batch,), generator=g), torch.randint(3, 40, (batch,), generator=g)
    pc = -(torch.rand(batch, generator=g, dtype=torch.float64) * 1.5 + 0.05) * lc
    pr = -(torch.rand(batch, generator=g, dtype=torch.float64) * 1.5 + 0.05) * lr
    return pc, pr, lc.double(), lr.double()


# ---- SimPO and CPO: TRL's CPOTrainer --------------------------------------------------------------------------


def _cpo_self(loss_type, beta, gamma=0.5, cpo_alpha=0.0, label_smoothing=0.0):
    from trl.experimental.cpo import CPOTrainer

    stand_in = types.SimpleNamespace(loss_type=loss_type, beta=beta, simpo_gamma=gamma, cpo_alpha=cpo_alpha,
                                     label_smoothing=label_smoothing, alpha=0.0, accelerator=CPU,
                                     aux_loss_enabled=False)
    stand_in.cpo_loss = types.MethodType(CPOTrainer.cpo_loss, stand_in)
    return CPOTrainer, stand_in


@pytest.mark.parametrize("beta, gamma, smoothing", [(2.0, 0.5, 0.0), (2.5, 1.4, 0.0), (0.1, 0.05, 0.2)])
def test_simpo_matches_trl_cpo_trainer(beta, gamma, smoothing):
    pc, pr, lc, lr = _pairs()
    ours, rc, rr = simpo_loss(pc, pr, lc, lr, beta, gamma, label_smoothing=smoothing)
    _, trl = _cpo_self("simpo", beta, gamma, label_smoothing=smoothing)
    # TRL's SimPO reads average log-probs (get_batch_logps(average_log_prob=True) for loss_type simpo)
    trl_losses, trl_rc, trl_rr = trl.cpo_loss(pc / lc, pr / lr)
    assert (ours - trl_losses).abs().max() < TOL
    assert (rc - trl_rc).abs().max() < TOL and (rr - trl_rr).abs().max() < TOL
    wrong, _, _ = simpo_loss(pc, pr, lc, lr, beta, gamma + 0.3, label_smoothing=smoothing)
    assert (wrong - trl_losses).abs().max() > 1e-3  # γ matters
    wrong, _, _ = simpo_loss(pc, pr, lc, lr, beta * 1.5, gamma, label_smoothing=smoothing)
    assert (wrong - trl_losses).abs().max() > 1e-3  # β matters


def test_simpo_by_hand():
    # log π(y_w) = −6 over 3 tokens (−2 per token), log π(y_l) = −12 over 4 (−3); β = 2, γ = 0.5
    t = lambda x: torch.tensor([float(x)])  # noqa: E731
    loss, rc, rr = simpo_loss(t(-6), t(-12), t(3), t(4), beta=2.0, gamma=0.5)
    assert abs(float(loss) - math.log1p(math.exp(-(2 * (-2 + 3) - 0.5)))) < TOL
    assert abs(float(rc) + 4.0) < TOL and abs(float(rr) + 6.0) < TOL


@pytest.mark.parametrize("beta, cpo_alpha", [(0.1, 1.0), (0.5, 0.3)])
def test_cpo_matches_trl_cpo_trainer(beta, cpo_alpha):
    pc, pr, lc, _ = _pairs(seed=1)
    nll = -pc / lc  # the per-token NLL of each chosen reply
    ours, rc, rr = cpo_loss(pc, pr, beta, nll, cpo_alpha)
    cls, trl = _cpo_self("sigmoid", beta, cpo_alpha=cpo_alpha)
    trl_losses, trl_rc, trl_rr = trl.cpo_loss(pc, pr)
    assert (rc - trl_rc).abs().max() < TOL and (rr - trl_rr).abs().max() < TOL
    # TRL's full loss = mean preference loss + α·NLL, NLL a token mean over the batch's chosen replies: per pair
    # (a batch of one) that is exactly our per-pair loss. Through TRL's get_batch_loss_metrics:
    for i in range(len(pc)):
        one = slice(i, i + 1)
        forward = (pc[one], pr[one], torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), nll[i])
        trl.concatenated_forward = lambda model, batch, f=forward: f
        trl_loss, metrics = cls.get_batch_loss_metrics(trl, None, {}, "train")
        assert abs(float(trl_loss) - float(ours[i])) < TOL, (i, float(trl_loss), float(ours[i]))
        assert abs(metrics["rewards/chosen"] - float(rc[i])) < TOL
    wrong, _, _ = cpo_loss(pc, pr, beta, nll, cpo_alpha + 0.5)
    assert (wrong - ours).abs().max() > 1e-3  # α matters
    # on a batch whose chosen replies have equal lengths the batch token mean is the mean of per-pair means
    assert abs(float(trl_losses.mean() + cpo_alpha * nll.mean()) - float(ours.mean())) < TOL


def test_sequence_logps_and_nll_equal_trl_get_batch_logps():
    """Our per-token log-probs, summed / averaged over the reply, equal TRL's get_batch_logps on the same logits
    (the prompt's labels are −100); the mean NLL equals TRL's CrossEntropyLoss over the reply tokens."""
    from trl.experimental.cpo import CPOTrainer

    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 9, 11, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 11, (3, 9), generator=g)
    prompt_len, reply_len = torch.tensor([2, 4, 3]), torch.tensor([5, 3, 6])
    masked = labels.clone()
    for b in range(3):
        masked[b, :prompt_len[b]] = -100
        masked[b, prompt_len[b] + reply_len[b]:] = -100
    trl_sum = CPOTrainer.get_batch_logps(logits, masked, average_log_prob=False)
    trl_avg = CPOTrainer.get_batch_logps(logits, masked, average_log_prob=True)
    mask = (masked[:, 1:] != -100).double()
    ours = token_logprobs(logits[:, :-1], labels[:, 1:]) * mask
    assert (ours.sum(-1) - trl_sum).abs().max() < TOL
    assert (ours.sum(-1) / mask.sum(-1) - trl_avg).abs().max() < TOL
    ce = torch.nn.CrossEntropyLoss()(logits[:1, :-1].reshape(-1, 11), masked[:1, 1:].reshape(-1))
    assert abs(float(ce) + float(ours[0].sum() / mask[0].sum())) < TOL


# ---- ORPO: TRL's ORPOTrainer ----------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.1, 0.25])
def test_orpo_matches_trl_orpo_trainer(lam):
    from trl.experimental.orpo import ORPOTrainer

    pc, pr, lc, lr = _pairs(seed=3)
    ac, ar = pc / lc, pr / lr  # ORPO works on average log-probs
    ours, rc, rr, log_odds = orpo_loss(ac, ar, lam, -ac)
    trl = types.SimpleNamespace(beta=lam, accelerator=CPU, aux_loss_enabled=False)
    trl.odds_ratio_loss = types.MethodType(ORPOTrainer.odds_ratio_loss, trl)
    trl_terms, trl_rc, trl_rr, trl_ratio, trl_log_odds = trl.odds_ratio_loss(ac, ar)
    assert (ours - (-ac - trl_terms)).abs().max() < TOL  # TRL: loss = NLL − mean(λ·log σ(log OR))
    assert (rc - trl_rc).abs().max() < TOL and (rr - trl_rr).abs().max() < TOL
    assert abs(float(log_odds.mean()) - float(trl_log_odds)) < TOL
    assert abs(float(torch.nn.functional.logsigmoid(log_odds).mean()) - float(trl_ratio)) < TOL
    for i in range(len(pc)):  # the full loss through TRL's get_batch_loss_metrics, a pair at a time
        one = slice(i, i + 1)
        forward = (ac[one], ar[one], torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), -ac[i])
        trl.concatenated_forward = lambda model, batch, f=forward: f
        trl_loss, _ = ORPOTrainer.get_batch_loss_metrics(trl, None, {}, "train")
        assert abs(float(trl_loss) - float(ours[i])) < TOL
    wrong, _, _, _ = orpo_loss(ac, ar, lam * 2, -ac)
    assert (wrong - ours).abs().max() > 1e-3
    # by hand, one pair: P_w = 0.5, P_l = 0.2: log OR = log(1) − log(0.25) = log 4
    loss, _, _, lor = orpo_loss(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.2)]), 0.1,
                                torch.tensor([0.7]))
    assert abs(float(lor) - math.log(4)) < TOL
    assert abs(float(loss) - (0.7 + 0.1 * math.log1p(0.25))) < TOL


# ---- LD-DPO: TRL's DPOTrainer with ld_alpha ---------------------------------------------------------------------


def _token_batch(batch, seed):
    """Per-token log-probs (2B, W−1) of chosen rows then rejected rows, and TRL's completion_mask (2B, W)."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(1, 5, (2 * batch,), generator=g)
    lengths = torch.randint(2, 12, (2 * batch,), generator=g)
    width = int((prompt + lengths).max()) + 1
    completion_mask = torch.zeros(2 * batch, width, dtype=torch.long)
    for row in range(2 * batch):
        completion_mask[row, prompt[row]:prompt[row] + lengths[row]] = 1
    shifted = completion_mask[:, 1:]

    def per_token():
        return -torch.rand(2 * batch, width - 1, generator=g, dtype=torch.float64) * 3 * shifted

    return per_token(), per_token(), completion_mask


def _trl_dpo_ld(policy, reference, completion_mask, beta, ld_alpha):
    from trl.trainer.dpo_trainer import DPOTrainer

    def model(outputs):
        return lambda **kw: types.SimpleNamespace(log_probs=outputs, entropy=torch.zeros_like(outputs),
                                                  mean_logits=torch.zeros_like(outputs),
                                                  is_top1=torch.zeros_like(outputs, dtype=torch.bool))

    policy_model = torch.nn.Module().eval()  # a Module: TRL asks accelerate whether it is a PEFT model
    policy_model.is_gradient_checkpointing = False
    trainer = types.SimpleNamespace(
        model=policy_model, ref_model=model(reference),
        args=types.SimpleNamespace(gradient_checkpointing_kwargs=None), accelerator=CPU, aux_loss_enabled=False,
        ld_alpha=ld_alpha, precompute_ref_logps=False, f_divergence_type="reverse_kl", loss_types=["sigmoid"],
        loss_weights=[1.0], beta=beta, label_smoothing=0.0, use_weighting=False, _total_train_tokens=0, _tp_size=1,
        _metrics=_metrics())
    n = completion_mask.size(0)
    inputs = {"input_ids": torch.zeros_like(completion_mask), "attention_mask": torch.ones_like(completion_mask),
              "completion_mask": completion_mask}
    loss = DPOTrainer._compute_loss(trainer, model(policy), inputs, False)
    return loss, {k: v[0] for k, v in trainer._metrics["eval"].items()}, n


@pytest.mark.parametrize("ld_alpha", [0.0, 0.3, 1.0])
def test_ld_dpo_matches_trl_dpo_trainer(ld_alpha):
    batch, beta = 5, 0.1
    policy, reference, completion_mask = _token_batch(batch, seed=4)
    mask = completion_mask[:, 1:]
    pc, pr = ld_dpo_logps(policy[:batch], mask[:batch], policy[batch:], mask[batch:], ld_alpha)
    rc, rr = ld_dpo_logps(reference[:batch], mask[:batch], reference[batch:], mask[batch:], ld_alpha)
    ours, r_chosen, r_rejected = dpo_loss(pc, pr, rc, rr, beta)
    trl, metrics, _ = _trl_dpo_ld(policy, reference, completion_mask, beta, ld_alpha)
    assert abs(float(trl) - float(ours.mean())) < TOL
    assert abs(metrics["rewards/chosen"] - float(r_chosen.mean())) < TOL
    assert abs(metrics["rewards/rejected"] - float(r_rejected.mean())) < TOL
    assert abs(metrics["logps/chosen"] - float(pc.mean())) < TOL
    for i in range(batch):  # and pair by pair
        rows = torch.tensor([i, batch + i])
        trl, _, _ = _trl_dpo_ld(policy[rows], reference[rows], completion_mask[rows], beta, ld_alpha)
        assert abs(float(trl) - float(ours[i])) < TOL
    if ld_alpha < 1.0:  # a wrong α changes the value
        wc, wr = ld_dpo_logps(policy[:batch], mask[:batch], policy[batch:], mask[batch:], ld_alpha + 0.5)
        assert (wc - pc).abs().max() + (wr - pr).abs().max() > 1e-3


def test_ld_dpo_logps_by_hand():
    # chosen 4 tokens, rejected 2: the shared length is 2; chosen's tokens 3 and 4 are the verbose tail
    chosen = torch.tensor([[-1.0, -2.0, -3.0, -4.0, 0.0]])
    rejected = torch.tensor([[0.0, -5.0, -6.0, 0.0, 0.0]])  # any layout: the mask says where the tokens are
    c, r = ld_dpo_logps(chosen, torch.tensor([[1, 1, 1, 1, 0]]), rejected, torch.tensor([[0, 1, 1, 0, 0]]), 0.25)
    assert abs(float(c) - (-3.0 + 0.25 * -7.0)) < TOL and abs(float(r) + 11.0) < TOL
    c, _ = ld_dpo_logps(chosen, torch.tensor([[1, 1, 1, 1, 0]]), rejected, torch.tensor([[0, 1, 1, 0, 0]]), 1.0)
    assert abs(float(c) + 10.0) < TOL  # α = 1 is plain DPO


# ---- KTO: TRL's KTOTrainer -------------------------------------------------------------------------------------


def _trl_kto(policy, policy_kl, ref, ref_kl, completion_mask, labels, beta, wd, wu):
    """TRL's KTOTrainer._compute_loss with precomputed reference log-probs; the stand-in model returns ``policy``
    for the completions and ``policy_kl`` for the mismatched KL completions (told apart by the input tensor)."""
    from trl.trainer.kto_trainer import KTOTrainer

    input_ids = torch.zeros_like(completion_mask)
    kl_input_ids = torch.ones_like(completion_mask)

    def model(input_ids, **kw):
        out = policy_kl if int(input_ids[0, 0]) == 1 else policy
        return types.SimpleNamespace(log_probs=out, entropy=torch.zeros_like(out), mean_logits=torch.zeros_like(out))

    trainer = types.SimpleNamespace(
        model=types.SimpleNamespace(training=False), accelerator=CPU, aux_loss_enabled=False, calculate_KL=True,
        precompute_ref_logps=True, loss_type="kto", beta=beta, desirable_weight=wd, undesirable_weight=wu,
        _total_train_tokens=0, _tp_size=1, _metrics=_metrics())
    trainer._compute_kl_logps = types.MethodType(KTOTrainer._compute_kl_logps, trainer)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(completion_mask),
             "completion_mask": completion_mask, "label": labels, "ref_logps": ref, "ref_KL_logps": ref_kl,
             "KL_input_ids": kl_input_ids, "KL_attention_mask": torch.ones_like(completion_mask),
             "KL_completion_mask": completion_mask}
    loss = KTOTrainer._compute_loss(trainer, model, batch, False)
    return loss, {k: v[0] for k, v in trainer._metrics["eval"].items()}


@pytest.mark.parametrize("beta, wd, wu, kl_shift", [(0.1, 1.0, 1.0, 0.0), (0.5, 1.0, 1.33, 0.0),
                                                    (0.1, 0.8, 1.0, -5.0)])
def test_kto_matches_trl_kto_trainer(beta, wd, wu, kl_shift):
    """kl_shift −5 makes the policy's KL estimate negative, so z0 is clamped at 0 (checked)."""
    policy, reference, completion_mask = _token_batch(4, seed=5)  # 8 rows
    g = torch.Generator().manual_seed(6)
    policy_kl = -torch.rand(policy.shape, generator=g, dtype=torch.float64) * completion_mask[:, 1:]
    ref_kl = policy_kl.sum(-1) - torch.rand(8, generator=g, dtype=torch.float64) * 3 - kl_shift
    labels = torch.tensor([True, False, True, True, False, True, True, False])  # 5 desirable, 3 not
    z0 = kto_reference_point(policy_kl.sum(-1), ref_kl)
    assert (float(z0) == 0.0) == (kl_shift < 0)
    ref = reference.sum(-1)
    ours, rewards = kto_loss(policy.sum(-1), ref, labels, z0, beta, wd, wu)
    trl, metrics = _trl_kto(policy, policy_kl, ref, ref_kl, completion_mask, labels, beta, wd, wu)
    assert abs(float(trl) - float(ours.mean())) < TOL
    assert abs(metrics["kl"] - float(z0)) < TOL
    assert abs(metrics["rewards/chosen"] - float(rewards[labels].mean())) < TOL
    assert abs(metrics["rewards/rejected"] - float(rewards[~labels].mean())) < TOL
    wrong, _ = kto_loss(policy.sum(-1), ref, labels, z0, beta, wd, wu + 0.5)
    assert abs(float(wrong.mean()) - float(trl)) > 1e-4  # λ_U matters
    wrong, _ = kto_loss(policy.sum(-1), ref, labels, z0 + 1.0, beta, wd, wu)
    assert abs(float(wrong.mean()) - float(trl)) > 1e-4 and (wrong - ours).abs().min() > 1e-3  # z0 matters


def test_kto_by_hand_and_z0_has_no_gradient():
    policy = torch.tensor([-3.0, -5.0], requires_grad=True)
    ref = torch.tensor([-4.0, -4.0])
    kl_policy = torch.tensor([-2.0, -6.0], requires_grad=True)
    z0 = kto_reference_point(kl_policy, torch.tensor([-3.0, -6.5]))  # mean(1, 0.5) = 0.75
    assert abs(float(z0) - 0.75) < TOL and not z0.requires_grad
    losses, rewards = kto_loss(policy, ref, torch.tensor([True, False]), z0, beta=0.5, desirable_weight=2.0)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert abs(float(losses[0]) - 2.0 * (1 - sig(0.5 * (1 - 0.75)))) < TOL  # desirable: r = 1
    assert abs(float(losses[1]) - (1 - sig(0.5 * (0.75 + 1)))) < TOL  # undesirable: r = −1
    assert torch.allclose(rewards, torch.tensor([0.5, -0.5]))
    losses.sum().backward()
    assert kl_policy.grad is None and policy.grad[0] < 0 < policy.grad[1]
