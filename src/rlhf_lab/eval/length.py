"""Length metrics: how much of a reward (or a preference) is explained by length ("A Long Way to Go", §2.8).

Two groups of pure functions:

* over scored generations, grouped per prompt (``lengths[p][s]``, ``rewards[p][s]`` for sample s of prompt p):
  the per-prompt and global length–reward correlation, the reward spread, and the reward left after
  regressing out length;
* over preference pairs: pairwise accuracy, how often the longer reply is chosen (by the humans, by the RM),
  and the mask of the length-balanced subset on which ``eval-rm`` reports ``accuracy_length_balanced``.

Every function returns ``nan`` when its quantity is undefined (too few values, a constant input).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from rlhf_lab.data.transforms import balance_length_indices
from rlhf_lab.eval.paired import paired_difference

NAN = float("nan")


def _array(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _check_same_length(*seqs: Sequence) -> None:
    if len({len(s) for s in seqs}) > 1:
        raise ValueError(f"length mismatch: {[len(s) for s in seqs]}")


def _flatten(nested: Sequence[Sequence[float]]) -> list[float]:
    return [v for group in nested for v in group]


# --------------------------------------------------------------------------------------------------------------
# Generations grouped by prompt
# --------------------------------------------------------------------------------------------------------------
def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson r = Σ(x−x̄)(y−ȳ) / √(Σ(x−x̄)² Σ(y−ȳ)²); nan when n < 2 or x or y is constant."""
    _check_same_length(x, y)
    a, b = _array(x), _array(y)
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return NAN
    da, db = a - a.mean(), b - b.mean()
    r = float(np.dot(da, db) / math.sqrt(float(np.dot(da, da)) * float(np.dot(db, db))))
    return max(-1.0, min(1.0, r)) if math.isfinite(r) else NAN


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else NAN


def per_prompt_length_reward_corr(lengths: Sequence[Sequence[float]], rewards: Sequence[Sequence[float]]) -> float:
    """(1/|P'|) Σ_{p∈P'} r(lengths_p, rewards_p): the paper's length–reward correlation.

    P' = the prompts where r is defined (at least two samples, neither lengths nor rewards constant): Singhal et
    al.'s notebook skips NaNs. nan when no prompt qualifies.
    """
    _check_same_length(lengths, rewards)
    return _nanmean([pearson(ls, rs) for ls, rs in zip(lengths, rewards, strict=True)])


def global_length_reward_corr(lengths: Sequence[Sequence[float]], rewards: Sequence[Sequence[float]]) -> float:
    """Pearson r over all samples of all prompts pooled."""
    _check_same_length(lengths, rewards)
    return pearson(_flatten(lengths), _flatten(rewards))


def reward_spread(rewards: Sequence[Sequence[float]]) -> float:
    """mean_p σ(rewards_p) / σ(all rewards): how much of the reward's range a single prompt's samples cover.

    σ is the population stdev (ddof = 0) in both places; prompts with fewer than two samples are skipped.
    nan when no prompt has two samples or the pooled rewards are constant.
    """
    per_prompt = [float(np.std(_array(rs))) for rs in rewards if len(rs) >= 2]
    pooled = _array(_flatten(rewards))
    if not per_prompt or pooled.size < 2:
        return NAN
    total = float(np.std(pooled))
    return sum(per_prompt) / len(per_prompt) / total if total > 0 else NAN


class LengthRegression(NamedTuple):
    slope: float
    intercept: float
    residuals: list[float]
    r2: float


def reward_after_length_regression(lengths: Sequence[float], rewards: Sequence[float]) -> LengthRegression:
    """OLS fit reward ≈ intercept + slope · length; the residuals are the reward length does not explain.

    slope = Σ(L−L̄)(r−r̄) / Σ(L−L̄)², intercept = r̄ − slope·L̄, residual_i = r_i − intercept − slope·L_i,
    R² = 1 − Σ residual² / Σ(r−r̄)² (= pearson(L, r)²): the fraction of reward variance explained by length.
    Flat sequences (flatten per-prompt lists first). Constant lengths: slope 0 and R² 0; constant rewards:
    R² nan; fewer than two samples: everything nan.
    """
    _check_same_length(lengths, rewards)
    x, y = _array(lengths), _array(rewards)
    if x.size < 2:
        return LengthRegression(NAN, NAN, [NAN] * x.size, NAN)
    dx, dy = x - x.mean(), y - y.mean()
    sxx = float(np.dot(dx, dx))
    slope = float(np.dot(dx, dy)) / sxx if sxx > 0 and not np.all(x == x[0]) else 0.0
    intercept = float(y.mean()) - slope * float(x.mean())
    residuals = y - intercept - slope * x
    sst = float(np.dot(dy, dy))
    r2 = 1.0 - float(np.dot(residuals, residuals)) / sst if sst > 0 and not np.all(y == y[0]) else NAN
    return LengthRegression(slope, intercept, residuals.tolist(), r2)


# --------------------------------------------------------------------------------------------------------------
# Preference pairs
# --------------------------------------------------------------------------------------------------------------
def pairwise_accuracy(r_chosen: Sequence[float], r_rejected: Sequence[float]) -> float:
    """(1/N) Σ_i (1[r_c,i > r_r,i] + ½·1[r_c,i = r_r,i]); nan for no pairs.

    A tie counts ½: an RM that scores both replies the same has no preference, and ½ is what a coin flip
    between them would score. Conventions elsewhere differ (a strict r_c > r_r counts a tie wrong, an argmax
    over (r_c, r_r) counts it right), which moves the accuracy of a degenerate constant RM between 0 and 1;
    ½ puts it at chance.
    """
    _check_same_length(r_chosen, r_rejected)
    if not r_chosen:
        return NAN
    score = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(r_chosen, r_rejected, strict=True))
    return score / len(r_chosen)


def longer_preferred_rate(len_chosen: Sequence[float], len_rejected: Sequence[float]) -> float:
    """Share of pairs whose chosen reply is the longer one, among pairs of different lengths (nan if none).

    0.5 = the data's preferences carry no length signal; the length-bias paper finds ≈ 0.6–0.7 in its data sets.
    """
    _check_same_length(len_chosen, len_rejected)
    differ = [(c, r) for c, r in zip(len_chosen, len_rejected, strict=True) if c != r]
    return sum(c > r for c, r in differ) / len(differ) if differ else NAN


def rm_longer_preferred_rate(
    len_chosen: Sequence[float],
    len_rejected: Sequence[float],
    r_chosen: Sequence[float],
    r_rejected: Sequence[float],
) -> float:
    """How often the RM's preferred reply is the longer one, among pairs of different lengths (nan if none).

    Per pair: 1 if the longer reply has the higher reward, 0 if the lower, ½ on a reward tie (as in
    ``pairwise_accuracy``). Compare with ``longer_preferred_rate``: an RM above the data's rate has amplified
    the length heuristic.
    """
    _check_same_length(len_chosen, len_rejected, r_chosen, r_rejected)
    scores = []
    for lc, lr, rc, rr in zip(len_chosen, len_rejected, r_chosen, r_rejected, strict=True):
        if lc == lr:
            continue
        r_long, r_short = (rc, rr) if lc > lr else (rr, rc)
        scores.append(1.0 if r_long > r_short else 0.5 if r_long == r_short else 0.0)
    return sum(scores) / len(scores) if scores else NAN


def length_balanced_subset_mask(
    len_chosen: Sequence[float],
    len_rejected: Sequence[float],
    seed: int = 0,
    bin_width: int = 10,
    max_abs_diff: int = 200,
) -> list[bool]:
    """mask[i] = pair i is in the length-balanced subset (exactly the pairs ``balance_length`` keeps)."""
    keep = set(balance_length_indices(len_chosen, len_rejected, seed, bin_width, max_abs_diff))
    return [i in keep for i in range(len(len_chosen))]


def _masked_accuracy(r_chosen: Sequence[float], r_rejected: Sequence[float], mask: Sequence[bool]) -> float:
    _check_same_length(r_chosen, r_rejected, mask)
    rc = [r for r, m in zip(r_chosen, mask, strict=True) if m]
    rr = [r for r, m in zip(r_rejected, mask, strict=True) if m]
    return pairwise_accuracy(rc, rr)


def length_balanced_accuracy(
    r_chosen: Sequence[float],
    r_rejected: Sequence[float],
    len_chosen: Sequence[float],
    len_rejected: Sequence[float],
    seed: int = 0,
) -> float:
    """``pairwise_accuracy`` on the length-balanced subset: the accuracy the length heuristic cannot earn."""
    return _masked_accuracy(r_chosen, r_rejected, length_balanced_subset_mask(len_chosen, len_rejected, seed))


LENGTH_DIFF_BINS = (-64, -16, 16, 64)  # edges of len(chosen) − len(rejected), in tokens


def longer_preferred_gap(len_chosen: Sequence[float], len_rejected: Sequence[float], r_chosen: Sequence[float],
                         r_rejected: Sequence[float], *, confidence: float = 0.95, bootstrap: int = 2000,
                         seed: int = 0) -> dict:
    """The RM's longer-preferred rate minus the human labels', paired over the pairs of different lengths.

        d_i = rm_long_i − human_long_i,   rm_long_i = 1 if the RM scores the longer reply higher (½ on a tie, 0 if
              lower), human_long_i = 1[the chosen reply is the longer]
        mean(d) = rm_longer_preferred_rate − longer_preferred_rate        → ``paired_difference``: SE, CI, shown

    > 0: the RM prefers the longer reply more often than the people who labelled the pairs (it amplified the length
    heuristic; Singhal et al. 2023); < 0: less often. Pairs are the paired unit (same pair, two judges).
    """
    rm = prefers_longer(len_chosen, len_rejected, r_chosen, r_rejected)
    human = [1.0 if lc > lr else 0.0 for lc, lr in zip(len_chosen, len_rejected, strict=True) if lc != lr]
    return paired_difference(rm, human, confidence=confidence, bootstrap=bootstrap, seed=seed)


def prefers_longer(len_chosen: Sequence[float], len_rejected: Sequence[float], r_chosen: Sequence[float],
                   r_rejected: Sequence[float]) -> list[float]:
    """Per pair of different lengths (in order; equal lengths skipped): 1 if the RM scores the longer reply higher,
    ½ on a tie, 0 if lower."""
    _check_same_length(len_chosen, len_rejected, r_chosen, r_rejected)
    out = []
    for lc, lr, rc, rr in zip(len_chosen, len_rejected, r_chosen, r_rejected, strict=True):
        if lc == lr:
            continue
        r_long, r_short = (rc, rr) if lc > lr else (rr, rc)
        out.append(1.0 if r_long > r_short else 0.5 if r_long == r_short else 0.0)
    return out


def compare_reward_models(len_chosen: Sequence[float], len_rejected: Sequence[float], a: tuple, b: tuple, *,
                          confidence: float = 0.95, bootstrap: int = 2000, seed: int = 0) -> dict:
    """Two reward models on the same pairs, paired pair by pair: ``a``, ``b`` = (r_chosen, r_rejected) of each.

        longer_preferred: d_i = prefers_longer_a,i − prefers_longer_b,i over the pairs of different lengths
                          (< 0: a prefers the longer reply less often than b — e.g. a length-debiased RM vs plain)
        accuracy:         d_i = correct_a,i − correct_b,i over all pairs (correct = 1 if r_chosen > r_rejected,
                          ½ on a tie)

    Each a ``paired_difference`` (mean, SE, t and bootstrap CI, shown).
    """
    def correct(r_c: Sequence[float], r_r: Sequence[float]) -> list[float]:
        return [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(r_c, r_r, strict=True)]

    paired = dict(confidence=confidence, bootstrap=bootstrap, seed=seed)
    return {"longer_preferred": paired_difference(prefers_longer(len_chosen, len_rejected, *a),
                                                  prefers_longer(len_chosen, len_rejected, *b), **paired),
            "accuracy": paired_difference(correct(*a), correct(*b), **paired)}


def accuracy_by_length_difference(r_chosen: Sequence[float], r_rejected: Sequence[float],
                                  len_chosen: Sequence[float], len_rejected: Sequence[float],
                                  edges: tuple[float, float, float, float] = LENGTH_DIFF_BINS,
                                  ) -> dict[str, tuple[float, int]]:
    """Accuracy within five bins of Δ = len(chosen) − len(rejected) in tokens: ``{label: (accuracy, pairs)}``.

    With edges (a, b, c, d) = (−64, −16, 16, 64): Δ ≤ a, a < Δ < b, b ≤ Δ ≤ c (near-equal lengths), c < Δ < d,
    Δ ≥ d. An RM that learned length is right where the chosen reply is the longer (Δ > 0) and wrong where it is
    the shorter (Δ < 0); one that learned quality is about as accurate in every bin. An empty bin: nan, 0.
    """
    _check_same_length(r_chosen, r_rejected, len_chosen, len_rejected)
    a, b, c, d = edges
    bins = {f"<={a:g}": lambda x: x <= a, f"({a:g},{b:g})": lambda x: a < x < b, f"[{b:g},{c:g}]": lambda x: b <= x <= c,
            f"({c:g},{d:g})": lambda x: c < x < d, f">={d:g}": lambda x: x >= d}
    out: dict[str, tuple[float, int]] = {}
    for label, inside in bins.items():
        kept = [(rc, rr) for rc, rr, lc, lr in zip(r_chosen, r_rejected, len_chosen, len_rejected, strict=True)
                if inside(lc - lr)]
        out[label] = (pairwise_accuracy([x for x, _ in kept], [y for _, y in kept]), len(kept))
    return out


def preference_length_metrics(
    r_chosen: Sequence[float],
    r_rejected: Sequence[float],
    len_chosen: Sequence[float],
    len_rejected: Sequence[float],
    seed: int = 0,
) -> dict[str, float]:
    """The length block of ``eval-rm``'s metrics for one evaluation set of pairs."""
    mask = length_balanced_subset_mask(len_chosen, len_rejected, seed)
    return {
        "accuracy": pairwise_accuracy(r_chosen, r_rejected),
        "accuracy_length_balanced": _masked_accuracy(r_chosen, r_rejected, mask),
        "length_balanced_pairs": float(sum(mask)),
        "longer_preferred_rate": longer_preferred_rate(len_chosen, len_rejected),
        "rm_longer_preferred_rate": rm_longer_preferred_rate(len_chosen, len_rejected, r_chosen, r_rejected),
    }


# --------------------------------------------------------------------------------------------------------------
# Length's share of a reward gain, with a bootstrap over prompts
# --------------------------------------------------------------------------------------------------------------


def _decomposition(stats: np.ndarray) -> np.ndarray:
    """(gain, explained, after_length, slope) from summed statistics ``stats[..., set, k]`` with set 0 = model,
    1 = baseline and k = (count, ΣL, Σr, ΣL², ΣL·r); the slope is the within-set OLS slope (the formula in
    ``length_share_of_gain``)."""
    n, sl, sr, sll, slr = (stats[..., k] for k in range(5))
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_l, mean_r = sl / n, sr / n
        sxx = (sll - sl * mean_l).sum(axis=-1)  # Σ_sets Σ (L − L̄_set)²
        sxy = (slr - sl * mean_r).sum(axis=-1)  # Σ_sets Σ (L − L̄_set)(r − r̄_set)
        slope = np.where(sxx > 1e-9 * np.maximum(sll.sum(axis=-1), 1.0), sxy / sxx, 0.0)
        gain = mean_r[..., 0] - mean_r[..., 1]
        explained = slope * (mean_l[..., 0] - mean_l[..., 1])
    return np.stack([gain, explained, gain - explained, slope], axis=-1)


def length_share_of_gain(model_l: Sequence[Sequence[float]], model_r: Sequence[Sequence[float]],
                         base_l: Sequence[Sequence[float]], base_r: Sequence[Sequence[float]], *,
                         confidence: float = 0.95, bootstrap: int = 2000, seed: int = 0) -> dict:
    """How much of a reward gain over a baseline is length, with percentile intervals from resampling prompts.

    Per matched prompt p, the model's responses (lengths ``model_l[p]``, rewards ``model_r[p]``) and the
    baseline's (``base_l[p]``, ``base_r[p]``). The reward's slope in length is fitted *within* each set (OLS with
    a separate intercept for model and baseline, i.e. r ≈ a + c·[model] + b·L):

        b = Σ_set Σ (L − L̄_set)(r − r̄_set) / Σ_set Σ (L − L̄_set)²
        gain = r̄_model − r̄_base,   explained = b · (L̄_model − L̄_base),   after_length = gain − explained (= c),
        share = explained / gain

    A slope fitted on both sets pooled would also learn from the difference *between* them: a model that is
    better and longer would have part of its gain credited to length (reward independent of length, a model
    better by 1 and 8 tokens longer: the pooled fit calls 36% of the gain length, this fit 12% ± 4%). Constant lengths within the sets: b = 0.

    The intervals redo all of it on ``bootstrap`` resamples of the prompts (a prompt's model and baseline
    responses drawn together), so the fitted slope's own uncertainty is in them. ``share``'s interval is reported
    only when the gain's excludes 0 (a ratio over a gain that may be 0 has no useful interval). ``shown`` per
    quantity: its interval excludes 0.
    """
    if not (len(model_l) == len(model_r) == len(base_l) == len(base_r)):
        raise ValueError("length_share_of_gain: the four per-prompt lists need the same prompts")
    stats = np.zeros((len(model_l), 2, 5))
    for p in range(len(model_l)):
        for s, (lengths, rewards) in enumerate(((model_l[p], model_r[p]), (base_l[p], base_r[p]))):
            x, y = _array(lengths), _array(rewards)
            if x.size != y.size:
                raise ValueError(f"length_share_of_gain: prompt {p}: {x.size} lengths against {y.size} rewards")
            stats[p, s] = (x.size, x.sum(), y.sum(), (x * x).sum(), (x * y).sum())
    point = _decomposition(stats.sum(axis=0))
    names = ("gain", "explained", "after_length")
    out: dict = {name: float(point[i]) for i, name in enumerate(names)}
    out["slope"] = float(point[3])
    out.update(share=out["explained"] / out["gain"] if out["gain"] else NAN, n_prompts=len(model_l),
               confidence=confidence, bootstrap=bootstrap)
    if len(model_l) < 2 or bootstrap < 1:
        for name in (*names, "share"):
            out.update({f"{name}_ci_low": None, f"{name}_ci_high": None, f"{name}_se": None, f"{name}_shown": False})
        return out
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(model_l), size=(bootstrap, len(model_l)))
    weights = np.zeros((bootstrap, len(model_l)))
    np.add.at(weights, (np.arange(bootstrap)[:, None], draws), 1.0)
    resampled = _decomposition(np.einsum("bp,psk->bsk", weights, stats))  # (B, 4)
    alpha = 1.0 - confidence
    for i, name in enumerate(names):
        low, high = np.nanquantile(resampled[:, i], [alpha / 2, 1 - alpha / 2])
        out.update({f"{name}_ci_low": float(low), f"{name}_ci_high": float(high),
                    f"{name}_se": float(np.nanstd(resampled[:, i], ddof=1)),
                    f"{name}_shown": bool(low > 0 or high < 0)})
    if out["gain_shown"]:
        share = resampled[:, 1] / resampled[:, 0]
        low, high = np.nanquantile(share, [alpha / 2, 1 - alpha / 2])
        out.update(share_ci_low=float(low), share_ci_high=float(high), share_se=float(np.nanstd(share, ddof=1)),
                   share_shown=bool(low > 0 or high < 0))
    else:
        out.update(share_ci_low=None, share_ci_high=None, share_se=None, share_shown=False)
    return out
