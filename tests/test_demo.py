"""The demo: its stage configs are valid for their recipes, the paper preset writes loadable configs, and the
whole study runs end to end on tiny-random (every stage, the report last)."""

import dataclasses
import importlib
import json

import pytest
import yaml

from rlhf_lab.cli import VERBS
from rlhf_lab.config import make_config
from rlhf_lab.recipes import demo

STAGE_CONFIGS = {"bon": "bon-study", "ppo": "ppo", "dpo": "dpo", "raft": "raft", "merge": "pareto",
                 "evaluate": "evaluate"}


def _fields(verb):
    module, name, _ = VERBS[verb]
    return {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name))}


@pytest.mark.parametrize("stage", sorted(demo.SMALL))
def test_small_preset_keys_are_the_recipes_flags(stage):
    assert set(demo.SMALL[stage]) <= _fields(STAGE_CONFIGS[stage])


def test_paper_preset_writes_configs_of_real_flags(tmp_path):
    demo.run(make_config(demo.DemoConfig, dict(output_dir=str(tmp_path / "d"), preset="paper")))
    for verb in demo.PAPER:
        values = yaml.safe_load((tmp_path / "d" / "configs" / f"{verb}.yaml").read_text())
        assert values == demo.PAPER[verb] and set(values) <= _fields(verb)
        module, name, _ = VERBS[verb]
        required = {"ppo": dict(reward_models=["rm"]), "bon-study": dict(gold_model_name="gold"),
                    "raft": dict(reward_models="rm")}  # the paths a user adds
        make_config(getattr(importlib.import_module(module), name), {**values, **required.get(verb, {})})


@pytest.mark.slow
def test_demo_end_to_end_on_tiny_random(tmp_path, monkeypatch, tiny_gold_rm):
    tiny = {stage: dict(values) for stage, values in demo.SMALL.items()}
    tiny["bon"].update(num_train_prompts=24, proxy_num_layers=None, n_samples=8, num_eval_prompts=4)
    tiny["ppo"].update(max_steps=2, eval_interval=1, num_eval_prompts=2, per_device_train_batch_size=4)
    tiny["dpo"].update(max_steps=2, eval_limit=8, limit=16)
    tiny["raft"].update(raft_batch_size=4)
    tiny["merge"].update(partwise=["0|0.3|0.5"], num_prompts=2, num_references=4)
    tiny["evaluate"].update(limit=3)
    monkeypatch.setattr(demo, "SMALL", tiny)
    out = tmp_path / "demo"
    timings = demo.run(make_config(demo.DemoConfig, dict(output_dir=str(out), model_name="tiny-random",
                                                        gold_model_name=tiny_gold_rm)))
    assert set(timings) == {"bon", "ppo-single", "ppo-uwo", "dpo", "raft", "merge", "evaluate-base", "evaluate",
                            "report"}
    summary = json.loads((out / "demo_summary.json").read_text())
    assert set(summary["bon"]) >= {"ensemble_mean", "ensemble_WCO", "ensemble_UWO-0.5"}
    assert summary["total_s"] == pytest.approx(sum(timings.values()))
    html = (out / "report.html").read_text()
    assert "<img" in html and "bon" in html.lower() and "ppo" in html.lower()
    # the demo prints bon-study's findings, and the report opens with them
    assert len(summary["bon_findings"]) == 4 and all(" shown — " in f for f in summary["bon_findings"])
    assert html.index('id="findings"') < html.index("<h2>summary</h2>")


def test_study_preset_keys_are_the_recipes_flags():
    study = demo.STUDY
    assert demo.DemoConfig(preset="study").stage_list() == ["bon", "ppo", "length", "evaluate", "report"]
    assert set(study["bon"]) <= _fields("bon-study") and set(study["evaluate"]) <= _fields("evaluate")
    assert set(study["ppo"]) - {"seeds"} <= _fields("ppo") and len(study["ppo"]["seeds"]) >= 3
    for variant in study["length"]["variants"].values():
        assert set(study["length"]["train"]) | set(variant or {}) <= _fields("train-rm")
    assert set(study["length"]["eval"]) <= _fields("eval-rm")
    # the sizes the findings need (docs/study.md): N = 256 on 128 prompts, 64 RL eval prompts × 2, ≥ 300 RM pairs
    assert study["bon"]["n_samples"] >= 256 and study["bon"]["num_eval_prompts"] >= 128
    assert study["ppo"]["num_eval_prompts"] * study["ppo"]["eval_samples_per_prompt"] >= 128
    assert 2110 - study["length"]["eval"]["bottom"] >= 300 > study["length"]["train"]["top"] - 1700


@pytest.mark.slow
def test_study_preset_end_to_end_on_tiny_random(tmp_path, monkeypatch, tiny_gold_rm):
    """The study's stages at toy sizes: PPO per seed and arm, the RL findings across seeds, the length stage's
    reward models compared pair by pair, evaluate's length share — all in the demo's findings and the report."""
    tiny = {stage: (dict(values) if isinstance(values, dict) else values) for stage, values in demo.STUDY.items()}
    tiny["bon"].update(num_train_prompts=24, proxy_num_layers=None, n_samples=8, num_eval_prompts=4,
                       max_prompt_tokens=128, generation_batch_size=32)
    tiny["ppo"].update(seeds=[0, 1], max_steps=2, eval_interval=1, num_eval_prompts=3, per_device_train_batch_size=4)
    tiny["length"] = {"train": dict(demo.STUDY["length"]["train"], top=48, max_length=256,
                                    per_device_train_batch_size=2),
                      "variants": demo.STUDY["length"]["variants"],
                      "eval": dict(demo.STUDY["length"]["eval"], bottom=2000, top=2030)}
    tiny["evaluate"].update(limit=3, max_new_tokens=8)
    monkeypatch.setattr(demo, "STUDY", tiny)
    out = tmp_path / "study"
    timings = demo.run(make_config(demo.DemoConfig, dict(output_dir=str(out), preset="study",
                                                        model_name="tiny-random", gold_model_name=tiny_gold_rm)))
    assert set(timings) == {"bon", "ppo-single-seed0", "ppo-uwo-seed0", "ppo-single-seed1", "ppo-uwo-seed1",
                            "length", "evaluate-base", "evaluate", "report"}
    from rlhf_lab.eval.findings import read_findings
    from rlhf_lab.eval.runs import read_eval_table, rl_fall

    own = {f.key: f for f in read_findings(out / "findings.json")}
    assert set(own) == {"rl/single_proxy_overoptimized", "rl/UWO_vs_single_at_matched_kl"}
    fall = rl_fall([read_eval_table(out / f"ppo-single-seed{s}") for s in (0, 1)], seed=0)
    assert own["rl/single_proxy_overoptimized"].estimate == pytest.approx(fall["across_seeds"]["diff"])
    assert "over the 2 seeds" in own["rl/single_proxy_overoptimized"].design
    assert (out / "plots" / "rl_gold_vs_kl.png").stat().st_size > 0
    length = json.loads((out / "length" / "eval" / "eval_rm.json").read_text())
    assert length["pairs"] == 30 and [c["a"].rsplit("/", 1)[-1] for c in length["comparisons"]] == [
        "balance_len", "rand_ratio"]
    summary = json.loads((out / "demo_summary.json").read_text())
    keys = [s.split(":")[0] for s in summary["findings"]]
    # bon 4, RL 2, eval-rm 3 gaps + 2 comparisons, evaluate: gold, proxy, length and the 2 length shares
    assert len(summary["findings"]) == 4 + 2 + 3 + 2 + 5
    assert any("less often than" in s for s in summary["findings"]) and len(keys) == len(summary["findings"])
    assert any(s.startswith("part of the gold reward gain over the baseline is length") for s in summary["findings"])
    html = (out / "report.html").read_text()
    assert html.count('<div class="finding ') == len(summary["findings"])  # one panel per finding, every stage
