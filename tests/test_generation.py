"""rlhf_lab.generation: batched seeded sampling (tiny-random model; slow tests with the real SmolLM2).

The fast sampler (``sampler="fast"``, the default) is checked against plain HF: greedy token for token, log-probs
against a full forward, sampling in distribution (with a test that fails for a wrong temperature), and the logits
processors against HF's own warpers.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency
from transformers import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

import rlhf_lab.generation as generation_module
from rlhf_lab.decode import draw, process_logits
from rlhf_lab.errors import UserError
from rlhf_lab.generation import (
    DECODING_PRESETS,
    DecodingConfig,
    Generation,
    decoding_preset,
    generate,
    plan_batches,
)
from rlhf_lab.models import load_causal_lm, load_tokenizer

PROMPTS = [
    "Hello there, how are you doing today my friend? Tell me everything about your week.",
    "Hi",
    "The quick brown fox jumps",
    "A",
    "Write a short poem about the sea and the wind.",
]
# On the random-init model greedy decoding repeats one token; a strong repetition penalty makes every step pick a
# new token, so the whole context (and so the left padding) matters for every generated token.
DIVERSE_GREEDY = DecodingConfig(do_sample=False, repetition_penalty=50.0, max_new_tokens=16)


@pytest.fixture(scope="module")
def tiny():
    return load_causal_lm("tiny-random"), load_tokenizer("tiny-random")


def _ids(results: list[list[Generation]]) -> list[list[list[int]]]:
    return [[g.token_ids for g in per_prompt] for per_prompt in results]


def test_same_seed_identical_different_seed_differs(tiny):
    model, tokenizer = tiny
    decoding = DecodingConfig(max_new_tokens=12)
    kwargs = dict(samples_per_prompt=2, decoding=decoding, batch_size=4, progress=False)
    first = generate(model, tokenizer, PROMPTS, seed=7, **kwargs)
    again = generate(model, tokenizer, PROMPTS, seed=7, **kwargs)
    other = generate(model, tokenizer, PROMPTS, seed=8, **kwargs)
    assert first == again
    assert _ids(first) != _ids(other)
    # the two samples of one prompt are different draws
    assert all(per_prompt[0].token_ids != per_prompt[1].token_ids for per_prompt in first)


def test_results_follow_input_order_and_match_unbatched(tiny):
    model, tokenizer = tiny
    batched = generate(
        model, tokenizer, PROMPTS, samples_per_prompt=2, decoding=DIVERSE_GREEDY, batch_size=3, progress=False
    )
    assert len(batched) == len(PROMPTS)
    for index, prompt in enumerate(PROMPTS):
        alone = generate(model, tokenizer, [prompt], decoding=DIVERSE_GREEDY, progress=False)[0][0]
        assert [(g.prompt_index, g.sample_index) for g in batched[index]] == [(index, 0), (index, 1)]
        assert batched[index][0].token_ids == alone.token_ids
        assert batched[index][1].token_ids == alone.token_ids
        assert batched[index][0].text == alone.text
        assert len(alone.token_ids) == 16 and len(set(alone.token_ids)) > 8  # the check is not vacuous


def test_shared_prefix_gives_the_same_tokens_as_separate_prefills(tiny):
    model, tokenizer = tiny
    for decoding in (DecodingConfig(max_new_tokens=12), DIVERSE_GREEDY):
        # batch_size 5 with 3 samples: some prompts' samples are split across two batches
        kwargs = dict(samples_per_prompt=3, decoding=decoding, batch_size=5, seed=3, progress=False)
        shared = generate(model, tokenizer, PROMPTS, share_prefix=True, **kwargs)
        separate = generate(model, tokenizer, PROMPTS, share_prefix=False, **kwargs)
        assert shared == separate
        assert len({tuple(g.token_ids) for per_prompt in shared for g in per_prompt}) > len(PROMPTS) // 2


def test_token_id_prompts_equal_string_prompts(tiny):
    model, tokenizer = tiny
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    from_text = generate(model, tokenizer, PROMPTS, decoding=DIVERSE_GREEDY, progress=False)
    from_ids = generate(model, tokenizer, ids, decoding=DIVERSE_GREEDY, progress=False)
    assert from_text == from_ids


def test_stop_token_cuts_right_after_it(tiny):
    model, tokenizer = tiny
    full = generate(model, tokenizer, PROMPTS[:2], decoding=DIVERSE_GREEDY, progress=False)
    reference = full[1][0].token_ids
    stop = reference[3]
    assert stop not in reference[:3]
    cut = generate(
        model, tokenizer, PROMPTS[:2], decoding=DIVERSE_GREEDY, stop_token_ids=[stop], progress=False
    )
    generation = cut[1][0]
    assert generation.token_ids == reference[:4]  # stop id included in the ids
    assert generation.num_tokens == 4
    assert generation.finished
    # ... and not in the text
    assert generation.text == tokenizer.decode(reference[:3], skip_special_tokens=True)
    # the other row stops only if it produced the same token
    other = cut[0][0]
    if stop in full[0][0].token_ids:
        assert other.finished and other.token_ids[-1] == stop
    else:
        assert other == full[0][0]


def test_min_new_tokens_holds_back_stop_ids(tiny):
    model, tokenizer = tiny
    reference = generate(model, tokenizer, ["Hi"], decoding=DIVERSE_GREEDY, progress=False)[0][0].token_ids
    stop = reference[3]
    held = dataclasses.replace(DIVERSE_GREEDY, min_new_tokens=6)
    generation = generate(model, tokenizer, ["Hi"], decoding=held, stop_token_ids=[stop], progress=False)[0][
        0
    ]
    assert stop not in generation.token_ids[:6]
    assert generation.token_ids[:3] == reference[:3]


def test_unfinished_responses_have_no_stop_token(tiny):
    model, tokenizer = tiny
    results = generate(model, tokenizer, PROMPTS, decoding=DecodingConfig(max_new_tokens=10), progress=False)
    for per_prompt in results:
        for g in per_prompt:
            assert g.num_tokens == len(g.token_ids)
            if not g.finished:
                assert g.num_tokens == 10
                assert tokenizer.eos_token_id not in g.token_ids
                assert g.text == tokenizer.decode(g.token_ids, skip_special_tokens=True)


def test_per_prompt_max_new_tokens_are_exact_prefixes(tiny):
    model, tokenizer = tiny
    limits = [3, 12, 5, 1, 8]
    decoding = DecodingConfig(max_new_tokens=12)
    kwargs = dict(samples_per_prompt=2, decoding=decoding, batch_size=4, seed=3, progress=False)
    limited = generate(model, tokenizer, PROMPTS, max_new_tokens_per_prompt=limits, **kwargs)
    uniform = generate(model, tokenizer, PROMPTS, **kwargs)
    for limit, per_limited, per_uniform in zip(limits, limited, uniform, strict=True):
        for g, u in zip(per_limited, per_uniform, strict=True):
            assert g.num_tokens <= limit
            # the tokens are exactly what sampling produced: a prefix of the same draw with a longer limit
            assert g.token_ids == u.token_ids[:limit]
            assert g.finished == (u.finished and u.num_tokens <= limit)


def test_zero_token_limit_gives_empty_response(tiny):
    model, tokenizer = tiny
    results = generate(
        model,
        tokenizer,
        PROMPTS[:2],
        decoding=DecodingConfig(max_new_tokens=4),
        max_new_tokens_per_prompt=[0, 4],
        progress=False,
    )
    assert results[0][0] == Generation(0, 0, "", [], 0, False)
    assert results[1][0].num_tokens == 4


def test_global_rng_state_and_training_mode_are_restored(tiny):
    model, tokenizer = tiny
    model.train()
    model.model.layers[0].eval()  # a mixed state must come back exactly as it was
    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    generate(
        model,
        tokenizer,
        PROMPTS[:3],
        samples_per_prompt=2,
        decoding=DecodingConfig(max_new_tokens=4),
        progress=False,
    )
    assert torch.equal(torch.random.get_rng_state(), state)
    assert model.training and not model.model.layers[0].training and model.model.layers[1].training
    model.eval()


def test_plan_batches_sorts_longest_first_and_keeps_samples_together():
    batches = plan_batches([3, 9, 5, 9], samples_per_prompt=2, batch_size=3, skip=[False, False, True, False])
    assert batches == [[(1, 0), (1, 1), (3, 0)], [(3, 1), (0, 0), (0, 1)]]


def test_presets_and_validation():
    assert DECODING_PRESETS["length_biases"] == DecodingConfig(
        temperature=0.9, top_p=0.9, repetition_penalty=1.2
    )
    assert DECODING_PRESETS["eval"].temperature == 0.7 and DECODING_PRESETS["eval"].top_p == 0.9
    assert DECODING_PRESETS["raft"].temperature == 0.85
    assert not DECODING_PRESETS["greedy"].do_sample
    assert DECODING_PRESETS["rollout"] == DecodingConfig()
    copy = decoding_preset("eval", max_new_tokens=256)
    assert copy.max_new_tokens == 256 and DECODING_PRESETS["eval"].max_new_tokens == 128
    assert dataclasses.replace(copy, top_k=5).top_k == 5
    with pytest.raises(ValueError):
        DecodingConfig(temperature=0)
    with pytest.raises(ValueError):
        DecodingConfig(top_p=1.5)
    with pytest.raises(ValueError):
        decoding_preset("nope")


def test_bad_arguments(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="empty"):
        generate(model, tokenizer, ["hi", ""], decoding=DecodingConfig(), progress=False)
    with pytest.raises(ValueError, match="entries"):
        generate(
            model,
            tokenizer,
            ["hi"],
            decoding=DecodingConfig(),
            max_new_tokens_per_prompt=[1, 2],
            progress=False,
        )


@pytest.mark.slow
def test_real_model_answers_capital_of_france():
    model, tokenizer = load_causal_lm("default"), load_tokenizer("default")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    other = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Name three colours of the rainbow, please."}],
        tokenize=False,
        add_generation_prompt=True,
    )
    results = generate(
        model,
        tokenizer,
        [prompt, other],
        decoding=decoding_preset("greedy", max_new_tokens=32),
        progress=False,
    )
    answer = results[0][0]
    assert "Paris" in answer.text
    assert "<|im_end|>" not in answer.text
    if answer.finished:
        assert answer.token_ids[-1] == tokenizer.eos_token_id


# ---------------------------------------------------------------------------------------------- fast sampler


def _plain_hf_greedy(model, tokenizer, prompt: str, max_new_tokens: int, **kwargs) -> list[int]:
    """HF ``model.generate`` greedy on one unpadded prompt, cut right after the first EOS."""
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, **kwargs)[0, ids.shape[1]:].tolist()
    return out[: out.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in out else out


@pytest.mark.parametrize("samples", [1, 3])
def test_fast_greedy_equals_plain_hf_greedy(tiny, samples):
    model, tokenizer = tiny
    for decoding, extra in ((DecodingConfig(do_sample=False, max_new_tokens=12), {}),
                            (DIVERSE_GREEDY, {"repetition_penalty": 50.0})):
        ours = generate(model, tokenizer, PROMPTS, samples_per_prompt=samples, decoding=decoding, batch_size=4,
                        progress=False)
        for prompt, per_prompt in zip(PROMPTS, ours, strict=True):
            reference = _plain_hf_greedy(model, tokenizer, prompt, decoding.max_new_tokens, **extra)
            assert all(g.token_ids == reference for g in per_prompt)
    assert len(set(reference)) > 8  # with the penalty every step picks a new token: the check is not vacuous


def test_fast_and_hf_samplers_agree_on_greedy_with_penalty_and_limits(tiny):
    model, tokenizer = tiny
    kwargs = dict(samples_per_prompt=2, decoding=DIVERSE_GREEDY, batch_size=3, progress=False,
                  max_new_tokens_per_prompt=[3, 16, 5, 1, 8])
    assert generate(model, tokenizer, PROMPTS, sampler="fast", **kwargs) == generate(
        model, tokenizer, PROMPTS, sampler="hf", **kwargs)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_a_plain_forward(tiny, temperature):
    model, tokenizer = tiny
    decoding = DecodingConfig(max_new_tokens=10, temperature=temperature)
    results = generate(model, tokenizer, PROMPTS, samples_per_prompt=2, decoding=decoding, batch_size=4, seed=5,
                       progress=False, return_logprobs=True)
    checked = 0
    for prompt, per_prompt in zip(PROMPTS, results, strict=True):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for g in per_prompt:
            ids = torch.tensor([prompt_ids + g.token_ids])
            with torch.inference_mode():
                logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
            expected = torch.log_softmax(logits / temperature, -1).gather(1, torch.tensor(g.token_ids)[:, None])
            assert len(g.logprobs) == g.num_tokens
            torch.testing.assert_close(torch.tensor(g.logprobs), expected.squeeze(1), atol=1e-4, rtol=0)
            checked += g.num_tokens
    assert checked == 10 * 2 * len(PROMPTS)


def test_fast_samples_do_not_depend_on_batch_size_or_batch_mates(tiny):
    model, tokenizer = tiny
    kwargs = dict(samples_per_prompt=3, decoding=DecodingConfig(max_new_tokens=8), seed=11, progress=False)
    assert generate(model, tokenizer, PROMPTS, batch_size=2, **kwargs) == generate(
        model, tokenizer, PROMPTS, batch_size=15, **kwargs)
    # a row's stream is (seed, prompt index, sample index): other prompts (batch mates) change nothing
    fewer = generate(model, tokenizer, PROMPTS[:3], batch_size=15, **kwargs)[2]
    together = generate(model, tokenizer, PROMPTS, batch_size=15, **kwargs)[2]
    assert [g.token_ids for g in fewer] == [g.token_ids for g in together]


def test_processors_equal_hf_warpers():
    torch.manual_seed(0)
    scores = torch.randn(6, 300) * 3
    seen_ids = torch.randint(0, 300, (6, 20))
    seen = torch.zeros(6, 300, dtype=torch.bool).scatter(1, seen_ids, True)
    for processing in (DecodingConfig(temperature=0.7, top_k=17), DecodingConfig(temperature=1.3, top_p=0.8),
                       DecodingConfig(repetition_penalty=1.5, top_p=0.9, top_k=40, temperature=0.9)):
        expected = scores.clone()
        if processing.repetition_penalty != 1.0:
            expected = RepetitionPenaltyLogitsProcessor(processing.repetition_penalty)(seen_ids, expected)
        expected = TemperatureLogitsWarper(processing.temperature)(seen_ids, expected)
        if processing.top_k:
            expected = TopKLogitsWarper(processing.top_k)(seen_ids, expected)
        if processing.top_p < 1:
            expected = TopPLogitsWarper(processing.top_p)(seen_ids, expected)
        ours = process_logits(scores, 0, processing, torch.tensor([0]), seen)
        assert torch.equal(torch.isinf(ours), torch.isinf(expected))
        torch.testing.assert_close(ours[~torch.isinf(ours)], expected[~torch.isinf(expected)])
    # min_new_tokens: the stop ids are forbidden before the step, allowed from it on
    held = process_logits(scores, 2, DecodingConfig(min_new_tokens=3), torch.tensor([4, 9]), None)
    assert torch.isinf(held[:, [4, 9]]).all() and not torch.isinf(held[:, 5]).any()
    assert torch.equal(process_logits(scores, 3, DecodingConfig(min_new_tokens=3), torch.tensor([4, 9]), None), scores)


def test_draw_is_an_exact_inverse_cdf_and_never_draws_zero_probability():
    scores = torch.tensor([[0.0, float("-inf"), 1.0, float("-inf"), 2.0] + [float("-inf")] * 600])
    probs = torch.softmax(scores, -1)[0, [0, 2, 4]].double()
    edges = torch.cumsum(probs, 0) / probs.sum()  # the CDF boundaries; 1e-6 is far above float32 rounding
    for u, expected in ((0.0, 0), (edges[0] - 1e-6, 0), (edges[0] + 1e-6, 2), (edges[1] - 1e-6, 2),
                        (edges[1] + 1e-6, 4), (1 - 2**-53, 4)):
        token, logprob = draw(scores, torch.tensor([float(u)], dtype=torch.float64), block=4)
        assert int(token) == expected
        assert float(logprob) == pytest.approx(float(torch.log_softmax(scores, -1)[0, expected]), abs=1e-6)


def _peaked(model):
    """tiny-random with its final norm scaled 25×: logits spread enough that the temperature shows in samples."""
    peaked = copy.deepcopy(model)
    with torch.no_grad():
        peaked.model.norm.weight.mul_(25.0)
    return peaked


def _two_sample_p(a: list[int], b: list[int], min_count: int = 10) -> float:
    """Chi-square test of homogeneity on the categories of a and b; categories rarer than ``min_count`` pooled."""
    values = sorted(set(a) | set(b))
    table = np.array([[a.count(v) for v in values], [b.count(v) for v in values]])
    common = table.sum(0) >= min_count
    table = np.concatenate([table[:, common], table[:, ~common].sum(1, keepdims=True)], axis=1)
    table = table[:, table.sum(0) > 0]
    return float(chi2_contingency(table)[1])


def test_fast_sampling_matches_hf_in_distribution_and_the_test_can_fail(tiny):
    model, tokenizer = tiny
    peaked = _peaked(model)
    prompt = ["The quick brown fox jumps"]
    n = 3000
    first = {}
    for name, sampler, temperature in (("hf", "hf", 1.0), ("fast", "fast", 1.0), ("wrong", "fast", 0.8)):
        out = generate(peaked, tokenizer, prompt, samples_per_prompt=n, batch_size=500, seed=1, sampler=sampler,
                       decoding=DecodingConfig(max_new_tokens=1, temperature=temperature), progress=False)[0]
        first[name] = [g.token_ids[0] for g in out]
    assert len(set(first["hf"])) > 20  # a real distribution, not a point mass
    assert _two_sample_p(first["fast"], first["hf"]) > 0.01
    assert _two_sample_p(first["wrong"], first["hf"]) < 1e-4  # the same test rejects a wrong temperature

    # lengths: the stop ids are the 30 tokens most often sampled after the first one (never as the first one),
    # so responses end anywhere in 1..6 tokens
    calibration = generate(peaked, tokenizer, prompt, samples_per_prompt=500, batch_size=500, seed=9,
                           sampler="hf", decoding=DecodingConfig(max_new_tokens=6), progress=False)[0]
    later = np.bincount([t for g in calibration for t in g.token_ids[1:]], minlength=peaked.config.vocab_size)
    later[np.bincount(first["hf"], minlength=peaked.config.vocab_size) > 0] = 0
    stops = [int(t) for t in np.argsort(later)[::-1][:30]]
    lengths = {}
    for name, sampler, temperature in (("hf", "hf", 1.0), ("fast", "fast", 1.0), ("wrong", "fast", 0.8)):
        out = generate(peaked, tokenizer, prompt, samples_per_prompt=1500, batch_size=500, seed=2,
                       sampler=sampler, stop_token_ids=stops, progress=False,
                       decoding=DecodingConfig(max_new_tokens=6, temperature=temperature))[0]
        lengths[name] = [g.num_tokens for g in out]
    assert len(set(lengths["hf"])) >= 5
    assert _two_sample_p(lengths["fast"], lengths["hf"]) > 0.01
    assert _two_sample_p(lengths["wrong"], lengths["hf"]) < 1e-3


def test_context_window_is_checked_before_any_work(tiny):
    model, tokenizer = tiny
    window = model.config.max_position_embeddings
    long_prompt = [5] * (window - 8)
    with pytest.raises(UserError, match=rf"max_new_tokens 16 .*max_position_embeddings {window}"):
        generate(model, tokenizer, [[7, 8], long_prompt], decoding=DecodingConfig(max_new_tokens=16),
                 progress=False)
    # exactly at the window is fine (limit 8: prompt + response = window)
    out = generate(model, tokenizer, [long_prompt], decoding=DecodingConfig(max_new_tokens=16),
                   max_new_tokens_per_prompt=[8], progress=False)
    assert out[0][0].num_tokens == 8


def test_memory_estimate_refuses_a_batch_that_cannot_fit(tiny, monkeypatch):
    model, tokenizer = tiny
    monkeypatch.setattr(generation_module, "available_bytes", lambda: 64 * 2**20)  # 64 MiB left
    calls = []
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(1))
    with pytest.raises(UserError, match=r"batch of 64 sequences \(batch_size\).*max_new_tokens 32.*GiB"):
        generate(model, tokenizer, PROMPTS[:1], samples_per_prompt=64, batch_size=64,
                 decoding=DecodingConfig(max_new_tokens=32), progress=False)
    assert not calls  # refused before any model call
    monkeypatch.undo()
    # the same request with a small batch fits: 1 row × 49k-vocabulary logits ≈ 1 MB
    monkeypatch.setattr(generation_module, "available_bytes", lambda: 64 * 2**20)
    out = generate(model, tokenizer, PROMPTS[:1], samples_per_prompt=2, batch_size=1,
                   decoding=DecodingConfig(max_new_tokens=4), progress=False)
    assert [g.num_tokens for g in out[0]] == [4, 4]


@pytest.mark.slow
@pytest.mark.parametrize("samples", [1, 3])
def test_real_model_fast_greedy_equals_plain_hf_greedy(samples):
    model, tokenizer = load_causal_lm("default"), load_tokenizer("default")
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                      add_generation_prompt=True)
        for content in ("What is the capital of France?", "Write one sentence about autumn leaves, please.")
    ]
    ours = generate(model, tokenizer, prompts, samples_per_prompt=samples,
                    decoding=decoding_preset("greedy", max_new_tokens=24), batch_size=6, progress=False)
    for prompt, per_prompt in zip(prompts, ours, strict=True):
        reference = _plain_hf_greedy(model, tokenizer, prompt, 24)
        assert all(g.token_ids == reference for g in per_prompt)
        assert len(reference) > 5


@pytest.mark.slow
def test_real_model_logprobs_equal_a_plain_forward():
    model, tokenizer = load_causal_lm("default"), load_tokenizer("default")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Name a fruit."}], tokenize=False,
                                           add_generation_prompt=True)
    out = generate(model, tokenizer, [prompt], samples_per_prompt=4, decoding=DecodingConfig(max_new_tokens=16),
                   seed=3, progress=False, return_logprobs=True)[0]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    for g in out:
        ids = torch.tensor([prompt_ids + g.token_ids])
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
        expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(g.token_ids)[:, None]).squeeze(1)
        torch.testing.assert_close(torch.tensor(g.logprobs), expected, atol=1e-4, rtol=0)


def test_fast_sampler_runs_a_lora_policy_like_hf(tiny):
    """PPO samples from a PEFT LoRA policy: the fast loop must go through the adapter like HF does."""
    from rlhf_lab.models.policy import make_trainable

    model, tokenizer = tiny
    policy = make_trainable(copy.deepcopy(model), "lora")
    with torch.no_grad():  # LoRA B starts at zero (adapter = identity): give it weight so it changes the tokens
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    kwargs = dict(samples_per_prompt=2, decoding=DIVERSE_GREEDY, batch_size=4, progress=False)
    fast = generate(policy, tokenizer, PROMPTS, **kwargs)
    assert fast == generate(policy, tokenizer, PROMPTS, sampler="hf", **kwargs)
    assert _ids(fast) != _ids(generate(model, tokenizer, PROMPTS, **kwargs))  # the adapter mattered
