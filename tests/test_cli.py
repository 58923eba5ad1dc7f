"""The CLI contract: verbs, --help, one-line user errors with exit code 2."""

import dataclasses
import importlib
import subprocess
import sys

import pytest

from rlhf_lab.cli import VERBS, main


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf_lab.cli", *argv], capture_output=True, text=True, timeout=300)


def test_help_lists_only_existing_verbs(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in VERBS:
        assert f"  {verb}" in out


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_explains_every_flag(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--config FILE.yaml" in out
    module, config_name, _ = VERBS[verb]
    for field in dataclasses.fields(getattr(importlib.import_module(module), config_name)):
        assert f"--{field.name}" in out
        assert len(field.metadata.get("help", "")) > 5, f"--{field.name} has no help text"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["frobnicate"], "unknown verb"),
        (["sft", "--learning_rate", "-1"], "--learning_rate: must be positive"),
        (["sft", "--trainable", "everything"], "--trainable"),
        (["sft", "--no_such_flag", "1"], "unrecognized arguments"),
        (["generate", "--dataset", "missing.jsonl", "--output_dir", "{tmp}/g"], "missing.jsonl: no such file"),
        (["generate", "--model_name", "no/such/model", "--output_dir", "{tmp}/g"], "no such directory"),
        (["sft", "--config", "{tmp}/absent.yaml"], "absent.yaml: no such config file"),
    ],
)
@pytest.mark.slow
def test_user_errors_are_one_line_exit_2(argv, needle, tmp_path):
    result = _run(*[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlhf-lab: error:") and needle in lines[0], result.stderr


@pytest.mark.slow
def test_bad_data_row_names_file_and_line(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "hi", "chosen": "a", "rejected": "b"}\n{"prompt": "x", "chosen": 3}\n')
    result = _run("sft", "--dataset", str(data), "--model_name", "tiny-random", "--split", "all",
                  "--output_dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and f"{data}:2:" in result.stderr, result.stderr


def test_decoding_preset_sets_the_shape_but_not_the_length_and_flags_win():
    from rlhf_lab.config import make_config
    from rlhf_lab.recipes.generate import GenerateConfig

    config = make_config(GenerateConfig, {"preset": "eval", "max_new_tokens": 48, "top_p": 0.5})
    decoding = config.decoding(given={"top_p"})
    assert (decoding.max_new_tokens, decoding.temperature, decoding.top_p) == (48, 0.7, 0.5)
    assert config.decoding(given=set()).top_p == 0.9


def test_offline_unless_online_is_asked(tmp_path):
    from rlhf_lab.cli import _asks_online

    assert not _asks_online(["--model_name", "x"])
    assert _asks_online(["--online"]) and _asks_online(["--online", "true"]) and _asks_online(["--online=1"])
    assert not _asks_online(["--online", "false", "--x", "1"])
    config = tmp_path / "c.yaml"
    config.write_text("online: true\n")
    assert _asks_online(["--config", str(config)])
    assert not _asks_online(["--config", str(config), "--online", "false"])
    assert not _asks_online(["--config", str(tmp_path / "missing.yaml")])


@pytest.mark.slow
def test_cli_sets_hub_offline_in_the_process(tmp_path):
    import subprocess
    import sys

    code = ("import os\nfrom rlhf_lab.cli import main\ntry:\n    main(['generate', '--help'])\n"
            "except SystemExit:\n    pass\nprint('HF_HUB_OFFLINE=' + os.environ.get('HF_HUB_OFFLINE', ''))")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("HF_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "HF_HUB_OFFLINE=1" in out.stdout
