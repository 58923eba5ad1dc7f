"""Adaptive model averaging: α̃ normalisation and penalty by hand, groups per mask level, gradients reach only the
logits, the functional merge equals an explicitly merged model, and a killed run resumes to the same ratios."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from rlhf_lab.io import read_jsonl
from rlhf_lab.losses import ama_alphas, ama_regularizer
from rlhf_lab.models import resolve_model_path
from rlhf_lab.models.merging import WeightSource, merge_dirs
from rlhf_lab.recipes import ama


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """tiny-random (base) and a perturbed copy (tuned)."""
    base = Path(resolve_model_path("tiny-random"))
    tuned = tmp_path_factory.mktemp("ama") / "tuned"
    shutil.copytree(base, tuned)
    generator = torch.Generator().manual_seed(1)
    for f in tuned.glob("*.safetensors"):
        tensors = {k: v + 0.05 * torch.randn(v.shape, generator=generator) for k, v in load_file(str(f)).items()}
        save_file(tensors, str(f), metadata={"format": "pt"})
    return base, tuned


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """A RAFT train_set-style file: messages + response."""
    path = tmp_path_factory.mktemp("data") / "train_set_0.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Count to {n}."}],
             "response": " ".join(str(i) for i in range(1, n + 1)), "reward": float(n)} for n in range(2, 14)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_alphas_keep_their_mean_at_init():
    logits = torch.tensor([0.0, float(torch.log(torch.tensor(3.0)))])  # σ = 0.5, 0.75
    alphas = ama_alphas(logits, 0.2, 0.25)  # s = 0.75, 1.0; mean 0.875
    assert torch.allclose(alphas, torch.tensor([0.2 * 0.75 / 0.875, 0.2 * 1.0 / 0.875]), atol=1e-7)
    random = ama_alphas(torch.randn(30, generator=torch.Generator().manual_seed(0)) * 3, 0.35, 0.1)
    assert abs(float(random.mean()) - 0.35) < 1e-6 and float(random.std()) > 0.01
    assert torch.allclose(ama_alphas(torch.randn(5), 0.2, 1e6), torch.full((5,), 0.2), atol=1e-6)  # ε → ∞
    assert torch.allclose(ama_alphas(torch.full((4,), -2.0), 0.3, 0.0), torch.full((4,), 0.3))  # logit(init) irrelevant


def test_regulariser_by_hand():
    alphas, weights = torch.tensor([0.1, 0.3]), torch.tensor([1.0, 2.0])
    assert abs(float(ama_regularizer(alphas, 0.2, weights, "l1")) - (0.1 + 2 * 0.1)) < 1e-6
    assert abs(float(ama_regularizer(alphas, 0.2, weights, "l2")) - (0.01 + 2 * 0.01)) < 1e-6
    assert abs(float(ama_regularizer(alphas, 0.2, weights, "linear")) - (0.9 + 2 * 1.1)) < 1e-6


def test_layer_weights_follow_the_seed_for_26_layers():
    assignment = {"model.layers.13.mlp.up_proj": 0, "model.layers.13.mlp.down_proj": 0,
                  "model.layers.0.self_attn.q_proj": 1, "lm_head": 2}
    w = ama.reg_weights(assignment, 3, "0.2", num_layers=26)
    assert torch.allclose(w, torch.tensor([2 * 25.0, 25 / 14, 25 / 14]))
    assert torch.equal(ama.reg_weights(assignment, 3, "0", num_layers=26), torch.tensor([2.0, 1.0, 1.0]))


def _meta_llama(layers: int) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=1)
    with torch.device("meta"):
        return LlamaForCausalLM(config)


def test_groups_per_mask_level():
    def groups_of(level, layers):
        groups, assignment, fixed = ama.linear_groups(_meta_llama(layers), level, layers)
        per_layer = {}
        for name, g in assignment.items():
            per_layer.setdefault(name.split(".")[2] if ".layers." in name else name, set()).add(groups[g])
        return groups, per_layer, fixed

    groups, per_layer, fixed = groups_of("layerwise", 4)
    assert groups == ["layer0", "layer1", "layer2", "layer3"] and fixed == ["lm_head"]
    assert all(len(v) == 1 for v in per_layer.values())  # the 7 linears of a layer share one ratio
    _, per_layer, _ = groups_of("block3", 30)  # ≤ 30 layers: split at 8 / 16
    assert per_layer["7"] == {"block0"} and per_layer["8"] == {"block1"} and per_layer["16"] == {"block2"}
    _, per_layer, _ = groups_of("block3", 32)  # > 30 layers: split at 11 / 21
    assert per_layer["10"] == {"block0"} and per_layer["11"] == {"block1"} and per_layer["21"] == {"block2"}
    groups, per_layer, _ = groups_of("block4", 30)  # int(30/4) = 7 layers each, the last block takes the rest
    assert len(groups) == 4 and per_layer["6"] == {"block0"} and per_layer["27"] == {"block3"}
    groups, per_layer, fixed = groups_of("lblock3", 30)
    assert "lm_head" in groups and fixed == [] and per_layer["lm_head"] == {"lm_head"}
    groups, _, _ = groups_of("linearwise", 3)
    assert len(groups) == 3 * 7


def _averaged(pair, level="layerwise", seed=0):
    base, tuned = pair
    model = AutoModelForCausalLM.from_pretrained(base)
    groups, assignment, fixed = ama.linear_groups(model, level, model.config.num_hidden_layers)
    averaged = ama.AveragedModel(model, WeightSource(tuned), groups, assignment, fixed, 0.2, 0.2)
    with torch.no_grad():
        averaged.logits.copy_(torch.randn(len(groups), generator=torch.Generator().manual_seed(seed)) * 2)
    return averaged


def test_gradient_reaches_only_the_logits(pair):
    averaged = _averaged(pair, "linearwise")
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    logits = averaged(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1)).backward()
    assert [n for n, p in averaged.named_parameters() if p.requires_grad] == ["logits"]
    grad = averaged.logits.grad
    assert grad is not None and torch.isfinite(grad).all() and (grad.abs() > 0).all()  # every group gets a signal
    assert all(p.grad is None for p in averaged.model.parameters())
    assert all(not t.requires_grad and t.grad is None for _, _, t, _ in averaged.entries)


@pytest.mark.parametrize("level", ["layerwise", "lblock3"])
def test_functional_merge_equals_explicitly_merged_model(pair, tmp_path, level):
    averaged = _averaged(pair, level, seed=3)
    alphas = averaged.alphas().detach()
    assert abs(float(alphas.mean()) - 0.2) < 1e-6 and float(alphas.max() - alphas.min()) > 0.01
    ratios = averaged.ratios()
    merge_dirs(pair[0], pair[1], tmp_path / "merged", lambda k: ratios.get(k, 1.0), 2**31)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    # explicitly: a linear weight of layer 1 is α̃_1·W_base + (1 − α̃_1)·W_tuned; a norm is the base's
    key = "model.layers.1.mlp.gate_proj.weight"
    a1 = alphas[1] if level == "layerwise" else alphas[0]  # lblock3 on 2 layers: block0 and lm_head
    b, t = load_file(str(pair[0] / "model.safetensors")), load_file(str(pair[1] / "model.safetensors"))
    assert torch.allclose(merged.state_dict()[key], a1 * b[key] + (1 - a1) * t[key], atol=1e-7)
    assert torch.equal(merged.state_dict()["model.norm.weight"], b["model.norm.weight"])
    head = 0.2 if level == "layerwise" else float(alphas[1])  # tied: the head's ratio (fixed, or lblock3's)
    assert torch.allclose(merged.state_dict()["model.embed_tokens.weight"],
                          head * b["model.embed_tokens.weight"] + (1 - head) * t["model.embed_tokens.weight"],
                          atol=1e-7)
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        functional = averaged(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        explicit = merged(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert torch.allclose(functional, explicit, atol=1e-5, rtol=0)


def _cli(args: dict, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "rlhf_lab.cli", "ama"]
    for k, v in args.items():
        argv += [f"--{k}", str(v)]
    return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env_extra or {})}, timeout=600)


@pytest.mark.slow
def test_killed_run_resumes_to_identical_alphas(pair, collected, tmp_path):
    common = dict(base=str(pair[0]), tuned=str(pair[1]), dataset=collected, mask_level="block2", max_steps=6,
                  save_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=0.5,
                  lr_scheduler_type="constant", max_length=64, loss_on="response", reg_alpha=0.01, progress="false",
                  seed=1)
    straight = _cli({**common, "output_dir": tmp_path / "straight"})
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = _cli({**common, "output_dir": tmp_path / "killed"}, {"RLHF_LAB_FAULT": "after_save:4"})
    assert killed.returncode == -9
    assert not (tmp_path / "killed" / "model").exists()
    resumed = _cli({**common, "output_dir": tmp_path / "killed", "resume": "true"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr

    with safe_open(str(tmp_path / "straight" / "alphas.safetensors"), "pt") as f:
        a, meta = f.get_tensor("alphas"), f.metadata()
    b = load_file(str(tmp_path / "killed" / "alphas.safetensors"))["alphas"]
    assert json.loads(meta["groups"]) == ["block0", "block1"] and meta["init_val"] == "0.2"
    assert torch.allclose(a, b, atol=1e-6, rtol=0)
    assert abs(float(a.mean()) - 0.2) < 1e-6 and float((a - 0.2).abs().max()) > 1e-3  # the ratios moved
    wa = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "killed" / "model" / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6, rtol=0) for k in wa)

    def losses(run):
        return {r["step"]: r["loss"] for r in read_jsonl(tmp_path / run / "metrics.jsonl") if "loss" in r}

    straight_losses, resumed_losses = losses("straight"), losses("killed")
    assert sorted(resumed_losses) == list(range(1, 7))
    assert all(abs(resumed_losses[s] - v) < 1e-6 for s, v in straight_losses.items())


@pytest.mark.slow
def test_bad_flags_are_one_line_errors(pair, collected, tmp_path):
    result = _cli(dict(base=str(pair[0]), tuned=str(pair[1]), dataset=collected, mask_level="blockwise",
                       output_dir=tmp_path / "x"))
    assert result.returncode == 2 and "--mask_level" in result.stderr and result.stderr.strip().count("\n") == 0


# ---- pareto (the sweep that consumes merge and ama) ---------------------------------------------------------------

def test_pareto_front_bookkeeping_by_hand():
    from rlhf_lab.recipes.pareto import interpolation_reward, pareto_optimal

    rewards, taxes = [1.0, 2.0, 1.5, 2.0, 0.5], [1.0, 3.0, 1.0, 2.0, 0.5]
    # (1,1) is beaten by (1.5,1); (2,3) by (2,2); the rest trade off
    assert pareto_optimal(rewards, taxes) == [False, False, True, True, True]
    curve = [(1.0, 0.0), (3.0, 2.0)]
    assert interpolation_reward(curve, 2.0) == 1.0 and interpolation_reward(curve, 3.5) is None


def test_pareto_sweep_on_tiny_models(pair, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from rlhf_lab.config import make_config
    from rlhf_lab.models import load_tokenizer
    from rlhf_lab.recipes import pareto

    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(pair[0], num_labels=1)
    rm.config.pad_token_id = rm.config.eos_token_id
    rm.save_pretrained(tmp_path / "rm")
    load_tokenizer("tiny-random").save_pretrained(tmp_path / "rm")
    config = make_config(pareto.ParetoConfig, dict(
        base=str(pair[0]), tuned=str(pair[1]), alphas="0,0.5,1", partwise=["0|1|0"], reward_models=[str(tmp_path / "rm")],
        num_prompts=3, num_references=4, max_new_tokens=6, output_dir=str(tmp_path / "p")))
    out = pareto.run(config)
    rows = read_jsonl(out / "pareto.jsonl")
    assert [r["name"] for r in rows] == ["alpha=0", "alpha=0.5", "alpha=1", "partwise 0|1|0 (α=0.5)"]
    by = {r["name"]: r for r in rows}
    # alpha=1 is the SFT model itself: its samples have exactly zero KL to it
    assert abs(by["alpha=1"]["kl_k3"]) < 1e-5 and by["alpha=0"]["kl_k3"] > 0
    assert all(math.isfinite(r["nll"]) and r["perplexity"] > 1 for r in rows)
    assert any(r["pareto_nll"] for r in rows) and (out / "plots" / "pareto.png").is_file()
    assert "partwise 0|1|0" in (out / "pareto.md").read_text()
    # alpha=0 is the tuned model: its NLL equals the tuned model's own NLL on the reference replies
    from rlhf_lab.models.logprobs import response_logprobs

    tokenizer = load_tokenizer(str(pair[0]))
    data = pareto.build_eval_set(config, tokenizer)
    tuned = AutoModelForCausalLM.from_pretrained(pair[1])
    logps = response_logprobs(tuned, data.ref_prompt_ids, data.ref_response_ids, tokenizer.pad_token_id)
    nll = -float(sum(x.sum() for x in logps)) / sum(len(x) for x in logps)
    assert abs(by["alpha=0"]["nll"] - nll) < 1e-5 and abs(by["alpha=0"]["nll"] - by["alpha=1"]["nll"]) > 1e-3
    # every point answers the same prompts with the same seed: its reward is compared with the base's (α = 1)
    # prompt by prompt, from the samples files
    samples = {name: read_jsonl(out / "samples" / f"{pareto._slug(name)}.jsonl") for name in by}
    per_prompt = {name: [np.mean([s["proxy"] for s in rows_ if s["prompt_index"] == p]) for p in range(3)]
                  for name, rows_ in samples.items()}
    d = np.subtract(per_prompt["alpha=0"], per_prompt["alpha=1"])
    assert by["alpha=0"]["proxy_vs_base"] == pytest.approx(d.mean(), abs=1e-9)
    assert by["alpha=0"]["proxy_vs_base_se"] == pytest.approx(d.std(ddof=1) / math.sqrt(3), abs=1e-9)
    assert by["alpha=1"]["proxy_vs_base"] == 0.0 and by["alpha=1"]["proxy_vs_base_shown"] is False
    assert "proxy vs base, paired (95% CI)" in (out / "pareto.md").read_text()


def test_pareto_proxy_ensemble_follows_the_objective_by_hand():
    from rlhf_lab.config import make_config
    from rlhf_lab.recipes import pareto

    members = torch.tensor([[1.0, 2.0], [3.0, 6.0]])  # 2 members x 2 responses

    def reward(**over):
        config = make_config(pareto.ParetoConfig, {"tuned": "t", "reward_models": "a,b", **over})
        return pareto.proxy_rewards(members, config).tolist()

    assert reward() == [2.0, 4.0]  # mean, the default (what pareto always did)
    assert reward(objective="WCO") == [1.0, 2.0]
    # UWO, λ = 0.5, unbiased variance over 2 members: Var = (3−1)²/2 = 2 and (6−2)²/2 = 8
    assert reward(objective="UWO", uwo_weight=0.5) == [1.0, 0.0]
    assert reward(objective="UWO", uwo_weight=0.5, ensemble_ddof=0) == [1.5, 2.0]  # population: 1 and 4
    one = pareto.proxy_rewards(members[:1], make_config(pareto.ParetoConfig, {"tuned": "t", "reward_models": "a",
                                                                               "objective": "UWO"}))
    assert one.tolist() == [1.0, 2.0]  # one member: its own score
