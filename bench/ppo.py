"""Benchmark: where one PPO iteration on SmolLM2-135M spends its time, and how much memory it needs.

Runs ``rlhf-lab ppo`` in this process for ``--steps`` iterations (the first one warms up; the last one is
reported) with a LoRA policy, the value head on its trunk and the reference = the adapter disabled, and reads the
recipe's own timers from ``metrics.jsonl``:

  generation   rollouts (``generation.generate``, KV cache)
  forward      the no-grad passes of the rollout batch (logπ_old + V_old, logπ_ref) and the PPO forward passes
  backward     ``accelerator.backward`` of the PPO loss
  overhead     everything else in the iteration: reward, shaping, GAE, whitening, AdamW, Python  (goal ≤ 30%)

Tokens/s = (prompt + response tokens passed through the model in the iteration) / iteration time, and generated
response tokens / s. Peak RSS (``ru_maxrss``) is compared with a single model's fp32 full-fine-tuning footprint,
16 bytes per parameter (weights, gradients, AdamW m and v; activations not counted)  (goal ≤ 2×).

The machine may be shared: note the load (printed) next to any number you quote; the ratios are what matter.

    .venv/bin/python bench/ppo.py [--model_name default] [--batch_size 8] [--max_new_tokens 48] [--steps 2]
        [--reward_models /tmp/exp/rm_top2]      (default: the length-only reward, no reward model in memory)
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile

import torch

from rlhf_lab.config import make_config
from rlhf_lab.io import read_jsonl
from rlhf_lab.recipes import ppo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name", default="default")
    parser.add_argument("--batch_size", type=int, default=8, help="prompts per PPO iteration")
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument("--max_prompt_length", type=int, default=128)
    parser.add_argument("--ppo_epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="iterations run; the last is reported")
    parser.add_argument("--reward_models", default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as out:
        values = dict(model_name=args.model_name, output_dir=out, overwrite_output_dir=True, progress=False,
                      per_device_train_batch_size=max(1, args.batch_size // 2), num_mini_batches=2,
                      ppo_epochs=args.ppo_epochs, max_new_tokens=args.max_new_tokens,
                      max_prompt_length=args.max_prompt_length, max_steps=args.steps, num_eval_prompts=0,
                      learning_rate=1e-4, seed=0)
        if args.reward_models:
            values.update(reward_models=args.reward_models)
        else:
            values.update(reward="len_only", len_only=16)
        ppo.run(make_config(ppo.PPOConfig, values))
        rows = [r for r in read_jsonl(os.path.join(out, "metrics.jsonl")) if "time/step" in r]
        config_tokens = _tokens(out)
    last = rows[-1]
    step = last["time/step"]
    generation = last["time/generate"]
    forward = last["time/rollout_forward"] + last["time/train_forward"]
    backward = last["time/backward"]
    overhead = step - generation - forward - backward
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    from rlhf_lab.models import load_causal_lm

    params = sum(p.numel() for p in load_causal_lm(args.model_name).parameters())
    footprint_gb = params * 16 / 1024**3
    response_tokens = last["objective/response_length"] * args.batch_size

    print(f"load average: {os.getloadavg()[0]:.1f} (2 cores; shared machine), torch threads {torch.get_num_threads()}")
    print(f"one PPO iteration: {args.batch_size} prompts, max_new_tokens {args.max_new_tokens}, "
          f"{args.ppo_epochs} PPO epochs × 2 mini-batches, LoRA r16, {'RM ' + args.reward_models if args.reward_models else 'len_only reward'}")
    print(f"{'part':<12}{'seconds':>10}{'share':>9}")
    for name, value in (("generation", generation), ("forward", forward), ("backward", backward),
                        ("overhead", overhead), ("total", step)):
        print(f"{name:<12}{value:>10.2f}{value / step:>9.1%}")
    print(f"  of which: rollout forward {last['time/rollout_forward']:.2f}s, PPO forward "
          f"{last['time/train_forward']:.2f}s, reward {last['time/score']:.2f}s, AdamW {last['time/optimizer']:.2f}s")
    passes = 2 + args.ppo_epochs  # logπ_old/V_old and logπ_ref, then a forward + backward per PPO epoch
    print(f"tokens/s: {response_tokens / step:.1f} generated response tokens/s; "
          f"{config_tokens * passes / step:.0f} model tokens/s ({config_tokens} prompt + response tokens × "
          f"{passes} passes, forward + backward counted as one)")
    print(f"peak RSS {peak_gb:.2f} GB vs fp32 full-training footprint of one model {footprint_gb:.2f} GB "
          f"({params / 1e6:.0f}M params × 16 B): ratio {peak_gb / footprint_gb:.2f}×")
    print(f"SUMMARY ppo overhead {overhead / step:.1%} (goal <= 30%), peak RSS {peak_gb / footprint_gb:.2f}x "
          f"(goal <= 2x), {response_tokens / step:.1f} generated tok/s")


def _tokens(out: str) -> int:
    """Prompt + response tokens of the last rollout batch (the recipe's ``rollout/tokens``)."""
    rows = [r for r in read_jsonl(os.path.join(out, "metrics.jsonl")) if "time/step" in r]
    return int(rows[-1]["rollout/tokens"])


if __name__ == "__main__":
    main()
