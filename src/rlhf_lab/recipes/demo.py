"""The demo study on the embedded default (SmolLM2-135M-Instruct + HH-RLHF helpful-base), what `make demo` runs.

Stages so far: SFT a few LoRA steps on the chosen replies, then sample responses from the SFT model for a handful
of held-out prompts. Each stage is an ordinary command with its own run directory under ``output_dir``; the
measured time of every stage is printed at the end. Re-running replaces the previous demo's outputs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from rlhf_lab.config import arg, make_config, require
from rlhf_lab.recipes import generate as generate_recipe
from rlhf_lab.recipes import sft as sft_recipe


@dataclass
class DemoConfig:
    output_dir: str = arg("runs/demo", "where the demo's stages write their run directories (replaced on re-run)")
    model_name: str = arg("default", "the policy to start from")
    dataset: str = arg("hh-rlhf:helpful-base", "preference data (chosen replies are the SFT targets)")
    sft_steps: int = arg(8, "SFT optimizer steps")
    sft_batch_size: int = arg(4, "SFT examples per step")
    max_length: int = arg(256, "SFT tokens per example")
    num_prompts: int = arg(4, "held-out prompts to generate for")
    samples_per_prompt: int = arg(2, "responses per prompt")
    max_new_tokens: int = arg(48, "new tokens per response")
    seed: int = arg(0, "seed of every stage")
    progress: bool = arg(True, "show progress bars")

    def validate(self) -> None:
        for key in ("sft_steps", "sft_batch_size", "num_prompts", "samples_per_prompt", "max_new_tokens"):
            require(getattr(self, key) >= 1, key, "must be at least 1")


def run(config: DemoConfig) -> dict[str, float]:
    root = Path(config.output_dir)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    sft = make_config(sft_recipe.SFTConfig, dict(
        output_dir=str(root / "sft"), overwrite_output_dir=True, model_name=config.model_name,
        dataset=config.dataset, max_steps=config.sft_steps, per_device_train_batch_size=config.sft_batch_size,
        max_length=config.max_length, eval_limit=16, learning_rate=2e-4, seed=config.seed,
        progress=config.progress, logging_steps=1,
    ))
    sft_results = sft_recipe.run(sft)
    timings["sft"] = time.perf_counter() - start

    start = time.perf_counter()
    gen = make_config(generate_recipe.GenerateConfig, dict(
        output_dir=str(root / "generate"), model_name=str(root / "sft" / "model"), dataset=config.dataset,
        split="eval", limit=config.num_prompts, samples_per_prompt=config.samples_per_prompt,
        max_new_tokens=config.max_new_tokens, preset="eval", seed=config.seed, progress=config.progress,
    ))
    generations = generate_recipe.run(gen)
    timings["generate"] = time.perf_counter() - start

    first = json.loads(generations.read_text(encoding="utf-8").splitlines()[0])
    print("\n== rlhf-lab demo ==")
    print(f"SFT: {config.sft_steps} steps, final train loss {sft_results['train/loss']:.3f}, "
          f"held-out NLL {sft_results.get('eval/nll', float('nan')):.3f}")
    print(f"example prompt:   {first['prompt'][:200]!r}")
    print(f"example response: {first['responses'][0][:300]!r}")
    for stage, seconds in timings.items():
        print(f"  {stage:<10} {seconds:7.1f} s")
    print(f"  {'total':<10} {sum(timings.values()):7.1f} s")
    print(f"outputs: {root / 'sft' / 'metrics.jsonl'}, {root / 'sft' / 'model'}, {generations}")
    return timings
