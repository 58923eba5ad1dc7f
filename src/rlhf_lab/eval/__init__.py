"""Evaluation: length metrics and dataset cartography here; the best-of-n estimator (``eval.bon``), KL and diversity
(``eval.metrics``), win rates (``eval.winrate``) and the LLM judge (``eval.judge``) in their own modules."""

from rlhf_lab.eval.carto import (
    SEED_THRESHOLDS,
    CartoConfig,
    carto_keep,
    carto_stats,
    margin_stats,
    plot_carto_map,
    run_carto,
    write_index_file,
)
from rlhf_lab.eval.length import (
    LengthRegression,
    global_length_reward_corr,
    length_balanced_accuracy,
    length_balanced_subset_mask,
    longer_preferred_rate,
    pairwise_accuracy,
    pearson,
    per_prompt_length_reward_corr,
    preference_length_metrics,
    reward_after_length_regression,
    reward_spread,
    rm_longer_preferred_rate,
)

__all__ = [
    "SEED_THRESHOLDS",
    "CartoConfig",
    "LengthRegression",
    "carto_keep",
    "carto_stats",
    "global_length_reward_corr",
    "length_balanced_accuracy",
    "length_balanced_subset_mask",
    "longer_preferred_rate",
    "margin_stats",
    "pairwise_accuracy",
    "pearson",
    "per_prompt_length_reward_corr",
    "plot_carto_map",
    "preference_length_metrics",
    "reward_after_length_regression",
    "reward_spread",
    "rm_longer_preferred_rate",
    "run_carto",
    "write_index_file",
]
