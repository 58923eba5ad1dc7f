"""Benchmark: rlhf_lab.generation.generate against a plain Hugging Face generate loop, in one run.

Both sample from the same model with the same decoding (pure sampling: temperature 1, top_p 1, top_k 0), batch
size and max_new_tokens, on the same real prompts: the HH-RLHF helpful-base conversations embedded in the package
(``--prompts conversation``, what ``rlhf-lab generate`` feeds the model; multi-turn, so prompt lengths vary a lot)
or only their first user turn (``--prompts first_turn``), rendered with the tokenizer's chat template:

  baseline  prompts in their original order, cut into batches of ``--batch_size``, left padding, one
            ``model.generate(..., do_sample=True, max_new_tokens=M)`` call per batch;
  ours      ``rlhf_lab.generation.generate``: the same prompts in the batches ``plan_batches`` makes (sorted by
            length), with per-row stop handling.

The machine may be shared, and a burst of someone else's work can stretch one run by 2–5x. So the two methods run
interleaved batch by batch (baseline batch j next to ours batch j, alternating which goes first), and every
round is repeated. For that, ours is called once per planned batch (``generate(batch, batch_size=len(batch))``,
which is exactly one of the batches a single ``generate`` call over all prompts would run).

Throughput counts only real response tokens (up to and including the EOS). "Padding" is the share of the token
slots the model processed that held no real token: prompt (prefill, rows × padded width), decode (rows × steps
the batch ran; a finished row idles while a longer one in its batch goes on), and both together.

    .venv/bin/python bench/generate.py [--num_prompts 48] [--batch_size 16] [--max_new_tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import time
from dataclasses import dataclass
from importlib import resources

import torch

from rlhf_lab.data import load_prompts
from rlhf_lab.data.templates import render_prompt
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


@dataclass
class Tally:
    tokens: int = 0  # real response tokens, EOS included
    seconds: float = 0.0
    prompt_slots: int = 0
    prompt_real: int = 0
    decode_slots: int = 0

    def add(self, other: Tally) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds

    @property
    def padding(self) -> float:
        return 1 - (self.prompt_real + self.tokens) / (self.prompt_slots + self.decode_slots)

    def __str__(self) -> str:
        return (
            f"{self.tokens:6d} response tokens in {self.seconds:6.1f} s = {self.rate:6.1f} tok/s; padding: "
            f"prompt {1 - self.prompt_real / self.prompt_slots:5.1%}, "
            f"decode {1 - self.tokens / self.decode_slots:5.1%}, all {self.padding:5.1%}"
        )


def response_length(new_ids: list[int], eos_ids: set[int]) -> int:
    """Real response tokens in one row's generated region: up to and including the first EOS."""
    for position, token in enumerate(new_ids):
        if token in eos_ids:
            return position + 1
    return len(new_ids)


def baseline_batch(
    model, tokenizer, texts: list[str], max_new_tokens: int, seed: int, eos_ids: set[int]
) -> Tally:
    """Plain HF on one batch: tokenizer left padding, one ``model.generate`` call."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    with torch.inference_mode():
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
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
    tokens = sum(response_length(row, eos_ids) for row in output[:, width:].tolist())
    return Tally(
        tokens=tokens,
        seconds=time.perf_counter() - start,
        prompt_slots=output.shape[0] * width,
        prompt_real=int(encoded["attention_mask"].sum()),
        decode_slots=output.shape[0] * (output.shape[1] - width),
    )


def ours_batch(
    model, tokenizer, texts: list[str], prompt_lengths: list[int], max_new_tokens: int, seed: int
) -> Tally:
    """rlhf_lab.generation.generate on one planned batch."""
    start = time.perf_counter()
    results = generate(
        model,
        tokenizer,
        texts,
        decoding=DecodingConfig(max_new_tokens=max_new_tokens),
        batch_size=len(texts),
        seed=seed,
        progress=False,
    )
    seconds = time.perf_counter() - start
    lengths = [g.num_tokens for per_prompt in results for g in per_prompt]
    return Tally(
        tokens=sum(lengths),
        seconds=seconds,
        prompt_slots=len(texts) * max(prompt_lengths),
        prompt_real=sum(prompt_lengths),
        decode_slots=len(texts) * max(lengths),  # the batch runs until its longest response ends
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_prompts", type=int, default=48, help="HH-RLHF prompts (file order)")
    parser.add_argument("--batch_size", type=int, default=16, help="sequences per batch, both methods")
    parser.add_argument("--max_new_tokens", type=int, default=64, help="response token limit, both methods")
    parser.add_argument("--model_name", default="default", help="default | tiny-random | an HF model dir")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over all prompts (new seeds each)")
    parser.add_argument("--seed", type=int, default=0, help="base seed")
    parser.add_argument("--prompts", choices=("conversation", "first_turn"), default="conversation",
                        help="whole HH conversations (as `generate` uses them) or only their first user turn")
    args = parser.parse_args()

    model = load_causal_lm(args.model_name).eval()
    tokenizer = load_tokenizer(args.model_name)
    tokenizer.padding_side = "left"  # for the baseline; ours pads by itself
    config_eos = model.generation_config.eos_token_id
    eos_ids = {tokenizer.eos_token_id} | (
        set(config_eos) if isinstance(config_eos, (list, tuple)) else {config_eos} - {None}
    )

    if args.prompts == "first_turn":
        conversations = [[{"role": "user", "content": t}] for t in hh_first_user_turns(args.num_prompts)]
    else:  # what `rlhf-lab generate` feeds the model: whole multi-turn conversations, lengths vary a lot
        prompts, _ = load_prompts("hh-rlhf:helpful-base", split="all", limit=args.num_prompts)
        conversations = [p.messages for p in prompts]
    texts = [render_prompt(messages, "chat", tokenizer) for messages in conversations]
    lengths = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
    size = args.batch_size
    baseline_batches = [
        list(range(start, min(start + size, len(texts)))) for start in range(0, len(texts), size)
    ]
    ours_batches = [[i for i, _ in batch] for batch in plan_batches(lengths, 1, size)]
    print(
        f"model={args.model_name} prompts={len(texts)} (prompt tokens min/mean/max {min(lengths)}/"
        f"{sum(lengths) / len(lengths):.1f}/{max(lengths)}) batch_size={size} "
        f"max_new_tokens={args.max_new_tokens} batches={len(ours_batches)} threads={torch.get_num_threads()}"
    )

    def run(name: str, j: int, seed: int) -> Tally:
        if name == "baseline":
            rows = baseline_batches[j]
            return baseline_batch(
                model, tokenizer, [texts[i] for i in rows], args.max_new_tokens, seed, eos_ids
            )
        rows = ours_batches[j]
        return ours_batch(
            model, tokenizer, [texts[i] for i in rows], [lengths[i] for i in rows], args.max_new_tokens, seed
        )

    # Warm-up at the full batch shape (allocator, kernels), not timed.
    baseline_batch(model, tokenizer, texts[:size], 8, 0, eos_ids)
    ours_batch(model, tokenizer, texts[:size], lengths[:size], 8, 0)

    totals = {"baseline": Tally(), "ours": Tally()}
    round_ratios = []
    step = 0
    for round_index in range(args.repeats):
        round_tally = {"baseline": Tally(), "ours": Tally()}
        for j in range(len(ours_batches)):
            seed = args.seed + 1000 * round_index + j
            order = ("baseline", "ours") if step % 2 == 0 else ("ours", "baseline")
            step += 1
            for name in order:
                round_tally[name].add(run(name, j, seed))
        for name, tally in round_tally.items():
            totals[name].add(tally)
            print(f"round {round_index} {name:8s}: {tally}")
        round_ratios.append(round_tally["ours"].rate / round_tally["baseline"].rate)
        print(f"round {round_index} ratio ours/baseline tok/s: {round_ratios[-1]:.2f}x")

    for name, tally in totals.items():
        print(f"total   {name:8s}: {tally}")
    ours, base = totals["ours"], totals["baseline"]
    print(
        f"SUMMARY generate: ours {ours.rate:.1f} tok/s vs HF baseline {base.rate:.1f} tok/s = "
        f"{ours.rate / base.rate:.2f}x (median per round {statistics.median(round_ratios):.2f}x); wall "
        f"{ours.seconds:.1f} s vs {base.seconds:.1f} s; padding {ours.padding:.1%} vs {base.padding:.1%} "
        f"({len(texts)} prompts, batch {size}, max_new_tokens {args.max_new_tokens}, {args.repeats} rounds)"
    )


if __name__ == "__main__":
    main()
