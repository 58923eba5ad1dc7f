"""Generate responses for a prompt set (Singhal et al. 2023's generate_outs): ``OUT/generations.jsonl``, one row per prompt.

    prompts   = the dataset's prompts (split / bottom:top / limit select them reproducibly)
    text      = the template applied to each prompt
    responses = samples_per_prompt draws from the model (batched by prompt length, KV cache, stop at EOS)

Row: ``{"prompt": str, "messages": [...], "responses": [str], "response_tokens": [int], "finished": [bool],
"meta": {...}}``. Same command, same file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rlhf_lab.config import arg, config_to_yaml, torch_dtype
from rlhf_lab.data import load_prompts
from rlhf_lab.data.records import Prompt
from rlhf_lab.data.templates import render_prompt
from rlhf_lab.generation import GenerationArgs, generate
from rlhf_lab.io import atomic_write_text, write_jsonl
from rlhf_lab.models import load_causal_lm, load_tokenizer
from rlhf_lab.models.bounds import check_bounds
from rlhf_lab.rundir import claim_run_dir


@dataclass
class GenerateConfig(GenerationArgs):
    output_dir: str = arg("runs/generate", "where generations.jsonl and config.yaml go")


def run(config: GenerateConfig, given: set[str] | None = None) -> Path:
    out = Path(config.output_dir)
    check_bounds(config.adapter or config.model_name, tokens=1 + config.max_new_tokens, tokens_flag="max_new_tokens",
                 batch=config.generation_batch_size, batch_flag="generation_batch_size", online=config.online, dtype=config.dtype,
                 prompt_note=" (a 1-token prompt + --max_new_tokens)")
    claim_run_dir(out)  # one writer per run directory (exit 2 naming the holder)
    atomic_write_text(out / "config.yaml", config_to_yaml(config))
    prompts, reports = load_prompts(config.dataset, data_format=config.data_format, split=config.split,
                                    limit=config.limit, bottom=config.bottom, top=config.top,
                                    on_bad_row=config.on_bad_row)
    for report in reports:
        print(report.summary(), flush=True)
    tokenizer = load_tokenizer(config.model_name, config.online, config.trust_remote_code)
    model = load_causal_lm(config.adapter or config.model_name, torch_dtype(config.dtype), config.online,
                           config.trust_remote_code, config.allow_pickle)
    texts = [render_prompt(p.messages, config.template, tokenizer) for p in prompts]
    decoding = config.decoding(given or set())
    start = time.perf_counter()
    outputs = generate(model, tokenizer, texts, samples_per_prompt=config.samples_per_prompt, decoding=decoding,
                       batch_size=config.generation_batch_size, seed=config.seed, progress=config.progress)
    seconds = time.perf_counter() - start
    write_jsonl(out / "generations.jsonl", [_row(p, t, gens) for p, t, gens in zip(prompts, texts, outputs, strict=True)])
    tokens = sum(g.num_tokens for gens in outputs for g in gens)
    print(f"generate: {len(prompts)} prompts × {config.samples_per_prompt} samples, {tokens} tokens in "
          f"{seconds:.1f}s ({tokens / max(seconds, 1e-9):.1f} tok/s) -> {out / 'generations.jsonl'}", flush=True)
    return out / "generations.jsonl"


def _row(prompt: Prompt, text: str, generations) -> dict:
    return {
        "prompt": prompt.text,
        "messages": prompt.messages,
        "prompt_text": text,
        "responses": [g.text for g in generations],
        "response_tokens": [g.num_tokens for g in generations],
        "finished": [g.finished for g in generations],
        "meta": {k: v for k, v in prompt.meta.items() if isinstance(v, (str, int, float, bool))},
    }
