"""PPO: the pure pieces against hand computations, then the recipe on tiny-random (rewards land on the last real
token, kill-and-resume equals an uninterrupted run, a NaN reward stops the run, 2 processes under accelerate)."""

import math

import pytest
import torch

from rlhf_lab.losses import (
    adaptive_kl_coef,
    gae_advantages,
    kl_penalty_per_token,
    masked_whiten,
    ppo_policy_loss,
    ppo_token_rewards,
    ppo_value_loss,
)
from rlhf_lab.rewards.shaping import RunningRewardStats, len_only_reward, length_penalty, scale_reward

# ---- pure functions -------------------------------------------------------------------------------------------


def test_gae_by_hand_gamma_1_lambda_095_with_a_padded_row():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.2, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.4, 0.3], [0.1, 0.2, 9.0]])  # row 2's last column is a pad: ignored
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.95)
    # row 1: δ2 = 1 − 0.3 = 0.7; δ1 = 0 + 0.3 − 0.4 = −0.1 → A1 = −0.1 + 0.95·0.7 = 0.565;
    #        δ0 = 0.4 − 0.5 = −0.1 → A0 = −0.1 + 0.95·0.565 = 0.43675
    # row 2: δ1 = 1.0 + 0 − 0.2 = 0.8 (the episode ends there); δ0 = 0.2 + 0.2 − 0.1 = 0.3 → A0 = 0.3 + 0.95·0.8
    expected = torch.tensor([[0.43675, 0.565, 0.7], [1.06, 0.8, 0.0]])
    assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[0.93675, 0.965, 1.0], [1.16, 1.0, 0.0]]), atol=1e-6)
    # γ < 1 discounts the bootstrap: row 1 last-but-one with γ = 0.5, λ = 1: A1 = (0 + 0.5·0.3 − 0.4) + 0.5·0.7
    adv_g, _ = gae_advantages(rewards[:1], values[:1], mask[:1], gamma=0.5, lam=1.0)
    assert math.isclose(float(adv_g[0, 1]), -0.25 + 0.35, abs_tol=1e-6)


def test_clipped_policy_loss_by_hand():
    old = torch.zeros(1, 4)
    new = torch.tensor([[math.log(1.5), math.log(0.5), math.log(0.9), 3.0]])
    adv = torch.tensor([[1.0, -1.0, 2.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the last token is a pad: no effect
    loss, stats = ppo_policy_loss(new, old, adv, mask, cliprange=0.2)
    # token 1: max(−1.5, −1.2) = −1.2 (clipped); token 2: max(0.5, 0.8) = 0.8 (clipped); token 3: −1.8
    assert math.isclose(float(loss), (-1.2 + 0.8 - 1.8) / 3, rel_tol=1e-6)
    assert math.isclose(float(stats["clipfrac"]), 2 / 3, rel_tol=1e-6)
    assert math.isclose(float(stats["ratio"]), (1.5 + 0.5 + 0.9) / 3, rel_tol=1e-6)
    approxkl = 0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2 + math.log(0.9) ** 2) / 3
    assert math.isclose(float(stats["approxkl"]), approxkl, rel_tol=1e-6)
    # the gradient flows only through unclipped tokens: d/dlogπ of −A·ρ at token 3 is −2·0.9 / 3
    new = new.clone().requires_grad_(True)
    ppo_policy_loss(new, old, adv, mask, 0.2)[0].backward()
    assert torch.allclose(new.grad, torch.tensor([[0.0, 0.0, -2 * 0.9 / 3, 0.0]]), atol=1e-6)


def test_clipped_value_loss_by_hand():
    values = torch.tensor([[1.0, 0.0, 7.0]])
    old = torch.tensor([[0.5, 0.5, 0.0]])
    returns = torch.tensor([[2.0, 0.4, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, clipfrac = ppo_value_loss(values, old, returns, mask, cliprange_value=0.2)
    # token 1: max((1−2)², (0.7−2)²) = 1.69; token 2: max((0−0.4)², (0.3−0.4)²) = 0.16
    assert math.isclose(float(loss), 0.5 * (1.69 + 0.16) / 2, rel_tol=1e-6)
    assert math.isclose(float(clipfrac), 0.5, rel_tol=1e-6)


def test_adaptive_kl_controller_trlx_formula():
    # KL above target: the error is clipped at +0.2
    assert math.isclose(adaptive_kl_coef(0.1, 9.0, 6.0, 10000, 32), 0.1 * (1 + 0.2 * 32 / 10000), rel_tol=1e-12)
    # KL below target: e = 5/6 − 1
    assert math.isclose(adaptive_kl_coef(0.1, 5.0, 6.0, 10000, 32), 0.1 * (1 - (1 / 6) * 32 / 10000), rel_tol=1e-12)
    # far below: clipped at −0.2; horizon 10 with 32 samples moves β a lot
    assert math.isclose(adaptive_kl_coef(0.2, 0.0, 6.0, 10, 32), 0.2 * (1 - 0.2 * 3.2), rel_tol=1e-12)


def test_kl_estimators_per_token():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    assert torch.allclose(kl_penalty_per_token(logp, ref, "k1"), torch.tensor([0.5, -1.0]))
    assert torch.allclose(kl_penalty_per_token(logp, ref, "k2"), torch.tensor([0.125, 0.5]))
    k3 = torch.tensor([math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0])
    assert torch.allclose(kl_penalty_per_token(logp, ref, "k3"), k3, atol=1e-6)
    with pytest.raises(ValueError):
        kl_penalty_per_token(logp, ref, "k4")


def test_score_lands_on_the_last_real_token_not_a_pad():
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    rewards, non_score = ppo_token_rewards(kl, torch.tensor([10.0, 20.0]), mask, kl_coef=0.5)
    expected = torch.tensor([[-0.05, -0.1 + 10.0, 0.0, 0.0], [-0.25, -0.3, -0.35, -0.4 + 20.0]])
    assert torch.allclose(rewards, expected, atol=1e-6)
    assert torch.allclose(non_score, torch.tensor([[-0.05, -0.1, 0.0, 0.0], [-0.25, -0.3, -0.35, -0.4]]))


def test_masked_whiten_ignores_pads():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    out = masked_whiten(x, mask)
    real = torch.tensor([1.0, 2.0, 3.0, 4.0])
    expected = (real - 2.5) / real.std()
    assert torch.allclose(out[:, :2].flatten(), expected, atol=1e-5)
    assert torch.equal(out[:, 2], torch.zeros(2))
    kept = masked_whiten(x, mask, shift_mean=False)
    assert torch.allclose(kept[:, :2].flatten(), expected + 2.5, atol=1e-5)


def test_length_shaping_formulas():
    lengths = torch.tensor([0, 8, 16, 24, 32, 40])
    assert torch.allclose(len_only_reward(lengths, 16), torch.tensor([0.0, 0.5, 1.0, 0.5, 0.0, -0.5], dtype=torch.float64))
    r = torch.tensor([1.0, -1.0])
    assert torch.allclose(length_penalty(r, torch.tensor([100, 50]), sigma=0.5), torch.tensor([1.0, -1.0 + 0.5]))
    assert torch.allclose(scale_reward(torch.tensor([0.0, 1.0, 1.1, 10.0]), mu=1.0, sigma=2.0),
                          torch.tensor([-0.3, 0.0, 0.05, 0.3]))
    assert torch.equal(scale_reward(torch.tensor([2.0, 2.0]), mu=2.0, sigma=0.0), torch.zeros(2))  # σ = 0: no NaN


def test_running_reward_stats_window_of_10_batches():
    stats = RunningRewardStats(window=10)
    batches = [torch.tensor([float(i), float(i) + 2.0 * (i + 1)]) for i in range(12)]
    for b in batches:
        mu, sigma = stats.update(b)
    # the last 10 batches are i = 2..11: mean_i = i + (i + 1), std_i (unbiased, n=2) = √2·(i + 1)
    assert math.isclose(mu, sum(2 * i + 1 for i in range(2, 12)) / 10, rel_tol=1e-12)
    assert math.isclose(sigma, sum(math.sqrt(2) * (i + 1) for i in range(2, 12)) / 10, rel_tol=1e-12)
    restored = RunningRewardStats(10, **stats.state())
    assert (restored.mu, restored.sigma) == (mu, sigma)
    # the current batch counts: after one batch the statistics are that batch's
    fresh = RunningRewardStats()
    assert fresh.update(torch.tensor([1.0, 3.0])) == (2.0, math.sqrt(2))


def test_omit_long_replaces_truncated_samples_with_finished_ones():
    from rlhf_lab.generation import Generation
    from rlhf_lab.recipes.ppo import omit_long

    gens = [Generation(i, 0, f"t{i}", [1, 2], 2, finished=i in (1, 3)) for i in range(4)]
    local, kept = omit_long([10, 11, 12, 13], gens, seed=0)
    assert all(g.finished for g in kept)
    assert [g.prompt_index for g in kept][1::2] == [1, 3]  # finished ones stay where they were
    assert all(q == 10 + g.prompt_index for q, g in zip(local, kept, strict=True))  # prompt moves with response
    assert omit_long([10], gens[:1], seed=0) == ([10], gens[:1])  # nothing finished: kept as is


# ---- the recipe on tiny-random --------------------------------------------------------------------------------

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from safetensors.torch import load_file  # noqa: E402

from rlhf_lab.config import make_config  # noqa: E402
from rlhf_lab.errors import UserError  # noqa: E402
from rlhf_lab.io import read_jsonl  # noqa: E402


def _tiny_rm(path: Path, seed: int, nan: bool = False) -> str:
    """A tiny-random reward model (sequence classifier, num_labels=1) with a seeded head."""
    from transformers import AutoModelForSequenceClassification

    from rlhf_lab.models import load_tokenizer, resolve_model_path

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path("tiny-random"), num_labels=1)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)
        if nan:
            model.score.weight.fill_(float("nan"))
    model.save_pretrained(path, safe_serialization=True)
    load_tokenizer("tiny-random").save_pretrained(path)
    return str(path)


# the subprocess runs use OMP_NUM_THREADS=1; the in-process ones too (same arithmetic, no oversubscription)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Tell me about item {i}."}) + "\n" for i in range(32)))
    return {"prompts": str(prompts), "rm1": _tiny_rm(root / "rm1", 1), "rm2": _tiny_rm(root / "rm2", 2),
            "nan_rm": _tiny_rm(root / "nan_rm", 3, nan=True)}


def _args(setup, out, **over):
    args = dict(model_name="tiny-random", dataset=setup["prompts"], split="all", eval_dataset=setup["prompts"],
                output_dir=str(out), reward_models=f"{setup['rm1']},{setup['rm2']}", objective="UWO",
                per_device_train_batch_size=2, gradient_accumulation_steps=2, num_mini_batches=2, ppo_epochs=2,
                max_new_tokens=6, num_eval_prompts=2, eval_interval=2, learning_rate=1e-3, seed=5, progress=False,
                scale_reward=True, len_penalty=True, lora_r=4)
    args.update(over)
    return args


def _cli(args: dict, env_extra: dict | None = None, verb: str = "ppo") -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "rlhf_lab.cli", verb]
    for k, v in args.items():
        argv += [f"--{k}", str(v)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)


def test_policy_forward_on_left_padded_rollouts_matches_unpadded_logprobs(tiny_tokenizer):
    """The rollout layout (left-padded prompts, right-padded responses, explicit positions) scores every response
    token exactly as the plain per-sequence log-probs do."""
    from rlhf_lab.models import load_causal_lm
    from rlhf_lab.models.logprobs import response_logprobs
    from rlhf_lab.recipes.ppo import PolicyAndValue, micro_batch, rollout_tensors

    model = load_causal_lm("tiny-random").eval()
    queries = [[5, 6, 7, 8, 9], [11, 12], [13, 14, 15]]
    responses = [[20, 21], [22, 23, 24, 25], [26]]
    pad = tiny_tokenizer.pad_token_id
    expected = response_logprobs(model, queries, responses, pad)
    agent = PolicyAndValue(model)
    rollout = rollout_tensors(queries, responses, pad)
    for rows in ([0, 1, 2], [1], [2, 0]):
        mb = micro_batch(rollout, rows)
        with torch.no_grad():
            logits, values = agent(mb["input_ids"], mb["attention_mask"], mb["position_ids"], mb["start"])
        from rlhf_lab.losses import token_logprobs

        logps = token_logprobs(logits, mb["responses"])
        assert values.shape == logps.shape and torch.equal(values, torch.zeros_like(values))  # zero-init head
        for k, row in enumerate(rows):
            n = len(responses[row])
            assert torch.allclose(logps[k, :n], expected[row], atol=1e-5), (rows, row)
            assert mb["response_mask"][k].sum() == n


def test_config_rejects_missing_reward_and_bad_values(setup, tmp_path):
    from rlhf_lab.recipes import ppo

    with pytest.raises(UserError, match="reward_models"):
        make_config(ppo.PPOConfig, {"output_dir": str(tmp_path)})
    with pytest.raises(UserError, match="len_only"):
        make_config(ppo.PPOConfig, {"reward": "len_only"})
    with pytest.raises(UserError, match="objective"):
        make_config(ppo.PPOConfig, {"reward_models": "x", "objective": "median"})
    with pytest.raises(UserError, match="cliprange"):
        make_config(ppo.PPOConfig, {"reward": "len_only", "len_only": 4, "cliprange": -1})


@pytest.fixture(scope="module")
def straight_run(setup, tmp_path_factory):
    """An uninterrupted 3-step run (UWO ensemble, scale_reward + len_penalty, eval every 2 steps)."""
    from rlhf_lab.recipes import ppo

    out = tmp_path_factory.mktemp("straight") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ppo.run(make_config(ppo.PPOConfig, _args(setup, out, max_steps=3, save_steps=2, gold_model_name=setup["rm2"],
                                             eval_samples_per_prompt=2)))
    torch.set_num_threads(threads)
    return out


@pytest.mark.slow
def test_killed_run_resumes_to_identical_policy_value_and_metrics(setup, straight_run, tmp_path):
    common = _args(setup, tmp_path, max_steps=3, save_steps=2, gold_model_name=setup["rm2"],
                   eval_samples_per_prompt=2)
    killed = _cli({**common, "output_dir": tmp_path / "killed"}, {"RLHF_LAB_FAULT": "after_save:2"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (tmp_path / "killed" / "model").exists()
    resumed = _cli({**common, "output_dir": tmp_path / "killed", "resume": "true"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr

    for name in ("model/model.safetensors", "value_head.safetensors"):
        a, b = load_file(str(straight_run / name)), load_file(str(tmp_path / "killed" / name))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-6, rtol=0), (name, key)
    value = load_file(str(straight_run / "value_head.safetensors"))["weight"]
    assert value.abs().sum() > 0  # the value head trained

    def rows(run_dir):
        return {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl") if "objective/kl" in r}

    straight, resumed_rows = rows(straight_run), rows(tmp_path / "killed")
    assert sorted(resumed_rows) == [1, 2, 3]
    for step, row in straight.items():
        for key, v in row.items():
            if key.startswith(("objective/", "loss/", "policy/", "val/")):
                assert abs(resumed_rows[step][key] - v) <= 1e-6, (step, key)
    # β, the running reward statistics and the ensemble are in play (else the test would prove little)
    assert straight[3]["objective/kl_coef"] != straight[1]["objective/kl_coef"]
    assert straight[3]["objective/kl"] != 0 and "objective/ensemble_variance" in straight[3]
    for name in ("eval-0.jsonl", "eval-2.jsonl", "eval-3.jsonl"):
        a, b = read_jsonl(straight_run / "eval" / name), read_jsonl(tmp_path / "killed" / "eval" / name)
        assert [r["response"] for r in a] == [r["response"] for r in b]
        assert all(abs(x["proxy_score"] - y["proxy_score"]) < 1e-6 for x, y in zip(a, b, strict=True))
    # two answers per eval prompt, one row each; runs compare prompt by prompt on the per-prompt means
    from rlhf_lab.eval.runs import read_eval_table

    last = read_jsonl(straight_run / "eval" / "eval-3.jsonl")
    table = read_eval_table(straight_run)
    assert [(r["prompt_index"], r["sample"]) for r in last] == [(p, j) for p in range(len(table.prompts))
                                                               for j in range(2)]
    assert table.steps == [0, 2, 3] and len(table.prompts) >= 2
    assert table.values["gold_score"][-1][1] == pytest.approx((last[2]["gold_score"] + last[3]["gold_score"]) / 2)
    row = last[0]
    assert {"prompt", "response", "proxy_score", "member_scores", "ensemble_variance", "kl_k1", "kl_k2",
            "length", "finished", "gold_score"} <= set(row)
    # proxy = UWO of the members: mean − 0.1 · unbiased variance
    members = torch.tensor(row["member_scores"], dtype=torch.float64)
    assert math.isclose(row["proxy_score"], float(members.mean() - 0.1 * members.var()), rel_tol=1e-9)
    assert math.isclose(row["ensemble_variance"], float(members.var()), rel_tol=1e-9)
    assert "eval/gold_score" in [r for r in read_jsonl(straight_run / "metrics.jsonl") if r["step"] == 3][-1]


@pytest.mark.slow
def test_nan_reward_stops_the_run_naming_step_and_source(setup, tmp_path):
    result = _cli(_args(setup, tmp_path / "run", reward_models=setup["nan_rm"], objective="mean",
                        max_steps=2, num_eval_prompts=0))
    assert result.returncode == 1, result.stderr[-2000:]
    message = result.stderr.strip().splitlines()[-1]
    assert "step 1" in message and "reward" in message and "nan_rm" in message and "not finite" in message


@pytest.mark.slow
def test_two_process_run_under_accelerate_launch(setup, tmp_path):
    """DDP on CPU (gloo): 2 processes take a few PPO steps; only the main process logs and evaluates."""
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    args = _args(setup, tmp_path / "ddp", reward_models=setup["rm1"], objective="mean", max_steps=2,
                 per_device_train_batch_size=1, gradient_accumulation_steps=1, num_mini_batches=2, ppo_epochs=1,
                 eval_interval=0, num_eval_prompts=2)
    argv = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "29533",
            "-m", "rlhf_lab.cli", "ppo"]
    for k, v in args.items():
        argv += [f"--{k}", str(v)]
    result = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [r for r in read_jsonl(tmp_path / "ddp" / "metrics.jsonl") if "objective/kl" in r]
    assert [r["step"] for r in rows] == [1, 2]  # one line per step
    assert rows[-1]["episode"] == 2 * 4  # global batch = 1 × 1 × 2 mini-batches × 2 processes
    assert (tmp_path / "ddp" / "eval" / "eval-2.jsonl").is_file()
    assert (tmp_path / "ddp" / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_gold_eval_scores_saved_generations_and_plots(setup, straight_run):
    """gold-eval re-scores every eval file with the gold RM: the scores equal a direct RewardScorer call."""
    from rlhf_lab.rewards.scorer import RewardScorer

    result = _cli({"gold_model_name": setup["rm2"]}, verb="gold-eval")  # no run dir: a one-line user error
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    argv = [sys.executable, "-m", "rlhf_lab.cli", "gold-eval", str(straight_run), "--gold_model_name", setup["rm2"]]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = read_jsonl(straight_run / "gold_eval.jsonl")
    assert [r["step"] for r in summary] == [0, 2, 3]
    scorer = RewardScorer([setup["rm2"]])
    for r in summary:
        rows = read_jsonl(straight_run / "eval" / f"gold-{r['step']}.jsonl")
        direct = scorer.score([x["messages"] for x in rows], [x["response"] for x in rows])[0]
        assert torch.allclose(torch.tensor([x["gold_score"] for x in rows]), direct, atol=1e-5)
        assert math.isclose(r["gold_score"], float(direct.mean()), rel_tol=1e-5)
        assert math.isclose(r["proxy_score"], sum(x["proxy_score"] for x in rows) / len(rows), rel_tol=1e-9)
        # the same gold RM scored the samples during training (--gold_model_name): the same numbers
        assert all(abs(x["gold_score"] - y["gold_score"]) < 1e-5
                   for x, y in zip(rows, read_jsonl(straight_run / "eval" / f"eval-{r['step']}.jsonl"), strict=True))
    png = (straight_run / "gold_eval.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_critic_from_the_reward_model(setup, tmp_path):
    """--critic rm: V(prefix) starts as the RM's score of that prefix; a run trains and exports the critic."""
    from rlhf_lab.models import load_causal_lm
    from rlhf_lab.recipes import ppo
    from rlhf_lab.rewards.scorer import RewardScorer

    config = make_config(ppo.PPOConfig, _args(setup, tmp_path / "run", reward_models=setup["rm1"],
                                              objective="mean", critic="rm", max_steps=1, num_eval_prompts=0,
                                              ppo_epochs=1))
    agent = ppo.PolicyAndValue(load_causal_lm("tiny-random"), ppo.load_critic(config)).eval()
    queries, responses = [[5, 6, 7, 8], [9, 10]], [[20, 21, 22], [23, 24, 25, 26]]
    rollout = ppo.rollout_tensors(queries, responses, 2)
    mb = ppo.micro_batch(rollout, [0, 1])
    with torch.no_grad():
        _, values = agent(mb["input_ids"], mb["attention_mask"], mb["position_ids"], mb["start"])
    scorer = RewardScorer([setup["rm1"]])
    for row, (q, r) in enumerate(zip(queries, responses, strict=True)):
        prefixes = [q + r[:t] for t in range(len(r))]  # V at column t sees the prompt and r_<t
        assert torch.allclose(values[row, :len(r)], scorer.score_ids(prefixes)[0], atol=1e-5)
    ppo.run(config)
    critic = load_file(str(tmp_path / "run" / "critic.safetensors"))
    assert any("lora" in k for k in critic) and any("score" in k for k in critic)
    assert not (tmp_path / "run" / "value_head.safetensors").exists()


def test_full_fine_tune_uses_a_frozen_reference_copy(setup, tmp_path):
    from rlhf_lab.models import resolve_model_path
    from rlhf_lab.recipes import ppo

    ppo.run(make_config(ppo.PPOConfig, _args(setup, tmp_path / "run", reward_models=setup["rm1"],
                                             objective="mean", trainable="full", max_steps=2, num_eval_prompts=0,
                                             scale_reward=False, len_penalty=False, learning_rate=1e-3)))
    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "objective/kl" in r]
    assert rows[0]["objective/kl"] == 0.0  # before any update π = π_ref exactly
    assert rows[1]["objective/kl"] != 0.0 and math.isfinite(rows[1]["objective/kl"])  # π moved away from the copy
    trained = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    base = load_file(str(Path(resolve_model_path("tiny-random")) / "model.safetensors"))
    assert not torch.equal(trained["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])


def test_uwo_needs_more_than_one_member(setup, tmp_path):
    from rlhf_lab.recipes import ppo

    with pytest.raises(UserError, match="UWO"):
        ppo.run(make_config(ppo.PPOConfig, _args(setup, tmp_path / "run", reward_models=setup["rm1"])))
