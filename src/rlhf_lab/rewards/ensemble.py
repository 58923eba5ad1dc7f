"""Reward-model ensembles: combine k members' scores of the same (prompt, answer) into one reward.

Coste et al. 2023, "Reward Model Ensembles Help Mitigate Overoptimization". With member scores r_1..r_k of one
sample (members differ only by their training seed):

    mean:  R = (1/k) Σ_j r_j
    WCO:   R = min_j r_j                                  (worst-case optimisation)
    UWO:   R = (1/k) Σ_j r_j − λ · Var_j(r_j)             (uncertainty-weighted optimisation)
           Var_j(r_j) = Σ_j (r_j − r̄)² / (k − ddof)       (across members, for that one sample)

``ddof = 0`` is the population variance Coste et al. 2023's best-of-n code uses (``np.var``); ``ddof = 1`` the unbiased
one its PPO code uses (``torch.var``). λ = 0 means UWO = mean: Coste et al. 2023's BoN called
``f(scores, weight) if weight else f(scores)``, so λ = 0.0 silently became the function's default λ = 1.

The functions are pure and take members first, ``member_scores`` of shape (k, ...): a torch tensor (the PPO
recipe, shape (k, B)) or anything numpy takes (the BoN recipe, shape (k, P, N)). A torch tensor comes back as a
tensor on the same device, everything else as a numpy array. Integer inputs are promoted to float64.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from rlhf_lab.errors import UserError

OBJECTIVES = ("mean", "WCO", "UWO")


def objective_name(name: str, flag: str = "objective") -> str:
    """The canonical spelling (``mean``, ``WCO``, ``UWO``) of an objective name given in any case."""
    for canonical in OBJECTIVES:
        if str(name).lower() == canonical.lower():
            return canonical
    raise UserError(f"--{flag}: {name!r} is not one of {', '.join(OBJECTIVES)}")


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")  # no torch import for numpy callers
    return torch is not None and isinstance(x, torch.Tensor)


def _as_scores(member_scores: Any) -> Any:
    """Members-first float scores: a torch tensor stays one, anything else becomes a numpy array."""
    if _is_torch(member_scores):
        scores = member_scores if member_scores.is_floating_point() else member_scores.double()
    else:
        scores = np.asarray(member_scores)
        if scores.dtype.kind != "f":
            scores = scores.astype(np.float64)
    if scores.ndim < 1 or scores.shape[0] < 1:
        raise ValueError(f"member_scores needs at least one member on its first axis, got shape {tuple(scores.shape)}")
    return scores


def ensemble_variance(member_scores: Any, ddof: int = 0) -> Any:
    """Var_j(r_j) = Σ_j (r_j − r̄)² / (k − ddof), across the k members (axis 0), for each sample.

    ``ddof = 0``: population variance (Coste et al. 2023's BoN, ``np.var``); ``ddof = 1``: unbiased (their PPO and
    its logged ``ensemble_variance``, ``torch.var``). Needs k > ddof members.
    """
    scores = _as_scores(member_scores)
    k = scores.shape[0]
    if isinstance(ddof, bool) or int(ddof) != ddof or ddof < 0:
        raise UserError(f"--ensemble_ddof: {ddof!r} must be a non-negative integer")
    if k <= ddof:
        raise UserError(f"--ensemble_ddof: the variance of {k} member(s) with ddof={ddof} is undefined (needs more members)")
    if _is_torch(scores):
        return scores.var(dim=0, correction=int(ddof))
    return scores.var(axis=0, ddof=int(ddof))


def combine_scores(member_scores: Any, objective: str = "mean", uwo_weight: float = 0.0, ddof: int = 0) -> Any:
    """One reward per sample from k members' scores (axis 0), shape (k, ...) → (...).

        mean: R = (1/k) Σ_j r_j
        WCO:  R = min_j r_j
        UWO:  R = (1/k) Σ_j r_j − λ · Var_j(r_j),  λ = ``uwo_weight`` ≥ 0, Var with ``ddof`` (see
              ``ensemble_variance``)

    ``objective`` is case-insensitive. ``uwo_weight`` is used by UWO only; λ = 0 gives exactly the mean (no
    variance is computed, so it also works for one member), unlike Coste et al. 2023's BoN where λ = 0 became 1.
    """
    name = objective_name(objective)
    weight = float(uwo_weight)
    if not weight >= 0:  # also catches NaN
        raise UserError(f"--uwo_weight: {uwo_weight!r} must be >= 0")
    scores = _as_scores(member_scores)
    if name == "WCO":
        return scores.amin(dim=0) if _is_torch(scores) else scores.min(axis=0)
    mean = scores.mean(dim=0) if _is_torch(scores) else scores.mean(axis=0)
    if name == "mean" or weight == 0.0:
        return mean
    return mean - weight * ensemble_variance(scores, ddof)


def normalize_scores(member_scores: Any, means: Sequence[float] | Any, stds: Sequence[float] | Any) -> Any:
    """Put every member on one scale before combining: r̃_j = (r_j − μ_j) / σ_j.

    μ_j, σ_j are member j's stored mean and standard deviation (e.g. of its rewards on the RM's eval set);
    ``means`` and ``stds`` have one entry per member (length k) and broadcast over the sample axes.
    The seed computed these statistics when training each RM but left the normalisation commented out, so its
    ensembles combine raw scores; this is off unless asked for.
    """
    scores = _as_scores(member_scores)
    k, extra = scores.shape[0], scores.ndim - 1
    mu = np.asarray(means, dtype=np.float64).reshape(-1)
    sigma = np.asarray(stds, dtype=np.float64).reshape(-1)
    if mu.shape != (k,) or sigma.shape != (k,):
        raise ValueError(f"need one mean and one std per member ({k}), got {mu.size} and {sigma.size}")
    if not (np.all(np.isfinite(sigma)) and np.all(sigma > 0) and np.all(np.isfinite(mu))):
        raise ValueError(f"member stds must be finite and > 0 and means finite, got means {mu}, stds {sigma}")
    shape = (k,) + (1,) * extra
    if _is_torch(scores):
        mu_t = scores.new_tensor(mu).reshape(shape)
        sigma_t = scores.new_tensor(sigma).reshape(shape)
        return (scores - mu_t) / sigma_t
    return (scores - mu.reshape(shape).astype(scores.dtype)) / sigma.reshape(shape).astype(scores.dtype)
