"""Paired statistics (rlhf_lab.eval.paired): SE and intervals against hand computations, the bootstrap against
its analytic spread, the fixed half split, and the edge cases (fewer than 2 prompts, scalars, bad input)."""

import math

import numpy as np
import pytest

from rlhf_lab.eval.paired import (
    bootstrap_mean_interval,
    interval_words,
    normal_quantile,
    paired_difference,
    prompt_means,
    split_halves,
    t_quantile,
)


def test_paired_difference_by_hand():
    # a − b = d = (2, 1, 0, 4, 1): mean 8/5 = 1.6; deviations (0.4, −0.6, −1.6, 2.4, −0.6), squares sum 9.2,
    # variance (ddof 1) 9.2/4 = 2.3, SE = √(2.3/5) = √0.46 = 0.678233; t(4 dof, 97.5%) = 2.776445;
    # CI = 1.6 ± 2.776445 · 0.678233 = 1.6 ± 1.883082 = [−0.283082, 3.483082]: contains 0, not shown
    a, b = [3.0, 5.0, 4.0, 7.0, 6.0], [1.0, 4.0, 4.0, 3.0, 5.0]
    result = paired_difference(a, b, bootstrap=4000, seed=1)
    assert result["diff"] == pytest.approx(1.6)
    assert result["se"] == pytest.approx(math.sqrt(0.46), rel=1e-12)
    assert result["ci_low"] == pytest.approx(1.6 - 2.776445 * 0.678233, abs=1e-5)
    assert result["ci_high"] == pytest.approx(1.6 + 2.776445 * 0.678233, abs=1e-5)
    assert result["n_prompts"] == 5 and result["reason"] is None and result["shown"] is False
    # the bootstrap interval lies in the support of resampled means [min d, max d] and around the mean; it
    # excludes 0 here (the percentile bootstrap is narrow at small P): both must exclude 0 for "shown"
    assert 0.0 < result["bootstrap_ci_low"] < 1.6 < result["bootstrap_ci_high"] <= 4.0
    # 80%: t(4 dof, 90%) = 1.533206, CI = 1.6 ± 1.039878 = [0.560, 2.640]; with the normal interval alone shown
    narrow = paired_difference(a, b, confidence=0.80, bootstrap=0)
    assert narrow["ci_low"] == pytest.approx(1.6 - 1.533206 * math.sqrt(0.46), abs=1e-5)
    assert narrow["bootstrap_ci_low"] is None and narrow["shown"] is True
    assert interval_words(narrow) == "+1.600, 80% CI [+0.560, +2.640], shown"
    assert interval_words(result) == "+1.600, not shown (95% CI [-0.283, +3.483])"


def test_t_quantile_matches_scipy_and_tends_to_z():
    from scipy.stats import t

    for dof in (1, 2, 3, 4, 5, 9, 10, 31, 63, 100, 1001):
        for confidence in (0.5, 0.8, 0.95, 0.99):
            want = t.ppf(1 - (1 - confidence) / 2, dof)
            assert t_quantile(confidence, dof) == pytest.approx(want, rel=1e-10)
    assert t_quantile(0.95, 1) == pytest.approx(12.706205, abs=1e-6)  # ν = 1 is Cauchy: tan(0.475π)
    assert t_quantile(0.95, 100000) == pytest.approx(normal_quantile(0.95), abs=1e-4)
    assert normal_quantile(0.95) == pytest.approx(1.959964, abs=1e-6)
    with pytest.raises(ValueError, match="dof"):
        t_quantile(0.95, 0)


def test_pairing_removes_the_prompt_effect_an_unpaired_error_keeps():
    # b = prompt difficulty, a = b + 0.1 + small noise: the paired SE is tiny, an unpaired one is not
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 3, size=40)
    a, b = difficulty + 0.1 + rng.normal(0, 0.05, size=40), difficulty
    result = paired_difference(a, b, bootstrap=1000)
    unpaired_se = math.hypot(np.std(a, ddof=1), np.std(b, ddof=1)) / math.sqrt(40)
    assert result["se"] < unpaired_se / 20
    assert result["shown"] and result["ci_low"] > 0


def test_bootstrap_interval_width_matches_its_analytic_spread():
    """The resampled mean has standard deviation σ₀/√P (σ₀ = ddof-0 std of d): for a symmetric d and many
    resamples the 95% percentile interval is ≈ mean ± 1.96 σ₀/√P."""
    rng = np.random.default_rng(3)
    d = rng.normal(0.3, 1.0, size=60)
    low, high = bootstrap_mean_interval(d, 0.95, 20000, seed=0)
    spread = np.std(d) / math.sqrt(60)
    assert (high - low) / (2 * 1.959964 * spread) == pytest.approx(1.0, abs=0.05)
    assert (low + high) / 2 == pytest.approx(d.mean(), abs=0.1 * spread)
    assert bootstrap_mean_interval(d, 0.95, 500, seed=7) == bootstrap_mean_interval(d, 0.95, 500, seed=7)


def test_bootstrap_of_a_two_point_table_by_hand():
    # d = (0, 1): resampled means 0, ½, 1 with probabilities ¼, ½, ¼ → the 2.5% and 97.5% quantiles are 0 and 1
    low, high = bootstrap_mean_interval([0.0, 1.0], 0.95, 20000, seed=0)
    assert (low, high) == (0.0, 1.0)
    # 40% interval (quantiles 30% and 70%): both fall on ½, which has probability ½ in the middle
    assert bootstrap_mean_interval([0.0, 1.0], 0.40, 20000, seed=0) == (0.5, 0.5)


def test_not_shown_when_the_interval_contains_zero_and_fewer_than_two_prompts():
    result = paired_difference([1.0, -1.0, 0.5, -0.5], [0.0, 0.0, 0.0, 0.0])
    assert result["diff"] == 0.0 and not result["shown"]
    assert interval_words(result).startswith("+0.000, not shown (95% CI [")
    one = paired_difference([2.0], [1.0])
    assert one["diff"] == 1.0 and one["se"] is None and one["ci_low"] is None and not one["shown"]
    assert "at least 2" in one["reason"] and interval_words(one) == f"+1.000, not shown ({one['reason']})"
    none = paired_difference([], [])
    assert none["diff"] is None and not none["shown"] and interval_words(none).startswith("no prompts")
    # two prompts: t(1 dof) = 12.7, so two agreeing differences are not enough (z = 1.96 would call this shown)
    assert paired_difference([1.0, 1.2], [0.0, 0.0])["shown"] is False
    # identical differences: SE 0, the interval is the point; shown exactly when it is not 0
    assert paired_difference([1.0, 2.0], [0.5, 1.5])["shown"] is True
    assert paired_difference([1.0, 2.0], [1.0, 2.0])["shown"] is False


def test_scalar_baseline_bad_input_and_words():
    win = paired_difference([1.0, 1.0, 0.5, 1.0, 0.0, 1.0], 0.5, bootstrap=0)  # a win rate against ½
    assert win["diff"] == pytest.approx(4.5 / 6 - 0.5)
    with pytest.raises(ValueError, match="same prompts"):
        paired_difference([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        paired_difference([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_difference([1.0, 2.0], [0.0, 0.0], confidence=1.0)


def test_split_halves_is_a_fixed_disjoint_cover():
    # π = default_rng(0).permutation(6) = (3, 2, 5, 4, 0, 1): even positions 3, 5, 0; odd positions 2, 4, 1
    assert np.random.default_rng(0).permutation(6).tolist() == [3, 2, 5, 4, 0, 1]
    select, test = split_halves(6, 0)
    assert select.tolist() == [0, 3, 5] and test.tolist() == [1, 2, 4]
    for P in (1, 7, 128):
        select, test = split_halves(P, 5)
        assert len(select) == (P + 1) // 2 and len(test) == P // 2
        assert sorted(select.tolist() + test.tolist()) == list(range(P))
        assert np.array_equal(split_halves(P, 5)[0], select)
    assert not np.array_equal(split_halves(128, 5)[0], split_halves(128, 6)[0])


def test_prompt_means():
    assert prompt_means([[1.0, 3.0], [2.0], [0.0, 0.0, 3.0]]).tolist() == [2.0, 2.0, 1.0]
    with pytest.raises(ValueError, match="at least one"):
        prompt_means([[1.0], []])
