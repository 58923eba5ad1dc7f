"""Benchmark: one GRPO step, rlhf_lab's ``grpo`` recipe against TRL's ``GRPOTrainer`` (``use_vllm=False``), in one run.

Both train the same model (``--model_name``, fp32, CPU, LoRA r16 α32 on all linear layers, the reference = the
adapter disabled, β = 0.04 so both run a reference pass) on the same prompts (the first HH-RLHF helpful-base train
prompts of at most ``--max_prompt_length`` tokens, conversational, rendered with the model's chat template), with
``--num_generations`` G answers per prompt, ``--prompts`` prompts per step (= one optimizer step: TRL's
``per_device_train_batch_size`` = prompts × G completions), ``--max_new_tokens``, temperature 1, the same reward
model (``--reward_model``, default the embedded ``hh-gold``), loss ``dapo``, group-std advantages, μ = 1.

The samplers differ (ours: the fast sampler, one prefill per prompt; TRL: HF ``generate``), so the answers and
their lengths differ: the comparison is seconds per step and seconds per sampled completion token (the work
scales with it). What is timed: ours, the recipe's ``time/step``; TRL, ``on_step_begin`` → ``on_step_end`` (its
generation, scoring, reference and training all happen inside the step). The first step of each run warms up and
is left out. Runs alternate (ours, TRL, ours, TRL, ...) and the ratios are medians over ``--repeats``.

``--with_ppo`` also times ours' PPO on the same prompts with the same number of sampled answers per step
(prompts × G rollouts, one PPO epoch, one mini-batch: one update per batch like GRPO at μ = 1), per sampled token.

The machine may be shared: the load average is printed; read the ratios.

    .venv/bin/python bench/grpo.py [--prompts 2] [--num_generations 4] [--max_new_tokens 32] [--steps 3]
        [--repeats 1] [--with_ppo]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rlhf_lab.config import make_config
from rlhf_lab.data import load_prompts
from rlhf_lab.io import read_jsonl
from rlhf_lab.models import load_tokenizer, resolve_model_path
from rlhf_lab.recipes import grpo


def prompt_file(args, tmp: Path) -> Path:
    """The prompts both read, in ours' step order (so every step of both sees the same prompts)."""
    tokenizer = load_tokenizer(args.model_name)
    loaded, _ = load_prompts("hh-rlhf:helpful-base", split="train")
    probe = make_config(grpo.GRPOConfig, {"reward_models": "x", "max_prompt_length": args.max_prompt_length})
    kept, _ = grpo._tokenize_prompts(loaded, tokenizer, probe)
    kept = kept[:args.prompts * args.steps]
    path = tmp / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p.messages}) + "\n" for p in kept), encoding="utf-8")
    return path


def run_ours(args, data: Path, tmp: Path, repeat: int) -> dict:
    out = tmp / f"ours-{repeat}"
    grpo.run(make_config(grpo.GRPOConfig, {
        "model_name": args.model_name, "dataset": str(data), "split": "all", "output_dir": str(out),
        "overwrite_output_dir": True, "reward_models": args.reward_model, "num_generations": args.num_generations,
        "per_device_train_batch_size": args.prompts * args.num_generations, "max_new_tokens": args.max_new_tokens,
        "max_prompt_length": args.max_prompt_length, "max_steps": args.steps, "learning_rate": 1e-5, "beta": 0.04,
        "loss_type": "dapo", "num_eval_prompts": 0, "progress": False, "seed": repeat}))
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if "time/step" in r][1:]
    shutil.rmtree(out, ignore_errors=True)
    completions = args.prompts * args.num_generations
    return {"step_s": statistics.mean(r["time/step"] for r in rows),
            "tokens": statistics.mean(r["completions/mean_length"] * completions for r in rows),
            "generate_s": statistics.mean(r["time/generate"] for r in rows)}


def run_ppo(args, data: Path, tmp: Path, repeat: int) -> dict:
    from rlhf_lab.recipes import ppo

    out = tmp / f"ppo-{repeat}"
    batch = args.prompts * args.num_generations
    rows_in = [json.loads(line) for line in data.read_text().splitlines()]
    repeated = tmp / "ppo_prompts.jsonl"  # each prompt G times: the same sampled answers per step as GRPO
    repeated.write_text("".join(json.dumps(r) + "\n" for r in rows_in for _ in range(args.num_generations)))
    ppo.run(make_config(ppo.PPOConfig, {
        "model_name": args.model_name, "dataset": str(repeated), "split": "all", "output_dir": str(out),
        "overwrite_output_dir": True, "reward_models": args.reward_model, "per_device_train_batch_size": batch,
        "num_mini_batches": 1, "ppo_epochs": 1, "max_new_tokens": args.max_new_tokens,
        "max_prompt_length": args.max_prompt_length, "max_steps": args.steps, "num_eval_prompts": 0,
        "progress": False, "seed": repeat}))
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if "time/step" in r][1:]
    shutil.rmtree(out, ignore_errors=True)
    return {"step_s": statistics.mean(r["time/step"] for r in rows),
            "tokens": statistics.mean((r["objective/response_length"] + r["val/num_eos_tokens"] / batch) * batch
                                      for r in rows)}


def run_trl(args, data: Path, tmp: Path, repeat: int) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlhf_lab.rewards.model import reward_model_dirs

    tokenizer = load_tokenizer(args.model_name)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(args.model_name), dtype=torch.float32)
    probe = make_config(grpo.GRPOConfig, {"reward_models": "x"})
    peft_config = LoraConfig(r=probe.lora_r, lora_alpha=probe.lora_alpha, lora_dropout=probe.lora_dropout,
                             target_modules=probe.lora_targets(), task_type="CAUSAL_LM")
    out = tmp / f"trl-{repeat}"
    config = GRPOConfig(
        output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=args.prompts * args.num_generations,
        num_generations=args.num_generations, max_completion_length=args.max_new_tokens, temperature=1.0,
        learning_rate=1e-5, beta=0.04, loss_type="dapo", scale_rewards="group", num_iterations=1,
        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, use_vllm=False, seed=repeat,
        report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
        shuffle_dataset=False,
    )
    step_times: list[float] = []
    marks: dict[str, float] = {}

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kwargs):
            marks["begin"] = time.perf_counter()

        def on_step_end(self, a, state, control, **kwargs):
            step_times.append(time.perf_counter() - marks["begin"])

    rows = [json.loads(line) for line in data.read_text().splitlines()]
    trainer = GRPOTrainer(model=model, reward_funcs=str(reward_model_dirs(args.reward_model)[0]), args=config,
                          train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=peft_config,
                          callbacks=[Timer()])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    del trainer, model
    gc.collect()
    shutil.rmtree(out, ignore_errors=True)
    completions = args.prompts * args.num_generations
    return {"step_s": statistics.mean(step_times[1:]),
            "tokens": statistics.mean(x * completions for x in lengths[1:len(step_times)])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name", default="default")
    parser.add_argument("--reward_model", default="hh-gold")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per step")
    parser.add_argument("--num_generations", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--max_prompt_length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="steps per run; the first warms up and is left out")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--with_ppo", action="store_true")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first one is left out)")

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    tmp = Path(tempfile.mkdtemp(prefix="bench-grpo-"))
    data = prompt_file(args, tmp)
    print(f"model={args.model_name} reward_model={args.reward_model} prompts/step={args.prompts} "
          f"G={args.num_generations} max_new_tokens={args.max_new_tokens} steps={args.steps} (first left out) "
          f"repeats={args.repeats} threads={torch.get_num_threads()}", flush=True)
    results: dict[str, list[dict]] = {"ours": [], "trl": [], "ppo": []}
    try:
        for r in range(args.repeats):
            order = [("ours", run_ours), ("trl", run_trl)]
            if r % 2:
                order.reverse()
            if args.with_ppo:
                order.append(("ppo", run_ppo))
            for name, fn in order:
                load = os.getloadavg()[0]
                res = fn(args, data, tmp, r)
                results[name].append(res)
                print(f"repeat {r} {name:<5} {res['step_s']:7.2f} s/step  {res['tokens']:6.1f} sampled tokens/step  "
                      f"{1000 * res['step_s'] / res['tokens']:7.1f} ms/token  (load {load:.1f})", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def ratio(a: str, b: str, per_token: bool) -> float:
        def cost(x):
            return x["step_s"] / x["tokens"] if per_token else x["step_s"]
        return statistics.median(cost(y) / cost(x) for x, y in zip(results[a], results[b], strict=True))

    print(f"SUMMARY grpo step: TRL / ours = {ratio('ours', 'trl', False):.2f}x per step, "
          f"{ratio('ours', 'trl', True):.2f}x per sampled token (load {os.getloadavg()[0]:.1f})")
    if args.with_ppo:
        print(f"SUMMARY ours: PPO / GRPO = {ratio('ours', 'ppo', True):.2f}x per sampled token")


if __name__ == "__main__":
    main()
