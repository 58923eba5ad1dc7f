"""Adaptive model averaging (AMA; Lin et al. 2023, "Mitigating the Alignment Tax of RLHF", arXiv:2309.06256, §5).

Learn one merge ratio per group of layers so the merged model keeps the reward of the tuned (RLHF) model while
staying close to the base (SFT) model, which pays less alignment tax:

    groups G from --mask_level; logits a_g = logit(init_val) for every g (the only trainable tensors)
    for step in steps:
        α̃_g = init · (σ(a_g) + ε) / mean_g'(σ(a_g') + ε)          # mean ratio stays init_val
        W_m = α̃_g(m) · W_base,m + (1 − α̃_g(m)) · W_tuned,m       # every nn.Linear m, computed functionally
        loss = LM-NLL(merged model, high-reward data) + reg_alpha · Σ_m w(layer_m) · ρ(α̃_g(m) − init)
        AdamW step on a
    write alphas.safetensors and the merged model (the streaming merge of `rlhf-lab merge`)

The forward runs the base model through ``torch.func.functional_call`` with the merged linear weights, so no
module is copied: memory is the base model, the tuned linear weights (plain tensors) and, transiently, the
merged weights of the forward being run. Everything that is not an nn.Linear (embeddings, norms) comes from the
base model, as in Lin et al.'s code. ``lm_head`` keeps α̃ = init_val (Lin et al.'s merge script does the same; its trainer
normalised it with the group, a train/merge mismatch fixed here) unless ``--mask_level lblock3`` gives it a
grouped ratio. With tied embeddings the shared matrix is the head's, so it is merged with the head's ratio.

Groups (``--mask_level``, Lin et al.'s ``get_mask_alpha``): ``layerwise`` one per decoder layer; ``block3`` three
blocks split at layers 11/21 if the model has more than 30 layers else 8/16; ``lblock3`` the same plus a ratio
for lm_head; ``blockN`` N blocks of int(L/N) layers (the last takes the rest); ``linearwise`` one per linear.
Normalising over every group (Lin et al.'s code normalised ``linearwise`` over an empty set, a division by zero).

Regulariser (``--sum_reg_type``, Lin et al.'s string code): the integer part picks ρ — 0: |x|, 1: x², 2: 1 + x —
and a ``.2`` suffix weights layer L by w = 25 / (|L − L_mid| + 1) (lm_head counts as layer L_head), else w = 1.
The seed hard-codes L_mid = 13, L_head = 26 for its 26-layer OpenLLaMA-3B; here L_mid = L/2 and L_head = L,
the same numbers for L = 26.
"""

from __future__ import annotations

import json
import math
import re
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from torch.func import functional_call
from torch.nn.utils.stateless import _reparametrize_module  # what functional_call enters around the call

from rlhf_lab.config import DataArgs, arg, require
from rlhf_lab.data import load_sft_examples
from rlhf_lab.data.collate import tokenize_examples
from rlhf_lab.data.records import Prompt, Sample
from rlhf_lab.engine import (
    Run,
    Throughput,
    TrainArgs,
    global_batches,
    load_checkpoint,
    make_optimizer,
    make_scheduler,
    optimizer_step,
    resume_checkpoint,
    save_checkpoint,
    total_training_steps,
)
from rlhf_lab.errors import UserError
from rlhf_lab.losses import ama_alphas, ama_regularizer
from rlhf_lab.models import load_causal_lm, load_tokenizer
from rlhf_lab.models.bounds import check_bounds
from rlhf_lab.models.checkpointing import enable_gradient_checkpointing
from rlhf_lab.models.merging import WeightSource, check_compatible, layer_index, materialized, merge_dirs
from rlhf_lab.sft_step import sft_backward

_MASK_LEVEL = re.compile(r"^(layerwise|linearwise|block3|lblock3|block[1-9]\d*)$")
_REG_TYPES = ("0", "0.2", "1", "1.2", "2", "2.2")
_REG_KIND = {"0": "l1", "1": "l2", "2": "linear"}


@dataclass
class AMAConfig(DataArgs, TrainArgs):
    base: str = arg("default", "model before RLHF (θ_base, the SFT model): default, tiny-random, an HF/PEFT dir")
    tuned: str = arg("", "model after RLHF (θ_tuned): an HF dir or a PEFT adapter dir")
    dataset: str = arg("", "the collected high-reward data: RAFT's train_set_*.jsonl, generate/score output "
                       "(the top-scored response per prompt), or any SFT data file")
    split: str = arg("all", "fixed-seed split of the data to use", ("train", "eval", "all"))
    template: str = arg("chat", "how prompts become text", ("chat", "hh", "lmflow", "question_answer", "oasst", "raw"))
    mask_level: str = arg("layerwise", "ratio groups: layerwise | blockN (e.g. block4) | block3 | lblock3 | "
                          "linearwise")
    init_val: float = arg(0.2, "mean merge ratio α̃ (the base model's share), also the logits' start")
    epsilon: float = arg(0.2, "ε in α̃ = init·(σ(a)+ε)/mean(σ(a)+ε); larger keeps α̃ closer to init")
    reg_alpha: float = arg(1e-4, "weight of the penalty on α̃ moving away from init")
    sum_reg_type: str = arg("0.2", "penalty: 0 = L1, 1 = squared, 2 = linear; '.2' = layer-weighted "
                            "25/(|L − L/2| + 1)", _REG_TYPES)
    max_length: int = arg(512, "tokens per example (Lin et al.'s block_size 512)")
    truncation: str = arg("truncate", "over-long examples: cut the response, or drop", ("truncate", "drop"))
    loss_on: str = arg("all", "LM loss on every token of grouped prompt+response blocks (Lin et al.'s LMFlow "
                       "text_only) or on response tokens only", ("all", "response"))
    learning_rate: float = arg(2e-5, "AdamW learning rate of the logits (Lin et al.'s 2e-5; far larger suits "
                               "short runs)")
    per_device_train_batch_size: int = arg(2, "examples per micro-batch (Lin et al.'s 2)")
    online: bool = arg(False, "allow fetching models from a hub (offline by default)")

    def validate(self) -> None:
        self.validate_training()
        require(bool(self.tuned), "tuned", "give the tuned (post-RLHF) model directory")
        require(bool(self.dataset), "dataset", "give the collected high-reward data file")
        require(bool(_MASK_LEVEL.match(self.mask_level)), "mask_level",
                f"{self.mask_level!r} is not layerwise, linearwise, block3, lblock3 or blockN (N ≥ 1)")
        require(0.0 < self.init_val < 1.0, "init_val", f"must be in (0, 1) (got {self.init_val})")
        require(self.epsilon >= 0, "epsilon", "must be >= 0")
        require(self.reg_alpha >= 0, "reg_alpha", "must be >= 0")
        require(self.max_length >= 8, "max_length", "must be at least 8")
        self.validate_data()


# ---------------------------------------------------------------------------------------------------------
# Groups and the functionally merged model
# ---------------------------------------------------------------------------------------------------------


def linear_groups(model: nn.Module, mask_level: str, num_layers: int) -> tuple[list[str], dict[str, int], list[str]]:
    """(group names, linear module name → group index, linears with the fixed ratio init_val (lm_head))."""
    if mask_level in ("block3", "lblock3"):
        pivots = (11, 21) if num_layers > 30 else (8, 16)
    elif mask_level.startswith("block"):
        n = int(mask_level[5:])
        if n > num_layers:
            raise UserError(f"--mask_level {mask_level}: more blocks than the model's {num_layers} layers")
        each = num_layers // n
    groups: list[str] = []
    assignment: dict[str, int] = {}
    fixed: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        layer = layer_index(name + ".")
        if "lm_head" in name:
            if mask_level != "lblock3":
                fixed.append(name)
                continue
            group = "lm_head"
        elif layer is None or mask_level == "linearwise":
            group = name  # its own ratio (Llama has no linear outside the layers but lm_head)
        elif mask_level == "layerwise":
            group = f"layer{layer}"
        elif mask_level in ("block3", "lblock3"):
            group = f"block{sum(layer >= p for p in pivots)}"
        else:
            group = f"block{min(layer // each, n - 1)}"
        if group not in groups:
            groups.append(group)
        assignment[name] = groups.index(group)
    if not groups:
        raise UserError(f"--mask_level {mask_level}: the model has no linear layer to average")
    return groups, assignment, fixed


def reg_weights(assignment: dict[str, int], num_groups: int, sum_reg_type: str, num_layers: int) -> torch.Tensor:
    """w_g = Σ_{linear m in g} w(layer_m): Lin et al.'s code sums its penalty over linear modules, not groups."""
    weights = torch.zeros(num_groups)
    for name, g in assignment.items():
        if sum_reg_type.endswith(".2"):
            layer = num_layers if "lm_head" in name else layer_index(name + ".")
            layer = num_layers / 2 if layer is None else layer
            weights[g] += 25.0 / (abs(layer - num_layers / 2) + 1.0)
        else:
            weights[g] += 1.0
    return weights


class AveragedModel(nn.Module):
    """The base model whose linear weights are α̃·W_base + (1 − α̃)·W_tuned, with α̃ from trainable logits.

    Only ``logits`` is a parameter that trains; the base model is frozen and the tuned weights are plain tensors
    (not registered, so neither a state dict nor an optimizer ever sees them).
    """

    def __init__(self, base_model: nn.Module, tuned: WeightSource, groups: list[str], assignment: dict[str, int],
                 fixed: list[str], init_val: float, epsilon: float) -> None:
        super().__init__()
        self.model = base_model.requires_grad_(False)
        self.groups, self.init_val, self.epsilon = groups, init_val, epsilon
        self.logits = nn.Parameter(torch.full((len(groups),), math.log(init_val / (1 - init_val))))
        self.entries: list[tuple[str, torch.Tensor, torch.Tensor, int]] = []
        self._merged: dict[str, torch.Tensor] | None = None  # the merged weights of the forward being run
        self.constant: dict[str, torch.Tensor] = {}
        for name, module in base_model.named_modules():
            if not isinstance(module, nn.Linear) or (name not in assignment and name not in fixed):
                continue
            for kind in ("weight", "bias"):
                base_w = getattr(module, kind)
                if base_w is None:
                    continue
                key = f"{name}.{kind}"
                tuned_w = tuned.get(key).to(base_w.dtype)
                if name in fixed:  # lm_head: the fixed ratio init_val, merged once
                    self.constant[key] = init_val * base_w.detach() + (1 - init_val) * tuned_w
                else:
                    self.entries.append((key, base_w, tuned_w, assignment[name]))

    def alphas(self) -> torch.Tensor:
        return ama_alphas(self.logits, self.init_val, self.epsilon)

    def merged_weights(self) -> dict[str, torch.Tensor]:
        alphas = self.alphas()
        merged = dict(self.constant)
        for key, base_w, tuned_w, g in self.entries:
            merged[key] = alphas[g] * base_w + (1 - alphas[g]) * tuned_w
        return merged

    def ratios(self) -> dict[str, float]:
        """Stored tensor name → merge ratio for ``merge_dirs`` (tensors not listed come from the base: 1.0)."""
        alphas = self.alphas().detach()
        out = {key: self.init_val for key in self.constant}
        out.update({key: float(alphas[g]) for key, _, _, g in self.entries})
        return out

    def forward(self, **kwargs):
        self._merged = self.merged_weights()
        try:
            # tie_weights (the default) makes a tied input embedding follow the merged lm_head
            return functional_call(self.model, self._merged, args=(), kwargs=kwargs)
        finally:
            self._merged = None

    def recompute_context(self) -> AbstractContextManager:
        """--gradient_checkpointing: a checkpointed layer recomputes in the backward pass, after ``forward`` has
        put the base weights back; this puts that forward's merged weights in again around the recompute. (They
        stay alive until the backward, as they do without checkpointing: the matmuls keep them.)"""
        return _reparametrize_module(self.model, self._merged, tie_weights=True)


# ---------------------------------------------------------------------------------------------------------
# Data: the collected high-reward samples
# ---------------------------------------------------------------------------------------------------------


def load_collected(spec: str, split: str, limit: int | None, data_format: str, on_bad_row: str,
                   bottom: int | None = None, top: int | None = None) -> list[Sample]:
    """RAFT's ``train_set_*.jsonl`` (messages + response), ``generate``/``score`` output (the best-scored
    response of each row, or the first without scores), else any SFT data ``load_sft_examples`` reads."""
    path = Path(spec)
    first = _first_row(path) if path.is_file() and path.suffix == ".jsonl" else None
    if first is None or not ({"response", "responses"} & set(first)) or "completion" in first:
        samples, _ = load_sft_examples(spec, split=split, limit=limit, bottom=bottom, top=top,
                                       data_format=data_format, on_bad_row=on_bad_row)
        return samples
    samples = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
                if "response" in row:
                    response = row["response"]
                else:
                    responses, scores = row["responses"], row.get("scores") or {}
                    score = next(iter(scores.values())) if scores else None
                    best = max(range(len(responses)), key=lambda i: score[i]) if score else 0
                    response = responses[best]
                if not isinstance(response, str) or not response.strip():
                    raise ValueError("empty response")
                samples.append(Sample(Prompt(list(messages)), response))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as e:
                raise UserError(f"{path}:{line_no}: not a collected-sample row ({type(e).__name__}: {e})") from None
    samples = samples[bottom:top]
    return samples[:limit] if limit else samples


def _first_row(path: Path) -> dict | None:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    return None
                return row if isinstance(row, dict) else None
    return None


# ---------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------


def save_alphas(path: Path, model: AveragedModel, config: AMAConfig) -> None:
    """alphas.safetensors: the logits and α̃ per group; names and hyper-parameters in the header metadata."""
    meta = {"groups": json.dumps(model.groups), "init_val": str(config.init_val), "epsilon": str(config.epsilon),
            "mask_level": config.mask_level, "base": config.base, "tuned": config.tuned}
    save_file({"logits": model.logits.detach().cpu().contiguous(), "alphas": model.alphas().detach().cpu()},
              str(path), metadata=meta)


def run(config: AMAConfig) -> dict[str, float]:
    check_bounds(config.base, tokens=config.max_length, tokens_flag="max_length",
                 batch=config.per_device_train_batch_size, batch_flag="per_device_train_batch_size",
                 online=config.online, backward_layers=-1)
    run = Run(config, config.output_dir, resume=config.resume, overwrite=config.overwrite_output_dir,
              mixed_precision=config.mixed_precision, report_to=config.report_to, seed=config.seed)
    with ExitStack() as stack:
        base_dir = stack.enter_context(materialized(config.base, config.online))
        tuned_dir = stack.enter_context(materialized(config.tuned, config.online))
        return _train(run, config, base_dir, tuned_dir)


def _train(run: Run, config: AMAConfig, base_dir: Path, tuned_dir: Path) -> dict[str, float]:
    tokenizer = load_tokenizer(str(base_dir))

    # --- data -----------------------------------------------------------------------------------------
    samples = load_collected(config.dataset, config.split, config.limit, config.data_format, config.on_bad_row,
                             config.bottom, config.top)
    train, dropped = tokenize_examples(samples, tokenizer, template=config.template, max_length=config.max_length,
                                       truncation=config.truncation, loss_on=config.loss_on)
    run.print(f"ama: {len(samples)} collected samples -> {len(train)} training examples ({dropped} dropped)")

    # --- the averaged model: base module + tuned tensors + one logit per group ----------------------------
    base_source, tuned_source = WeightSource(base_dir), WeightSource(tuned_dir)
    check_compatible(base_source, tuned_source)
    base_model = load_causal_lm(str(base_dir))
    num_layers = base_model.config.num_hidden_layers
    groups, assignment, fixed = linear_groups(base_model, config.mask_level, num_layers)
    model = AveragedModel(base_model, tuned_source, groups, assignment, fixed, config.init_val, config.epsilon)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model.model, model.recompute_context)
    weights = reg_weights(assignment, len(groups), config.sum_reg_type, num_layers)
    kind = _REG_KIND[config.sum_reg_type.split(".")[0]]
    run.print(f"ama: {len(groups)} ratio groups ({config.mask_level}) over {len(assignment)} linear modules")
    model.model.train()

    world, accumulation = run.world_size, config.gradient_accumulation_steps
    global_batch = config.per_device_train_batch_size * accumulation * world
    total_steps = total_training_steps(len(train), global_batch, config.num_train_epochs, config.max_steps)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config.lr_scheduler_type, config.warmup_steps, total_steps)
    model, optimizer = run.accelerator.prepare(model, optimizer)
    averaged: AveragedModel = run.accelerator.unwrap_model(model)

    start_step = 0
    if config.resume and (checkpoint := resume_checkpoint(run)) is not None:
        state, _ = load_checkpoint(run, checkpoint, model, optimizer, scheduler)
        start_step = state["step"]
        run.print(f"ama: resumed from {checkpoint} at step {start_step}")

    # --- train the logits -------------------------------------------------------------------------------
    pad_id = tokenizer.pad_token_id
    throughput = Throughput()
    metrics: dict[str, float] = {}
    for step, epoch, indices in global_batches(len(train), global_batch, config.seed, start_step, total_steps):
        lm_loss = sft_backward(run, model, train, indices, pad_id, accumulation, step + 1, "ama LM loss", throughput)
        # the penalty depends on the logits only: one term per optimizer step
        reg = ama_regularizer(averaged.alphas(), config.init_val, weights, kind)
        run.accelerator.backward(config.reg_alpha * reg / world)
        grad_norm = optimizer_step(run, model, optimizer, scheduler, config.max_grad_norm)
        done = step + 1
        lm_loss = run.accelerator.reduce(lm_loss, reduction="sum")
        if done % config.logging_steps == 0 or done == total_steps:
            alphas = averaged.alphas().detach()
            metrics = {"loss": float(lm_loss) + config.reg_alpha * float(reg.detach()), "lm_loss": float(lm_loss),
                       "reg_loss": float(reg.detach()), "grad_norm": float(grad_norm),
                       "learning_rate": scheduler.get_last_lr()[0], "epoch": done / (len(train) // global_batch),
                       "alpha/min": float(alphas.min()), "alpha/max": float(alphas.max()),
                       "alpha/mean": float(alphas.mean()), "tokens_per_second": throughput.rate() * world}
            metrics.update({f"alpha/{g}": float(a) for g, a in zip(groups, alphas.tolist(), strict=True)})
            run.log(metrics, done)
        if config.save_steps and done % config.save_steps == 0 and done < total_steps:
            save_checkpoint(run, done, model, optimizer, scheduler, {"epoch": epoch}, config.save_total_limit)

    # --- finish: the ratios and the merged model ------------------------------------------------------------
    save_checkpoint(run, total_steps, model, optimizer, scheduler, {"epoch": -1}, config.save_total_limit)
    alphas = averaged.alphas().detach()
    if run.is_main:
        save_alphas(run.dir / "alphas.safetensors", averaged, config)
        (run.dir / "alphas.json").write_text(json.dumps(
            {"groups": dict(zip(groups, alphas.tolist(), strict=True)), "init_val": config.init_val,
             "epsilon": config.epsilon, "mask_level": config.mask_level, "lm_head": config.init_val
             if fixed else None}, indent=1), encoding="utf-8")
        ratios = averaged.ratios()
        info = {"base": config.base, "tuned": config.tuned, "ama": str(run.dir / "alphas.safetensors")}
        merge_dirs(base_dir, tuned_dir, run.dir / "model", lambda key: ratios.get(key, 1.0), 2000 * 2**20, info)
        run.print(f"ama: α̃ per group {[round(a, 4) for a in alphas.tolist()]}; merged model -> {run.dir / 'model'}")
    run.accelerator.wait_for_everyone()
    run.end()
    return {"train/loss": metrics.get("loss", float("nan")), "steps": total_steps,
            "alpha/min": float(alphas.min()), "alpha/max": float(alphas.max())}
