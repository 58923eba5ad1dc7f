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
