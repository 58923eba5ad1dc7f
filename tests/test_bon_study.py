"""bon-study: gold labelling of the policy's own answers, the overoptimization verdict, and the whole study on
tiny-random (sample → gold → proxies → best-of-n) producing consistent files."""

import json
import math
import random

import numpy as np
import pytest

from rlhf_lab.config import make_config
from rlhf_lab.eval.bon import bon_estimate, bon_per_prompt, curve_from_per_prompt
from rlhf_lab.eval.findings import read_findings
from rlhf_lab.eval.paired import split_halves
from rlhf_lab.io import read_jsonl
from rlhf_lab.recipes import bon_study
from rlhf_lab.rewards.ensemble import combine_scores
from rlhf_lab.rewards.scorer import RewardScorer


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


def test_flip_labels_swaps_the_given_share_and_leaves_the_rest():
    pairs = [{"prompt": "q", "chosen": f"good{i}", "rejected": f"bad{i}"} for i in range(4000)]
    flipped, count = bon_study.flip_labels(pairs, 0.25, random.Random(2))
    swapped = [p["chosen"].startswith("bad") for p in flipped]
    assert sum(swapped) == count and abs(count / 4000 - 0.25) < 0.025
    assert all(p["chosen"] == f"good{i}" for i, p in enumerate(flipped) if not swapped[i])
    assert bon_study.flip_labels(pairs, 0.0, random.Random(2)) == (pairs, 0)


def test_proxy_accuracy_se_by_hand():
    results = {"eval/accuracy": 0.7, "eval/accuracy/member_0": 0.65, "eval/accuracy/member_1": 0.75}
    accuracy = bon_study.proxy_accuracy(results, 200)
    assert accuracy["se"] == pytest.approx(math.sqrt(0.7 * 0.3 / 200))
    assert accuracy["members"]["member_0"]["se"] == pytest.approx(math.sqrt(0.65 * 0.35 / 200))
    assert bon_study.proxy_accuracy({"eval/accuracy/member_0": 0.6, "eval/accuracy/member_1": 0.8}, 100)["mean"] \
        == pytest.approx(0.7)
    assert bon_study.accuracy_words(accuracy) == "0.700 ± 0.032 (SE; members 0.65–0.75)"


def test_overoptimization_verdict_raw_fields_by_hand():
    """The raw call from the curve alone (all prompts): peak, drop, gold_fell, the unpaired SE. Without per-prompt
    values there is no paired test, so nothing is called overoptimized."""
    rising = [{"n": n, "proxy_score": p, "gold_score": g} for n, p, g in [(1, 0, 0), (2, 1, 0.5), (4, 2, 0.8)]]
    v = bon_study.overoptimization_verdict(rising)
    assert not v["gold_fell"] and v["gold_peak_n"] == 4 and v["gold_gain"] == pytest.approx(0.8)
    falling = [{"n": n, "proxy_score": p, "gold_score": g} for n, p, g in [(1, 0, 0), (2, 1, 0.5), (4, 2, 0.2)]]
    v = bon_study.overoptimization_verdict(falling)
    assert v["gold_fell"] and v["gold_peak_n"] == 2 and v["gold_drop_after_peak"] == pytest.approx(0.3)
    assert not v["overoptimized"] and "no paired test" in v["gold_drop_reason"]
    noisy = [{**r, "gold_se": se} for r, se in zip(falling, (0.0, 0.1, 0.05), strict=True)]
    v = bon_study.overoptimization_verdict(noisy)
    assert v["gold_drop_se"] == pytest.approx(math.hypot(0.1, 0.05))
    # a verdict without the paired fields (what an old summary holds) is described from the raw ones
    assert bon_study.verdict_words(v) == f"no: gold fell 0.300, unpaired SE {math.hypot(0.1, 0.05):.3f}"


# Per-prompt gold estimates (P = 6 prompts × n = 1, 2, 4) for the half split by hand. split_halves(6, seed 0):
# selection = prompts 0, 3, 5; test = prompts 1, 2, 4 (tests/test_paired.py checks the permutation).
SELECTION_ROWS = {0: [0.0, 2.0, 1.0], 3: [0.0, 2.0, 0.0], 5: [0.0, 2.0, 1.0]}  # mean (0, 2, 2/3): peak at n = 2


def _table(test_rows):
    gold = np.array([SELECTION_ROWS.get(p) or test_rows[p] for p in range(6)])
    proxy = np.tile([0.0, 1.0, 2.0], (6, 1))  # the proxy rises with n on every prompt
    return curve_from_per_prompt([1, 2, 4], proxy, gold), gold, proxy


def test_half_split_peak_selection_by_hand():
    # test prompts 1, 2, 4 fall from n = 2 to n = 4 by d = (1, 2, 2): mean 5/3, deviations (−2/3, 1/3, 1/3),
    # variance (4/9 + 1/9 + 1/9)/2 = 1/3, SE = √(1/3 / 3) = 1/3, t(2 dof) = 4.302653,
    # CI = 5/3 ± 4.302653/3 = [0.2324, 3.1009]
    rows, gold, proxy = _table({1: [0.0, 2.0, 1.0], 2: [0.0, 3.0, 1.0], 4: [0.0, 2.0, 0.0]})
    v = bon_study.overoptimization_verdict(rows, gold, proxy, seed=0, bootstrap=2000)
    assert v["gold_peak_n_selected"] == 2 and v["held_out_prompts"] == 3 and v["max_n"] == 4
    assert v["gold_drop_paired"] == pytest.approx(5 / 3)
    assert v["gold_drop_paired_se"] == pytest.approx(1 / 3)
    assert v["gold_drop_ci_low"] == pytest.approx(5 / 3 - 4.302653 / 3, abs=1e-6)
    assert v["gold_drop_ci_high"] == pytest.approx(5 / 3 + 4.302653 / 3, abs=1e-6)
    # bootstrap: the smallest resampled mean is 1 (all three draws d = 1): the interval is inside [1, 2]
    assert 1.0 <= v["gold_drop_bootstrap_ci_low"] < v["gold_drop_bootstrap_ci_high"] <= 2.0
    assert v["proxy_rise_after_peak"] == pytest.approx(1.0)
    assert v["gold_drop_shown"] and v["overoptimized"]
    assert bon_study.verdict_words(v) == ("OVEROPTIMIZED: held-out gold fall n=2 -> max n +1.667, 95% CI "
                                          "[+0.232, +3.101], shown (3 prompts)")
    # the test prompts instead gain from n = 2 to n = 4: d = (−3, −3, 1), mean −5/3, deviations (−4/3, −4/3,
    # 8/3), variance (16/9 + 16/9 + 64/9)/2 = 16/3, SE = √(16/3 / 3) = 4/3 — not shown. On all six prompts the
    # peak would be n = 4 (means 7/6 at n = 2, 8/6 at n = 4): the selection half alone chose n = 2.
    rows, gold, proxy = _table({1: [0.0, 0.0, 3.0], 2: [0.0, 0.0, 3.0], 4: [0.0, 1.0, 0.0]})
    v = bon_study.overoptimization_verdict(rows, gold, proxy, seed=0)
    assert v["gold_peak_n"] == 4 and v["gold_peak_n_selected"] == 2
    assert v["gold_drop_paired"] == pytest.approx(-5 / 3) and v["gold_drop_paired_se"] == pytest.approx(4 / 3)
    assert not v["gold_drop_shown"] and not v["overoptimized"]
    assert bon_study.verdict_words(v).startswith("no: held-out gold fall n=2 -> max n -1.667, not shown (95% CI")
    # the proxy must still rise past the peak: a flat proxy never counts as overoptimized
    rows, gold, _ = _table({1: [0.0, 2.0, 1.0], 2: [0.0, 3.0, 1.0], 4: [0.0, 2.0, 0.0]})
    flat = np.ones_like(gold)
    v = bon_study.overoptimization_verdict(curve_from_per_prompt([1, 2, 4], flat, gold), gold, flat)
    assert v["gold_drop_shown"] and not v["overoptimized"]
    assert bon_study.verdict_words(v).endswith("proxy did not rise past the peak")


# ----------------------------------------------------------------------------------------------------------
# Synthetic sample banks where the truth is known. P = 64 prompts × N = 64 answers; every prompt has its own
# gold offset u_p (difficulty; it cancels in paired differences). Answer quality q ~ N(0, 1).
#   hackable: 5% of answers carry an exploit the proxy loves (+3) and the gold hates (−HACK_COST = −2):
#             proxy = q + 3·hack, gold = u + q − 2·hack. Small n picks by q (gold rises); large n finds the
#             exploited answers (gold falls while the proxy keeps rising). On 4000 prompts the gold curve at
#             n = 1..64 is (−0.10, 0.33, 0.53, 0.45, 0.10, −0.38, −0.68): peak n = 4, fall ≈ 1.2.
#   honest:   proxy = q + noise, gold = u + q: gold rises with n all the way (no overoptimization).
#   null:     proxy independent of gold: the gold curve is flat in expectation.
# Measured over 200 banks (seeds 0..199): hackable called overoptimized in 200, honest in 0, null in 3 (1.5%).
# (A cost of 1.5 gave 192 of 200 and 18 of 20 on seeds 0..19, with a z interval: too close to the test's bar, so
# the cost is 2.)
# ----------------------------------------------------------------------------------------------------------
BANK_NS = [1, 2, 4, 8, 16, 32, 64]
HACK_COST = 2.0


def _bank(kind, seed, P=64, N=64):
    rng = np.random.default_rng(seed)
    offset, quality = rng.normal(size=(P, 1)), rng.normal(size=(P, N))
    if kind == "hackable":
        hack = rng.random(size=(P, N)) < 0.05
        return quality + 3.0 * hack, offset + quality - HACK_COST * hack
    if kind == "honest":
        return quality + rng.normal(size=(P, N)), offset + quality
    return rng.normal(size=(P, N)), offset + quality


def _called(kind, seed):
    proxy, gold = _bank(kind, seed)
    ns, proxy_pp, gold_pp = bon_per_prompt(proxy, gold, BANK_NS)
    rows = curve_from_per_prompt(ns, proxy_pp, gold_pp)
    return bon_study.overoptimization_verdict(rows, gold_pp, proxy_pp, seed=seed, bootstrap=1000)["overoptimized"]


def test_verdicts_on_synthetic_banks_with_known_truth():
    calls = {kind: sum(_called(kind, seed) for seed in range(20)) for kind in ("hackable", "honest", "null")}
    assert calls["hackable"] >= 18, calls  # seeds 0..19: 20 of 20
    assert calls["honest"] <= 2, calls  # 0 of 20
    assert calls["null"] <= 2, calls  # 0 of 20


def _ensemble_bank(kind, seed, P=64, N=64, k=4):
    """k members = the quality seen through independent noise (σ = 1.5): averaging members ranks by quality
    better, so the mean ensemble truly keeps more gold at large n. Null: the members share a signal that is
    independent of the gold, so no objective can keep more gold than another."""
    rng = np.random.default_rng(seed)
    offset, quality = rng.normal(size=(P, 1)), rng.normal(size=(P, N))
    noise = rng.normal(size=(k, P, N)) * 1.5
    signal = quality if kind == "better" else rng.normal(size=(P, N))
    return signal[None] + noise, offset + quality


def _comparisons(kind, seed):
    members, gold = _ensemble_bank(kind, seed)
    per_prompt = {f"member_{j}": bon_per_prompt(members[j], gold, BANK_NS)[2] for j in range(len(members))}
    for objective, weight in (("mean", 0.0), ("WCO", 0.0), ("UWO", 0.5)):
        per_prompt[f"ensemble_{objective}"] = bon_per_prompt(combine_scores(members, objective, weight), gold,
                                                             BANK_NS)[2]
    return bon_study.ensemble_comparisons(BANK_NS, per_prompt, [f"member_{j}" for j in range(len(members))],
                                          ["ensemble_mean", "ensemble_WCO", "ensemble_UWO"], bootstrap=1000,
                                          seed=seed)


def test_ensemble_comparison_rows_by_hand():
    gold = {"member_a": np.array([[0.0, 1.0], [0.0, 2.0], [0.0, 0.0]]),
            "member_b": np.array([[0.0, 3.0], [0.0, 0.0], [0.0, 2.0]]),
            "ensemble_mean": np.array([[0.0, 3.0], [0.0, 2.0], [0.0, 2.0]])}
    rows = bon_study.ensemble_comparisons([1, 4], gold, ["member_a", "member_b"], ["ensemble_mean"], bootstrap=0)
    assert [(r["a"], r["b"], r["n"]) for r in rows] == [("ensemble_mean", "members_mean", 1),
                                                        ("ensemble_mean", "members_mean", 4)]
    # n = 4: members' mean (2, 1, 1), d = (1, 1, 1): mean 1, SE 0, shown; n = 1: d = 0, not shown
    assert rows[1]["gold_diff"] == pytest.approx(1.0) and rows[1]["se"] == 0.0 and rows[1]["shown"]
    assert rows[0]["gold_diff"] == 0.0 and not rows[0]["shown"]
    assert set(rows[0]) >= {"a", "b", "n", "gold_diff", "se", "ci_low", "ci_high", "shown"}
    assert bon_study.comparison_words(rows[1]) == "- members' mean at n=4: gold +1.000, 95% CI [+1.000, +1.000], shown"


def test_ensembles_keep_more_gold_than_their_members_and_a_null_shows_nothing():
    """At the largest n over 20 banks each: 'better' shown for every objective in >= 18 (seeds 0..19: 20, 20, 20),
    the null not shown in >= 18 per objective (seeds 0..19: 0, 1, 1 shown; over 100 banks 3, 6, 3 shown, about
    the nominal 5%; 'better' 100 of 100 for each)."""
    shown = {"better": {}, "null": {}}
    for kind, counts in shown.items():
        for seed in range(20):
            for row in _comparisons(kind, seed):
                if row["n"] == BANK_NS[-1]:
                    # better: shown in the right direction; null: shown in either direction is a false call
                    right = row["gold_diff"] > 0 or kind == "null"
                    counts[row["a"]] = counts.get(row["a"], 0) + int(row["shown"] and right)
    assert all(shown["better"][label] >= 18 for label in ("ensemble_mean", "ensemble_WCO", "ensemble_UWO")), shown
    assert all(count <= 2 for count in shown["null"].values()), shown


def test_member_fall_pools_the_members_held_out_falls_by_hand():
    """Finding (a): each member's peak on the selection half, the fall to the largest n on the test half,
    averaged over members per prompt, then a paired test against 0."""
    ns = [1, 2, 4]
    select, test = split_halves(4, 0)
    gold = {"member_a": np.zeros((4, 3)), "member_b": np.zeros((4, 3))}
    proxy = {"member_a": np.tile([0.0, 1.0, 2.0], (4, 1)), "member_b": np.tile([0.0, 1.0, 2.0], (4, 1))}
    gold["member_a"][select] = [0.0, 1.0, 0.0]  # a peaks at n = 2 on the selection half
    gold["member_b"][select] = [0.0, 0.0, 1.0]  # b peaks at n = 4 (the largest n): it contributes no fall
    gold["member_a"][test] = [[0.0, 2.0, 0.5], [0.0, 3.0, 0.5]]  # falls 1.5 and 2.5 past n = 2
    gold["member_b"][test] = [[0.0, 5.0, 1.0], [0.0, 0.0, 1.0]]  # its own n = 2 is not its peak: ignored
    result = bon_study.member_fall(ns, gold, proxy, ["member_a", "member_b"], 0, bootstrap=0)
    assert result["peaks"] == {"member_a": 2, "member_b": 4}
    # per test prompt: (1.5 + 0) / 2 = 0.75 and (2.5 + 0) / 2 = 1.25 → mean 1.0, SE = std(ddof 1)/√2 = 0.25
    assert result["fall"]["diff"] == pytest.approx(1.0) and result["fall"]["se"] == pytest.approx(0.25)
    assert result["fall"]["n_prompts"] == 2
    assert result["proxy_rise"] == pytest.approx((1.0 + 0.0) / 2)  # a rises 2 − 1, b rises 2 − 2
    findings = bon_study.study_findings(ns, result, [], 4, {"curves": "bon/plots/bon.png"})
    assert [f.key for f in findings] == ["bon/single_proxy_overoptimized"]
    # t with 1 degree of freedom is 12.7: 1.0 ± 3.2 crosses 0, so not shown
    assert not findings[0].shown and findings[0].ci_low < 0 < findings[0].ci_high


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
    # the held-out pairs carry the gold's own labels (the proxies' accuracy is agreement with the gold); only the
    # training pairs are flipped
    generated = read_jsonl(out / "generations_train.jsonl")
    gold_scorer = RewardScorer([tiny_gold_rm])
    held_out = read_jsonl(out / "proxy_pairs" / "eval.jsonl")
    chosen = gold_scorer.score([p["prompt"] for p in held_out], [p["chosen"][0]["content"] for p in held_out])[0]
    rejected = gold_scorer.score([p["prompt"] for p in held_out], [p["rejected"][0]["content"] for p in held_out])[0]
    assert len(held_out) == study["proxy_eval_pairs"] and bool((chosen > rejected).all())
    assert len(generated) == 24
    a, n = study["proxy_eval_accuracy"], study["proxy_eval_pairs"]
    assert study["proxy_eval_accuracy_se"] == pytest.approx(math.sqrt(a * (1 - a) / n))
    # the gold and the proxies (heads on tiny-random's trunk) were scored in one scorer: the gold column equals
    # the gold scored alone, shifted
    alone = gold_scorer.score([r["messages"] for r in scored for _ in r["responses"]],
                              [x for r in scored for x in r["responses"]])[0].numpy()
    assert np.allclose(gold.ravel(), alone - alone.mean(), atol=1e-5)
    assert (out / "bon" / "plots" / "bon.png").stat().st_size > 0
    assert set(study["timings_s"]) == {"sample", "gold", "proxies", "score", "bon"}
    # paired verdicts: the peak chosen on the selection half, its fall tested on the test half
    select, test = split_halves(6, 0)
    assert study["peak_selection"]["selection_prompts"] == select.tolist()
    assert study["peak_selection"]["test_prompts"] == test.tolist()
    gold_pp = bon_per_prompt(proxy[0], gold, ns)[2]
    v = study["verdicts"]["member_proxy_0"]
    chosen = int(np.argmax(gold_pp[select].mean(axis=0)))
    assert v["gold_peak_n_selected"] == ns[chosen] and v["held_out_prompts"] == 3
    assert v["gold_drop_paired"] == pytest.approx(float(np.mean(gold_pp[test, chosen] - gold_pp[test, -1])))
    assert {"gold_drop_paired_se", "gold_drop_ci_low", "gold_drop_ci_high", "gold_fell"} <= set(v)
    # comparisons: 3 ensemble objectives × 4 n, each against the members' mean
    rows = study["comparisons"]
    assert [(r["a"], r["n"]) for r in rows] == [(a, n) for a in ("ensemble_mean", "ensemble_WCO",
                                                                "ensemble_UWO-0.5") for n in ns]
    members_mean = np.mean([bon_per_prompt(proxy[j], gold, ns)[2] for j in range(3)], axis=0)
    wco = bon_per_prompt(proxy.min(axis=0), gold, ns)[2]
    assert rows[4 + 3]["gold_diff"] == pytest.approx(float(np.mean(wco[:, 3] - members_mean[:, 3])))
    # findings.json: (a) pooled over the members, (b) one per ensemble objective at the largest n
    findings = read_findings(out / "findings.json")
    assert [f.key for f in findings] == ["bon/single_proxy_overoptimized", "bon/ensemble_beats_members/mean",
                                         "bon/ensemble_beats_members/WCO", "bon/ensemble_beats_members/UWO-0.5"]
    pooled = np.mean([bon_per_prompt(proxy[j], gold, ns)[2][test, ns.index(study["member_fall"]["peaks"][
        f"member_proxy_{j}"])] - bon_per_prompt(proxy[j], gold, ns)[2][test, -1] for j in range(3)], axis=0)
    assert findings[0].estimate == pytest.approx(float(pooled.mean())) and findings[0].n_prompts == 3
    assert findings[2].estimate == pytest.approx(rows[4 + 3]["gold_diff"]) and findings[2].n_prompts == 6
    assert (out / findings[2].plot).stat().st_size > 0 and (out / findings[0].plot).is_file()
    assert study["findings"] == [f.sentence() for f in findings]


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


def test_a_study_the_data_cannot_support_stops_before_sampling(tiny_gold_rm, tmp_path, capsys, monkeypatch):
    """More eval prompts asked than the eval split has under the length cap: one line naming the shortfall, exit 2,
    and no model is loaded (sampling never starts)."""
    from rlhf_lab import cli

    def no_model(*args, **kwargs):
        raise AssertionError("the policy was loaded")

    monkeypatch.setattr(bon_study, "load_causal_lm", no_model)
    code = cli.main(["bon-study", "--model_name", "tiny-random", "--gold_model_name", tiny_gold_rm,
                     "--output_dir", str(tmp_path / "s"), "--num_train_prompts", "4", "--num_eval_prompts", "100",
                     "--max_prompt_tokens", "64", "--n_samples", "4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("rlhf-lab: error: --num_eval_prompts 100: only ") and "at most 64 tokens" in err[0]


def test_samples_from_reuses_a_bank_and_its_prefix_is_what_a_smaller_run_samples(tiny_gold_rm, tmp_path,
                                                                                 monkeypatch, capsys):
    """--samples_from: the proxies vary on one sample bank. A smaller run's prompts and answers are the first ones
    of the bank (each answer has its own random stream), so reusing gives the answers sampling would give; the
    policy is never loaded."""
    common = dict(model_name="tiny-random", gold_model_name=tiny_gold_rm, num_train_prompts=12, train_samples=4,
                  max_new_tokens=6, ensemble_size=2, proxy_trainable="head", proxy_learning_rate=1e-2,
                  max_prompt_tokens=128, progress=False, seed=3)
    bank = tmp_path / "bank"
    bon_study.run(make_config(bon_study.BonStudyConfig, dict(common, output_dir=str(bank), num_eval_prompts=5,
                                                             n_samples=8)))
    fresh = tmp_path / "fresh"
    bon_study.run(make_config(bon_study.BonStudyConfig, dict(common, output_dir=str(fresh), num_train_prompts=10,
                                                             train_samples=2, num_eval_prompts=4, n_samples=4)))

    def no_model(*args, **kwargs):
        raise AssertionError("the policy was loaded")

    monkeypatch.setattr(bon_study, "load_causal_lm", no_model)
    reused = tmp_path / "reused"
    study = bon_study.run(make_config(bon_study.BonStudyConfig, dict(
        common, output_dir=str(reused), num_train_prompts=10, train_samples=2, num_eval_prompts=4, n_samples=4,
        label_noise=0.0, samples_from=str(bank))))
    log = capsys.readouterr().out
    assert "reusing 20 train and 16 eval answers" in log and f"the gold's scores from {bank}" in log
    for name in ("train", "eval"):
        assert read_jsonl(reused / f"generations_{name}.jsonl") == read_jsonl(fresh / f"generations_{name}.jsonl")
    assert study["N"] == 4 and study["label_pairs"]["flipped"] == 0
    # the gold's eval scores come from the bank (its first 4 × 4, shifted anew): equal to scoring them here
    gold = np.array([r["scores"]["gold"] for r in read_jsonl(reused / "scored.jsonl")])
    scored_fresh = np.array([r["scores"]["gold"] for r in read_jsonl(fresh / "scored.jsonl")])
    assert gold.shape == (4, 4) and abs(gold.mean()) < 1e-9
    assert np.allclose(gold, scored_fresh, atol=1e-5) and study["gold_shift"] == pytest.approx(
        json.loads((fresh / "bon_study.json").read_text())["gold_shift"], abs=1e-5)
    # the bank itself, read in place: its run directory is rewritten with the same answers
    before = read_jsonl(bank / "generations_eval.jsonl")
    bon_study.run(make_config(bon_study.BonStudyConfig, dict(common, output_dir=str(bank), num_eval_prompts=5,
                                                             n_samples=8, samples_from=str(bank))))
    assert read_jsonl(bank / "generations_eval.jsonl") == before


def test_samples_from_refuses_a_bank_sampled_otherwise_before_any_work(tiny_gold_rm, tmp_path, capsys):
    from rlhf_lab import cli

    bank = tmp_path / "bank"
    bank.mkdir()
    (bank / "config.yaml").write_text("command: bon-study\nmodel_name: tiny-random\nmax_new_tokens: 6\nseed: 3\n")
    for name in ("train", "eval"):
        (bank / f"generations_{name}.jsonl").write_text(
            json.dumps({"messages": [{"role": "user", "content": "q"}], "responses": ["a", "b"],
                        "response_tokens": [1, 1], "finished": [True, True]}) + "\n")
    base = ["bon-study", "--model_name", "tiny-random", "--gold_model_name", tiny_gold_rm, "--seed", "3",
            "--output_dir", str(tmp_path / "out"), "--samples_from", str(bank)]
    cases = [(["--max_new_tokens", "8"], "its max_new_tokens is 6, this run's 8: its answers are not the ones"),
             (["--max_new_tokens", "6", "--num_train_prompts", "1", "--train_samples", "2"],
              "generations_eval.jsonl has 1 prompts × 2 answers; --num_eval_prompts 32 × --n_samples 32 needs more"),
             (["--max_new_tokens", "6", "--num_train_prompts", "1", "--train_samples", "2", "--num_eval_prompts", "1",
               "--n_samples", "2"], "generations_train.jsonl line 1 answers another prompt than this run's train")]
    for flags, message in cases:
        assert cli.main(base + flags) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out" / "generations_eval.jsonl").exists()
    (bank / "generations_train.jsonl").unlink()
    assert cli.main(base) == 2
    assert "no generations_train.jsonl (not a finished bon-study run directory)" in capsys.readouterr().err
