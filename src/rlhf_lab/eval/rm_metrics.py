"""A reward model judged on preference pairs: the metrics `eval-rm` reports and `train-rm` prints for its
held-out splits (one function for both, so the two always agree), and their one-line summaries."""

from __future__ import annotations

import torch

from rlhf_lab.eval.length import (
    accuracy_by_length_difference,
    global_length_reward_corr,
    longer_preferred_gap,
    per_prompt_length_reward_corr,
    preference_length_metrics,
)


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
