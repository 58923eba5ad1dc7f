"""SFT on tiny-random: the loss falls, and a run killed after a checkpoint resumes to the same weights."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from rlhf_lab.config import make_config
from rlhf_lab.io import read_jsonl
from rlhf_lab.recipes import sft


def _args(data, out, **over):
    args = dict(model_name="tiny-random", dataset=data, split="all", output_dir=str(out), per_device_train_batch_size=4,
                max_length=64, eval_limit=0, progress=False, trainable="full", learning_rate=3e-3, seed=1)
    args.update(over)
    return args


def test_sft_loss_decreases(sft_data, tmp_path):
    sft.run(make_config(sft.SFTConfig, _args(sft_data, tmp_path / "run", max_steps=24, lr_scheduler_type="constant")))
    losses = [row["loss"] for row in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in row]
    assert len(losses) == 24
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first - 1.0, (first, last)


def _cli(args: dict, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "rlhf_lab.cli", "sft"]
    for k, v in args.items():
        argv += [f"--{k}", str(v)]
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("trainable", ["lora", "full"])
@pytest.mark.slow
def test_killed_run_resumes_to_identical_weights(sft_data, tmp_path, trainable):
    common = _args(sft_data, tmp_path, max_steps=6, save_steps=2, gradient_accumulation_steps=2,
                   per_device_train_batch_size=2, trainable=trainable, export="merged")
    straight = _cli({**common, "output_dir": tmp_path / "straight"})
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed = _cli({**common, "output_dir": tmp_path / "killed"}, {"RLHF_LAB_FAULT": "after_save:4"})
    assert killed.returncode == -9  # SIGKILL right after the step-4 checkpoint
    assert not (tmp_path / "killed" / "model").exists()
    resumed = _cli({**common, "output_dir": tmp_path / "killed", "resume": "true"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr

    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=0), name

    def losses(run):
        return {r["step"]: r["loss"] for r in read_jsonl(tmp_path / run / "metrics.jsonl") if "loss" in r}

    straight_losses, resumed_losses = losses("straight"), losses("killed")
    assert sorted(resumed_losses) == list(range(1, 7))
    for step, value in straight_losses.items():
        assert abs(resumed_losses[step] - value) < 1e-6


@pytest.mark.slow
def test_kill_during_save_keeps_previous_checkpoint(sft_data, tmp_path):
    common = _args(sft_data, tmp_path / "run", max_steps=6, save_steps=2)
    killed = _cli(common, {"RLHF_LAB_FAULT": "during_save:4"})
    assert killed.returncode == -9
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / "step-2" / "state.json").is_file()
    assert not (checkpoints / "step-4").exists()
    resumed = _cli({**common, "resume": "true"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr and "step-2" in resumed.stderr
    assert not list(checkpoints.glob(".tmp-*"))


@pytest.mark.slow
def test_fresh_run_refuses_to_overwrite_a_run(sft_data, tmp_path):
    common = _args(sft_data, tmp_path / "run", max_steps=1)
    assert _cli(common).returncode == 0
    again = _cli(common)
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and "already holds a run" in again.stderr
