"""Benchmark: reward-model training, rlhf_lab's ``train-rm`` recipe against TRL's ``RewardTrainer``, in one run.

Both train the same model (``--model_name``, fp32, CPU) on the same pairs: the first ``--num_pairs`` of the
embedded HH-RLHF helpful-base train split, rendered with the model's chat template (``--template chat``), pairs
with a text over ``--max_length`` tokens dropped (what both do by default), ``--batch_size`` pairs per step,
``--steps`` optimizer steps, AdamW at the same learning rate, linear decay, no warmup, no weight decay, gradient
norm clipped to 1. Modes (``--modes``, comma list):

  full      ours ``--trainable full``  vs  TRL full fine-tuning; ours runs twice: with ``--share_prompt`` (the
            default: a pair is one row, its prompt read once) and with ``--share_prompt false`` ("full rows": a
            row per text, the layout TRL uses)
  lora      ours ``--trainable lora``  vs  TRL with ``peft_config=LoraConfig(r=16, alpha=32, dropout 0,
            "all-linear", SEQ_CLS, modules_to_save=["score"])`` (r/alpha/dropout/targets read from ours' config); ours twice, as for full
  top:2     ours ``--trainable top:2`` (frozen trunk, cached): its one-time trunk feature pass is reported on its
            own and amortised over the steps; TRL has no such mode, so it is set against TRL full and TRL lora
  ensemble  for each mode of ``--ensemble_trainable`` (default head, top:1, top:2): ours ``--ensemble_size 5``
            against ``--ensemble_size 1`` (for top:2, the top:2 run): total time including the feature pass; the
            "seed's way" (five separate runs) is estimated as 5 × one member

Same batches, checked: TRL gets a dataset holding exactly the pairs ours trains on, in the order ours draws them
(``engine.global_batches`` with ours' seed), read sequentially (``train_sampling_strategy="sequential"``); the
bench checks that TRL's tokenized ids equal ours token for token, that every TRL batch has the shape and real
token count of ours' row-per-text layout (a recording collator), and that ours trained on those pairs (its ``carto.jsonl``); for top:K it
also checks that ours' exported member differs from the base model in its last layer, and prints a WARNING if
only the head trained. TRL is given the conversational format (``prompt``/``chosen``/``rejected`` messages),
which it renders with the same chat template: with plain text it would append an extra EOS, since a SmolLM2
chat reply ends ``<|im_end|>\\n``. TRL (and ours' "rows" runs) pad on the right to the longest text of the batch
(chosen and rejected in one forward pass); ours by default pads one row per pair to the longest pair row. No
packing; both use a pad id other than EOS (ours' ``reward_pad_token_id``). The header prints the forward slots
(rows × padded width) of both layouts.

TRL settings that differ from its defaults, to compare like with like: ``bf16=False`` (fp32),
``gradient_checkpointing=False`` (ours does not checkpoint), ``use_cpu=True``, no logging/eval/saving,
``report_to="none"``. TRL keeps its default optimizer implementation (``adamw_torch_fused``, the same AdamW math
as ours' ``torch.optim.AdamW`` with a faster kernel; ``--trl_optim adamw_torch`` gives it ours' kernel) and
its per-step metric syncs (``.item()`` calls).

What is timed. Ours: the recipe's ``seconds/train`` (the training loop, including its per-step metrics and
carto log writes; after model load, tokenization, optimizer set-up) and ``seconds/features`` (the trunk pass of
top:K; ~0 for lora/full). TRL: ``trainer.train()`` from its ``on_train_begin`` to its ``on_train_end`` callback
(the training loop, after dataloader and optimizer set-up; the conservative choice, used for tokens/s), and
the whole ``trainer.train()`` call (printed too). Not timed for either: model load, tokenization, export.
Tokens/s = real (non-pad) tokens of chosen + rejected texts in the trained batches / seconds.

The machine may be shared: the runs of each comparison are interleaved (ours then TRL, TRL then ours in the next
repeat, ...), every comparison is repeated ``--repeats`` times, medians and the median of per-repeat ratios are
reported. No absolute time is asserted.

Defaults (64 pairs, of which 43 fit in 256 tokens; 8 steps of 4 pairs; 2 repeats; 22 training runs) took 40
minutes on one core while the other core was busy (27 for full + lora, 12 for the three ensemble comparisons);
when other jobs share the cores, runs get slower and much noisier.

    .venv/bin/python bench/reward_model.py [--num_pairs 64] [--steps 8] [--batch_size 4] [--max_length 256]
        [--model_name default] [--modes full,lora,top:2,ensemble] [--repeats 2] [--ensemble_size 5]
        [--ensemble_trainable head,top:1,top:2] [--trl_optim adamw_torch]
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhf_lab.config import make_config
from rlhf_lab.data import load_pairs
from rlhf_lab.data.collate import tokenize_pairs
from rlhf_lab.engine import global_batches
from rlhf_lab.models import load_tokenizer, pad_right, resolve_model_path
from rlhf_lab.models.batching import split_shared_prefix
from rlhf_lab.recipes import reward_model
from rlhf_lab.rewards.model import MANIFEST, reward_pad_token_id

DATASET = "hh-rlhf:helpful-base"
TEMPLATE = "chat"
MODES = ("full", "lora", "top:2", "ensemble")


@dataclass
class Result:
    system: str  # ours | trl
    mode: str  # full | lora | top:2 | ens<k>
    repeat: int
    train_s: float  # training loop
    features_s: float = 0.0  # ours' one-time trunk pass (top:K)
    call_s: float = 0.0  # TRL: the whole trainer.train() call; ours: the whole recipe run (load + export too)
    tokens: int = 0  # real tokens of chosen + rejected in the trained batches (all members)
    note: str = ""

    @property
    def total_s(self) -> float:
        return self.features_s + self.train_s

    @property
    def rate(self) -> float:
        return self.tokens / self.train_s

    @property
    def amortised_rate(self) -> float:
        return self.tokens / self.total_s


@dataclass
class Setup:
    args: argparse.Namespace
    model_path: str
    pad_id: int
    pairs: list  # the loaded Pair objects (index = uid)
    train: list  # ours' TokenizedPair list after the max_length drop
    tmp: Path
    lengths: dict[int, int] = field(default_factory=dict)  # uid -> len(chosen) + len(rejected)

    def batches(self, seed: int) -> list[list[int]]:
        """Positions into ``train`` of each step's pairs, as ours draws them for a member with this seed."""
        return [positions for _, _, positions in
                global_batches(len(self.train), self.args.batch_size, seed, 0, self.args.steps)]

    def batch_shapes(self, seed: int) -> list[tuple[int, int, int]]:
        """(rows, padded width, real tokens) of every step's forward pass (chosen and rejected together)."""
        shapes = []
        for batch in self.batches(seed):
            texts = [t for i in batch for t in (self.train[i].chosen, self.train[i].rejected)]
            shapes.append((len(texts), max(map(len, texts)), sum(map(len, texts))))
        return shapes


# ---------------------------------------------------------------------------------------------------------
# Ours: the recipe, as `rlhf-lab train-rm` runs it
# ---------------------------------------------------------------------------------------------------------


def ours_config(setup: Setup, trainable: str, ensemble_size: int, output_dir: Path, share_prompt: bool = True):
    a = setup.args
    return make_config(reward_model.RewardModelConfig, {
        "model_name": a.model_name, "template": TEMPLATE, "dtype": "float32",
        "dataset": DATASET, "split": "train", "limit": a.num_pairs,
        "max_length": a.max_length, "truncation": "drop", "trainable": trainable,
        "ensemble_size": ensemble_size, "per_device_train_batch_size": a.batch_size, "max_steps": a.steps,
        "seed": a.seed, "eval_limit": 0, "save_steps": 0, "progress": False, "share_prompt": share_prompt,
        "output_dir": str(output_dir), "overwrite_output_dir": True,
    })


def run_ours(setup: Setup, mode: str, repeat: int, trainable: str, ensemble_size: int = 1,
             share_prompt: bool = True) -> Result:
    out = setup.tmp / f"ours-{mode.replace(':', '').replace(' ', '-')}-{repeat}"
    config = ours_config(setup, trainable, ensemble_size, out, share_prompt)
    start = time.perf_counter()
    result = reward_model.run(config)
    call = time.perf_counter() - start
    # what ours really trained on, from its own log: (member, step) -> uids
    steps: dict[tuple[int, int], list[int]] = {}
    for line in (out / "carto.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        steps.setdefault((row["member"], row["step"]), []).append(row["uid"])
    for j in range(ensemble_size):
        expected = [[setup.train[i].uid for i in batch] for batch in setup.batches(setup.args.seed + j)]
        logged = [steps[(j, s + 1)] for s in range(setup.args.steps)]
        if logged != expected:
            raise SystemExit(f"ours {mode}: member {j} trained on other pairs than the bench expects")
    tokens = sum(setup.lengths[uid] for uids in steps.values() for uid in uids)
    note = ""
    if trainable.startswith("top:"):
        note = f"top layers trained: {'yes' if top_layers_changed(setup, out) else 'NO (head only)'}"
    shutil.rmtree(out, ignore_errors=True)
    return Result("ours", mode, repeat, train_s=result["seconds/train"], features_s=result["seconds/features"],
                  call_s=call, tokens=tokens, note=note)


def top_layers_changed(setup: Setup, out: Path) -> bool:
    """Whether member 0 as exported differs from the base model in the last decoder layer (did top:K train it?)."""
    from safetensors import safe_open

    def tensors(directory: Path, prefix: str) -> dict[str, torch.Tensor]:
        found = {}
        for shard in sorted(directory.glob("*.safetensors")):
            with safe_open(str(shard), framework="pt") as f:
                found.update({k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)})  # noqa: SIM118
        return found

    layers = json.loads((Path(setup.model_path) / "config.json").read_text(encoding="utf-8"))["num_hidden_layers"]
    member = json.loads((out / MANIFEST).read_text(encoding="utf-8"))["members"][0]["path"]
    prefix = f"model.layers.{layers - 1}."
    base, trained = tensors(Path(setup.model_path), prefix), tensors(out / member, prefix)
    return any(not torch.equal(value, trained[key]) for key, value in base.items())


# ---------------------------------------------------------------------------------------------------------
# TRL: RewardTrainer on the same pairs, in the same batches
# ---------------------------------------------------------------------------------------------------------


def trl_dataset(setup: Setup):
    """Conversational preference rows, in the order ours trains on them (one row per pair per step)."""
    from datasets import Dataset

    rows = []
    for batch in setup.batches(setup.args.seed):
        for i in batch:
            pair = setup.pairs[setup.train[i].uid]
            rows.append({
                "prompt": [{"role": m["role"], "content": m["content"]} for m in pair.prompt.messages],
                "chosen": [{"role": "assistant", "content": pair.chosen}],
                "rejected": [{"role": "assistant", "content": pair.rejected}],
            })
    return Dataset.from_list(rows)


def run_trl(setup: Setup, mode: str, repeat: int, learning_rate: float, lora: dict | None) -> Result:
    from transformers import AutoModelForSequenceClassification, PrinterCallback, TrainerCallback
    from trl import RewardConfig, RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    a = setup.args
    tokenizer = load_tokenizer(a.model_name)
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(setup.pad_id)  # as ours: a pad that is not EOS
    model = AutoModelForSequenceClassification.from_pretrained(
        setup.model_path, num_labels=1, dtype=torch.float32, pad_token_id=setup.pad_id)
    peft_config = None
    if lora is not None:
        from peft import LoraConfig

        peft_config = LoraConfig(**lora)
    out = setup.tmp / f"trl-{mode}-{repeat}"
    config = RewardConfig(
        output_dir=str(out), max_steps=a.steps, per_device_train_batch_size=a.batch_size,
        gradient_accumulation_steps=1, learning_rate=learning_rate, lr_scheduler_type="linear", warmup_steps=0,
        weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0,
        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, seed=a.seed,
        max_length=a.max_length, pad_to_multiple_of=None, train_sampling_strategy="sequential",
        dataloader_num_workers=0, report_to="none", save_strategy="no", eval_strategy="no",
        logging_strategy="no", disable_tqdm=True, **({"optim": a.trl_optim} if a.trl_optim else {}),
    )
    seen: list[tuple[int, int, int]] = []
    collate = DataCollatorForPreference(pad_token_id=setup.pad_id)

    def recording_collator(examples):
        batch = collate(examples)
        seen.append((batch["input_ids"].shape[0], batch["input_ids"].shape[1], int(batch["attention_mask"].sum())))
        return batch

    marks: dict[str, float] = {}

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            marks["begin"] = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            marks["end"] = time.perf_counter()

    trainer = RewardTrainer(model=model, args=config, train_dataset=trl_dataset(setup), processing_class=tokenizer,
                            data_collator=recording_collator, peft_config=peft_config, callbacks=[Timer()])
    trainer.remove_callback(PrinterCallback)
    expected_ids = [(setup.train[i].chosen, setup.train[i].rejected)
                    for batch in setup.batches(a.seed) for i in batch]
    got_ids = list(zip(trainer.train_dataset["chosen_ids"], trainer.train_dataset["rejected_ids"], strict=True))
    if got_ids != expected_ids:
        raise SystemExit(f"TRL {mode}: its tokenized texts differ from ours")
    start = time.perf_counter()
    trainer.train()
    call = time.perf_counter() - start
    if seen != setup.batch_shapes(a.seed):
        raise SystemExit(f"TRL {mode}: its batches differ from ours: {seen} vs {setup.batch_shapes(a.seed)}")
    del trainer, model
    gc.collect()
    shutil.rmtree(out, ignore_errors=True)
    optim = getattr(config.optim, "value", config.optim)
    return Result("trl", mode, repeat, train_s=marks["end"] - marks["begin"], call_s=call,
                  tokens=sum(tokens for _, _, tokens in seen), note=f"optim {optim}")


def warm_up(setup: Setup) -> None:
    """One untimed forward + backward, so whichever run comes first does not pay one-time kernel set-up."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        setup.model_path, num_labels=1, dtype=torch.float32, pad_token_id=setup.pad_id)
    batch = setup.batches(setup.args.seed)[0]
    texts = [t for i in batch for t in (setup.train[i].chosen, setup.train[i].rejected)]
    input_ids, attention_mask = pad_right(texts, setup.pad_id)
    model(input_ids=input_ids, attention_mask=attention_mask).logits.sum().backward()
    del model
    gc.collect()


# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values)


def print_table(results: list[Result]) -> None:
    print(f"\n{'run':18s} {'repeat':>6s} {'tokens':>7s} {'features s':>10s} {'train s':>8s} {'tok/s':>7s} "
          f"{'tok/s amort.':>12s} {'call s':>7s}")
    for r in results:
        print(f"{r.system + ' ' + r.mode:18s} {r.repeat:6d} {r.tokens:7d} {r.features_s:10.2f} {r.train_s:8.2f} "
              f"{r.rate:7.1f} {r.amortised_rate:12.1f} {r.call_s:7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_pairs", type=int, default=64, help="HH-RLHF train pairs loaded (before the drop)")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps, every run")
    parser.add_argument("--batch_size", type=int, default=4, help="pairs per step (and per ensemble member)")
    parser.add_argument("--max_length", type=int, default=256, help="tokens per text; longer pairs are dropped")
    parser.add_argument("--model_name", default="default", help="default | tiny-random | an HF model dir")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds of every comparison")
    parser.add_argument("--ensemble_size", type=int, default=5, help="members in the ensemble comparison")
    parser.add_argument("--ensemble_trainable", default="head,top:1,top:2",
                        help="comma list of trainable modes whose k-member ensemble is set against one member")
    parser.add_argument("--seed", type=int, default=0, help="seed of both trainers (data order, head init)")
    parser.add_argument("--trl_optim", default=None, help="TRL's `optim` (default: TRL's default, "
                        "adamw_torch_fused; adamw_torch = the same kernel as ours)")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"--modes: unknown {', '.join(sorted(unknown))} (choose from {', '.join(MODES)})")

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()

    tokenizer = load_tokenizer(args.model_name)
    pairs, _ = load_pairs(DATASET, split="train", limit=args.num_pairs)
    train, dropped = tokenize_pairs(pairs, tokenizer, template=TEMPLATE, max_length=args.max_length, truncation="drop",
                                    keep="end")
    setup = Setup(args, resolve_model_path(args.model_name), reward_pad_token_id(tokenizer), pairs, train,
                  Path(tempfile.mkdtemp(prefix="bench-rm-")))
    setup.lengths = {p.uid: len(p.chosen) + len(p.rejected) for p in train}
    lengths = [len(t) for p in train for t in (p.chosen, p.rejected)]
    shapes = setup.batch_shapes(args.seed)
    padding = 1 - sum(s[2] for s in shapes) / sum(s[0] * s[1] for s in shapes)
    print(f"model={args.model_name} pairs={len(train)} of {len(pairs)} ({dropped} dropped over {args.max_length} "
          f"tokens; text tokens min/mean/max {min(lengths)}/{sum(lengths) / len(lengths):.1f}/{max(lengths)}) "
          f"batch={args.batch_size} pairs steps={args.steps} (pairs trained {args.steps * args.batch_size}, "
          f"padding {padding:.1%}) fp32 threads={torch.get_num_threads()} repeats={args.repeats}")
    # forward slots (batch rows × padded width) of the trained batches in the two layouts ours can use
    per_text = sum(rows * width for rows, width, _ in shapes)
    per_pair = 0
    for batch in setup.batches(args.seed):
        widths = [len(train[i].chosen) + len(train[i].rejected) - split_shared_prefix(train[i].chosen, train[i].rejected)
                  for i in batch]
        per_pair += len(widths) * max(widths)
    print(f"forward slots over the {args.steps} steps: a row per text {per_text}, a row per pair (prompt once) "
          f"{per_pair} = {per_pair / per_text:.2f}x; real text tokens {sum(s[2] for s in shapes)}")

    lrs = {m: ours_config(setup, m, 1, setup.tmp / "probe").learning_rate for m in ("full", "lora")}
    probe = ours_config(setup, "lora", 1, setup.tmp / "probe")
    lora = {"r": probe.lora_r, "lora_alpha": probe.lora_alpha, "lora_dropout": probe.lora_dropout,
            "target_modules": probe.lora_targets(), "task_type": "SEQ_CLS", "modules_to_save": ["score"]}

    # (name, [runs]): the runs of a comparison; their order flips every repeat
    plan = []
    for mode in ("full", "lora"):
        if mode in modes:
            plan.append((mode, [
                lambda r, m=mode: run_ours(setup, m, r, m),
                lambda r, m=mode: run_ours(setup, f"{m} rows", r, m, share_prompt=False),
                lambda r, m=mode: run_trl(setup, m, r, lrs[m], lora if m == "lora" else None)]))
    ensemble_modes = [t.strip() for t in args.ensemble_trainable.split(",") if t.strip()]
    if "ensemble" in modes:  # k = 1 against k = members, for every trainable mode asked (top:2 included)
        for trainable in ensemble_modes:
            plan.append((trainable, [
                lambda r, t=trainable: run_ours(setup, t, r, t),
                lambda r, t=trainable: run_ours(setup, f"{t} x{args.ensemble_size}", r, t, args.ensemble_size)]))
    if "top:2" in modes and not ("ensemble" in modes and "top:2" in ensemble_modes):
        plan.append(("top:2", [lambda r: run_ours(setup, "top:2", r, "top:2")]))

    warm_up(setup)
    results: list[Result] = []
    try:
        for repeat in range(args.repeats):
            for index, (_, runs) in enumerate(plan):
                order = runs if (repeat + index) % 2 == 0 else runs[::-1]
                for run in order:
                    result = run(repeat)
                    results.append(result)
                    print(f"  {result.system} {result.mode} (repeat {repeat}): {result.tokens} tokens, "
                          f"features {result.features_s:.1f} s, train {result.train_s:.1f} s = "
                          f"{result.rate:.1f} tok/s {result.note}".rstrip(), flush=True)
    finally:
        shutil.rmtree(setup.tmp, ignore_errors=True)
    print_table(results)
    report(results, args, ensemble_modes if "ensemble" in modes else [], 2 * len(train))


def report(results: list[Result], args: argparse.Namespace, ensemble_modes: list[str], num_texts: int) -> None:
    def of(system: str, mode: str) -> list[Result]:
        return sorted((r for r in results if r.system == system and r.mode == mode), key=lambda r: r.repeat)

    def rate(system: str, mode: str) -> float:
        return med([r.rate for r in of(system, mode)])

    print()
    for mode in ("full", "lora"):
        trl = of("trl", mode)
        for name in (mode, f"{mode} rows"):
            ours = of("ours", name)
            if not ours or not trl:
                continue
            ratios = [o.rate / t.rate for o, t in zip(ours, trl, strict=True)]
            layout = "a row per text, as TRL" if name.endswith("rows") else "a row per pair, prompt read once"
            print(f"SUMMARY {name} ({layout}): ours {rate('ours', name):.1f} tok/s vs TRL {rate('trl', mode):.1f} "
                  f"tok/s = {med(ratios):.2f}x (median of {len(ratios)} per-repeat ratios; target >= 1.5x); train s "
                  f"{med([r.train_s for r in ours]):.1f} vs {med([r.train_s for r in trl]):.1f} "
                  f"(TRL whole train() call {med([r.call_s for r in trl]):.1f} s)")
    top = of("ours", "top:2")
    if top:
        feats, train = med([r.features_s for r in top]), med([r.train_s for r in top])
        amortised = med([r.amortised_rate for r in top])
        versus = ", ".join(f"{amortised / rate('trl', m):.2f}x TRL {m} / {rate('ours', 'top:2') / rate('trl', m):.2f}x "
                           f"train-only" for m in ("full", "lora") if of("trl", m))
        print(f"SUMMARY top:2: train {rate('ours', 'top:2'):.1f} tok/s ({train:.1f} s); one-time trunk feature "
              f"pass {feats:.1f} s ({num_texts} texts = all train pairs, {1000 * feats / num_texts:.0f} ms/text); amortised over "
              f"{args.steps} steps {amortised:.1f} tok/s ({(feats + train) / args.steps:.2f} s/step)"
              + (f"; amortised vs {versus}" if versus else ""))
    frozen = [r for r in results if r.note.startswith("top layers trained: NO")]
    if frozen:
        print(f"WARNING: ours {', '.join(sorted({r.mode for r in frozen}))} left its top layers as loaded (only the "
              "head trained), so these numbers are for head-only training, not top:K")
    k = args.ensemble_size
    for trainable in ensemble_modes:
        one, many = of("ours", trainable), of("ours", f"{trainable} x{k}")
        if not one or not many:
            continue
        ratios = [e.total_s / o.total_s for o, e in zip(one, many, strict=True)]
        # both runs make the identical feature pass: pooling its timings removes most of the load noise
        pooled = med([r.features_s for r in one + many])
        train_one, train_many = med([r.train_s for r in one]), med([r.train_s for r in many])
        steady = (pooled + train_many) / (pooled + train_one)
        print(f"SUMMARY ensemble {trainable}: x{k} members {med([r.total_s for r in many]):.1f} s vs 1 member "
              f"{med([r.total_s for r in one]):.1f} s (features + train) = {med(ratios):.2f}x (median per repeat; "
              f"target <= 1.5x); feature pass pooled over both runs {pooled:.1f} s: {steady:.2f}x; train "
              f"{train_many:.1f} vs {train_one:.1f} s; seed's way ({k} separate runs) {k * (pooled + train_one):.1f} s "
              f"= {k * (pooled + train_one) / (pooled + train_many):.2f}x the shared-trunk ensemble")


if __name__ == "__main__":
    main()
