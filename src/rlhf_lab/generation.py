"""Batched, seeded sampling from a causal LM: ``generate(model, tokenizer, prompts, decoding=...)``.

Every recipe that needs responses (best-of-n, PPO and RAFT rollouts, evaluation) calls :func:`generate`, which
returns, for each prompt in input order, ``samples_per_prompt`` :class:`Generation` records (response token ids,
text, length, whether the model stopped by itself, and optionally each token's log-prob).

Two samplers behind one signature:

* ``"fast"`` (default), :mod:`rlhf_lab.decode`: one prefill per distinct prompt, cascade attention over the
  shared prompt (its KV read once per step, never copied to the sample rows), a preallocated response cache,
  finished rows dropped at once, inverse-CDF sampling with a random stream per row seeded by
  ``(seed, prompt, sample)`` — a row's tokens do not depend on ``batch_size`` or its batch mates;
* ``"hf"``: the reference, HF ``model.generate`` per batch under ``torch.manual_seed`` of a seed derived from
  ``(seed, batch)`` (outputs depend on ``seed`` and ``batch_size``).

Both: every (prompt, sample) pair is one row; rows are sorted by prompt length, longest first, so a batch holds
prompts of similar length; a row ends at its first EOS / stop token or its own token limit; ``inference_mode``
and eval mode. The global torch RNG state is saved and restored around the call, so generating does not perturb
a training run's random stream.

Padding: the tokenizers used here have ``pad == eos``, so real tokens are never found by searching for the pad
id: the prompt region is described by an explicit attention mask, and a response is read from the known
prompt width, cut at its own token limit, then right after the first EOS / stop id it sampled.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from rlhf_lab.config import DataArgs, ModelArgs, arg, require, require_seed
from rlhf_lab.decode import DecodingConfig, available_bytes, decode_batch, estimate_bytes
from rlhf_lab.errors import UserError

# Decoding settings of the upstream codebases (Coste et al. 2023, Singhal et al. 2023, LMFlow's RAFT). They fix the shape of the distribution; the response length stays the caller's
# choice (max_new_tokens defaults to 128 here; Coste et al. used 256 for their eval and Singhal et al. for generate_outs, and a
# per-prompt 64–127 for RAFT — pass max_new_tokens_per_prompt for that).
DECODING_PRESETS: dict[str, DecodingConfig] = {
    # trlx PPO rollouts (Coste et al. 2023), RAFT and trl rollouts: pure sampling.
    "rollout": DecodingConfig(),
    # Coste et al. 2023's hard-coded evaluation decoding.
    "eval": DecodingConfig(temperature=0.7, top_p=0.9),
    # Singhal et al. 2023's scripts/generate_outs.py.
    "length_biases": DecodingConfig(temperature=0.9, top_p=0.9, repetition_penalty=1.2),
    # LMFlow RAFT aligner: temperature 0.85, top_k 0, top_p 1.
    "raft": DecodingConfig(temperature=0.85),
    "greedy": DecodingConfig(do_sample=False),
}


def decoding_preset(name: str, **overrides) -> DecodingConfig:
    """A fresh copy of ``DECODING_PRESETS[name]`` with ``overrides`` applied (the presets themselves stay intact)."""
    if name not in DECODING_PRESETS:
        raise ValueError(f"unknown decoding preset {name!r}; choose from {', '.join(DECODING_PRESETS)}")
    return dataclasses.replace(DECODING_PRESETS[name], **overrides)


@dataclass
class GenerationArgs(ModelArgs, DataArgs):
    """The flags of sampling answers to a prompt set (``generate``, ``evaluate``): prompts, decoding, batch, seed."""

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
    repetition_penalty: float = arg(1.0, "repetition penalty (1 = off; Singhal et al. 2023 used 1.2)")
    do_sample: bool = arg(True, "sample (true) or greedy decode (false)")
    generation_batch_size: int = arg(16, "sequences generated together (and, in evaluate, per log-prob pass)")
    seed: int = arg(0, "sampling seed")
    progress: bool = arg(True, "show a progress bar")

    def validate(self) -> None:
        require(self.samples_per_prompt >= 1, "samples_per_prompt", "must be at least 1")
        require(self.max_new_tokens >= 1, "max_new_tokens", "must be at least 1")
        require(self.temperature > 0, "temperature", "must be positive")
        require(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        require(self.top_k >= 0, "top_k", "must be >= 0")
        require(self.repetition_penalty > 0, "repetition_penalty", "must be positive")
        require(self.generation_batch_size >= 1, "generation_batch_size", "must be at least 1")
        self.validate_data()
        require_seed(self.seed, "seed")

    def decoding(self, given: set[str]) -> DecodingConfig:
        """The decoding flags: a preset sets the shape of the distribution (temperature, top-p, top-k, penalty,
        sampling on/off) except where a flag was given explicitly; the length is always --max_new_tokens."""
        preset = DECODING_PRESETS[self.preset] if self.preset else None
        values = {}
        for key in dataclasses.asdict(DecodingConfig()):
            from_preset = preset is not None and key in PRESET_KEYS and key not in given
            values[key] = getattr(preset, key) if from_preset else getattr(self, key, getattr(DecodingConfig(), key))
        return DecodingConfig(**values)


PRESET_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty", "do_sample")


@dataclass
class Generation:
    """One sampled response."""

    prompt_index: int
    sample_index: int
    text: str  # decoded response, special tokens and the final stop token left out, otherwise as decoded
    token_ids: list[int]  # response ids only; the EOS / stop id is included when the model produced one
    num_tokens: int  # len(token_ids)
    finished: bool  # ended with an EOS / stop id rather than hitting its max_new_tokens
    # log-prob of each token under the distribution it was drawn from (after temperature / top-k / top-p /
    # penalty); only with ``generate(..., return_logprobs=True)`` on the fast sampler, else None
    logprobs: list[float] | None = None


class _PerRowMaxNewTokens(StoppingCriteria):
    """Marks row ``r`` done once it has produced ``limits[r]`` new tokens (rows of one batch may differ)."""

    def __init__(self, limits: torch.Tensor, prompt_width: int):
        self.limits = limits
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return (input_ids.shape[1] - self.prompt_width) >= self.limits


class _RepetitionPenaltyIgnoringPadding(LogitsProcessor):
    """The CTRL repetition penalty (as in HF / Singhal et al. 2023) over the prompt and the response, padding excluded.

    HF's own processor also penalises the pad tokens of left-padded rows; with ``pad == eos`` that would lower
    the EOS probability of short prompts only, making a response depend on its batch mates.
    Every token id seen so far: logit < 0 → logit·penalty, else logit / penalty.
    """

    def __init__(self, penalty: float, pad_counts: torch.Tensor, first_real_ids: torch.Tensor):
        self.penalty = penalty
        self.pad_counts = pad_counts
        self.first_real_ids = first_real_ids

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        is_pad = positions[None, :] < self.pad_counts[:, None]
        # A pad position points at the row's first real token instead: it is penalised once either way.
        ids = torch.where(is_pad, self.first_real_ids[:, None], input_ids)
        seen = scores.gather(1, ids)
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return scores.scatter(1, ids, seen)


def _stop_ids(model, tokenizer, stop_token_ids: Sequence[int] | None) -> list[int]:
    """Tokenizer EOS + the model's generation-config EOS id(s) + the caller's stop ids, deduplicated in order."""
    candidates: list[int | None] = [tokenizer.eos_token_id]
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    candidates += list(config_eos) if isinstance(config_eos, (list, tuple)) else [config_eos]
    candidates += list(stop_token_ids or [])
    ids = list(dict.fromkeys(int(i) for i in candidates if i is not None))
    if not ids:
        raise ValueError("no stop token: the tokenizer has no eos_token_id and no stop_token_ids were given")
    return ids


def _batch_seed(seed: int, batch_index: int) -> int:
    # SeedSequence mixes (seed, batch) into well-separated streams; seeds (s, b) and (s + 1, b - 1) do not collide.
    return int(np.random.SeedSequence([seed % 2**64, batch_index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _extract(new_ids: list[int], limit: int, stop_ids: set[int]) -> tuple[list[int], bool]:
    """A row's response from its generated region: at most ``limit`` tokens, ending right after the first stop id.

    After a row stops, HF fills it with the pad id (== eos here). Those fillers come only after the row's first
    stop id or after its own limit, so cutting at the limit first and then at the first stop id keeps exactly the
    sampled tokens.
    """
    tokens = new_ids[:limit]
    for position, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[: position + 1], True
    return tokens, False


def _shared_prefix_cache(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_of_row: list[int]):
    """The KV cache of every row's prompt except its last token, computed once per distinct prompt.

    Rows of one prompt are identical (same left-padded ids), so the prefill runs on one row per prompt and the
    cache is then indexed out to all rows. ``generate`` then only feeds the last prompt token, exactly as it
    would after its own prefill. Position ids follow ``generate``'s rule for left padding (cumsum of the mask).
    """
    first_row: dict[int, int] = {}
    for row, prompt in enumerate(prompt_of_row):
        first_row.setdefault(prompt, row)
    unique_rows = torch.tensor(list(first_row.values()), device=input_ids.device)
    row_to_unique = torch.tensor([list(first_row).index(p) for p in prompt_of_row], device=input_ids.device)
    ids, mask = input_ids[unique_rows, :-1], attention_mask[unique_rows, :-1]
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    output = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True)
    cache = output.cache if getattr(output, "cache", None) is not None else output.past_key_values
    cache.reorder_cache(row_to_unique)
    return cache


def plan_batches(
    prompt_lengths: Sequence[int],
    samples_per_prompt: int,
    batch_size: int,
    skip: Sequence[bool] | None = None,
) -> list[list[tuple[int, int]]]:
    """The batches :func:`generate` runs, as lists of ``(prompt_index, sample_index)`` rows.

    One row per (prompt, sample), sorted by prompt length, longest first (stable, so ties keep input order), cut
    into chunks of ``batch_size`` rows: each batch holds prompts of similar length and little left padding, and
    the largest batch comes first, so memory problems show up at once. Prompts with ``skip[i]`` get no rows.
    """
    rows = sorted(
        (
            (i, k)
            for i in range(len(prompt_lengths))
            for k in range(samples_per_prompt)
            if skip is None or not skip[i]
        ),
        key=lambda row: -prompt_lengths[row[0]],
    )
    return [rows[start : start + batch_size] for start in range(0, len(rows), batch_size)]


def _hf_batch(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch: list[tuple[int, int]],
              batch_limits: list[int], decoding: DecodingConfig, stop_ids: list[int], pad_id: int,
              share_prefix: bool, seed: int) -> list[list[int]]:
    """One batch through HF ``model.generate`` (the reference sampler): each row's generated region."""
    width = input_ids.shape[1]
    device = input_ids.device
    generation_config = GenerationConfig(
        max_new_tokens=max(batch_limits),
        min_new_tokens=decoding.min_new_tokens,
        do_sample=decoding.do_sample,
        # Always explicit: HF's global defaults (top_k=50) or a checkpoint's generation_config must not leak into
        # the sampling distribution.
        **(
            {"temperature": decoding.temperature, "top_p": decoding.top_p, "top_k": decoding.top_k}
            if decoding.do_sample
            else {}
        ),
        repetition_penalty=1.0,  # applied below, ignoring padding
        num_beams=1,
        eos_token_id=stop_ids,
        pad_token_id=pad_id,
        use_cache=True,
    )
    logits_processor = LogitsProcessorList()
    if decoding.repetition_penalty != 1.0:
        pad_counts = (1 - attention_mask).sum(dim=1)
        first_real = input_ids.gather(1, pad_counts[:, None]).squeeze(1)
        logits_processor.append(
            _RepetitionPenaltyIgnoringPadding(decoding.repetition_penalty, pad_counts, first_real)
        )
    stopping_criteria = StoppingCriteriaList()
    if len(set(batch_limits)) > 1:
        stopping_criteria.append(_PerRowMaxNewTokens(torch.tensor(batch_limits, device=device), prompt_width=width))
    prefix_cache = (
        _shared_prefix_cache(model, input_ids, attention_mask, [i for i, _ in batch])
        if share_prefix and width > 1 and len({i for i, _ in batch}) < len(batch)
        else None
    )
    torch.manual_seed(seed)
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        generation_config=generation_config,
        logits_processor=logits_processor,
        stopping_criteria=stopping_criteria,
        **({"cache": prefix_cache} if prefix_cache is not None else {}),
    )
    return output[:, width:].tolist()


def check_fits(model, prompt_ids: Sequence[Sequence[int]], limits: Sequence[int],
               batches: Sequence[Sequence[tuple[int, int]]], share_prefix: bool = True,
               sampler: str = "fast") -> None:
    """Refuse, before any work, a request the model's context window or this machine's memory cannot hold.

    Context: ``len(prompt) + its token limit ≤ model.config.max_position_embeddings``. Memory: the largest
    batch's KV cache + prefill activations + step logits (:func:`rlhf_lab.decode.estimate_bytes`) must fit in
    90% of the memory available now. Raises :class:`~rlhf_lab.errors.UserError` naming the flag to change.
    """
    config = getattr(getattr(model, "module", model), "config", None)
    window = getattr(config, "max_position_embeddings", None)
    if window:
        for index, (ids, limit) in enumerate(zip(prompt_ids, limits, strict=True)):
            if limit and len(ids) + limit > window:
                raise UserError(
                    f"prompt {index} has {len(ids)} tokens + max_new_tokens {limit} = {len(ids) + limit}, more than "
                    f"the model's context window (max_position_embeddings {window}); lower --max_new_tokens or "
                    "drop / shorten the long prompts"
                )
    worst, worst_batch = 0, None
    for batch in batches:
        width = max(len(prompt_ids[i]) for i, _ in batch)
        new = max(limits[i] for i, _ in batch)
        prompts = len({i for i, _ in batch}) if share_prefix else len(batch)
        need = estimate_bytes(getattr(model, "module", model), len(batch), prompts, width, new,
                              share_prefix=share_prefix and sampler == "fast")
        if need > worst:
            worst, worst_batch = need, (len(batch), width, new)
    available = available_bytes()
    if worst_batch is not None and worst > 0.9 * available:
        rows, width, new = worst_batch
        raise UserError(
            f"generate: a batch of {rows} sequences (batch_size) × (prompt {width} + max_new_tokens {new} tokens) "
            f"needs ≈ {worst / 2**30:.1f} GiB for its KV cache and logits, more than the "
            f"{available / 2**30:.1f} GiB available; lower --batch_size (or the recipe's generation batch size) "
            "or --max_new_tokens"
        )


def generate(
    model,
    tokenizer,
    prompts: list[str] | list[list[int]],
    *,
    samples_per_prompt: int = 1,
    decoding: DecodingConfig,
    batch_size: int = 16,
    seed: int = 0,
    stop_token_ids: list[int] | None = None,
    progress: bool = True,
    max_new_tokens_per_prompt: list[int] | None = None,
    share_prefix: bool = True,
    sampler: str = "fast",
    return_logprobs: bool = False,
) -> list[list[Generation]]:
    """Sample ``samples_per_prompt`` responses for every prompt; returns ``result[i][k]`` for prompt ``i``, sample ``k``.

    ``prompts`` are rendered strings (tokenized without special tokens) or token-id lists. ``batch_size`` counts
    sequences (prompt × sample). A response ends at the first EOS (tokenizer's or the model generation config's)
    or ``stop_token_ids`` entry, or at its token limit: ``decoding.max_new_tokens``, or its prompt's entry in
    ``max_new_tokens_per_prompt`` when that is given (TRL's LengthSampler in Singhal et al. 2023's PPO / LMFlow RAFT's random lengths).

    ``sampler="fast"`` (default) is rlhf-lab's decode loop (:mod:`rlhf_lab.decode`): one prefill per distinct
    prompt, cascade attention over the shared prompt, finished rows dropped at once, inverse-CDF sampling with
    per-row random streams seeded by ``(seed, prompt, sample)``; ``return_logprobs`` fills
    :attr:`Generation.logprobs`. ``sampler="hf"`` is the reference: HF ``model.generate`` per batch under a seed
    derived from ``(seed, batch)``; there ``share_prefix`` copies one prefill per prompt to its rows.
    Raises :class:`~rlhf_lab.errors.UserError` before any work when a prompt plus its limit exceeds the model's
    context window or the largest batch would not fit in memory (:func:`check_fits`).
    """
    if sampler not in ("fast", "hf"):
        raise ValueError(f"sampler must be 'fast' or 'hf' (got {sampler!r})")
    if return_logprobs and sampler != "fast":
        raise ValueError("return_logprobs needs sampler='fast'")
    if samples_per_prompt < 1:
        raise ValueError(f"samples_per_prompt must be >= 1 (got {samples_per_prompt})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    if max_new_tokens_per_prompt is not None:
        if len(max_new_tokens_per_prompt) != len(prompts):
            raise ValueError(
                f"max_new_tokens_per_prompt has {len(max_new_tokens_per_prompt)} entries for {len(prompts)} prompts"
            )
        if any(limit < 0 for limit in max_new_tokens_per_prompt):
            raise ValueError("max_new_tokens_per_prompt entries must be >= 0")
        limits = [int(limit) for limit in max_new_tokens_per_prompt]
    else:
        limits = [decoding.max_new_tokens] * len(prompts)

    # Templates (or the caller) already rendered every special token the prompt needs: adding a BOS here would
    # double it for tokenizers that prepend one.
    prompt_ids = [
        list(tokenizer(p, add_special_tokens=False)["input_ids"])
        if isinstance(p, str)
        else [int(t) for t in p]
        for p in prompts
    ]
    for index, ids in enumerate(prompt_ids):
        if not ids:
            raise ValueError(f"prompt {index} is empty (no tokens)")

    results: list[list[Generation | None]] = [[None] * samples_per_prompt for _ in prompts]
    batches = plan_batches(
        [len(ids) for ids in prompt_ids],
        samples_per_prompt,
        batch_size,
        skip=[limit == 0 for limit in limits],
    )
    check_fits(model, prompt_ids, limits, batches, share_prefix=share_prefix, sampler=sampler)
    for i in range(len(prompts)):  # a zero-token limit needs no model call
        if limits[i] == 0:
            results[i] = [Generation(i, k, "", [], 0, False, [] if return_logprobs else None)
                          for k in range(samples_per_prompt)]

    stop_ids = _stop_ids(model, tokenizer, stop_token_ids)
    stop_set = set(stop_ids)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    model = getattr(model, "module", model)  # DDP / accelerate wrapper → the model with .generate
    device = next(model.parameters()).device
    training_flags = {module: module.training for module in model.modules()}
    model.eval()

    bar = tqdm(
        total=sum(len(batch) for batch in batches),
        unit="seq",
        desc="generate",
        disable=None if progress else True,
    )
    # fork_rng saves the CPU (and this GPU's) RNG state and restores it on exit.
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    started, produced = time.perf_counter(), 0
    try:
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            for batch_index, batch in enumerate(batches):
                if sampler == "fast":
                    rows = decode_batch(
                        model, prompt_ids, batch, [limits[i] for i, _ in batch], stop_ids, decoding, seed,
                        share_prefix=share_prefix, pad_id=pad_id,
                    )
                    outputs = [(row.token_ids, row.finished, row.logprobs) for row in rows]
                else:
                    batch_prompts = [prompt_ids[i] for i, _ in batch]
                    width = max(len(ids) for ids in batch_prompts)
                    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
                    # Left padding: every prompt ends where generation begins.
                    for r, ids in enumerate(batch_prompts):
                        input_ids[r, width - len(ids) :] = torch.tensor(ids)
                        attention_mask[r, width - len(ids) :] = 1
                    new_ids = _hf_batch(
                        model, input_ids.to(device), attention_mask.to(device), batch,
                        [limits[i] for i, _ in batch], decoding, stop_ids, pad_id, share_prefix,
                        _batch_seed(seed, batch_index),
                    )
                    outputs = [(*_extract(ids, limits[i], stop_set), None) for ids, (i, _) in zip(new_ids, batch, strict=True)]

                for (i, k), (token_ids, finished, logprobs) in zip(batch, outputs, strict=True):
                    text_ids = token_ids[:-1] if finished else token_ids
                    text = tokenizer.decode(text_ids, skip_special_tokens=True)
                    results[i][k] = Generation(
                        i, k, text, token_ids, len(token_ids), finished, logprobs if return_logprobs else None
                    )
                    produced += len(token_ids)
                bar.update(len(batch))
                bar.set_postfix(tok_per_s=f"{produced / (time.perf_counter() - started):.1f}")
    finally:
        bar.close()
        for module, flag in training_flags.items():
            module.training = flag
    return results  # type: ignore[return-value]
