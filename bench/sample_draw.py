"""Benchmark: drawing one token per row from [rows, vocab] logits — ours (blocked inverse CDF) vs Gumbel-max vs
softmax + multinomial (HF's sampling step), side by side in one run.

    .venv/bin/python bench/sample_draw.py [--rows 64] [--vocab 49152] [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from rlhf_lab.decode import draw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(args.rows, args.vocab, generator=generator) * 3
    uniforms = torch.rand(args.rows, generator=generator, dtype=torch.float64)
    methods = {
        "blocked inverse CDF (ours)": lambda: draw(scores, uniforms),
        "Gumbel-max": lambda: (scores - torch.log(-torch.log(torch.rand(scores.shape, generator=generator)))).argmax(-1),
        "softmax + multinomial": lambda: torch.multinomial(scores.softmax(-1), 1, generator=generator),
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    for method in methods.values():
        method()  # warm-up
    for _ in range(args.repeats):  # interleaved: a burst of other work hits every method
        for name, method in methods.items():
            start = time.perf_counter()
            method()
            times[name].append(time.perf_counter() - start)
    ours = statistics.median(times["blocked inverse CDF (ours)"])
    print(f"rows={args.rows} vocab={args.vocab} threads={torch.get_num_threads()} load={os.getloadavg()[0]:.2f}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:28s} {median * 1e3:7.2f} ms per step (median of {args.repeats})  {median / ours:5.1f}x ours")


if __name__ == "__main__":
    main()
