import math

import torch

from rlhf_lab.losses import sft_loss, token_logprobs


def test_token_logprobs_matches_log_softmax_by_hand():
    logits = torch.tensor([[[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]]])
    targets = torch.tensor([[1, 0]])
    got = token_logprobs(logits, targets)
    row0 = 2.0 - math.log(math.exp(1.0) + math.exp(2.0) + math.exp(0.5))
    row1 = 0.0 - math.log(2 + math.exp(3.0))
    assert torch.allclose(got, torch.tensor([[row0, row1]]), atol=1e-6)


def test_sft_loss_is_masked_token_mean_and_respects_global_token_count():
    logits = torch.tensor([[[1.0, 2.0, 0.5], [0.0, 0.0, 3.0], [5.0, 0.0, 0.0]]])
    targets = torch.tensor([[1, 0, 0]])
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    nll1 = -(0.0 - math.log(2 + math.exp(3.0)))
    nll2 = -(5.0 - math.log(math.exp(5.0) + 2))
    assert math.isclose(float(sft_loss(logits, targets, mask)), (nll1 + nll2) / 2, rel_tol=1e-6)
    # normalising by the whole step's token count (e.g. 8 tokens over several micro-batches)
    assert math.isclose(float(sft_loss(logits, targets, mask, num_tokens=8)), (nll1 + nll2) / 8, rel_tol=1e-6)


def test_micro_batches_with_global_count_equal_one_big_batch():
    torch.manual_seed(0)
    logits = torch.randn(4, 5, 7)
    targets = torch.randint(0, 7, (4, 5))
    mask = (torch.rand(4, 5) > 0.3).float()
    whole = sft_loss(logits, targets, mask)
    n = mask.sum()
    parts = sft_loss(logits[:2], targets[:2], mask[:2], n) + sft_loss(logits[2:], targets[2:], mask[2:], n)
    assert torch.allclose(whole, parts, atol=1e-6)
