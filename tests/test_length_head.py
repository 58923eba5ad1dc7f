"""ODIN's disentangled length head (Chen et al. 2024): the two loss terms by hand, `train-rm --length_head` in
every mode (export scores with the quality head only, resume), its bad input, and a set whose label is pure length."""

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from rlhf_lab import cli
from rlhf_lab.config import make_config
from rlhf_lab.losses import odin_length_loss, odin_orthogonal_loss, pearson_correlation
from rlhf_lab.recipes import reward_model
from rlhf_lab.rewards.model import pool_last
from rlhf_lab.rewards.scorer import RewardScorer

# ---- the loss terms -------------------------------------------------------------------------------------------


def test_pearson_correlation_by_hand_and_against_numpy():
    # x − x̄ = (−1, 0, 1), y − ȳ = (−1, 1, 0): Σ = 1, norms √2·√2 = 2 → 0.5
    assert pearson_correlation(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 3.0, 2.0])).item() == pytest.approx(0.5)
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, generator=generator, dtype=torch.float64), torch.randn(50, generator=generator, dtype=torch.float64)
    y = y + 0.7 * x
    assert pearson_correlation(x, y).item() == pytest.approx(np.corrcoef(x.numpy(), y.numpy())[0, 1], abs=1e-12)
    assert pearson_correlation(x, torch.full_like(x, 4.0)).item() == 0.0  # a constant has no correlation, not NaN


def test_odin_length_loss_by_hand():
    lengths = torch.tensor([1, 2, 3])
    # ρ(r_Q, ℓ) = −0.5 (penalised as |−0.5|), ρ(r_L, ℓ) = +0.5 → 0.5 − 0.5 = 0
    assert odin_length_loss(torch.tensor([3.0, 1.0, 2.0]), torch.tensor([1.0, 3.0, 2.0]), lengths).item() == \
        pytest.approx(0.0, abs=1e-7)
    # r_L linear in ℓ (ρ = 1): 0.5 − 1 = −0.5; r_Q positively correlated (+0.5) costs the same as −0.5
    assert odin_length_loss(torch.tensor([1.0, 3.0, 2.0]), torch.tensor([2.0, 4.0, 6.0]), lengths).item() == \
        pytest.approx(-0.5)
    # the minimum −1: r_Q uncorrelated (x − x̄ = (1, −2, 1) ⟂ (−1, 0, 1)), r_L = ℓ
    assert odin_length_loss(torch.tensor([2.0, -1.0, 2.0]), torch.tensor([1.0, 2.0, 3.0]), lengths).item() == \
        pytest.approx(-1.0)
    # the worst, 2: r_Q a function of length, r_L anti-correlated
    assert odin_length_loss(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([3.0, 2.0, 1.0]), lengths).item() == \
        pytest.approx(2.0)
    # its gradient pushes r_L towards ℓ's direction (descent raises ρ(r_L, ℓ))
    r_length = torch.tensor([1.0, 3.0, 2.0], requires_grad=True)
    odin_length_loss(torch.tensor([2.0, -1.0, 2.0]), r_length, lengths).backward()
    stepped = r_length.detach() - 0.1 * r_length.grad
    assert pearson_correlation(stepped, lengths.float()) > 0.5


def test_odin_orthogonal_loss_by_hand():
    assert odin_orthogonal_loss(torch.tensor([3.0, 4.0]), torch.tensor([4.0, -3.0])).item() == 0.0
    assert odin_orthogonal_loss(torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0]])).item() == pytest.approx(0.6)
    # scale-free (shrinking a head does not lower it) and sign-free (|·|)
    assert odin_orthogonal_loss(torch.tensor([3.0, 4.0]), torch.tensor([-10.0, 0.0])).item() == pytest.approx(0.6)
    assert odin_orthogonal_loss(torch.tensor([3.0, 4.0]), torch.tensor([6.0, 8.0])).item() == pytest.approx(1.0)


# ---- train-rm --length_head ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def easy_pairs(tmp_path_factory):
    """Chosen replies help, rejected ones refuse, and the lengths vary on both sides."""
    path = tmp_path_factory.mktemp("odin") / "pairs.jsonl"
    topics = ["cats", "tea", "rain", "maps", "jazz", "bread", "chess", "snow", "boats", "clocks", "bees", "kites"]
    rows = []
    for i in range(96):
        topic = topics[i % len(topics)]
        pad = " really" * (i % 5)
        rows.append({"prompt": f"Tell me about {topic} number {i}.",
                     "chosen": f"Sure!{pad} {topic} are wonderful, here is a helpful answer.",
                     "rejected": f"No.{' never' * (i % 7)} I will not talk about {topic}."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _config(data, out, **over):
    args = dict(model_name="tiny-random", dataset=data, split="train", output_dir=str(out), eval_dataset=data,
                eval_limit=16, max_steps=12, per_device_train_batch_size=8, progress=False, eval_steps=6, seed=3,
                length_head=True)
    args.update(over)
    return make_config(reward_model.RewardModelConfig, args)


@pytest.mark.parametrize("trainable,members,lr", [("head", 2, 3e-2), ("top:1", 2, 3e-3), ("lora", 1, 3e-3),
                                                      ("full", 1, 1e-3)])
def test_length_head_exports_a_plain_model_that_scores_with_the_quality_head_only(easy_pairs, tmp_path, trainable,
                                                                                   members, lr):
    out = tmp_path / "rm"
    reward_model.run(_config(easy_pairs, out, trainable=trainable, ensemble_size=members, learning_rate=lr))
    manifest = json.loads((out / "reward_models.json").read_text())
    assert len(manifest["members"]) == members
    prompts = [[{"role": "user", "content": f"Tell me about item {i}."}] for i in range(6)]
    replies = ["Sure! here is a helpful answer.", "No.", "Maybe later, when I have looked it up properly.", "ok",
               "Certainly, gladly, and at some length too.", "Never."]
    together = RewardScorer([str(out)]).score(prompts, replies)
    for j, member in enumerate(manifest["members"]):
        directory = out / member["path"]
        length_head = load_file(str(out / member["length_head"]))["weight"]
        model = AutoModelForSequenceClassification.from_pretrained(directory)  # plain transformers
        assert length_head.shape == model.score.weight.shape
        scorer = RewardScorer([str(directory)])
        ids = torch.tensor(scorer.tokenize(prompts, replies)[0:1])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, 0]
            hidden = pool_last(model.model(input_ids=ids).last_hidden_state, torch.ones_like(ids))[0]
        assert torch.allclose(logits, scorer.score(prompts[:1], replies[:1])[0, 0], atol=1e-5)
        assert torch.allclose(logits, together[j, 0], atol=1e-5)
        # the export is r_quality alone: the length head's share is not in it
        r_length = hidden @ length_head[0]
        assert r_length.abs() > 1e-3
        assert torch.allclose(logits, hidden @ model.score.weight[0], atol=1e-5)
        assert not torch.allclose(logits, logits + r_length, atol=1e-4)
    # both terms are in the objective: training lowered them (logged as the mean over members)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    terms = [(m["length_loss"], m["orthogonal_loss"]) for m in logged if "length_loss" in m]
    assert len(terms) == 12
    first, last = np.mean(terms[:3], axis=0), np.mean(terms[-3:], axis=0)
    print(trainable, "length, orthogonal terms: first 3 steps", first, "last 3", last)
    assert last[0] < first[0] and last[1] < first[1]


def _cli(args: dict, env_extra=None):
    argv = [sys.executable, "-m", "rlhf_lab.cli", "train-rm"]
    for k, v in args.items():
        argv += [f"--{k}", str(v)]
    return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env_extra or {})},
                          timeout=600)


def test_length_head_flag_it_cannot_combine_with_is_one_line_exit_2(easy_pairs, tmp_path, capsys, monkeypatch):
    def no_model(*_args, **_kwargs):
        raise AssertionError("a model was loaded before the flags were checked")

    monkeypatch.setattr(reward_model, "load_reward_backbone", no_model)
    base = ["train-rm", "--model_name", "tiny-random", "--dataset", easy_pairs, "--output_dir", str(tmp_path / "x")]
    for extra, flag in ((["--length_head", "true", "--per_device_train_batch_size", "1"], "per_device_train_batch_size"),
                        (["--length_loss_weight", "0.5"], "length_loss_weight"),
                        (["--length_head", "true", "--orthogonal_loss_weight", "-1"], "orthogonal_loss_weight")):
        assert cli.main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and flag in err and "Traceback" not in err, err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_killed_length_head_run_resumes_exactly(easy_pairs, tmp_path):
    """Kill after the step-6 checkpoint, resume: the same exported quality and length heads as a straight run."""
    common = dict(model_name="tiny-random", dataset=easy_pairs, eval_dataset=easy_pairs, eval_limit=16, max_steps=8,
                  save_steps=3, eval_steps=2, per_device_train_batch_size=4, progress="false", trainable="top:1",
                  ensemble_size=2, learning_rate=3e-3, length_head="true", length_loss_weight=0.5)
    straight = _cli({**common, "output_dir": tmp_path / "a"})
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = _cli({**common, "output_dir": tmp_path / "b"}, {"RLHF_LAB_FAULT": "after_save:6"})
    assert killed.returncode == -9
    resumed = _cli({**common, "output_dir": tmp_path / "b", "resume": "true"})
    assert resumed.returncode == 0 and "resumed from" in resumed.stderr, resumed.stderr[-2000:]
    manifest = json.loads((tmp_path / "a" / "reward_models.json").read_text())
    assert manifest == json.loads((tmp_path / "b" / "reward_models.json").read_text())
    for member in manifest["members"]:
        for name in (f"{member['path']}/model.safetensors", member["length_head"]):
            a, b = load_file(str(tmp_path / "a" / name)), load_file(str(tmp_path / "b" / name))
            assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    logged = [[json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
              for run in ("a", "b")]
    terms = [{m["step"]: m["length_loss"] for m in log if "length_loss" in m} for log in logged]
    assert len(terms[0]) == 8 and all(abs(terms[0][s] - terms[1][s]) < 1e-6 for s in terms[0])


def test_held_out_summary_prints_the_longer_preferred_gap_and_accuracy_by_length_bin(easy_pairs, tmp_path, capsys):
    """Issue #20 item 2: train-rm's held-out summary carries the RM − humans longer-preferred gap with its CI and
    the accuracy per length-difference bin — the numbers of held_out_metrics.json (as eval-rm prints them)."""
    out = tmp_path / "rm"
    reward_model.run(_config(easy_pairs, out, trainable="head", learning_rate=3e-2, max_steps=4, length_head=False,
                             test_dataset=easy_pairs, test_limit=40))
    err = capsys.readouterr().err
    test = json.loads((out / "held_out_metrics.json").read_text())["test"]["members"]["seed-3"]
    gap = next(line for line in err.splitlines() if line.startswith("train-rm: test: RM − humans"))
    assert f"{test['longer_preferred_gap']:+.3f} (95% CI [{test['longer_preferred_gap_ci_low']:+.3f}, " \
           f"{test['longer_preferred_gap_ci_high']:+.3f}], {test['longer_preferred_gap_pairs']} pairs)" in gap
    bins = next(line for line in err.splitlines() if line.startswith("train-rm: test: accuracy by len"))
    counts = {k.split("/", 1)[1]: v for k, v in test.items() if k.startswith("pairs_by_length_diff/")}
    assert sum(counts.values()) == 40 and all(f"{label}: " in bins and f"(n={n})" in bins for label, n in counts.items())


@pytest.mark.slow  # launches bash (no model, no python: seconds)
def test_shift_test_script_runs_the_fixed_grid_with_valid_flags(tmp_path):
    """docs/shift_test.sh with `echo` for rlhf-lab: every command it would run parses and validates as a config
    of its verb, and they are the fixed grid — 5 treatments × 3 seeds of train-rm, then one eval-rm per judged split
    scoring all 15 models on the same pairs (one trunk pass)."""
    import importlib

    from rlhf_lab.cli import VERBS
    from rlhf_lab.config import parse_config_and_keys

    script = Path(__file__).parent.parent / "docs" / "shift_test.sh"
    done = subprocess.run(["bash", str(script), str(tmp_path / "out"), "echo"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    calls = []
    for line in done.stdout.splitlines():
        if line.startswith(("train-rm ", "eval-rm ")):
            verb, *rest = line.split()
            module, name, _ = VERBS[verb]
            config, _ = parse_config_and_keys(getattr(importlib.import_module(module), name), rest, verb)
            calls.append((verb, config))
    trains = [c for verb, c in calls if verb == "train-rm"]
    assert len(trains) == 15 and sorted(c.seed for c in trains) == [0] * 5 + [1] * 5 + [2] * 5
    assert sum(c.length_head for c in trains) == 6 and sum(c.balance_len for c in trains) == 6
    assert sum(c.rand_ratio == 0.25 for c in trains) == 3 and all(c.trainable == "head" for c in trains)
    assert len({c.output_dir for c in trains}) == 15
    evals = [c for verb, c in calls if verb == "eval-rm"]
    assert len(evals) == 3
    trained = {str(Path(c.output_dir) / "model") for c in trains}
    for c in evals:
        assert set(c.model_name.split(",")) == trained and c.limit == 400
    assert sorted({Path(c.dataset).name for c in evals}) == ["harmless-base-test.jsonl.gz",
                                                             "helpful-rejection-sampled-test.jsonl.gz",
                                                             "hh-rlhf:helpful-base"]


# ---- a set whose label is pure length --------------------------------------------------------------------------


def _pure_length_pairs(path, n, seed):
    """Replies of random filler words; the chosen one is always 4–12 words longer: length is the only signal."""
    rng = random.Random(seed)
    words = ["apple", "river", "stone", "cloud", "green", "paper", "light", "table", "music", "north", "glass", "wood"]
    rows = []
    for i in range(n):
        short = rng.randint(2, 14)
        long = short + rng.randint(4, 12)
        rows.append({"prompt": f"Say something, {rng.choice(words)} {i}.",
                     "chosen": " ".join(rng.choice(words) for _ in range(long)),
                     "rejected": " ".join(rng.choice(words) for _ in range(short))})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_on_pure_length_labels_the_quality_head_learns_nothing_while_a_plain_head_learns_length(tmp_path):
    train = _pure_length_pairs(tmp_path / "train.jsonl", 256, seed=1)
    test = _pure_length_pairs(tmp_path / "test.jsonl", 200, seed=2)
    results = {}
    for name, length_head in (("plain", False), ("odin", True)):
        out = tmp_path / name
        reward_model.run(make_config(reward_model.RewardModelConfig, dict(
            model_name="tiny-random", dataset=train, split="all", output_dir=str(out), eval_dataset=train,
            eval_limit=64, test_dataset=test, trainable="head", learning_rate=3e-2, max_steps=96,
            per_device_train_batch_size=16, eval_steps=96, progress=False, seed=0, length_head=length_head)))
        results[name] = json.loads((out / "held_out_metrics.json").read_text())["test"]["members"]["seed-0"]
    n = 200
    se = math.sqrt(0.25 / n)  # SE of an accuracy of 0.5 on n pairs
    plain, odin = results["plain"], results["odin"]
    print({k: (plain[k], odin[k]) for k in ("accuracy", "rm_longer_preferred_rate", "length_reward_corr_global")})
    assert plain["accuracy"] >= 0.85  # a plain head learns length
    assert abs(odin["accuracy"] - 0.5) <= 3 * se  # the quality head: chance, within 3 SE (±0.106 at n = 200)
    assert plain["accuracy"] - odin["accuracy"] >= 0.25
