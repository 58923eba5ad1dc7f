"""Gold evaluation of a PPO run after training (Coste et al. 2023's ``run_ppo_gold_eval.py``).

    for every RUN_DIR/eval/eval-{step}.jsonl written by `rlhf-lab ppo`:
        gold = gold reward model(prompt, response)          (an ensemble's members are averaged)
        write RUN_DIR/eval/gold-{step}.jsonl                (the eval rows plus gold_score)
    RUN_DIR/gold_eval.jsonl  one row per step: mean proxy, gold, KL (k1, k2), length
    RUN_DIR/gold_eval.png    proxy and gold vs KL and vs step

Scoring after training keeps a large gold RM out of memory while the policy trains (Coste et al. 2023 score with
AlpacaFarm's 7B reward-model-human this way). KL is the eval files' per-sample estimate (see ``recipes/ppo.py``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from rlhf_lab.config import arg, require
from rlhf_lab.engine import RunFailure
from rlhf_lab.errors import UserError
from rlhf_lab.io import read_jsonl, write_jsonl
from rlhf_lab.rundir import claim_run_dir

_EVAL_FILE = re.compile(r"^eval-(\d+)\.jsonl$")


@dataclass
class GoldEvalConfig:
    run_dir: str = arg("", "a ppo or grpo run directory (its eval/eval-{step}.jsonl files are scored)")
    gold_model_name: str = arg("", "the gold reward model: an RM dir or a train-rm run dir")
    reward_batch_size: int = arg(16, "sequences per gold-RM forward pass")
    kl_estimator: str = arg("k2", "KL on the plots' x axis (k2 as Coste et al. 2023 log it, or k1)", ("k1", "k2"))
    allow_pickle: bool = arg(False, "allow loading weights from pickle (.bin) files")

    def validate(self) -> None:
        require(bool(self.run_dir), "run_dir", "give the ppo run directory")
        require(bool(self.gold_model_name), "gold_model_name", "give the gold reward model")
        require(self.reward_batch_size >= 1, "reward_batch_size", "must be at least 1")


def eval_files(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every eval-{step}.jsonl, by step."""
    folder = run_dir / "eval"
    found = sorted((int(m.group(1)), p) for p in folder.glob("eval-*.jsonl") if (m := _EVAL_FILE.match(p.name))) \
        if folder.is_dir() else []
    if not found:
        raise UserError(f"{folder}: no eval-{{step}}.jsonl files (is {run_dir} a ppo run with --num_eval_prompts > 0?)")
    return found


def run(config: GoldEvalConfig) -> list[dict]:
    from rlhf_lab.rewards.scorer import RewardScorer

    run_dir = Path(config.run_dir)
    files = eval_files(run_dir)
    claim_run_dir(run_dir)
    scorer = RewardScorer([config.gold_model_name], batch_size=config.reward_batch_size, allow_pickle=config.allow_pickle)
    summary = []
    for step, path in files:
        rows = read_jsonl(path)
        for number, row in enumerate(rows, 1):
            if not isinstance(row.get("messages"), list) or not isinstance(row.get("response"), str):
                raise UserError(f"{path}:{number}: an eval row needs 'messages' and 'response'")
        gold = scorer.score([r["messages"] for r in rows], [r["response"] for r in rows]).mean(dim=0)
        if not bool(gold.isfinite().all()):
            raise RunFailure(f"{path}: the gold reward model ({config.gold_model_name}) gave a non-finite score")
        scored = [{**r, "gold_score": float(g), "gold_model": config.gold_model_name}
                  for r, g in zip(rows, gold.tolist(), strict=True)]
        write_jsonl(path.with_name(f"gold-{step}.jsonl"), scored)
        summary.append({"step": step, "proxy_score": _mean(r.get("proxy_score") for r in rows),
                        "gold_score": _mean(gold.tolist()), "kl_k1": _mean(r.get("kl_k1") for r in rows),
                        "kl_k2": _mean(r.get("kl_k2") for r in rows), "length": _mean(r.get("length") for r in rows),
                        "num_samples": len(rows)})
    write_jsonl(run_dir / "gold_eval.jsonl", summary)
    plot_gold_curves(summary, run_dir / "gold_eval.png", f"kl_{config.kl_estimator}", title=run_dir.name)
    for row in summary:
        print(f"gold-eval: step {row['step']:>5}  proxy {row['proxy_score']:+.4f}  gold {row['gold_score']:+.4f}  "
              f"KL(k1) {row['kl_k1']:.3f}  KL(k2) {row['kl_k2']:.3f}  length {row['length']:.1f}", flush=True)
    print(f"gold-eval: {len(summary)} eval steps scored -> {run_dir / 'gold_eval.jsonl'}, {run_dir / 'gold_eval.png'}")
    return summary


def _mean(values) -> float:
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else math.nan


def plot_gold_curves(runs: list[dict] | dict[str, list[dict]], out_png: Path, kl_key: str = "kl_k2",
                     title: str | None = None) -> Path:
    """2 × 2 panels: proxy and gold vs KL, proxy and gold vs step; one line per run (``{label: rows}``)."""
    from rlhf_lab.report.plots import new_figure, save_figure

    curves = runs if isinstance(runs, dict) else {"": runs}
    fig, axes = new_figure(2, 2, size=(10, 7.5))
    panels = [(axes[0, 0], kl_key, "proxy_score"), (axes[0, 1], kl_key, "gold_score"),
              (axes[1, 0], "step", "proxy_score"), (axes[1, 1], "step", "gold_score")]
    for ax, x_key, y_key in panels:
        for label, rows in curves.items():
            points = [(r[x_key], r[y_key]) for r in rows if _finite(r.get(x_key)) and _finite(r.get(y_key))]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=label or None)
        ax.set_xlabel(f"KL ({kl_key.split('_')[-1]}, eval samples)" if x_key != "step" else "PPO step")
        ax.set_ylabel(y_key.replace("_", " "))
        ax.grid(alpha=0.3)
        if any(curves) and ax.get_lines():
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return save_figure(fig, out_png)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
