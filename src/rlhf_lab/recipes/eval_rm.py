"""Evaluate reward models on preference pairs (`rlhf-lab eval-rm`): accuracy, and how much of it is length.

    scores  = every member on chosen and rejected (ensembles also combined with --objective)
    metrics = accuracy; accuracy on the length-balanced subset; how often humans and the RM prefer the longer
              reply; length–reward Pearson (per prompt, averaged; and global); reward mean / std

One JSON line is printed (the combined model for an ensemble) and everything is written to
``OUT/eval_rm.json``; every pair's scores go to ``OUT/pair_scores.jsonl`` (one row per pair, in data order: the
replies' token lengths and each reward model's score of each reply), so any two models scored together can be
compared pair by pair afterwards. With several reward models named (``--model_name plain,debiased``) each one after the first
is also compared with the first on the same pairs, pair by pair (``eval.length.compare_reward_models``: its
longer-preferred rate and its accuracy, paired differences with CIs), and each comparison is a finding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rlhf_lab.config import DataArgs, arg, config_to_yaml, require, require_seed, torch_dtype
from rlhf_lab.data import load_pairs
from rlhf_lab.eval.findings import Finding, write_findings
from rlhf_lab.eval.length import compare_reward_models
from rlhf_lab.eval.paired import interval_words
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
    reward_batch_size: int = arg(16, "texts per forward pass")
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
                                limit=config.limit, bottom=config.bottom, top=config.top,
                                on_bad_row=config.on_bad_row)
    for report in reports:
        print(report.summary(), flush=True)
    names = [n.strip() for n in config.model_name.split(",") if n.strip()]
    scorer = RewardScorer(names, torch_dtype(config.dtype), config.reward_batch_size)
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
    comparing = len(names) > 1  # several reward models named: each is compared with the first
    if comparing:
        result["comparisons"] = [
            {"a": scorer.names[m], "b": scorer.names[0],
             **compare_reward_models(len_c, len_r, (chosen[m], rejected[m]), (chosen[0], rejected[0]),
                                     seed=config.seed)}
            for m in range(1, len(scorer.names))]
    atomic_write_text(out / "eval_rm.json", json.dumps(result, indent=2))
    atomic_write_text(out / "pair_scores.jsonl", "".join(
        json.dumps({"pair": i, "len_chosen": len_c[i], "len_rejected": len_r[i],
                    "r_chosen": {name: float(chosen[m, i]) for m, name in enumerate(scorer.names)},
                    "r_rejected": {name: float(rejected[m, i]) for m, name in enumerate(scorer.names)}}) + "\n"
        for i in range(len(pairs))))
    print(json.dumps({"model": config.model_name, "pairs": len(pairs), **headline}), flush=True)
    print(f"eval-rm: {length_gap_words(headline)}", flush=True)
    print(f"eval-rm: accuracy by len(chosen) − len(rejected) in tokens: {bins_words(headline)}", flush=True)
    findings = []
    # findings name a reward model by its directory's name when those are distinct (plain, balance_len, …)
    short = {n: Path(n).name for n in scorer.names}
    if len(set(short.values())) < len(short) or not all(short.values()):
        short = {n: n for n in scorer.names}
    judged = {short[name]: result["members"][name] for name in scorer.names} if comparing else {"": headline}
    for name, metrics in judged.items():
        if metrics.get("longer_preferred_gap") is None:
            continue
        findings.append(Finding(
            key="eval-rm/longer_preferred_gap" + (f"/{name}" if name else ""),
            claim=f"the reward model{f' {name}' if name else ''} prefers the longer reply more often than the "
                  "human labels do",
            effect="RM longer-preferred rate − humans'", estimate=metrics["longer_preferred_gap"],
            se=metrics["longer_preferred_gap_se"], ci_low=metrics["longer_preferred_gap_ci_low"],
            ci_high=metrics["longer_preferred_gap_ci_high"], n_prompts=metrics["longer_preferred_gap_pairs"],
            shown=bool(metrics["longer_preferred_gap_shown"] and metrics["longer_preferred_gap"] > 0),
            design="paired over the pairs of different lengths (each pair judged by the RM and by its label); "
                   "the prompts column counts pairs"))
    for row in result.get("comparisons", []):
        longer, accuracy = row["longer_preferred"], row["accuracy"]
        print(f"eval-rm: {row['a']} − {row['b']}: longer-preferred rate {interval_words(longer)}; accuracy "
              f"{interval_words(accuracy)}", flush=True)
        if longer["diff"] is None:
            continue
        a, b = short[row["a"]], short[row["b"]]
        findings.append(Finding(
            key=f"eval-rm/less_length_preference/{a}", claim=f"{a} prefers the longer reply less often than {b}",
            effect=f"longer-preferred rate, {a} − {b}", estimate=longer["diff"], se=longer["se"],
            ci_low=longer["ci_low"], ci_high=longer["ci_high"], n_prompts=longer["n_prompts"],
            shown=bool(longer["shown"] and longer["diff"] < 0), confidence=longer["confidence"],
            design=f"paired over the {longer['n_prompts']} pairs of different lengths (the prompts column counts "
                   f"pairs); accuracy difference {interval_words(accuracy)}"))
    if findings:
        write_findings(out, findings)
    return result
