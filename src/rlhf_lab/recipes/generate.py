"""Generate responses for a prompt set (the seeds' generate_outs): ``OUT/generations.jsonl``, one row per prompt.

    prompts   = the dataset's prompts (split / bottom:top / limit select them reproducibly)
    text      = the template applied to each prompt
    responses = samples_per_prompt draws from the model (batched by prompt length, KV cache, stop at EOS)

Row: ``{"prompt": str, "messages": [...], "responses": [str], "response_tokens": [int], "finished": [bool],
"meta": {...}}``. Same command, same file.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rlhf_lab.config import DataArgs, ModelArgs, arg, config_to_yaml, require, require_seed, torch_dtype
from rlhf_lab.data import load_prompts
from rlhf_lab.data.records import Prompt
from rlhf_lab.data.templates import render_prompt
from rlhf_lab.generation import DECODING_PRESETS, DecodingConfig, generate
from rlhf_lab.io import atomic_write_text, write_jsonl
from rlhf_lab.models import load_causal_lm, load_tokenizer
from rlhf_lab.models.bounds import check_bounds
from rlhf_lab.rundir import claim_run_dir


@dataclass
class GenerateConfig(ModelArgs, DataArgs):
    output_dir: str = arg("runs/generate", "where generations.jsonl and config.yaml go")
    adapter: str | None = arg(None, "a PEFT adapter directory applied on top of --model_name")
    split: str = arg("auto", "fixed-seed split of the data to use; auto = the embedded dataset's eval split, or "
                     "every row of your own file(s)", ("auto", "train", "eval", "all"))
    samples_per_prompt: int = arg(1, "responses sampled per prompt")
    preset: str | None = arg(None, "decoding preset (sets the decoding flags below unless given)",
                             tuple(DECODING_PRESETS))
    max_new_tokens: int = arg(128, "new tokens per response at most")
    temperature: float = arg(1.0, "sampling temperature")
    top_p: float = arg(1.0, "nucleus sampling mass (1 = off)")
    top_k: int = arg(0, "sample from the k most likely tokens (0 = off)")
    repetition_penalty: float = arg(1.0, "repetition penalty (1 = off; the length-bias seed used 1.2)")
    do_sample: bool = arg(True, "sample (true) or greedy decode (false)")
    batch_size: int = arg(16, "sequences generated together")
    seed: int = arg(0, "sampling seed")
    progress: bool = arg(True, "show a progress bar")

    def validate(self) -> None:
        require(self.samples_per_prompt >= 1, "samples_per_prompt", "must be at least 1")
        require(self.max_new_tokens >= 1, "max_new_tokens", "must be at least 1")
        require(self.temperature > 0, "temperature", "must be positive")
        require(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        require(self.top_k >= 0, "top_k", "must be >= 0")
        require(self.repetition_penalty > 0, "repetition_penalty", "must be positive")
        require(self.batch_size >= 1, "batch_size", "must be at least 1")
        self.validate_data()
        require(self.bottom is None or self.bottom >= 0, "bottom", "must be >= 0")
        require(self.top is None or self.top >= 1, "top", "must be at least 1")
        require(self.top is None or self.bottom is None or self.top > self.bottom, "top",
                f"must exceed --bottom ({self.bottom}): rows bottom..top-1 are used")
        require_seed(self.seed, "seed")

    def decoding(self, given: set[str]) -> DecodingConfig:
        """The decoding flags: a preset sets the shape of the distribution (temperature, top-p, top-k, penalty,
        sampling on/off) except where a flag was given explicitly; the length is always --max_new_tokens."""
        preset = DECODING_PRESETS[self.preset] if self.preset else None
        values = {}
        for key in asdict(DecodingConfig()):
            from_preset = preset is not None and key in PRESET_KEYS and key not in given
            values[key] = getattr(preset, key) if from_preset else getattr(self, key, getattr(DecodingConfig(), key))
        return DecodingConfig(**values)


PRESET_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty", "do_sample")


def run(config: GenerateConfig, given: set[str] | None = None) -> Path:
    out = Path(config.output_dir)
    check_bounds(config.adapter or config.model_name, tokens=1 + config.max_new_tokens, tokens_flag="max_new_tokens",
                 batch=config.batch_size, batch_flag="batch_size", online=config.online, dtype=config.dtype,
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
                       batch_size=config.batch_size, seed=config.seed, progress=config.progress)
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
