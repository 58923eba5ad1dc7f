"""Benchmark: rlhf_lab.eval.bon.bon_estimate against the seed's exact big-integer best-of-n loop, in one run.

Random scores (standard normal proxy and gold) for P prompts × N answers, the seed's 16 values of n:

  ours  ``bon_estimate(proxy, gold, SEED_SAMPLE_NS)`` on all P prompts, starting from unsorted scores (its time
        includes the per-prompt sort by proxy); the median of ``--repeats`` runs after one warm-up run.
  seed  what tlc4418/llm_optimization's ``unbiased_sampler`` does for each n: the coefficients
        C(i−1, n−1) / C(N, n) for i = n..N as exact Python integers (``math.comb``, the same numbers as
        ``scipy.special.comb(exact=True)``) with one float division each, then a Python loop over the prompts
        gathering each one's slice ``scores[n−1:N]`` of its already proxy-sorted score lists, and
        ``np.mean(np.sum(coeffs * slices, axis=1))``, for proxy and for gold.
        The coefficients are computed once per n, whatever P is (timed in full). The per-prompt part is timed on
        a subset of ``--subset`` prompts and extrapolated linearly to P. The seed reads the rows from a
        ``datasets.Dataset`` (slower than the plain lists used here) and runs the n values in a
        ``multiprocessing.Pool(10)``: its single-process time here is a lower bound, and with 10 processes its
        wall time can not drop below its slowest single n (also printed).

Accuracy: both are run on the subset and the largest relative difference over all (n, proxy|gold) is printed
(target <= 1e-9). Targets for P = 500, N = 12,600: ours < 1 s and >= 100× faster than the seed.

    .venv/bin/python bench/bon.py [--prompts 500] [--N 12600] [--subset 20] [--repeats 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np

from rlhf_lab.eval.bon import SEED_SAMPLE_NS, bon_estimate


def seed_coefficients(N: int, n: int) -> np.ndarray:
    """The seed's weights: exact big-integer binomials, one correctly rounded float division per rank."""
    total = math.comb(N, n)
    return np.array([math.comb(i - 1, n - 1) / total for i in range(n, N + 1)])


def seed_curve_part(coeffs: np.ndarray, n: int, N: int, proxy_rows: list[list[float]],
                    gold_rows: list[list[float]]) -> tuple[float, float]:
    """The seed's per-prompt part for one n: slice each proxy-sorted row from rank n, weight, sum, average."""
    proxy = [row[n - 1 : N] for row in proxy_rows]
    gold = [row[n - 1 : N] for row in gold_rows]
    return float(np.mean(np.sum(coeffs * proxy, axis=1))), float(np.mean(np.sum(coeffs * gold, axis=1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=500)
    parser.add_argument("--N", type=int, default=12600)
    parser.add_argument("--subset", type=int, default=20, help="prompts the seed's per-prompt loop is timed on")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    P, N, ns = args.prompts, args.N, [n for n in SEED_SAMPLE_NS if n <= args.N]
    subset = min(args.subset, P)
    rng = np.random.default_rng(args.seed)
    proxy, gold = rng.normal(size=(P, N)), rng.normal(size=(P, N))
    print(f"bon bench: P = {P} prompts, N = {N} answers, {len(ns)} values of n ({ns[0]}..{ns[-1]})")

    # ours: all prompts, from unsorted scores
    bon_estimate(proxy, gold, ns)  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = bon_estimate(proxy, gold, ns)
        times.append(time.perf_counter() - start)
    ours_time = statistics.median(times)
    print(f"ours: {ours_time:.3f} s (median of {args.repeats}; min {min(times):.3f} s, max {max(times):.3f} s)")

    # the seed's way: coefficients per n (full), per-prompt loop on the first `subset` prompts
    order = np.argsort(proxy[:subset], axis=1, kind="stable")
    proxy_rows = np.take_along_axis(proxy[:subset], order, 1).tolist()  # the seed's file is proxy-sorted
    gold_rows = np.take_along_axis(gold[:subset], order, 1).tolist()
    coeff_times, loop_times, seed_rows = [], [], []
    for n in ns:
        start = time.perf_counter()
        coeffs = seed_coefficients(N, n)
        middle = time.perf_counter()
        proxy_score, gold_score = seed_curve_part(coeffs, n, N, proxy_rows, gold_rows)
        end = time.perf_counter()
        coeff_times.append(middle - start)
        loop_times.append(end - middle)
        seed_rows.append((proxy_score, gold_score))
    coeff_total, loop_subset = sum(coeff_times), sum(loop_times)
    loop_total = loop_subset * P / subset
    seed_time = coeff_total + loop_total
    slowest = max(c + lt * P / subset for c, lt in zip(coeff_times, loop_times, strict=True))
    print(f"seed: {seed_time:.1f} s = coefficients {coeff_total:.1f} s (all {len(ns)} n, independent of P) "
          f"+ per-prompt loop {loop_subset:.3f} s measured on {subset} prompts, extrapolated linearly "
          f"x{P / subset:g} -> {loop_total:.1f} s")
    print(f"seed: slowest single n {slowest:.1f} s (a lower bound on its wall time with Pool(10))")

    ours_subset = bon_estimate(proxy[:subset], gold[:subset], ns)
    rel = 0.0
    for row, (proxy_score, gold_score) in zip(ours_subset, seed_rows, strict=True):
        for got, want in ((row["proxy_score"], proxy_score), (row["gold_score"], gold_score)):
            rel = max(rel, abs(got - want) / max(abs(want), 1e-300))
    ratio = seed_time / ours_time
    print(f"speed-up: {ratio:.0f}x (seed, extrapolated / ours); vs the seed's slowest n alone: "
          f"{slowest / ours_time:.0f}x")
    print(f"max relative difference on the {subset}-prompt subset: {rel:.2e}")
    print(f"targets: ours < 1 s: {'PASS' if ours_time < 1 else 'FAIL'}; >= 100x: {'PASS' if ratio >= 100 else 'FAIL'}; "
          f"<= 1e-9 relative: {'PASS' if rel <= 1e-9 else 'FAIL'}")
    print(f"ours, n = {ours[-1]['n']}: proxy {ours[-1]['proxy_score']:.4f}, gold {ours[-1]['gold_score']:.4f}")


if __name__ == "__main__":
    main()
