"""The shared online-RL reward (rewards/online.py): raw reward, shaping order, and the in-run eval helpers."""

import pytest
import torch

from rlhf_lab.rewards.online import RewardShaping, SequenceReward


def test_shaping_applies_length_penalty_then_scale_then_eos_penalty_then_clip():
    raw = torch.tensor([1.0, -1.0], dtype=torch.float64)
    lengths, finished = torch.tensor([100, 50]), torch.tensor([True, False])
    shaping = RewardShaping(len_penalty=True, scale_reward=True, missing_eos_penalty=0.5, cliprange_reward=0.6)
    # len_penalty (σ = 0.5): 1 + 2·0.5·(1 − 1) = 1;  −1 + 2·0.5·(1 − 0.5) = −0.5
    # scale (μ = 1, σ = 0.5): (1 − 1)/0.5 = 0;  (−0.5 − 1)/0.5 = −3 → −0.3
    # missing EOS on row 1: −0.3 − 0.5 = −0.8;  clip ±0.6: −0.6
    scores = shaping.apply(raw, lengths, finished, mu=1.0, sigma=0.5)
    assert scores.tolist() == pytest.approx([0.0, -0.6])
    assert scores.dtype == torch.float64
    assert torch.equal(raw, torch.tensor([1.0, -1.0], dtype=torch.float64))  # the input is not modified
    assert RewardShaping().apply(raw, lengths, finished, mu=1.0, sigma=0.5).tolist() == [1.0, -1.0]  # all off


def test_len_only_reward_needs_no_reward_model_and_subtracts_the_baseline():
    reward = SequenceReward([], len_only=16, baseline=0.25)
    assert reward.num_members == 0 and reward.source == "len_only"
    assert reward.member_scores([], []) is None
    lengths = torch.tensor([0, 8, 16, 40])
    # 1 − |L/16 − 1| − 0.25
    assert reward.raw(None, lengths).tolist() == pytest.approx([-0.25, 0.25, 0.75, -0.75])


def test_ensemble_objectives_combine_member_scores():
    members = torch.tensor([[1.0, 0.0], [3.0, 0.0]], dtype=torch.float64)  # 2 members × 2 responses
    mean = SequenceReward([], objective="mean")
    wco = SequenceReward([], objective="wco")
    uwo = SequenceReward([], objective="UWO", uwo_weight=0.5, ensemble_ddof=1)
    lengths = torch.tensor([3, 3])
    assert mean.combined(members, lengths).tolist() == [2.0, 0.0]
    assert wco.combined(members, lengths).tolist() == [1.0, 0.0]
    # UWO: mean − λ·var, var with ddof 1 of (1, 3) = 2
    assert uwo.combined(members, lengths).tolist() == pytest.approx([2.0 - 0.5 * 2.0, 0.0])
