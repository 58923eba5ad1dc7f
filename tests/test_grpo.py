"""rlhf-lab grpo on tiny-random: the G-reply layout, bad input, end to end, exact resume, failing rewards."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf_lab.config import make_config
from rlhf_lab.engine import RunFailure
from rlhf_lab.errors import UserError
from rlhf_lab.io import read_jsonl
from rlhf_lab.models import load_tokenizer

REWARDS = '''
def brevity(prompts, completions, **kwargs):
    return [-len(c[0]["content"]) / 10 for c in completions]

def token_seven(prompts, completions, completion_ids, **kwargs):
    return [float(sum(t % 7 == 0 for t in ids)) for ids in completion_ids]

def skip_all(prompts, completions, **kwargs):
    return [None] * len(completions)

def broken(prompts, completions, **kwargs):
    raise ValueError("cannot score")

def too_few(prompts, completions, **kwargs):
    return [0.0]
'''


pytestmark = pytest.mark.usefixtures("one_thread")


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


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Tell me about item {i}."}) + "\n" for i in range(32)))
    rewards = root / "my_rewards.py"
    rewards.write_text(REWARDS)
    return {"prompts": str(prompts), "rewards": str(rewards), "rm1": _tiny_rm(root / "rm1", 1),
            "rm2": _tiny_rm(root / "rm2", 2), "nan_rm": _tiny_rm(root / "nan_rm", 3, nan=True)}


def _args(setup, out, **over):
    args = dict(model_name="tiny-random", dataset=setup["prompts"], split="all", output_dir=str(out),
                reward_funcs=f"{setup['rewards']}:brevity,{setup['rewards']}:token_seven", reward_weights="1,0.5",
                num_generations=2, per_device_train_batch_size=4, gradient_accumulation_steps=2, max_new_tokens=6,
                learning_rate=1e-3, seed=5, progress=False, lora_r=4, num_eval_prompts=0, beta=0.1)
    args.update(over)
    return args


def _straight(setup):
    return dict(max_steps=3, save_steps=2, num_iterations=2, num_mini_batches=2, epsilon=0.02, epsilon_high=0.03, scale_reward=True,
                advantage="rloo", reward_models=f"{setup['rm1']},{setup['rm2']}", objective="UWO",
                reward_weights="1,1,0.5", num_eval_prompts=2, eval_interval=2, eval_dataset=setup["prompts"],
                gold_model_name=setup["rm2"])


def _run(args):
    from rlhf_lab.recipes import grpo

    return grpo.run(make_config(grpo.GRPOConfig, args))


# ---- the layout: a prompt read once for its G replies --------------------------------------------------------

def test_group_rows_score_each_reply_as_its_own_row(tiny_tokenizer):
    from rlhf_lab.losses import token_logprobs
    from rlhf_lab.models import load_causal_lm
    from rlhf_lab.models.batching import group_rows
    from rlhf_lab.models.logprobs import group_logits, response_logprobs

    model = load_causal_lm("tiny-random").eval()
    prompts = [[5, 6, 7, 8, 9], [11, 12]]
    replies = [[[20, 21], [22, 23, 24, 25], [26]], [[30], [31, 32, 33], [34, 35]]]
    pad = tiny_tokenizer.pad_token_id
    batch = group_rows(prompts, replies, pad)
    assert batch["input_ids"].shape == (2, 5 + 7)  # each prompt once, then its three replies
    with torch.no_grad():
        logps = token_logprobs(group_logits(model, batch), batch["targets"]) * batch["mask"]
    flat_p = [p for p, rs in zip(prompts, replies, strict=True) for _ in rs]
    flat_r = [r for rs in replies for r in rs]
    expected = response_logprobs(model, flat_p, flat_r, pad)
    for n, r in enumerate(flat_r):
        assert batch["mask"][n].sum() == len(r)
        assert torch.allclose(logps[n, :len(r)], expected[n], atol=1e-5), n
        assert torch.equal(logps[n, len(r):], torch.zeros(logps.size(1) - len(r)))


def test_sampler_logprobs_are_the_training_forwards(tiny_tokenizer):
    """π_old for μ > 1 is the fast sampler's log-prob of each drawn token: it equals the group forward's (at T)."""
    from rlhf_lab.generation import DecodingConfig, generate
    from rlhf_lab.losses import token_logprobs
    from rlhf_lab.models import load_causal_lm
    from rlhf_lab.models.batching import group_rows
    from rlhf_lab.models.logprobs import group_logits

    model = load_causal_lm("tiny-random").eval()
    prompts = [[5, 6, 7, 8, 9], [11, 12]]
    gens = generate(model, tiny_tokenizer, prompts, samples_per_prompt=3, seed=3, progress=False,
                    decoding=DecodingConfig(max_new_tokens=7, temperature=0.8), return_logprobs=True)
    batch = group_rows(prompts, [[g.token_ids for g in group] for group in gens], tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        logps = token_logprobs(group_logits(model, batch) / 0.8, batch["targets"])
    for n, g in enumerate(x for group in gens for x in group):
        assert len(g.logprobs) == g.num_tokens > 0
        assert torch.allclose(logps[n, :g.num_tokens], torch.tensor(g.logprobs), atol=1e-5), n


# ---- bad input: one line, before any model loads -------------------------------------------------------------

@pytest.mark.parametrize("over,needle", [
    ({"num_generations": 1}, "--num_generations: --advantage grpo needs a group of at least 2"),
    ({"advantage": "rloo", "num_generations": 1, "per_device_train_batch_size": 1}, "--num_generations"),
    ({"per_device_train_batch_size": 3}, "multiple of --num_generations 2"),
    ({"reward_weights": "1"}, "--reward_weights: 1 weight(s) for 2 reward source(s)"),
    ({"epsilon": 1.5}, "--epsilon: must be in (0, 1)"),
    ({"beta": -0.1}, "--beta: must be >= 0"),
    ({"reward_funcs": "", "reward_models": ""}, "give a reward model, a reward function"),
])
def test_bad_config_is_one_line(setup, tmp_path, over, needle):
    with pytest.raises(UserError) as e:
        make_config(__import__("rlhf_lab.recipes.grpo", fromlist=["GRPOConfig"]).GRPOConfig,
                    _args(setup, tmp_path, **over))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_reinforce_pp_accepts_a_group_of_one(setup, tmp_path):
    from rlhf_lab.recipes import grpo

    make_config(grpo.GRPOConfig, _args(setup, tmp_path, advantage="reinforce_pp", num_generations=1))


def test_bottom_and_top_select_the_training_prompts(setup, tmp_path, capsys):
    """--bottom/--top (DataArgs) choose rows bottom..top-1 of the prompts, as in every data-reading command."""
    _run(_args(setup, tmp_path, bottom=4, top=10, max_steps=1))
    assert "grpo: 6 training prompts" in capsys.readouterr().err


def test_unimportable_reward_function_exits_2_before_a_model_loads(setup, tmp_path, monkeypatch, capsys):
    from rlhf_lab import cli
    from rlhf_lab.recipes import grpo

    def no_model(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(grpo, "load_causal_lm", no_model)
    monkeypatch.setattr(grpo, "check_bounds", no_model)
    argv = ["grpo", "--model_name", "tiny-random", "--dataset", setup["prompts"], "--output_dir", str(tmp_path / "r"),
            "--reward_funcs", f"{setup['rewards']}:no_such_function"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--reward_funcs" in err[0] and "no_such_function" in err[0]
    assert not (tmp_path / "r").exists()


# ---- end to end ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def straight_run(setup, tmp_path_factory):
    """An uninterrupted 3-step run: RLOO with β·KL in the reward, μ = 2 over 2 mini-batches, a UWO ensemble of two
    reward models plus two weighted reward functions, --scale_reward (its running statistics must survive the
    resume), in-run eval with a gold model every 2 steps."""
    out = tmp_path_factory.mktemp("straight") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    _run(_args(setup, out, **_straight(setup)))
    torch.set_num_threads(threads)
    return out


def test_end_to_end_metrics_and_weights(straight_run):
    rows = [r for r in read_jsonl(straight_run / "metrics.jsonl") if "reward" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for name in ("reward", "reward_std", "frac_reward_zero_std", "kl", "clip_ratio/low_mean", "clip_ratio/high_mean",
                 "clip_ratio/region_mean", "completions/mean_length", "completions/clipped_ratio", "entropy",
                 "rewards/reward_model/mean", "rewards/brevity/mean", "rewards/token_seven/mean",
                 "objective/ensemble_variance"):
        assert all(math.isfinite(r[name]) for r in rows), name
    # the logged reward is the weighted sum of the sources' means (1·UWO + 1·brevity + 0.5·token_seven)
    for r in rows:
        expect = r["rewards/reward_model/mean"] + r["rewards/brevity/mean"] + 0.5 * r["rewards/token_seven/mean"]
        assert math.isclose(r["reward"], expect, rel_tol=1e-9, abs_tol=1e-12)
    # in-run eval: the proxy is the same weighted sum, the reward-model part the UWO of its members
    evals = {r["step"]: r for r in read_jsonl(straight_run / "metrics.jsonl") if "eval/proxy_score" in r}
    assert sorted(evals) == [0, 2, 3] and "eval/gold_score" in evals[3] and "eval/ensemble_variance" in evals[3]
    for row in read_jsonl(straight_run / "eval" / "eval-3.jsonl"):
        members = torch.tensor(row["member_scores"], dtype=torch.float64)
        uwo = float(members.mean() - 0.1 * members.var())
        ids = load_tokenizer("tiny-random")(row["response"], add_special_tokens=False)["input_ids"]
        by_hand = uwo - len(row["response"]) / 10 + 0.5 * sum(t % 7 == 0 for t in ids)
        assert math.isclose(row["proxy_score"], by_hand, rel_tol=1e-9, abs_tol=1e-9)
        assert {"gold_score", "kl_k1", "ensemble_variance"} <= set(row)
    assert rows[-1]["episode"] == 3 * 4 * 2 * 2  # steps × completions (4 per micro-batch × 2 accum × 2 minis)
    assert rows[0]["kl"] < 1e-9 < rows[-1]["kl"]  # π = π_ref at step 1, then the adapter moves
    assert any(r["clip_ratio/region_mean"] > 0 for r in rows)  # μ = 2, ε = 0.02: the later passes clip
    adapter = load_file(str(straight_run / "checkpoints" / "step-3" / "trainable.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())
    assert (straight_run / "model" / "model.safetensors").is_file()


def test_resume_equals_the_uninterrupted_run(setup, straight_run, tmp_path):
    """A copy of the run cut back to its step-2 checkpoint, resumed, ends at the same weights and metrics."""
    cut = tmp_path / "cut"
    shutil.copytree(straight_run, cut)
    shutil.rmtree(cut / "checkpoints" / "step-3")
    shutil.rmtree(cut / "model")
    lines = (cut / "metrics.jsonl").read_text().splitlines()
    (cut / "metrics.jsonl").write_text("".join(line + "\n" for line in lines if json.loads(line).get("step", 0) <= 2))
    _run(_args(setup, cut, **_straight(setup), resume=True))
    a = load_file(str(straight_run / "model" / "model.safetensors"))
    b = load_file(str(cut / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    base = load_file(str(Path(straight_run) / "checkpoints" / "step-2" / "trainable.safetensors"))
    assert any(float((load_file(str(cut / "checkpoints" / "step-3" / "trainable.safetensors"))[k] - v).abs().max())
               > 0 for k, v in base.items())  # step 3 did move the weights after the resume
    last = {r["step"]: r for r in read_jsonl(straight_run / "metrics.jsonl") if "reward" in r}[3]
    resumed = {r["step"]: r for r in read_jsonl(cut / "metrics.jsonl") if "reward" in r}[3]
    for key in ("reward", "kl", "loss", "entropy", "clip_ratio/region_mean"):
        assert abs(last[key] - resumed[key]) <= 1e-6, key


@pytest.mark.parametrize("advantage,loss_type", [("dr_grpo", "dr_grpo"), ("rloo", "grpo"), ("reinforce_pp", "bnpo")])
def test_each_estimator_trains(setup, tmp_path, advantage, loss_type):
    metrics = _run(_args(setup, tmp_path / "run", max_steps=1, advantage=advantage, loss_type=loss_type))
    assert math.isfinite(metrics["loss"]) and math.isfinite(metrics["kl"])
    # on-policy (μ = 1, one mini-batch): the ratio is exactly 1, nothing clips
    assert metrics["clip_ratio/region_mean"] == 0.0


def test_completions_no_function_scored_get_no_advantage(setup, tmp_path):
    metrics = _run(_args(setup, tmp_path / "run", max_steps=1, reward_funcs=f"{setup['rewards']}:skip_all",
                         reward_weights="", beta=0.0))
    assert math.isnan(metrics["reward"]) and metrics["loss"] == 0.0


@pytest.mark.parametrize("name,needle", [("broken", "broken raised ValueError: cannot score"),
                                         ("too_few", "too_few returned 1 values for 8 completions")])
def test_failing_reward_function_stops_naming_it_and_the_step(setup, tmp_path, name, needle):
    with pytest.raises(RunFailure) as e:
        _run(_args(setup, tmp_path / "run", max_steps=2, reward_funcs=f"{setup['rewards']}:{name}",
                   reward_weights=""))
    assert str(e.value).startswith("step 1: reward function ") and needle in str(e.value)


def test_nan_reward_model_stops_naming_step_and_source(setup, tmp_path):
    with pytest.raises(RunFailure) as e:
        _run(_args(setup, tmp_path / "run", max_steps=2, reward_models=setup["nan_rm"], reward_funcs="",
                   reward_weights=""))
    assert str(e.value).startswith("step 1: the reward (reward model ") and "nan_rm" in str(e.value)
    assert "not finite" in str(e.value)


# ---- slow: the real model, and two processes -----------------------------------------------------------------

def _cli(args: dict, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    argv = [*(launcher or [sys.executable, "-m"]), "rlhf_lab.cli", "grpo"]
    for k, v in args.items():
        argv += [f"--{k}", str(v)]
    return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=900)


@pytest.mark.slow
def test_two_steps_on_smollm2_with_a_reward_model(tmp_path):
    """SmolLM2-135M-Instruct, LoRA, the embedded hh-gold reward model plus a reward function, KL in the loss."""
    rewards = tmp_path / "r.py"
    rewards.write_text(REWARDS)
    metrics = _run(dict(model_name="default", dataset="hh-rlhf:helpful-base", limit=16, output_dir=str(tmp_path / "run"),
                        reward_models="hh-gold", reward_funcs=f"{rewards}:brevity", reward_weights="1,0.1",
                        num_generations=4, per_device_train_batch_size=4, max_new_tokens=12, max_steps=2,
                        learning_rate=1e-4, seed=0, progress=False, num_eval_prompts=2, eval_interval=0,
                        beta=0.04, loss_type="grpo"))
    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "reward" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["kl"] < 1e-6 < rows[1]["kl"]  # π = π_ref at step 1; the first update moved the adapter
    assert metrics["entropy"] > 0 and 0 < metrics["completions/mean_length"] <= 12
    assert math.isfinite(metrics["rewards/reward_model/mean"]) and metrics["frac_reward_zero_std"] < 1
    assert (tmp_path / "run" / "eval" / "eval-2.jsonl").is_file()


@pytest.mark.slow
def test_two_process_run_under_accelerate_launch(setup, tmp_path):
    """DDP on CPU (gloo): 2 processes, each sampling its own prompts' groups; group statistics over both."""
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    args = _args(setup, tmp_path / "ddp", reward_models=setup["rm1"], reward_weights="1,1,0.5", max_steps=2,
                 gradient_accumulation_steps=1, num_mini_batches=2, num_eval_prompts=2, eval_interval=0,
                 eval_dataset=setup["prompts"])
    result = _cli(args, [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "29541",
                         "-m"])
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [r for r in read_jsonl(tmp_path / "ddp" / "metrics.jsonl") if "reward" in r]
    assert [r["step"] for r in rows] == [1, 2]  # one line per step
    assert rows[-1]["episode"] == 2 * 4 * 2 * 2  # steps × 4 completions per micro-batch × 2 minis × 2 processes
    assert (tmp_path / "ddp" / "eval" / "eval-2.jsonl").is_file()
    assert (tmp_path / "ddp" / "model" / "model.safetensors").is_file()


def test_gold_eval_and_report_accept_a_grpo_run(setup, straight_run, tmp_path):
    """gold-eval re-scores a grpo run's eval files (the same numbers the in-run gold gave); report names it grpo."""
    from rlhf_lab.recipes import gold_eval
    from rlhf_lab.report import html

    run_dir = tmp_path / "copy"
    shutil.copytree(straight_run, run_dir)
    gold_eval.run(make_config(gold_eval.GoldEvalConfig, {"run_dir": str(run_dir), "gold_model_name": setup["rm2"]}))
    summary = read_jsonl(run_dir / "gold_eval.jsonl")
    assert [r["step"] for r in summary] == [0, 2, 3]
    for r in summary:
        rescored = read_jsonl(run_dir / "eval" / f"gold-{r['step']}.jsonl")
        in_run = read_jsonl(run_dir / "eval" / f"eval-{r['step']}.jsonl")
        assert all(abs(x["gold_score"] - y["gold_score"]) < 1e-5 for x, y in zip(rescored, in_run, strict=True))
    html.run(make_config(html.ReportConfig, {"run_dir": str(run_dir)}))
    [info] = [i for i in html.collect(run_dir, 2) if i.path == run_dir]
    assert info.kind == "grpo"
    assert (run_dir / "report.html").stat().st_size > 1000
