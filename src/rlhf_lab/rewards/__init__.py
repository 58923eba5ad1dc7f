"""Reward functions: reward models (``rlhf_lab.rewards.model``) and how several of them combine (ensembles).

Only the light, pure-array pieces are imported here, so ``import rlhf_lab.rewards.ensemble`` (the BoN recipe)
does not pull in transformers; import ``rlhf_lab.rewards.model`` explicitly for the reward-model classes.
"""

from rlhf_lab.rewards.ensemble import (
    OBJECTIVES,
    combine_scores,
    ensemble_variance,
    normalize_scores,
    objective_name,
)

__all__ = ["OBJECTIVES", "combine_scores", "ensemble_variance", "normalize_scores", "objective_name"]
