"""Shared metrics: KL estimators, distinct-n, EOS rate, and per-token response log-probs."""

import math

import pytest
import torch

from rlhf_lab.eval.metrics import distinct_n, eos_rate
from rlhf_lab.losses import kl_estimates, token_logprobs
from rlhf_lab.models import load_causal_lm
from rlhf_lab.models.logprobs import response_logprobs


def test_kl_estimators_by_hand():
    policy, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    est = kl_estimates(policy, ref)
    r = [-0.5, 1.0]
    assert est["k1"].tolist() == pytest.approx([0.5, -1.0])
    assert est["k2"].tolist() == pytest.approx([0.125, 0.5])
    assert est["k3"].tolist() == pytest.approx([math.exp(x) - 1 - x for x in r])


def test_kl_estimators_are_unbiased_for_two_categoricals():
    torch.manual_seed(0)
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.3, 0.3, 0.4])
    true_kl = float((p * (p / q).log()).sum())
    ys = torch.multinomial(p, 200_000, replacement=True)
    est = kl_estimates(p.log()[ys], q.log()[ys])
    assert float(est["k1"].mean()) == pytest.approx(true_kl, rel=0.02)
    assert float(est["k3"].mean()) == pytest.approx(true_kl, rel=0.02)


def test_distinct_n():
    assert distinct_n(["a b a b", "a b c"], 1) == pytest.approx(3 / 7)
    assert distinct_n(["a b a b", "a b c"], 2) == pytest.approx(3 / 5)  # ab, ba, ab | ab, bc
    assert distinct_n([[1, 2], [1, 2]], 2) == 0.5
    assert distinct_n([[1]], 2) == 0.0
    assert eos_rate([True, False, True, True]) == 0.75 and eos_rate([]) == 0.0


def test_response_logprobs_match_unbatched_forward():
    model = load_causal_lm("tiny-random")
    prompts, responses = [[1, 2, 3], [4, 5, 6, 7, 8], [9]], [[10, 11], [12], [13, 14, 15, 16]]
    batched = response_logprobs(model, prompts, responses, pad_id=0, batch_size=2)
    for p, r, got in zip(prompts, responses, batched, strict=True):
        ids = torch.tensor([p + r])
        with torch.no_grad():
            logits = model(ids).logits[:, :-1]
        want = token_logprobs(logits, ids[:, 1:])[0, len(p) - 1:]
        assert got.shape == (len(r),)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_sequence_kl_sums_the_estimators_over_real_response_tokens():
    from rlhf_lab.losses import sequence_kl

    policy = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    ref = torch.tensor([[-1.5, -1.0, -1.0], [-1.0, -0.5, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # row 1: the last column is a pad
    kl = sequence_kl(policy, ref, mask)
    # row 0: log π − log π_ref = 0.5, −1, −2; row 1: 0.5, 0 (pad not counted)
    assert kl["k1"].tolist() == pytest.approx([0.5 - 1 - 2, 0.5])
    assert kl["k2"].tolist() == pytest.approx([0.5 * (0.25 + 1 + 4), 0.5 * 0.25])
    k3 = lambda d: math.exp(-d) - 1 + d  # noqa: E731  (ρ − 1) − log ρ with log ρ = −d
    assert kl["k3"].tolist() == pytest.approx([k3(0.5) + k3(-1) + k3(-2), k3(0.5)])
    one_row = sequence_kl(policy[1, :2], ref[1, :2])  # a single unpadded row sums to a 0-d tensor
    assert float(one_row["k1"]) == pytest.approx(0.5) and one_row["k1"].dim() == 0
