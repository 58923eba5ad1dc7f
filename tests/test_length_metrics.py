"""Length metrics against numpy hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlhf_lab.data.transforms import balance_length_indices
from rlhf_lab.eval.length import (
    global_length_reward_corr,
    length_balanced_accuracy,
    length_balanced_subset_mask,
    longer_preferred_rate,
    pairwise_accuracy,
    pearson,
    per_prompt_length_reward_corr,
    preference_length_metrics,
    reward_after_length_regression,
    reward_spread,
    rm_longer_preferred_rate,
)

LENGTHS = [[10, 20, 30, 40], [5, 5, 9], [12, 3], [7]]
REWARDS = [[0.1, 0.5, 0.4, 0.9], [1.0, -1.0, 2.0], [0.3, 0.3], [4.0]]


def test_pearson_against_numpy():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    assert pearson(x.tolist(), y.tolist()) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    for x, y in (([1.0], [2.0]), ([], []), ([0.1, 0.1, 0.1], [1, 2, 3]), ([1, 2, 3], [5, 5, 5])):
        assert math.isnan(pearson(x, y))
    with pytest.raises(ValueError):
        pearson([1, 2], [1])


def test_per_prompt_and_global_correlation():
    # prompt 0: r defined; prompt 1: r defined; prompt 2: rewards constant -> nan, skipped; prompt 3: one sample.
    expected = np.mean([np.corrcoef(LENGTHS[0], REWARDS[0])[0, 1], np.corrcoef(LENGTHS[1], REWARDS[1])[0, 1]])
    assert per_prompt_length_reward_corr(LENGTHS, REWARDS) == pytest.approx(expected)
    flat_l = [v for g in LENGTHS for v in g]
    flat_r = [v for g in REWARDS for v in g]
    assert global_length_reward_corr(LENGTHS, REWARDS) == pytest.approx(np.corrcoef(flat_l, flat_r)[0, 1])
    assert math.isnan(per_prompt_length_reward_corr([[1], [2, 2]], [[1.0], [3.0, 4.0]]))


def test_reward_spread_against_numpy():
    per_prompt = [np.std(REWARDS[0]), np.std(REWARDS[1]), np.std(REWARDS[2])]  # the one-sample prompt skipped
    expected = np.mean(per_prompt) / np.std([v for g in REWARDS for v in g])
    assert reward_spread(REWARDS) == pytest.approx(expected)
    assert math.isnan(reward_spread([[1.0], [2.0]]))
    assert math.isnan(reward_spread([[1.0, 1.0], [1.0, 1.0]]))


def test_reward_after_length_regression_against_numpy():
    rng = np.random.default_rng(1)
    lengths = rng.integers(5, 200, size=100).astype(float)
    rewards = 0.02 * lengths + rng.normal(size=100)
    fit = reward_after_length_regression(lengths.tolist(), rewards.tolist())
    slope, intercept = np.polyfit(lengths, rewards, 1)
    assert fit.slope == pytest.approx(slope) and fit.intercept == pytest.approx(intercept)
    residuals = rewards - (intercept + slope * lengths)
    assert fit.residuals == pytest.approx(residuals.tolist())
    assert sum(fit.residuals) == pytest.approx(0.0, abs=1e-9)
    assert fit.r2 == pytest.approx(np.corrcoef(lengths, rewards)[0, 1] ** 2)
    assert fit.r2 == pytest.approx(1 - np.var(residuals) / np.var(rewards))
    # constant lengths explain nothing; constant rewards have no variance to explain
    flat = reward_after_length_regression([3, 3, 3], [1.0, 2.0, 6.0])
    assert flat.slope == 0.0 and flat.r2 == 0.0 and flat.residuals == pytest.approx([-2.0, -1.0, 3.0])
    assert math.isnan(reward_after_length_regression([1, 2, 3], [2.0, 2.0, 2.0]).r2)
    assert math.isnan(reward_after_length_regression([1], [2.0]).slope)


def test_pairwise_accuracy_with_ties():
    # right, wrong, tie, right -> (1 + 0 + 0.5 + 1) / 4
    assert pairwise_accuracy([1.0, 0.0, 0.5, 3.0], [0.0, 1.0, 0.5, -1.0]) == pytest.approx(0.625)
    assert pairwise_accuracy([2.0] * 5, [2.0] * 5) == 0.5
    assert math.isnan(pairwise_accuracy([], []))


def test_longer_preferred_rates():
    len_c = [10, 5, 8, 8, 20]
    len_r = [5, 10, 8, 3, 1]
    # different lengths: pairs 0, 1, 3, 4; chosen longer in 0, 3, 4 -> 3/4
    assert longer_preferred_rate(len_c, len_r) == pytest.approx(0.75)
    r_c = [1.0, 1.0, 9.0, 0.0, 2.0]
    r_r = [0.0, 0.0, 0.0, 1.0, 2.0]
    # the longer reply's reward wins in pair 0 (chosen longer, r_c > r_r): 1; pair 1 (rejected longer, r_c > r_r): 0;
    # pair 3 (chosen longer, r_c < r_r): 0; pair 4 (tie): 0.5 -> 1.5 / 4
    assert rm_longer_preferred_rate(len_c, len_r, r_c, r_r) == pytest.approx(0.375)
    assert math.isnan(longer_preferred_rate([3, 4], [3, 4]))
    assert math.isnan(rm_longer_preferred_rate([3], [3], [1.0], [0.0]))


def test_length_balanced_subset_and_accuracy():
    rng = np.random.default_rng(2)
    len_r = rng.integers(10, 150, size=300)
    len_c = len_r + rng.integers(-30, 90, size=300)
    mask = length_balanced_subset_mask(len_c.tolist(), len_r.tolist(), seed=5)
    assert [i for i, m in enumerate(mask) if m] == balance_length_indices(len_c.tolist(), len_r.tolist(), seed=5)
    # An RM that scores length alone is as accurate as the data is length-biased, but at chance
    # (up to the equal-length pairs) on the balanced subset.
    r_c, r_r = len_c.astype(float).tolist(), len_r.astype(float).tolist()
    balanced = length_balanced_accuracy(r_c, r_r, len_c.tolist(), len_r.tolist(), seed=5)
    assert pairwise_accuracy(r_c, r_r) == pytest.approx(longer_preferred_rate(len_c.tolist(), len_r.tolist()), abs=0.02)
    assert pairwise_accuracy(r_c, r_r) > 0.65
    assert balanced == pytest.approx(0.5, abs=0.02)
    metrics = preference_length_metrics(r_c, r_r, len_c.tolist(), len_r.tolist(), seed=5)
    assert metrics["accuracy_length_balanced"] == balanced
    assert metrics["length_balanced_pairs"] == sum(mask)
    assert metrics["rm_longer_preferred_rate"] == 1.0
    assert metrics["longer_preferred_rate"] == pytest.approx(longer_preferred_rate(len_c.tolist(), len_r.tolist()))


def test_longer_preferred_gap_is_the_paired_rate_difference_by_hand():
    from rlhf_lab.eval.length import longer_preferred_gap

    # pairs (len_c, len_r, r_c, r_r): the 3rd has equal lengths and is left out
    len_c, len_r = [10, 5, 7, 20, 3], [4, 9, 7, 2, 8]
    r_c, r_r = [1.0, 0.0, 5.0, 2.0, 1.0], [0.0, 1.0, 5.0, 2.0, 3.0]
    # rm_long: pair 1 longer=chosen, r_c > r_r → 1; pair 2 longer=rejected, r_r > r_c → 1; pair 4 tie → ½;
    #          pair 5 longer=rejected, r_r > r_c → 1.   human_long: 1, 0, 1, 0
    # d = (0, 1, −½, 1): mean 0.375, SE = std(d, ddof 1)/2
    d = np.array([0.0, 1.0, -0.5, 1.0])
    gap = longer_preferred_gap(len_c, len_r, r_c, r_r, bootstrap=0)
    assert gap["diff"] == pytest.approx(0.375) and gap["n_prompts"] == 4
    assert gap["se"] == pytest.approx(d.std(ddof=1) / 2)
    assert gap["diff"] == pytest.approx(rm_longer_preferred_rate(len_c, len_r, r_c, r_r)
                                        - longer_preferred_rate(len_c, len_r))
    assert gap["ci_low"] == pytest.approx(0.375 - 3.182446 * gap["se"], abs=1e-5)  # t, 3 dof


def test_accuracy_by_length_difference_bins_by_hand():
    from rlhf_lab.eval.length import accuracy_by_length_difference

    # Δ = len_c − len_r: −100, −64, −20, −16, 0, 16, 40, 64, 200
    len_c = [0, 0, 0, 0, 50, 16, 40, 64, 200]
    len_r = [100, 64, 20, 16, 50, 0, 0, 0, 0]
    r_c = [1, 0, 1, 1, 0, 1, 1, 1, 1]
    r_r = [0, 1, 0, 1, 1, 0, 0, 0, 0]
    bins = accuracy_by_length_difference(r_c, r_r, len_c, len_r)
    assert bins == {"<=-64": (0.5, 2), "(-64,-16)": (1.0, 1), "[-16,16]": (0.5, 3), "(16,64)": (1.0, 1),
                    ">=64": (1.0, 2)}


def _synthetic_gain(per_length: float, offset: float, prompts: int = 60, seed: int = 0):
    """Per prompt 2 model and 2 baseline responses; the model is ~8 tokens longer; reward = per_length·L
    + offset (model only) + noise."""
    rng = np.random.default_rng(seed)
    model_l = [list(rng.integers(20, 40, 2) + 8.0) for _ in range(prompts)]
    base_l = [list(rng.integers(20, 40, 2) * 1.0) for _ in range(prompts)]
    model_r = [[per_length * x + offset + rng.normal(0, 0.5) for x in ls] for ls in model_l]
    base_r = [[per_length * x + rng.normal(0, 0.5) for x in ls] for ls in base_l]
    return model_l, model_r, base_l, base_r


def test_length_share_of_gain_point_estimate_and_bootstrap_by_hand():
    from rlhf_lab.eval.length import length_share_of_gain, reward_after_length_regression

    model_l, model_r, base_l, base_r = _synthetic_gain(0.1, 0.3, prompts=12)
    result = length_share_of_gain(model_l, model_r, base_l, base_r, bootstrap=50, seed=3)
    def within(ml, mr, bl, br):  # the slope fitted with a separate intercept per set, by centring each set
        x = np.concatenate([np.asarray(ml) - np.mean(ml), np.asarray(bl) - np.mean(bl)])
        y = np.concatenate([np.asarray(mr) - np.mean(mr), np.asarray(br) - np.mean(br)])
        return reward_after_length_regression(x, y).slope

    flat = [np.concatenate(v) for v in (model_l, model_r, base_l, base_r)]
    slope = within(*flat)
    assert result["slope"] == pytest.approx(slope)
    gain = np.mean(np.concatenate(model_r)) - np.mean(np.concatenate(base_r))
    explained = slope * (np.mean(np.concatenate(model_l)) - np.mean(np.concatenate(base_l)))
    assert result["gain"] == pytest.approx(gain) and result["explained"] == pytest.approx(explained)
    assert result["after_length"] == pytest.approx(gain - explained)
    assert result["share"] == pytest.approx(explained / gain)
    # the bootstrap, by a loop over the same resamples of the prompts
    draws = np.random.default_rng(3).integers(0, 12, size=(50, 12))
    explained_b = []
    for idx in draws:
        ml, mr = [x for i in idx for x in model_l[i]], [r for i in idx for r in model_r[i]]
        bl, br = [x for i in idx for x in base_l[i]], [r for i in idx for r in base_r[i]]
        b = within(ml, mr, bl, br)
        explained_b.append(b * (np.mean(ml) - np.mean(bl)))
    low, high = np.quantile(explained_b, [0.025, 0.975])
    assert result["explained_ci_low"] == pytest.approx(low) and result["explained_ci_high"] == pytest.approx(high)
    assert result["explained_se"] == pytest.approx(np.std(explained_b, ddof=1))


def test_length_share_of_gain_tells_a_length_gain_from_a_quality_gain():
    from rlhf_lab.eval.length import length_share_of_gain

    only_length = length_share_of_gain(*_synthetic_gain(0.1, 0.0), seed=1)  # the gain is all length
    assert only_length["gain_shown"] and only_length["explained_shown"] and not only_length["after_length_shown"]
    assert only_length["share_ci_low"] < 1.0 < only_length["share_ci_high"]
    # reward ignores length and the model is better and longer: nearly all of the gain is left at equal length
    # (a slope fitted over both sets pooled credits length with 36% of it here: the between-set difference)
    no_length = length_share_of_gain(*_synthetic_gain(0.0, 1.0), seed=1)
    assert no_length["gain_shown"] and no_length["after_length_shown"]
    assert no_length["share_ci_high"] < 0.25 and abs(no_length["slope"]) < 0.02
    null = length_share_of_gain(*_synthetic_gain(0.0, 0.0), seed=1)  # no gain: the share has no interval
    assert not null["gain_shown"] and null["share_ci_low"] is None
