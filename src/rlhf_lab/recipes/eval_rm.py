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

from rlhf_lab.config import DataArgs, arg, config_to_yaml, require, require_seed, torch_dtype
from rlhf_lab.data import load_pairs
from rlhf_lab.eval.findings import Finding, write_findings
from rlhf_lab.eval.rm_metrics import bins_words, length_gap_words, pair_metrics
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
    reward_batch_size: int = arg(16, "texts per forward pass", old_names=("batch_size",))
    dtype: str = arg("float32", "weights dtype", ("float32", "bfloat16", "float16"))
    seed: int = arg(0, "seed of the length-balanced subset")

    def validate(self) -> None:
        require(bool(self.model_name), "model_name", "give at least one reward model")
        require(self.reward_batch_size >= 1, "reward_batch_size", "must be at least 1")
        require(self.uwo_weight >= 0, "uwo_weight", "must be >= 0")
        self.validate_data()
        require_seed(self.seed, "seed")


def run(config: EvalRMConfig) -> dict:
    out = Path(config.output_dir)
    claim_run_dir(out)  # one writer per run directory (exit 2 naming the holder)
    atomic_write_text(out / "config.yaml", config_to_yaml(config))
    pairs, reports = load_pairs(config.dataset, data_format=config.data_format, split=config.split,
                                limit=config.limit, on_bad_row=config.on_bad_row)
    for report in reports:
        print(report.summary(), flush=True)
    scorer = RewardScorer([n.strip() for n in config.model_name.split(",") if n.strip()],
                          torch_dtype(config.dtype), config.reward_batch_size)
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
