"""Evaluate reward models on preference pairs (`rlhf-lab eval-rm`): accuracy, and how much of it is length.

    scores  = every member on chosen and rejected (ensembles also combined with --objective)
    metrics = accuracy; accuracy on the length-balanced subset; how often humans and the RM prefer the longer
              reply; length–reward Pearson (per prompt, averaged; and global); reward mean / std

One JSON line is printed (the combined model for an ensemble) and everything is written to
``OUT/eval_rm.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf_lab.config import DataArgs, arg, config_to_yaml, require, require_seed, torch_dtype
from rlhf_lab.data import load_pairs
from rlhf_lab.eval.findings import Finding, write_findings
from rlhf_lab.eval.length import (
    accuracy_by_length_difference,
    global_length_reward_corr,
    longer_preferred_gap,
    per_prompt_length_reward_corr,
    preference_length_metrics,
)
from rlhf_lab.io import atomic_write_text
from rlhf_lab.rewards.ensemble import combine_scores
from rlhf_lab.rewards.scorer import RewardScorer
from rlhf_lab.rundir import claim_run_dir


@dataclass
class EvalRMConfig(DataArgs):
    model_name: str = arg("", "reward model dir(s), comma-separated; a train-rm output dir evaluates all members")
    output_dir: str = arg("runs/eval-rm", "where eval_rm.json goes")
    split: str = arg("auto", "fixed-seed split of the data to use; auto = the embedded dataset's eval split, or "
                     "every row of your own file(s)", ("auto", "train", "eval", "all"))
    objective: str = arg("mean", "how an ensemble's members are combined", ("mean", "WCO", "UWO"))
    uwo_weight: float = arg(0.5, "λ of UWO")
    batch_size: int = arg(16, "texts per forward pass")
    dtype: str = arg("float32", "weights dtype", ("float32", "bfloat16", "float16"))
    seed: int = arg(0, "seed of the length-balanced subset")

    def validate(self) -> None:
        require(bool(self.model_name), "model_name", "give at least one reward model")
        require(self.batch_size >= 1, "batch_size", "must be at least 1")
        require(self.uwo_weight >= 0, "uwo_weight", "must be >= 0")
        self.validate_data()
        require_seed(self.seed, "seed")


def pair_metrics(r_chosen: torch.Tensor, r_rejected: torch.Tensor, len_chosen: list[int], len_rejected: list[int],
                 seed: int) -> dict[str, float]:
    c, r = r_chosen.tolist(), r_rejected.tolist()
    metrics = preference_length_metrics(c, r, len_chosen, len_rejected, seed)
    lengths = [[lc, lr] for lc, lr in zip(len_chosen, len_rejected, strict=True)]
    rewards = [[a, b] for a, b in zip(c, r, strict=True)]
    metrics["length_reward_corr"] = per_prompt_length_reward_corr(lengths, rewards)
    metrics["length_reward_corr_global"] = global_length_reward_corr(lengths, rewards)
    both = torch.cat([r_chosen, r_rejected])
    metrics["reward_mean"], metrics["reward_std"] = float(both.mean()), float(both.std())
    # the RM's longer-preferred rate minus the humans', paired over pairs, with its CI (Singhal et al. 2023)
    gap = longer_preferred_gap(len_chosen, len_rejected, c, r, seed=seed)
    metrics.update({"longer_preferred_gap": gap["diff"], "longer_preferred_gap_se": gap["se"],
                    "longer_preferred_gap_ci_low": gap["ci_low"], "longer_preferred_gap_ci_high": gap["ci_high"],
                    "longer_preferred_gap_shown": gap["shown"], "longer_preferred_gap_pairs": gap["n_prompts"]})
    for label, (accuracy, count) in accuracy_by_length_difference(c, r, len_chosen, len_rejected).items():
        metrics[f"accuracy_by_length_diff/{label}"] = accuracy
        metrics[f"pairs_by_length_diff/{label}"] = count
    return metrics


def length_gap_words(metrics: dict) -> str:
    """``RM − humans longer-preferred +0.150 (95% CI [+0.080, +0.220], 300 pairs): shown``."""
    if metrics.get("longer_preferred_gap_se") is None:
        return "RM − humans longer-preferred rate: too few pairs of different lengths for a CI"
    return (f"RM − humans longer-preferred rate {metrics['longer_preferred_gap']:+.3f} (95% CI "
            f"[{metrics['longer_preferred_gap_ci_low']:+.3f}, {metrics['longer_preferred_gap_ci_high']:+.3f}], "
            f"{metrics['longer_preferred_gap_pairs']} pairs): "
            f"{'shown' if metrics['longer_preferred_gap_shown'] else 'not shown'}")


def bins_words(metrics: dict) -> str:
    """Accuracy per bin of len(chosen) − len(rejected): ``<=-64: 0.41 (n=52), …``."""
    return ", ".join(f"{key.split('/', 1)[1]}: {value:.2f} (n={metrics['pairs_by_length_diff/' + key.split('/', 1)[1]]})"
                     for key, value in metrics.items() if key.startswith("accuracy_by_length_diff/"))


def run(config: EvalRMConfig) -> dict:
    out = Path(config.output_dir)
    claim_run_dir(out)  # one writer per run directory (exit 2 naming the holder)
    atomic_write_text(out / "config.yaml", config_to_yaml(config))
    pairs, reports = load_pairs(config.dataset, data_format=config.data_format, split=config.split,
                                limit=config.limit, on_bad_row=config.on_bad_row)
    for report in reports:
        print(report.summary(), flush=True)
    scorer = RewardScorer([n.strip() for n in config.model_name.split(",") if n.strip()],
                          torch_dtype(config.dtype), config.batch_size)
    prompts = [p.prompt.messages for p in pairs]
    # both replies in one call: a pair's two replies share a row that reads their prompt once
    both = scorer.score(prompts + prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs])
    chosen, rejected = both[:, :len(pairs)], both[:, len(pairs):]

    def reply_tokens(texts: list[str]) -> list[int]:
        return [len(ids) for ids in scorer.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    len_c, len_r = reply_tokens([p.chosen for p in pairs]), reply_tokens([p.rejected for p in pairs])
    result = {"dataset": config.dataset, "pairs": len(pairs), "members": {}}
    for m, name in enumerate(scorer.names):
        result["members"][name] = pair_metrics(chosen[m], rejected[m], len_c, len_r, config.seed)
    if len(scorer.names) > 1:
        combined = [combine_scores(s, config.objective, config.uwo_weight) for s in (chosen, rejected)]
        result["ensemble"] = {"objective": config.objective,
                              **pair_metrics(combined[0], combined[1], len_c, len_r, config.seed)}
        headline = result["ensemble"]
    else:
        headline = result["members"][scorer.names[0]]
    atomic_write_text(out / "eval_rm.json", json.dumps(result, indent=2))
    print(json.dumps({"model": config.model_name, "pairs": len(pairs), **headline}), flush=True)
    print(f"eval-rm: {length_gap_words(headline)}", flush=True)
    print(f"eval-rm: accuracy by len(chosen) − len(rejected) in tokens: {bins_words(headline)}", flush=True)
    if headline.get("longer_preferred_gap") is not None:
        write_findings(out, [Finding(
            key="eval-rm/longer_preferred_gap",
            claim="the reward model prefers the longer reply more often than the human labels do",
            effect="RM longer-preferred rate − humans'", estimate=headline["longer_preferred_gap"],
            se=headline["longer_preferred_gap_se"], ci_low=headline["longer_preferred_gap_ci_low"],
            ci_high=headline["longer_preferred_gap_ci_high"], n_prompts=headline["longer_preferred_gap_pairs"],
            shown=bool(headline["longer_preferred_gap_shown"] and headline["longer_preferred_gap"] > 0),
            design="paired over the pairs of different lengths (each pair judged by the RM and by its label); "
                   "the prompts column counts pairs")])
    return result
