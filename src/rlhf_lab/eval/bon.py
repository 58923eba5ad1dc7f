"""Best-of-n without sampling: the exact expected score of the best-by-proxy answer among n of N drawn.

Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization" (appendix), as used by Coste et al. 2023.
Per prompt there are N answers with proxy scores and gold scores. Sort them ascending by proxy, so rank i = 1 is
the lowest proxy and s_(i) is the score (proxy or gold) of the answer at rank i. Draw n of the N answers uniformly
**without replacement** and keep the one the proxy likes best: it has rank i exactly when it is drawn and the
other n − 1 come from the i − 1 answers below it, so

    P(best has rank i) = w_i(n) = C(i−1, n−1) / C(N, n)      for i = n..N   (0 for i < n; Σ_i w_i = 1)
    E[score of best of n] = Σ_{i=n}^{N} w_i(n) · s_(i)

and the curve is that expectation averaged over prompts, for the proxy and for the gold scores (gold permuted with
the proxy order). n = 1 gives the mean score, n = N the score of the top-proxy answer. The x axis the papers use
is the analytic KL of the best-of-n policy from the sampling policy, KL_bon(n) = log n − (n − 1)/n.

Computing it. C(N, n) has thousands of digits at N = 12,600 (Coste et al.'s code used exact big integers and one float
division per coefficient, a Python loop). Here the weights come from the ratio of neighbours,
w_{i+1} / w_i = i / (i − n + 1), run downwards from the exact w_N = n / N in extended precision
(``np.longdouble``): every weight is within a few ulps of the exact fraction, and the tiny ones underflow to 0
exactly where the exact fraction does. All n at once: the proxy-sorted scores (P, N) times the transposed
(len(ns), N) weight matrix gives every prompt's own estimate at every n (``bon_per_prompt``, what paired
comparisons need); the curve is their mean over prompts.

Ties in the proxy. The rank of tied answers, and so which one "wins" and whose gold score counts, is a
convention; the proxy curve does not depend on it, the gold curve does. We sort with a **stable** sort: tied
answers keep their order in the file, so among tied answers the one that comes **last** ranks highest and wins.
(The seed used ``np.argsort``'s default quicksort, which is not stable: its tie order is arbitrary.) An already
ascending file (Coste et al. 2023's ``proxy_labelled_sorted.json``) keeps its order exactly.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from pathlib import Path

import numpy as np

SEED_SAMPLE_NS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 6144, 8192, 12500)


def kl_bon(n: int) -> float:
    """KL(best-of-n policy ‖ sampling policy) = log n − (n − 1)/n (Stiennon et al. 2020; Gao et al. 2022)."""
    return math.log(n) - (n - 1) / n


def _check_n(n: object) -> int:
    try:
        value = operator.index(n)  # ints and numpy ints; not floats, not bools below
    except TypeError:
        raise ValueError(f"n must be an integer, got {n!r}") from None
    if isinstance(n, bool) or value < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    return value


def bon_coefficients(N: int, n: int) -> np.ndarray:
    """w_i(n) = C(i−1, n−1) / C(N, n) for ranks i = 1..N (ascending proxy), as a float64 array of length N.

    w_i = 0 for i < n, w_N = n / N, and w_i = w_{i+1} · (i − n + 1) / i going down (the recurrence of the
    binomials, computed in extended precision so the result matches the exact fraction to a few ulps).
    """
    n, N = _check_n(n), _check_n(N)
    if n > N:
        raise ValueError(f"n = {n} is larger than N = {N}")
    weights = np.zeros(N, dtype=np.float64)
    ranks = np.arange(n, N, dtype=np.longdouble)  # i = n..N−1
    down = (ranks - (n - 1)) / ranks  # w_i / w_{i+1} = (i − n + 1) / i
    top = np.longdouble(n) / np.longdouble(N)  # w_N
    weights[n - 1 : N - 1] = (top * np.cumprod(down[::-1])[::-1]).astype(np.float64)
    weights[N - 1] = float(top)
    return weights


def bon_coefficient_matrix(N: int, ns: Iterable[int]) -> np.ndarray:
    """The weights of several n as rows: shape (len(ns), N); row r is ``bon_coefficients(N, ns[r])``."""
    rows = [bon_coefficients(N, n) for n in ns]
    return np.stack(rows) if rows else np.zeros((0, N))


def sort_by_proxy(proxy: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each prompt's (row's) answers sorted ascending by proxy, stably; ``others`` permuted alike.

    The result is that of a stable sort (tied answers keep their file order). Without ties every sort gives the
    same permutation, so the fast unstable sort is used and only rows that have ties are sorted again stably
    (twice as fast as sorting everything stably on tie-free scores).
    """
    order = np.argsort(proxy, axis=-1)
    ranked = np.take_along_axis(proxy, order, axis=-1)
    tied = np.any(ranked[..., 1:] == ranked[..., :-1], axis=-1)
    if np.any(tied):
        order[tied] = np.argsort(proxy[tied], axis=-1, kind="stable")
        ranked[tied] = np.take_along_axis(proxy[tied], order[tied], axis=-1)
    return (ranked, *(np.take_along_axis(scores, order, axis=-1) for scores in others))


def _as_scores(scores: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] == 0 or array.shape[0] == 0:
        raise ValueError(f"{name} scores must have shape (prompts, N) with N >= 1, got {np.shape(scores)}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} scores must be finite")
    return array


def bon_per_prompt(
    proxy: np.ndarray, gold: np.ndarray | None = None, ns: Iterable[int] = SEED_SAMPLE_NS
) -> tuple[list[int], np.ndarray, np.ndarray | None]:
    """Each prompt's own best-of-n estimates: ``(kept ns, proxy (P, len(kept)), gold (P, len(kept)) or None)``.

        proxy[p, r] = Σ_{i=n_r}^{N} w_i(n_r) · proxy_p,(i)
        gold[p, r]  = Σ_{i=n_r}^{N} w_i(n_r) · gold_p,(i)      (gold in the proxy's order)

    These are the per-prompt values that paired comparisons need (two curves of one sample bank, or two points
    of one curve, compared prompt by prompt: ``rlhf_lab.eval.paired``). ``proxy`` and ``gold`` have shape
    (P prompts, N answers), answer j of a prompt being the same answer in both (a 1-D array is one prompt).
    n > N is dropped (callers that want to warn about it compare with N themselves); n < 1 raises ValueError.
    """
    proxy = _as_scores(proxy, "proxy")
    ns = [_check_n(n) for n in ns]
    if gold is not None:
        gold = _as_scores(gold, "gold")
        if gold.shape != proxy.shape:
            raise ValueError(f"gold scores have shape {gold.shape}, proxy scores {proxy.shape}")
    kept = [n for n in ns if n <= proxy.shape[1]]
    weights = bon_coefficient_matrix(proxy.shape[1], kept)
    if gold is None:
        (proxy_sorted,) = sort_by_proxy(proxy)
        return kept, proxy_sorted @ weights.T, None
    proxy_sorted, gold_sorted = sort_by_proxy(proxy, gold)
    return kept, proxy_sorted @ weights.T, gold_sorted @ weights.T


def curve_from_per_prompt(ns: list[int], proxy: np.ndarray, gold: np.ndarray | None) -> list[dict]:
    """The curve rows ``[{"n", "proxy_score", "gold_score", "kl_bon", "gold_se"}]`` from per-prompt estimates
    (``bon_per_prompt``): scores are means over prompts, ``gold_se`` = std_p (ddof 1) / √P (None for P = 1)."""
    proxy_curve = [float(v) for v in proxy.mean(axis=0)]
    if gold is None:
        gold_curve, gold_se = [None] * len(ns), [None] * len(ns)
    else:
        gold_curve, gold_se = [float(v) for v in gold.mean(axis=0)], _standard_errors(gold)
    return [
        {"n": n, "proxy_score": p, "gold_score": g, "kl_bon": kl_bon(n), "gold_se": se}
        for n, p, g, se in zip(ns, proxy_curve, gold_curve, gold_se, strict=True)
    ]


def bon_estimate(
    proxy: np.ndarray, gold: np.ndarray | None = None, ns: Iterable[int] = SEED_SAMPLE_NS
) -> list[dict]:
    """The best-of-n curve: ``[{"n", "proxy_score", "gold_score", "kl_bon", "gold_se"}]`` for every n ≤ N in ``ns``.

        proxy_score(n) = mean_p Σ_{i=n}^{N} w_i(n) · proxy_p,(i)
        gold_score(n)  = mean_p Σ_{i=n}^{N} w_i(n) · gold_p,(i)     (gold in the proxy's order)
        kl_bon(n)      = log n − (n − 1)/n
        gold_se(n)     = std_p(Σ_i w_i(n) · gold_p,(i)) / √P   (over prompts, ddof 1; None for P = 1 or no gold)

    ``proxy`` and ``gold`` have shape (P prompts, N answers), answer j of a prompt being the same answer in both
    (a 1-D array is one prompt). ``gold`` may be None (``gold_score`` is then None). n > N is dropped, as Coste et al.'s code
    does (callers that want to warn about it compare with N themselves); n < 1 raises ValueError. It is
    ``curve_from_per_prompt(*bon_per_prompt(proxy, gold, ns))``.
    """
    return curve_from_per_prompt(*bon_per_prompt(proxy, gold, ns))


def _standard_errors(per_prompt: np.ndarray) -> list[float | None]:
    """Standard error over prompts of each column (a curve point): std (ddof 1) / √P; None for one prompt."""
    count = per_prompt.shape[0]
    if count < 2:
        return [None] * per_prompt.shape[1]
    return [float(v) for v in per_prompt.std(axis=0, ddof=1) / np.sqrt(count)]


def read_per_prompt(path: str | Path) -> tuple[list[int], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(ns, {label: proxy (P, len(ns))}, {label: gold (P, len(ns))}) from a ``per_prompt.npz``."""
    with np.load(path, allow_pickle=False) as data:
        ns = [int(n) for n in data["ns"]]
        proxy = {key.removeprefix("proxy:"): data[key] for key in data.files if key.startswith("proxy:")}
        gold = {key.removeprefix("gold:"): data[key] for key in data.files if key.startswith("gold:")}
    return ns, proxy, gold
