"""Paired statistics: two things measured on the same prompts, compared prompt by prompt.

When two policies, two best-of-n objectives or two points of one curve are measured on the same prompts, most
of the spread between prompts (easy prompts score high under both) cancels in the per-prompt difference. The
prompt is the sampling unit, so with per-prompt values a_p, b_p (p = 1..P):

    d_p   = a_p − b_p
    d̄     = (1/P) Σ_p d_p                                   (the effect)
    SE    = std(d, ddof=1) / √P
    CI    = d̄ ± t · SE,   t = the 1 − α/2 quantile of Student's t with P − 1 degrees of freedom
            (α = 1 − confidence; the normal-theory interval, t → z = 1.96 as P grows: 2.04 at P = 31)
    CI*   = [q_{α/2}, q_{1−α/2}] of d̄*_b = mean(d_{I_b}), b = 1..B, I_b = P prompts drawn with replacement
            (the paired bootstrap: a prompt's two values are always drawn together)
    shown = CI excludes 0 and CI* excludes 0

Requiring both intervals is the conservative call: the normal-theory interval can be off for skewed differences,
the percentile bootstrap is too narrow at small P (it uses the ddof-0 spread and cannot reach beyond the observed
differences: with P = 2 it is [min d, max d]). Student's t rather than z keeps the first honest at small P
(z = 1.96 with 2 prompts would call a fall "shown" that t = 12.7 does not).
With fewer than 2 prompts there is no spread to estimate: SE and both intervals are None and ``shown`` is False
with a ``reason``.

Choosing what to test on the data it is tested on (the n where a best-of-n gold curve peaks) inflates the effect
(the winner's curse). ``split_halves`` gives a fixed split of the prompts from a seed: choose on one half, test on
the other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

BOOTSTRAP_CHUNK = 4_000_000  # resampled values held in memory at once (B × P is cut into row blocks)


def _vector(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 0:
        array = array[None]
    if array.ndim != 1:
        raise ValueError(f"{name}: one value per prompt (a 1-D array), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: values must be finite")
    return array


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def normal_quantile(confidence: float) -> float:
    """z = Φ⁻¹(1 − α/2) with α = 1 − confidence (1.95996… for 0.95)."""
    _check_confidence(confidence)
    return NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)


def _t_central_probability(theta: float, dof: int) -> float:
    """P(|T| ≤ t) for Student's t with integer ``dof`` ν, at θ = atan(t / √ν) (Abramowitz & Stegun 26.7.3–4):

        ν odd:  (2/π) · [θ + sin θ · cos θ · (1 + (2/3) cos²θ + … + (2·4···(ν−3))/(1·3···(ν−2)) cos^(ν−3) θ)]
        ν even: sin θ · (1 + (1/2) cos²θ + (1·3)/(2·4) cos⁴θ + … + (1·3···(ν−3))/(2·4···(ν−2)) cos^(ν−2) θ)

    (for ν = 1 the odd bracket is θ alone).
    """
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    if dof % 2 == 0:
        k = np.arange(1, dof // 2)  # coefficient j is Π_{i ≤ j} (2i − 1)/(2i)
        coefficients = np.concatenate([[1.0], np.cumprod((2 * k - 1) / (2 * k))])
        return sin * float(coefficients @ cos2 ** np.arange(coefficients.size))
    if dof == 1:
        return 2.0 * theta / math.pi
    k = np.arange(1, (dof - 1) // 2)  # coefficient j is Π_{i ≤ j} (2i)/(2i + 1)
    coefficients = np.concatenate([[1.0], np.cumprod(2 * k / (2 * k + 1))])
    series = float(coefficients @ cos2 ** np.arange(coefficients.size))
    return 2.0 / math.pi * (theta + sin * math.sqrt(cos2) * series)


def t_quantile(confidence: float, dof: int) -> float:
    """t with P(|T| ≤ t) = confidence for Student's t with ``dof`` ≥ 1 degrees of freedom (the 1 − α/2 quantile).

    Bisection on θ = atan(t/√ν) ∈ (0, π/2) of the closed-form central probability (``_t_central_probability``),
    to double precision. 12.706 for ν = 1, 2.776 for ν = 4, 1.962 for ν = 1000 at 95%.
    """
    _check_confidence(confidence)
    if dof < 1:
        raise ValueError(f"dof must be at least 1, got {dof}")
    low, high = 0.0, np.pi / 2
    for _ in range(200):
        middle = (low + high) / 2
        if middle in (low, high):
            break
        if _t_central_probability(middle, dof) < confidence:
            low = middle
        else:
            high = middle
    return float(np.tan((low + high) / 2) * np.sqrt(dof))


def bootstrap_mean_interval(d: Sequence[float] | np.ndarray, confidence: float = 0.95, bootstrap: int = 2000,
                            seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean of ``d`` over ``bootstrap`` resamples of its entries (with replacement).

    [q_{α/2}, q_{1−α/2}] of mean(d_{I_b}), I_b = len(d) indices drawn uniformly with replacement by
    ``np.random.default_rng(seed)``; quantiles with numpy's default linear interpolation.
    """
    d = _vector(d, "d")
    if d.size == 0 or bootstrap < 1:
        raise ValueError("the bootstrap needs at least one value and one resample")
    alpha = 1.0 - confidence
    rng = np.random.default_rng(seed)
    rows_per_block = max(1, BOOTSTRAP_CHUNK // d.size)
    means = np.empty(bootstrap)
    for start in range(0, bootstrap, rows_per_block):
        stop = min(bootstrap, start + rows_per_block)
        means[start:stop] = d[rng.integers(0, d.size, size=(stop - start, d.size))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def paired_difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *,
                      confidence: float = 0.95, bootstrap: int = 2000, seed: int = 0) -> dict:
    """The paired difference of per-prompt values a_p − b_p (formulas in the module docstring).

    Returns ``{"diff", "se", "ci_low", "ci_high", "bootstrap_ci_low", "bootstrap_ci_high", "confidence",
    "n_prompts", "shown", "reason"}``; ``reason`` says why nothing is shown when there are fewer than 2 prompts
    (else None). ``bootstrap=0`` skips the bootstrap (its interval is then None and ``shown`` uses the normal
    interval alone). ``b`` may be a scalar (a one-sample test of a against it, e.g. a win rate against ½).
    """
    a = _vector(a, "a")
    b = _vector(b, "b")
    if b.size == 1 and a.size != 1:
        b = np.full_like(a, b[0])
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same prompts: {a.size} values against {b.size}")
    _check_confidence(confidence)
    d = a - b
    count = int(d.size)
    result = {"diff": float(d.mean()) if count else None, "se": None, "ci_low": None, "ci_high": None,
              "bootstrap_ci_low": None, "bootstrap_ci_high": None, "confidence": confidence,
              "n_prompts": count, "shown": False, "reason": None}
    if count < 2:
        result["reason"] = f"{count} prompt(s): a standard error needs at least 2"
        return result
    se = float(d.std(ddof=1) / np.sqrt(count))
    t = t_quantile(confidence, count - 1)
    low, high = result["diff"] - t * se, result["diff"] + t * se
    result.update(se=se, ci_low=low, ci_high=high)
    shown = low > 0.0 or high < 0.0
    if bootstrap:
        boot_low, boot_high = bootstrap_mean_interval(d, confidence, bootstrap, seed)
        result.update(bootstrap_ci_low=boot_low, bootstrap_ci_high=boot_high)
        shown = shown and (boot_low > 0.0 or boot_high < 0.0)
    result["shown"] = bool(shown)
    return result


def split_halves(num_prompts: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed split of prompt indices 0..P−1 into (selection half, test half), from a seed.

    π = ``np.random.default_rng(seed).permutation(P)``; selection = π[0], π[2], π[4], … (even positions),
    test = π[1], π[3], … (odd positions); each half sorted. The selection half has ⌈P/2⌉ prompts.
    """
    if num_prompts < 0:
        raise ValueError(f"num_prompts must be >= 0, got {num_prompts}")
    order = np.random.default_rng(seed).permutation(num_prompts)
    return np.sort(order[0::2]), np.sort(order[1::2])


def prompt_means(values: Sequence[Sequence[float]]) -> np.ndarray:
    """One value per prompt: the mean of that prompt's values (its samples); a prompt with none is an error."""
    if any(len(v) == 0 for v in values):
        raise ValueError("every prompt needs at least one value")
    return np.array([float(np.mean(v)) for v in values], dtype=np.float64)


def interval_words(result: dict, digits: int = 3) -> str:
    """``+0.123, 95% CI [+0.045, +0.201], shown`` or ``+0.012, not shown (95% CI [-0.030, +0.054])``."""
    if result["diff"] is None:
        return f"no prompts ({result['reason']})"
    effect = f"{result['diff']:+.{digits}f}"
    if result["se"] is None:
        return f"{effect}, not shown ({result['reason']})"
    ci = f"{result['confidence']:.0%} CI [{result['ci_low']:+.{digits}f}, {result['ci_high']:+.{digits}f}]"
    return f"{effect}, {ci}, shown" if result["shown"] else f"{effect}, not shown ({ci})"
