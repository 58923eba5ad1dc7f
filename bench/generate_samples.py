"""Benchmark: sampling many answers per prompt against the CPU's forward roofline and plain HF, in one run.

Workloads (real HH-RLHF helpful-base conversations rendered with the chat template, pure sampling: temperature 1,
no top-p / top-k, ``--max_new_tokens`` new tokens):

  bon     P prompts × N answers (N = 16, 64, 256), prompts of ≤ 64 tokens, and N = 64 with prompts of 65–256
          tokens: the best-of-n / group pattern, all P·N rows in one batch;
  rollout PPO / RAFT rollouts: 16 prompts × 1 answer and 8 prompts × 4 answers, prompts of 65–256 tokens.

Methods, on the same prompts and seeds:

  ours    ``rlhf_lab.generation.generate`` (the fast sampler: one prefill per prompt, cascade attention,
          compaction, inverse-CDF sampling), ``batch_size`` = all rows of the workload;
  hf      plain ``model.generate(num_return_sequences=N, do_sample=True, top_k=0)`` on the P prompts;
  R       the roofline: one no-grad forward over 64 sequences of (prompt + ``--max_new_tokens``) tokens, in
          tokens/s (what the model's forward can do on this machine at that moment);
  ``--with_previous`` adds ``generate(sampler="hf")``, rlhf-lab's previous HF-based path.

Everything of one workload runs interleaved, round by round, rotating which goes first, so a burst of someone
else's work hits every method; the fp32 matmul GFLOP/s is measured next to each R. Throughput counts real
response tokens only (up to and including the EOS). Prints ours / R and ours / hf per workload.

    .venv/bin/python bench/generate_samples.py [--quick] [--max_new_tokens 32] [--rounds 2] [--with_previous]
        [--profile] [--only rollout]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from rlhf_lab.data import load_prompts
from rlhf_lab.data.templates import render_prompt
from rlhf_lab.generation import DecodingConfig, generate
from rlhf_lab.models import load_causal_lm, load_tokenizer


def matmul_gflops(size: int = 1024, repeats: int = 5) -> float:
    """fp32 GFLOP/s of a ``size``³ matrix product (2·size³ flops), best of ``repeats``."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def roofline(model, length: int, rows: int = 64) -> tuple[int, float]:
    """Tokens and seconds of one no-grad forward over ``rows`` random sequences of ``length`` tokens."""
    ids = torch.randint(0, model.config.vocab_size, (rows, length))
    with torch.inference_mode():
        start = time.perf_counter()
        model(input_ids=ids, use_cache=False)
        return rows * length, time.perf_counter() - start


def hf_run(model, tokenizer, texts: list[str], samples: int, max_new_tokens: int, seed: int,
           eos_ids: list[int]) -> tuple[int, float]:
    torch.manual_seed(seed)
    start = time.perf_counter()
    with torch.inference_mode():
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        output = model.generate(**encoded, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                num_return_sequences=samples, max_new_tokens=max_new_tokens,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_ids)
    seconds = time.perf_counter() - start
    width = encoded["input_ids"].shape[1]
    tokens = 0
    for row in output[:, width:].tolist():
        ends = [i for i, t in enumerate(row) if t in eos_ids]
        tokens += ends[0] + 1 if ends else len(row)
    return tokens, seconds


def ours_run(model, tokenizer, texts: list[str], samples: int, max_new_tokens: int, seed: int,
             sampler: str = "fast") -> tuple[int, float]:
    start = time.perf_counter()
    results = generate(model, tokenizer, texts, samples_per_prompt=samples,
                       decoding=DecodingConfig(max_new_tokens=max_new_tokens), batch_size=len(texts) * samples,
                       seed=seed, progress=False, sampler=sampler)
    return sum(g.num_tokens for per in results for g in per), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per workload (new seeds each)")
    parser.add_argument("--quick", action="store_true", help="N = 16 and 64 short prompts and one rollout, 1 round")
    parser.add_argument("--with_previous", action="store_true", help="also time generate(sampler='hf')")
    parser.add_argument("--profile", action="store_true",
                        help="print where the time of ours goes (torch profiler) on the first bon workload")
    parser.add_argument("--only", default="", help="run only the workloads whose name contains this (e.g. rollout)")
    parser.add_argument("--model_name", default="default")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model = load_causal_lm(args.model_name).eval()
    tokenizer = load_tokenizer(args.model_name)
    tokenizer.padding_side = "left"
    config_eos = model.generation_config.eos_token_id
    eos_ids = sorted({tokenizer.eos_token_id} | (set(config_eos) if isinstance(config_eos, (list, tuple))
                                                  else {config_eos} - {None}))
    prompts, _ = load_prompts("hh-rlhf:helpful-base", split="all", limit=400)
    texts = [render_prompt(p.messages, "chat", tokenizer) for p in prompts]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    short = [t for t, n in zip(texts, lengths, strict=True) if n <= 64]
    long = [t for t, n in zip(texts, lengths, strict=True) if 64 < n <= 256]

    # (name, prompts, answers per prompt)
    workloads = [("bon N=16 ≤64", short[:4], 16), ("bon N=64 ≤64", short[4:6], 64)]
    if not args.quick:
        workloads += [("bon N=256 ≤64", short[6:7], 256), ("bon N=64 ≤256", long[:2], 64)]
    workloads += [("rollout 8×4 ≤256", long[2:10], 4)]
    if not args.quick:
        workloads += [("rollout 16×1 ≤256", long[10:26], 1)]
    workloads = [w for w in workloads if args.only in w[0]]
    rounds = 1 if args.quick else args.rounds

    print(f"model={args.model_name} threads={torch.get_num_threads()} max_new_tokens={args.max_new_tokens} "
          f"rounds={rounds} load average at start {os.getloadavg()[0]:.2f}")
    # warm-up (allocator, kernels), not timed
    ours_run(model, tokenizer, short[:1], 4, 4, 0)
    hf_run(model, tokenizer, short[:1], 4, 4, 0, eos_ids)

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        name, group, samples = workloads[1]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            tokens, seconds = ours_run(model, tokenizer, group, samples, args.max_new_tokens, args.seed)
        print(f"profile of ours on {name}: {tokens} tokens in {seconds:.1f} s (profiler overhead included)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))

    methods = ["ours", "hf", "R"] + (["previous"] if args.with_previous else [])
    summary = []
    for name, group, samples in workloads:
        plengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in group]
        width = round(statistics.mean(plengths)) + args.max_new_tokens
        totals = {m: [0, 0.0] for m in methods}
        gflops = []
        for r in range(rounds):
            seed = args.seed + 1000 * r
            for m in methods[r % len(methods):] + methods[: r % len(methods)]:
                if m == "ours":
                    tokens, seconds = ours_run(model, tokenizer, group, samples, args.max_new_tokens, seed)
                elif m == "previous":
                    tokens, seconds = ours_run(model, tokenizer, group, samples, args.max_new_tokens, seed, "hf")
                elif m == "hf":
                    tokens, seconds = hf_run(model, tokenizer, group, samples, args.max_new_tokens, seed, eos_ids)
                else:
                    gflops.append(matmul_gflops())
                    tokens, seconds = roofline(model, width)
                totals[m][0] += tokens
                totals[m][1] += seconds
        rate = {m: tokens / seconds for m, (tokens, seconds) in totals.items()}
        line = (f"{name:18s} P={len(group):2d} prompt tokens {min(plengths)}–{max(plengths)}  "
                f"R={rate['R']:6.1f} tok/s (fp32 matmul {statistics.median(gflops):5.1f} GFLOP/s)  "
                f"ours {rate['ours']:6.1f}  hf {rate['hf']:6.1f}"
                + (f"  previous {rate['previous']:6.1f}" if "previous" in rate else "")
                + f"  ours/R {rate['ours'] / rate['R']:.2f}  ours/hf {rate['ours'] / rate['hf']:.2f}x"
                + (f"  ours/previous {rate['ours'] / rate['previous']:.2f}x" if "previous" in rate else "")
                + f"  (ours {totals['ours'][0]} tokens in {totals['ours'][1]:.1f} s)")
        print(line, flush=True)
        summary.append(line)
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    print("SUMMARY generate_samples:")
    for line in summary:
        print("  " + line)


if __name__ == "__main__":
    main()
