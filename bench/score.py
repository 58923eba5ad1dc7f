"""Benchmark: reward scoring with the prompt read once per prompt (``RewardScorer(share_prompt=True)``, the
default) against a row per text (``share_prompt=False``), in one run.

Two workloads, both on real HH-RLHF helpful-base train rows and a real reward model (``--model_name``, default
the embedded ``hh-gold``: SmolLM2-135M-Instruct + a head):

  pairs  ``--num_pairs`` preference pairs, both replies (what ``eval-rm`` and ``train-rm``'s held-out scoring do)
  bon    ``--num_prompts`` prompts × ``--n`` replies each (what best-of-n, RAFT and ``score`` on ``generate``
         output do); the replies are HH chosen replies of other rows, so their lengths are real

Each workload is scored both ways, alternating which goes first, ``--repeats`` times; the bench prints the
median wall time of each, their ratio, the forward slots (rows × padded width) of both layouts, and the largest
score difference between them (it must be float rounding). Nothing is asserted about time.

    .venv/bin/python bench/score.py [--model_name hh-gold] [--num_pairs 64] [--num_prompts 16] [--n 8]
        [--batch_size 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rlhf_lab.data import load_pairs
from rlhf_lab.rewards.scorer import RewardScorer


def slots(scorer: RewardScorer, prompts, replies, shared: bool) -> int:
    """Forward slots (rows × padded width, summed over passes) of the layout the scorer uses."""
    prompt_ids, reply_ids = scorer.tokenize_parts(prompts, replies)
    if not shared:
        widths = sorted(len(p) + len(r) for p, r in zip(prompt_ids, reply_ids, strict=True))
        return sum(len(chunk) * max(chunk) for chunk in
                   (widths[i:i + scorer.batch_size] for i in range(0, len(widths), scorer.batch_size)))
    return sum(len(batch) * max(len(p) + sum(len(reply_ids[i]) for i in idx) for p, idx in batch)
               for batch in scorer.shared_batches(prompt_ids, reply_ids))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name", default="hh-gold")
    parser.add_argument("--num_pairs", type=int, default=64)
    parser.add_argument("--num_prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=8, help="replies per prompt in the bon workload")
    parser.add_argument("--batch_size", type=int, default=16, help="texts per forward pass")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    rows, _ = load_pairs("hh-rlhf:helpful-base", split="train", limit=args.num_pairs + args.num_prompts * args.n,
                         on_bad_row="skip")
    pairs = rows[:args.num_pairs]
    workloads = {
        "pairs": ([p.prompt.messages for p in pairs] * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs]),
        "bon": ([rows[i].prompt.messages for i in range(args.num_prompts) for _ in range(args.n)],
                [rows[args.num_pairs + j].chosen for j in range(args.num_prompts * args.n)]),
    }
    scorers = {shared: RewardScorer([args.model_name], batch_size=args.batch_size, share_prompt=shared)
               for shared in (True, False)}
    scorers[True].score(*workloads["pairs"])  # warm-up, untimed
    print(f"model={args.model_name} threads={torch.get_num_threads()} batch_size={args.batch_size} "
          f"repeats={args.repeats}")
    for name, (prompts, replies) in workloads.items():
        times: dict[bool, list[float]] = {True: [], False: []}
        scores: dict[bool, torch.Tensor] = {}
        for repeat in range(args.repeats):
            for shared in ((True, False) if repeat % 2 == 0 else (False, True)):
                start = time.perf_counter()
                scores[shared] = scorers[shared].score(prompts, replies)
                times[shared].append(time.perf_counter() - start)
        one, rows_s = statistics.median(times[True]), statistics.median(times[False])
        s_shared, s_rows = (slots(scorers[True], prompts, replies, flag) for flag in (True, False))
        print(f"SUMMARY score {name} ({len(replies)} texts): prompt once {one:.1f} s vs a row per text "
              f"{rows_s:.1f} s = {rows_s / one:.2f}x; forward slots {s_shared} vs {s_rows} "
              f"({s_rows / s_shared:.2f}x); max |score difference| "
              f"{float((scores[True] - scores[False]).abs().max()):.1e}")


if __name__ == "__main__":
    main()
