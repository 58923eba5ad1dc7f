"""Run-directory integrity (issue 19): one writer per run directory, verified checkpoints with fallback on resume,
bounds checked before work, a full disk during a save, and ``rlhf-lab verify``.

The process tests run ``python -m rlhf_lab.cli sft`` on tiny-random, as a user would, and compare the final weights
with an uninterrupted run of the same command.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf_lab import cli
from rlhf_lab.config import make_config
from rlhf_lab.engine import Run, TrainArgs, make_optimizer, make_scheduler, resume_checkpoint, save_checkpoint
from rlhf_lab.errors import UserError
from rlhf_lab.io import read_jsonl
from rlhf_lab.models.bounds import check_bounds, memory_lower_bound, model_shape
from rlhf_lab.rundir import (
    LOCK_NAME,
    MANIFEST_NAME,
    check_dir,
    claim_run_dir,
    release_run_dir,
    safetensors_problem,
)

# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------




def _sft_args(data: str, out, **over) -> dict:
    args = dict(model_name="tiny-random", dataset=data, split="all", output_dir=str(out), per_device_train_batch_size=2,
                max_length=64, eval_limit=0, progress=False, trainable="full", learning_rate=3e-3, seed=1,
                max_steps=6, save_steps=2, save_total_limit=2)
    args.update(over)
    return args


def _argv(verb: str, args: dict) -> list[str]:
    argv = [sys.executable, "-m", "rlhf_lab.cli", verb]
    for k, v in args.items():
        argv += [f"--{k}", str(v)]
    return argv


def _env(extra: dict | None = None) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", **(extra or {})}


def _cli(verb: str, args: dict, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(_argv(verb, args), capture_output=True, text=True, env=_env(env_extra), timeout=900)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("rlhf-lab:")]


def _snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under root except the lock (whose content names the latest holder)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != LOCK_NAME}


def _assert_same_model(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model" / "model.safetensors")), load_file(str(b / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.allclose(wa[name], wb[name], atol=1e-6, rtol=0), name


@pytest.fixture(scope="module")
def straight(sft_data, tmp_path_factory):
    """The uninterrupted run every resumed run must equal."""
    out = tmp_path_factory.mktemp("straight") / "run"
    result = _cli("sft", _sft_args(sft_data, out))
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def killed(sft_data, tmp_path_factory):
    """The same run SIGKILLed right after its step-4 checkpoint: step-2 and step-4 on disk, the lock file left."""
    out = tmp_path_factory.mktemp("killed") / "run"
    result = _cli("sft", _sft_args(sft_data, out), {"RLHF_LAB_FAULT": "after_save:4"})
    assert result.returncode == -9
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-4"]
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "run"
    shutil.copytree(run, dest)
    return dest


def _truncate(path: Path, cut: int = 100) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - cut)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------------------------
# one writer per run directory
# ---------------------------------------------------------------------------------------------------------


def test_lock_is_reentrant_nested_and_survives_a_stale_lock_file(tmp_path):
    root = tmp_path / "demo"
    # a lock file left by a killed process: nobody holds the flock, so the claim succeeds and records us
    root.mkdir()
    (root / LOCK_NAME).write_text(json.dumps({"pid": 999999, "host": "gone"}))
    claim_run_dir(root)
    assert json.loads((root / LOCK_NAME).read_text()) == {"pid": os.getpid(), "host": socket.gethostname()}
    assert _held_elsewhere(root)  # as another process sees it
    claim_run_dir(root)  # re-entrant in one process (an orchestrator writing into its own directory)
    claim_run_dir(root / "bon-study")  # a child run's own directory: the parent's lock does not cover it
    claim_run_dir(root / "bon-study" / "proxy_rm")
    assert _held_elsewhere(root / "bon-study" / "proxy_rm")
    release_run_dir(root)  # one of two claims released (a child Run.end() in the orchestrator's directory)
    assert _held_elsewhere(root)
    release_run_dir(root)
    assert not _held_elsewhere(root)
    claim_run_dir(root)


def _held_elsewhere(run_dir: Path) -> bool:
    """Whether the directory's lock is taken for anyone else: flock locks belong to an open file description, so a
    second open of the file, even in this process, sees what another process would."""
    import fcntl

    with open(run_dir / LOCK_NAME, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


@pytest.mark.slow
def test_a_second_process_on_a_locked_directory_exits_2_naming_the_holder(tmp_path):
    out = tmp_path / "gen"
    claim_run_dir(out)  # this process is the first writer
    (out / "generations.jsonl").write_text("mine\n")
    before = _snapshot(out)
    result = _cli("generate", dict(model_name="tiny-random", top=1, max_new_tokens=4, output_dir=out, progress=False))
    assert result.returncode == 2
    lines = _error_lines(result.stderr)
    assert lines == [f"rlhf-lab: error: {out}: another run is writing here (pid {os.getpid()} on host "
                     f"{socket.gethostname()}); wait for it to finish or choose another --output_dir"]
    assert _snapshot(out) == before


@pytest.mark.slow
def test_two_concurrent_training_runs_second_exits_2_first_unchanged(sft_data, tmp_path):
    """The issue's first failure: the same command started twice on one directory (or requeued with --resume)."""
    out = tmp_path / "run"
    args = _sft_args(sft_data, out, max_steps=200, save_steps=25)
    first = subprocess.Popen(_argv("sft", args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        deadline = time.monotonic() + 300
        while not (out / "metrics.jsonl").is_file():  # the first run holds the lock and is training
            assert first.poll() is None, first.communicate()[1][-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        others = [subprocess.Popen(_argv("sft", a), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=_env()) for a in (args, {**args, "resume": "true"})]
        results = [(p.wait(timeout=600), p.communicate()[1]) for p in others]
        assert first.poll() is None, "the first run ended before the others started: the test proves nothing"
        _, stderr = first.communicate(timeout=900)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr[-2000:]
    for returncode, other_stderr in results:
        assert returncode == 2
        assert _error_lines(other_stderr) == [
            f"rlhf-lab: error: {out}: another run is writing here (pid {first.pid} on host {socket.gethostname()}); "
            "wait for it to finish or choose another --output_dir"]
    steps = [row["step"] for row in read_jsonl(out / "metrics.jsonl")]
    assert steps == list(range(1, 201))  # one run's steps, once each, in order
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-175", "step-200"]


@pytest.mark.slow
def test_sigkill_leaves_the_lock_file_and_resume_is_not_blocked(sft_data, killed, straight, tmp_path):
    run = _copy(killed, tmp_path)
    assert (run / LOCK_NAME).is_file()  # left behind by the killed process
    resumed = _cli("sft", {**_sft_args(sft_data, run), "resume": "true"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {run / 'checkpoints' / 'step-4'} at step 4" in resumed.stderr
    _assert_same_model(straight, run)


# ---------------------------------------------------------------------------------------------------------
# verified checkpoints: fallback on resume, nothing deleted when none is intact
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_newest_checkpoint_falls_back_and_equals_uninterrupted_run(sft_data, killed, straight, tmp_path,
                                                                          damage):
    run = _copy(killed, tmp_path)
    if damage == "truncate":  # a copy cut short: the size no longer matches the manifest
        bad = run / "checkpoints" / "step-4" / "trainable.safetensors"
        _truncate(bad)
        problem = f"{bad}: {bad.stat().st_size} bytes, the manifest says {bad.stat().st_size + 100}"
    else:  # one flipped bit: same size, only the sha256 tells
        bad = run / "checkpoints" / "step-4" / "optimizer.pt"
        _flip_byte(bad)
        problem = f"{bad}: sha256 differs from the manifest"
    resumed = _cli("sft", {**_sft_args(sft_data, run), "resume": "true"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"rlhf-lab: checkpoint damaged, not used: {problem}" in resumed.stderr.splitlines()
    assert f"resumed from {run / 'checkpoints' / 'step-2'} at step 2" in resumed.stderr
    _assert_same_model(straight, run)
    assert check_dir(run / "checkpoints" / "step-4").ok  # rewritten by the resumed run


@pytest.mark.slow
def test_all_checkpoints_damaged_exits_2_and_touches_nothing(sft_data, killed, tmp_path):
    run = _copy(killed, tmp_path)
    _truncate(run / "checkpoints" / "step-4" / "trainable.safetensors")
    _flip_byte(run / "checkpoints" / "step-2" / "trainable.safetensors")
    before = _snapshot(run)
    resumed = _cli("sft", {**_sft_args(sft_data, run), "resume": "true"})
    assert resumed.returncode == 2
    lines = _error_lines(resumed.stderr)
    assert len(lines) == 1 and lines[0].startswith(
        f"rlhf-lab: error: no intact checkpoint to resume from in {run / 'checkpoints'} (")
    assert "step-4/trainable.safetensors" in lines[0] and "step-2/trainable.safetensors" in lines[0]
    assert lines[0].endswith("nothing was deleted")
    assert _snapshot(run) == before


@dataclasses.dataclass
class _Cfg(TrainArgs):
    pass


def _tiny_run(out: Path, resume: bool = False):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    cfg = _Cfg(output_dir=str(out), learning_rate=0.1)
    run = Run(cfg, cfg.output_dir, resume=resume)
    optimizer = make_optimizer(model, cfg)
    return run, model, optimizer, make_scheduler(optimizer, "linear", 0, 10)


def test_manifest_lists_every_file_and_old_checkpoints_are_checked_by_structure(tmp_path):
    run, model, opt, sched = _tiny_run(tmp_path / "run")
    path = save_checkpoint(run, 1, model, opt, sched, {"epoch": 0}, save_total_limit=2)
    manifest = json.loads((path / MANIFEST_NAME).read_text())["files"]
    assert sorted(manifest) == ["optimizer.pt", "rng-0.pt", "state.json", "trainable.safetensors"]
    for name, entry in manifest.items():
        data = (path / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert check_dir(path).ok

    # a checkpoint from before manifests: accepted on structure (safetensors header vs size, zip CRCs)
    (path / MANIFEST_NAME).unlink()
    legacy = check_dir(path)
    assert legacy.ok and "no manifest" in legacy.detail
    _flip_byte_in_largest_zip_member(path / "optimizer.pt")  # torch.save zips carry a CRC-32 per member
    assert "fails its CRC check" in check_dir(path).problem
    _truncate(path / "trainable.safetensors", cut=4)  # one float of the 8 the header describes
    assert safetensors_problem(path / "trainable.safetensors") == "data section is 28 bytes, the header describes 32"


def _flip_byte_in_largest_zip_member(path: Path) -> None:
    """Flip a byte of a member's data (the alignment padding between members is covered by no CRC)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        member = max(archive.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[member.header_offset + 26:member.header_offset + 30])
    data[member.header_offset + 30 + name_len + extra_len + member.file_size // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_resume_falls_back_in_process_and_prints_the_file(tmp_path, capsys):
    run, model, opt, sched = _tiny_run(tmp_path / "run")
    for step in (1, 2):
        save_checkpoint(run, step, model, opt, sched, {}, save_total_limit=3)
    _truncate(run.checkpoints / "step-2" / "optimizer.pt")
    run2, *_ = _tiny_run(tmp_path / "run", resume=True)
    assert resume_checkpoint(run2) == run.checkpoints / "step-1"
    err = capsys.readouterr().err
    assert f"rlhf-lab: checkpoint damaged, not used: {run.checkpoints / 'step-2' / 'optimizer.pt'}: " in err


# ---------------------------------------------------------------------------------------------------------
# a full disk during a save
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_enospc_mid_save_keeps_previous_checkpoint_and_exits_1(sft_data, straight, tmp_path):
    out = tmp_path / "run"
    args = _sft_args(sft_data, out)
    full = _cli("sft", args, {"RLHF_LAB_FAULT": "enospc_save:4"})
    assert full.returncode == 1
    torn = out / "checkpoints" / ".tmp-step-4" / "trainable.safetensors"
    assert _error_lines(full.stderr) == [
        f"rlhf-lab: run stopped: step 4: could not write the checkpoint {torn}: No space left on device; "
        f"last good checkpoint: {out / 'checkpoints' / 'step-2'}"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2"]  # the torn save is gone
    assert check_dir(out / "checkpoints" / "step-2").ok
    resumed = _cli("sft", {**args, "resume": "true"})  # and loadable: the run continues to the same weights
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {out / 'checkpoints' / 'step-2'} at step 2" in resumed.stderr
    _assert_same_model(straight, out)


# ---------------------------------------------------------------------------------------------------------
# bounds before work
# ---------------------------------------------------------------------------------------------------------


def test_memory_lower_bound_by_hand():
    shape = model_shape("tiny-random")
    # tiny-random: 2 layers, hidden 64, 2 key/value heads of size 16, the SmolLM2 vocabulary, tied embeddings
    assert (shape.context, shape.layers, shape.hidden, shape.kv_dim) == (2048, 2, 64, 32)
    vocab = shape.vocab
    # embedding (the output layer is tied to it), per layer q, o 64×64, k, v 64×32, gate, up, down 64×128 and two
    # norms of 64, the final norm
    params = vocab * 64 + 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 2 * 64) + 64
    assert shape.params == params
    # sampling 3 sequences of 10 tokens in float32: KV cache 2·2·32·10·4 bytes + logits 4·V, each
    assert memory_lower_bound(shape, 3, 10) == 4 * params + 3 * (2 * 2 * 32 * 10 * 4 + 4 * vocab)
    # training: the input of both layers, 64 floats per token
    assert memory_lower_bound(shape, 3, 10, "bfloat16", backward_layers=2) == 2 * params + 3 * 10 * 64 * 2 * 2


def test_context_and_memory_bounds_name_the_flag_before_any_work(tmp_path):
    from rlhf_lab.recipes import generate, sft

    out = tmp_path / "gen"
    with pytest.raises(UserError, match=r"^--max_new_tokens: 100000001 tokens per sequence \(a 1-token prompt \+ "
                                        r"--max_new_tokens\) exceed the context window of tiny-random "
                                        r"\(max_position_embeddings = 2048\)$"):
        generate.run(make_config(generate.GenerateConfig, dict(model_name="tiny-random", max_new_tokens=100_000_000,
                                                               top=1, output_dir=str(out))))
    with pytest.raises(UserError, match=r"^--generation_batch_size 100000000 with 2001 tokens per sequence needs at "
                                        r"least [0-9.]+ GiB .* more than the [0-9.]+ GiB available; lower "
                                        r"--generation_batch_size"):
        generate.run(make_config(generate.GenerateConfig, dict(model_name="tiny-random", max_new_tokens=2000,
                                                               generation_batch_size=100_000_000, top=1,
                                                               output_dir=str(out))))
    assert not out.exists()  # nothing written
    with pytest.raises(UserError, match=r"^--max_length: 4096 tokens per sequence exceed the context window"):
        sft.run(make_config(sft.SFTConfig, dict(model_name="tiny-random", max_length=4096,
                                                output_dir=str(tmp_path / "sft"))))
    assert not (tmp_path / "sft").exists()
    check_bounds("tiny-random", tokens=2048, tokens_flag="max_length", batch=4, batch_flag="b")  # at the limit: fine


@pytest.mark.slow
def test_generate_far_past_the_context_window_stops_at_once(tmp_path):
    """The issue's third failure, as the user typed it."""
    result = _cli("generate", dict(model_name="tiny-random", max_new_tokens=100000000, top=1,
                                   output_dir=tmp_path / "gen"))
    assert result.returncode == 2
    assert _error_lines(result.stderr) == [
        "rlhf-lab: error: --max_new_tokens: 100000001 tokens per sequence (a 1-token prompt + --max_new_tokens) "
        "exceed the context window of tiny-random (max_position_embeddings = 2048)"]


# ---------------------------------------------------------------------------------------------------------
# rlhf-lab verify
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_verify_reports_checkpoints_and_models(straight, tmp_path, capsys):
    assert cli.main(["verify", str(straight)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["path", "kind", "status", "detail"]
    rows = {line.split()[0]: line.split()[1:3] for line in out[1:-1]}
    assert rows == {"checkpoints/step-4": ["checkpoint", "ok"], "checkpoints/step-6": ["checkpoint", "ok"],
                    "model": ["model", "ok"]}
    assert out[-1] == "verify: 3 of 3 intact"

    run = _copy(straight, tmp_path)
    _flip_byte(run / "model" / "model.safetensors")
    assert cli.main(["verify", str(run)]) == 1
    out = capsys.readouterr().out.splitlines()
    damaged = [line.split(maxsplit=3) for line in out if " DAMAGED " in line]
    assert damaged == [["model", "model", "DAMAGED",
                        f"{run / 'model' / 'model.safetensors'}: sha256 differs from the manifest"]]
    assert out[-1] == "verify: 2 of 3 intact, 1 damaged"
    assert cli.main(["verify", str(tmp_path / "nowhere")]) == 2


def test_a_full_disk_outside_checkpoints_names_the_file_in_one_line(tmp_path, monkeypatch, capsys):
    import errno

    import rlhf_lab.io as io_module

    real_fsync = os.fsync

    def full_disk(fd):  # the disk fills up while config.yaml is written; the OSError names no file
        if ".config.yaml." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(io_module.os, "fsync", full_disk)
    out = tmp_path / "bon"
    scores = tmp_path / "s.jsonl"
    scores.write_text(json.dumps({"proxy_scores": [0.1, 0.3], "gold_scores": [1, 2]}) + "\n")
    assert cli.main(["bon", "--scores", str(scores), "--output_dir", str(out)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"rlhf-lab: run stopped: {out / 'config.yaml'}: No space left on device"]
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # the temp file was removed
