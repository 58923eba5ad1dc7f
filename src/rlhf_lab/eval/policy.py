"""In-run evaluation of an online-RL policy (PPO, GRPO) on fixed prompts: sample, score, measure KL to π_ref.

    y_ij ~ π_T(·|x_i)           ``samples_per_prompt`` samples j per eval prompt, the same seed at every evaluation
                                (the sampler's draws are seeded per (prompt, sample): evaluations at different
                                steps, and runs that share the seed, answer the same prompts with the same uniforms)
    proxy_i, members, var_i     the run's sequence reward (ensemble variance when there are several members)
    gold_i                      an optional gold reward model
    KL_i = Σ_t k(logπ_T, logπ_ref,T)  k1 and k2, with π and π_ref both at the eval temperature T:
                                an estimate of KL(π_T‖π_ref,T) for the decoding that is evaluated

One row per response (``prompt_index``, ``sample``) goes to ``eval/eval-{step}.jsonl``; the means are the
``eval/`` metrics. Comparisons of runs and steps pair these rows by prompt (``rlhf_lab.eval.runs``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rlhf_lab.config import arg, require
from rlhf_lab.data.records import Prompt
from rlhf_lab.engine import RunFailure
from rlhf_lab.eval.metrics import distinct_n, eos_rate
from rlhf_lab.generation import DecodingConfig, generate
from rlhf_lab.io import write_jsonl
from rlhf_lab.losses import sequence_kl, token_logprobs
from rlhf_lab.models.rollout import (
    micro_batch,
    reference_logits,
    response_logits,
    rollout_tensors,
    row_chunks,
)
from rlhf_lab.rewards.ensemble import ensemble_variance
from rlhf_lab.rewards.online import SequenceReward


@dataclass
class PolicyEvalArgs:
    """The in-run evaluation flags of online RL (ppo, grpo): fixed prompts, answers per prompt, their decoding."""

    eval_interval: int = arg(10, "evaluate every N steps (and always at step 0 and at the end; 0 = only those)")
    eval_dataset: str | None = arg(None, "prompts for evaluation (default: the eval split of --dataset)")
    num_eval_prompts: int = arg(16, "fixed eval prompts (0 = no evaluation)")
    eval_samples_per_prompt: int = arg(1, "answers per eval prompt (more answers: a per-prompt mean with less "
                                       "sampling noise for paired comparisons of steps and runs)")
    eval_max_new_tokens: int | None = arg(None, "eval response length limit (default: --max_new_tokens)")
    eval_temperature: float = arg(0.7, "eval sampling temperature (Coste et al. 2023: 0.7)")
    eval_top_p: float = arg(0.9, "eval nucleus mass (Coste et al. 2023: 0.9)")

    def validate_policy_eval(self) -> None:
        require(self.eval_interval >= 0, "eval_interval", "must be >= 0")
        require(self.num_eval_prompts >= 0, "num_eval_prompts", "must be >= 0")
        require(self.eval_samples_per_prompt >= 1, "eval_samples_per_prompt", "must be at least 1")
        require(self.eval_max_new_tokens is None or self.eval_max_new_tokens >= 1, "eval_max_new_tokens",
                "must be at least 1")
        require(self.eval_temperature > 0, "eval_temperature", "must be positive")
        require(0 < self.eval_top_p <= 1, "eval_top_p", "must be in (0, 1]")

    def eval_decoding(self, max_new_tokens: int) -> DecodingConfig:
        """The eval answers' decoding (``max_new_tokens``: the run's rollout length, unless --eval_max_new_tokens)."""
        return DecodingConfig(max_new_tokens=self.eval_max_new_tokens or max_new_tokens,
                              temperature=self.eval_temperature, top_p=self.eval_top_p)


@torch.no_grad()
def evaluate_policy(policy: nn.Module, ref_model: nn.Module | None, tokenizer, prompts: list[Prompt],
                    query_ids: list[list[int]], decoding: DecodingConfig, reward: SequenceReward, gold,
                    out_path: Path, step: int, pad_id: int, *, seed: int, batch_size: int,
                    ensemble_ddof: int = 1, samples_per_prompt: int = 1) -> dict[str, float]:
    """Sample the eval prompts (``seed`` every time), score them, measure KL to the reference; write the rows.

    ``policy`` is the causal LM (a PEFT model when π_ref is the policy with its adapter disabled, ``ref_model``
    None; else ``ref_model`` is π_ref); ``gold`` a ``RewardScorer`` or None. Generation runs in batches of
    ``2 · batch_size`` prompts, the KL forward passes in batches of ``batch_size``. Returns the eval/ metrics and
    raises ``RunFailure`` when one is not finite.
    """
    outputs = generate(policy, tokenizer, query_ids, samples_per_prompt=samples_per_prompt, decoding=decoding,
                       seed=seed, batch_size=max(1, batch_size * 2), progress=False)
    gens = [g for per_prompt in outputs for g in per_prompt]
    prompt_index = [i for i, per_prompt in enumerate(outputs) for _ in per_prompt]
    sample_index = [j for per_prompt in outputs for j in range(len(per_prompt))]
    prompts = [prompts[i] for i in prompt_index]
    query_ids = [query_ids[i] for i in prompt_index]
    texts = [g.text for g in gens]
    lengths = torch.tensor([g.num_tokens - int(g.finished) for g in gens])
    members = reward.member_scores(prompts, texts)
    proxy = reward.combined(members, lengths)
    variance = ensemble_variance(members, ensemble_ddof) if reward.num_members > 1 else None
    gold_scores = gold.score([p.messages for p in prompts], texts)[0] if gold is not None else None
    kl1, kl2 = torch.zeros(len(gens)), torch.zeros(len(gens))
    for rows in row_chunks(len(gens), max(1, batch_size)):
        rollout = rollout_tensors([query_ids[i] for i in rows], [gens[i].token_ids for i in rows], pad_id)
        mb = micro_batch(rollout, list(range(len(rows))))
        logp = token_logprobs(response_logits(policy, mb) / decoding.temperature, mb["responses"])
        ref_logp = token_logprobs(reference_logits(policy, ref_model, mb) / decoding.temperature, mb["responses"])
        kl = sequence_kl(logp, ref_logp, mb["response_mask"])
        kl1[rows], kl2[rows] = kl["k1"], kl["k2"]
    rows_out = []
    for i, (p, g) in enumerate(zip(prompts, gens, strict=True)):
        row = {"step": step, "prompt_index": prompt_index[i], "sample": sample_index[i], "prompt": p.text,
               "messages": p.messages, "response": g.text,
               "proxy_score": float(proxy[i]), "length": int(lengths[i]), "finished": g.finished,
               "kl_k1": float(kl1[i]), "kl_k2": float(kl2[i])}
        if members is not None:
            row["member_scores"] = [float(s) for s in members[:, i]]
        if variance is not None:
            row["ensemble_variance"] = float(variance[i])
        if gold_scores is not None:
            row["gold_score"] = float(gold_scores[i])
        rows_out.append(row)
    write_jsonl(out_path, rows_out)
    metrics = {"eval/proxy_score": float(proxy.mean()), "eval/kl_k1": float(kl1.mean()),
               "eval/kl_k2": float(kl2.mean()), "eval/length": float(lengths.double().mean()),
               "eval/distinct_1": distinct_n([g.token_ids for g in gens], 1),
               "eval/distinct_2": distinct_n([g.token_ids for g in gens], 2),
               "eval/eos_rate": eos_rate([g.finished for g in gens])}
    if variance is not None:
        metrics["eval/ensemble_variance"] = float(variance.mean())
    if gold_scores is not None:
        metrics["eval/gold_score"] = float(gold_scores.mean())
    if not all(np.isfinite(v) for v in metrics.values()):
        raise RunFailure(f"step {step}: an eval metric is not finite ({metrics})")
    return metrics
