"""The overoptimization study on the embedded default, end to end: what `make demo` runs (`rlhf-lab demo`).

    gold      hh-gold: SmolLM2-135M-Instruct + a reward head trained on HH-RLHF helpful-base (ships in the package)
    bon       bon-study: sample answers, label pairs of them with the gold (25% label noise), train a proxy ensemble
              (k heads on the first layers of the policy), best-of-n curves for each member and mean / WCO / UWO
    ppo       PPO against one proxy member, and against the UWO ensemble (one run each per seed of the preset);
              gold scored on the same eval prompts; findings: the single proxy's gold falls past its peak step,
              UWO against single at a matched KL (eval.runs)
    grpo      the same two arms and findings with GRPO (study preset only)
    length    reward models with and without length debiasing (--balance_len, --rand_ratio) on the same HH pairs,
              judged by eval-rm on held-out pairs: do they prefer longer replies more than the humans do?
    dpo       DPO on HH-RLHF pairs (LoRA; reference log-probs computed once)
    raft      RAFT rounds: sample K answers per prompt, keep the best by the proxy ensemble, fine-tune
    merge     pareto: interpolate the policy before and after DPO (and one partwise ratio): reward vs alignment tax
    evaluate  the PPO (UWO) policy against the starting model: gold/proxy reward, KL, length bias, (LC) win rate
    report    one self-contained HTML file over all of it

Every stage is an ordinary command with its own run directory under ``output_dir`` (its `config.yaml` says how to
rerun it alone). ``--preset small`` (the default) fits the 10-minute budget of a 2-core CPU; ``--preset study``
(`make study`) runs the powered study of docs/study.md (its sizes and reasons in configs/demo-study.yaml);
``--preset paper`` writes the papers' GPU-scale configs (for `accelerate launch`, configs/accelerate/) to
``output_dir/configs/`` instead of running them. The measured time of every stage is printed at the end.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from rlhf_lab.config import arg, config_to_yaml, make_config, require, require_seed
from rlhf_lab.eval.findings import Finding, read_findings, verdict_words, write_findings
from rlhf_lab.io import atomic_write_text
from rlhf_lab.rundir import LOCK_NAME, claim_run_dir


@dataclass
class DemoConfig:
    output_dir: str = arg("runs/demo", "where the stages write their run directories: a stage's directories are "
                          "replaced when it runs (all of them when bon runs); the others are kept, so later stages "
                          "can run alone on earlier outputs")
    preset: str = arg("small", "small = the 10-minute demo; study = the powered study of docs/study.md (hours on "
                      "a 2-core CPU); paper = write the papers' GPU-scale configs and exit", ("small", "study", "paper"))
    model_name: str = arg("default", "the policy to start from")
    gold_model_name: str = arg("hh-gold", "the gold reward model")
    stages: str = arg("", "stages to run, comma-separated, in this order (default: the preset's; small: "
                      "bon,ppo,dpo,raft,merge,evaluate,report, study: bon,ppo,grpo,length,evaluate,report)")
    seed: int = arg(0, "seed of every stage")
    progress: bool = arg(False, "show progress bars")

    def validate(self) -> None:
        unknown = set(self.stage_list()) - set(STAGES)
        require(not unknown, "stages", f"unknown stage(s) {sorted(unknown)}; choose from {', '.join(STAGES)}")
        if self.preset != "paper":  # every stage but report runs with the preset's values for it
            missing = [s for s in self.stage_list() if s != "report" and s not in preset_values(self.preset)]
            require(not missing, "stages", f"the {self.preset} preset has no {', '.join(missing)} stage (no "
                    f"mapping for it in configs/demo-{self.preset}.yaml); leave it out or choose another --preset")
        require_seed(self.seed, "seed")

    def stage_list(self) -> list[str]:
        stages = self.stages or (preset_values(self.preset).get("stages", DEFAULT_STAGES)
                                 if self.preset != "paper" else "")
        return [s.strip() for s in stages.split(",") if s.strip()]


STAGES = ("bon", "ppo", "grpo", "length", "dpo", "raft", "merge", "evaluate", "report")
DEFAULT_STAGES = "bon,ppo,dpo,raft,merge,evaluate,report"

def load_preset(name: str) -> dict[str, dict[str, Any]]:
    """A preset shipped with the package, ``rlhf_lab/configs/demo-NAME.yaml``: one mapping of flags per stage
    (small) or per command (paper), with the reasons for its sizes as comments."""
    text = (resources.files("rlhf_lab") / "configs" / f"demo-{name}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


SMALL = load_preset("small")  # sized for a 2-core CPU: the 10-minute demo
STUDY = load_preset("study")  # the powered study (docs/study.md)
PAPER = load_preset("paper")  # the papers' settings at GPU scale: written out, never run here


def preset_values(name: str) -> dict[str, Any]:
    return {"small": SMALL, "study": STUDY}[name]


# The run directories of each stage under output_dir (removed before the stage runs again; * as in glob).
# plots/rl_gold_vs_kl.png is ppo's plot under its name before grpo joined: an old output dir must not keep it.
STAGE_DIRS = {"bon": ("bon-study",),
              "ppo": ("ppo-single*", "ppo-uwo*", "plots/ppo_gold_vs_kl.png", "plots/rl_gold_vs_kl.png"),
              "grpo": ("grpo-single*", "grpo-uwo*", "plots/grpo_gold_vs_kl.png"), "length": ("length",),
              "dpo": ("dpo",), "raft": ("raft",), "merge": ("pareto",),
              "evaluate": ("evaluate-base", "evaluate"), "report": ("report.html", "report_plots")}

def _timed(timings: dict[str, float], cpu_times: dict[str, float], name: str, fn, *args):
    """Run one stage; its wall time goes to ``timings[name]``, its CPU time (this process, every thread) to
    ``cpu_times[name]`` — on a shared machine the CPU time is what the stage would take alone on one core."""
    start, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    timings[name] = time.perf_counter() - start
    cpu_times[name] = time.process_time() - cpu
    print(f"demo: stage {name} done in {timings[name]:.0f} s (CPU {cpu_times[name]:.0f} s)", flush=True)
    return result


def _clear(root: Path, stages: list[str]) -> None:
    """Remove what the stages about to run will write. bon feeds every later stage but dpo, so running it starts
    from an empty output_dir; otherwise the other stages' outputs stay (e.g. --stages evaluate,report reuses them)."""
    if "bon" in stages and root.exists():
        for path in root.iterdir():
            if path.name == LOCK_NAME:  # this process's claim on root: deleting it would let a second writer in
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    for stage in stages:
        for pattern in STAGE_DIRS[stage]:
            for path in root.glob(pattern):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()


def run(config: DemoConfig) -> dict[str, float]:
    root = Path(config.output_dir)
    claim_run_dir(root)  # one writer; the stages below claim their own subdirectories
    if config.preset == "paper":
        return _write_paper_configs(root)
    stages = config.stage_list()
    values = preset_values(config.preset)
    _clear(root, stages)
    atomic_write_text(root / "config.yaml", config_to_yaml(config))
    timings: dict[str, float] = {}
    cpu_times: dict[str, float] = {}
    common = dict(seed=config.seed, progress=config.progress)
    findings: dict[str, Any] = {}
    study_findings: list[Finding] = []  # the demo's own findings (across runs): OUT/findings.json
    proxy = root / "bon-study" / "proxy_rm"

    if "bon" in stages:
        from rlhf_lab.recipes import bon_study

        study = _timed(timings, cpu_times, "bon", bon_study.run, make_config(bon_study.BonStudyConfig, dict(
            output_dir=str(root / "bon-study"), model_name=config.model_name,
            gold_model_name=config.gold_model_name, **values["bon"], **common)))
        findings["bon"] = study

    ppo_runs: dict[str, list[Path]] = {"single": [], "uwo": []}
    if "ppo" in stages:
        from rlhf_lab.recipes import ppo

        ppo_runs = _rl_stage(root, config, "ppo", ppo.run, ppo.PPOConfig, values["ppo"], timings, cpu_times, findings)
        study_findings.extend(_rl_findings(root, ppo_runs, config.seed, "ppo"))

    if "grpo" in stages:
        from rlhf_lab.recipes import grpo

        grpo_runs = _rl_stage(root, config, "grpo", grpo.run, grpo.GRPOConfig, values["grpo"], timings, cpu_times,
                              findings)
        study_findings.extend(_rl_findings(root, grpo_runs, config.seed, "grpo"))

    if "length" in stages:
        findings["length"] = _timed(timings, cpu_times, "length", _length_stage, root, config, values["length"])

    if "dpo" in stages:
        from rlhf_lab.recipes import dpo

        findings["dpo"] = _timed(timings, cpu_times, "dpo", dpo.run, make_config(dpo.DPOConfig, dict(
            output_dir=str(root / "dpo"), overwrite_output_dir=True, model_name=config.model_name,
            **values["dpo"], **common)))

    if "raft" in stages:
        from rlhf_lab.recipes import raft

        _require_stage(proxy, "raft", "bon")
        findings["raft"] = _timed(timings, cpu_times, "raft", raft.run, make_config(raft.RaftConfig, dict(
            output_dir=str(root / "raft"), overwrite_output_dir=True, model_name=config.model_name,
            reward_models=str(proxy), objective="mean", **values["raft"], **common)))

    if "merge" in stages:
        from rlhf_lab.recipes import pareto

        _require_stage(root / "dpo" / "model", "merge", "dpo")
        _timed(timings, cpu_times, "merge", pareto.run, make_config(pareto.ParetoConfig, dict(
            output_dir=str(root / "pareto"), base=config.model_name, tuned=str(root / "dpo" / "model"),
            reward_models=[str(proxy)] if proxy.is_dir() else [], gold_model_name=[config.gold_model_name],
            seed=config.seed, **values["merge"])))
        findings["merge"] = _read_pareto(root / "pareto")

    if "evaluate" in stages:
        from rlhf_lab.recipes import evaluate

        policy = (ppo_runs["uwo"][0] if ppo_runs["uwo"] else _first_run(root, "ppo-uwo")) / "model"
        _require_stage(policy, "evaluate", "ppo")
        base = _timed(timings, cpu_times, "evaluate-base", evaluate.run, make_config(evaluate.EvaluateConfig, dict(
            output_dir=str(root / "evaluate-base"), model_name=config.model_name, gold_model_name=config.gold_model_name,
            reward_models=str(proxy), split="eval", **values["evaluate"], seed=config.seed, progress=config.progress)))
        tuned = _timed(timings, cpu_times, "evaluate", evaluate.run, make_config(evaluate.EvaluateConfig, dict(
            output_dir=str(root / "evaluate"), model_name=str(policy), gold_model_name=config.gold_model_name,
            reward_models=str(proxy), split="eval", objective="UWO",
            baseline_generations=str(root / "evaluate-base" / "generations.jsonl"), **values["evaluate"],
            seed=config.seed, progress=config.progress)))
        findings["evaluate"] = {"base": base, "tuned": tuned}

    if {"ppo", "grpo"} & set(stages):
        _write_own_findings(root, stages, study_findings)
    report = None
    if "report" in stages:
        from rlhf_lab.report import html

        report = _timed(timings, cpu_times, "report", html.run, make_config(html.ReportConfig, dict(run_dir=str(root))))

    summary = _summarise(findings, timings, cpu_times)
    summary["findings"] = [f.sentence() for f in _all_findings(root)]
    atomic_write_text(root / "demo_summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    _print_summary(summary)
    if report is not None:
        print(f"report: {report}", flush=True)
    return timings


def _all_findings(root: Path) -> list[Finding]:
    """Every finding the stages wrote (bon-study, the demo's own RL ones, eval-rm, evaluate), in stage order."""
    found = []
    for where in ("bon-study", ".", "length/eval", "evaluate"):
        path = root / where / "findings.json"
        if path.is_file():
            found.extend(read_findings(path))
    return found


def _write_own_findings(root: Path, stages: list[str], found: list[Finding]) -> None:
    """``root/findings.json``: the demo's own findings, keyed ``stage/...``. The stages run now replace theirs; the
    other stages' (an earlier run's: ``--stages grpo`` keeps ppo's) stay, in stage order; keys of no stage go."""
    path = root / "findings.json"
    others = set(STAGES) - set(stages)
    kept = [f for f in (read_findings(path) if path.is_file() else []) if f.key.split("/")[0] in others]
    if kept or found or path.is_file():
        write_findings(root, sorted(kept + found, key=lambda f: STAGES.index(f.key.split("/")[0])))


def _first_run(root: Path, prefix: str) -> Path:
    """``root/prefix`` (one seed) or the first ``root/prefix-seedS`` directory (several)."""
    found = sorted(root.glob(f"{prefix}-seed*"))
    return root / prefix if (root / prefix).is_dir() or not found else found[0]


def _rl_stage(root: Path, config: DemoConfig, stage: str, run_fn: Callable[[Any], Any], config_class: type,
              values: dict[str, Any], timings: dict[str, float], cpu_times: dict[str, float],
              findings: dict[str, Any]) -> dict[str, list[Path]]:
    """An online-RL recipe (``stage`` = ppo or grpo: its ``run`` and config class) against one proxy member and
    against the UWO ensemble of bon's proxies, one run per arm and seed of the preset (``values["seeds"]``; else
    one run per arm at --seed). Run directories ``{stage}-{arm}[-seed{s}]``; returns them per arm, in seed order."""
    proxy = root / "bon-study" / "proxy_rm"
    _require_stage(proxy, stage, "bon")
    members = json.loads((proxy / "reward_models.json").read_text(encoding="utf-8"))["members"]
    single = str(proxy / members[0]["path"])
    values = dict(values)
    seeds = values.pop("seeds", None)  # one run per arm and seed; the arms of a seed share its eval draws
    runs: dict[str, list[Path]] = {"single": [], "uwo": []}
    for seed in seeds if seeds is not None else [config.seed]:
        for arm, reward in (("single", dict(reward_models=[single])),
                            ("uwo", dict(reward_models=[str(proxy)], objective="UWO", uwo_weight=0.5))):
            name = f"{stage}-{arm}" if seeds is None else f"{stage}-{arm}-seed{seed}"
            _timed(timings, cpu_times, name, run_fn, make_config(config_class, dict(
                output_dir=str(root / name), overwrite_output_dir=True, model_name=config.model_name,
                gold_model_name=config.gold_model_name, **reward, **values, seed=seed, progress=config.progress)))
            findings[name] = _eval_curve(root / name)
            runs[arm].append(root / name)
    return runs


def _rl_findings(root: Path, runs: dict[str, list[Path]], seed: int, algorithm: str) -> list[Finding]:
    """(c): the single proxy's held-out fall over training, UWO against single at a matched KL; with its plot."""
    from rlhf_lab.eval.runs import rl_findings
    from rlhf_lab.report.plots import plot_gold_vs_kl

    plot = f"plots/{algorithm}_gold_vs_kl.png"
    found, data = rl_findings(runs["single"], runs["uwo"], algorithm=algorithm, plot=plot, seed=seed)
    plot_gold_vs_kl(data["curves"], root / plot, target_kl=data["target_kl"],
                    title=f"{algorithm.upper()}: gold and proxy vs KL, {len(runs['single'])} seed(s); dotted: the "
                          "matched KL")
    return found


def _length_stage(root: Path, config: DemoConfig, spec: dict[str, Any]) -> dict:
    """(d): one reward model per variant on the same pairs (one cached trunk pass serves them all), then eval-rm
    on the held-out pairs, every variant compared with the first pair by pair."""
    from rlhf_lab.recipes import eval_rm
    from rlhf_lab.recipes import reward_model as rm_recipe

    out = root / "length"
    names = []
    for variant, extra in spec["variants"].items():
        rm_recipe.run(make_config(rm_recipe.RewardModelConfig, dict(
            output_dir=str(out / variant), overwrite_output_dir=True, model_name=config.model_name,
            feature_cache=str(out / "features"), seed=config.seed, progress=config.progress,
            **spec["train"], **(extra or {}))))
        names.append(str(out / variant))
    return eval_rm.run(make_config(eval_rm.EvalRMConfig, dict(
        model_name=",".join(names), output_dir=str(out / "eval"), seed=config.seed, **spec["eval"])))


def _require_stage(path: Path, stage: str, needs: str) -> None:
    from rlhf_lab.errors import UserError

    if not path.exists():
        raise UserError(f"--stages: {stage} needs the {needs} stage's output ({path}); add {needs} to --stages")


def _eval_curve(run_dir: Path) -> dict[str, float]:
    """An online-RL run's (PPO, GRPO) eval rows: proxy, gold, KL and length at the first and the last evaluation."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    evals = [r for r in rows if "eval/proxy_score" in r]
    if not evals:
        return {}
    out: dict[str, float] = {}
    for key in ("proxy_score", "gold_score", "kl_k1", "length"):
        if f"eval/{key}" in evals[0]:
            out[f"{key}_start"], out[f"{key}_end"] = evals[0][f"eval/{key}"], evals[-1][f"eval/{key}"]
    out["steps"] = evals[-1]["step"]
    return out


def _read_pareto(out: Path) -> list[dict]:
    path = out / "pareto.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if path.is_file() else []


def _summarise(findings: dict[str, Any], timings: dict[str, float], cpu_times: dict[str, float]) -> dict[str, Any]:
    summary: dict[str, Any] = {"timings_s": timings, "total_s": sum(timings.values()),
                               "cpu_s": cpu_times, "total_cpu_s": sum(cpu_times.values())}
    if "bon" in findings:
        summary["bon"] = findings["bon"]["verdicts"]
        summary["bon_findings"] = findings["bon"].get("findings", [])
        summary["bon_proxy_accuracy"] = findings["bon"].get("proxy_eval_accuracy")
        summary["bon_proxy_accuracy_se"] = findings["bon"].get("proxy_eval_accuracy_se")
    for name in [k for k in findings if k.startswith(("ppo-", "grpo-", "dpo", "raft"))]:
        if isinstance(findings[name], dict):
            summary[name] = {k: v for k, v in findings[name].items() if isinstance(v, (int, float, str, bool))}
    if "merge" in findings:
        summary["pareto"] = findings["merge"]
    if "length" in findings:
        summary["length"] = {"pairs": findings["length"]["pairs"],
                             "members": {name: {k: v for k, v in m.items() if k.startswith(("accuracy",
                                                                                           "longer_preferred",
                                                                                           "rm_longer"))}
                                         for name, m in findings["length"]["members"].items()},
                             "comparisons": findings["length"].get("comparisons", [])}
    if "evaluate" in findings:
        tuned = findings["evaluate"]["tuned"]
        summary["evaluate"] = {k: v for k, v in tuned.items() if isinstance(v, (int, float)) and (
            k.startswith(("reward", "gold", "proxy", "length", "kl", "win", "lc", "baseline", "num_")))}
    return summary


def _print_summary(summary: dict[str, Any]) -> None:
    print("\n== rlhf-lab demo: what it found ==")
    if "bon" in summary:
        accuracy, se = summary.get("bon_proxy_accuracy"), summary.get("bon_proxy_accuracy_se")
        print("best-of-n (the proxies' accuracy against the gold on held-out pairs: "
              + (f"{accuracy:.3f} ± {se:.3f} SE):" if accuracy is not None and se is not None else f"{accuracy}):"))
        for label, v in summary["bon"].items():
            print(f"  {label:<22} gold {v['gold_at_n1']:+.3f} -> peak {v['gold_peak']:+.3f} at n={v['gold_peak_n']}"
                  f" -> {v['gold_at_max_n']:+.3f} at max n; proxy +{v['proxy_gain']:.3f}; "
                  f"{verdict_words(v)}")
    for name in [k for k in summary if k.startswith(("ppo-single", "ppo-uwo", "grpo-single", "grpo-uwo"))]:
        if isinstance(summary[name], dict):
            v = summary[name]
            print(f"{name}: after {v.get('steps')} steps proxy {v.get('proxy_score_start', 0):.3f} -> "
                  f"{v.get('proxy_score_end', 0):.3f}, gold {v.get('gold_score_start', 0):.3f} -> "
                  f"{v.get('gold_score_end', 0):.3f}, KL {v.get('kl_k1_end', 0):.3f}, length "
                  f"{v.get('length_start', 0):.1f} -> {v.get('length_end', 0):.1f} tokens")
    if "evaluate" in summary:
        v = summary["evaluate"]
        print(f"evaluate (PPO-UWO policy vs the starting model, {v.get('num_prompts')} prompts x "
              f"{v.get('num_responses', 0) // max(1, v.get('num_prompts') or 1)}): length "
              f"{v.get('baseline/length/mean', float('nan')):.1f} -> {v.get('length/mean', float('nan')):.1f} tokens, "
              f"KL {v.get('kl/k3', float('nan')):.3f}")
        for rm in ("proxy", "gold"):
            gain = v.get(f"length_bias/{rm}/vs_baseline/gain")
            if gain is None:
                continue
            explained = v.get(f"length_bias/{rm}/vs_baseline/gain_explained_by_length", float("nan"))
            print(f"  {rm:<5} reward {v.get(f'baseline/reward/{rm}/mean', float('nan')):+.3f} -> "
                  f"{v.get(f'reward/{rm}/mean', float('nan')):+.3f} (gain {gain:+.3f}, of which length explains "
                  f"{explained:+.3f}); win rate {v.get(f'win_rate/{rm}/win_rate', float('nan')):.3f}, "
                  f"LC win rate {v.get(f'win_rate/{rm}/lc_win_rate', float('nan')):.3f}")
    if summary.get("findings"):
        print("findings (every comparison paired; shown = its confidence interval excludes 0 on the claimed side):")
        for sentence in summary["findings"]:
            print(f"  {sentence}")
    print("time per stage (wall; CPU of this process):")
    cpu = summary.get("cpu_s", {})
    width = max([14, *map(len, summary["timings_s"])])  # run names such as grpo-single-seed0 stay aligned
    for stage, seconds in summary["timings_s"].items():
        print(f"  {stage:<{width}} {seconds:7.1f} s   CPU {cpu.get(stage, float('nan')):7.1f} s")
    print(f"  {'total':<{width}} {summary['total_s']:7.1f} s   CPU {summary.get('total_cpu_s', float('nan')):7.1f} s")


def _write_paper_configs(root: Path) -> dict[str, float]:
    out = root / "configs"
    out.mkdir(parents=True, exist_ok=True)
    for verb, values in PAPER.items():
        atomic_write_text(out / f"{verb}.yaml", yaml.safe_dump(values, sort_keys=False))
    print(f"demo: paper-scale configs written to {out}; run each with\n"
          f"  accelerate launch --config_file configs/accelerate/ddp.yaml -m rlhf_lab.cli VERB --config "
          f"{out}/VERB.yaml --model_name YOUR_SFT_MODEL")
    return {}
