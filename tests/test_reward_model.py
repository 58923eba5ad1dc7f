"""Reward models on tiny-random: the loss, pooling when pad == eos, shared-trunk ensembles, export, resume."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from rlhf_lab.config import make_config
from rlhf_lab.errors import UserError
from rlhf_lab.io import read_jsonl
from rlhf_lab.losses import bradley_terry_loss
from rlhf_lab.recipes import reward_model
from rlhf_lab.rewards.scorer import RewardScorer


def test_bradley_terry_loss_by_hand():
    r_c, r_r = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.0])
    plain = [-math.log(1 / (1 + math.exp(-(2.0 - 0.5)))), -math.log(1 / (1 + math.exp(-(-1.0 - 1.0))))]
    assert torch.allclose(bradley_terry_loss(r_c, r_r), torch.tensor(plain), atol=1e-6)
    with_margin = -math.log(1 / (1 + math.exp(-(2.0 - 0.5 - 1.0))))
    assert math.isclose(float(bradley_terry_loss(r_c, r_r, margin=1.0)[0]), with_margin, rel_tol=1e-6)
    l2 = plain[0] + 0.001 * 0.5 * (4.0 + 0.25)
    assert math.isclose(float(bradley_terry_loss(r_c, r_r, score_l2=0.001)[0]), l2, rel_tol=1e-6)
    center = plain[1] + 0.1 * (0.0) ** 2
    assert math.isclose(float(bradley_terry_loss(r_c, r_r, center_coefficient=0.1)[1]), center, rel_tol=1e-6)
    big = bradley_terry_loss(torch.tensor([100.0]), torch.tensor([-100.0]))  # softplus: no overflow to inf/nan
    assert float(big) == pytest.approx(0.0, abs=1e-30)


@pytest.fixture(scope="module")
def easy_pairs(tmp_path_factory):
    """Chosen replies praise, rejected ones refuse: a signal even a tiny random model's features carry."""
    path = tmp_path_factory.mktemp("rm") / "pairs.jsonl"
    topics = ["cats", "tea", "rain", "maps", "jazz", "bread", "chess", "snow", "boats", "clocks", "bees", "kites"]
    rows = []
    for i in range(96):
        topic = topics[i % len(topics)]
        rows.append({"prompt": f"Tell me about {topic} number {i}.",
                     "chosen": f"Sure! {topic} are wonderful, here is a helpful answer.",
                     "rejected": f"No. I will not talk about {topic}."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _config(data, out, **over):
    args = dict(model_name="tiny-random", dataset=data, split="train", output_dir=str(out), eval_limit=0,
                max_steps=30, per_device_train_batch_size=8, progress=False, eval_steps=10, seed=3)
    args.update(over)
    if args["eval_limit"] == 0:
        args.update(eval_dataset=data, eval_limit=16)
    return make_config(reward_model.RewardModelConfig, args)


@pytest.mark.parametrize("trainable", ["head", "top:1", "lora"])
def test_reward_model_learns_an_easy_preference(easy_pairs, tmp_path, trainable):
    lr = {"head": 3e-2, "top:1": 3e-3, "lora": 3e-3}[trainable]
    results = reward_model.run(_config(easy_pairs, tmp_path / "rm", trainable=trainable, learning_rate=lr))
    assert results["eval/accuracy/member_0"] >= 0.9
    losses = [r["loss"] for r in read_jsonl(tmp_path / "rm" / "metrics.jsonl") if "loss" in r]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    manifest = json.loads((tmp_path / "rm" / "reward_models.json").read_text())
    assert manifest["members"][0]["path"] == "model"
    config = json.loads((tmp_path / "rm" / "model" / "config.json").read_text())
    assert config["pad_token_id"] != config["eos_token_id"]  # HF pooling reads the real last token
    assert "reward_mean" in config and "reward_std" in config and config["rlhf_lab_template"] == "chat"


def test_pooling_reads_the_eos_token_even_though_the_tokenizer_pads_with_eos(easy_pairs, tmp_path):
    reward_model.run(_config(easy_pairs, tmp_path / "rm", trainable="head", max_steps=5, learning_rate=1e-2))
    scorer = RewardScorer([str(tmp_path / "rm")])
    assert scorer.tokenizer.pad_token_id == scorer.tokenizer.eos_token_id  # the trap this test is about
    ids = scorer.tokenize([[{"role": "user", "content": "Hi"}]] * 2, ["Hello there.", "Yo"])
    assert ids[0][-2] == scorer.tokenizer.eos_token_id  # chat template: reply ends "<|im_end|>\n"
    ours = scorer.score_ids(ids)[0]
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm" / "model")
    for i, seq in enumerate(ids):
        alone = model(input_ids=torch.tensor([seq])).logits[0, 0]
        padded = torch.tensor([seq + [model.config.pad_token_id] * 5])
        assert torch.allclose(alone, model(input_ids=padded).logits[0, 0], atol=1e-5)
        assert torch.allclose(alone, ours[i], atol=1e-5)
    # reading at the token before the last one (what pad == eos pooling does) gives another score
    hidden = model.base_model(input_ids=torch.tensor([ids[0]])).last_hidden_state
    assert not torch.allclose(model.score(hidden[0, -2]), ours[0], atol=1e-4)


@pytest.mark.slow
def test_shared_prompt_rows_score_like_a_row_per_text_on_smollm2():
    """One row per pair (the shared prefix read once, block mask, restarted positions) gives the scores of separate
    prompt + reply rows: real SmolLM2 weights, real HH pairs of different prompt and reply lengths."""
    from rlhf_lab.data import load_pairs
    from rlhf_lab.data.collate import tokenize_pairs
    from rlhf_lab.models import load_tokenizer, pad_right
    from rlhf_lab.rewards.model import load_reward_backbone

    tokenizer = load_tokenizer("default")
    model = load_reward_backbone("default", tokenizer).eval()
    with torch.no_grad():  # a head that reads the whole hidden state at unit scale, not a near-zero init
        model.score.weight.copy_(torch.randn(model.score.weight.shape, generator=torch.Generator().manual_seed(0))
                                 / model.config.hidden_size ** 0.5)
    pairs, _ = load_pairs("hh-rlhf:helpful-base", split="train", limit=8)
    train = tokenize_pairs(pairs, tokenizer, template="chat", max_length=320, truncation="drop", keep="end")[0]
    train = train[:4]
    prefixes = [reward_model.split_shared_prefix(p.chosen, p.rejected) for p in train]
    assert len(set(prefixes)) == 4 and min(prefixes) > 20  # mixed lengths, a real prompt shared in each
    chosen, rejected = [p.chosen for p in train], [p.rejected for p in train]
    member, pad = reward_model.EndToEnd(model), model.config.pad_token_id
    with torch.no_grad():
        shared = member(*reward_model.shared_prompt_inputs(chosen, rejected, pad, torch.float32))
        rows = member(*pad_right(chosen + rejected, pad))
    assert rows.abs().max() > 0.3  # scores of a real size, so the tolerance below means something
    assert torch.allclose(shared, rows, atol=1e-4)


@pytest.mark.parametrize("top_layers", [2, 0])
@pytest.mark.slow
def test_paired_trunk_features_equal_a_pass_per_text_on_smollm2(top_layers):
    """The trunk feature pass with a pair per row gives every text the states of its own row (top:2: the (T, D)
    states entering layer 28; head: the pooled final state): real SmolLM2, real HH pairs."""
    from rlhf_lab.data import load_pairs
    from rlhf_lab.data.collate import tokenize_pairs
    from rlhf_lab.models import load_tokenizer
    from rlhf_lab.rewards.features import compute_features
    from rlhf_lab.rewards.model import load_reward_backbone

    tokenizer = load_tokenizer("default")
    model = load_reward_backbone("default", tokenizer)
    pairs, _ = load_pairs("hh-rlhf:helpful-base", split="train", limit=8)
    train = tokenize_pairs(pairs, tokenizer, template="chat", max_length=320, truncation="drop", keep="end")[0]
    texts = [t for p in train[:4]
             for t in (p.chosen, p.rejected)]
    paired, alone = (compute_features(model.base_model, texts, top_layers, model.config.pad_token_id, 8,
                                      torch.float32, paired=flag) for flag in (True, False))
    for text, a, b in zip(texts, paired, alone, strict=True):
        assert a.shape == b.shape == ((len(text), 576) if top_layers else (576,))
        # SmolLM2's residual stream has a few huge dimensions (~2e4): compare relative to each state's scale
        assert float((a - b).abs().max()) <= 1e-6 * float(b.abs().max()) + 1e-4


@pytest.mark.parametrize("share_prompt", [True, False])
def test_top_k_members_train_in_float32_on_a_bfloat16_trunk(easy_pairs, tmp_path, share_prompt):
    """--dtype bfloat16 runs the frozen trunk in bf16; the members' own top layers train in float32 (this used
    to stop with a dtype mismatch inside the first top layer)."""
    results = reward_model.run(_config(easy_pairs, tmp_path / "rm", trainable="top:1", dtype="bfloat16",
                                       max_steps=3, learning_rate=3e-3, share_prompt=share_prompt))
    assert math.isfinite(results["train/loss"])
    scores = RewardScorer([str(tmp_path / "rm")]).score([[{"role": "user", "content": "Hi"}]] * 2, ["Sure!", "No."])
    assert torch.isfinite(scores).all()


def test_shared_prefix_split_leaves_each_reply_its_last_token():
    split = reward_model.split_shared_prefix
    assert split([1, 2, 3, 4], [1, 2, 5]) == 2
    assert split([1, 2, 3], [1, 2, 3]) == 2  # identical texts: each keeps its last token (its score position)
    assert split([1, 2], [1, 2, 3, 4]) == 1  # one text is a prefix of the other
    assert split([7], [8, 9]) == 0


def test_shared_prompt_gradients_and_run_equal_a_row_per_text(easy_pairs, tmp_path):
    from rlhf_lab.models import pad_right
    from rlhf_lab.models.load import load_tokenizer
    from rlhf_lab.rewards.model import load_reward_backbone

    tokenizer = load_tokenizer("tiny-random")
    chosen = [[5, 6, 7, 8, 9, 20, 21, 22], [11, 12, 13, 30], [3, 4]]
    rejected = [[5, 6, 7, 8, 9, 40, 41], [11, 12, 13, 50, 51, 52, 53], [3, 4]]
    grads, scores = [], []
    for share in (True, False):
        torch.manual_seed(0)
        model = load_reward_backbone("tiny-random", tokenizer)
        member, pad = reward_model.EndToEnd(model), model.config.pad_token_id
        inputs = (reward_model.shared_prompt_inputs(chosen, rejected, pad, torch.float32) if share
                  else pad_right(chosen + rejected, pad))
        out = member(*inputs)
        (out * torch.tensor([1.0, -2.0, 0.5, 3.0, 0.25, -1.0])).sum().backward()
        scores.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(scores[0], scores[1], atol=1e-6)
    assert torch.allclose(grads[0], grads[1], atol=1e-5) and grads[0].abs().max() > 0
    for trainable, members in (("full", 1), ("lora", 1), ("top:1", 2), ("head", 2)):
        losses = []
        for share in (True, False):
            out = tmp_path / f"{trainable}-{share}"
            reward_model.run(_config(easy_pairs, out, trainable=trainable, max_steps=4, eval_steps=2,
                                     learning_rate=3e-3, share_prompt=share, ensemble_size=members))
            losses.append([(r.get("loss"), r.get("eval/accuracy")) for r in read_jsonl(out / "metrics.jsonl")])
        flat = [[v for row in run for v in row if v is not None] for run in losses]
        assert len(flat[0]) == 4 + 2 and max(abs(a - b) for a, b in zip(*flat, strict=True)) < 1e-5


def test_ensemble_members_differ_and_reload_as_plain_hf_models(easy_pairs, tmp_path):
    reward_model.run(_config(easy_pairs, tmp_path / "ens", trainable="top:1", ensemble_size=3, rng_seed=10,
                             learning_rate=3e-3, max_steps=12))
    manifest = json.loads((tmp_path / "ens" / "reward_models.json").read_text())
    assert [m["seed"] for m in manifest["members"]] == [10, 11, 12]
    assert manifest["shared_trunk_layers"] == 1
    prompts = [[{"role": "user", "content": f"Tell me about item {i}."}] for i in range(6)]
    replies = ["Sure! here is a helpful answer.", "No.", "Maybe later", "ok", "Certainly, gladly.", "Never."]
    shared = RewardScorer([str(tmp_path / "ens")])
    scores = shared.score(prompts, replies)
    assert scores.shape == (3, 6)
    assert not torch.allclose(scores[0], scores[1], atol=1e-4)  # different head init and data order
    for j, member in enumerate(manifest["members"]):
        alone = RewardScorer([str(tmp_path / "ens" / member["path"])]).score(prompts, replies)[0]
        assert torch.allclose(alone, scores[j], atol=1e-5)  # one shared trunk pass == a full forward
        model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ens" / member["path"])
        ids = shared.tokenize(prompts[:1], replies[:1])
        assert torch.allclose(model(input_ids=torch.tensor(ids)).logits[0, 0], scores[j, 0], atol=1e-5)
    # top:1 trains the last layer too, not only the head: the exported layer moved away from the base model
    base = load_file(str(tmp_path / "ens" / manifest["members"][0]["path"] / "model.safetensors"))
    from rlhf_lab.models import resolve_model_path

    original = load_file(str(resolve_model_path("tiny-random")) + "/model.safetensors")
    name = "model.layers.1.mlp.up_proj.weight"
    assert not torch.allclose(base[name], original[name])
    assert torch.equal(base["model.layers.0.mlp.up_proj.weight"], original["model.layers.0.mlp.up_proj.weight"])
    carto = read_jsonl(tmp_path / "ens" / "carto.jsonl")
    assert len(carto) == 12 * 8 * 3 and {r["member"] for r in carto} == {0, 1, 2}


@pytest.mark.slow
def test_scorer_shares_a_prompt_across_its_replies_and_scores_as_a_row_per_text(easy_pairs, tmp_path):
    """Replies to one prompt are packed into rows that read the prompt once: the same scores as a row per text,
    for a plain model on real SmolLM2 weights (hh-gold) and for a shared-trunk ensemble (top layers per member)."""
    reward_model.run(_config(easy_pairs, tmp_path / "ens", trainable="top:1", ensemble_size=2, max_steps=4))
    prompts = [[{"role": "user", "content": f"Tell me about item {i}, and be brief about it."}] for i in range(3)]
    replies = ["Sure! here is a helpful answer.", "No.", "Maybe later, when I have looked it up properly.",
               "ok", "Certainly, gladly.", "Never.", "It is a thing.", "I do not know", "Yes"]
    asked = [prompts[i % 3] for i in range(9)]  # three replies per prompt, interleaved
    for name, batch_size in (("hh-gold", 4), (str(tmp_path / "ens"), 16)):
        shared = RewardScorer([name], batch_size=batch_size)
        prompt_ids, _ = shared.tokenize_parts(asked, replies)
        assert len({tuple(p) for p in prompt_ids}) == 3
        by_row = RewardScorer([name], batch_size=batch_size, share_prompt=False).score(asked, replies)
        packed = shared.score(asked, replies)
        assert packed.shape == by_row.shape == (len(shared.members), 9)
        assert by_row.std() > 0.05 and torch.allclose(packed, by_row, atol=1e-4)
    with pytest.MonkeyPatch.context() as patch:  # a row cap of one reply still scores every text
        patch.setattr("rlhf_lab.rewards.scorer.MAX_ROW_TOKENS", 1)
        assert torch.allclose(shared.score(asked, replies), packed, atol=1e-5)


def _cli(args: dict, env_extra=None):
    argv = [sys.executable, "-m", "rlhf_lab.cli", "train-rm"]
    for k, v in args.items():
        argv += [f"--{k}", str(v)]
    return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env_extra or {})},
                          timeout=600)


@pytest.mark.parametrize("trainable", ["top:1", "full"])
@pytest.mark.slow
def test_killed_reward_model_run_resumes_exactly(easy_pairs, tmp_path, trainable):
    common = dict(model_name="tiny-random", dataset=easy_pairs, eval_dataset=easy_pairs, eval_limit=16,
                  max_steps=8, save_steps=3, eval_steps=2, per_device_train_batch_size=4, progress="false",
                  trainable=trainable, ensemble_size=2 if trainable == "top:1" else 1, learning_rate=3e-3)
    straight = _cli({**common, "output_dir": tmp_path / "a"})
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = _cli({**common, "output_dir": tmp_path / "b"}, {"RLHF_LAB_FAULT": "after_save:6"})
    assert killed.returncode == -9
    resumed = _cli({**common, "output_dir": tmp_path / "b", "resume": "true"})
    assert resumed.returncode == 0 and "resumed from" in resumed.stderr, resumed.stderr[-2000:]
    manifest = json.loads((tmp_path / "a" / "reward_models.json").read_text())
    assert manifest == json.loads((tmp_path / "b" / "reward_models.json").read_text())
    for member in manifest["members"]:
        a = load_file(str(tmp_path / "a" / member["path"] / "model.safetensors"))
        b = load_file(str(tmp_path / "b" / member["path"] / "model.safetensors"))
        assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    carto_a, carto_b = read_jsonl(tmp_path / "a" / "carto.jsonl"), read_jsonl(tmp_path / "b" / "carto.jsonl")
    assert len(carto_a) == len(carto_b)
    assert all(abs(x["r_chosen"] - y["r_chosen"]) < 1e-6 for x, y in zip(carto_a, carto_b, strict=True))


def test_score_and_eval_rm_commands(easy_pairs, tmp_path):
    reward_model.run(_config(easy_pairs, tmp_path / "rm", trainable="head", ensemble_size=2, max_steps=20,
                             learning_rate=3e-2))
    generations = tmp_path / "gen.jsonl"
    generations.write_text(json.dumps({"prompt": "Tell me about owls.",
                                       "responses": ["Sure! owls are wonderful.", "No. I will not."]}) + "\n")
    from rlhf_lab.cli import main

    assert main(["score", "--model_name", str(tmp_path / "rm"), "--input", str(generations), "--output_dir",
                 str(tmp_path / "s"), "--objective", "WCO"]) == 0
    row = read_jsonl(tmp_path / "s" / "scored.jsonl")[0]
    members = [k for k in row["scores"] if not k.startswith("ensemble_")]
    assert len(members) == 2 and set(row["score_stats"]) == set(members)
    wco = [min(a, b) for a, b in zip(*(row["scores"][m] for m in members), strict=True)]
    assert row["scores"]["ensemble_WCO"] == pytest.approx(wco)
    assert main(["eval-rm", "--model_name", str(tmp_path / "rm"), "--dataset", easy_pairs, "--split", "all",
                 "--output_dir", str(tmp_path / "e")]) == 0
    result = json.loads((tmp_path / "e" / "eval_rm.json").read_text())
    assert result["pairs"] == 96 and result["ensemble"]["accuracy"] >= 0.9
    # pair_scores.jsonl holds each pair's scores: they give back every member's accuracy
    rows = read_jsonl(tmp_path / "e" / "pair_scores.jsonl")
    assert [r["pair"] for r in rows] == list(range(96))
    for name, metrics in result["members"].items():
        hits = [1.0 if r["r_chosen"][name] > r["r_rejected"][name] else 0.5 if r["r_chosen"][name] ==
                r["r_rejected"][name] else 0.0 for r in rows]
        assert sum(hits) / 96 == pytest.approx(metrics["accuracy"])
    assert all(r["len_chosen"] > r["len_rejected"] for r in rows)  # every chosen reply here is the longer one
    assert result["ensemble"]["longer_preferred_rate"] == 1.0  # every chosen reply here is the longer one
    # the gap to the humans' rate, paired over pairs, and its finding (the report opens with it)
    ensemble = result["ensemble"]
    assert ensemble["longer_preferred_gap"] == pytest.approx(ensemble["rm_longer_preferred_rate"] - 1.0)
    assert ensemble["longer_preferred_gap_pairs"] == 96
    assert sum(v for k, v in ensemble.items() if k.startswith("pairs_by_length_diff/")) == 96
    from rlhf_lab.eval.findings import read_findings

    (finding,) = read_findings(tmp_path / "e" / "findings.json")
    assert finding.estimate == ensemble["longer_preferred_gap"] and finding.n_prompts == 96
    assert not finding.shown  # the RM cannot prefer the longer reply more often than humans who always do


def test_held_out_metrics_at_export_equal_eval_rm_on_the_exported_models(easy_pairs, tmp_path):
    """train-rm's --test_dataset report (scored from cached trunk features with each member's best weights) is
    exactly what eval-rm computes from the exported HF directories, per member and for the ensemble mean."""
    test = tmp_path / "test.jsonl"
    rows = []
    for i in range(20):  # lengths vary, and in some pairs the chosen reply is the shorter one
        pad = " really" * (i % 7)
        rows.append({"prompt": f"Question {i} about owls?",
                     "chosen": "Sure! owls are" + pad + " wonderful." if i % 3 else "Sure!",
                     "rejected": "No." if i % 2 else "No, I will not talk about owls, not today" + pad + "."})
    test.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reward_model.run(_config(easy_pairs, tmp_path / "rm", trainable="top:1", ensemble_size=2, max_steps=8,
                             learning_rate=3e-3, test_dataset=str(test), test_limit=18))
    report = json.loads((tmp_path / "rm" / "held_out_metrics.json").read_text())
    assert set(report) == {"eval", "test"} and report["test"]["pairs"] == 18
    from rlhf_lab.cli import main

    assert main(["eval-rm", "--model_name", str(tmp_path / "rm"), "--dataset", str(test), "--split", "all",
                 "--limit", "18", "--output_dir", str(tmp_path / "e")]) == 0
    direct = json.loads((tmp_path / "e" / "eval_rm.json").read_text())
    ours = report["test"]
    manifest = json.loads((tmp_path / "rm" / "reward_models.json").read_text())
    for member in manifest["members"]:
        expected = direct["members"][str(tmp_path / "rm" / member["path"])]
        got = ours["members"][f"seed-{member['seed']}"]
        assert got.keys() == expected.keys()
        for key in expected:
            assert got[key] == pytest.approx(expected[key], abs=1e-5, nan_ok=True), key  # an empty length bin: nan
    for key, value in direct["ensemble"].items():
        assert ours["ensemble"][key] == (pytest.approx(value, abs=1e-5, nan_ok=True) if key != "objective"
                                         else value), key
    assert 0 < ours["ensemble"]["longer_preferred_rate"] < 1  # the lengths really are mixed


def test_feature_cache_is_reused_and_exact(tmp_path):
    from rlhf_lab.models import load_tokenizer
    from rlhf_lab.rewards.features import FeatureStore, compute_features
    from rlhf_lab.rewards.model import load_reward_backbone

    tok = load_tokenizer("tiny-random")
    backbone = load_reward_backbone("tiny-random", tok).base_model
    texts = [tok(t)["input_ids"] for t in ["one two", "three four five", "six", "one two"]]
    first = compute_features(backbone, texts, 1, 0, 2, torch.float32, FeatureStore(str(tmp_path), "ns"))
    assert torch.equal(first[0], first[3]) and first[1].shape == (len(texts[1]), 64)

    class Exploding(torch.nn.Module):
        def forward(self, *args, **kwargs):
            raise AssertionError("the trunk ran although every feature was cached")

    again = compute_features(Exploding(), texts, 1, 0, 2, torch.float32, FeatureStore(str(tmp_path), "ns"))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    fresh = compute_features(backbone, texts[:2], 1, 0, 1, torch.float32)  # other batching, no cache
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(first, fresh, strict=False))


def test_head_features_come_from_a_top_k_cache_without_the_bottom_layers(easy_pairs, tmp_path, capsys):
    from rlhf_lab.models import load_tokenizer
    from rlhf_lab.rewards.features import FeatureStore, compute_features
    from rlhf_lab.rewards.model import decoder_layers, load_reward_backbone

    tok = load_tokenizer("tiny-random")
    backbone = load_reward_backbone("tiny-random", tok).base_model
    texts = [tok(t)["input_ids"] for t in ["one two", "three four five six", "six", "seven eight nine"]]
    top1 = FeatureStore(str(tmp_path / "c"), "top1")
    compute_features(backbone, texts, 1, 0, 3, torch.float32, top1)
    direct = compute_features(backbone, texts, 0, 0, 3, torch.float32)  # the whole trunk, pooled

    def refuse(*_):
        raise AssertionError("the bottom layer ran although its output was cached")

    hook = decoder_layers(backbone)[0].register_forward_pre_hook(refuse)
    derived = compute_features(backbone, texts, 0, 0, 2, torch.float32, upstream=(top1, 1))
    hook.remove()
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(direct, derived, strict=True))
    # the recipe: a head run after a top:1 run on the same cache equals a head run from scratch
    cache = str(tmp_path / "features")
    reward_model.run(_config(easy_pairs, tmp_path / "top", trainable="top:1", max_steps=1, feature_cache=cache))
    capsys.readouterr()
    runs = {name: reward_model.run(_config(easy_pairs, tmp_path / name, trainable="head", max_steps=6,
                                           learning_rate=1e-2, **extra))
            for name, extra in (("reused", dict(feature_cache=cache)), ("scratch", {}))}
    assert capsys.readouterr().err.count("head features from the top:1 feature cache") == 1
    assert runs["reused"]["eval/accuracy/member_0"] == runs["scratch"]["eval/accuracy/member_0"]
    a = load_file(str(tmp_path / "reused" / "model" / "model.safetensors"))["score.weight"]
    b = load_file(str(tmp_path / "scratch" / "model" / "model.safetensors"))["score.weight"]
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_embedded_head_round_trip(easy_pairs, tmp_path, monkeypatch):
    """A head-only RM ships as its head alone and is rebuilt into an RM scoring exactly like the original."""
    from rlhf_lab.rewards import embedded

    reward_model.run(_config(easy_pairs, tmp_path / "rm", trainable="head", max_steps=5, learning_rate=1e-2))
    heads = tmp_path / "heads"
    embedded.export_reward_head(str(tmp_path / "rm" / "model"), str(heads / "toy-gold.safetensors"), "tiny-random",
                                {"eval_accuracy": 1.0})
    monkeypatch.setattr(embedded, "embedded_reward_models", lambda: ["toy-gold"])
    monkeypatch.setattr(embedded, "head_file", lambda name: heads / f"{name}.safetensors")
    monkeypatch.setenv("RLHF_LAB_CACHE", str(tmp_path / "cache"))
    prompts = [[{"role": "user", "content": "Tell me about cats."}]] * 2
    replies = ["Sure! cats are wonderful.", "No."]
    original = RewardScorer([str(tmp_path / "rm")]).score(prompts, replies)
    rebuilt = RewardScorer(["toy-gold"])
    assert rebuilt.names == ["toy-gold"]
    torch.testing.assert_close(rebuilt.score(prompts, replies), original)
    with pytest.raises(UserError, match="not a head-only"):
        reward_model.run(_config(easy_pairs, tmp_path / "top", trainable="top:1", max_steps=3, learning_rate=1e-2))
        embedded.export_reward_head(str(tmp_path / "top" / "model"), str(heads / "x.safetensors"), "tiny-random", {})


def _head_model(out, num_layers=None, seed=0, perturb=False):
    """A reward model on tiny-random's (first ``num_layers``) layers with a random unit-scale head, saved to
    ``out``; ``perturb`` changes its first layer (a model that shares no trunk with the others)."""
    from rlhf_lab.models import load_tokenizer
    from rlhf_lab.rewards.model import load_reward_backbone

    tokenizer = load_tokenizer("tiny-random")
    model = load_reward_backbone("tiny-random", tokenizer, num_layers=num_layers)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.score.weight.copy_(torch.randn(model.score.weight.shape, generator=generator))
        if perturb:
            model.base_model.layers[0].mlp.up_proj.weight.add_(0.01)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return str(out)


def test_reward_models_on_one_frozen_trunk_share_one_pass_and_score_as_alone(easy_pairs, tmp_path):
    """A head on the last layer (the gold's shape), a head on layer 1 (a truncated proxy), a top:1 ensemble from
    train-rm and an unrelated model: one trunk serves the first three (each reads its own depth, runs its own top
    layer and norm), the unrelated one gets its own; every score equals the member's whole network run alone."""
    reward_model.run(_config(easy_pairs, tmp_path / "ens", trainable="top:1", ensemble_size=2, max_steps=4,
                             learning_rate=3e-3))
    names = [_head_model(tmp_path / "gold"), _head_model(tmp_path / "proxy", num_layers=1, seed=1),
             str(tmp_path / "ens"), _head_model(tmp_path / "other", seed=2, perturb=True)]
    prompts = [[{"role": "user", "content": f"Tell me about item {i}."}] for i in range(4)] * 2
    replies = ["Sure! here is a helpful answer.", "No.", "Maybe later", "ok", "Certainly, gladly.", "Never.",
               "It is a thing.", "Yes"]
    shared = RewardScorer(names, batch_size=4)
    assert len(shared.trunks) == 2
    assert [(m.trunk, m.depth, m.top is not None) for m in shared.members] == [
        (0, 2, False), (0, 1, False), (0, 1, True), (0, 1, True), (1, 2, False)]
    separate = RewardScorer(names, batch_size=4, share_trunk=False)
    assert len(separate.trunks) == 5
    for share_prompt in (True, False):
        shared.share_prompt = separate.share_prompt = share_prompt
        one_pass, each = shared.score(prompts, replies), separate.score(prompts, replies)
        assert one_pass.shape == (5, 8) and each.std(dim=1).min() > 0.01
        assert torch.allclose(one_pass, each, atol=1e-5)
    # a depth off by one (the proxy reading the gold's last layer) would not pass the comparison above
    assert not torch.allclose(each[0], each[1], atol=1e-3)
    for j, name in enumerate(names[:2]):  # and each equals the model loaded and scored alone
        assert torch.allclose(RewardScorer([name]).score(prompts, replies)[0], one_pass[j], atol=1e-5)


def test_eval_rm_compares_several_reward_models_pair_by_pair(tmp_path):
    """Two reward models named: the second is compared with the first on the same pairs; the paired differences of
    the longer-preferred rate and of the accuracy equal the hand computation, and each is a finding."""
    import random

    from rlhf_lab.cli import main
    from rlhf_lab.eval.findings import read_findings

    rng = random.Random(0)
    words = ["sure", "no", "maybe", "cats", "tea", "rain", "maps", "jazz", "bread", "chess", "snow", "boats", "clocks", "bees", "kites", "yes", "later"]
    mixed = tmp_path / "mixed.jsonl"  # replies of random words and lengths: the two heads disagree on some
    mixed.write_text("".join(json.dumps({"prompt": f"Question {i}?",
                                         "chosen": " ".join(rng.choices(words, k=rng.randint(1, 9))),
                                         "rejected": " ".join(rng.choices(words, k=rng.randint(1, 9)))}) + "\n"
                             for i in range(50)))
    a, b = _head_model(tmp_path / "a", seed=3), _head_model(tmp_path / "b", seed=4)
    assert main(["eval-rm", "--model_name", f"{a},{b}", "--dataset", str(mixed), "--split", "all",
                 "--bottom", "10", "--top", "50", "--output_dir", str(tmp_path / "e")]) == 0  # rows 10..49
    result = json.loads((tmp_path / "e" / "eval_rm.json").read_text())
    (row,) = result["comparisons"]
    assert (row["a"], row["b"]) == (b, a)
    from rlhf_lab.data import load_pairs

    pairs, _ = load_pairs(str(mixed), split="all")
    pairs = pairs[10:50]
    assert result["pairs"] == 40 and pairs[0].prompt.messages[-1]["content"] == "Question 10?"
    scorer = RewardScorer([a, b])
    prompts = [p.prompt.messages for p in pairs]
    chosen, rejected = scorer.score(prompts, [p.chosen for p in pairs]), scorer.score(prompts, [p.rejected for p in pairs])
    correct = (chosen > rejected).double()
    d = (correct[1] - correct[0]).numpy()
    assert d.std() > 0  # the two heads disagree on some pairs: the comparison is not trivially 0
    assert row["accuracy"]["diff"] == pytest.approx(d.mean(), abs=1e-9)
    assert row["accuracy"]["se"] == pytest.approx(d.std(ddof=1) / math.sqrt(40))
    tok = scorer.tokenizer
    len_c = [len(tok(p.chosen, add_special_tokens=False)["input_ids"]) for p in pairs]
    len_r = [len(tok(p.rejected, add_special_tokens=False)["input_ids"]) for p in pairs]
    unequal = [i for i in range(40) if len_c[i] != len_r[i]]

    def prefers_longer(m: int) -> np.ndarray:  # the RM scores the longer reply higher
        return np.array([float(bool(chosen[m, i] > rejected[m, i]) == (len_c[i] > len_r[i])) for i in unequal])

    longer_d = prefers_longer(1) - prefers_longer(0)
    assert row["longer_preferred"]["n_prompts"] == len(unequal) < 40
    assert row["longer_preferred"]["diff"] == pytest.approx(longer_d.mean(), abs=1e-9)
    findings = {f.key: f for f in read_findings(tmp_path / "e" / "findings.json")}
    assert set(findings) == {"eval-rm/longer_preferred_gap/a", "eval-rm/longer_preferred_gap/b",
                             "eval-rm/less_length_preference/b"}  # named by their directories' names
    assert findings["eval-rm/less_length_preference/b"].claim == "b prefers the longer reply less often than a"
    assert findings["eval-rm/less_length_preference/b"].estimate == pytest.approx(longer_d.mean(), abs=1e-9)
