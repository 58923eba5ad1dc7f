"""In-run evaluation of an online-RL policy (PPO, GRPO) on fixed prompts: sample, score, measure KL to π_ref.

    y_i ~ π_T(·|x_i)            one sample per eval prompt, the same seed at every evaluation
    proxy_i, members, var_i     the run's sequence reward (ensemble variance when there are several members)
    gold_i                      an optional gold reward model
    KL_i = Σ_t k(logπ_T, logπ_ref,T)  k1 and k2, with π and π_ref both at the eval temperature T:
                                an estimate of KL(π_T‖π_ref,T) for the decoding that is evaluated

One row per prompt goes to ``eval/eval-{step}.jsonl``; the means are the ``eval/`` metrics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

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


@torch.no_grad()
def evaluate_policy(policy: nn.Module, ref_model: nn.Module | None, tokenizer, prompts: list[Prompt],
                    query_ids: list[list[int]], decoding: DecodingConfig, reward: SequenceReward, gold,
                    out_path: Path, step: int, pad_id: int, *, seed: int, batch_size: int,
                    ensemble_ddof: int = 1) -> dict[str, float]:
    """Sample the eval prompts (``seed`` every time), score them, measure KL to the reference; write the rows.

    ``policy`` is the causal LM (a PEFT model when π_ref is the policy with its adapter disabled, ``ref_model``
    None; else ``ref_model`` is π_ref); ``gold`` a ``RewardScorer`` or None. Generation runs in batches of
    ``2 · batch_size`` prompts, the KL forward passes in batches of ``batch_size``. Returns the eval/ metrics and
    raises ``RunFailure`` when one is not finite.
    """
    gens = [g[0] for g in generate(policy, tokenizer, query_ids, decoding=decoding, seed=seed,
                                   batch_size=max(1, batch_size * 2), progress=False)]
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
        row = {"step": step, "prompt": p.text, "messages": p.messages, "response": g.text,
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
