"""The verbs of ``rlhf-lab``: verb → (module, config class, one-line description).

It sits below every layer (it imports nothing) so that both the CLI and ``config.config_to_yaml`` can name the
command that wrote a run: every ``config.yaml`` starts with ``command: VERB``, and the report reads that instead
of guessing the recipe from a run's files.
"""

from __future__ import annotations

VERBS: dict[str, tuple[str, str, str]] = {
    "generate": ("rlhf_lab.recipes.generate", "GenerateConfig",
                 "sample responses for a prompt set -> OUT/generations.jsonl"),
    "sft": ("rlhf_lab.recipes.sft", "SFTConfig", "supervised fine-tuning (LoRA or full) on demonstrations"),
    "train-rm": ("rlhf_lab.recipes.reward_model", "RewardModelConfig",
                 "train a Bradley-Terry reward model or a cheap ensemble (shared frozen trunk)"),
    "score": ("rlhf_lab.recipes.score", "ScoreConfig",
              "score generations with reward models (ensembles: one shared-trunk pass) -> scored.jsonl"),
    "eval-rm": ("rlhf_lab.recipes.eval_rm", "EvalRMConfig",
                "reward-model accuracy and length bias on preference pairs"),
    "carto": ("rlhf_lab.eval.carto", "CartoConfig",
              "dataset cartography of a train-rm run: map, stats, and the pairs to keep (--carto_file)"),
    "bon": ("rlhf_lab.recipes.bon", "BonConfig",
            "best-of-n curves (exact unbiased estimator): proxy and gold vs n and KL, ensembles mean/WCO/UWO"),
    "bon-study": ("rlhf_lab.recipes.bon_study", "BonStudyConfig",
                  "the overoptimization study: sample N answers, gold + proxy RMs, best-of-n curves"),
    "ppo": ("rlhf_lab.recipes.ppo", "PPOConfig",
            "PPO with a reward model or ensemble objective (mean/WCO/UWO), length shaping, KL control"),
    "grpo": ("rlhf_lab.recipes.grpo", "GRPOConfig",
             "GRPO / Dr. GRPO / RLOO / REINFORCE++: G answers per prompt, reward models or functions, no critic"),
    "gold-eval": ("rlhf_lab.recipes.gold_eval", "GoldEvalConfig",
                  "score a run's saved eval generations with a gold reward model, after training"),
    "raft": ("rlhf_lab.recipes.raft", "RaftConfig", "RAFT: sample, rank by reward, fine-tune on the best"),
    "dpo": ("rlhf_lab.recipes.dpo", "DPOConfig", "direct preference optimisation: --loss dpo | ipo | rrhf"),
    "merge": ("rlhf_lab.recipes.merge", "MergeConfig",
              "model averaging: alpha * base + (1 - alpha) * tuned, whole-model or partwise"),
    "ama": ("rlhf_lab.recipes.ama", "AMAConfig", "adaptive model averaging: learn per-group merge ratios"),
    "pareto": ("rlhf_lab.recipes.pareto", "ParetoConfig",
               "reward vs alignment tax over merge ratios, partwise specs and AMA: the Pareto front"),
    "evaluate": ("rlhf_lab.recipes.evaluate", "EvaluateConfig",
                 "proxy/gold reward, KL, length bias, diversity and (length-controlled) win rate of a model"),
    "report": ("rlhf_lab.report.html", "ReportConfig", "one self-contained HTML report of a run directory"),
    "demo": ("rlhf_lab.recipes.demo", "DemoConfig", "the end-to-end study on the embedded model and data"),
    "verify": ("rlhf_lab.rundir", "VerifyConfig",
               "check a run directory's checkpoints and exported models against their manifests (exit 0 / 1)"),
}


def command_of(config_class: type) -> str | None:
    """The verb whose config class is ``config_class`` exactly (subclasses are other verbs), or None."""
    for verb, (module, name, _) in VERBS.items():
        if config_class.__module__ == module and config_class.__name__ == name:
            return verb
    return None
