import dataclasses

import pytest

from rlhf_lab.config import arg, make_config, parse_config, parse_config_and_keys, require
from rlhf_lab.errors import UserError


@dataclasses.dataclass
class Demo:
    name: str = arg("x", "a name")
    steps: int = arg(3, "steps")
    beta: float = arg(0.1, "beta")
    flag: bool = arg(False, "a flag")
    limit: int | None = arg(None, "optional")
    ns: list = arg([1, 2], "a list")
    mode: str = arg("a", "mode", ("a", "b"))

    def validate(self):
        require(self.beta >= 0, "beta", "must be >= 0")


def test_defaults_yaml_and_flags_in_order(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("steps: 7\nbeta: 0.5\nmode: b\n")
    cfg, given = parse_config_and_keys(Demo, ["--config", str(cfg_file), "--beta", "0.25", "--flag"], "t")
    assert (cfg.name, cfg.steps, cfg.beta, cfg.flag, cfg.mode) == ("x", 7, 0.25, True, "b")
    assert given == {"steps", "beta", "mode", "flag"}
    assert parse_config(Demo, ["--flag", "false", "--limit", "none", "--ns", "1,2,4"], "t").ns == ["1", "2", "4"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--steps", "1.5"], "'steps'"),
        (["--beta", "-1"], "--beta"),
        (["--mode", "c"], "--mode"),
        (["--nope", "1"], "unrecognized arguments"),
        (["--flag", "maybe"], "'flag'"),
    ],
)
def test_bad_values_are_one_line_user_errors(argv, needle):
    with pytest.raises(UserError) as e:
        parse_config(Demo, argv, "t")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_yaml_errors_name_file_and_key(tmp_path):
    bad_key = tmp_path / "k.yaml"
    bad_key.write_text("stepz: 3\n")
    with pytest.raises(UserError, match=r"k\.yaml: unknown config key 'stepz'"):
        parse_config(Demo, ["--config", str(bad_key)], "t")
    broken = tmp_path / "b.yaml"
    broken.write_text("steps: 3\n  beta: [\n")
    with pytest.raises(UserError, match=r"b\.yaml:\d+: not valid YAML"):
        parse_config(Demo, ["--config", str(broken)], "t")
    with pytest.raises(UserError, match="no such config file"):
        parse_config(Demo, ["--config", str(tmp_path / "missing.yaml")], "t")


def test_config_yaml_names_the_command_that_wrote_it(tmp_path):
    """A run's config.yaml starts with `command: VERB`; it reruns that verb, and another verb refuses it."""
    from rlhf_lab.config import config_to_yaml, make_config
    from rlhf_lab.recipes.bon import BonConfig
    from rlhf_lab.recipes.generate import GenerateConfig
    from rlhf_lab.report.html import ReportConfig, recipe_kind

    text = config_to_yaml(make_config(BonConfig, {"scores": "s.jsonl", "sample_ns": "1,2"}))
    assert text.startswith("command: bon\n")
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert parse_config(BonConfig, ["--config", str(path)], "t").sample_ns == "1,2"
    with pytest.raises(UserError, match=r"config\.yaml: written by `rlhf-lab bon`, not `rlhf-lab generate`"):
        parse_config(GenerateConfig, ["--config", str(path)], "t")
    assert config_to_yaml(Demo()).startswith("name: x\n")  # a config class that is no verb's: no header
    assert config_to_yaml(make_config(ReportConfig, {"run_dir": "r"})).startswith("command: report\n")
    # the report takes the kind from it instead of guessing from file names
    assert recipe_kind(tmp_path / "whatever", {"command": "bon-study"}, []) == "bon"
    assert recipe_kind(tmp_path / "whatever", {"command": "dpo"}, []) == "dpo"


@pytest.mark.parametrize("verb, old", [
    ("ppo", "reward_model_names"), ("ppo", "rm_batch_size"), ("raft", "reward_model"), ("raft", "ddof"),
    ("raft", "inference_batch_size"), ("pareto", "reward_model"), ("pareto", "gold_model"), ("pareto", "batch_size"),
    ("bon-study", "score_batch_size"), ("eval-rm", "batch_size"), ("score", "batch_size"), ("score", "ddof"),
    ("bon", "ddof"), ("gold-eval", "batch_size"), ("evaluate", "ddof"), ("generate", "batch_size")])
def test_a_renamed_flag_has_one_name(verb, old, tmp_path, capsys):
    """One name per concept, no aliases (the old spellings are gone): an old name is an unknown flag, one line."""
    from rlhf_lab.cli import main

    assert main([verb, f"--{old}", "1", "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--{old}" in err[0]


def test_every_reward_side_recipe_spells_the_reward_flags_one_way():
    """ppo, raft, evaluate and pareto take the reward side from RewardArgs: same names, same help text; a default
    may differ only by overriding the field (ppo's uwo_weight, from Coste et al. 2023's PPO config)."""
    from rlhf_lab.config import RewardArgs
    from rlhf_lab.recipes import evaluate, pareto, ppo, raft

    group = {f.name: f for f in dataclasses.fields(RewardArgs)}
    assert set(group) == {"reward_models", "objective", "uwo_weight", "ensemble_ddof", "reward_batch_size"}
    for cls in (ppo.PPOConfig, raft.RaftConfig, evaluate.EvaluateConfig, pareto.ParetoConfig):
        assert issubclass(cls, RewardArgs)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name, f in group.items():
            if (cls, name) == (ppo.PPOConfig, "uwo_weight"):
                assert fields[name].default == 0.1 and "Coste et al. 2023's PPO" in fields[name].metadata["help"]
                continue
            assert fields[name].metadata == f.metadata and fields[name].default == f.default, (cls, name)
    values = {"reward_models": "a, b", "reward_batch_size": 4, "ensemble_ddof": 0, "tuned": "t"}
    config = make_config(pareto.ParetoConfig, values)
    assert (config.reward_models, config.reward_batch_size, config.ensemble_ddof) == (["a", "b"], 4, 0)


@pytest.mark.parametrize("verb", ["generate", "evaluate", "pareto"])
def test_batch_size_is_split_into_generation_and_reward_batch_sizes(verb, capsys):
    from rlhf_lab.recipes import evaluate, generate, pareto

    cls = {"generate": generate.GenerateConfig, "evaluate": evaluate.EvaluateConfig,
           "pareto": pareto.ParetoConfig}[verb]
    extra = {"tuned": "t", "reward_models": "rm"} if verb == "pareto" else {"model_name": "m"}
    with pytest.raises(UserError, match="batch_size"):  # the old name is gone: one name per concept
        make_config(cls, {"batch_size": 5, **extra})
    if verb != "generate":  # generate scores nothing
        new = make_config(cls, {"generation_batch_size": 6, "reward_batch_size": 3, **extra})
        assert (new.generation_batch_size, new.reward_batch_size) == (6, 3)
