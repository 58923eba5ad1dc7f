"""DPO / IPO / RRHF: the losses equal TRL's DPOTrainer on the same log-probs (RRHF and R-DPO against hand
computations); the recipe trains, its reference log-probs are computed once, and a killed run resumes exactly."""

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
from rlhf_lab.io import read_jsonl
from rlhf_lab.losses import dpo_loss, rrhf_loss

# ---- parity with TRL's DPOTrainer ------------------------------------------------------------------------------


def _trl_loss(pc, pr, rc, rr, lc, lr, beta, loss_type, label_smoothing=0.0):
    """TRL's own ``DPOTrainer._compute_loss`` run on given sequence log-probs.

    A stand-in model returns per-token log-probs that sum to the given sequence log-probs over a completion of
    the given length (TRL reads the lengths from ``completion_mask``); the reference log-probs go in as TRL's
    precomputed ``ref_chosen_logps`` / ``ref_rejected_logps``. Returns TRL's batch loss and its logged metrics.
    """
    from trl.trainer.dpo_trainer import DPOTrainer

    batch = pc.numel()
    width = int(max(lc.max(), lr.max())) + 2
    lengths = torch.cat([lc, lr]).long()
    completion_mask = torch.zeros(2 * batch, width, dtype=torch.long)
    per_token = torch.zeros(2 * batch, width - 1, dtype=pc.dtype)
    generator = torch.Generator().manual_seed(0)
    for row, (n, total) in enumerate(zip(lengths.tolist(), torch.cat([pc, pr]).tolist(), strict=True)):
        completion_mask[row, 1:1 + n] = 1  # one prompt token, then the completion
        weights = torch.rand(n, generator=generator, dtype=torch.float64)
        per_token[row, :n] = (total * weights / weights.sum()).to(pc.dtype)
    outputs = types.SimpleNamespace(log_probs=per_token, entropy=torch.zeros_like(per_token),
                                    mean_logits=torch.zeros_like(per_token),
                                    is_top1=torch.zeros_like(per_token, dtype=torch.bool))
    accelerator = types.SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x,
                                        gather=lambda x: x)
    trainer = types.SimpleNamespace(
        model=types.SimpleNamespace(training=False), accelerator=accelerator, aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0],
        beta=beta, label_smoothing=label_smoothing, use_weighting=False, _total_train_tokens=0, _tp_size=1,
        _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)})
    inputs = {"input_ids": torch.zeros(2 * batch, width, dtype=torch.long),
              "attention_mask": torch.ones(2 * batch, width, dtype=torch.long),
              "completion_mask": completion_mask, "ref_chosen_logps": rc, "ref_rejected_logps": rr}
    loss = DPOTrainer._compute_loss(trainer, lambda **kw: outputs, inputs, False)
    return loss, {k: v[0] for k, v in trainer._metrics["eval"].items()}


def _logps(batch=7, seed=0):
    # float64, so that the stand-in's split of a sequence log-prob into tokens sums back exactly
    g = torch.Generator().manual_seed(seed)
    pc, pr, rc, rr = (-(torch.rand(batch, generator=g, dtype=torch.float64) * 60 + 5) for _ in range(4))
    lc, lr = torch.randint(3, 40, (batch,), generator=g), torch.randint(3, 40, (batch,), generator=g)
    return pc, pr, rc, rr, lc, lr


# (our loss_type, our kwargs, TRL loss_type, TRL label_smoothing)
PARITY = [
    ("sigmoid", {}, "sigmoid", 0.0),
    ("ipo", {}, "ipo", 0.0),
    ("hinge", {}, "hinge", 0.0),
    ("robust", {"label_smoothing": 0.2}, "robust", 0.2),
    ("sigmoid", {"length_normalize": True}, "sigmoid_norm", 0.0),
    # conservative DPO: TRL 1.x keeps the cDPO formula only inside "aot", which sorts the batch's margins before
    # applying it; on a batch of one pair sorting is the identity, so per-pair it is exactly cDPO.
    ("sigmoid", {"label_smoothing": 0.1}, "aot", 0.1),
]


@pytest.mark.parametrize("ours, kwargs, trl_type, smoothing", PARITY, ids=[p[2] for p in PARITY])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_losses_match_trl_per_pair(ours, kwargs, trl_type, smoothing, beta):
    pc, pr, rc, rr, lc, lr = _logps()
    losses, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, rc, rr, beta, ours, chosen_lengths=lc,
                                                        rejected_lengths=lr, **kwargs)
    assert losses.shape == (7,)
    for i in range(7):  # TRL returns the batch mean: compare pair by pair
        one = slice(i, i + 1)
        trl, metrics = _trl_loss(pc[one], pr[one], rc[one], rr[one], lc[one], lr[one], beta, trl_type, smoothing)
        assert abs(float(trl) - float(losses[i])) < 1e-6, (i, float(trl), float(losses[i]))
        assert abs(metrics["rewards/chosen"] - float(chosen_rewards[i])) < 1e-6
        assert abs(metrics["rewards/rejected"] - float(rejected_rewards[i])) < 1e-6
    if trl_type != "aot":  # the whole batch at once, and TRL's logged metrics
        trl, metrics = _trl_loss(pc, pr, rc, rr, lc, lr, beta, trl_type, smoothing)
        assert abs(float(trl) - float(losses.mean())) < 1e-6
        assert abs(metrics["rewards/margins"] - float((chosen_rewards - rejected_rewards).mean())) < 1e-6
        assert abs(metrics["rewards/accuracies"] - float((chosen_rewards > rejected_rewards).float().mean())) < 1e-6
        assert abs(metrics["logps/chosen"] - float(pc.mean())) < 1e-6


def test_dpo_loss_by_hand_and_rdpo_length_term():
    # one pair: ρ_w = −10 − (−12) = 2, ρ_l = −20 − (−19) = −1, |y_w| = 30, |y_l| = 10
    t = lambda x: torch.tensor([float(x)])  # noqa: E731
    args = (t(-10), t(-20), t(-12), t(-19))
    lengths = dict(chosen_lengths=t(30), rejected_lengths=t(10))
    beta, alpha = 0.5, 0.02
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    loss, rc, rr = dpo_loss(*args, beta)
    assert abs(float(loss) + math.log(sigmoid(beta * 3))) < 1e-6
    assert abs(float(rc) - 1.0) < 1e-6 and abs(float(rr) + 0.5) < 1e-6
    # R-DPO (Park et al. 2024): −log σ(β(ρ_w − ρ_l) − α(|y_w| − |y_l|)) = −log σ(1.5 − 0.4)
    loss, _, _ = dpo_loss(*args, beta, rdpo_alpha=alpha, **lengths)
    assert abs(float(loss) + math.log(sigmoid(1.5 - alpha * 20))) < 1e-6
    # IPO on average log-ratios: (2/30 + 1/10 − 1/(2β))²
    loss, _, _ = dpo_loss(*args, beta, "ipo", **lengths)
    assert abs(float(loss) - (2 / 30 + 1 / 10 - 1.0) ** 2) < 1e-6
    # IPO on sequence sums (the paper's form) when asked
    loss, _, _ = dpo_loss(*args, beta, "ipo", length_normalize=False, **lengths)
    assert abs(float(loss) - (3 - 1.0) ** 2) < 1e-6
    with pytest.raises(ValueError):
        dpo_loss(*args, beta, "ipo")  # IPO needs the lengths
    with pytest.raises(ValueError):
        dpo_loss(*args, beta, "nope")


def test_dpo_loss_gradient_pushes_chosen_up():
    pc = torch.tensor([-10.0], requires_grad=True)
    pr = torch.tensor([-10.0], requires_grad=True)
    loss, _, _ = dpo_loss(pc, pr, torch.tensor([-10.0]), torch.tensor([-10.0]), 0.1)
    loss.sum().backward()
    assert abs(loss.item() - math.log(2)) < 1e-6
    assert pc.grad.item() < 0 < pr.grad.item()  # descent raises log π(y_w), lowers log π(y_l)
    assert abs(pc.grad.item() + 0.05) < 1e-6  # −β σ(−0) = −0.05


def test_rrhf_loss_by_hand():
    # one prompt, K = 3 responses with rewards 0.1, 0.9, 0.5 (best = response 1)
    token_logps = torch.tensor([[[-1.0, -2.0, -3.0, 0.0],    # p_0 = −6/3 = −2
                                 [-4.0, -4.0, 0.0, 0.0],     # p_1 = −8/2 = −4
                                 [-1.0, -1.0, -1.0, -1.0]]])  # p_2 = −4/4 = −1
    mask = torch.tensor([[[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]])
    rewards = torch.tensor([[0.1, 0.9, 0.5]])
    # pairs r_i < r_j: (0,1): max(0, −2 − (−4)) = 2; (0,2): max(0, −2 − (−1)) = 0; (2,1): max(0, −1 − (−4)) = 3
    # L_ft = −(−8)/2 = 4;  L = 0.5 · 5 + 4
    loss, rank, sft = rrhf_loss(token_logps, mask, rewards, rrhf_weight=0.5)
    assert torch.allclose(rank, torch.tensor([5.0])) and torch.allclose(sft, torch.tensor([4.0]))
    assert torch.allclose(loss, torch.tensor([6.5]))
    # length_penalty 0: raw sums −6, −8, −4: (0,1): 2; (0,2): 0; (2,1): 4
    _, rank, _ = rrhf_loss(token_logps, mask, rewards, length_penalty=0.0)
    assert torch.allclose(rank, torch.tensor([6.0]))
    # a pair (k = 2) ranked right gives only the SFT term; ties give no ranking term
    pair = torch.tensor([[[-1.0, -1.0], [-3.0, -3.0]]])
    ones = torch.ones_like(pair)
    _, rank, sft = rrhf_loss(pair, ones, torch.tensor([[1.0, 0.0]]))
    assert float(rank) == 0.0 and float(sft) == 1.0
    _, rank, _ = rrhf_loss(pair, ones, torch.tensor([[0.0, 1.0]]))
    assert float(rank) == 2.0
    _, rank, _ = rrhf_loss(pair, ones, torch.tensor([[1.0, 1.0]]))
    assert float(rank) == 0.0


# ---- the recipe on tiny-random ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("dpo") / "pairs.jsonl"
    rows = [{"prompt": f"Count to {n}.", "chosen": " ".join(str(i) for i in range(1, n + 1)),
             "rejected": " ".join(["no"] * (n % 5 + 1))} for n in range(2, 26)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _args(data, out, **over):
    args = dict(model_name="tiny-random", dataset=data, split="all", eval_dataset=data, eval_limit=8,
                output_dir=str(out), per_device_train_batch_size=4, max_length=64, progress=False, trainable="full",
                learning_rate=1e-3, seed=1)
    args.update(over)
    return args


def test_dpo_learns_the_preference_and_computes_the_reference_once(pair_data, tmp_path, monkeypatch):
    from rlhf_lab.recipes import dpo

    calls = []
    real = dpo._shared_prompt_sums
    monkeypatch.setattr(dpo, "_shared_prompt_sums", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    results = dpo.run(make_config(dpo.DPOConfig, _args(pair_data, tmp_path / "run", max_steps=8)))
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    train = [r for r in rows if "loss" in r]
    assert len(train) == 8
    assert abs(train[0]["loss"] - math.log(2)) < 1e-4  # policy = reference at the first step
    assert train[-1]["loss"] < 0.5 and train[-1]["rewards/accuracies"] == 1.0
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert name in train[-1]
    assert results["eval/rewards/accuracies"] == 1.0 and results["eval/rewards/margins"] > 0.5
    # reference of the eval pairs, of the 24 training pairs, then the final eval: three passes, none per step
    assert calls == [8, 24, 8]
    ref = load_file(str(tmp_path / "run" / "ref_train.safetensors"))["logps"]
    assert ref.shape == (24, 2) and (ref < 0).all()
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


def _hh_pairs(tokenizer, n):
    from rlhf_lab.data import load_pairs
    from rlhf_lab.recipes import dpo

    pairs, _ = load_pairs("hh-rlhf:helpful-base", on_bad_row="skip", limit=n)
    config = make_config(dpo.DPOConfig, {"max_length": 320, "truncation": "drop"})
    tokenized, _ = dpo.pair_token_ids(pairs, tokenizer, config)
    return tokenized


@pytest.mark.slow
def test_shared_prompt_pass_equals_a_row_per_reply_on_smollm2():
    """One row per pair (prompt read once, block mask, restarted positions) gives the log-probs of separate
    prompt + reply rows: real SmolLM2 weights, real HH pairs of different prompt and reply lengths."""
    from rlhf_lab.models import load_causal_lm, load_tokenizer
    from rlhf_lab.recipes import dpo

    tokenizer = load_tokenizer("default")
    model = load_causal_lm("default").eval()
    pairs = _hh_pairs(tokenizer, 6)[:3]
    assert len({len(p.prompt_ids) for p in pairs}) == 3  # the batch really mixes lengths
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        shared, shared_mask, shared_sums = dpo.policy_logps(model, pairs, pad, share_prompt=True)
        rows, rows_mask, rows_sums = dpo.policy_logps(model, pairs, pad, share_prompt=False)
    assert torch.allclose(shared_sums, rows_sums, atol=2e-3, rtol=1e-5)
    # token by token: the same values in the same order, only the padding layout differs
    for r in range(2 * len(pairs)):
        assert torch.allclose(shared[r][shared_mask[r] > 0], rows[r][rows_mask[r] > 0], atol=2e-4)


def test_shared_prompt_gradients_and_run_equal_the_plain_path(pair_data, tmp_path):
    from rlhf_lab.models import load_causal_lm
    from rlhf_lab.recipes import dpo

    pairs = [dpo.TokenizedPair([5, 6, 7, 8, 9], [20, 21, 22], [40, 41]),
             dpo.TokenizedPair([11, 12, 13], [30], [50, 51, 52, 53])]
    grads = []
    for share in (True, False):
        model = load_causal_lm("tiny-random")
        _, _, sums = dpo.policy_logps(model, pairs, 0, share_prompt=share)
        (sums * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5)
    losses = []
    for share in (True, False):
        out = tmp_path / f"share-{share}"
        dpo.run(make_config(dpo.DPOConfig, _args(pair_data, out, max_steps=4, share_prompt=share)))
        losses.append([r["loss"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r])
    assert len(losses[0]) == 4 and max(abs(a - b) for a, b in zip(*losses, strict=True)) < 1e-5


@pytest.mark.parametrize("loss", ["ipo", "rrhf"])
def test_ipo_and_rrhf_train(pair_data, tmp_path, loss):
    from rlhf_lab.recipes import dpo

    extra = {"beta": 0.5} if loss == "ipo" else {}
    results = dpo.run(make_config(dpo.DPOConfig, _args(pair_data, tmp_path / loss, max_steps=8, loss=loss, **extra)))
    train = [r for r in read_jsonl(tmp_path / loss / "metrics.jsonl") if "loss" in r]
    assert train[-1]["loss"] < train[0]["loss"]
    if loss == "rrhf":
        assert train[-1]["scores/accuracies"] == 1.0 and train[-1]["rrhf/rank_loss"] < train[0]["rrhf/rank_loss"]
        assert not (tmp_path / loss / "ref_train.safetensors").exists()  # RRHF needs no reference
    assert results["eval/rewards/accuracies"] == 1.0


def _cli(args: dict, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "rlhf_lab.cli", "dpo"]
    for k, v in args.items():
        argv += [f"--{k}", str(v)]
    return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env_extra or {})}, timeout=600)


@pytest.mark.parametrize("trainable", ["lora", "full"])
@pytest.mark.slow
def test_killed_dpo_run_resumes_to_identical_weights(pair_data, tmp_path, trainable):
    common = _args(pair_data, tmp_path, max_steps=6, save_steps=2, gradient_accumulation_steps=2,
                   per_device_train_batch_size=2, trainable=trainable, rdpo_alpha=0.01, eval_steps=3)
    straight = _cli({**common, "output_dir": tmp_path / "straight"})
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = _cli({**common, "output_dir": tmp_path / "killed"}, {"RLHF_LAB_FAULT": "after_save:4"})
    assert killed.returncode == -9
    resumed = _cli({**common, "output_dir": tmp_path / "killed", "resume": "true"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr and "reference log-probs of 24 pairs loaded" in resumed.stderr

    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
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
def test_bad_flags_are_one_line_errors(pair_data, tmp_path):
    from rlhf_lab.errors import UserError
    from rlhf_lab.recipes import dpo

    for flag, value in [("beta", -1.0), ("label_smoothing", 0.5), ("loss", "kto-pair"), ("rdpo_alpha", -0.1),
                        ("rounds", 3), ("max_length", 4)]:
        with pytest.raises(UserError, match=f"--{flag}"):
            make_config(dpo.DPOConfig, {**_args(pair_data, tmp_path / "x", max_steps=1), flag: value})
    with pytest.raises(UserError, match="--rdpo_alpha"):  # the R-DPO term is a DPO-loss option
        make_config(dpo.DPOConfig, {**_args(pair_data, tmp_path / "x", max_steps=1), "loss": "ipo", "rdpo_alpha": 0.1})
    out = _cli({**_args(pair_data, tmp_path / "cli", max_steps=1), "beta": "-1"})
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "--beta" in out.stderr


@pytest.mark.slow
def test_two_process_dpo_matches_single_process(pair_data, tmp_path):
    """accelerate launch --num_processes 2 (gloo on CPU), same global batch: same losses, metrics and weights."""
    from pathlib import Path

    accelerate = str(Path(sys.executable).with_name("accelerate"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def argv(out, per_device):
        args = _args(pair_data, out, max_steps=3, per_device_train_batch_size=per_device, eval_limit=6)
        return ["dpo", *[x for k, v in args.items() for x in (f"--{k}", str(v))]]

    two = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "29531",
                          "-m", "rlhf_lab.cli", *argv(tmp_path / "ddp", 2)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "rlhf_lab.cli", *argv(tmp_path / "one", 4)], capture_output=True,
                         text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]

    def rows(run):
        return [r for r in read_jsonl(tmp_path / run / "metrics.jsonl")]

    assert len(rows("ddp")) == len(rows("one")) == 4  # 3 steps + the final eval, logged once (main process)
    for a, b in zip(rows("ddp"), rows("one"), strict=True):
        for key in a.keys() - {"tokens_per_second"}:
            assert abs(a[key] - b[key]) < 1e-5 * max(1.0, abs(b[key])), key  # float32 sums of ~250
    ref_ddp = load_file(str(tmp_path / "ddp" / "ref_train.safetensors"))["logps"]
    ref_one = load_file(str(tmp_path / "one" / "ref_train.safetensors"))["logps"]
    assert torch.allclose(ref_ddp, ref_one, atol=1e-4)  # reference pass split over processes and gathered
    a = load_file(str(tmp_path / "ddp" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    assert rows("one")[-2]["loss"] < rows("one")[0]["loss"]  # it did train


def test_on_the_fly_pairs_labelled_by_a_reward_model(pair_data, tmp_path):
    """--label_with: each round samples 2 replies per prompt from the policy, the RM's better one is chosen."""
    from rlhf_lab.recipes import dpo, reward_model
    from rlhf_lab.rewards.scorer import RewardScorer

    reward_model.run(make_config(reward_model.RewardModelConfig, dict(
        model_name="tiny-random", dataset=pair_data, split="all", output_dir=str(tmp_path / "rm"), trainable="head",
        max_steps=2, per_device_train_batch_size=8, eval_limit=0, progress=False)))
    dpo.run(make_config(dpo.DPOConfig, _args(
        pair_data, tmp_path / "otf", label_with=str(tmp_path / "rm"), rounds=2, max_steps=2, prompts_per_round=8,
        max_new_tokens=6, eval_limit=4, trainable="lora")))
    scorer = RewardScorer([str(tmp_path / "rm")])
    for round_index in range(2):
        rows = read_jsonl(tmp_path / "otf" / "rounds" / f"round-{round_index}.jsonl")
        assert 0 < len(rows) <= 8
        for row in rows:
            assert row["chosen_reward"] > row["rejected_reward"]
            assert 0 < len(row["chosen_ids"]) <= 6 and 0 < len(row["rejected_ids"]) <= 6
        rescored = scorer.score([r["prompt"] for r in rows] * 2, [r["chosen"] for r in rows] +
                                [r["rejected"] for r in rows])[0]
        n = len(rows)
        assert torch.allclose(rescored[:n], torch.tensor([r["chosen_reward"] for r in rows]), atol=1e-4)
        assert torch.allclose(rescored[n:], torch.tensor([r["rejected_reward"] for r in rows]), atol=1e-4)
        ref = load_file(str(tmp_path / "otf" / "rounds" / f"ref-{round_index}.safetensors"))["logps"]
        assert ref.shape == (n, 2)
    metrics = read_jsonl(tmp_path / "otf" / "metrics.jsonl")
    assert [r["step"] for r in metrics if "round/reward" in r] == [0, 2]
    assert len([r for r in metrics if "loss" in r]) == 4
    # round 2's reference is the policy after round 1: its first step starts at the DPO loss of log 2 again
    assert abs([r for r in metrics if "loss" in r][2]["loss"] - math.log(2)) < 1e-4
