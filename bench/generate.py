"""Benchmark: rlhf_lab.generation.generate against a plain Hugging Face generate loop, in one run.

Both sample from the same model, with the same decoding (pure sampling: temperature 1, top_p 1, top_k 0), the same
batch size and max_new_tokens, on the same real prompts (single-turn user messages from the embedded HH-RLHF
helpful-base test file, rendered with the tokenizer's chat template):

  baseline  prompts in their original order, batches of ``--batch_size``, left padding, one
            ``model.generate(..., do_sample=True, max_new_tokens=M)`` call per batch;
  ours      ``rlhf_lab.generation.generate`` (length-sorted batches, per-row stop handling).

Runs alternate in ABBA order (baseline, ours, ours, baseline, ...) so slow drifts of a shared machine hit
both; the summary gives the overall ratio and the median of the per-round ratios (adjacent runs, least noisy).
Throughput counts only real response tokens (up to and including the EOS); "padding" is the share of token
slots the model processed that held no real token, split into the prompt (prefill: rows × padded width) and the decode steps
(rows × steps the batch ran; a finished row idles while a longer row in its batch goes on).

    .venv/bin/python bench/generate.py [--num_prompts 48] [--batch_size 16] [--max_new_tokens 64] [--repeats 4]
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import time
from importlib import resources

import torch

from rlhf_lab.generation import DecodingConfig, generate, plan_batches
from rlhf_lab.models import load_causal_lm, load_tokenizer

HUMAN, ASSISTANT = "\n\nHuman: ", "\n\nAssistant:"


def hh_first_user_turns(limit: int) -> list[str]:
    """The first Human turn of each ``chosen`` transcript in the embedded HH-RLHF file, in file order."""
    path = resources.files("rlhf_lab") / "data/embedded/hh-rlhf/helpful-base-test.jsonl.gz"
    turns: list[str] = []
    with gzip.open(str(path), "rt", encoding="utf-8") as handle:
        for line in handle:
            transcript = json.loads(line)["chosen"]
            if not transcript.startswith(HUMAN):
                continue
            body = transcript[len(HUMAN) :]
            end = body.find(ASSISTANT)
            turn = (body if end < 0 else body[:end]).strip()
            if turn:
                turns.append(turn)
            if len(turns) == limit:
                break
    return turns


def response_length(new_ids: list[int], eos_ids: set[int]) -> int:
    """Real response tokens in one row's generated region: up to and including the first EOS."""
    for position, token in enumerate(new_ids):
        if token in eos_ids:
            return position + 1
    return len(new_ids)


def run_baseline(model, tokenizer, texts, batch_size, max_new_tokens, seed, eos_ids):
    """Plain HF: input order, left padding, one generate call per batch.

    Returns (response tokens, seconds, prompt slots, real prompt tokens, decode slots).
    """
    tokens = prompt_slots = prompt_real = decode_slots = 0
    torch.manual_seed(seed)
    start = time.perf_counter()
    with torch.inference_mode():
        for offset in range(0, len(texts), batch_size):
            batch = texts[offset : offset + batch_size]
            encoded = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
            output = model.generate(
                **encoded,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,  # HF's default top_k is 50; the comparison needs the same distribution as ours
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=sorted(eos_ids),
            )
            width = encoded["input_ids"].shape[1]
            tokens += sum(response_length(row, eos_ids) for row in output[:, width:].tolist())
            prompt_slots += output.shape[0] * width
            prompt_real += int(encoded["attention_mask"].sum())
            decode_slots += output.shape[0] * (output.shape[1] - width)
    return tokens, time.perf_counter() - start, prompt_slots, prompt_real, decode_slots


def run_ours(model, tokenizer, texts, prompt_lengths, batch_size, max_new_tokens, seed):
    """rlhf_lab.generation.generate; same return tuple as :func:`run_baseline`."""
    start = time.perf_counter()
    results = generate(
        model,
        tokenizer,
        texts,
        decoding=DecodingConfig(max_new_tokens=max_new_tokens),
        batch_size=batch_size,
        seed=seed,
        progress=False,
    )
    seconds = time.perf_counter() - start
    tokens = sum(g.num_tokens for per_prompt in results for g in per_prompt)
    prompt_slots = prompt_real = decode_slots = 0
    for batch in plan_batches(prompt_lengths, 1, batch_size):  # the batches generate ran
        prompt_slots += len(batch) * max(prompt_lengths[i] for i, _ in batch)
        prompt_real += sum(prompt_lengths[i] for i, _ in batch)
        # a batch runs until its longest response ends
        decode_slots += len(batch) * max(results[i][k].num_tokens for i, k in batch)
    return tokens, seconds, prompt_slots, prompt_real, decode_slots


def describe(tokens: int, seconds: float, prompt_slots: int, prompt_real: int, decode_slots: int) -> str:
    return (
        f"{tokens:6d} response tokens in {seconds:6.1f} s = {tokens / seconds:6.1f} tok/s; padding: "
        f"prompt {1 - prompt_real / prompt_slots:5.1%}, decode {1 - tokens / decode_slots:5.1%}, "
        f"all {1 - (prompt_real + tokens) / (prompt_slots + decode_slots):5.1%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--num_prompts", type=int, default=48, help="HH-RLHF prompts to generate for (file order)"
    )
    parser.add_argument(
        "--batch_size", type=int, default=16, help="sequences per generate call, both methods"
    )
    parser.add_argument("--max_new_tokens", type=int, default=64, help="response token limit, both methods")
    parser.add_argument(
        "--model_name", default="default", help="default | tiny-random | an HF model directory"
    )
    parser.add_argument("--repeats", type=int, default=4, help="rounds of (baseline, ours), in ABBA order")
    parser.add_argument("--seed", type=int, default=0, help="round r uses seed + r for both methods")
    args = parser.parse_args()

    model = load_causal_lm(args.model_name).eval()
    tokenizer = load_tokenizer(args.model_name)
    tokenizer.padding_side = "left"  # the baseline pads with the tokenizer; ours pads by itself
    eos_ids = {tokenizer.eos_token_id}
    config_eos = model.generation_config.eos_token_id
    eos_ids |= set(config_eos) if isinstance(config_eos, (list, tuple)) else {config_eos} - {None}

    turns = hh_first_user_turns(args.num_prompts)
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": turn}], tokenize=False, add_generation_prompt=True
        )
        for turn in turns
    ]
    prompt_lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    print(
        f"model={args.model_name} prompts={len(texts)} (tokens min/mean/max "
        f"{min(prompt_lengths)}/{sum(prompt_lengths) / len(prompt_lengths):.1f}/{max(prompt_lengths)}) "
        f"batch_size={args.batch_size} max_new_tokens={args.max_new_tokens} threads={torch.get_num_threads()}"
    )

    # Warm-up (allocator, kernels at the full batch shape) outside the timed runs.
    warm = slice(0, args.batch_size)
    run_baseline(model, tokenizer, texts[warm], args.batch_size, 8, 0, eos_ids)
    run_ours(model, tokenizer, texts[warm], prompt_lengths[warm], args.batch_size, 8, 0)

    totals = {"baseline": [0, 0.0, 0, 0, 0], "ours": [0, 0.0, 0, 0, 0]}
    round_ratios = []
    for round_index in range(args.repeats):
        seed = args.seed + round_index
        rate = {}
        # ABBA order: a slow drift of the machine (other jobs) does not favour the method that runs first.
        order = ("baseline", "ours") if round_index % 2 == 0 else ("ours", "baseline")
        for name in order:
            if name == "baseline":
                measured = run_baseline(
                    model, tokenizer, texts, args.batch_size, args.max_new_tokens, seed, eos_ids
                )
            else:
                measured = run_ours(
                    model, tokenizer, texts, prompt_lengths, args.batch_size, args.max_new_tokens, seed
                )
            for slot, value in enumerate(measured):
                totals[name][slot] += value
            rate[name] = measured[0] / measured[1]
            print(f"round {round_index} {name:8s}: {describe(*measured)}")
        round_ratios.append(rate["ours"] / rate["baseline"])
        print(f"round {round_index} ratio ours/baseline: {round_ratios[-1]:.2f}x")

    rates = {}
    for name, measured in totals.items():
        rates[name] = measured[0] / measured[1]
        print(f"total   {name:8s}: {describe(*measured)}")
    ratio = rates["ours"] / rates["baseline"]
    print(
        f"SUMMARY generate tok/s: ours {rates['ours']:.1f} vs HF baseline {rates['baseline']:.1f} "
        f"= {ratio:.2f}x overall, median per-round ratio {statistics.median(round_ratios):.2f}x "
        f"(wall {totals['ours'][1]:.1f} s vs {totals['baseline'][1]:.1f} s; prompts {len(texts)}, "
        f"batch {args.batch_size}, max_new_tokens {args.max_new_tokens}, {args.repeats} rounds)"
    )


if __name__ == "__main__":
    main()
