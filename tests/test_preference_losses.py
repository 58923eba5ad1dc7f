"""SimPO, CPO, ORPO, LD-DPO and KTO equal TRL 1.16's own implementations on fixed random batches (to 1e-6).

TRL's loss code is called directly on hand-made tensors: ``CPOTrainer.cpo_loss`` / ``get_batch_loss_metrics`` /
``get_batch_logps`` (SimPO and CPO), ``ORPOTrainer.odds_ratio_loss`` / ``get_batch_loss_metrics`` (ORPO),
``DPOTrainer._compute_loss`` with ``ld_alpha`` (LD-DPO) and ``KTOTrainer._compute_loss`` (KTO), each bound to a
stand-in ``self`` (a SimpleNamespace with the attributes the method reads) and, where TRL runs a model, a stand-in
model that returns given per-token log-probs. Each test also checks that a wrong hyper-parameter changes the value,
so it can fail.
"""

import collections
import json
import math
import os
import subprocess
import sys
import types

import pytest
import torch
from safetensors.torch import load_file

from rlhf_lab.config import make_config
from rlhf_lab.errors import UserError
from rlhf_lab.io import read_jsonl
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


# ---- the recipe: rlhf-lab dpo --loss simpo|cpo|orpo|ld_dpo|kto on tiny-random ----------------------------------

def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def pair_data(tmp_path_factory):
    rows = [{"prompt": f"Count to {n}.", "chosen": " ".join(str(i) for i in range(1, n + 1)),
             "rejected": " ".join(["no"] * (n % 5 + 1))} for n in range(2, 26)]
    return _write(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", rows)


@pytest.fixture(scope="module")
def unpaired_data(tmp_path_factory):
    """TRL's unpaired format, 2 desirable : 1 undesirable."""
    rows = [{"prompt": f"Count to {n}.", "completion": " ".join(str(i) for i in range(1, n + 1)) if n % 3
             else "no no no", "label": bool(n % 3)} for n in range(2, 26)]
    return _write(tmp_path_factory.mktemp("unpaired") / "kto.jsonl", rows)


def _args(data, out, **over):
    args = dict(model_name="tiny-random", dataset=data, split="all", eval_dataset=data, eval_limit=8,
                output_dir=str(out), per_device_train_batch_size=4, max_length=64, progress=False, trainable="full",
                learning_rate=1e-3, seed=1)
    args.update(over)
    return args


@pytest.mark.parametrize("loss, extra", [("simpo", {"beta": 2.0, "simpo_gamma": 0.5}), ("cpo", {}), ("orpo", {}),
                                         ("ld_dpo", {"ld_alpha": 0.3})])
def test_paired_losses_train_and_reference_free_ones_skip_the_reference(pair_data, tmp_path, loss, extra, capsys):
    from rlhf_lab.recipes import dpo

    out = tmp_path / loss
    results = dpo.run(make_config(dpo.DPOConfig, _args(pair_data, out, max_steps=8, loss=loss, eval_steps=1,
                                                       **extra)))
    rows = read_jsonl(out / "metrics.jsonl")
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval/loss" in r]  # the same 8 held-out pairs after every step
    assert len(train) == 8 and len(evals) == 8
    assert evals[-1]["eval/loss"] < evals[0]["eval/loss"] - 0.01
    assert evals[-1]["eval/rewards/margins"] > evals[0]["eval/rewards/margins"]
    # CPO's reward is the summed log-prob: the longer (counting) chosen replies stay less likely than "no no"
    assert (results["eval/rewards/accuracies"] < 0.5) if loss == "cpo" else results["eval/rewards/accuracies"] == 1.0
    reference_free = loss in dpo.REFERENCE_FREE
    assert (out / "ref_train.safetensors").exists() != reference_free
    assert (out / "ref_eval.safetensors").exists() != reference_free
    assert ("reference-free: no reference pass" in capsys.readouterr().err) == reference_free
    if loss == "ld_dpo":
        assert abs(train[0]["loss"] - math.log(2)) < 1e-4  # policy = reference at the first step
    if loss in ("cpo", "orpo"):
        assert train[-1]["nll_loss"] < train[0]["nll_loss"]


def test_ld_dpo_reference_is_tail_weighted(pair_data, tmp_path):
    """The cached reference log-probs are LD-DPO's weighted sums of the reference model (checked from scratch),
    not the plain sums; a different α is a different cache."""
    from rlhf_lab.models import load_causal_lm, load_tokenizer
    from rlhf_lab.recipes import dpo

    out = tmp_path / "ld"
    config = make_config(dpo.DPOConfig, _args(pair_data, out, max_steps=1, loss="ld_dpo", ld_alpha=0.2,
                                              eval_limit=0))
    dpo.run(config)
    cached = load_file(str(out / "ref_train.safetensors"))["logps"]
    from rlhf_lab.data import load_pairs

    pairs, _ = dpo.pair_token_ids(load_pairs(pair_data)[0], load_tokenizer("tiny-random"), config)
    model = load_causal_lm("tiny-random").eval()
    with torch.no_grad():
        token_logps, mask, plain = dpo.policy_logps(model, pairs, 0, share_prompt=False)
    n = len(pairs)
    chosen, rejected = ld_dpo_logps(token_logps[:n], mask[:n], token_logps[n:], mask[n:], 0.2)
    assert torch.allclose(cached[:, 0], chosen.float(), atol=1e-4) and torch.allclose(cached[:, 1], rejected.float(),
                                                                                        atol=1e-4)
    assert (cached[:, 0] - plain[:n]).abs().max() > 1e-2  # the weighting did something
    assert dpo._fingerprint(pairs, 0.2) != dpo._fingerprint(pairs, 0.3) != dpo._fingerprint(pairs)


@pytest.mark.parametrize("source", ["pairs", "unpaired"])
def test_kto_trains_on_unpaired_rows_and_on_split_pairs(pair_data, unpaired_data, tmp_path, source):
    from rlhf_lab.recipes import dpo

    data = pair_data if source == "pairs" else unpaired_data
    out = tmp_path / source
    over = {} if source == "pairs" else {"eval_dataset": pair_data}
    results = dpo.run(make_config(dpo.DPOConfig, _args(data, out, max_steps=8, loss="kto", **over)))
    train = [r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    # step 1: policy = reference, so r = 0 and z0 = 0: every row's loss is 1 − σ(0) = 0.5
    assert abs(train[0]["loss"] - 0.5) < 1e-4 and abs(train[0]["kl"]) < 1e-6
    assert train[-1]["loss"] < train[0]["loss"] and train[-1]["rewards/signed"] > 0
    assert results["eval/rewards/accuracies"] >= 0.75
    ref = load_file(str(out / "ref_train.safetensors"))["logps"]
    assert ref.shape == (48 if source == "pairs" else 24, 2)  # a pair gives two rows; a row and its KL reply


def test_unpaired_reader_splits_pairs_as_trl_and_checks_labels(pair_data, tmp_path):
    from rlhf_lab.data import load_pairs
    from rlhf_lab.data.unpaired import load_unpaired

    rows, _, paired = load_unpaired(pair_data, limit=3)
    pairs, _ = load_pairs(pair_data, limit=3)
    assert paired and [r.meta["label"] for r in rows] == [True] * 3 + [False] * 3
    assert [r.response for r in rows] == [p.chosen for p in pairs] + [p.rejected for p in pairs]
    assert [r.prompt.messages for r in rows] == [p.prompt.messages for p in pairs] * 2
    good = {"prompt": "Hi.", "completion": "Hello!", "label": True}
    bad = _write(tmp_path / "bad.jsonl", [good, {**good, "label": "yes"}, {**good, "label": False}])
    with pytest.raises(UserError, match=r"bad\.jsonl:2: wrong_type: 'label' must be true or false"):
        load_unpaired(bad)
    numeric = _write(tmp_path / "numeric.jsonl", [good, {**good, "label": 0}])
    with pytest.raises(UserError, match=r"numeric\.jsonl:2: .*got 0"):
        load_unpaired(numeric)
    missing = _write(tmp_path / "missing.jsonl", [good, {"prompt": "Hi.", "completion": "Yo"}])
    with pytest.raises(UserError, match=r"missing\.jsonl:2: missing_keys"):
        load_unpaired(missing)
    only_good = _write(tmp_path / "good.jsonl", [good, good])
    with pytest.raises(UserError, match="all 2 rows are desirable"):
        load_unpaired(only_good)
    rows, _, paired = load_unpaired(_write(tmp_path / "ok.jsonl", [good, {**good, "label": False}]))
    assert not paired and [r.meta["label"] for r in rows] == [True, False] and rows[0].response == "Hello!"


def test_bad_input_stops_before_any_model_loads(pair_data, unpaired_data, tmp_path, monkeypatch):
    from rlhf_lab.recipes import dpo

    def no_model(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(dpo, "load_causal_lm", no_model)
    good = {"prompt": "Hi.", "completion": "Hello!", "label": True}
    cases = [
        (_write(tmp_path / "label.jsonl", [good, {**good, "label": "false"}]), {}, r"label\.jsonl:2: .*'label'"),
        (_write(tmp_path / "only.jsonl", [good] * 4), {}, "all 4 rows are desirable"),
    ]
    for data, over, message in cases:
        with pytest.raises(UserError, match=message):
            dpo.run(make_config(dpo.DPOConfig, _args(data, tmp_path / "x", max_steps=1, loss="kto", **over)))
    flags = [({"loss": "simpo", "simpo_gamma": -0.1}, "--simpo_gamma"),
             ({"loss": "simpo", "beta": 0.1, "simpo_gamma": 2.0}, "--simpo_gamma"),
             ({"loss": "simpo", "beta": 0.0}, "--beta"),
             ({"loss": "kto", "label_with": "some_rm"}, "--label_with"),
             ({"loss": "kto", "per_device_train_batch_size": 1}, "--per_device_train_batch_size"),
             ({"loss": "ld_dpo", "ld_alpha": 1.5}, "--ld_alpha"),
             ({"loss": "cpo", "cpo_alpha": -1.0}, "--cpo_alpha"),
             ({"loss": "kto", "undesirable_weight": 0.0}, "--undesirable_weight")]
    for over, flag in flags:
        with pytest.raises(UserError, match=flag):
            make_config(dpo.DPOConfig, {**_args(pair_data, tmp_path / "y", max_steps=1), **over})


def _cli(args: dict, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "rlhf_lab.cli", "dpo"]
    for k, v in args.items():
        argv += [f"--{k}", str(v)]
    return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env_extra or {})}, timeout=600)


@pytest.mark.slow
def test_cli_bad_input_is_one_line_exit_2(unpaired_data, tmp_path):
    good = {"prompt": "Hi.", "completion": "Hello!", "label": True}
    bad = _write(tmp_path / "label.jsonl", [good, {**good, "label": 1}])
    for args in ({**_args(bad, tmp_path / "a", max_steps=1), "loss": "kto"},
                 {**_args(unpaired_data, tmp_path / "b", max_steps=1), "loss": "kto", "label_with": "rm"},
                 {**_args(unpaired_data, tmp_path / "c", max_steps=1), "loss": "simpo", "simpo_gamma": -1}):
        out = _cli(args)
        assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["kto", "simpo"])
def test_killed_run_resumes_exactly(pair_data, tmp_path, loss):
    """SIGKILL right after the step-4 checkpoint, --resume: the same weights and per-step metrics as a run that
    was never interrupted (KTO: its reference point per micro-batch too, with accumulation)."""
    common = _args(pair_data, tmp_path, max_steps=6, save_steps=2, gradient_accumulation_steps=2,
                   per_device_train_batch_size=2, loss=loss, eval_steps=3)
    straight = _cli({**common, "output_dir": tmp_path / "straight"})
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = _cli({**common, "output_dir": tmp_path / "killed"}, {"RLHF_LAB_FAULT": "after_save:4"})
    assert killed.returncode == -9
    resumed = _cli({**common, "output_dir": tmp_path / "killed", "resume": "true"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model" / "model.safetensors"))
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=0), name

    def by_step(run):
        return {(r["step"], k): v for r in read_jsonl(tmp_path / run / "metrics.jsonl") for k, v in r.items()
                if k != "tokens_per_second"}

    straight_rows, resumed_rows = by_step("straight"), by_step("killed")
    assert {s for s, k in resumed_rows if k == "loss"} == set(range(1, 7))
    for key, value in straight_rows.items():
        assert abs(resumed_rows[key] - value) < 1e-6, key


@pytest.mark.slow
def test_two_process_kto_matches_single_process(pair_data, tmp_path):
    """accelerate launch --num_processes 2 (gloo on CPU), same global batch: KTO's reference point is gathered over
    both processes' micro-batches, so losses, z0 and weights match one process."""
    from pathlib import Path

    accelerate = str(Path(sys.executable).with_name("accelerate"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def argv(out, per_device):
        args = _args(pair_data, out, max_steps=3, per_device_train_batch_size=per_device, eval_limit=6, loss="kto")
        return ["dpo", *[x for k, v in args.items() for x in (f"--{k}", str(v))]]

    two = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "29533",
                          "-m", "rlhf_lab.cli", *argv(tmp_path / "ddp", 2)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "rlhf_lab.cli", *argv(tmp_path / "one", 4)], capture_output=True,
                         text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    rows = {run: read_jsonl(tmp_path / run / "metrics.jsonl") for run in ("ddp", "one")}
    assert len(rows["ddp"]) == len(rows["one"]) == 4
    for a, b in zip(rows["ddp"], rows["one"], strict=True):
        for key in a.keys() - {"tokens_per_second"}:
            assert abs(a[key] - b[key]) < 1e-5 * max(1.0, abs(b[key])), key
    assert rows["one"][2]["kl"] != 0.0  # z0 moved off 0 by step 3, so the gathered mean is really compared
    a = load_file(str(tmp_path / "ddp" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_reference_free_loss_with_on_the_fly_pairs(pair_data, tmp_path, capsys):
    """--label_with with SimPO: pairs sampled and labelled per round, and still no reference pass."""
    from rlhf_lab.recipes import dpo, reward_model

    reward_model.run(make_config(reward_model.RewardModelConfig, dict(
        model_name="tiny-random", dataset=pair_data, split="all", output_dir=str(tmp_path / "rm"), trainable="head",
        max_steps=2, per_device_train_batch_size=8, eval_limit=0, progress=False)))
    out = tmp_path / "otf"
    dpo.run(make_config(dpo.DPOConfig, _args(pair_data, out, label_with=str(tmp_path / "rm"), rounds=2, max_steps=2,
                                             prompts_per_round=8, max_new_tokens=6, eval_limit=4, loss="simpo",
                                             beta=2.0)))
    assert (out / "rounds" / "round-1.jsonl").is_file()
    assert not list(out.glob("rounds/ref-*")) and not (out / "ref_eval.safetensors").exists()
    assert len([r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]) == 4
    assert "reference-free" in capsys.readouterr().err


def test_kto_drops_a_row_only_for_its_own_completion_and_cuts_the_mismatched_one():
    """The mismatched reply only feeds z0: it is cut to the room beside the row's prompt, so with --truncation drop a
    row is lost only when its own completion does not fit (the previous row's long completion used to drop it)."""
    from rlhf_lab.data.records import Prompt, Sample
    from rlhf_lab.data.templates import render_prompt, render_response
    from rlhf_lab.models import load_tokenizer
    from rlhf_lab.recipes import dpo

    tokenizer = load_tokenizer("tiny-random")
    long, short = "word " * 60, "ok"
    rows = [Sample(Prompt.from_text("q0"), short, {"label": True}),
            Sample(Prompt.from_text("q1"), long, {"label": False}),
            Sample(Prompt.from_text("q2"), short, {"label": False})]
    config = make_config(dpo.DPOConfig, dict(model_name="tiny-random", loss="kto", max_length=48, truncation="drop"))
    kept, labels, dropped = dpo.tokenize_unpaired(rows, tokenizer, config)
    assert dropped == 1 and [p.uid for p in kept] == [0, 2] and labels.tolist() == [True, False]
    ids = [tokenizer(render_response(r.response, config.template, tokenizer), add_special_tokens=False)["input_ids"]
           for r in rows]
    prompt2 = tokenizer(render_prompt(rows[2].prompt.messages, config.template, tokenizer),
                        add_special_tokens=False)["input_ids"]
    assert len(prompt2) + len(ids[1]) > 48  # row 2's mismatched reply (row 1's completion) does not fit whole
    assert kept[1].chosen_ids == ids[2] and kept[1].rejected_ids == ids[1][:48 - len(prompt2)]
    assert kept[0].rejected_ids == ids[2]  # cyclic: row 0's mismatched reply is the last row's completion
