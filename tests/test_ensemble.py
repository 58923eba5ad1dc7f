import numpy as np
import pytest
import torch

from rlhf_lab.errors import UserError
from rlhf_lab.rewards import combine_scores, ensemble_variance, normalize_scores

# k = 3 members (rows) scoring 2 samples (columns)
SCORES = [[1.0, 0.0], [2.0, 0.0], [6.0, 3.0]]
# by hand: means (1+2+6)/3 = 3 and (0+0+3)/3 = 1; squared deviations 4+1+9 = 14 and 1+1+4 = 6
MEAN = [3.0, 1.0]
VAR_POP = [14 / 3, 6 / 3]
VAR_UNBIASED = [14 / 2, 6 / 2]


@pytest.mark.parametrize("as_array", [np.array, torch.tensor], ids=["numpy", "torch"])
def test_hand_computed_objectives(as_array):
    scores = as_array(SCORES)
    assert np.allclose(np.asarray(combine_scores(scores, "mean")), MEAN)
    assert np.allclose(np.asarray(combine_scores(scores, "WCO")), [1.0, 0.0])
    assert np.allclose(np.asarray(ensemble_variance(scores, ddof=0)), VAR_POP)
    assert np.allclose(np.asarray(ensemble_variance(scores, ddof=1)), VAR_UNBIASED)
    # UWO = mean − λ·Var: 3 − 0.5·14/3 = 2/3, 1 − 0.5·2 = 0 (population); 3 − 3.5, 1 − 1.5 (unbiased)
    assert np.allclose(np.asarray(combine_scores(scores, "UWO", 0.5, ddof=0)), [2 / 3, 0.0])
    assert np.allclose(np.asarray(combine_scores(scores, "UWO", 0.5, ddof=1)), [-0.5, -0.5])


def test_torch_in_torch_out_same_dtype_and_matches_seed_ppo_formula():
    torch.manual_seed(0)
    scores = torch.randn(4, 7, dtype=torch.float32)
    got = combine_scores(scores, "UWO", 0.1, ddof=1)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32 and got.shape == (7,)
    # the seed's PPO reward: mean − λ · torch.var(all_scores, dim=0) (unbiased)
    assert torch.allclose(got, scores.mean(0) - 0.1 * torch.var(scores, dim=0))
    # the seed's BoN: np.mean(scores) − λ · np.var(scores) per answer (population)
    member_major = scores.double().numpy()
    expected = [np.mean(col) - 0.1 * np.var(col) for col in member_major.T]
    assert np.allclose(combine_scores(member_major, "UWO", 0.1), expected)


def test_lambda_zero_is_exactly_the_mean_not_the_seeds_lambda_one():
    scores = torch.tensor(SCORES)
    assert torch.equal(combine_scores(scores, "UWO", 0.0), combine_scores(scores, "mean"))
    assert not torch.allclose(combine_scores(scores, "UWO", 1.0), combine_scores(scores, "mean"))
    # λ = 0 needs no variance, so one member with ddof = 1 is fine
    assert torch.equal(combine_scores(scores[:1], "UWO", 0.0, ddof=1), scores[0])


def test_names_case_insensitive_and_extra_axes():
    scores = np.arange(24, dtype=np.float64).reshape(3, 2, 4)  # (k, P, N)
    assert combine_scores(scores, "wco").shape == (2, 4)
    assert np.array_equal(combine_scores(scores, "Wco"), scores[0])
    assert np.array_equal(combine_scores(scores, "MEAN"), scores[1])
    ints = combine_scores([[1, 2], [2, 4]], "uwo", 1.0)  # ints are promoted: mean − pop. variance
    assert ints.dtype == np.float64 and np.allclose(ints, [1.5 - 0.25, 3.0 - 1.0])


def test_bad_objective_weight_ddof_are_user_errors():
    with pytest.raises(UserError, match="--objective: 'median'"):
        combine_scores(SCORES, "median")
    with pytest.raises(UserError, match="--uwo_weight"):
        combine_scores(SCORES, "UWO", -0.1)
    with pytest.raises(UserError, match="--ensemble_ddof"):
        ensemble_variance([[1.0, 2.0]], ddof=1)  # one member, unbiased variance
    with pytest.raises(UserError, match="--ensemble_ddof"):
        ensemble_variance(SCORES, ddof=-1)


@pytest.mark.parametrize("as_array", [np.array, torch.tensor], ids=["numpy", "torch"])
def test_normalize_per_member(as_array):
    scores = as_array([[1.0, 3.0], [10.0, 20.0]])
    got = np.asarray(normalize_scores(scores, means=[1.0, 10.0], stds=[2.0, 5.0]))
    assert np.allclose(got, [[0.0, 1.0], [0.0, 2.0]])
    with pytest.raises(ValueError, match="one mean and one std per member"):
        normalize_scores(scores, means=[0.0], stds=[1.0])
    with pytest.raises(ValueError, match="> 0"):
        normalize_scores(scores, means=[0.0, 0.0], stds=[1.0, 0.0])
