import dataclasses

import pytest
import torch

from rlhf_lab.engine import (
    Run,
    RunFailure,
    TrainArgs,
    check_finite,
    epoch_order,
    global_batches,
    latest_checkpoint,
    load_checkpoint,
    make_optimizer,
    make_scheduler,
    save_checkpoint,
    split_for_process,
)
from rlhf_lab.errors import UserError


def test_data_order_depends_only_on_seed_and_epoch_and_resumes_mid_epoch():
    assert epoch_order(10, 3, 1) == epoch_order(10, 3, 1)
    assert epoch_order(10, 3, 1) != epoch_order(10, 3, 2)
    full = list(global_batches(10, 3, seed=0, total_steps=7))
    assert [s for s, _, _ in full] == list(range(7))
    assert [e for _, e, _ in full] == [0, 0, 0, 1, 1, 1, 2]  # 3 steps per epoch, last partial batch dropped
    assert list(global_batches(10, 3, seed=0, start_step=4, total_steps=7)) == full[4:]
    for _, epoch, idx in full:
        assert len(set(idx)) == 3 and set(idx) <= set(epoch_order(10, 0, epoch))
    with pytest.raises(UserError, match="global batch"):
        next(global_batches(2, 3, seed=0))


def test_process_split_covers_the_global_batch_once():
    indices = list(range(12))
    parts = [split_for_process(indices, 2, rank, accumulation=3) for rank in range(2)]
    assert all(len(p) == 3 for p in parts)
    flat = sorted(i for p in parts for micro in p for i in micro)
    assert flat == indices


def test_linear_schedule_with_warmup():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, "linear", warmup_steps=1, total_steps=5)
    lrs = []
    for _ in range(5):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5, 1.0, 0.75, 0.5, 0.25])


def test_nan_guard_names_step_and_source(tmp_path):
    check_finite(torch.tensor(1.0), 3, "loss")
    with pytest.raises(RunFailure, match="step 3: reward is not finite; no checkpoint"):
        check_finite(torch.tensor([1.0, float("nan")]), 3, "reward", tmp_path)


@dataclasses.dataclass
class _Cfg(TrainArgs):
    pass


def _tiny_setup(tmp_path, resume=False):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    cfg = _Cfg(output_dir=str(tmp_path / "run"), learning_rate=0.1)
    run = Run(cfg, cfg.output_dir, resume=resume)
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, "linear", 0, 10)
    return run, model, opt, sched


def _train_step(model, opt, sched):
    loss = model(torch.randn(4, 3)).pow(2).mean()  # uses the RNG: resume must restore it
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def test_checkpoint_resume_is_exact_and_torn_saves_are_ignored(tmp_path):
    run, model, opt, sched = _tiny_setup(tmp_path)
    for step in range(1, 4):
        _train_step(model, opt, sched)
        if step == 2:
            save_checkpoint(run, 2, model, opt, sched, {"epoch": 0}, save_total_limit=2)
    expected = model.weight.detach().clone()

    # a kill in the middle of the next save leaves a hidden temp dir: never picked up
    torn = run.checkpoints / ".tmp-step-3"
    torn.mkdir()
    (torn / "trainable.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(run.checkpoints).name == "step-2"

    with pytest.raises(UserError, match="already holds a run"):
        Run(run.config, run.config.output_dir)
    run2, model2, opt2, sched2 = _tiny_setup(tmp_path, resume=True)
    state, _ = load_checkpoint(run2, latest_checkpoint(run2.checkpoints), model2, opt2, sched2)
    assert state == {"step": 2, "epoch": 0}
    _train_step(model2, opt2, sched2)
    assert torch.equal(model2.weight, expected)


def test_save_total_limit_keeps_the_newest(tmp_path):
    run, model, opt, sched = _tiny_setup(tmp_path)
    for step in (1, 2, 3, 4):
        save_checkpoint(run, step, model, opt, sched, {}, save_total_limit=2)
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["step-3", "step-4"]
    save_checkpoint(run, 5, model, opt, sched, {}, save_total_limit=1)
    assert [p.name for p in run.checkpoints.iterdir()] == ["step-5"]
