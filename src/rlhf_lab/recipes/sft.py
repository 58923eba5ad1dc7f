"""Supervised fine-tuning (SFT): maximise log π(response | prompt) on demonstrations.

    for step in steps:
        batch  = the step's examples (fixed order per (seed, epoch); exact resume)
        loss   = −(1/N) Σ log π(y_t | y_<t) over response tokens (or every token with --loss_on all)
        AdamW step with clipping, accumulation over micro-batches, DDP over processes
    export the model (LoRA merged into the weights, or the adapter alone)

Data: the chosen reply of preference pairs (HH-RLHF by default) or instruction data (prompt/completion,
messages, alpaca). ``--loss_on all`` is RAFT/LMFlow's variant: prompt+response texts concatenated and cut
into ``max_length`` blocks, loss on every token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_lab.config import DataArgs, LoraArgs, ModelArgs, arg, require, torch_dtype
from rlhf_lab.data import load_sft_examples
from rlhf_lab.data.collate import TokenizedExample, tokenize_examples
from rlhf_lab.engine import (
    Run,
    Throughput,
    TrainArgs,
    global_batches,
    load_checkpoint,
    make_optimizer,
    make_scheduler,
    optimizer_step,
    progress_bar,
    resume_checkpoint,
    save_checkpoint,
    total_training_steps,
)
from rlhf_lab.models import load_causal_lm, load_tokenizer
from rlhf_lab.models.bounds import check_bounds
from rlhf_lab.models.checkpointing import enable_gradient_checkpointing
from rlhf_lab.models.policy import export_causal_lm, make_trainable
from rlhf_lab.sft_step import evaluate_nll, sft_backward


@dataclass
class SFTConfig(ModelArgs, DataArgs, LoraArgs, TrainArgs):
    eval_dataset: str | None = arg(None, "held-out data for eval NLL (default: the eval split of --dataset)")
    eval_limit: int = arg(64, "held-out examples used for eval NLL (0 = no eval)")
    eval_steps: int = arg(0, "evaluate every N steps (0 = only at the end)")
    max_length: int = arg(512, "tokens per example (prompt + response); longer ones are truncated or dropped")
    truncation: str = arg("truncate", "over-long examples: cut the response, or drop the example",
                          ("truncate", "drop"))
    loss_on: str = arg("response", "tokens that carry the loss", ("response", "all"))
    trainable: str = arg("lora", "what trains", ("lora", "full"))
    export: str = arg("merged", "final model: LoRA merged into full weights, or the adapter alone",
                      ("merged", "adapter"))

    def validate(self) -> None:
        self.validate_training()
        require(self.max_length >= 8, "max_length", "must be at least 8")
        require(self.eval_limit >= 0, "eval_limit", "must be >= 0")
        require(self.eval_steps >= 0, "eval_steps", "must be >= 0")
        self.validate_lora()
        self.validate_data()


def run(config: SFTConfig) -> dict[str, float]:
    check_bounds(config.model_name, tokens=config.max_length, tokens_flag="max_length",
                 batch=config.per_device_train_batch_size, batch_flag="per_device_train_batch_size",
                 online=config.online, dtype=config.dtype, backward_layers=-1)
    run = Run(config, config.output_dir, resume=config.resume, overwrite=config.overwrite_output_dir,
              mixed_precision=config.mixed_precision, report_to=config.report_to, seed=config.seed)
    tokenizer = load_tokenizer(config.model_name, config.online, config.trust_remote_code)

    # --- data -----------------------------------------------------------------------------------------
    load = dict(data_format=config.data_format, on_bad_row=config.on_bad_row)
    train_samples, reports = load_sft_examples(config.dataset, split=config.split, limit=config.limit,
                                                bottom=config.bottom, top=config.top, **load)
    for report in reports:
        run.print(report.summary())
    tokenize = dict(template=config.template, max_length=config.max_length, truncation=config.truncation,
                    loss_on=config.loss_on)
    train, dropped = tokenize_examples(train_samples, tokenizer, **tokenize)
    eval_examples: list[TokenizedExample] = []
    if config.eval_limit:
        eval_spec = config.eval_dataset or config.dataset
        eval_split = "all" if config.eval_dataset else "eval"
        eval_samples, _ = load_sft_examples(eval_spec, split=eval_split, limit=config.eval_limit, **load)
        eval_examples, _ = tokenize_examples(eval_samples, tokenizer, **tokenize)
    run.print(f"sft: {len(train)} training examples ({dropped} dropped as longer than {config.max_length} tokens), "
              f"{len(eval_examples)} eval examples")

    # --- model ----------------------------------------------------------------------------------------
    model = load_causal_lm(config.model_name, torch_dtype(config.dtype), config.online, config.trust_remote_code,
                           config.allow_pickle)
    model = make_trainable(model, config.trainable, config)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model.train()
    world, accumulation = run.world_size, config.gradient_accumulation_steps
    global_batch = config.per_device_train_batch_size * accumulation * world
    total_steps = total_training_steps(len(train), global_batch, config.num_train_epochs, config.max_steps)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config.lr_scheduler_type, config.warmup_steps, total_steps)
    model, optimizer = run.accelerator.prepare(model, optimizer)

    start_step = 0
    if config.resume and (checkpoint := resume_checkpoint(run)) is not None:
        state, _ = load_checkpoint(run, checkpoint, model, optimizer, scheduler)
        start_step = state["step"]
        run.print(f"sft: resumed from {checkpoint} at step {start_step}")

    # --- train ----------------------------------------------------------------------------------------
    pad_id = tokenizer.pad_token_id
    throughput = Throughput()
    progress = progress_bar(run, config.progress, total_steps, start_step, "sft")
    metrics: dict[str, float] = {}
    for step, epoch, indices in global_batches(len(train), global_batch, config.seed, start_step, total_steps):
        step_loss = sft_backward(run, model, train, indices, pad_id, accumulation, step + 1, "sft loss", throughput)
        grad_norm = optimizer_step(run, model, optimizer, scheduler, config.max_grad_norm)
        done = step + 1
        step_loss = run.accelerator.reduce(step_loss, reduction="sum")
        if done % config.logging_steps == 0 or done == total_steps:
            metrics = {"loss": float(step_loss), "grad_norm": float(grad_norm),
                       "learning_rate": scheduler.get_last_lr()[0], "epoch": done / (len(train) // global_batch),
                       "tokens_per_second": throughput.rate() * world}
            run.log(metrics, done)
        if eval_examples and config.eval_steps and done % config.eval_steps == 0 and done < total_steps:
            run.log({"eval/nll": evaluate_nll(model, eval_examples, pad_id, config.per_device_train_batch_size)}, done)
        if config.save_steps and done % config.save_steps == 0 and done < total_steps:
            save_checkpoint(run, done, model, optimizer, scheduler, {"epoch": epoch}, config.save_total_limit)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{float(step_loss):.3f}")
    if progress is not None:
        progress.close()

    # --- finish ---------------------------------------------------------------------------------------
    results = {"train/loss": metrics.get("loss", float("nan")), "steps": total_steps}
    if eval_examples:
        nll = evaluate_nll(model, eval_examples, pad_id, config.per_device_train_batch_size)
        results.update({"eval/nll": nll, "eval/perplexity": float(torch.tensor(nll).exp())})
        run.log({"eval/nll": nll}, total_steps)
    save_checkpoint(run, total_steps, model, optimizer, scheduler, {"epoch": -1}, config.save_total_limit)
    if run.is_main:
        export_causal_lm(run.accelerator.unwrap_model(model), tokenizer, run.dir / "model", config.export)
        run.print(f"sft: model written to {run.dir / 'model'}")
    run.accelerator.wait_for_everyone()
    run.end()
    return results
