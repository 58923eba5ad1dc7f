"""bon-study: gold labelling of the policy's own answers, the overoptimization verdict, and the whole study on
tiny-random (sample → gold → proxies → best-of-n) producing consistent files."""

import json
import math
import random

import numpy as np
import pytest

from rlhf_lab.config import make_config
from rlhf_lab.eval.bon import bon_estimate
from rlhf_lab.io import read_jsonl
from rlhf_lab.recipes import bon_study


def _row(answers):
    return {"messages": [{"role": "user", "content": "q"}], "responses": answers}


def test_gold_labelled_pairs_prefer_the_higher_gold_and_skip_ties_and_duplicates():
    rows = [_row(["a", "b", "c", "c", "d", "e"]), _row(["x", "y"])]
    gold = [[0.1, 0.9, 0.5, 0.5, 2.0, 2.0], [3.0, -1.0]]
    pairs, counts = bon_study.gold_labelled_pairs(rows, gold, 0.0, random.Random(0))
    assert counts == {"pairs": 2, "flipped": 0, "skipped_ties": 1, "skipped_identical": 1}
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [("b", "a"), ("x", "y")]
    assert pairs[0]["prompt"] == rows[0]["messages"]


def test_label_noise_flips_the_given_share():
    rows = [_row([f"a{i}", f"b{i}"]) for i in range(4000)]
    gold = [[1.0, 0.0]] * 4000
    pairs, counts = bon_study.gold_labelled_pairs(rows, gold, 0.25, random.Random(1))
    flipped = sum(p["chosen"][0]["content"].startswith("b") for p in pairs)
    assert flipped == counts["flipped"]
    assert abs(flipped / 4000 - 0.25) < 0.025


def test_overoptimization_verdict_by_hand():
    rising = [{"n": n, "proxy_score": p, "gold_score": g} for n, p, g in [(1, 0, 0), (2, 1, 0.5), (4, 2, 0.8)]]
    v = bon_study.overoptimization_verdict(rising)
    assert not v["overoptimized"] and v["gold_peak_n"] == 4 and v["gold_gain"] == pytest.approx(0.8)
    falling = [{"n": n, "proxy_score": p, "gold_score": g} for n, p, g in [(1, 0, 0), (2, 1, 0.5), (4, 2, 0.2)]]
    v = bon_study.overoptimization_verdict(falling)
    assert v["overoptimized"] and v["gold_peak_n"] == 2 and v["gold_drop_after_peak"] == pytest.approx(0.3)
    # the same fall with standard errors: 0.3 > 2·√(0.1² + 0.05²) = 0.224 counts; with 0.2 each (2 SE = 0.566) not
    noisy = [{**r, "gold_se": se} for r, se in zip(falling, (0.0, 0.1, 0.05), strict=True)]
    v = bon_study.overoptimization_verdict(noisy)
    assert v["overoptimized"] and v["gold_drop_se"] == pytest.approx(math.hypot(0.1, 0.05))
    noisier = [{**r, "gold_se": 0.2} for r in falling]
    v = bon_study.overoptimization_verdict(noisier)
    assert v["gold_fell"] and not v["overoptimized"]
    assert bon_study.verdict_words(v) == f"no: gold fell 0.300, within 2 SE (SE {math.hypot(0.2, 0.2):.3f})"


def test_bon_gold_standard_error_is_the_spread_of_per_prompt_curves():
    """gold_se(n) by hand: each prompt's own best-of-n estimate (the exact estimator on that prompt alone), then
    their std (ddof 1) / √P."""
    rng = np.random.default_rng(0)
    proxy, gold = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    rows = bon_estimate(proxy, gold, [1, 2, 4, 8])
    for r in rows:
        alone = [bon_estimate(proxy[p], gold[p], [r["n"]])[0]["gold_score"] for p in range(5)]
        assert r["gold_se"] == pytest.approx(np.std(alone, ddof=1) / math.sqrt(5), rel=1e-12)
        assert r["gold_score"] == pytest.approx(np.mean(alone), rel=1e-12)
    assert bon_estimate(proxy[0], gold[0], [1, 2])[0]["gold_se"] is None  # one prompt: no spread to estimate


def test_bon_study_end_to_end_on_tiny_random(tiny_gold_rm, tmp_path):
    out = tmp_path / "study"
    study = bon_study.run(make_config(bon_study.BonStudyConfig, dict(
        model_name="tiny-random", gold_model_name=tiny_gold_rm, output_dir=str(out), num_train_prompts=24,
        train_samples=4, num_eval_prompts=6, n_samples=8, max_new_tokens=8, ensemble_size=3, label_noise=0.1,
        proxy_trainable="head", proxy_learning_rate=1e-2, max_prompt_tokens=128, progress=False, seed=0)))
    assert set(study["verdicts"]) == {"member_proxy_0", "member_proxy_1", "member_proxy_2", "ensemble_mean",
                                      "ensemble_WCO", "ensemble_UWO-0.5"}
    scored = read_jsonl(out / "scored.jsonl")
    assert len(scored) == 6 and all(len(r["responses"]) == 8 for r in scored)
    # gold is shifted so that the policy's mean gold reward is 0
    gold = np.array([r["scores"]["gold"] for r in scored])
    assert abs(gold.mean()) < 1e-9
    # the curves are the exact estimator over the scored file: recompute member 0 and the WCO ensemble here
    proxy = np.array([[r["scores"][f"proxy_{j}"] for r in scored] for j in range(3)])
    summary = json.loads((out / "bon" / "bon_summary.json").read_text())
    ns = summary["sample_ns"]
    assert ns == [1, 2, 4, 8]
    assert summary["curves"]["member_proxy_0"]["results"] == bon_estimate(proxy[0], gold, ns)
    assert summary["curves"]["ensemble_WCO"]["results"] == bon_estimate(proxy.min(axis=0), gold, ns)
    v = study["verdicts"]["ensemble_mean"]
    assert v["gold_at_n1"] == pytest.approx(0.0, abs=1e-9)  # n = 1 is a random answer: mean gold = 0
    pairs = read_jsonl(out / "proxy_pairs" / "train.jsonl") + read_jsonl(out / "proxy_pairs" / "eval.jsonl")
    assert len(pairs) == study["label_pairs"]["pairs"] <= 24 * 2
    assert (out / "bon" / "plots" / "bon.png").stat().st_size > 0
    assert set(study["timings_s"]) == {"sample", "gold", "proxies", "score", "bon"}


def test_bon_study_normalize_standardises_members_before_combining(tiny_gold_rm, tmp_path):
    """--normalize: every member is standardised by its own eval-set reward mean/std (written to scored.jsonl's
    score_stats from the exported members' configs) before WCO takes the minimum."""
    out = tmp_path / "study"
    bon_study.run(make_config(bon_study.BonStudyConfig, dict(
        model_name="tiny-random", gold_model_name=tiny_gold_rm, output_dir=str(out), num_train_prompts=24,
        train_samples=4, num_eval_prompts=4, n_samples=4, max_new_tokens=8, ensemble_size=2, label_noise=0.1,
        proxy_trainable="head", proxy_learning_rate=1e-2, max_prompt_tokens=128, progress=False, seed=1,
        normalize=True)))
    scored = read_jsonl(out / "scored.jsonl")
    members = json.loads((out / "proxy_rm" / "reward_models.json").read_text())["members"]
    stats = [(m["reward_mean"], m["reward_std"]) for m in members]
    assert scored[0]["score_stats"] == {f"proxy_{j}": {"mean": mu, "std": sd} for j, (mu, sd) in enumerate(stats)}
    gold = np.array([r["scores"]["gold"] for r in scored])
    standard = np.array([[(np.array(r["scores"][f"proxy_{j}"]) - stats[j][0]) / stats[j][1] for r in scored]
                         for j in range(2)])
    summary = json.loads((out / "bon" / "bon_summary.json").read_text())
    assert summary["normalize"] is True
    expected = bon_estimate(standard.min(axis=0), gold, summary["sample_ns"])
    got = summary["curves"]["ensemble_WCO"]["results"]
    assert [r["proxy_score"] for r in got] == pytest.approx([r["proxy_score"] for r in expected], rel=1e-9)
    assert [r["gold_score"] for r in got] == pytest.approx([r["gold_score"] for r in expected], rel=1e-9)
    raw = np.array([[r["scores"][f"proxy_{j}"] for r in scored] for j in range(2)])
    unscaled = bon_estimate(raw.min(axis=0), gold, summary["sample_ns"])
    assert abs(unscaled[-1]["proxy_score"] - got[-1]["proxy_score"]) > 1e-3  # the standardisation did something
