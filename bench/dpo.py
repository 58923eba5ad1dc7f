"""Benchmark: DPO training, rlhf_lab's ``dpo`` recipe against TRL's ``DPOTrainer``, in one run.

Both train the same model (``--model_name``, fp32, CPU; ``--trainable lora`` or ``full``, the same for both) with
the sigmoid DPO loss (β 0.1) on the same pairs: the first ``--num_pairs`` of the embedded HH-RLHF helpful-base
train split whose prompt + longer reply fit in ``--max_length`` tokens (the others are left out for both, so
neither truncates), given to both as the same conversational ``prompt``/``chosen``/``rejected`` JSONL file and
rendered with the model's chat template. ``--batch_size`` pairs per optimizer step as ``--micro_batch`` pairs ×
accumulation, ``--steps`` steps, AdamW at the same learning rate, linear decay, gradient clipping at 1.

Same batches, checked: TRL reads the pairs sequentially (``train_sampling_strategy="sequential"``) from a dataset
laid out in the order ours draws them (``engine.global_batches`` with ours' seed), so every optimizer step sees
the same pairs; the bench checks that TRL's token ids (prompt + reply) equal ours. Within a step, ours sorts the
step's pairs by length before cutting micro-batches, TRL takes them in order — one of the two savings measured.

TRL runs with its default ``precompute_ref_log_probs=False`` (a reference forward every step; with LoRA the
adapter is disabled for it, as ours does), and with ``--trl_precompute`` also with ``precompute_ref_log_probs=True``
(one pass before training, done in its constructor). TRL settings that differ from its defaults, to compare like with like:
``bf16=False``, ``gradient_checkpointing=False``, ``use_cpu=True``, no logging/eval/saving.

What is timed. Ours: the recipe's ``seconds/train`` (training loop) and ``seconds/reference`` (the one reference
pass). TRL: ``on_train_begin`` → ``on_train_end`` (its training loop); for the precompute run, its one-time
reference pass is estimated as (constructor time with precompute) − (constructor time without). Reported:
seconds per optimizer step of the training loop, and per step amortised with the one-time reference pass (which
covers every pair of the file; it is pro-rated to the pairs the timed steps train on, i.e. its cost per step in
a run of whole epochs).
Real tokens per step are printed for both (same pairs → same count); padding shares show the sorting effect.
Ours runs twice: with ``--share_prompt`` (the default: one row per pair, the prompt read once for both replies)
and without (a ``prompt + reply`` row per reply, as TRL), so the saving of each is visible.
The machine may be shared: runs are interleaved and the ratio is the median of per-repeat ratios.

    .venv/bin/python bench/dpo.py [--num_pairs 48] [--steps 4] [--batch_size 8] [--micro_batch 4]
        [--max_length 320] [--model_name default] [--trainable lora] [--repeats 1] [--trl_precompute]
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rlhf_lab.config import make_config
from rlhf_lab.data import load_pairs
from rlhf_lab.engine import global_batches
from rlhf_lab.models import load_tokenizer, resolve_model_path
from rlhf_lab.recipes import dpo

DATASET = "hh-rlhf:helpful-base"


def ours_config(args, data: Path, out: Path, share_prompt: bool = True) -> dpo.DPOConfig:
    return make_config(dpo.DPOConfig, {
        "model_name": args.model_name, "template": "chat", "dtype": "float32", "dataset": str(data), "split": "all",
        "max_length": args.max_length, "truncation": "drop", "trainable": args.trainable, "loss": "dpo",
        "beta": 0.1, "per_device_train_batch_size": args.micro_batch,
        "gradient_accumulation_steps": args.batch_size // args.micro_batch, "max_steps": args.steps,
        "learning_rate": args.learning_rate, "seed": args.seed, "eval_limit": 0, "save_steps": 0,
        "progress": False, "output_dir": str(out), "overwrite_output_dir": True, "ref_batch_size": 8,
        "share_prompt": share_prompt,
    })


def run_ours(args, data: Path, tmp: Path, repeat: int, share_prompt: bool = True) -> dict:
    out = tmp / f"ours-{repeat}-{share_prompt}"
    result = dpo.run(ours_config(args, data, out, share_prompt))
    shutil.rmtree(out, ignore_errors=True)
    return {"train_s": result["seconds/train"], "ref_s": result["seconds/reference"]}


def run_trl(args, rows: list[dict], ours_ids: list[list[int]], tmp: Path, repeat: int, precompute: bool) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PrinterCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    tokenizer = load_tokenizer(args.model_name)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(args.model_name), dtype=torch.float32)
    peft_config = None
    if args.trainable == "lora":
        from peft import LoraConfig

        probe = ours_config(args, Path("x"), Path("x"))
        peft_config = LoraConfig(r=probe.lora_r, lora_alpha=probe.lora_alpha, lora_dropout=probe.lora_dropout,
                                 target_modules=probe.lora_targets(), task_type="CAUSAL_LM")
    out = tmp / f"trl-{repeat}"
    config = DPOConfig(
        output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.batch_size // args.micro_batch, learning_rate=args.learning_rate,
        lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, beta=0.1,
        loss_type=["sigmoid"], bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, seed=args.seed,
        max_length=args.max_length + 8, train_sampling_strategy="sequential", dataloader_num_workers=0,
        report_to="none", save_strategy="no", eval_strategy="no", logging_strategy="no", disable_tqdm=True,
        precompute_ref_log_probs=precompute, precompute_ref_batch_size=8,
    )
    shapes: list[tuple[int, int, int]] = []
    collate = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)
    marks: dict[str, float] = {}

    def recording_collator(examples):
        batch = collate(examples)
        if "begin" in marks:  # training batches only (not the precompute pass)
            shapes.append((batch["input_ids"].shape[0], batch["input_ids"].shape[1],
                           int(batch["attention_mask"].sum())))
        return batch

    class Timer(TrainerCallback):
        def on_train_begin(self, a, state, control, **kwargs):
            marks["begin"] = time.perf_counter()

        def on_train_end(self, a, state, control, **kwargs):
            marks["end"] = time.perf_counter()

    start = time.perf_counter()
    trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         data_collator=recording_collator, peft_config=peft_config, callbacks=[Timer()])
    init_s = time.perf_counter() - start
    trainer.remove_callback(PrinterCallback)
    got = [p + c for p, c in zip(trainer.train_dataset["prompt_ids"], trainer.train_dataset["chosen_ids"],
                                 strict=True)]
    if got != ours_ids:
        raise SystemExit("TRL's token ids differ from ours: the comparison would not be like with like")
    trainer.train()
    real = sum(s[2] for s in shapes)
    padded = sum(s[0] * s[1] for s in shapes)
    del trainer, model
    gc.collect()
    shutil.rmtree(out, ignore_errors=True)
    return {"train_s": marks["end"] - marks["begin"], "init_s": init_s, "tokens": real, "padding": 1 - real / padded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_pairs", type=int, default=48, help="HH-RLHF train pairs loaded (before the drop)")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps, every run")
    parser.add_argument("--batch_size", type=int, default=8, help="pairs per optimizer step")
    parser.add_argument("--micro_batch", type=int, default=4, help="pairs per forward pass (accumulation = rest)")
    parser.add_argument("--max_length", type=int, default=320, help="prompt + reply tokens; longer pairs left out")
    parser.add_argument("--model_name", default="default", help="default | tiny-random | an HF model dir")
    parser.add_argument("--trainable", default="lora", choices=("lora", "full"))
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds of the comparison")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trl_precompute", action="store_true",
                        help="also run TRL with precompute_ref_log_probs=True (a third run)")
    args = parser.parse_args()
    if args.batch_size % args.micro_batch:
        parser.error("--batch_size must be a multiple of --micro_batch")

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    tmp = Path(tempfile.mkdtemp(prefix="bench-dpo-"))
    tokenizer = load_tokenizer(args.model_name)

    # the pairs that fit (ours' tokenization, truncation=drop), in one conversational file both read
    pairs, _ = load_pairs(DATASET, split="train", limit=args.num_pairs)
    probe = ours_config(args, tmp / "x", tmp / "x")
    kept = [p for p in pairs if dpo.pair_token_ids([p], tokenizer, probe)[0]]
    data = tmp / "pairs.jsonl"
    rows = [{"prompt": p.prompt.messages, "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}]} for p in kept]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tokenized, _ = dpo.pair_token_ids(kept, tokenizer, probe)
    order = [i for _, _, batch in global_batches(len(kept), args.batch_size, args.seed, 0, args.steps) for i in batch]
    trl_rows = [rows[i] for i in order]
    ours_ids = [tokenized[i].prompt_ids + tokenized[i].chosen_ids for i in order]
    step_tokens = sum(len(tokenized[i].prompt_ids) * 2 + len(tokenized[i].chosen_ids) + len(tokenized[i].rejected_ids)
                      for i in order) / args.steps
    # ours' forward slots: each step's pairs sorted by length, cut into micro-batches; a row per reply (chosen +
    # rejected rows together), or with share_prompt one row per pair holding the prompt once
    ours_real = ours_padded = shared_real = shared_padded = 0
    for s in range(args.steps):
        step = sorted(order[s * args.batch_size:(s + 1) * args.batch_size], key=lambda i: tokenized[i].length)
        for m in range(0, len(step), args.micro_batch):
            micro = [tokenized[i] for i in step[m:m + args.micro_batch]]
            ours_padded += 2 * len(micro) * max(p.length for p in micro)
            ours_real += sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in micro)
            rows_len = [len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in micro]
            shared_padded += len(micro) * max(rows_len)
            shared_real += sum(rows_len)
    print(f"model={args.model_name} trainable={args.trainable} pairs={len(kept)} of {len(pairs)} (≤ {args.max_length} "
          f"tokens) steps={args.steps} batch={args.batch_size} = {args.micro_batch} × "
          f"{args.batch_size // args.micro_batch} accumulation, real tokens/step {step_tokens:.0f}, "
          f"threads={torch.get_num_threads()} repeats={args.repeats}", flush=True)

    results: dict[str, list[dict]] = {"ours": [], "ours_rows": [], "trl": [], "trl_pre": []}
    runs = {"ours": lambda r: run_ours(args, data, tmp, r),
            "ours_rows": lambda r: run_ours(args, data, tmp, r, share_prompt=False),
            "trl": lambda r: run_trl(args, trl_rows, ours_ids, tmp, r, False)}
    if args.trl_precompute:
        runs["trl_pre"] = lambda r: run_trl(args, trl_rows, ours_ids, tmp, r, True)
    try:
        for repeat in range(args.repeats):
            names = list(runs) if repeat % 2 == 0 else list(runs)[::-1]
            for name in names:
                result = runs[name](repeat)
                results[name].append(result)
                print(f"  {name} (repeat {repeat}): " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()),
                      flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    med = statistics.median
    steps = args.steps
    ours_step = [r["train_s"] / steps for r in results["ours"]]
    # ours' reference pass covers every pair of the file once; pro-rate it to the pairs these steps train on (as in
    # a run of whole epochs, where each pair's reference is computed once and used once per epoch)
    share = min(1.0, steps * args.batch_size / len(kept))
    ours_amort = [(r["train_s"] + r["ref_s"] * share) / steps for r in results["ours"]]
    trl_step = [r["train_s"] / steps for r in results["trl"]]
    rows_step = [r["train_s"] / steps for r in results["ours_rows"]]
    rows_amort = [(r["train_s"] + r["ref_s"] * share) / steps for r in results["ours_rows"]]
    print(f"\nforward slots per step: ours (prompt once) {shared_padded / steps:.0f} ({1 - shared_real / shared_padded:.1%}"
          f" padding), ours (a row per reply) {ours_padded / steps:.0f} ({1 - ours_real / ours_padded:.1%} padding, "
          f"sorted micro-batches), TRL padding {med([r['padding'] for r in results['trl']]):.1%}")
    print(f"{'run':34s} {'s/step (loop)':>14s} {'s/step (+ one-time ref pass)':>29s}")
    print(f"{'ours (ref cached once)':34s} {med(ours_step):14.2f} {med(ours_amort):29.2f}")
    print(f"{'ours, --share_prompt false':34s} {med(rows_step):14.2f} {med(rows_amort):29.2f}")
    print(f"{'TRL default (ref every step)':34s} {med(trl_step):14.2f} {med(trl_step):29.2f}")
    ratio = med([t / o for t, o in zip(trl_step, ours_step, strict=True)])
    ratio_amort = med([t / o for t, o in zip(trl_step, ours_amort, strict=True)])
    print(f"SUMMARY dpo {args.trainable}: ours {med(ours_step):.2f} s/step vs TRL default {med(trl_step):.2f} s/step "
          f"= {ratio:.2f}x faster ({ratio_amort:.2f}x counting ours' one-time reference pass; target >= 1.5x)")
    ratio_rows = med([t / o for t, o in zip(trl_step, rows_step, strict=True)])
    ratio_rows_amort = med([t / o for t, o in zip(trl_step, rows_amort, strict=True)])
    print(f"SUMMARY dpo {args.trainable} --share_prompt false: {ratio_rows:.2f}x ({ratio_rows_amort:.2f}x with its "
          f"reference pass); the shared prompt alone: {med([r / o for r, o in zip(rows_amort, ours_amort, strict=True)]):.2f}x")
    if results["trl_pre"]:
        pre_step = [r["train_s"] / steps for r in results["trl_pre"]]
        pre_amort = [(p["train_s"] + max(0.0, p["init_s"] - t["init_s"]) * share) / steps
                     for p, t in zip(results["trl_pre"], results["trl"], strict=True)]
        print(f"{'TRL precompute_ref_log_probs=True':34s} {med(pre_step):14.2f} {med(pre_amort):29.2f}")
        ratio_pre = med([t / o for t, o in zip(pre_step, ours_step, strict=True)])
        ratio_pre_amort = med([t / o for t, o in zip(pre_amort, ours_amort, strict=True)])
        print(f"SUMMARY dpo {args.trainable} vs TRL precompute_ref_log_probs=True: {ratio_pre:.2f}x (loop), "
              f"{ratio_pre_amort:.2f}x (both counting their one-time reference pass)")


if __name__ == "__main__":
    main()
