"""RAFT: ranking on hand-made reward tables, the clean/discard hooks, the per-prompt length draw, the logged
rewards against the saved samples, and a killed run that resumes to the uninterrupted run's weights."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rlhf_lab.config import make_config
from rlhf_lab.data.raft_hooks import clean_text, discard_sample, load_hook, template_markers
from rlhf_lab.engine import RunFailure
from rlhf_lab.errors import UserError
from rlhf_lab.io import read_jsonl
from rlhf_lab.recipes import raft, reward_model

# ---------------------------------------------------------------------------------------------------------
# Ranking
# ---------------------------------------------------------------------------------------------------------


def test_local_keeps_the_best_non_discarded_sample_of_each_prompt():
    rewards = np.array([
        [0.1, 0.9, 0.5, 0.3],    # best is sample 1
        [2.0, 1.0, 3.0, -1.0],   # best (3.0) is discarded -> sample 0 (2.0)
        [0.4, 0.4, 0.2, 0.1],    # tie -> the first, as np.argmax
        [5.0, 6.0, 7.0, 8.0],    # all discarded -> prompt skipped
        [-3.0, -2.0, -9.0, -1.5],  # negatives: sample 3
    ])
    discarded = np.zeros_like(rewards, dtype=bool)
    discarded[1, 2] = True
    discarded[3, :] = True
    assert raft.select_local(rewards, discarded) == [(0, 1), (1, 0), (2, 0), (4, 3)]


def test_top_keeps_the_alpha_fraction_with_the_highest_rewards_globally():
    rewards = np.array([0.3, 2.0, -1.0, 1.5, 2.0, 0.7, 9.0, 0.0, 1.0, 1.4])
    discarded = np.zeros(10, dtype=bool)
    discarded[6] = True  # the best reward, but discarded: never kept
    # int(10 · 0.4) = 4 kept: 2.0 (prompt 1), 2.0 (prompt 4, a tie: the earlier prompt first), 1.5, 1.4
    assert raft.select_top(rewards, discarded, 0.4) == [1, 4, 3, 9]
    assert raft.select_top(rewards, discarded, 0.25) == [1, 4]  # int(2.5) = 2
    assert raft.select_top(rewards, np.ones(10, dtype=bool), 0.5) == []
    few = np.array([True] * 8 + [False, False])  # only 2 survive: fewer than int(P·α) are kept
    assert raft.select_top(rewards, few, 0.5) == [9, 8]


def _config(**over):
    values = dict(model_name="tiny-random", reward_models="/nonexistent/rm", output_dir="/tmp/unused")
    values.update(over)
    return make_config(raft.RaftConfig, values)


@pytest.mark.parametrize("alpha,k", [(0.2, 5), (0.125, 8), (1 / 3, 3), (0.5, 2), (1.0, 1), (0.3, 3)])
def test_local_draws_int_one_over_alpha_samples_and_top_one_over_alpha_prompts(alpha, k):
    local = _config(top_reward_percentage=alpha, raft_batch_size=12)
    assert (local.samples_per_prompt, local.prompts_per_iteration) == (k, 12)
    top = _config(top_reward_percentage=alpha, raft_batch_size=12, collection_strategy="top")
    assert top.samples_per_prompt == 1
    assert top.prompts_per_iteration == int(round(12 / alpha, 6))


@pytest.mark.parametrize("over,flag", [
    (dict(top_reward_percentage=0.0), "top_reward_percentage"),
    (dict(top_reward_percentage=1.5), "top_reward_percentage"),
    (dict(output_min_length=16, output_max_length=16), "output_max_length"),
    (dict(reward_models=""), "reward_models"),
    (dict(num_raft_iteration=0), "num_raft_iteration"),
])
def test_bad_values_are_rejected_naming_the_flag(over, flag):
    with pytest.raises(UserError, match=f"--{flag}"):
        _config(**over)


def test_prompt_stream_is_consecutive_and_reshuffles_when_exhausted():
    first = [raft.iteration_prompts(10, 4, t, seed=3) for t in range(2)]
    assert len(set(first[0] + first[1])) == 8  # no prompt twice within a pass
    third = raft.iteration_prompts(10, 4, 2, seed=3)  # positions 8..11: two left of pass 0, two of pass 1
    assert set(first[0] + first[1] + third[:2]) == set(range(10))
    assert raft.iteration_prompts(10, 4, 1, seed=3) == first[1]  # a pure function of (seed, iteration)


def test_max_new_tokens_are_drawn_in_the_half_open_range():
    draws = [v for t in range(50) for v in raft.max_new_tokens_draw(40, 5, 9, seed=0, iteration=t)]
    assert set(draws) == {5, 6, 7, 8}  # both ends reached, the upper bound never
    assert raft.max_new_tokens_draw(40, 5, 9, 0, 7) == raft.max_new_tokens_draw(40, 5, 9, 0, 7)


def test_finetune_batches_cover_every_example_epochs_times():
    batches = raft.finetune_batches(10, 4, epochs=2.0, max_steps=0, seed=1)
    assert len(batches) == 5 and all(len(b) == 4 for b in batches)  # ceil(2 · 10 / 4)
    seen = np.bincount([i for b in batches for i in b], minlength=10)
    assert seen.tolist() == [2] * 10  # no example dropped, none seen a third time
    assert len(raft.finetune_batches(3, 4, epochs=4.0, max_steps=0, seed=1)) == 3  # fewer examples than a batch
    assert len(raft.finetune_batches(10, 4, epochs=2.0, max_steps=7, seed=1)) == 7


# ---------------------------------------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------------------------------------


def test_default_hooks_reproduce_the_seed_on_its_template():
    ctx = template_markers("lmflow")
    assert clean_text(" Sure, here you go.###Human: thanks###Assistant: np", ctx) == "Sure, here you go."
    assert clean_text("Fine. ##", ctx) == "Fine."  # .strip().strip("#")
    assert not discard_sample("Sure, here you go.", ctx)
    assert discard_sample("a # in the middle", ctx)  # the stray '#' the seed's authors found the RM ignored
    assert discard_sample("x", ctx) and discard_sample("", ctx)  # shorter than 2 characters
    # the first assistant turn is empty when the model opens with a human turn (the seed kept the human's text)
    assert clean_text("###Human: what about me?", ctx) == ""


def test_default_hooks_on_the_chat_and_hh_templates(tiny_tokenizer):
    chat = template_markers("chat", tiny_tokenizer)
    assert "<|im_start|>" in chat.markers and "<|endoftext|>" in chat.markers
    assert clean_text(" Hello there!<|im_end|>\n<|im_start|>user\nmore", chat) == "Hello there!"
    assert discard_sample("Hi<|endoftext|>", chat) and not discard_sample("Hi # there", chat)
    hh = template_markers("hh")
    assert clean_text(" Paris.\n\nHuman: and Spain?\n\nAssistant: Madrid.", hh) == "Paris."
    assert discard_sample("Paris. Assistant: yes", hh) and not discard_sample("Paris.", hh)
    raw = template_markers("raw")
    assert clean_text("  a\n\nHuman: b ", raw) == "a\n\nHuman: b" and not discard_sample("ab", raw)


def test_a_custom_hook_by_module_name_or_file(tmp_path, monkeypatch):
    (tmp_path / "my_hooks.py").write_text(
        "def shout(text, context):\n    return text.upper() + '|' + context.template\n"
        "def seedlike(text):\n    return 'bad' in text\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ctx = template_markers("hh")
    assert load_hook("my_hooks:shout", "clean_text")("hi", ctx) == "HI|hh"
    assert load_hook(f"{tmp_path / 'my_hooks.py'}:shout", "clean_text")("yo", ctx) == "YO|hh"
    discard = load_hook("my_hooks:seedlike", "discard_sample")  # one-argument hooks, as the seed's methods
    assert discard("so bad", ctx) and not discard("good", ctx)
    assert load_hook("none", "discard_sample")("#", ctx) is False
    assert load_hook("none", "clean_text")(" as is ", ctx) == " as is "
    config = _config(clean_text="my_hooks:shout", discard_sample="my_hooks:seedlike")
    clean, _ = config.hooks()
    assert clean("a", ctx) == "A|hh"


@pytest.mark.parametrize("spec,message", [
    ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
    ("rlhf_lab.data.raft_hooks:nope", "has no 'nope'"),
    ("justaname", "not of the form module:function"),
    ("/nonexistent/hooks.py:f", "no such file"),
    ("rlhf_lab.data.raft_hooks:MIN_CHARS", "is not callable"),
])
def test_a_bad_hook_name_is_a_one_line_user_error(spec, message):
    with pytest.raises(UserError, match=message) as info:
        _config(discard_sample=spec)
    assert "--discard_sample" in str(info.value) and "\n" not in str(info.value)


def test_fine_tuning_text_ends_the_turn_only_when_the_model_did(tiny_tokenizer):
    parts = raft.response_parts("chat", tiny_tokenizer)
    assert parts == ("", "<|im_end|>\n")
    prompt = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    n_prompt = len(tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"])
    ended = raft.tokenize_kept(prompt, "Hello.", True, tiny_tokenizer, parts, "all")
    cut = raft.tokenize_kept(prompt, "Hello.", False, tiny_tokenizer, parts, "response")
    assert tiny_tokenizer.decode(ended.input_ids).endswith("Hello.<|im_end|>\n")
    assert tiny_tokenizer.decode(cut.input_ids).endswith("Hello.")
    assert ended.loss_mask == [1] * len(ended.input_ids)  # the seed: loss on prompt and reply
    assert cut.loss_mask == [0] * n_prompt + [1] * (len(cut.input_ids) - n_prompt)


# ---------------------------------------------------------------------------------------------------------
# End to end on tiny-random
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A prompt file and a 2-member reward model (heads on tiny-random's frozen trunk)."""
    root = tmp_path_factory.mktemp("raft")
    topics = ["cats", "tea", "rain", "maps", "jazz", "bread", "chess", "snow", "boats", "clocks", "bees", "kites"]
    pairs = [{"prompt": f"Tell me about {t}.", "chosen": f"Sure! {t} are wonderful.", "rejected": f"No. Not {t}."}
             for t in topics * 2]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    prompts = [{"prompt": f"Say something about {t}."} for t in topics * 2]
    (root / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prompts))
    (root / "hooks.py").write_text("def odd_length(text, context):\n    return len(text) % 2 == 1\n")
    reward_model.run(make_config(reward_model.RewardModelConfig, dict(
        model_name="tiny-random", dataset=str(root / "pairs.jsonl"), split="all", output_dir=str(root / "rm"),
        trainable="head", ensemble_size=2, max_steps=2, per_device_train_batch_size=8, eval_limit=4,
        eval_dataset=str(root / "pairs.jsonl"), progress=False, learning_rate=1e-2)))
    return root


def _args(setup, out, **over):
    args = dict(model_name="tiny-random", reward_models=str(setup / "rm"), dataset=str(setup / "prompts.jsonl"),
                split="all", output_dir=str(out), num_raft_iteration=2, raft_batch_size=4,
                top_reward_percentage=0.25, output_min_length=3, output_max_length=9, num_train_epochs=1,
                per_device_train_batch_size=2, learning_rate=1e-3, generation_batch_size=8, progress=False,
                discard_sample=f"{setup / 'hooks.py'}:odd_length", seed=5)
    args.update(over)
    return args


@pytest.mark.parametrize("strategy", ["local", "top"])
def test_run_logs_what_its_saved_samples_say(setup, tmp_path, strategy):
    args = _args(setup, tmp_path / strategy, collection_strategy=strategy, objective="WCO",
                 final_eval=strategy == "local")
    raft.run(make_config(raft.RaftConfig, args))
    config = make_config(raft.RaftConfig, {**args, "output_dir": str(tmp_path / "x")})
    rows = {r["step"]: r for r in read_jsonl(tmp_path / strategy / "metrics.jsonl")}
    assert sorted(rows) == ([0, 1, 2] if strategy == "local" else [0, 1])  # + the final evaluation (local)
    assert rows[1]["optimizer_steps"] > rows[0]["optimizer_steps"] > 0  # one optimizer across iterations
    for t in (0, 1):
        samples = read_jsonl(tmp_path / strategy / "samples" / f"iter_{t}.jsonl")
        assert len(samples) == config.prompts_per_iteration
        assert all(len(s["responses"]) == config.samples_per_prompt for s in samples)
        rewards = np.array([s["rewards"] for s in samples])
        discarded = np.array([s["discarded"] for s in samples])
        for s in samples:
            assert 3 <= s["max_new_tokens"] < 9 and max(s["num_tokens"]) <= s["max_new_tokens"]
            for text, member, reward, gone in zip(s["responses"], s["member_scores"], s["rewards"],
                                                  s["discarded"], strict=True):
                assert len(member) == 2 and reward == pytest.approx(min(member))  # WCO of 2 members
                assert gone == (len(text) % 2 == 1)  # the custom discard hook ran on every sample
        # the kept set is exactly what the ranking of the saved rewards picks, and never a discarded sample
        if strategy == "local":
            expected = raft.select_local(rewards, discarded)
        else:
            expected = [(p, 0) for p in raft.select_top(rewards[:, 0], discarded[:, 0], 0.25)]
        kept = [(p, k) for p, s in enumerate(samples) for k, flag in enumerate(s["kept"]) if flag]
        assert sorted(kept) == sorted(expected) and not any(discarded[p, k] for p, k in kept)
        train_set = read_jsonl(tmp_path / strategy / f"train_set_{t}.jsonl")
        assert sorted((r["prompt_position"], r["sample_index"]) for r in train_set) == sorted(expected)
        assert rows[t]["reward/first_sample"] == pytest.approx(rewards[:, 0].mean(), abs=1e-6)
        assert rows[t]["kept"] == len(expected)
        if expected:
            assert rows[t]["reward/kept"] == pytest.approx(np.mean([rewards[p, k] for p, k in expected]), abs=1e-6)
    assert (tmp_path / strategy / "plots" / "raft_reward.png").stat().st_size > 0
    assert (tmp_path / strategy / "plots" / "raft_diversity.png").stat().st_size > 0


def test_a_nan_reward_stops_the_run_naming_it_and_the_last_good_checkpoint(setup, tmp_path, monkeypatch):
    calls = []

    def nan_in_second_iteration(scores, *args, **kwargs):
        calls.append(1)
        combined = raft_combine(scores, *args, **kwargs)
        return combined * float("nan") if len(calls) == 2 else combined

    raft_combine = raft.combine_scores
    monkeypatch.setattr(raft, "combine_scores", nan_in_second_iteration)
    with pytest.raises(RunFailure, match=r"reward \(RAFT iteration 1, prompt \d+\) is not finite.*step-1"):
        raft.run(make_config(raft.RaftConfig, _args(setup, tmp_path / "nan")))
    assert (tmp_path / "nan" / "checkpoints" / "step-1" / "state.json").is_file()
    assert not (tmp_path / "nan" / "model").exists()


def _cli(args: dict, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "rlhf_lab.cli", "raft"]
    for k, v in args.items():
        argv += [f"--{k}", str(v)]
    return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env_extra or {})},
                          timeout=600)


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_runs_weights_and_metrics(setup, tmp_path):
    common = _args(setup, tmp_path, num_raft_iteration=2, save_total_limit=2)
    raft.run(make_config(raft.RaftConfig, {**common, "output_dir": str(tmp_path / "straight")}))

    killed = _cli({**common, "output_dir": tmp_path / "killed"}, {"RLHF_LAB_FAULT": "after_save:1"})
    assert killed.returncode == -9  # SIGKILL right after the checkpoint of iteration 0 (1 done)
    assert not (tmp_path / "killed" / "model").exists()
    resumed = _cli({**common, "output_dir": tmp_path / "killed", "resume": "true"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr and "at iteration 1" in resumed.stderr

    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=0), name
    straight = read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    resumed_rows = read_jsonl(tmp_path / "killed" / "metrics.jsonl")
    assert [r["step"] for r in resumed_rows] == [r["step"] for r in straight] == [0, 1, 2]
    for s, r in zip(straight, resumed_rows, strict=True):
        for key in ("reward/first_sample", "reward/kept", "loss", "distinct_2", "response_length"):
            if key in s:
                assert abs(s[key] - r[key]) <= 1e-6, (s["step"], key)
    for t in range(2):
        sets = [read_jsonl(tmp_path / run / f"train_set_{t}.jsonl") for run in ("straight", "killed")]
        assert [r["response"] for r in sets[0]] == [r["response"] for r in sets[1]]
        assert np.allclose([r["reward"] for r in sets[0]], [r["reward"] for r in sets[1]], atol=1e-6, rtol=0)
