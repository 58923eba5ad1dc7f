"""PPO for RLHF with reward-model ensembles and length shaping (Ziegler et al. 2019, Stiennon et al. 2020,
Ouyang et al. 2022; ensembles: Coste et al. 2023; length shaping: Singhal et al. 2023).

    π = the policy (LoRA on the model by default), π_ref = the same model with the adapter disabled,
    V = a linear value head on the policy's last hidden state
    for step in steps:
        prompts   = the step's prompts (fixed order per (seed, epoch): the position in the data is the step)
        y ~ π(·|x)                                   rollouts, pure sampling, stop at EOS or max_new_tokens
        score     = reward model(s) combined (mean | WCO | UWO), or 1 − |L/N − 1| (--reward len_only)
                    − reward_baseline, then --len_penalty, --scale_reward, missing_eos_penalty, clip ±cliprange_reward
        logπ_old, V_old, logπ_ref                     one no-grad pass each over the rollout batch
        r_t       = −β·KL_t (every response token) + score (on the last real response token)
        A, R      = GAE(r, V_old; γ, λ); A whitened over the batch
        for ppo_epoch in ppo_epochs, for each of num_mini_batches shuffled mini-batches (micro-batches accumulate):
            L = clipped surrogate(logπ/logπ_old, A; ε) + vf_coef · clipped value loss(V, V_old, R; ε_v)
            AdamW step (gradient clipping)
        β ← adaptive KL controller (target, horizon), or fixed
        every eval_interval steps: sample the fixed eval prompts (temperature 0.7, top_p 0.9), write
        eval/eval-{step}.jsonl (proxy scores, ensemble variance, KL k1/k2, length, ...) and eval/ metrics

Batch sizes follow TRL: one step's global rollout batch = per_device_train_batch_size × gradient_accumulation_steps
× num_mini_batches × processes; a mini-batch (one optimizer step) = per_device_train_batch_size ×
gradient_accumulation_steps × processes.

Details worth naming:
* Dropout is off everywhere (the model stays in eval mode, as TRL does), so logπ_old equals logπ at the start of
  the first PPO epoch and the ratio is exactly 1 before any update.
* Rollout rows are a left-padded prompt followed by a right-padded response, with explicit position ids (what
  generation used), so the response tokens of every row sit in the same columns.
* Log-probs are taken at the rollout temperature (logits / T) for π and π_ref alike.
* Whitening statistics and the KL controller use the global batch (all processes); the reward statistics of
  --scale_reward / --len_penalty too.
* The training KL (objective/kl) is the k1 sequence estimate Σ_t (logπ − logπ_ref) over response tokens of the
  rollouts. The reward penalty uses --kl_estimator (k1 default, as trlx / TRL); the adaptive controller uses k3
  (as Coste et al. 2023's trlx PPO), which is unbiased and never negative.
* A checkpoint holds the LoRA / full weights, the value head, AdamW and the schedule, β, the running reward
  statistics and the RNG; prompts, rollout seeds and mini-batch shuffles are functions of (seed, step), so a resumed
  run takes exactly the steps of an uninterrupted one.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from rlhf_lab.config import DataArgs, LoraArgs, ModelArgs, RewardArgs, arg, require, torch_dtype
from rlhf_lab.data import load_prompts
from rlhf_lab.data.records import Prompt
from rlhf_lab.engine import (
    Run,
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
from rlhf_lab.generation import DecodingConfig, generate
from rlhf_lab.losses import (
    adaptive_kl_coef,
    gae_advantages,
    kl_penalty_per_token,
    masked_whiten,
    ppo_policy_loss,
    ppo_token_rewards,
    ppo_value_loss,
    sequence_kl,
    token_logprobs,
)
from rlhf_lab.models import load_causal_lm, load_tokenizer
from rlhf_lab.models.bounds import check_bounds
from rlhf_lab.models.checkpointing import checkpointed_layers_training, enable_gradient_checkpointing
from rlhf_lab.models.policy import export_causal_lm, make_trainable
from rlhf_lab.models.rollout import (
    causal_lm,
    micro_batch,
    pad_columns,
    reference_logits,
    rollout_queries,
    rollout_tensors,
    row_chunks,
)
from rlhf_lab.rewards.ensemble import ensemble_variance, objective_name
from rlhf_lab.rewards.online import RewardShaping, SequenceReward, omit_long
from rlhf_lab.rewards.shaping import RunningRewardStats


@dataclass
class PPOConfig(ModelArgs, DataArgs, LoraArgs, RewardArgs, TrainArgs, PolicyEvalArgs):
    # --- reward ---
    reward: str = arg("rm", "sequence reward: the reward model(s), or the length-only reward 1 − |L/N − 1|",
                      ("rm", "len_only"))
    # reward_models, objective, ensemble_ddof, reward_batch_size: RewardArgs
    uwo_weight: float = arg(0.1, "λ of UWO: mean − λ·variance across members; 0.1 here, as Coste et al. 2023's "
                            "PPO config (0.5 in raft, evaluate, pareto)")
    len_only: int = arg(0, "N of --reward len_only: r = 1 − |L/N − 1|, L = response tokens (EOS not counted)")
    reward_baseline: float = arg(0.0, "subtracted from every sequence reward (Singhal et al. 2023's reward_baseline)")
    len_penalty: bool = arg(False, "r ← r + 2σ(1 − 0.01·L), σ = running reward stdev (Singhal et al. 2023)")
    scale_reward: bool = arg(False, "r ← clip((r − μ)/σ, ±0.3), μ, σ over the last 10 batches (Singhal et al. 2023)")
    omit_long: bool = arg(False, "a response that hit max_new_tokens is replaced by a random finished one of the "
                                 "batch (prompt and response; Singhal et al. 2023)")
    missing_eos_penalty: float | None = arg(None, "subtracted from the score of a response without EOS (TRL)")
    cliprange_reward: float = arg(10.0, "scores are clipped to [−c, c] (trlx: 10; 0 = no clipping)")
    gold_model_name: str | None = arg(None, "score eval generations with this gold RM during training too "
                                            "(else later: rlhf-lab gold-eval RUN_DIR)")
    # --- policy and value ---
    trainable: str = arg("lora", "what trains: a LoRA adapter (reference = adapter disabled) or every weight "
                                 "(reference = a frozen copy)", ("lora", "full"))
    critic: str = arg("policy", "value function: a linear head on the policy trunk (policy), or a separate critic "
                                "initialised from the first reward model (rm; trained as --trainable says)",
                      ("policy", "rm"))
    learning_rate: float = arg(1.41e-5, "peak learning rate of AdamW (Singhal et al. 2023's LoRA PPO)")
    export: str = arg("merged", "final policy: LoRA merged into full weights, or the adapter alone",
                      ("merged", "adapter"))
    # --- rollouts ---
    num_mini_batches: int = arg(1, "mini-batches (optimizer steps) per PPO epoch")
    max_prompt_length: int = arg(256, "prompts longer than this (in tokens, templated) are left out")
    max_new_tokens: int = arg(48, "rollout response length limit")
    temperature: float = arg(1.0, "rollout sampling temperature (log-probs use the same)")
    # --- PPO ---
    ppo_epochs: int = arg(4, "passes over each rollout batch")
    cliprange: float = arg(0.2, "ε of the clipped surrogate")
    cliprange_value: float = arg(0.2, "ε_v of the clipped value loss")
    vf_coef: float = arg(0.1, "weight of the value loss")
    gamma: float = arg(1.0, "discount γ of GAE")
    lam: float = arg(0.95, "λ of GAE")
    whiten_rewards: bool = arg(False, "whiten the per-token rewards (mean kept) before GAE")
    init_kl_coef: float = arg(0.1, "initial KL coefficient β (Coste et al. 2023's trlx config: 0.1)")
    adap_kl_ctrl: bool = arg(True, "adapt β towards --target (Ziegler et al.); false = fixed β")
    target: float = arg(6.0, "target sequence KL of the adaptive controller")
    horizon: int = arg(10000, "horizon of the adaptive controller")
    kl_estimator: str = arg("k1", "per-token KL in the reward penalty", ("k1", "k2", "k3"))

    def validate(self) -> None:
        self.validate_training()
        self.objective = objective_name(self.objective)
        if self.reward == "rm":
            require(bool(self.reward_models), "reward_models", "give a reward model (or --reward len_only)")
        else:
            require(self.len_only >= 1, "len_only", "--reward len_only needs a target length N >= 1")
        self.validate_reward()
        require(self.len_only >= 0, "len_only", "must be >= 0")
        require(self.cliprange_reward >= 0, "cliprange_reward", "must be >= 0")
        require(self.missing_eos_penalty is None or self.missing_eos_penalty >= 0, "missing_eos_penalty",
                "must be >= 0")
        require(self.num_mini_batches >= 1, "num_mini_batches", "must be at least 1")
        require(self.ppo_epochs >= 1, "ppo_epochs", "must be at least 1")
        require(self.max_new_tokens >= 1, "max_new_tokens", "must be at least 1")
        require(self.max_prompt_length >= 1, "max_prompt_length", "must be at least 1")
        require(self.temperature > 0, "temperature", "must be positive")
        require(self.cliprange > 0, "cliprange", "must be positive")
        require(self.cliprange_value > 0, "cliprange_value", "must be positive")
        require(self.vf_coef >= 0, "vf_coef", "must be >= 0")
        require(0 < self.gamma <= 1, "gamma", "must be in (0, 1]")
        require(0 <= self.lam <= 1, "lam", "must be in [0, 1]")
        require(self.init_kl_coef >= 0, "init_kl_coef", "must be >= 0")
        require(self.target > 0, "target", "must be positive")
        require(self.horizon >= 1, "horizon", "must be at least 1")
        self.validate_policy_eval()
        self.validate_lora()
        self.validate_data()


# ---------------------------------------------------------------------------------------------------------
# Policy + value head
# ---------------------------------------------------------------------------------------------------------


class PolicyAndValue(nn.Module):
    """The policy LM and its value function, one module (so DDP, the optimizer and checkpoints see both).

    Default: a value head V(s_t) = w·h_t + b on the policy trunk's last hidden state (one trunk pass for logits
    and values); the head starts at zero (V ≡ 0), so the first value loss moves only the head. With a ``critic``
    (``--critic rm``: a reward model, num_labels=1) V(s_t) is its score head on its own last hidden state at t,
    as TRL's value model initialised from the RM.

    ``forward`` returns, for the columns ``start .. T−2`` (the positions that predict response tokens), the
    LM logits and the values (``None`` with ``with_values=False``).
    """

    def __init__(self, policy: nn.Module, critic: nn.Module | None = None) -> None:
        super().__init__()
        self.policy = policy
        self.critic = critic
        if critic is None:
            hidden = self.causal_lm().config.hidden_size
            self.v_head = nn.Linear(hidden, 1)
            nn.init.zeros_(self.v_head.weight)
            nn.init.zeros_(self.v_head.bias)

    def causal_lm(self) -> nn.Module:
        return causal_lm(self.policy)

    def value_state(self) -> dict[str, torch.Tensor]:
        """The value function's weights to export: the head, or the critic's trainable weights."""
        if self.critic is None:
            return dict(self.v_head.state_dict())
        return {n: p for n, p in self.critic.named_parameters() if p.requires_grad}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                start: int, with_values: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        lm = self.causal_lm()
        hidden = lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                  use_cache=False).last_hidden_state[:, start:-1]
        logits = lm.get_output_embeddings()(hidden)
        if not with_values:
            return logits, None
        if self.critic is None:
            return logits, self.v_head(hidden.to(self.v_head.weight.dtype)).squeeze(-1)
        rm = self.critic.get_base_model() if hasattr(self.critic, "get_base_model") else self.critic
        critic_hidden = getattr(rm, rm.base_model_prefix)(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            use_cache=False).last_hidden_state[:, start:-1]
        return logits, rm.score(critic_hidden).squeeze(-1).float()


def load_critic(config: PPOConfig) -> nn.Module:
    """--critic rm: the first reward model (member) as the value model, trained like the policy (LoRA + its
    score head, or every weight)."""
    from transformers import AutoModelForSequenceClassification

    from rlhf_lab.rewards.model import reward_model_dirs

    if not config.reward_models:
        raise UserError("--critic rm: needs --reward_models (the critic starts from the first reward model)")
    path = reward_model_dirs(config.reward_models[0])[0]
    critic = AutoModelForSequenceClassification.from_pretrained(
        path, dtype=torch_dtype(config.dtype), use_safetensors=not config.allow_pickle, local_files_only=True)
    return make_trainable(critic, config.trainable, config, task_type="SEQ_CLS", modules_to_save=["score"])


# ---------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------


def run(config: PPOConfig) -> dict[str, float]:
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
    run.print(f"ppo: {len(prompts)} training prompts ({len(train_prompts) - len(prompts)} longer than "
              f"{config.max_prompt_length} tokens left out), {len(eval_prompts)} eval prompts")

    # --- reward, policy, value, reference -------------------------------------------------------------
    reward = SequenceReward(config.reward_models, objective=config.objective, uwo_weight=config.uwo_weight,
                            ensemble_ddof=config.ensemble_ddof,
                            len_only=config.len_only if config.reward == "len_only" else 0,
                            baseline=config.reward_baseline, batch_size=config.reward_batch_size,
                            allow_pickle=config.allow_pickle)
    shaping = RewardShaping(len_penalty=config.len_penalty, scale_reward=config.scale_reward,
                            missing_eos_penalty=config.missing_eos_penalty, cliprange_reward=config.cliprange_reward)
    uwo = config.reward == "rm" and config.objective == "UWO" and config.uwo_weight > 0
    if uwo and reward.num_members <= config.ensemble_ddof:
        raise UserError(f"--objective UWO: the variance of {reward.num_members} reward-model member(s) with "
                        f"--ensemble_ddof {config.ensemble_ddof} is undefined; give an ensemble or use mean")
    gold = None
    if config.gold_model_name:
        from rlhf_lab.rewards.scorer import RewardScorer

        gold = RewardScorer([config.gold_model_name], batch_size=config.reward_batch_size, allow_pickle=config.allow_pickle)
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
    critic = None
    if config.critic == "rm":
        critic = load_critic(config)
    agent = PolicyAndValue(make_trainable(model, config.trainable, config), critic)
    if config.gradient_checkpointing:  # the policy and, with --critic rm, the critic
        enable_gradient_checkpointing(agent)
    agent.eval()  # no dropout: the old and new log-probs agree until the weights move

    world = run.world_size
    per_minibatch = config.per_device_train_batch_size * config.gradient_accumulation_steps
    local_batch = per_minibatch * config.num_mini_batches
    global_batch = local_batch * world
    total_steps = total_training_steps(len(prompts), global_batch, config.num_train_epochs, config.max_steps)
    optimizer = make_optimizer(agent, config)
    scheduler = make_scheduler(optimizer, config.lr_scheduler_type, config.warmup_steps, total_steps)
    agent, optimizer = run.accelerator.prepare(agent, optimizer)
    unwrapped: PolicyAndValue = run.accelerator.unwrap_model(agent)

    kl_coef = config.init_kl_coef
    reward_stats = RunningRewardStats(window=10)
    start_step = 0
    if config.resume and (checkpoint := resume_checkpoint(run)) is not None:
        state, _ = load_checkpoint(run, checkpoint, agent, optimizer, scheduler)
        start_step, kl_coef = state["step"], state["kl_coef"]
        reward_stats = RunningRewardStats(10, **state["reward_stats"])
        run.print(f"ppo: resumed from {checkpoint} at step {start_step}")

    rollout_decoding = DecodingConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature)
    eval_decoding = config.eval_decoding(config.max_new_tokens)

    def evaluate(step: int) -> dict[str, float]:
        if not eval_prompts or not run.is_main:
            return {}
        return evaluate_policy(unwrapped.policy, ref_model, tokenizer, eval_prompts, eval_ids, eval_decoding,
                               reward, gold, run.dir / "eval" / f"eval-{step}.jsonl", step, pad_id,
                               seed=config.seed + 7919, batch_size=config.per_device_train_batch_size,
                               ensemble_ddof=config.ensemble_ddof, samples_per_prompt=config.eval_samples_per_prompt)

    if start_step == 0 and (eval_metrics := evaluate(0)):
        run.log(eval_metrics, 0)
    run.accelerator.wait_for_everyone()

    # --- train ----------------------------------------------------------------------------------------
    progress = progress_bar(run, config.progress, total_steps, start_step, "ppo")
    throughput = Throughput()
    metrics: dict[str, float] = {}
    for step, _epoch, indices in global_batches(len(prompts), global_batch, config.seed, start_step, total_steps):
        done = step + 1
        timing = dict.fromkeys(("generate", "score", "rollout_forward", "train_forward", "backward", "optimizer"), 0.0)
        step_start = time.perf_counter()

        # 1. rollouts y ~ π(·|x)
        local = split_for_process(indices, world, run.rank, 1)[0]
        tic = time.perf_counter()
        gens = [g[0] for g in generate(unwrapped.policy, tokenizer, [query_ids[i] for i in local],
                                       decoding=rollout_decoding, batch_size=len(local),
                                       seed=stream_seed(config.seed, step, run.rank), progress=False)]
        timing["generate"] = time.perf_counter() - tic
        if config.omit_long:
            local, gens = omit_long(local, gens, stream_seed(config.seed, step, run.rank, 1))
        batch_prompts = [prompts[i] for i in local]
        lengths = torch.tensor([g.num_tokens - int(g.finished) for g in gens])
        finished = torch.tensor([g.finished for g in gens])

        # 2. sequence scores and shaping
        tic = time.perf_counter()
        members = reward.member_scores(batch_prompts, [g.text for g in gens])
        raw = reward.raw(members, lengths)
        all_raw = run.accelerator.gather(raw)
        check_finite(all_raw, done, f"the reward ({reward.source})", run.checkpoints)
        mu, sigma = reward_stats.update(all_raw)
        scores = shaping.apply(raw, lengths, finished, mu, sigma)
        scores = scores.float()
        timing["score"] = time.perf_counter() - tic

        # 3. logπ_old, V_old, logπ_ref: one no-grad pass each, in micro-batches
        tic = time.perf_counter()
        rollout = rollout_tensors([query_ids[i] for i in local], [g.token_ids for g in gens], pad_id)
        mask = rollout["response_mask"]
        width = mask.size(1)
        old_logprobs, old_values, ref_logprobs = (torch.zeros_like(mask) for _ in range(3))
        # Rows of similar prompt length share a chunk: micro_batch trims the left padding to the chunk's
        # longest prompt, so this cuts padded columns (π and π_ref still see the same chunk: KL is exact).
        by_length = sorted(range(len(local)), key=lambda i: len(query_ids[local[i]]))
        with torch.no_grad():
            for chunk in row_chunks(len(local), config.per_device_train_batch_size):
                rows = [by_length[i] for i in chunk]
                mb = micro_batch(rollout, rows)
                logits, values = unwrapped(mb["input_ids"], mb["attention_mask"], mb["position_ids"], mb["start"])
                old_logprobs[rows] = pad_columns(token_logprobs(logits / config.temperature, mb["responses"]), width)
                old_values[rows] = pad_columns(values.float(), width)
                ref = reference_logits(unwrapped.policy, ref_model, mb)
                ref_logprobs[rows] = pad_columns(token_logprobs(ref / config.temperature, mb["responses"]), width)
        old_logprobs, ref_logprobs, old_values = old_logprobs * mask, ref_logprobs * mask, old_values * mask
        timing["rollout_forward"] = time.perf_counter() - tic

        # 4. per-token rewards, GAE, whitened advantages
        kl = kl_penalty_per_token(old_logprobs, ref_logprobs, config.kl_estimator) * mask
        rewards, non_score = ppo_token_rewards(kl, scores, mask, kl_coef)
        if config.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False, **global_moments(run, rewards, mask))
        advantages, returns = gae_advantages(rewards, old_values, mask, config.gamma, config.lam)
        advantages = masked_whiten(advantages, mask, **global_moments(run, advantages, mask))

        # 5. PPO epochs over shuffled mini-batches
        stats = {k: [] for k in ("pg_loss", "vf_loss", "pg_clipfrac", "vf_clipfrac", "approxkl", "ratio")}
        # --gradient_checkpointing: the layers checkpoint only in training mode; the agent stays in eval mode
        with checkpointed_layers_training(unwrapped):
            for ppo_epoch in range(config.ppo_epochs):
                order = torch.randperm(len(local), generator=torch.Generator().manual_seed(
                    stream_seed(config.seed, step, run.rank, 2, ppo_epoch)))
                for mini in range(config.num_mini_batches):
                    mini_rows = order[mini * per_minibatch:(mini + 1) * per_minibatch]
                    micro_rows = list(torch.split(mini_rows, config.per_device_train_batch_size))
                    for k, rows in enumerate(micro_rows):
                        mb = micro_batch(rollout, rows)
                        cols = mb["response_mask"].size(1)
                        m = mb["response_mask"]
                        sync = k == len(micro_rows) - 1
                        with run.accelerator.autocast(), (nullcontext() if sync else run.accelerator.no_sync(agent)):
                            tic = time.perf_counter()
                            logits, values = agent(mb["input_ids"], mb["attention_mask"], mb["position_ids"], mb["start"])
                            logprobs = token_logprobs(logits / config.temperature, mb["responses"])
                            pg_loss, pg_stats = ppo_policy_loss(logprobs, old_logprobs[rows, :cols],
                                                                advantages[rows, :cols], m, config.cliprange)
                            vf_loss, vf_clipfrac = ppo_value_loss(values.float(), old_values[rows, :cols],
                                                                  returns[rows, :cols], m, config.cliprange_value)
                            loss = (pg_loss + config.vf_coef * vf_loss) / len(micro_rows)
                            check_finite(loss, done, "the PPO loss", run.checkpoints)
                            timing["train_forward"] += time.perf_counter() - tic
                            tic = time.perf_counter()
                            run.accelerator.backward(loss)
                            timing["backward"] += time.perf_counter() - tic
                        stats["pg_loss"].append(float(pg_loss.detach()))
                        stats["vf_loss"].append(float(vf_loss.detach()))
                        stats["pg_clipfrac"].append(float(pg_stats["clipfrac"]))
                        stats["vf_clipfrac"].append(float(vf_clipfrac))
                        stats["approxkl"].append(float(pg_stats["approxkl"]))
                        stats["ratio"].append(float(pg_stats["ratio"]))
                    tic = time.perf_counter()
                    if config.max_grad_norm > 0:
                        run.accelerator.clip_grad_norm_(agent.parameters(), config.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    timing["optimizer"] += time.perf_counter() - tic
        scheduler.step()

        # 6. KL controller (global batch), metrics
        seq_kl = sequence_kl(old_logprobs, ref_logprobs, mask)
        g = {name: run.accelerator.gather(v) for name, v in {
            "kl": seq_kl["k1"], "kl_k2": seq_kl["k2"], "kl_k3": seq_kl["k3"], "scores": raw + config.reward_baseline,
            "shaped": scores.double(), "non_score": non_score.sum(1), "entropy": (-old_logprobs).sum(1),
            "length": lengths.double(), "eos": finished.double()}.items()}
        used_kl_coef = kl_coef
        if config.adap_kl_ctrl:
            kl_coef = adaptive_kl_coef(kl_coef, float(g["kl_k3"].mean()), config.target, config.horizon,
                                       global_batch)
        local_stats = torch.tensor([float(np.mean(v)) for v in stats.values()])
        mean_stats = run.accelerator.reduce(local_stats, reduction="mean")
        tokens = int(run.accelerator.reduce(torch.tensor(float(lengths.sum() + finished.sum())), reduction="sum"))
        throughput.add(tokens)
        metrics = {
            "objective/kl": g["kl"].mean(), "objective/kl_k2": g["kl_k2"].mean(), "objective/kl_k3": g["kl_k3"].mean(),
            "objective/entropy": g["entropy"].mean(), "objective/non_score_reward": g["non_score"].mean(),
            "objective/rlhf_reward": (g["shaped"] + g["non_score"]).mean(), "objective/scores": g["scores"].mean(),
            "objective/scores_shaped": g["shaped"].mean(), "objective/kl_coef": used_kl_coef,
            "objective/response_length": g["length"].mean(),
            "policy/approxkl_avg": mean_stats[4], "policy/clipfrac_avg": mean_stats[2],
            "loss/policy_avg": mean_stats[0], "loss/value_avg": mean_stats[1], "val/clipfrac_avg": mean_stats[3],
            "val/ratio": mean_stats[5], "val/num_eos_tokens": g["eos"].sum(),
            "lr": scheduler.get_last_lr()[0], "episode": done * global_batch,
            "tokens_per_second": throughput.rate(),
            "rollout/tokens": int(run.accelerator.reduce(rollout["attention_mask"].sum(), reduction="sum")),
            **{f"time/{k}": v for k, v in timing.items()}, "time/step": time.perf_counter() - step_start,
        }
        if reward.num_members > 1:
            metrics["objective/ensemble_variance"] = float(
                run.accelerator.gather(ensemble_variance(members, config.ensemble_ddof)).mean())
        if done % config.logging_steps == 0 or done == total_steps:
            run.log(metrics, done)
        if (config.eval_interval and done % config.eval_interval == 0) or done == total_steps:
            if eval_metrics := evaluate(done):
                run.log(eval_metrics, done)
            run.accelerator.wait_for_everyone()
        if config.save_steps and done % config.save_steps == 0 and done < total_steps:
            save_checkpoint(run, done, agent, optimizer, scheduler, _state(kl_coef, reward_stats),
                            config.save_total_limit)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(score=f"{float(metrics['objective/scores']):.3f}",
                                 kl=f"{float(metrics['objective/kl']):.3f}",
                                 len=f"{float(metrics['objective/response_length']):.1f}")
    if progress is not None:
        progress.close()

    # --- finish ---------------------------------------------------------------------------------------
    save_checkpoint(run, total_steps, agent, optimizer, scheduler, _state(kl_coef, reward_stats),
                    config.save_total_limit)
    if run.is_main:
        export_causal_lm(unwrapped.policy, tokenizer, run.dir / "model", config.export)
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in unwrapped.value_state().items()},
                  str(run.dir / ("value_head.safetensors" if critic is None else "critic.safetensors")))
        run.print(f"ppo: policy written to {run.dir / 'model'}")
    run.accelerator.wait_for_everyone()
    run.end()
    return {k: float(v) for k, v in metrics.items()}


def _state(kl_coef: float, reward_stats: RunningRewardStats) -> dict:
    return {"kl_coef": kl_coef, "reward_stats": reward_stats.state()}

