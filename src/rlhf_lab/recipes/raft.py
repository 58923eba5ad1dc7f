"""RAFT: Reward rAnked FineTuning (Dong et al. 2023, "RAFT: Reward rAnked FineTuning for Generative Foundation
Model Alignment", arXiv:2304.06767), as LMFlow's ``raft_aligner.py`` runs it.

    prompts = the dataset's prompts (≤ max_prompt_length tokens), shuffled once; iteration t takes the next M
    for t in 0 .. num_raft_iteration − 1:
        limits  = max_new_tokens per prompt, uniform in [output_min_length, output_max_length)
        local:  M = raft_batch_size prompts, K = int(1/α) samples each        (best-of-K per prompt)
        top:    M = int(raft_batch_size/α) prompts, 1 sample each             (global ranking)
        y       = clean_text(sample)      (the first assistant turn)
        r       = reward(x, y): one RM, or an ensemble's mean / WCO / UWO
        discard = discard_sample(y): such samples are never kept
        kept    = local: per prompt argmax_k r (prompts whose K samples are all discarded are skipped)
                  top:   the int(M·α) highest r over all prompts (discarded ones excluded)
        log     reward of the FIRST sample of every prompt (an unbiased estimate of the current model's reward),
                mean reward of the kept set, distinct-2, response length; save train_set_{t}.jsonl
        fine-tune the CURRENT model (never reset) on the kept (prompt + response) texts for num_train_epochs;
                the optimizer and LR schedule persist across iterations
        checkpoint (weights, optimizer, schedule, iteration, prompt position, RNG)
    final_eval: sample the next M prompts once more -> the reward of the model after the last fine-tune

Metrics row ``step = t`` therefore holds the reward of the model after t fine-tunes (``reward/first_sample``)
and the reward of the set it selected (``reward/kept``); the first row is the starting model.

Differences from LMFlow, each deliberate (docs/raft.md): the fine-tuning text ends with the template's end-of-turn
marker when the model ended its turn (LMFlow's texts had none, so the policy never learned where to stop) and
without it when the token limit cut the reply; ``clean_text`` / ``discard_sample`` also run in the ``top`` strategy
(LMFlow skipped them there); samples are not packed into blocks unless ``--block_size`` is set (LMFlow's
group_texts dropped up to a block of each iteration's data); a prompt set shorter than the iterations need is
reshuffled and reused instead of stopping the run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from rlhf_lab.config import DataArgs, LoraArgs, ModelArgs, RewardArgs, arg, require, torch_dtype, warn
from rlhf_lab.data import load_prompts
from rlhf_lab.data.collate import TokenizedExample, group_texts
from rlhf_lab.data.raft_hooks import (
    HookContext,
    checked_clean,
    checked_discard,
    load_hook,
    template_markers,
)
from rlhf_lab.data.records import Prompt
from rlhf_lab.data.templates import render_prompt, render_response
from rlhf_lab.engine import (
    Run,
    TrainArgs,
    check_finite,
    epoch_order,
    load_checkpoint,
    make_optimizer,
    make_scheduler,
    optimizer_step,
    resume_checkpoint,
    save_checkpoint,
    stream_seed,
)
from rlhf_lab.errors import UserError
from rlhf_lab.eval.metrics import distinct_n, eos_rate
from rlhf_lab.generation import DecodingConfig, generate
from rlhf_lab.io import read_jsonl, write_jsonl
from rlhf_lab.models import load_causal_lm, load_tokenizer
from rlhf_lab.models.bounds import check_bounds
from rlhf_lab.models.checkpointing import enable_gradient_checkpointing
from rlhf_lab.models.policy import export_causal_lm, make_trainable
from rlhf_lab.rewards.ensemble import combine_scores
from rlhf_lab.sft_step import sft_backward

DISCARDED = float("-inf")  # LMFlow's −888888888: a discarded sample can never be the best


@dataclass
class RaftConfig(ModelArgs, DataArgs, LoraArgs, RewardArgs, TrainArgs):
    # --- the RAFT loop (LMFlow's RaftAlignerArguments) ---
    num_raft_iteration: int = arg(20, "sample → rank → fine-tune iterations")
    raft_batch_size: int = arg(1024, "samples kept per iteration (local: prompts per iteration; top: "
                               "raft_batch_size/α prompts are sampled and the best α kept)")
    top_reward_percentage: float = arg(0.2, "α in (0, 1]: local keeps the best of K = int(1/α) samples per "
                                       "prompt, top keeps the best α fraction of all prompts' samples")
    collection_strategy: str = arg("local", "local = best-of-K per prompt (LMFlow's script); top = one sample "
                                   "per prompt, ranked globally", ("local", "top"))
    output_min_length: int = arg(64, "max_new_tokens of a prompt is drawn uniformly from "
                                 "[output_min_length, output_max_length)")
    output_max_length: int = arg(128, "upper end (exclusive) of the per-prompt max_new_tokens draw")
    max_prompt_length: int = arg(256, "prompts longer than this many tokens are left out (LMFlow's 256)")
    temperature: float = arg(0.85, "sampling temperature (LMFlow's 0.85; no top-k / top-p truncation)")
    generation_batch_size: int = arg(16, "sequences generated together")
    final_eval: bool = arg(True, "after the last iteration, sample the next prompts once more: the reward of the "
                           "model after its last fine-tune")
    # --- hooks ---
    clean_text: str = arg("rlhf_lab.data.raft_hooks:clean_text",
                          "module:function (or file.py:function) turning a generation into the reply; none = keep "
                          "as generated. Default: the first assistant turn of the template")
    discard_sample: str = arg("rlhf_lab.data.raft_hooks:discard_sample",
                              "module:function (or file.py:function) returning True for replies never to keep; "
                              "none = keep all. Default: contains the template's markers, or < 2 characters")
    # --- fine-tuning (LMFlow's example script: full fine-tune, lr 2e-5 constant, 4 epochs per iteration) ---
    trainable: str = arg("full", "what trains", ("lora", "full"))
    loss_on: str = arg("all", "tokens that carry the loss: all = prompt and response (LMFlow's text_only "
                       "data), response = the reply only", ("all", "response"))
    block_size: int = arg(0, "0 = one sequence per kept sample; N = LMFlow's group_texts: concatenate the "
                          "iteration's texts and cut them into N-token blocks (the remainder is dropped)")
    export: str = arg("merged", "final model: LoRA merged into full weights, or the adapter alone",
                      ("merged", "adapter"))
    learning_rate: float = arg(2e-5, "peak learning rate of AdamW (LMFlow's 2e-5)")
    lr_scheduler_type: str = arg("constant", "learning-rate schedule; linear/cosine decay over "
                                 "num_raft_iteration × the expected steps per iteration",
                                 ("linear", "cosine", "constant"))
    num_train_epochs: float = arg(4.0, "passes over each iteration's kept set (LMFlow's 4)")
    max_steps: int = arg(0, "if > 0: optimizer steps per iteration instead of num_train_epochs")
    save_total_limit: int = arg(1, "keep at most this many iteration checkpoints (the newest is never deleted)")

    def validate(self) -> None:
        self.validate_training()
        require(self.num_raft_iteration >= 1, "num_raft_iteration", "must be at least 1")
        require(self.raft_batch_size >= 1, "raft_batch_size", "must be at least 1")
        require(0 < self.top_reward_percentage <= 1, "top_reward_percentage", "must be in (0, 1]")
        require(self.output_min_length >= 1, "output_min_length", "must be at least 1")
        require(self.output_max_length > self.output_min_length, "output_max_length",
                f"must exceed output_min_length ({self.output_min_length}): the draw is in [min, max)")
        require(self.max_prompt_length >= 1, "max_prompt_length", "must be at least 1")
        require(self.temperature > 0, "temperature", "must be positive")
        require(self.generation_batch_size >= 1, "generation_batch_size", "must be at least 1")
        require(bool(self.reward_models), "reward_models", "give a reward model (a train-rm output dir)")
        self.validate_reward()
        require(self.block_size == 0 or self.block_size >= 8, "block_size", "must be 0 or at least 8")
        self.validate_lora()
        self.validate_data()
        self.hooks()  # a bad hook name fails here, before any model loads

    def hooks(self):
        return load_hook(self.clean_text, "clean_text"), load_hook(self.discard_sample, "discard_sample")

    @property
    def samples_per_prompt(self) -> int:
        """K: local draws int(1/α) samples per prompt (0.2 → 5, 0.125 → 8); top draws one."""
        if self.collection_strategy == "top":
            return 1
        return int(1 / self.top_reward_percentage + 1e-9)

    @property
    def prompts_per_iteration(self) -> int:
        """M: local = raft_batch_size; top = int(raft_batch_size / α), of which the best α are kept."""
        if self.collection_strategy == "top":
            return int(self.raft_batch_size / self.top_reward_percentage + 1e-9)
        return self.raft_batch_size


# ---------------------------------------------------------------------------------------------------------
# Ranking: which samples are kept (pure functions of the reward table)
# ---------------------------------------------------------------------------------------------------------


def select_local(rewards: np.ndarray, discarded: np.ndarray) -> list[tuple[int, int]]:
    """Best-of-K per prompt: ``(prompt, sample)`` of the highest reward among the prompt's non-discarded samples
    (the first one on ties, as ``np.argmax``); prompts whose samples are all discarded contribute nothing.
    ``rewards`` and ``discarded`` have shape (P, K)."""
    masked = np.where(discarded, DISCARDED, rewards)
    kept = []
    for p in range(masked.shape[0]):
        k = int(np.argmax(masked[p]))
        if not discarded[p, k]:
            kept.append((p, k))
    return kept


def select_top(rewards: np.ndarray, discarded: np.ndarray, alpha: float) -> list[int]:
    """Global ranking: the ``int(P·α)`` prompts whose (single) sample has the highest reward, discarded samples
    excluded (fewer are kept when fewer survive); ties go to the earlier prompt. Returned best first."""
    count = int(len(rewards) * alpha + 1e-9)
    order = np.argsort(-np.asarray(rewards, dtype=np.float64), kind="stable")
    return [int(p) for p in order if not discarded[p]][:count]


# ---------------------------------------------------------------------------------------------------------
# Deterministic streams: everything random is a function of (seed, iteration), so a resumed run is exact
# ---------------------------------------------------------------------------------------------------------


def iteration_prompts(num_prompts: int, per_iteration: int, iteration: int, seed: int) -> list[int]:
    """Prompt indices of an iteration: positions [t·M, (t+1)·M) of the shuffled prompt stream. The prompts are
    shuffled once (as LMFlow); when they run out, the next pass is a fresh permutation."""
    start, stop = iteration * per_iteration, (iteration + 1) * per_iteration
    out = []
    for position in range(start, stop):
        epoch, offset = divmod(position, num_prompts)
        if offset == 0 or not out:
            order = epoch_order(num_prompts, seed, epoch)
        out.append(order[offset])
    return out


def max_new_tokens_draw(count: int, low: int, high: int, seed: int, iteration: int) -> list[int]:
    """max_new_tokens per prompt, uniform in [low, high) (LMFlow's np.random.randint(out_min, out_max))."""
    rng = np.random.default_rng([seed, iteration, 1])
    return rng.integers(low, high, size=count).tolist()


# ---------------------------------------------------------------------------------------------------------
# One collection: sample, clean, reward, discard
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Candidate:
    """One sampled reply with everything RAFT decides about it."""

    raw: str  # decoded generation, special tokens kept
    text: str  # after clean_text
    ended: bool  # the model ended its turn (EOS / stop id, or it started a new turn that clean_text cut)
    num_tokens: int  # generated tokens
    finished: bool
    discarded: bool = False
    reward: float = float("nan")
    member_scores: list[float] | None = None


class Collector:
    """Samples K replies for each prompt, post-processes them with the hooks and scores them."""

    def __init__(self, config: RaftConfig, tokenizer, scorer) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.scorer = scorer
        self.clean, self.discard = config.hooks()
        self.markers = template_markers(config.template, tokenizer)
        self.decoding = DecodingConfig(max_new_tokens=config.output_max_length, temperature=config.temperature,
                                       top_p=1.0, top_k=0)

    def context(self, prompt: Prompt) -> HookContext:
        return replace(self.markers, prompt=prompt.messages)

    def collect(self, model, prompts: list[Prompt], texts: list[str], limits: list[int], k: int,
                seed: int, progress: bool) -> list[list[Candidate]]:
        outputs = generate(model, self.tokenizer, texts, samples_per_prompt=k, decoding=self.decoding,
                           batch_size=self.config.generation_batch_size, seed=seed, progress=progress,
                           max_new_tokens_per_prompt=limits)
        table: list[list[Candidate]] = []
        for prompt, gens in zip(prompts, outputs, strict=True):
            context = self.context(prompt)
            row = []
            for g in gens:
                ids = g.token_ids[:-1] if g.finished else g.token_ids  # the stop token ends the turn, no text
                raw = self.tokenizer.decode(ids, skip_special_tokens=False)
                text = checked_clean(self.clean, raw, context, self.config.clean_text)
                ended = g.finished or any(m in raw for m in self.markers.turn_starts)
                candidate = Candidate(raw, text, ended, g.num_tokens, g.finished)
                candidate.discarded = checked_discard(self.discard, text, context, self.config.discard_sample)
                row.append(candidate)
            table.append(row)
        self.score(prompts, table)
        return table

    def score(self, prompts: list[Prompt], table: list[list[Candidate]]) -> None:
        """Reward of every cleaned reply (discarded ones too: the first sample's reward is the unbiased
        estimate whatever the hooks do)."""
        flat = [(p, c) for p, row in zip(prompts, table, strict=True) for c in row]
        if not flat:
            return
        members = self.scorer.score([p.messages for p, _ in flat], [c.text for _, c in flat])  # (k, N)
        config = self.config
        combined = combine_scores(members, config.objective, config.uwo_weight, config.ensemble_ddof)
        for j, (_, c) in enumerate(flat):
            c.reward = float(combined[j])
            c.member_scores = [float(v) for v in members[:, j]]


# ---------------------------------------------------------------------------------------------------------
# Fine-tuning data
# ---------------------------------------------------------------------------------------------------------


def response_parts(template: str, tokenizer) -> tuple[str, str]:
    """What the template puts before and after a reply's text (chat/SmolLM2: "", "<|im_end|>\\n")."""
    sentinel = "\u2063RAFT-REPLY\u2063"
    rendered = render_response(sentinel, template, tokenizer)
    before, _, after = rendered.partition(sentinel)
    return before, after


def tokenize_kept(prompt_text: str, reply: str, ended: bool, tokenizer, parts: tuple[str, str],
                  loss_on: str) -> TokenizedExample:
    """prompt + reply as the template renders them; the end-of-turn marker only when the model ended its turn
    (a reply cut by its token limit must not teach the model to stop there)."""
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    reply_text = parts[0] + reply + (parts[1] if ended else "")
    reply_ids = tokenizer(reply_text, add_special_tokens=False)["input_ids"]
    prompt_mask = 1 if loss_on == "all" else 0
    return TokenizedExample(prompt_ids + reply_ids, [prompt_mask] * len(prompt_ids) + [1] * len(reply_ids))


def finetune_batches(num_examples: int, global_batch: int, epochs: float, max_steps: int,
                     seed: int) -> list[list[int]]:
    """The iteration's optimizer steps: consecutive ``global_batch`` chunks of a stream of permutations (one per
    epoch), ``ceil(epochs · n / global_batch)`` steps (or ``max_steps``). No example is dropped; a batch may
    straddle two epochs."""
    steps = max_steps if max_steps > 0 else max(1, math.ceil(epochs * num_examples / global_batch))
    batches, stream, epoch = [], [], 0
    for _ in range(steps):
        while len(stream) < global_batch:
            stream += epoch_order(num_examples, seed, epoch)
            epoch += 1
        batches.append(stream[:global_batch])
        stream = stream[global_batch:]
    return batches


# ---------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------


def run(config: RaftConfig) -> dict[str, float]:
    from accelerate.utils import gather_object

    from rlhf_lab.rewards.scorer import RewardScorer

    check_bounds(config.model_name, tokens=config.max_prompt_length + config.output_max_length - 1,
                 tokens_flag="output_max_length", batch=config.generation_batch_size, batch_flag="generation_batch_size",
                 online=config.online, dtype=config.dtype, prompt_note=" (--max_prompt_length + --output_max_length - 1)")
    run = Run(config, config.output_dir, resume=config.resume, overwrite=config.overwrite_output_dir,
              mixed_precision=config.mixed_precision, report_to=config.report_to, seed=config.seed)
    tokenizer = load_tokenizer(config.model_name, config.online, config.trust_remote_code)

    # --- prompts ----------------------------------------------------------------------------------------
    prompts, reports = load_prompts(config.dataset, data_format=config.data_format, split=config.split,
                                    limit=config.limit, bottom=config.bottom, top=config.top,
                                    on_bad_row=config.on_bad_row)
    for report in reports:
        run.print(report.summary())
    rendered = [render_prompt(p.messages, config.template, tokenizer) for p in prompts]
    fits = [i for i, text in enumerate(rendered)
            if len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= config.max_prompt_length]
    prompts, rendered = [prompts[i] for i in fits], [rendered[i] for i in fits]
    if not prompts:
        raise UserError(f"--max_prompt_length: no prompt of {config.dataset} is {config.max_prompt_length} "
                        "tokens or shorter")
    M, K = config.prompts_per_iteration, config.samples_per_prompt
    run.print(f"raft: {len(prompts)} prompts (≤ {config.max_prompt_length} tokens); {config.collection_strategy}: "
              f"{M} prompts × {K} samples per iteration, keep ≈ {config.raft_batch_size}")
    if len(prompts) < M:
        warn(f"raft: {M} prompts per iteration but only {len(prompts)} prompts: an iteration reuses prompts")

    # --- models -----------------------------------------------------------------------------------------
    scorer = RewardScorer(config.reward_models, torch_dtype(config.dtype), config.reward_batch_size,
                          config.allow_pickle)
    collector = Collector(config, tokenizer, scorer)
    model = load_causal_lm(config.model_name, torch_dtype(config.dtype), config.online, config.trust_remote_code,
                           config.allow_pickle)
    model = make_trainable(model, config.trainable, config)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model.train()
    world, accumulation = run.world_size, config.gradient_accumulation_steps
    global_batch = config.per_device_train_batch_size * accumulation * world
    expected_steps = len(finetune_batches(config.raft_batch_size, global_batch, config.num_train_epochs,
                                          config.max_steps, 0))
    # The optimizer and schedule are made once and persist across iterations (LMFlow's RaftTrainer).
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config.lr_scheduler_type, config.warmup_steps,
                               config.num_raft_iteration * expected_steps)
    model, optimizer = run.accelerator.prepare(model, optimizer)

    start, optimizer_steps = 0, 0
    if config.resume and (checkpoint := resume_checkpoint(run)) is not None:
        state, _ = load_checkpoint(run, checkpoint, model, optimizer, scheduler)
        start, optimizer_steps = state["iteration"], state["optimizer_steps"]
        run.print(f"raft: resumed from {checkpoint} at iteration {start}")
    if config.resume:
        _drop_rows_from(run, start)  # rows of the iteration the kill interrupted are redone identically

    parts = response_parts(config.template, tokenizer)
    pad_id = tokenizer.pad_token_id
    last: dict[str, float] = {}
    for iteration in range(start, config.num_raft_iteration + int(config.final_eval)):
        training = iteration < config.num_raft_iteration  # else: the final evaluation
        k = K if training else 1

        # --- 1. sample M prompts (this process's share), K replies each; clean, discard, reward -------------
        t0 = time.perf_counter()
        indices = iteration_prompts(len(prompts), M, iteration, config.seed)
        limits = max_new_tokens_draw(len(indices), config.output_min_length, config.output_max_length,
                                     config.seed, iteration)
        mine = list(range(len(indices)))[run.rank::world]
        table = collector.collect(model, [prompts[indices[j]] for j in mine], [rendered[indices[j]] for j in mine],
                                  [limits[j] for j in mine], k, stream_seed(config.seed, iteration, run.rank),
                                  config.progress and run.is_main)
        rows = sorted(gather_object(list(zip(mine, table, strict=True))), key=lambda r: r[0])
        table = [row for _, row in rows]
        for j, row in enumerate(table):
            for c in row:
                check_finite(c.reward, iteration, f"reward (RAFT iteration {iteration}, prompt {indices[j]})",
                             run.checkpoints)
        collect_seconds = time.perf_counter() - t0

        # --- 2. rank: keep the best (never a discarded sample) ---------------------------------------------
        rewards = np.array([[c.reward for c in row] for row in table])
        discarded = np.array([[c.discarded for c in row] for row in table])
        if config.collection_strategy == "local":
            kept = select_local(rewards, discarded)
        else:
            kept = [(p, 0) for p in select_top(rewards[:, 0], discarded[:, 0], config.top_reward_percentage)]
        metrics = _collection_metrics(table, kept, tokenizer, training)
        metrics["time/collect_seconds"] = collect_seconds
        if run.is_main:
            _save_samples(run.dir, iteration, training, [prompts[i] for i in indices], limits, table, kept)

        if not training:  # the final evaluation: the model after its last fine-tune
            run.log(metrics, iteration)
            last.update(metrics)
            break

        # --- 3. fine-tune the current model on the kept (prompt + reply) texts -----------------------------
        t0 = time.perf_counter()
        examples = [tokenize_kept(rendered[indices[p]], table[p][s].text, table[p][s].ended, tokenizer, parts,
                                  config.loss_on) for p, s in kept]
        if config.block_size and examples:
            examples = group_texts(examples, config.block_size)
        losses, grad_norm = [], torch.zeros(())
        if not examples:
            warn(f"raft: iteration {iteration}: no sample kept (all discarded?); no fine-tuning")
        else:
            model.train()
            for indices_step in finetune_batches(len(examples), global_batch, config.num_train_epochs,
                                                 config.max_steps, stream_seed(config.seed, iteration, 2)):
                step_loss, grad_norm = _train_step(run, model, optimizer, scheduler, examples, indices_step,
                                                   pad_id, config, optimizer_steps + 1)
                optimizer_steps += 1
                losses.append(step_loss)
        metrics.update({
            "loss": float(np.mean(losses)) if losses else float("nan"),
            "loss_first_step": losses[0] if losses else float("nan"),
            "grad_norm": float(grad_norm),
            "learning_rate": scheduler.get_last_lr()[0],
            "train/examples": len(examples),
            "train/steps": len(losses),
            "optimizer_steps": optimizer_steps,
            "time/train_seconds": time.perf_counter() - t0,
        })
        run.log(metrics, iteration)
        last.update(metrics)
        run.print(f"raft: iteration {iteration}: reward first sample {metrics['reward/first_sample']:.4f}, "
                  f"kept {metrics['reward/kept']:.4f} ({metrics['kept']} kept, discard rate "
                  f"{metrics['discard_rate']:.2f}), distinct-2 {metrics['distinct_2']:.3f}, "
                  f"loss {metrics['loss']:.4f}")

        # --- 4. checkpoint: iteration, prompt position and RNG live in the checkpoint ----------------------
        save_checkpoint(run, iteration + 1, model, optimizer, scheduler,
                        {"iteration": iteration + 1, "prompt_position": (iteration + 1) * M,
                         "optimizer_steps": optimizer_steps}, config.save_total_limit)

    # --- finish -------------------------------------------------------------------------------------------
    if run.is_main:
        plot_curves(run.dir)
        export_causal_lm(run.accelerator.unwrap_model(model), tokenizer, run.dir / "model", config.export)
        run.print(f"raft: model written to {run.dir / 'model'}")
    run.accelerator.wait_for_everyone()
    run.end()
    return last


def _train_step(run: Run, model, optimizer, scheduler, examples: list[TokenizedExample], indices: list[int],
                pad_id: int, config: RaftConfig, step: int) -> tuple[float, torch.Tensor]:
    """One optimizer step on ``indices`` (as the SFT recipe: token-mean loss over the whole global batch)."""
    total = sft_backward(run, model, examples, indices, pad_id, config.gradient_accumulation_steps, step,
                         "raft fine-tuning loss")
    grad_norm = optimizer_step(run, model, optimizer, scheduler, config.max_grad_norm)
    return float(run.accelerator.reduce(total, reduction="sum")), grad_norm


def _collection_metrics(table: list[list[Candidate]], kept: list[tuple[int, int]], tokenizer,
                        training: bool) -> dict[str, float]:
    """Rewards (first sample = unbiased, kept set, all), diversity and length of the iteration's replies."""
    first = [row[0] for row in table]
    every = [c for row in table for c in row]
    chosen = [table[p][s] for p, s in kept]

    def length(cs: list[Candidate]) -> float:
        return float(np.mean([len(tokenizer(c.text, add_special_tokens=False)["input_ids"]) for c in cs])) \
            if cs else float("nan")

    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else float("nan")

    metrics = {
        "reward/first_sample": mean([c.reward for c in first]),
        "reward/first_sample_std": float(np.std([c.reward for c in first])),
        "reward/all": mean([c.reward for c in every]),
        "distinct_2": distinct_n([c.text for c in first], 2),
        "response_length": length(first),
        "eos_rate": eos_rate([c.finished for c in first]),
        "discard_rate": mean([float(c.discarded) for c in every]),
        "prompts": len(table),
        "samples": len(every),
    }
    if training:
        metrics.update({
            "reward/kept": mean([c.reward for c in chosen]),
            "kept": len(chosen),
            "distinct_2_kept": distinct_n([c.text for c in chosen], 2),
            "response_length_kept": length(chosen),
        })
    if every and every[0].member_scores and len(every[0].member_scores) > 1:
        for j in range(len(every[0].member_scores)):
            metrics[f"reward/first_sample_member_{j}"] = mean([c.member_scores[j] for c in first])
    return metrics


def _save_samples(out: Path, iteration: int, training: bool, prompts: list[Prompt], limits: list[int],
                  table: list[list[Candidate]], kept: list[tuple[int, int]]) -> None:
    """``train_set_{t}.jsonl`` (the kept samples, what the model is fine-tuned on) and ``samples/iter_{t}.jsonl``
    (every sample with its reward and fate), so a run's data can be inspected as LMFlow's authors advise."""
    kept_set = set(kept)
    samples = []
    for p, (prompt, limit, row) in enumerate(zip(prompts, limits, table, strict=True)):
        samples.append({
            "messages": prompt.messages, "max_new_tokens": limit,
            "responses": [c.text for c in row], "raw": [c.raw for c in row],
            "rewards": [c.reward for c in row], "discarded": [c.discarded for c in row],
            "kept": [(p, s) in kept_set for s in range(len(row))], "finished": [c.finished for c in row],
            "num_tokens": [c.num_tokens for c in row],
            "member_scores": [c.member_scores for c in row],
        })
    name = f"iter_{iteration}.jsonl" if training else "final_eval.jsonl"
    write_jsonl(out / "samples" / name, samples)
    if training:
        write_jsonl(out / f"train_set_{iteration}.jsonl", [
            {"messages": prompts[p].messages, "response": table[p][s].text, "reward": table[p][s].reward,
             "ended": table[p][s].ended, "prompt_position": p, "sample_index": s} for p, s in kept])


def _drop_rows_from(run: Run, iteration: int) -> None:
    """On resume, forget metrics rows of iterations after the checkpoint (they are recomputed identically)."""
    if not run.is_main or not run.metrics_path.is_file():
        return
    rows = read_jsonl(run.metrics_path)
    write_jsonl(run.metrics_path, [r for r in rows if r.get("step", -1) < iteration])


def plot_curves(run_dir: Path) -> None:
    """plots/raft_reward.png (first-sample and kept-set reward per iteration) and plots/raft_diversity.png
    (distinct-2 and response length)."""
    from matplotlib.ticker import MaxNLocator

    from rlhf_lab.report.plots import new_figure, save_figure

    path = run_dir / "metrics.jsonl"
    rows = [r for r in read_jsonl(path) if "reward/first_sample" in r] if path.is_file() else []
    if not rows:
        return

    def series(key: str) -> tuple[list[int], list[float]]:
        points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        return ([s for s, _ in points], [v for _, v in points])

    fig, axes = new_figure(1, 1)
    ax = axes[0, 0]
    for key, label, marker in [("reward/first_sample", "model (first sample per prompt, unbiased)", "o"),
                               ("reward/kept", "kept set (training data)", "*")]:
        xs, ys = series(key)
        if xs:
            ax.plot(xs, ys, marker=marker, label=label)
    ax.set_xlabel("RAFT iteration (fine-tunes done)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("reward")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, run_dir / "plots" / "raft_reward.png")

    fig, axes = new_figure(1, 2)
    for ax, keys, ylabel in [(axes[0, 0], [("distinct_2", "model"), ("distinct_2_kept", "kept set")], "distinct-2"),
                             (axes[0, 1], [("response_length", "model"), ("response_length_kept", "kept set")],
                              "response length (tokens)")]:
        for key, label in keys:
            xs, ys = series(key)
            if xs:
                ax.plot(xs, ys, marker="o", label=label)
        ax.set_xlabel("RAFT iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, run_dir / "plots" / "raft_diversity.png")
