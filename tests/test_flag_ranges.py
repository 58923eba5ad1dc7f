"""Out-of-range flag values are rejected up front: exit 2, one stderr line naming the flag, nothing written.

Every case runs the real CLI entry point in-process (``rlhf_lab.cli.main``): the config's ``validate()`` runs
before a recipe's ``run()``, so no model loads and nothing touches the disk. The valid boundary values at the
end are checked with ``make_config`` (validation only, no training).
"""

import importlib
import json

import pytest

from rlhf_lab.cli import VERBS, main
from rlhf_lab.config import make_config

# The flags a verb needs to get past its "give me X" checks; the paths need not exist (validate does not read
# them). "{out}" is a path under the test's empty tmp dir: the test asserts nothing appears there.
BASE: dict[str, list[str]] = {
    "generate": ["--output_dir", "{out}"],
    "sft": ["--output_dir", "{out}"],
    "train-rm": ["--output_dir", "{out}"],
    "score": ["--model_name", "rm", "--input", "g.jsonl", "--output_dir", "{out}"],
    "eval-rm": ["--model_name", "rm", "--output_dir", "{out}"],
    "carto": ["--run_dir", "{out}"],
    "bon": ["--scores", "s.jsonl", "--output_dir", "{out}"],
    "bon-study": ["--gold_model_name", "gold", "--output_dir", "{out}"],
    "ppo": ["--reward_models", "rm", "--output_dir", "{out}"],
    "grpo": ["--reward_models", "rm", "--output_dir", "{out}"],
    "gold-eval": ["--run_dir", "{out}", "--gold_model_name", "gold"],
    "raft": ["--reward_models", "rm", "--output_dir", "{out}"],
    "dpo": ["--output_dir", "{out}"],
    "merge": ["--tuned", "tuned", "--output_dir", "{out}"],
    "ama": ["--tuned", "tuned", "--dataset", "d.jsonl", "--output_dir", "{out}"],
    "pareto": ["--tuned", "tuned", "--reward_models", "rm", "--output_dir", "{out}"],
    "evaluate": ["--model_name", "m", "--output_dir", "{out}"],
    "report": ["--run_dir", "{out}"],
    "demo": ["--output_dir", "{out}"],
    "verify": [],
}

TRAINING_VERBS = ("sft", "train-rm", "ppo", "grpo", "raft", "dpo", "ama")
LORA_VERBS = ("sft", "train-rm", "ppo", "grpo", "raft", "dpo")
DATA_VERBS = ("generate", "sft", "train-rm", "eval-rm", "ppo", "grpo", "raft", "dpo", "ama", "evaluate")

# (verb, flag, bad value, extra flags needed to reach the check)
BAD: list[tuple[str, str, str, tuple[str, ...]]] = [
    # --- flags every training verb shares (engine.TrainArgs) -------------------------------------------
    *[(verb, flag, value, ()) for verb in TRAINING_VERBS for flag, value in [
        ("learning_rate", "-0.0001"), ("learning_rate", "0"), ("per_device_train_batch_size", "0"),
        ("gradient_accumulation_steps", "0"), ("num_train_epochs", "0"), ("max_steps", "-1"),
        ("warmup_steps", "-1"), ("weight_decay", "-0.01"), ("adam_beta1", "1"), ("adam_beta2", "-0.1"),
        ("adam_epsilon", "0"), ("max_grad_norm", "-1"), ("logging_steps", "0"), ("save_steps", "-1"),
        ("save_total_limit", "0"), ("seed", "-1"), ("seed", str(2**32)), ("learning_rate", "nan"),
        ("learning_rate", "inf")]],
    *[(verb, "num_train_epochs", "-1", ("--max_steps", "5")) for verb in TRAINING_VERBS],
    *[(verb, flag, value, ()) for verb in LORA_VERBS for flag, value in [
        ("lora_r", "0"), ("lora_alpha", "0"), ("lora_dropout", "1"), ("lora_dropout", "-0.1")]],
    *[(verb, "limit", value, ()) for verb in DATA_VERBS for value in ("0", "-3")],
    # --- generate (and evaluate, which inherits its decoding flags) -----------------------------------
    *[(verb, flag, value, ()) for verb in ("generate", "evaluate") for flag, value in [
        ("samples_per_prompt", "0"), ("max_new_tokens", "0"), ("temperature", "0"), ("temperature", "-1"),
        ("temperature", "nan"), ("top_p", "0"), ("top_p", "1.5"), ("top_k", "-1"), ("repetition_penalty", "0"),
        ("generation_batch_size", "0"), ("bottom", "-1"), ("top", "0"), ("seed", "-1")]],
    ("generate", "top", "5", ("--bottom", "5")),
    ("generate", "preset", "wild", ()),
    # --- sft -------------------------------------------------------------------------------------------
    ("sft", "max_length", "4", ()), ("sft", "eval_limit", "-1", ()), ("sft", "eval_steps", "-1", ()),
    ("sft", "trainable", "everything", ()),
    # --- train-rm --------------------------------------------------------------------------------------
    ("train-rm", "trainable", "everything", ()), ("train-rm", "trainable", "top:0", ()),
    ("train-rm", "trainable", "top:x", ()), ("train-rm", "trainable", "top:3", ("--num_layers", "2")),
    ("train-rm", "ensemble_size", "0", ()), ("train-rm", "ensemble_size", "3", ("--trainable", "full")),
    ("train-rm", "eval_limit", "-1", ()), ("train-rm", "eval_steps", "-1", ()), ("train-rm", "test_limit", "-1", ()), ("train-rm", "rand_ratio", "1.5", ()),
    ("train-rm", "rand_ratio", "-0.1", ()), ("train-rm", "score_l2", "-1", ()),
    ("train-rm", "center_rewards_coefficient", "-1", ()), ("train-rm", "num_layers", "0", ()),
    ("train-rm", "feature_batch_size", "0", ()), ("train-rm", "max_length", "7", ()),
    ("train-rm", "rng_seed", "-1", ()), ("train-rm", "margin", "nan", ()), ("train-rm", "feature_dtype", "int8", ()),
    # --- score / eval-rm / gold-eval -------------------------------------------------------------------
    ("score", "uwo_weight", "-0.1", ()), ("score", "ensemble_ddof", "2", ()), ("score", "reward_batch_size", "0", ()),
    ("score", "objective", "median", ()),
    ("eval-rm", "uwo_weight", "-1", ()), ("eval-rm", "reward_batch_size", "0", ()), ("eval-rm", "objective", "median", ()),
    ("eval-rm", "seed", "-1", ()),
    ("gold-eval", "reward_batch_size", "0", ()), ("gold-eval", "kl_estimator", "k9", ()),
    # --- carto -----------------------------------------------------------------------------------------
    ("carto", "upper", "nan", ()), ("carto", "lower", "1", ("--upper", "0")), ("carto", "lower", "0", ()),
    # --- bon -------------------------------------------------------------------------------------------
    ("bon", "big_n", "0", ()), ("bon", "ensemble_ddof", "2", ()), ("bon", "ensemble_ddof", "-1", ()), ("bon", "sample_ns", "0", ()),
    ("bon", "sample_ns", "1,two", ()), ("bon", "uwo_weights", "-1", ()), ("bon", "uwo_weights", "x", ()),
    ("bon", "objectives", "median", ()), ("bon", "objectives", "mean,median", ("--ensembles",)),
    # --- bon-study -------------------------------------------------------------------------------------
    *[("bon-study", flag, "0", ()) for flag in (
        "num_train_prompts", "num_eval_prompts", "max_new_tokens", "generation_batch_size", "ensemble_size",
        "reward_batch_size", "max_prompt_tokens", "proxy_num_layers", "proxy_epochs", "temperature")],
    ("bon-study", "train_samples", "3", ()), ("bon-study", "n_samples", "1", ()),
    ("bon-study", "label_noise", "0.5", ()), ("bon-study", "label_noise", "-0.1", ()),
    ("bon-study", "proxy_eval_fraction", "0", ()), ("bon-study", "proxy_eval_fraction", "1", ()),
    ("bon-study", "proxy_learning_rate", "-0.001", ()), ("bon-study", "proxy_trainable", "everything", ()),
    ("bon-study", "proxy_trainable", "full", ()),  # 4 members by default: they need a shared frozen trunk
    ("bon-study", "sample_ns", "64", ()),  # above --n_samples 32
    ("bon-study", "sample_ns", "0", ()), ("bon-study", "uwo_weights", "-0.5", ()),
    ("bon-study", "data_format", "csv", ()), ("bon-study", "seed", "-1", ()),
    ("bon-study", "confidence", "1", ()), ("bon-study", "confidence", "0", ()), ("bon-study", "bootstrap", "-1", ()),
    # --- ppo -------------------------------------------------------------------------------------------
    *[("ppo", flag, value, ()) for flag, value in [
        ("uwo_weight", "-1"), ("ensemble_ddof", "2"), ("cliprange_reward", "-1"), ("missing_eos_penalty", "-1"),
        ("num_mini_batches", "0"), ("ppo_epochs", "0"), ("max_new_tokens", "0"), ("max_prompt_length", "0"),
        ("temperature", "0"), ("cliprange", "0"), ("cliprange", "-0.2"), ("cliprange_value", "0"), ("vf_coef", "-1"),
        ("gamma", "0"), ("gamma", "1.5"), ("lam", "-0.1"), ("lam", "1.5"), ("init_kl_coef", "-0.1"),
        ("target", "0"), ("horizon", "0"), ("eval_interval", "-1"), ("num_eval_prompts", "-1"),
        ("eval_max_new_tokens", "0"), ("eval_temperature", "0"), ("eval_top_p", "0"), ("eval_top_p", "1.1"),
        ("reward_batch_size", "0"), ("len_only", "-1"), ("objective", "median"), ("kl_estimator", "k4")]],
    ("ppo", "len_only", "0", ("--reward", "len_only")),
    # --- raft ------------------------------------------------------------------------------------------
    *[("raft", flag, value, ()) for flag, value in [
        ("num_raft_iteration", "0"), ("raft_batch_size", "0"), ("top_reward_percentage", "0"),
        ("top_reward_percentage", "1.5"), ("output_min_length", "0"), ("output_max_length", "64"),
        ("max_prompt_length", "0"), ("temperature", "0"), ("generation_batch_size", "0"), ("uwo_weight", "-1"),
        ("ensemble_ddof", "2"), ("reward_batch_size", "0"), ("block_size", "4"), ("collection_strategy", "best")]],
    # --- dpo -------------------------------------------------------------------------------------------
    *[("dpo", flag, value, ()) for flag, value in [
        ("beta", "0"), ("beta", "-0.1"), ("label_smoothing", "0.5"), ("label_smoothing", "-0.1"),
        ("rdpo_alpha", "-1"), ("rrhf_weight", "-1"), ("rrhf_length_penalty", "-1"), ("max_length", "4"),
        ("eval_limit", "-1"), ("eval_steps", "-1"), ("ref_batch_size", "0"), ("rounds", "0"), ("uwo_weight", "-1"),
        ("prompts_per_round", "0"), ("max_new_tokens", "0"), ("temperature", "0"), ("generation_batch_size", "0"),
        ("loss", "kto-pair"), ("simpo_gamma", "-0.5"), ("cpo_alpha", "-1"), ("ld_alpha", "1.5"), ("ld_alpha", "-0.1"),
        ("desirable_weight", "0"), ("undesirable_weight", "-1")]],
    ("dpo", "simpo_gamma", "5", ("--loss", "simpo", "--beta", "0.1")),
    ("dpo", "label_with", "rm", ("--loss", "kto")),
    ("dpo", "per_device_train_batch_size", "1", ("--loss", "kto")),
    # --- merge / ama / pareto --------------------------------------------------------------------------
    ("merge", "alpha", "-0.1", ()), ("merge", "alpha", "1.1", ()), ("merge", "alpha", "nan", ()),
    ("merge", "max_shard_size_mb", "0", ()), ("merge", "partwise", "10#20|0.4|1.5|0.2", ()),
    ("merge", "partwise", "20#10|0.4|0.5|0.2", ()),
    ("ama", "init_val", "0", ()), ("ama", "init_val", "1", ()), ("ama", "epsilon", "-1", ()),
    ("ama", "reg_alpha", "-1", ()), ("ama", "max_length", "4", ()), ("ama", "mask_level", "block0", ()),
    ("ama", "sum_reg_type", "7", ()),
    *[("pareto", flag, value, ()) for flag, value in [
        ("alphas", "0,1.5"), ("alphas", "0,x"), ("partwise_alpha", "2"), ("partwise", "0|0.3|-0.5"),
        ("num_prompts", "0"), ("num_references", "-1"), ("samples_per_prompt", "0"), ("max_new_tokens", "0"),
        ("temperature", "0"), ("generation_batch_size", "0"), ("reward_batch_size", "0"), ("uwo_weight", "-1"),
        ("ensemble_ddof", "2"), ("objective", "median"), ("seed", "-1")]],
    # --- evaluate --------------------------------------------------------------------------------------
    ("evaluate", "uwo_weight", "-1", ()), ("evaluate", "ensemble_ddof", "2", ()), ("evaluate", "lc_l2", "-1", ()),
    ("evaluate", "reward_batch_size", "0", ()),
    ("evaluate", "judge_max_pairs", "0", ()), ("evaluate", "judge_timeout", "0", ()),
    ("evaluate", "objective", "median", ()),
    ("evaluate", "confidence", "1.5", ()), ("evaluate", "bootstrap", "-2", ()),
    # --- grpo ------------------------------------------------------------------------------------------
    *[("grpo", flag, value, ()) for flag, value in [
        ("num_generations", "0"), ("num_generations", "1"), ("per_device_train_batch_size", "6"),
        ("num_iterations", "0"), ("epsilon", "0"), ("epsilon", "1"), ("epsilon_high", "0"), ("beta", "-0.1"),
        ("beta", "nan"), ("temperature", "0"), ("max_new_tokens", "0"), ("num_mini_batches", "0"),
        ("reward_weights", "1,2"), ("reward_weights", "x"), ("uwo_weight", "-1"), ("reward_batch_size", "0"),
        ("advantage", "ppo"), ("loss_type", "sum"), ("kl_estimator", "k2"), ("eval_top_p", "0")]],
    ("grpo", "len_only", "0", ("--reward", "len_only")),
    ("grpo", "kl_in_reward", "true", ("--beta", "0")),
    # --- report / demo ---------------------------------------------------------------------------------
    ("report", "max_table_rows", "0", ()), ("report", "max_depth", "-1", ()),
    ("demo", "seed", "-1", ()), ("demo", "stages", "bon,nap", ()),
    ("verify", "run_dir", "", ()),
]


def _argv(verb: str, extra: tuple[str, ...], flag: str, value: str, out: str) -> list[str]:
    return [verb, *[a.replace("{out}", out) for a in BASE[verb]], *extra, f"--{flag}", value]


def _one_line_exit_2(argv: list[str], flag: str, tmp_path, capsys) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("rlhf-lab: error:") and f"--{flag}" in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(("verb", "flag", "value", "extra"), BAD,
                         ids=[f"{v}-{f}={x}{'+' + '_'.join(e) if e else ''}" for v, f, x, e in BAD])
def test_out_of_range_flag_exits_2_naming_it_and_writes_nothing(verb, flag, value, extra, tmp_path, capsys):
    out = tmp_path / "out"
    _one_line_exit_2(_argv(verb, extra, flag, value, str(out)), flag, tmp_path, capsys)
    assert list(tmp_path.iterdir()) == []  # no run directory, no config.yaml


def test_every_verb_is_covered():
    assert {verb for verb, *_ in BAD} == set(VERBS) == set(BASE)


def test_bon_sample_ns_above_n_is_rejected_before_the_run_directory(tmp_path, capsys):
    # N is known only once the scores are read; the check still comes before anything is written.
    scores = tmp_path / "s.jsonl"
    scores.write_text(json.dumps({"proxy_scores": [0.1, 0.3, 0.2], "gold_scores": [1, 2, 3]}) + "\n")
    line = _one_line_exit_2(["bon", "--scores", str(scores), "--output_dir", str(tmp_path / "out"),
                             "--sample_ns", "1,2,4"], "sample_ns", tmp_path, capsys)
    assert "4 > N = 3" in line
    assert not (tmp_path / "out").exists()


def _config(verb: str, values: dict):
    module, name, _ = VERBS[verb]
    return make_config(getattr(importlib.import_module(module), name), values)


REQUIRED = {"score": dict(model_name="rm", input="g.jsonl"), "eval-rm": dict(model_name="rm"),
            "bon-study": dict(gold_model_name="gold"), "ppo": dict(reward_models=["rm"]),
            "raft": dict(reward_models="rm"), "merge": dict(tuned="t"), "ama": dict(tuned="t", dataset="d"),
            "pareto": dict(tuned="t", reward_models=["rm"]), "evaluate": dict(model_name="m"),
            "bon": dict(scores="s.jsonl"), "carto": dict(run_dir="r"), "report": dict(run_dir="r"),
            "gold-eval": dict(run_dir="r", gold_model_name="g")}

# Valid values at the edge of each range: validation accepts them (nothing runs).
BOUNDARY: list[tuple[str, dict]] = [
    ("merge", dict(alpha=0.0)), ("merge", dict(alpha=1.0)), ("merge", dict(partwise="10#20|0|1|0.5")),
    ("pareto", dict(alphas="0,1", partwise_alpha=1.0, num_references=0)),
    ("raft", dict(top_reward_percentage=1.0, ensemble_ddof=0, uwo_weight=0.0, block_size=0)),
    ("raft", dict(top_reward_percentage=1e-3, output_min_length=1, output_max_length=2, block_size=8)),
    ("generate", dict(top_p=1.0, top_k=0, max_new_tokens=1, samples_per_prompt=1, generation_batch_size=1, limit=1,
                      bottom=0, top=1, temperature=1e-3, seed=0)),
    ("generate", dict(seed=2**32 - 1)),
    ("ppo", dict(gamma=1.0, lam=0.0, init_kl_coef=0.0, vf_coef=0.0, cliprange_reward=0.0, eval_top_p=1.0,
                 eval_interval=0, num_eval_prompts=0, uwo_weight=0.0, ensemble_ddof=0)),
    ("ppo", dict(lam=1.0, reward="len_only", len_only=1, reward_models=[])),
    ("dpo", dict(label_smoothing=0.0, rdpo_alpha=0.0, rrhf_weight=0.0, rrhf_length_penalty=0.0, max_length=8)),
    ("dpo", dict(label_smoothing=0.49, beta=1e-6)),
    ("dpo", dict(loss="simpo", beta=2.0, simpo_gamma=20.0, ld_alpha=0.0, cpo_alpha=0.0)),
    ("dpo", dict(loss="ld_dpo", ld_alpha=1.0, simpo_gamma=0.0)),
    ("sft", dict(lora_r=1, lora_alpha=1, lora_dropout=0.0, weight_decay=0.0, adam_beta1=0.0, adam_beta2=0.0,
                 max_grad_norm=0.0, eval_limit=0, eval_steps=0, max_length=8, per_device_train_batch_size=1)),
    ("sft", dict(lora_dropout=0.99, num_train_epochs=0.0, max_steps=1)),
    ("train-rm", dict(trainable="top:2", num_layers=2, rand_ratio=1.0, ensemble_size=3, eval_limit=0)),
    ("train-rm", dict(trainable="head", rand_ratio=0.0, rng_seed=2**32 - 5, ensemble_size=5)),
    ("train-rm", dict(trainable="full", margin=-0.5)),
    ("bon-study", dict(label_noise=0.0, proxy_eval_fraction=0.5, sample_ns="1,32", n_samples=32,
                       uwo_weights="0,0.5", proxy_trainable="top:1")),
    ("bon-study", dict(ensemble_size=1, proxy_trainable="full", train_samples=2, n_samples=2)),
    ("bon", dict(sample_ns="1", ensemble_ddof=1, uwo_weights="0", big_n=1, objectives="mean,wco")),
    ("eval-rm", dict(uwo_weight=0.0, objective="UWO", limit=1)),
    ("score", dict(uwo_weight=0.0, ensemble_ddof=1, reward_batch_size=1)),
    ("ama", dict(init_val=0.01, epsilon=0.0, reg_alpha=0.0)),
    ("ama", dict(init_val=0.99, mask_level="block1")),
    ("evaluate", dict(lc_l2=0.0, judge_max_pairs=1, ensemble_ddof=0, limit=1)),
    ("carto", dict(upper=0.0, lower=-1.0)),
    ("report", dict(max_depth=0, max_table_rows=1)),
    ("demo", dict(seed=0, stages="report")),
]


@pytest.mark.parametrize(("verb", "values"), BOUNDARY, ids=[f"{v}-{'-'.join(d)}" for v, d in BOUNDARY])
def test_boundary_values_are_accepted(verb, values):
    config = _config(verb, {**REQUIRED.get(verb, {}), **values})
    for key, value in values.items():
        assert getattr(config, key) == value
