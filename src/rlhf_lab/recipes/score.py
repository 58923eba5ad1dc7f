"""Score generations with reward models (`rlhf-lab score`, Singhal et al. 2023's rmsco_outs).

    rows    = generations.jsonl (from `rlhf-lab generate`): a prompt and its responses per row
    scores  = every member of every --model_name, batched by length (shared-trunk ensembles: one trunk pass)
    output  = the rows plus {"scores": {model: [one per response]}, "score_stats": {model: {mean, std}}}
              and, with --objective, the ensemble's combined score under "scores"["ensemble_<objective>"]

The output is what `rlhf-lab bon` reads (proxy and gold chosen by name).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rlhf_lab.config import arg, config_to_yaml, require, torch_dtype
from rlhf_lab.data.generations import read_generations
from rlhf_lab.io import atomic_write_text, write_jsonl
from rlhf_lab.rewards.scorer import RewardScorer
from rlhf_lab.rundir import claim_run_dir


@dataclass
class ScoreConfig:
    model_name: str = arg("", "reward model dir(s), comma-separated; a train-rm output dir scores all its members")
    input: str = arg("", "generations.jsonl from `rlhf-lab generate` (rows with prompt/messages and responses)")
    output_dir: str = arg("runs/score", "where scored.jsonl goes")
    objective: str | None = arg(None, "also add the ensemble's combined score", ("mean", "WCO", "UWO"))
    uwo_weight: float = arg(0.5, "λ of the UWO objective: mean − λ·variance")
    ensemble_ddof: int = arg(0, "ddof of the variance across members: 0 = population, as the best-of-n of Coste et "
                             "al. 2023 that scored files feed (np.var); 1 = unbiased, as their PPO")
    reward_batch_size: int = arg(16, "texts per forward pass")
    dtype: str = arg("float32", "weights dtype", ("float32", "bfloat16", "float16"))
    allow_pickle: bool = arg(False, "allow loading weights from pickle (.bin) files")

    def validate(self) -> None:
        require(bool(self.model_name), "model_name", "give at least one reward model")
        require(bool(self.input), "input", "give the generations file to score")
        require(self.reward_batch_size >= 1, "reward_batch_size", "must be at least 1")
        require(self.uwo_weight >= 0, "uwo_weight", "must be >= 0")
        require(self.ensemble_ddof in (0, 1), "ensemble_ddof", "must be 0 or 1")


def run(config: ScoreConfig) -> Path:
    from rlhf_lab.rewards.ensemble import combine_scores

    out = Path(config.output_dir)
    claim_run_dir(out)  # one writer per run directory (exit 2 naming the holder)
    atomic_write_text(out / "config.yaml", config_to_yaml(config))
    rows = read_generations(config.input)
    scorer = RewardScorer([n.strip() for n in config.model_name.split(",") if n.strip()],
                          torch_dtype(config.dtype), config.reward_batch_size, config.allow_pickle)
    prompts = [row["messages"] for row in rows for _ in row["responses"]]
    responses = [r for row in rows for r in row["responses"]]
    start = time.perf_counter()
    scores = scorer.score(prompts, responses)  # (k, total responses)
    seconds = time.perf_counter() - start
    combined = (combine_scores(scores, config.objective, config.uwo_weight, config.ensemble_ddof)
                if config.objective else None)
    position = 0
    for row in rows:
        n = len(row["responses"])
        row["scores"] = {name: scores[m, position:position + n].tolist() for m, name in enumerate(scorer.names)}
        if combined is not None:
            row["scores"][f"ensemble_{config.objective}"] = combined[position:position + n].tolist()
        row["score_stats"] = {m.name: {"mean": m.reward_mean, "std": m.reward_std} for m in scorer.members
                              if m.reward_mean is not None}
        position += n
    write_jsonl(out / "scored.jsonl", rows)
    print(f"score: {len(responses)} responses × {len(scorer.members)} reward model(s) in {seconds:.1f}s "
          f"-> {out / 'scored.jsonl'}", flush=True)
    return out / "scored.jsonl"
