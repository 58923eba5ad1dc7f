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

A third workload, ``trunk``, is the best-of-n study's scoring: ``--trunk_prompts`` prompts × ``--trunk_n`` replies
cut to ``--trunk_reply_tokens`` tokens (the length of sampled answers), scored by the gold (``--model_name``, a head
on the last layer) and ``--proxies`` head-only reward models on the first ``--proxy_layers`` layers of the same
base model (random heads: the cost does not depend on them). It times one trunk pass for all of them
(``RewardScorer(share_trunk=True)``, the default) against a pass per reward model, and both against the forward
roofline R (one no-grad forward of the base model over 64 sequences of the replies' full length, measured between
the rounds): ``processed tokens / s / R``, where processed tokens are what the scorer feeds (each prompt once, each
reply once, no padding), and the text tokens / s a row per text would have to reach to keep up.

    .venv/bin/python bench/score.py [--model_name hh-gold] [--num_pairs 64] [--num_prompts 16] [--n 8]
        [--batch_size 16] [--repeats 2] [--only pairs,bon,trunk] [--trunk_prompts 4] [--trunk_n 64]
        [--trunk_reply_tokens 24] [--proxies 4] [--proxy_layers 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rlhf_lab.data import load_pairs
from rlhf_lab.models import load_causal_lm, load_tokenizer
from rlhf_lab.rewards.embedded import resolve_reward_model
from rlhf_lab.rewards.model import load_reward_backbone
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


def roofline(model, length: int, rows: int = 64) -> float:
    """Tokens/s of one no-grad forward over ``rows`` random sequences of ``length`` tokens."""
    ids = torch.randint(0, model.config.vocab_size, (rows, length))
    with torch.inference_mode():
        start = time.perf_counter()
        model(input_ids=ids, use_cache=False)
        return rows * length / (time.perf_counter() - start)


def trunk_workload(args, rows) -> None:
    """The gold and head-only proxies on one trunk: one pass for all against a pass per reward model, and R."""
    gold_dir = resolve_reward_model(args.model_name)
    tokenizer = load_tokenizer(gold_dir)
    base = load_causal_lm("default")  # the gold's base model (hh-gold: SmolLM2-135M-Instruct)
    tmp = Path(tempfile.mkdtemp(prefix="bench-trunk-"))
    proxies = []
    for j in range(args.proxies):
        model = load_reward_backbone("default", tokenizer, num_layers=args.proxy_layers)
        with torch.no_grad():
            model.score.weight.copy_(torch.randn(model.score.weight.shape, generator=torch.Generator().manual_seed(j))
                                     / model.config.hidden_size ** 0.5)
        model.save_pretrained(tmp / f"proxy{j}", safe_serialization=True)
        tokenizer.save_pretrained(tmp / f"proxy{j}")
        proxies.append(str(tmp / f"proxy{j}"))
    names = [args.model_name, *proxies]
    P, N = args.trunk_prompts, args.trunk_n
    prompts = [rows[i].prompt.messages for i in range(P) for _ in range(N)]
    replies = []
    for j in range(P * N):
        ids = tokenizer(rows[(P + j) % len(rows)].chosen, add_special_tokens=False)["input_ids"]
        replies.append(tokenizer.decode(ids[:args.trunk_reply_tokens]))
    scorers = {share: RewardScorer(names, batch_size=args.batch_size, share_trunk=share) for share in (True, False)}
    prompt_ids, reply_ids = scorers[True].tokenize_parts(prompts, replies)
    processed = sum(len(p) for p in {tuple(p): p for p in prompt_ids}.values()) + sum(map(len, reply_ids))
    text_tokens = sum(len(p) + len(r) for p, r in zip(prompt_ids, reply_ids, strict=True))
    width = round(text_tokens / len(replies))
    scorers[True].score(prompts[:N], replies[:N])  # warm-up, untimed
    times: dict[bool, list[float]] = {True: [], False: []}
    rooflines, scores = [], {}
    for repeat in range(args.repeats):
        rooflines.append(roofline(base, width))
        for share in ((True, False) if repeat % 2 == 0 else (False, True)):
            start = time.perf_counter()
            scores[share] = scorers[share].score(prompts, replies)
            times[share].append(time.perf_counter() - start)
    rooflines.append(roofline(base, width))
    R = statistics.median(rooflines)
    one, each = statistics.median(times[True]), statistics.median(times[False])
    print(f"trunk: {len(names)} reward models ({args.model_name} + {args.proxies} heads on layer {args.proxy_layers}); "
          f"{P} prompts x {N} replies of <= {args.trunk_reply_tokens} tokens; processed {processed} tokens "
          f"(a row per text: {text_tokens}); R = {R:.0f} tok/s (64 x {width} tokens; runs "
          f"{', '.join(f'{r:.0f}' for r in rooflines)})")
    print(f"SUMMARY score trunk: one trunk pass {one:.1f} s vs a pass per reward model {each:.1f} s = "
          f"{each / one:.2f}x; one pass processes {processed / one:.0f} tok/s = {processed / one / R:.2f} R "
          f"(text tokens {text_tokens / one:.0f}/s = {text_tokens / one / R:.2f} R); a pass per RM "
          f"{processed / each:.0f} tok/s per all RMs; max |score difference| "
          f"{float((scores[True] - scores[False]).abs().max()):.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name", default="hh-gold")
    parser.add_argument("--num_pairs", type=int, default=64)
    parser.add_argument("--num_prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=8, help="replies per prompt in the bon workload")
    parser.add_argument("--batch_size", type=int, default=16, help="texts per forward pass")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", default="pairs,bon,trunk", help="comma-separated workloads to run")
    parser.add_argument("--trunk_prompts", type=int, default=4)
    parser.add_argument("--trunk_n", type=int, default=64)
    parser.add_argument("--trunk_reply_tokens", type=int, default=24)
    parser.add_argument("--proxies", type=int, default=4)
    parser.add_argument("--proxy_layers", type=int, default=20)
    args = parser.parse_args()
    only = set(args.only.split(","))

    rows, _ = load_pairs("hh-rlhf:helpful-base", split="train", on_bad_row="skip",
                         limit=max(args.num_pairs + args.num_prompts * args.n,
                                   args.trunk_prompts * (args.trunk_n + 1)))
    pairs = rows[:args.num_pairs]
    workloads = {
        "pairs": ([p.prompt.messages for p in pairs] * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs]),
        "bon": ([rows[i].prompt.messages for i in range(args.num_prompts) for _ in range(args.n)],
                [rows[args.num_pairs + j].chosen for j in range(args.num_prompts * args.n)]),
    }
    print(f"model={args.model_name} threads={torch.get_num_threads()} batch_size={args.batch_size} "
          f"repeats={args.repeats}")
    if "trunk" in only:
        trunk_workload(args, rows)
    workloads = {name: w for name, w in workloads.items() if name in only}
    if not workloads:
        return
    scorers = {shared: RewardScorer([args.model_name], batch_size=args.batch_size, share_prompt=shared)
               for shared in (True, False)}
    scorers[True].score(*next(iter(workloads.values())))  # warm-up, untimed
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
