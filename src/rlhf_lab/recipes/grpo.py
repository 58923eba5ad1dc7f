"""Critic-free online RL: GRPO (Shao et al. 2024), Dr. GRPO (Liu et al. 2025), RLOO (Ahmadian et al. 2024) and
REINFORCE++ (Hu 2025), with reward models / ensembles, reward functions, and gold tracking.

    π = the policy (LoRA on the model by default), π_ref = the same model with the adapter disabled
    for step in steps:
        prompts   = the step's prompts (fixed order per (seed, epoch): the position in the data is the step)
        y_1..y_G ~ π(·|x)        G answers per prompt, one prefill per prompt; the sampler returns log π_old(y_t)
        r         = Σ_k w_k·r_k over the reward sources: reward model(s) combined (mean | WCO | UWO) or the
                    length-only reward, and reward functions (TRL's signature); then --len_penalty,
                    --scale_reward, --missing_eos_penalty (rewards/online.RewardShaping)
        logπ_ref  = one no-grad pass (only when β > 0), every prompt read once for its G answers
        A         = grpo: (r − group mean)/(group std + 1e-4) | dr_grpo: r − group mean |
                    rloo: r − mean of the other G − 1 | reinforce_pp: batch-normalised reward-to-go, KL in the reward
        for iteration in num_iterations (μ), for each of num_mini_batches shuffled mini-batches of whole groups:
            ρ_t = π/π_old (μ = 1 and one mini-batch: π_old = π detached, ρ = 1, no old-policy pass)
            L = clipped surrogate(ρ, A; ε, ε_high) + β·KL_t(π‖π_ref), aggregated by --loss_type
            AdamW step (gradient clipping)
        every eval_interval steps: sample the fixed eval prompts (temperature 0.7, top_p 0.9), write
        eval/eval-{step}.jsonl (proxy scores, gold, ensemble variance, KL, length, ...) and eval/ metrics

Batch sizes follow TRL: ``per_device_train_batch_size`` counts completions (a multiple of G here: a micro-batch
holds whole groups, so each prompt is read once for its G answers). One step's global generation batch =
per_device_train_batch_size × gradient_accumulation_steps × num_mini_batches × processes completions; a
mini-batch (one optimizer step) = per_device_train_batch_size × gradient_accumulation_steps × processes.

Details worth naming:
* π_old comes from the sampler: the fast sampler returns each token's log-prob under the distribution it was
  drawn from (temperature only, as the rollout uses), which equals the training forward's to float rounding
  (≈1e-5 in float32 on SmolLM2), so μ > 1, several mini-batches and REINFORCE++'s KL-in-the-reward need no
  old-policy pass either. With μ = 1 and one mini-batch π_old = π.detach() exactly (TRL's shortcut).
* The policy and reference passes put a prompt and its G answers in one row (``models.batching.group_rows``): the
  prompt is read once, each answer sees only the prompt and itself; the lm_head runs only on answer tokens.
* KL: in the loss (grpo, dr_grpo: k3 per token, TRL's) or in the reward (rloo: r − β·Σ_t k1_t, as TRL's RLOO;
  reinforce_pp: −β·k1_t per token); ``--kl_in_reward`` overrides. No reference pass when β = 0.
* Dropout is off (eval mode, as TRL); log-probs are taken at the rollout temperature (logits / T).
* A completion no reward source scored (every function returned None) gets advantage 0 (TRL's rule).
* A checkpoint holds the LoRA / full weights, AdamW and the schedule, the running reward statistics and the RNG;
  prompts, sampling seeds and mini-batch shuffles are functions of (seed, step), so a resumed run takes exactly
  the steps of an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from rlhf_lab.config import DataArgs, LoraArgs, ModelArgs, arg, require, torch_dtype
from rlhf_lab.data import load_prompts
from rlhf_lab.data.records import Prompt
from rlhf_lab.engine import (
    Run,
    RunFailure,
    Throughput,
    TrainArgs,
    check_finite,
    global_batches,
    global_moments,
    load_checkpoint,
    make_optimizer,
    make_scheduler,
    progress_bar,
    resume_checkpoint,
    save_checkpoint,
    split_for_process,
    stream_seed,
    total_training_steps,
)
from rlhf_lab.errors import UserError
from rlhf_lab.eval.policy import PolicyEvalArgs, evaluate_policy
from rlhf_lab.generation import DecodingConfig, Generation, generate
from rlhf_lab.losses import token_logprobs
from rlhf_lab.models import load_causal_lm, load_tokenizer
from rlhf_lab.models.batching import group_rows
from rlhf_lab.models.bounds import check_bounds
from rlhf_lab.models.checkpointing import checkpointed_layers_training, enable_gradient_checkpointing
from rlhf_lab.models.logprobs import entropy_from_logits, group_logits
from rlhf_lab.models.policy import export_causal_lm, make_trainable
from rlhf_lab.models.rollout import rollout_queries
from rlhf_lab.rewards.ensemble import ensemble_variance, objective_name
from rlhf_lab.rewards.functions import (
    RewardFunction,
    RewardFunctionError,
    call_reward_functions,
    load_reward_functions,
    weighted_reward,
)
from rlhf_lab.rewards.online import RewardShaping, SequenceReward
from rlhf_lab.rewards.shaping import RunningRewardStats
from rlhf_lab.rl_losses import (
    ADVANTAGES,
    LOSS_TYPES,
    SCALE_REWARDS,
    clipped_policy_loss,
    grpo_advantages,
    nan_std,
    per_token_kl,
    reinforce_pp_returns,
    rloo_advantages,
)


@dataclass
class GRPOConfig(ModelArgs, DataArgs, LoraArgs, TrainArgs, PolicyEvalArgs):
    # --- reward ---
    reward: str = arg("rm", "sequence reward: reward model(s) and/or reward functions (rm), or the length-only "
                            "reward 1 − |L/N − 1| (len_only; reward functions may be added to it)", ("rm", "len_only"))
    reward_models: list[str] = arg([], "reward model(s): train-rm run dirs or RM dirs (comma-separated); more than "
                                       "one member = an ensemble, combined by --objective")
    reward_funcs: list[str] = arg([], "reward functions, comma-separated: module:function or path/file.py:function, "
                                      "TRL's signature fn(prompts, completions, **kwargs) -> list[float | None]")
    reward_weights: list[float] = arg([], "weights of the reward sources: the reward model (or len_only) first if "
                                          "given, then each reward function (default 1 each)")
    objective: str = arg("mean", "how ensemble members combine: mean, WCO (min) or UWO (mean − λ·var)",
                         ("mean", "WCO", "UWO", "wco", "uwo"))
    uwo_weight: float = arg(0.1, "λ of UWO (Coste et al. 2023: 0.1)")
    ensemble_ddof: int = arg(1, "ddof of the across-member variance (1 = unbiased, as Coste et al.'s PPO)")
    len_only: int = arg(0, "N of --reward len_only: r = 1 − |L/N − 1|, L = response tokens (EOS not counted)")
    len_penalty: bool = arg(False, "r ← r + 2σ(1 − 0.01·L), σ = running reward stdev (Singhal et al. 2023)")
    scale_reward: bool = arg(False, "r ← clip((r − μ)/σ, ±0.3), μ, σ over the last 10 batches (Singhal et al.)")
    omit_long: bool = arg(False, "a response that hit max_new_tokens is replaced by a random finished answer of "
                                 "its own group (Singhal et al.'s omit_long, kept within the group)")
    missing_eos_penalty: float | None = arg(None, "subtracted from the reward of a response without EOS (TRL)")
    reward_batch_size: int = arg(16, "texts per reward-model forward pass")
    gold_model_name: str | None = arg(None, "score eval generations with this gold RM during training too "
                                            "(else later: rlhf-lab gold-eval RUN_DIR)")
    # --- policy ---
    trainable: str = arg("lora", "what trains: a LoRA adapter (reference = adapter disabled) or every weight "
                                 "(reference = a frozen copy)", ("lora", "full"))
    learning_rate: float = arg(1e-5, "peak learning rate of AdamW (TRL's full fine-tune default is 1e-6; LoRA "
                                     "needs more)")
    export: str = arg("merged", "final policy: LoRA merged into full weights, or the adapter alone",
                      ("merged", "adapter"))
    # --- rollouts ---
    num_generations: int = arg(4, "G: answers sampled per prompt (the group)")
    generation_batch_size: int = arg(0, "sequences per generation batch (0 = the whole step's local batch)")
    num_mini_batches: int = arg(1, "mini-batches (optimizer steps) per iteration over a generation batch")
    max_prompt_length: int = arg(256, "prompts longer than this (in tokens, templated) are left out")
    max_new_tokens: int = arg(48, "completion length limit (TRL's max_completion_length; dr_grpo's normaliser)")
    temperature: float = arg(1.0, "rollout sampling temperature (log-probs use the same)")
    # --- objective ---
    advantage: str = arg("grpo", "advantage estimator: grpo (group mean/std), dr_grpo (group mean only), rloo "
                                 "(leave-one-out), reinforce_pp (batch-normalised, KL in the reward)", ADVANTAGES)
    scale_rewards: str = arg("group", "--advantage grpo: divide by the group std, the batch std, or not at all "
                                      "(TRL's scale_rewards; none = Dr. GRPO)", SCALE_REWARDS)
    loss_type: str = arg("dapo", "how per-token losses aggregate (TRL's names): grpo (per-sequence mean), bnpo "
                                 "(micro-batch token mean), dr_grpo (constant B·max_new_tokens), dapo (tokens of "
                                 "the whole mini-batch)", LOSS_TYPES)
    num_iterations: int = arg(1, "μ: passes over each generation batch (1 = on-policy, no old-policy pass)")
    epsilon: float = arg(0.2, "ε: lower clip of the ratio, 1 − ε (and the upper one unless --epsilon_high)")
    epsilon_high: float | None = arg(None, "upper clip 1 + ε_high (DAPO's clip-higher: 0.28; default ε)")
    beta: float = arg(0.04, "KL coefficient β to the reference (Shao et al. 2024: 0.04; TRL's default 0 skips the "
                            "reference pass)")
    kl_estimator: str = arg("auto", "per-token KL: k3 (never negative; GRPO) or k1; auto = k3 in the loss, k1 in "
                                    "the reward", ("auto", "k1", "k3"))
    kl_in_reward: bool | None = arg(None, "put β·KL in the reward instead of the loss (default: yes for rloo and "
                                          "reinforce_pp, as their papers; no for grpo and dr_grpo)")

    def validate(self) -> None:
        self.validate_training()
        self.objective = objective_name(self.objective)
        if self.reward == "rm":
            require(bool(self.reward_models or self.reward_funcs), "reward_models",
                    "give a reward model, a reward function (--reward_funcs), or --reward len_only")
        else:
            require(self.len_only >= 1, "len_only", "--reward len_only needs a target length N >= 1")
        try:
            self.reward_weights = [float(w) for w in self.reward_weights]
        except (TypeError, ValueError):
            raise UserError(f"--reward_weights: {self.reward_weights!r} are not numbers") from None
        require(not self.reward_weights or len(self.reward_weights) == len(self.reward_sources()), "reward_weights",
                f"{len(self.reward_weights)} weight(s) for {len(self.reward_sources())} reward source(s) "
                f"({', '.join(self.reward_sources())}); give one per source")
        require(all(math.isfinite(w) for w in self.reward_weights), "reward_weights", "must be finite")
        require(self.uwo_weight >= 0, "uwo_weight", "must be >= 0")
        require(self.ensemble_ddof in (0, 1), "ensemble_ddof", "must be 0 or 1")
        require(self.len_only >= 0, "len_only", "must be >= 0")
        require(self.missing_eos_penalty is None or self.missing_eos_penalty >= 0, "missing_eos_penalty",
                "must be >= 0")
        require(self.reward_batch_size >= 1, "reward_batch_size", "must be at least 1")
        require(self.num_generations >= 1, "num_generations", "must be at least 1")
        require(self.num_generations >= 2 or self.advantage == "reinforce_pp", "num_generations",
                f"--advantage {self.advantage} needs a group of at least 2 answers per prompt (a baseline); "
                "only reinforce_pp works with 1")
        require(self.per_device_train_batch_size % self.num_generations == 0, "per_device_train_batch_size",
                f"counts completions and must be a multiple of --num_generations {self.num_generations} "
                "(a micro-batch holds whole groups)")
        require(self.generation_batch_size >= 0, "generation_batch_size", "must be >= 0")
        require(self.num_mini_batches >= 1, "num_mini_batches", "must be at least 1")
        require(self.max_new_tokens >= 1, "max_new_tokens", "must be at least 1")
        require(self.max_prompt_length >= 1, "max_prompt_length", "must be at least 1")
        require(self.temperature > 0, "temperature", "must be positive")
        require(self.num_iterations >= 1, "num_iterations", "must be at least 1")
        require(0 < self.epsilon < 1, "epsilon", "must be in (0, 1)")
        require(self.epsilon_high is None or self.epsilon_high > 0, "epsilon_high", "must be positive")
        require(self.beta >= 0, "beta", "must be >= 0")
        require(self.kl_in_reward is not True or self.beta > 0, "kl_in_reward", "needs --beta > 0")
        self.validate_policy_eval()
        self.validate_lora()
        self.validate_data()

    def reward_sources(self) -> list[str]:
        """The weighted reward sources in --reward_weights order."""
        head = ["len_only"] if self.reward == "len_only" else (["reward_model"] if self.reward_models else [])
        return head + list(self.reward_funcs)

    def kl_placement(self) -> str:
        """'reward', 'loss', or 'none' (β = 0)."""
        if self.beta == 0:
            return "none"
        in_reward = self.kl_in_reward if self.kl_in_reward is not None else self.advantage in ("rloo", "reinforce_pp")
        return "reward" if in_reward else "loss"

    def kl_kind(self) -> str:
        if self.kl_estimator != "auto":
            return self.kl_estimator
        return "k1" if self.kl_placement() == "reward" else "k3"


# ---------------------------------------------------------------------------------------------------------
# Policy: one module, so DDP sees the forward that produces the training logits
# ---------------------------------------------------------------------------------------------------------


class GroupPolicy(nn.Module):
    """The policy LM; ``forward`` takes ``models.batching.group_rows`` tensors and returns the (N, L, V) logits
    that predict each answer token (``models.logprobs.group_logits``)."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                row: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return group_logits(self.policy, {"input_ids": input_ids, "attention_mask": attention_mask,
                                          "position_ids": position_ids, "row": row, "positions": positions})


def _inputs(batch: dict) -> tuple[torch.Tensor, ...]:
    return batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch["row"], batch["positions"]


@torch.no_grad()
def reference_logits(policy: GroupPolicy, ref_model: nn.Module | None, batch: dict) -> torch.Tensor:
    """π_ref's logits: the policy with its LoRA adapter disabled, or the frozen copy of a full fine-tune."""
    if ref_model is None:
        with policy.policy.disable_adapter():
            return policy(*_inputs(batch))
    return group_logits(ref_model, batch)


def group_batch(query_ids: list[list[int]], gens: list[list[Generation]], prompts: list[int], pad_id: int,
                dtype: torch.dtype) -> dict:
    """``group_rows`` of the given local prompt positions: one row per prompt holding its G answers."""
    return group_rows([query_ids[b] for b in prompts], [[g.token_ids for g in gens[b]] for b in prompts], pad_id,
                      dtype)


def completion_rows(prompts: list[int] | torch.Tensor, num_generations: int) -> torch.Tensor:
    """Flat completion indices b·G + g of the given local prompt positions, in group order."""
    prompts = torch.as_tensor(prompts, dtype=torch.long)
    return (prompts[:, None] * num_generations + torch.arange(num_generations)[None]).reshape(-1)


def pad_to(rows: list[list[float]], width: int) -> torch.Tensor:
    out = torch.zeros((len(rows), width))
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.float32)
    return out


def omit_long_in_groups(gens: list[list[Generation]], seed: int) -> list[list[Generation]]:
    """--omit_long for groups: an answer that hit the length limit is replaced by a random finished answer of the
    same prompt (so the group stays a group of that prompt); a group without a finished answer is kept."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for group in gens:
        done = [g for g in group if g.finished]
        if not done or len(done) == len(group):
            out.append(group)
            continue
        out.append([g if g.finished else done[int(torch.randint(len(done), (1,), generator=generator))]
                    for g in group])
    return out


# ---------------------------------------------------------------------------------------------------------
# Rewards: the sequence reward (reward models / len_only) and reward functions, weighted
# ---------------------------------------------------------------------------------------------------------


class GroupReward:
    """Every reward source of a run: the shared ``SequenceReward`` (reward model(s) combined by the ensemble
    objective, or len_only) as source 0 when configured, then each reward function; r = Σ_k w_k·r_k over the
    sources that scored a completion (NaN when none did)."""

    def __init__(self, sequence: SequenceReward | None, funcs: list[RewardFunction], weights: list[float]) -> None:
        self.sequence = sequence
        self.funcs = funcs
        self.weights = weights
        self.names = (["len_only" if sequence.len_only else "reward_model"] if sequence else []) + \
            [f.name for f in funcs]

    @property
    def num_members(self) -> int:
        return self.sequence.num_members if self.sequence is not None else 0

    def score(self, prompts: list[Prompt], texts: list[str], token_ids: list[list[int]],
              lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(per_source (N, S) float64, RM member scores (K, N) or None)``; raises RewardFunctionError."""
        per_source = torch.full((len(texts), len(self.names)), float("nan"), dtype=torch.float64)
        members, column = None, 0
        if self.sequence is not None:
            members = self.sequence.member_scores(prompts, texts)
            per_source[:, 0] = self.sequence.combined(members, lengths)
            column = 1
        if self.funcs:
            per_source[:, column:] = call_reward_functions(self.funcs, [p.messages for p in prompts], texts, token_ids)
        return per_source, members

    def total(self, per_source: torch.Tensor) -> torch.Tensor:
        return weighted_reward(per_source, self.weights)


class _EvalReward:
    """``evaluate_policy``'s reward interface over all of a run's sources: the eval proxy is the same weighted
    sum the run trains on. ``evaluate_policy`` hands over texts only, so reward functions get the re-tokenized
    text as ``completion_ids`` here (the EOS token is not in it)."""

    def __init__(self, reward: GroupReward, tokenizer) -> None:
        self.reward = reward
        self.tokenizer = tokenizer

    @property
    def num_members(self) -> int:
        return self.reward.num_members

    def member_scores(self, prompts: list[Prompt], texts: list[str]) -> torch.Tensor | None:
        self._prompts, self._texts = prompts, texts
        return self.reward.sequence.member_scores(prompts, texts) if self.reward.sequence is not None else None

    def combined(self, members: torch.Tensor | None, lengths: torch.Tensor) -> torch.Tensor:
        per_source = torch.full((len(self._texts), len(self.reward.names)), float("nan"), dtype=torch.float64)
        column = 0
        if self.reward.sequence is not None:
            per_source[:, 0] = self.reward.sequence.combined(members, lengths)
            column = 1
        if self.reward.funcs:
            per_source[:, column:] = call_reward_functions(
                self.reward.funcs, [p.messages for p in self._prompts], self._texts,
                [list(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in self._texts])
        return self.reward.total(per_source)


# ---------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------


def run(config: GRPOConfig) -> dict[str, float]:
    # Reward functions are the user's code: load them (and fail in one line) before any model loads.
    funcs: list[RewardFunction] = []
    if config.reward_funcs:
        funcs, _ = load_reward_functions(config.reward_funcs)
    weights = config.reward_weights or [1.0] * len(config.reward_sources())
    new_tokens = max(config.max_new_tokens, config.eval_max_new_tokens or 0)
    check_bounds(config.model_name, tokens=config.max_prompt_length + new_tokens, tokens_flag="max_new_tokens",
                 batch=config.per_device_train_batch_size, batch_flag="per_device_train_batch_size",
                 online=config.online, dtype=config.dtype, backward_layers=-1,
                 prompt_note=" (--max_prompt_length + --max_new_tokens or --eval_max_new_tokens)")
    run = Run(config, config.output_dir, resume=config.resume, overwrite=config.overwrite_output_dir,
              mixed_precision=config.mixed_precision, report_to=config.report_to, seed=config.seed)
    tokenizer = load_tokenizer(config.model_name, config.online, config.trust_remote_code)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    # --- prompts --------------------------------------------------------------------------------------
    load = dict(data_format=config.data_format, on_bad_row=config.on_bad_row)
    train_prompts, reports = load_prompts(config.dataset, split=config.split, limit=config.limit,
                                          bottom=config.bottom, top=config.top, **load)
    for report in reports:
        run.print(report.summary())
    prompts, query_ids = rollout_queries(train_prompts, tokenizer, config.template,
                                         config.max_prompt_length)
    eval_prompts: list[Prompt] = []
    eval_ids: list[list[int]] = []
    if config.num_eval_prompts:
        spec = config.eval_dataset or config.dataset
        loaded, _ = load_prompts(spec, split="all" if config.eval_dataset else "eval", **load)
        eval_prompts, eval_ids = rollout_queries(loaded, tokenizer, config.template,
                                                     config.max_prompt_length)
        eval_prompts, eval_ids = eval_prompts[:config.num_eval_prompts], eval_ids[:config.num_eval_prompts]
    run.print(f"grpo: {len(prompts)} training prompts ({len(train_prompts) - len(prompts)} longer than "
              f"{config.max_prompt_length} tokens left out), {len(eval_prompts)} eval prompts")

    # --- reward, policy, reference --------------------------------------------------------------------
    sequence = None
    if config.reward == "len_only" or config.reward_models:
        sequence = SequenceReward(config.reward_models if config.reward == "rm" else [], objective=config.objective,
                                  uwo_weight=config.uwo_weight, ensemble_ddof=config.ensemble_ddof,
                                  len_only=config.len_only if config.reward == "len_only" else 0,
                                  batch_size=config.reward_batch_size, allow_pickle=config.allow_pickle)
        uwo = config.reward == "rm" and config.objective == "UWO" and config.uwo_weight > 0
        if uwo and sequence.num_members <= config.ensemble_ddof:
            raise UserError(f"--objective UWO: the variance of {sequence.num_members} reward-model member(s) with "
                            f"--ensemble_ddof {config.ensemble_ddof} is undefined; give an ensemble or use mean")
    reward = GroupReward(sequence, funcs, weights)
    shaping = RewardShaping(len_penalty=config.len_penalty, scale_reward=config.scale_reward,
                            missing_eos_penalty=config.missing_eos_penalty)
    gold = None
    if config.gold_model_name:
        from rlhf_lab.rewards.scorer import RewardScorer

        gold = RewardScorer([config.gold_model_name], batch_size=config.reward_batch_size,
                            allow_pickle=config.allow_pickle)
    dtype = torch_dtype(config.dtype)
    model = load_causal_lm(config.model_name, dtype, config.online, config.trust_remote_code, config.allow_pickle)
    if hasattr(model, "peft_config"):  # an adapter directory as the starting policy: fold it in
        model = model.merge_and_unload()
    ref_model = None
    if config.trainable == "full":
        ref_model = load_causal_lm(config.model_name, dtype, config.online, config.trust_remote_code,
                                   config.allow_pickle)
        if hasattr(ref_model, "peft_config"):
            ref_model = ref_model.merge_and_unload()
        ref_model.eval().requires_grad_(False)
    agent = GroupPolicy(make_trainable(model, config.trainable, config))
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(agent)
    agent.eval()  # no dropout: π_old = π until the weights move

    G = config.num_generations
    world = run.world_size
    prompts_per_micro = config.per_device_train_batch_size // G
    prompts_per_mini = prompts_per_micro * config.gradient_accumulation_steps
    local_prompts = prompts_per_mini * config.num_mini_batches
    global_prompts = local_prompts * world
    total_steps = total_training_steps(len(prompts), global_prompts, config.num_train_epochs, config.max_steps)
    optimizer = make_optimizer(agent, config)
    scheduler = make_scheduler(optimizer, config.lr_scheduler_type, config.warmup_steps, total_steps)
    agent, optimizer = run.accelerator.prepare(agent, optimizer)
    unwrapped: GroupPolicy = run.accelerator.unwrap_model(agent)
    mask_dtype = next(unwrapped.parameters()).dtype

    reward_stats = RunningRewardStats(window=10)
    start_step = 0
    if config.resume and (checkpoint := resume_checkpoint(run)) is not None:
        state, _ = load_checkpoint(run, checkpoint, agent, optimizer, scheduler)
        start_step = state["step"]
        reward_stats = RunningRewardStats(10, **state["reward_stats"])
        run.print(f"grpo: resumed from {checkpoint} at step {start_step}")

    rollout_decoding = DecodingConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature)
    eval_decoding = config.eval_decoding(config.max_new_tokens)
    eval_reward = _EvalReward(reward, tokenizer)

    def evaluate(step: int) -> dict[str, float]:
        if not eval_prompts or not run.is_main:
            return {}
        try:
            return evaluate_policy(unwrapped.policy, ref_model, tokenizer, eval_prompts, eval_ids, eval_decoding,
                                   eval_reward, gold, run.dir / "eval" / f"eval-{step}.jsonl", step, pad_id,
                                   seed=config.seed + 7919, batch_size=max(1, prompts_per_micro),
                                   ensemble_ddof=config.ensemble_ddof,
                                   samples_per_prompt=config.eval_samples_per_prompt)
        except RewardFunctionError as e:
            raise RunFailure(f"step {step} (evaluation): {e}") from None

    if start_step == 0 and (eval_metrics := evaluate(0)):
        run.log(eval_metrics, 0)
    run.accelerator.wait_for_everyone()
    kl_placement, kl_kind = config.kl_placement(), config.kl_kind()
    # μ = 1 with one mini-batch: π_old = π.detach() (ratio exactly 1); otherwise the sampler's log-probs
    on_policy = config.num_iterations == 1 and config.num_mini_batches == 1
    source_names = reward.names  # metrics rewards/<source>/mean, a function by its name (TRL's)

    # --- train ----------------------------------------------------------------------------------------
    progress = progress_bar(run, config.progress, total_steps, start_step, "grpo")
    throughput = Throughput()
    metrics: dict[str, float] = {}
    for step, _epoch, indices in global_batches(len(prompts), global_prompts, config.seed, start_step, total_steps):
        done = step + 1
        timing = dict.fromkeys(("generate", "score", "reference", "train_forward", "backward", "optimizer"), 0.0)
        step_start = time.perf_counter()

        # 1. G answers per prompt, one prefill each, with the sampler's log-probs (= log π_old)
        local = split_for_process(indices, world, run.rank, 1)[0]
        tic = time.perf_counter()
        gens = generate(unwrapped.policy, tokenizer, [query_ids[i] for i in local], samples_per_prompt=G,
                        decoding=rollout_decoding, batch_size=config.generation_batch_size or len(local) * G,
                        seed=stream_seed(config.seed, step, run.rank), progress=False, return_logprobs=True)
        timing["generate"] = time.perf_counter() - tic
        if config.omit_long:
            gens = omit_long_in_groups(gens, stream_seed(config.seed, step, run.rank, 1))
        local_query = [query_ids[i] for i in local]
        flat = [g for group in gens for g in group]
        n_local = len(flat)
        lengths = torch.tensor([g.num_tokens - int(g.finished) for g in flat])  # EOS not counted (len_only, eval)
        finished = torch.tensor([g.finished for g in flat])
        width = max(1, max(g.num_tokens for g in flat))
        completion_mask = pad_to([[1.0] * g.num_tokens for g in flat], width)
        old_logprobs = pad_to([g.logprobs for g in flat], width)

        # 2. rewards: every source, weighted; then the shaping (running statistics of the global raw reward)
        tic = time.perf_counter()
        batch_prompts = [prompts[local[n // G]] for n in range(n_local)]
        try:
            per_source, members = reward.score(batch_prompts, [g.text for g in flat], [g.token_ids for g in flat],
                                               lengths)
        except RewardFunctionError as e:
            raise RunFailure(f"step {done}: {e}") from None
        if sequence is not None:
            check_finite(per_source[:, 0], done, f"the reward ({sequence.source})", run.checkpoints)
        infinite = torch.isinf(per_source).any(0)
        if infinite.any():
            raise RunFailure(f"step {done}: reward source {source_names[int(infinite.nonzero()[0])]} returned an "
                             "infinite value")
        raw = reward.total(per_source)
        all_raw = run.accelerator.gather(raw)
        scored = all_raw[~torch.isnan(all_raw)]
        mu, sigma = reward_stats.update(scored if scored.numel() else torch.zeros(1, dtype=torch.float64))
        rewards = shaping.apply(raw, lengths, finished, mu, sigma)
        timing["score"] = time.perf_counter() - tic

        # 3. log π_ref: one no-grad pass, each prompt read once for its G answers (only when β > 0)
        tic = time.perf_counter()
        ref_logprobs = torch.zeros_like(old_logprobs)
        if kl_placement != "none":
            for chunk in _chunks(len(local), prompts_per_micro):
                rows = completion_rows(chunk, G)
                batch = group_batch(local_query, gens, chunk, pad_id, mask_dtype)
                logits = reference_logits(unwrapped, ref_model, batch)
                cols = batch["targets"].size(1)
                ref_logprobs[rows, :cols] = token_logprobs(logits / config.temperature, batch["targets"]) * batch["mask"]
        timing["reference"] = time.perf_counter() - tic

        # 4. advantages (group statistics over the global batch, as TRL gathers its rewards)
        sampled_kl = per_token_kl(old_logprobs, ref_logprobs, kl_kind) * completion_mask
        all_rewards = run.accelerator.gather(rewards)
        if kl_placement == "reward" and config.advantage != "reinforce_pp":
            all_rewards = all_rewards - config.beta * run.accelerator.gather(sampled_kl.sum(1).double())
        mine = slice(run.rank * n_local, (run.rank + 1) * n_local)
        std_is_zero = None
        if config.advantage in ("grpo", "dr_grpo"):
            scale = "none" if config.advantage == "dr_grpo" else config.scale_rewards
            all_adv, std_is_zero = grpo_advantages(all_rewards, G, scale)
            advantages = all_adv[mine].float()
        elif config.advantage == "rloo":
            advantages = rloo_advantages(all_rewards, G)[mine].float()
        else:
            beta_in_reward = config.beta if kl_placement == "reward" else 0.0
            returns = reinforce_pp_returns(rewards, sampled_kl.double(), completion_mask.double(), beta_in_reward)
            moments = global_moments(run, returns, completion_mask.double())
            advantages = ((returns - moments["mean"]) * torch.rsqrt(moments["var"] + 1e-8)
                          * completion_mask).float()
        if std_is_zero is None:
            std_is_zero = torch.isclose(_group_std(all_rewards, G), torch.zeros(1, dtype=all_rewards.dtype))

        # 5. μ iterations of clipped updates over shuffled mini-batches of whole groups
        beta_in_loss = config.beta if kl_placement == "loss" else 0.0
        stats: dict[str, list[float]] = {k: [] for k in ("loss", "clip_ratio/low_mean", "clip_ratio/high_mean",
                                                         "clip_ratio/region_mean", "kl")}
        entropy_sum, entropy_count = 0.0, 0.0
        # --gradient_checkpointing: the layers checkpoint only in training mode; the agent stays in eval mode
        with checkpointed_layers_training(unwrapped):
            for iteration in range(config.num_iterations):
                order = torch.randperm(len(local), generator=torch.Generator().manual_seed(
                    stream_seed(config.seed, step, run.rank, 2, iteration)))
                for mini in range(config.num_mini_batches):
                    mini_prompts = order[mini * prompts_per_mini:(mini + 1) * prompts_per_mini]
                    micro_prompts = list(torch.split(mini_prompts, prompts_per_micro))
                    num_items = None
                    if config.loss_type == "dapo":  # the mini-batch's tokens over every process, per process (TRL)
                        tokens = completion_mask[completion_rows(mini_prompts, G)].sum().double()
                        num_items = run.accelerator.reduce(tokens, reduction="sum") / world
                    for k, chunk in enumerate(micro_prompts):
                        rows = completion_rows(chunk, G)
                        batch = group_batch(local_query, gens, chunk.tolist(), pad_id, mask_dtype)
                        cols = batch["targets"].size(1)
                        m = batch["mask"]
                        sync = k == len(micro_prompts) - 1
                        with run.accelerator.autocast(), (nullcontext() if sync else run.accelerator.no_sync(agent)):
                            tic = time.perf_counter()
                            logits = agent(*_inputs(batch)) / config.temperature
                            logprobs = token_logprobs(logits, batch["targets"])
                            old = logprobs.detach() if on_policy else old_logprobs[rows, :cols]
                            adv = advantages[rows] if advantages.dim() == 1 else advantages[rows, :cols]
                            loss, loss_stats = clipped_policy_loss(
                                logprobs, old, adv, m, loss_type=config.loss_type, epsilon=config.epsilon,
                                epsilon_high=config.epsilon_high, beta=beta_in_loss, ref_logps=ref_logprobs[rows, :cols],
                                kl_estimator=kl_kind, max_completion_length=config.max_new_tokens, num_items=num_items)
                            if config.loss_type != "dapo":  # dapo's normaliser already spans the accumulation
                                loss = loss / len(micro_prompts)
                            check_finite(loss, done, "the GRPO loss", run.checkpoints)
                            timing["train_forward"] += time.perf_counter() - tic
                            tic = time.perf_counter()
                            run.accelerator.backward(loss)
                            timing["backward"] += time.perf_counter() - tic
                        stats["loss"].append(float(loss.detach()))
                        for name, value in loss_stats.items():
                            stats[name].append(float(value))
                        if iteration == 0:
                            with torch.no_grad():
                                entropy_sum += float((entropy_from_logits(logits.detach()) * m).sum())
                                entropy_count += float(m.sum())
                    tic = time.perf_counter()
                    if config.max_grad_norm > 0:
                        run.accelerator.clip_grad_norm_(agent.parameters(), config.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    timing["optimizer"] += time.perf_counter() - tic
        scheduler.step()

        # 6. metrics (TRL's names), global over processes
        reduce = run.accelerator.reduce
        gathered = {name: run.accelerator.gather(v) for name, v in {
            "length": lengths.double(), "finished": finished.double(),
            "kl": (per_token_kl(old_logprobs, ref_logprobs, "k3") * completion_mask).sum(1).double(),
            "shaped": rewards, "per_source": per_source}.items()}
        shaped = gathered["shaped"][~torch.isnan(gathered["shaped"])]
        entropy = reduce(torch.tensor([entropy_sum, entropy_count], dtype=torch.float64), reduction="sum")
        local_stats = torch.tensor([float(np.mean(v)) if v else 0.0 for v in stats.values()], dtype=torch.float64)
        mean_stats = reduce(local_stats, reduction="mean")
        tokens = int(reduce(torch.tensor(float(completion_mask.sum())), reduction="sum"))
        throughput.add(tokens)
        metrics = {
            "reward": float(scored.mean()) if scored.numel() else float("nan"),
            "reward_std": float(scored.std()) if scored.numel() > 1 else 0.0,
            "frac_reward_zero_std": float(std_is_zero.double().mean()),
            # TRL's completion lengths count the EOS token
            "completions/mean_length": float((gathered["length"] + gathered["finished"]).mean()),
            "completions/min_length": float((gathered["length"] + gathered["finished"]).min()),
            "completions/max_length": float((gathered["length"] + gathered["finished"]).max()),
            "completions/clipped_ratio": float(1 - gathered["finished"].mean()),
            "entropy": float(entropy[0] / entropy[1].clamp(min=1)),
            "loss": float(mean_stats[0]),
            "clip_ratio/low_mean": float(mean_stats[1]), "clip_ratio/high_mean": float(mean_stats[2]),
            "clip_ratio/region_mean": float(mean_stats[3]),
            "lr": scheduler.get_last_lr()[0], "episode": done * global_prompts * G,
            "tokens_per_second": throughput.rate(),
            **{f"time/{k}": v for k, v in timing.items()}, "time/step": time.perf_counter() - step_start,
        }
        if kl_placement != "none":
            # TRL's kl: the token mean of k3(π_old, π_ref) over the sampled answers; kl_sequence: Σ_t k3 per answer
            metrics["kl"] = float(gathered["kl"].sum() / (gathered["length"] + gathered["finished"]).sum().clamp(min=1))
            metrics["kl_sequence"] = float(gathered["kl"].mean())
        if (config.len_penalty or config.scale_reward or config.missing_eos_penalty is not None) and shaped.numel():
            metrics["reward_shaped"] = float(shaped.mean())
        for j, name in enumerate(source_names):
            column_values = gathered["per_source"][:, j]
            column_values = column_values[~torch.isnan(column_values)]
            metrics[f"rewards/{name}/mean"] = float(column_values.mean()) if column_values.numel() else float("nan")
        if members is not None and reward.num_members > 1:
            metrics["objective/ensemble_variance"] = float(
                run.accelerator.gather(ensemble_variance(members, config.ensemble_ddof)).mean())
        if done % config.logging_steps == 0 or done == total_steps:
            run.log(metrics, done)
        if (config.eval_interval and done % config.eval_interval == 0) or done == total_steps:
            if eval_metrics := evaluate(done):
                run.log(eval_metrics, done)
            run.accelerator.wait_for_everyone()
        if config.save_steps and done % config.save_steps == 0 and done < total_steps:
            save_checkpoint(run, done, agent, optimizer, scheduler, _state(reward_stats), config.save_total_limit)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(reward=f"{metrics['reward']:.3f}", len=f"{metrics['completions/mean_length']:.1f}")
    if progress is not None:
        progress.close()

    # --- finish ---------------------------------------------------------------------------------------
    save_checkpoint(run, total_steps, agent, optimizer, scheduler, _state(reward_stats), config.save_total_limit)
    if run.is_main:
        export_causal_lm(unwrapped.policy, tokenizer, run.dir / "model", config.export)
        run.print(f"grpo: policy written to {run.dir / 'model'}")
    run.accelerator.wait_for_everyone()
    run.end()
    return {k: float(v) for k, v in metrics.items()}


def _state(reward_stats: RunningRewardStats) -> dict:
    return {"reward_stats": reward_stats.state()}


def _chunks(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def _group_std(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Each completion's group std (NaN-aware, unbiased), for frac_reward_zero_std; 0 for groups of one."""
    if num_generations < 2:
        return torch.zeros_like(rewards)
    grouped = rewards.view(-1, num_generations)
    return nan_std(grouped, dim=1, keepdim=True).expand_as(grouped).reshape(-1)

