"""The demo: its stage configs are valid for their recipes, the paper preset writes loadable configs, and the
whole study runs end to end on tiny-random (every stage, the report last)."""

import dataclasses
import fcntl
import importlib
import json

import pytest
import yaml

from rlhf_lab.cli import VERBS
from rlhf_lab.config import make_config
from rlhf_lab.recipes import demo

STAGE_CONFIGS = {"bon": "bon-study", "ppo": "ppo", "grpo": "grpo", "dpo": "dpo", "raft": "raft", "merge": "pareto",
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
    assert demo.DemoConfig(preset="study").stage_list() == ["bon", "ppo", "grpo", "length", "evaluate", "report"]
    assert set(study["bon"]) <= _fields("bon-study") and set(study["evaluate"]) <= _fields("evaluate")
    for rl in ("ppo", "grpo"):
        assert set(study[rl]) - {"seeds"} <= _fields(rl) and study[rl]["seeds"] == [0, 1, 2]
        module, name, _ = VERBS[rl]  # the values validate (e.g. GRPO's batch holds whole groups)
        make_config(getattr(importlib.import_module(module), name),
                    {**{k: v for k, v in study[rl].items() if k != "seeds"}, "reward_models": ["rm"]})
    # both algorithms are evaluated alike: the same eval prompts, answers and steps
    for key in ("max_steps", "eval_interval", "num_eval_prompts", "eval_samples_per_prompt", "max_new_tokens",
                "max_prompt_length"):
        assert study["grpo"][key] == study["ppo"][key], key
    assert study["grpo"]["per_device_train_batch_size"] == 4 * study["grpo"]["num_generations"] == 16
    for variant in study["length"]["variants"].values():
        assert set(study["length"]["train"]) | set(variant or {}) <= _fields("train-rm")
    assert set(study["length"]["eval"]) <= _fields("eval-rm")
    # the sizes the findings need (docs/study.md): N = 256 on 128 prompts, 64 RL eval prompts × 2, ≥ 300 RM pairs
    assert study["bon"]["n_samples"] >= 256 and study["bon"]["num_eval_prompts"] >= 128
    assert study["ppo"]["num_eval_prompts"] * study["ppo"]["eval_samples_per_prompt"] >= 128
    assert study["grpo"]["num_eval_prompts"] * study["grpo"]["eval_samples_per_prompt"] >= 128
    assert 2110 - study["length"]["eval"]["bottom"] >= 300 > study["length"]["train"]["top"] - 1700


@pytest.mark.slow
def test_study_preset_end_to_end_on_tiny_random(tmp_path, monkeypatch, tiny_gold_rm):
    """The study's stages at toy sizes: PPO and GRPO per seed and arm, their findings across seeds, the length
    stage's reward models compared pair by pair, evaluate's length share — all in the demo's findings and the
    report."""
    tiny = {stage: (dict(values) if isinstance(values, dict) else values) for stage, values in demo.STUDY.items()}
    tiny["bon"].update(num_train_prompts=24, proxy_num_layers=None, n_samples=8, num_eval_prompts=4,
                       max_prompt_tokens=128, generation_batch_size=32)
    tiny["ppo"].update(seeds=[0, 1], max_steps=2, eval_interval=1, num_eval_prompts=3, per_device_train_batch_size=4)
    tiny["grpo"].update(seeds=[0, 1], max_steps=2, eval_interval=1, num_eval_prompts=3, num_generations=2,
                        per_device_train_batch_size=4, max_new_tokens=8)
    tiny["length"] = {"train": dict(demo.STUDY["length"]["train"], top=48, max_length=256,
                                    per_device_train_batch_size=2),
                      "variants": demo.STUDY["length"]["variants"],
                      "eval": dict(demo.STUDY["length"]["eval"], bottom=2000, top=2030)}
    tiny["evaluate"].update(limit=3, max_new_tokens=8)
    monkeypatch.setattr(demo, "STUDY", tiny)
    out = tmp_path / "study"
    timings = demo.run(make_config(demo.DemoConfig, dict(output_dir=str(out), preset="study",
                                                        model_name="tiny-random", gold_model_name=tiny_gold_rm)))
    assert set(timings) == {"bon", *(f"{rl}-{arm}-seed{s}" for rl in ("ppo", "grpo") for arm in ("single", "uwo")
                                     for s in (0, 1)), "length", "evaluate-base", "evaluate", "report"}
    from rlhf_lab.eval.findings import read_findings
    from rlhf_lab.eval.runs import read_eval_table, rl_fall

    own = {f.key: f for f in read_findings(out / "findings.json")}
    assert list(own) == [f"{rl}/{what}" for rl in ("ppo", "grpo")
                         for what in ("single_proxy_overoptimized", "UWO_vs_single_at_matched_kl")]
    for rl in ("ppo", "grpo"):
        fall = rl_fall([read_eval_table(out / f"{rl}-single-seed{s}") for s in (0, 1)], seed=0)
        assert own[f"{rl}/single_proxy_overoptimized"].estimate == pytest.approx(fall["across_seeds"]["diff"])
        assert "over the 2 seeds" in own[f"{rl}/single_proxy_overoptimized"].design
        assert all(f.claim.startswith(rl.upper() + " against") and f.plot == f"plots/{rl}_gold_vs_kl.png"
                   for key, f in own.items() if key.startswith(rl))
        assert (out / "plots" / f"{rl}_gold_vs_kl.png").stat().st_size > 0
        assert read_eval_table(out / f"{rl}-uwo-seed1").steps == [0, 1, 2]
    # the two algorithms' runs differ (GRPO's eval answers are at most 8 tokens here, PPO's 24)
    assert read_eval_table(out / "grpo-uwo-seed0").values["length"].max() <= 8
    length = json.loads((out / "length" / "eval" / "eval_rm.json").read_text())
    assert length["pairs"] == 30 and [c["a"].rsplit("/", 1)[-1] for c in length["comparisons"]] == [
        "balance_len", "rand_ratio"]
    summary = json.loads((out / "demo_summary.json").read_text())
    keys = [s.split(":")[0] for s in summary["findings"]]
    # bon 4, PPO 2, GRPO 2, eval-rm 3 gaps + 2 comparisons, evaluate: gold, proxy, length and the 2 length shares
    assert len(summary["findings"]) == 4 + 2 + 2 + 3 + 2 + 5
    assert any("less often than" in s for s in summary["findings"]) and len(keys) == len(summary["findings"])
    assert any(s.startswith("part of the gold reward gain over the baseline is length") for s in summary["findings"])
    html = (out / "report.html").read_text()
    assert html.count('<div class="finding ') == len(summary["findings"])  # one panel per finding, every stage


def test_a_stage_the_preset_has_no_values_for_is_a_one_line_error_before_any_work(tmp_path, capsys):
    from rlhf_lab.cli import main

    out = tmp_path / "d"
    assert main(["demo", "--stages", "bon,grpo", "--output_dir", str(out)]) == 2  # the small preset: no grpo
    err = capsys.readouterr().err.strip()
    assert err == ("rlhf-lab: error: --stages: the small preset has no grpo stage (no mapping for it in "
                   "configs/demo-small.yaml); leave it out or choose another --preset")
    assert not out.exists()
    assert main(["demo", "--preset", "study", "--stages", "dpo,merge", "--output_dir", str(out)]) == 2
    assert "the study preset has no dpo, merge stage" in capsys.readouterr().err and not out.exists()
    assert demo.DemoConfig(preset="study", stages="grpo,report").stage_list() == ["grpo", "report"]


def test_an_rl_stage_replaces_its_own_findings_and_keeps_the_other_stages(tmp_path):
    from rlhf_lab.eval.findings import Finding, read_findings, write_findings

    def finding(key: str) -> Finding:
        return Finding(claim=key, effect="e", estimate=0.0, se=None, ci_low=None, ci_high=None, shown=False,
                       n_prompts=1, key=key)

    write_findings(tmp_path, [finding("ppo/a"), finding("grpo/a"), finding("grpo/b"), finding("rl/a")])
    demo._write_own_findings(tmp_path, ["grpo", "report"], [finding("grpo/c")])
    assert [f.key for f in read_findings(tmp_path / "findings.json")] == ["ppo/a", "grpo/c"]
    demo._write_own_findings(tmp_path, ["ppo"], [finding("ppo/b")])  # stage order, whichever ran last
    assert [f.key for f in read_findings(tmp_path / "findings.json")] == ["ppo/b", "grpo/c"]
    demo._write_own_findings(tmp_path, ["ppo", "grpo"], [])  # e.g. rerun without a gold: nothing stale stays
    assert read_findings(tmp_path / "findings.json") == []


def test_rerunning_a_stage_removes_its_old_outputs_and_keeps_the_others(tmp_path):
    """--stages ppo on an old output dir: ppo's runs and plots go (including the plot's name before grpo joined,
    plots/rl_gold_vs_kl.png), grpo's and length's stay."""
    from rlhf_lab.recipes import demo

    for name in ("ppo-single-seed0/metrics.jsonl", "ppo-uwo/metrics.jsonl", "plots/ppo_gold_vs_kl.png",
                 "plots/rl_gold_vs_kl.png", "plots/grpo_gold_vs_kl.png", "grpo-uwo-seed1/metrics.jsonl",
                 "length/eval/eval.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    demo._clear(tmp_path, ["ppo"])
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["grpo-uwo-seed1/metrics.jsonl", "length/eval/eval.json", "plots/grpo_gold_vs_kl.png"]


def test_running_bon_empties_the_output_dir_but_keeps_the_demos_own_lock(tmp_path):
    """bon feeds every later stage, so it starts from an empty output dir — except the lock the demo holds on it:
    deleting that file would let a second demo claim the same directory while this one writes."""
    from rlhf_lab.recipes import demo
    from rlhf_lab.rundir import claim_run_dir, release_run_dir

    claim_run_dir(tmp_path)
    try:
        (tmp_path / "ppo-uwo").mkdir()
        (tmp_path / "ppo-uwo" / "metrics.jsonl").write_text("x")
        (tmp_path / "findings.json").write_text("[]")
        demo._clear(tmp_path, ["bon", "ppo"])
        assert [p.name for p in tmp_path.iterdir()] == [".lock"]
        # a second writer opens the lock file anew: flock on the same file still refuses it (on a recreated file,
        # a new inode, it would succeed)
        with open(tmp_path / ".lock") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        release_run_dir(tmp_path)
