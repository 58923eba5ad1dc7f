"""Preference optimisation without a reward model: DPO, IPO, RRHF, SimPO, CPO, ORPO and LD-DPO on (prompt, chosen,
rejected) pairs, and KTO on single replies labelled desirable or undesirable.

    pairs      = a preference file (HH-RLHF by default), or — with --label_with RM — per round: 2 samples per prompt
                 from the current policy, scored by the RM / ensemble objective, better one = chosen
    ref logps  = log π_ref(y | x) of every pair, computed ONCE before training (LoRA: adapter disabled; full: the
                 initial weights) and saved in the run dir — never recomputed per step
    for step in steps:
        batch  = the step's pairs (fixed order per (seed, epoch); exact resume), sorted by length
        logps  = log π_θ(y_w | x), log π_θ(y_l | x): chosen and rejected rows in ONE forward pass
        loss   = dpo_loss(...)  (DPO/cDPO, IPO, R-DPO length term, length-normalised; LD-DPO on tail-weighted
                 log-probs), rrhf_loss, or the reference-free simpo_loss / cpo_loss / orpo_loss (no ref logps at
                 all); KTO: a row is (x, y, y') with y' another row's reply, one forward gives log π(y|x) and the
                 reference point z0 from log π(y'|x), then kto_loss
        AdamW step with clipping, accumulation over micro-batches, DDP over processes
    eval: implicit reward r = β·(log π_θ − log π_ref) on held-out pairs: accuracy P(r_w > r_l) and margin
    export the model (LoRA merged into the weights, or the adapter alone)

References: DPO — Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a Reward
Model"; cDPO — Mitchell 2023; IPO — Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from
Human Preferences" (TRL's convention: average per-token log-ratios); R-DPO — Park et al. 2024, "Disentangling
Length from Quality in Direct Preference Optimization"; RRHF — Yuan et al. 2023, "RRHF: Rank Responses to Align
Language Models with Human Feedback without tears"; iterative DPO with an RM labeller — Xiong et al. 2024;
SimPO — Meng et al. 2024; CPO — Xu et al. 2024; ORPO — Hong et al. 2024; LD-DPO — Liu et al. 2024; KTO —
Ethayarajh et al. 2024. The formulas are in ``rlhf_lab.losses`` (``dpo_loss``, ``rrhf_loss``, ``simpo_loss``,
``cpo_loss``, ``orpo_loss``, ``ld_dpo_logps``, ``kto_loss``).
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from safetensors.torch import load_file

from rlhf_lab.config import DataArgs, LoraArgs, ModelArgs, arg, require, torch_dtype
from rlhf_lab.data import load_pairs, load_prompts
from rlhf_lab.data.collate import TokenizedPair, fit_pair, tokenize_pairs
from rlhf_lab.data.records import Pair, Prompt, Sample
from rlhf_lab.data.templates import render_prompt, render_response
from rlhf_lab.engine import (
    Run,
    RunFailure,
    Throughput,
    TrainArgs,
    check_finite,
    epoch_order,
    global_batches,
    load_checkpoint,
    make_optimizer,
    make_scheduler,
    optimizer_step,
    progress_bar,
    resume_checkpoint,
    save_checkpoint,
    split_for_process,
    total_training_steps,
)
from rlhf_lab.io import atomic_file, read_jsonl, write_jsonl
from rlhf_lab.losses import (
    cpo_loss,
    dpo_loss,
    kto_loss,
    kto_reference_point,
    ld_dpo_logps,
    orpo_loss,
    rrhf_loss,
    simpo_loss,
)
from rlhf_lab.models import load_causal_lm, load_tokenizer
from rlhf_lab.models.bounds import check_bounds
from rlhf_lab.models.checkpointing import enable_gradient_checkpointing
from rlhf_lab.models.logprobs import (
    batch_token_logprobs,
    concat_batch,
    response_logprobs,
    shared_prompt_logprobs,
)
from rlhf_lab.models.policy import export_causal_lm, make_trainable

LOSS_TYPES = {"dpo": "sigmoid", "ipo": "ipo", "rrhf": "rrhf", "simpo": "simpo", "cpo": "cpo", "orpo": "orpo",
              "ld_dpo": "sigmoid", "kto": "kto"}
# Losses without a reference model: no reference pass at all (RRHF keeps its eval-only reference, see docs/dpo.md).
REFERENCE_FREE = ("simpo", "cpo", "orpo")


@dataclass
class DPOConfig(ModelArgs, DataArgs, LoraArgs, TrainArgs):
    loss: str = arg("dpo", "objective: DPO (sigmoid; cDPO with --label_smoothing), IPO, RRHF, SimPO, CPO, ORPO, "
                    "LD-DPO, or KTO (unpaired data)", tuple(LOSS_TYPES))
    beta: float = arg(0.1, "β: strength of the KL tie to the reference (DPO, LD-DPO, KTO); τ for IPO; the reward "
                      "scale of SimPO and CPO; λ (odds-ratio weight) for ORPO")
    label_smoothing: float = arg(0.0, "conservative DPO ε: assumed probability that a label is flipped, in [0, 0.5)")
    length_normalize: bool = arg(False, "DPO on per-token average log-ratios (TRL's sigmoid_norm); IPO always is")
    rdpo_alpha: float = arg(0.0, "R-DPO length regulariser α ≥ 0: α·(|y_w| − |y_l|) is subtracted inside the sigmoid")
    rrhf_weight: float = arg(1.0, "RRHF: weight of the ranking loss against the SFT loss on the best response")
    rrhf_length_penalty: float = arg(1.0, "RRHF: scores are Σ log π / |y|^λ with this λ (1 = length-normalised)")
    simpo_gamma: float = arg(0.5, "SimPO: target reward margin γ ≥ 0 (the paper tunes γ/β in [0, 1])")
    cpo_alpha: float = arg(1.0, "CPO: weight α of the NLL term on the chosen reply")
    ld_alpha: float = arg(0.5, "LD-DPO: weight α in [0, 1] of the log-probs past the shorter reply's length "
                          "(1 = DPO, 0 = only the shared-length prefix counts)")
    desirable_weight: float = arg(1.0, "KTO: weight λ_D of the desirable rows' loss")
    undesirable_weight: float = arg(1.0, "KTO: weight λ_U of the undesirable rows' loss")
    eval_dataset: str | None = arg(None, "held-out pairs for eval (default: the eval split of --dataset)")
    eval_limit: int = arg(64, "held-out pairs for the implicit-reward accuracy and margins (0 = no eval)")
    eval_steps: int = arg(0, "evaluate every N steps (0 = only at the end)")
    max_length: int = arg(512, "tokens per sequence (prompt + response); longer ones are truncated or dropped")
    truncation: str = arg("truncate", "over-long pairs: cut the responses, or drop the pair", ("truncate", "drop"))
    trainable: str = arg("lora", "what trains (LoRA: the reference is the model with its adapter disabled)",
                         ("lora", "full"))
    export: str = arg("merged", "final model: LoRA merged into full weights, or the adapter alone",
                      ("merged", "adapter"))
    ref_batch_size: int = arg(16, "sequences per forward pass when computing reference and eval log-probs")
    share_prompt: bool = arg(True, "read each pair's prompt once for both replies (one row, a block attention "
                             "mask): the same log-probs with fewer tokens; off = a prompt + reply row each")
    # ---- on-the-fly pairs (iterative DPO) ----
    label_with: str | None = arg(None, "build pairs on the fly: sample 2 responses per prompt from the policy and "
                                 "label them with these reward models (comma-separated run dirs = an ensemble)")
    objective: str = arg("mean", "ensemble objective for labelling", ("mean", "WCO", "UWO"))
    uwo_weight: float = arg(0.5, "λ of UWO: mean − λ·variance")
    rounds: int = arg(1, "with --label_with: rounds of sample → label → train; the reference is the policy at the "
                      "start of each round (iterative DPO)")
    prompts_per_round: int = arg(64, "with --label_with: prompts sampled per round")
    max_new_tokens: int = arg(64, "with --label_with: response length limit when sampling")
    temperature: float = arg(1.0, "with --label_with: sampling temperature")
    generation_batch_size: int = arg(16, "with --label_with: rows per generation batch")

    def validate(self) -> None:
        self.validate_training()
        require(self.beta > 0, "beta", "must be positive")
        require(0 <= self.label_smoothing < 0.5, "label_smoothing", "must be in [0, 0.5)")
        require(self.rdpo_alpha >= 0, "rdpo_alpha", "must be >= 0")
        require(not (self.rdpo_alpha and self.loss != "dpo"), "rdpo_alpha", "applies to --loss dpo only")
        require(not (self.label_smoothing and self.loss != "dpo"), "label_smoothing", "applies to --loss dpo only")
        require(self.rrhf_weight >= 0, "rrhf_weight", "must be >= 0")
        require(self.rrhf_length_penalty >= 0, "rrhf_length_penalty", "must be >= 0")
        require(self.simpo_gamma >= 0, "simpo_gamma", "must be >= 0 (a negative margin rewards the rejected reply)")
        require(self.loss != "simpo" or self.simpo_gamma <= 10 * self.beta, "simpo_gamma",
                f"SimPO's margin γ = {self.simpo_gamma} is over 10·β = {10 * self.beta}: the per-token reward gap "
                "it asks for is unreachable (the paper uses γ/β ≤ 1)")
        require(self.cpo_alpha >= 0, "cpo_alpha", "must be >= 0")
        require(0 <= self.ld_alpha <= 1, "ld_alpha", "must be in [0, 1]")
        require(self.desirable_weight > 0, "desirable_weight", "must be positive")
        require(self.undesirable_weight > 0, "undesirable_weight", "must be positive")
        require(not (self.loss == "kto" and self.label_with), "label_with",
                "builds preference pairs; --loss kto trains on unpaired rows (use a paired loss, e.g. --loss dpo)")
        require(self.loss != "kto" or self.per_device_train_batch_size >= 2, "per_device_train_batch_size",
                "must be at least 2 for KTO: its reference point is a mean over the micro-batch's other replies")
        require(self.max_length >= 8, "max_length", "must be at least 8")
        require(self.eval_limit >= 0, "eval_limit", "must be >= 0")
        require(self.eval_steps >= 0, "eval_steps", "must be >= 0")
        self.validate_lora()
        self.validate_data()
        require(self.ref_batch_size >= 1, "ref_batch_size", "must be at least 1")
        require(self.rounds >= 1, "rounds", "must be at least 1")
        require(self.rounds == 1 or self.label_with is not None, "rounds", "needs --label_with (pairs on the fly)")
        require(self.uwo_weight >= 0, "uwo_weight", "must be >= 0")
        require(self.prompts_per_round >= 1, "prompts_per_round", "must be at least 1")
        require(self.max_new_tokens >= 1, "max_new_tokens", "must be at least 1")
        require(self.temperature > 0, "temperature", "must be positive")
        require(self.generation_batch_size >= 1, "generation_batch_size", "must be at least 1")
        require(self.label_with is None or self.max_steps > 0, "max_steps",
                "with --label_with, give the optimizer steps per round (--max_steps > 0)")


# ---------------------------------------------------------------------------------------------------------
# Pairs as token ids
# ---------------------------------------------------------------------------------------------------------


def pair_token_ids(pairs: list[Pair], tokenizer, config: DPOConfig) -> tuple[list[TokenizedPair], int]:
    # the policy's log-probs need each reply's start: keep the prompt whole, cut the replies to the room left
    return tokenize_pairs(pairs, tokenizer, template=config.template, max_length=config.max_length,
                          truncation=config.truncation, keep="start")


def tokenize_unpaired(rows: list[Sample], tokenizer, config: DPOConfig
                      ) -> tuple[list[TokenizedPair], torch.Tensor, int]:
    """KTO rows as token ids: ``(rows, labels, dropped)``. Each row is a ``TokenizedPair`` of its prompt, its
    completion (in ``chosen_ids``) and a mismatched completion for KTO's reference point (in ``rejected_ids``):
    the completion of the previous row, cyclically, as TRL's KTOTrainer pairs them. Sharing the prompt, the two
    replies go through the same one-row layout as a preference pair (``--share_prompt``). The mismatched reply is
    cut to the room beside the prompt: it only feeds the batch's KL estimate z0, so a long one must not cost the
    row (``--truncation drop`` drops a row only for its own completion, as a pair is dropped for its replies)."""
    prompts = [tokenizer(render_prompt(r.prompt.messages, config.template, tokenizer),
                         add_special_tokens=False)["input_ids"] for r in rows]
    completions = [tokenizer(render_response(r.response, config.template, tokenizer),
                             add_special_tokens=False)["input_ids"] for r in rows]
    out, labels, dropped = [], [], 0
    for i, row in enumerate(rows):
        mismatched = completions[i - 1][:max(1, config.max_length - len(prompts[i]))]
        fitted = fit_pair(TokenizedPair(prompts[i], completions[i], mismatched, i), config.max_length,
                          config.truncation, keep="start")
        if fitted is None:
            dropped += 1
            continue
        out.append(fitted)
        labels.append(bool(row.meta["label"]))
    return out, torch.tensor(labels, dtype=torch.bool), dropped


def _fingerprint(pairs: list[TokenizedPair], ld_alpha: float | None = None) -> str:
    digest = hashlib.sha256()
    if ld_alpha is not None:  # LD-DPO's reference log-probs weight the tail: a different α is a different cache
        digest.update(f"ld_alpha={ld_alpha!r}".encode())
    for p in pairs:
        digest.update(json.dumps([p.prompt_ids, p.chosen_ids, p.rejected_ids]).encode())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------
# Sequence log-probs: the reference pass (once) and the policy pass (every step)
# ---------------------------------------------------------------------------------------------------------


def sequence_logps(model, pairs: list[TokenizedPair], pad_id: int, batch_size: int, run: Run,
                   share_prompt: bool = True, ld_alpha: float | None = None) -> torch.Tensor:
    """Σ_t log π(y_t | x, y_<t) of the chosen and of the rejected reply of every pair: shape (N, 2), no grad.
    With ``ld_alpha``, LD-DPO's weighted sums instead (``losses.ld_dpo_logps``).

    Rows are split over processes (rank r scores every world-th pair) and gathered, so every process ends with
    all of them; within a process pairs are batched by length, ``batch_size`` sequences (replies) per pass —
    both replies of a pair in one row with ``share_prompt``, else a row per reply (``response_logprobs``).
    """
    from accelerate.utils import gather_object

    mine = list(range(run.rank, len(pairs), run.world_size))
    if share_prompt:
        sums = _shared_prompt_sums(model, [pairs[i] for i in mine], pad_id, max(1, batch_size // 2), ld_alpha)
    else:
        prompts = [pairs[i].prompt_ids for i in mine] * 2
        responses = [pairs[i].chosen_ids for i in mine] + [pairs[i].rejected_ids for i in mine]
        per_token = response_logprobs(model, prompts, responses, pad_id, batch_size) if mine else []
        if ld_alpha is None or not mine:
            sums = [float(t.double().sum()) for t in per_token]
        else:
            padded = torch.nn.utils.rnn.pad_sequence([t.double() for t in per_token], batch_first=True)
            mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(t)) for t in per_token], batch_first=True)
            n = len(mine)
            chosen, rejected = ld_dpo_logps(padded[:n], mask[:n], padded[n:], mask[n:], ld_alpha)
            sums = chosen.tolist() + rejected.tolist()
    rows = [(i, sums[k], sums[k + len(mine)]) for k, i in enumerate(mine)]
    if run.world_size > 1:
        rows = gather_object(rows)
    out = torch.zeros(len(pairs), 2)
    for i, chosen, rejected in rows:
        out[i, 0], out[i, 1] = chosen, rejected
    return out


def reference_logps(run: Run, model, pairs: list[TokenizedPair], pad_id: int, config: DPOConfig, name: str,
                    use_base: bool, can_compute: bool) -> torch.Tensor:
    """The reference log-probs of ``pairs``, computed once and cached in ``{run dir}/{name}.safetensors``.

    ``use_base``: score with the LoRA adapter disabled (the frozen base model is the reference, no second copy).
    The cache is keyed by a fingerprint of the token ids, so a resumed run reuses it only for the same pairs. When
    the reference is not the frozen base, it cannot be recomputed once training moved the weights
    (``can_compute`` false): then the file must be there.
    """
    path = run.dir / f"{name}.safetensors"
    ld_alpha = _ld_alpha(config)
    fingerprint = _fingerprint(pairs, ld_alpha)
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("fingerprint") == fingerprint:
                run.print(f"dpo: reference log-probs of {len(pairs)} pairs loaded from {path}")
                return load_file(str(path))["logps"]
    if not (use_base or can_compute):
        raise RunFailure(f"{path}: missing or for other pairs; the reference (initial weights) cannot be recomputed "
                         "after training started")
    unwrapped = run.accelerator.unwrap_model(model)
    context = unwrapped.disable_adapter() if use_base and hasattr(unwrapped, "disable_adapter") else nullcontext()
    with context:
        logps = sequence_logps(unwrapped, pairs, pad_id, config.ref_batch_size, run, config.share_prompt, ld_alpha)
    if run.is_main:
        with atomic_file(path, "wb") as f:
            f.write(_safetensors_bytes({"logps": logps}, {"fingerprint": fingerprint}))
    run.accelerator.wait_for_everyone()
    return logps


def _ld_alpha(config: DPOConfig) -> float | None:
    """LD-DPO's α when the run uses it (its reference and policy log-probs are tail-weighted), else None."""
    return config.ld_alpha if config.loss == "ld_dpo" else None


def _safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    from safetensors.torch import save

    return save(tensors, metadata=metadata)


@torch.no_grad()
def _shared_prompt_sums(model, pairs: list[TokenizedPair], pad_id: int, pairs_per_pass: int,
                        ld_alpha: float | None = None) -> list[float]:
    """Chosen then rejected sums (2N floats) of ``pairs``, length-sorted passes of ``pairs_per_pass`` pairs."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i].prompt_ids) + len(pairs[i].chosen_ids)
                   + len(pairs[i].rejected_ids))
    sums = [0.0] * (2 * len(pairs))
    for start in range(0, len(order), pairs_per_pass):
        rows = order[start:start + pairs_per_pass]
        token_logps, mask, totals = policy_logps(model, [pairs[i] for i in rows], pad_id, share_prompt=True)
        if ld_alpha is not None:
            totals = torch.cat(ld_dpo_logps(token_logps[:len(rows)], mask[:len(rows)], token_logps[len(rows):],
                                            mask[len(rows):], ld_alpha))
        for k, i in enumerate(rows):
            sums[i], sums[len(pairs) + i] = float(totals[k].double()), float(totals[len(rows) + k].double())
    model.train(was_training)
    return sums


def policy_logps(model, pairs: list[TokenizedPair], pad_id: int, share_prompt: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward over chosen and rejected replies together: per-token log-probs (2B, T'), their mask, and the
    sequence sums (2B,) — rows 0..B−1 are the chosen replies, B..2B−1 the rejected ones.

    ``share_prompt``: one input row per pair, prompt + chosen + rejected, the prompt read once
    (``shared_prompt_logprobs``); else a ``prompt + reply`` row per reply, right-padded."""
    if share_prompt:
        token_logps, mask = shared_prompt_logprobs(model, [p.prompt_ids for p in pairs],
                                                   [p.chosen_ids for p in pairs], [p.rejected_ids for p in pairs],
                                                   pad_id)
        return token_logps, mask, token_logps.sum(-1)
    prompts = [p.prompt_ids for p in pairs] * 2
    responses = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    batch = concat_batch(prompts, responses, pad_id)
    token_logps = batch_token_logprobs(model, batch)
    mask = batch["response_mask"][:, batch["first_target"]:]
    token_logps = token_logps * mask
    return token_logps, mask, token_logps.sum(-1)


def pair_losses(config: DPOConfig, pairs: list[TokenizedPair], token_logps: torch.Tensor, mask: torch.Tensor,
                logps: torch.Tensor, ref: torch.Tensor, labels: torch.Tensor | None = None,
                reference_point: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair losses (B,) and per-pair statistics to log (sums over the batch are taken by the caller).

    KTO: the "pairs" are (completion, mismatched completion) rows with ``labels``, and ``reference_point`` is
    z0 of the micro-batch (``kto_z0``)."""
    b = len(pairs)
    chosen, rejected = logps[:b], logps[b:]
    if config.loss == "kto":
        losses, rewards = kto_loss(chosen, ref[:, 0], labels, reference_point, config.beta, config.desirable_weight,
                                   config.undesirable_weight)
        desirable = labels.to(rewards.dtype)
        # rewards/signed = β·r for desirable rows, −β·r for undesirable ones: rises as KTO learns
        return losses, {"logps/completion": chosen.detach(), "rewards/signed": rewards * (2 * desirable - 1),
                        "kl": reference_point.detach().expand(b), "desirable_fraction": desirable}
    lengths = torch.tensor([[len(p.chosen_ids), len(p.rejected_ids)] for p in pairs], dtype=logps.dtype)
    stats = {"logps/chosen": chosen.detach(), "logps/rejected": rejected.detach()}
    if config.loss == "rrhf":
        per_pair = token_logps.view(2, b, -1).transpose(0, 1)  # (B, K=2, T'): response 0 chosen, 1 rejected
        rewards = torch.tensor([[1.0, 0.0]]).expand(b, 2)
        losses, rank, sft = rrhf_loss(per_pair, mask.view(2, b, -1).transpose(0, 1), rewards, config.rrhf_weight,
                                      config.rrhf_length_penalty)
        score = (chosen / lengths[:, 0].pow(config.rrhf_length_penalty)).detach()
        score_r = (rejected / lengths[:, 1].pow(config.rrhf_length_penalty)).detach()
        stats.update({"rrhf/rank_loss": rank.detach(), "rrhf/sft_loss": sft.detach(), "scores/chosen": score,
                      "scores/rejected": score_r, "scores/accuracies": (score > score_r).float(),
                      "scores/margins": score - score_r})
        return losses, stats
    if config.loss == "ld_dpo":
        chosen, rejected = ld_dpo_logps(token_logps[:b], mask[:b], token_logps[b:], mask[b:], config.ld_alpha)
    losses, r_chosen, r_rejected, extra = sequence_pair_losses(config, chosen, rejected, ref, lengths)
    stats.update(implicit_reward_stats(r_chosen, r_rejected))
    stats.update(extra)
    return losses, stats


def sequence_pair_losses(config: DPOConfig, chosen: torch.Tensor, rejected: torch.Tensor, ref: torch.Tensor,
                         lengths: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The pair losses that need only sequence log-probs (every loss but RRHF and KTO): ``(losses, chosen rewards,
    rejected rewards, extra statistics)``. ``chosen`` / ``rejected`` are Σ log π (LD-DPO: its weighted sums),
    ``ref`` (B, 2) the reference's (ignored by the reference-free losses), ``lengths`` (B, 2) the reply lengths."""
    lc, lr = lengths[:, 0], lengths[:, 1]
    if config.loss == "simpo":
        losses, r_chosen, r_rejected = simpo_loss(chosen, rejected, lc, lr, config.beta, config.simpo_gamma)
        return losses, r_chosen, r_rejected, {}
    if config.loss == "cpo":
        nll = -chosen / lc.clamp(min=1)  # per-token NLL of the chosen reply
        losses, r_chosen, r_rejected = cpo_loss(chosen, rejected, config.beta, nll, config.cpo_alpha)
        return losses, r_chosen, r_rejected, {"nll_loss": nll.detach()}
    if config.loss == "orpo":
        avg_chosen, avg_rejected = chosen / lc.clamp(min=1), rejected / lr.clamp(min=1)
        losses, r_chosen, r_rejected, log_odds = orpo_loss(avg_chosen, avg_rejected, config.beta, -avg_chosen)
        return losses, r_chosen, r_rejected, {"nll_loss": -avg_chosen.detach(), "log_odds_ratio": log_odds}
    losses, r_chosen, r_rejected = dpo_loss(
        chosen, rejected, ref[:, 0], ref[:, 1], config.beta, LOSS_TYPES[config.loss],
        label_smoothing=config.label_smoothing, chosen_lengths=lc, rejected_lengths=lr,
        length_normalize=True if config.loss == "ipo" else config.length_normalize, rdpo_alpha=config.rdpo_alpha)
    return losses, r_chosen, r_rejected, {}


def kto_z0(run: Run, kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point over the micro-batch of every process (TRL gathers it across processes too)."""
    if run.world_size == 1:
        return kto_reference_point(kl_logps, ref_kl_logps)
    diffs = (kl_logps - ref_kl_logps).detach().float()
    totals = run.accelerator.reduce(torch.stack([diffs.sum(), torch.tensor(float(diffs.numel()))]), reduction="sum")
    return kto_reference_point(totals[0] / totals[1], torch.zeros(()))


def implicit_reward_stats(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    """TRL's metrics of the implicit reward r = β·(log π − log π_ref), per pair."""
    return {"rewards/chosen": r_chosen, "rewards/rejected": r_rejected,
            "rewards/accuracies": (r_chosen > r_rejected).float(), "rewards/margins": r_chosen - r_rejected}


@torch.no_grad()
def evaluate(run: Run, model, pairs: list[TokenizedPair], ref: torch.Tensor, pad_id: int,
             config: DPOConfig) -> dict[str, float]:
    """Held-out pairs: accuracy and margins of the loss's reward — the implicit reward β·(log π − log π_ref) for
    DPO, IPO, LD-DPO, RRHF and KTO, the policy-only reward for SimPO, CPO and ORPO — and the loss (not for RRHF or
    KTO, whose training data are not these pairs)."""
    unwrapped = run.accelerator.unwrap_model(model)
    logps = sequence_logps(unwrapped, pairs, pad_id, config.ref_batch_size, run, config.share_prompt,
                           _ld_alpha(config))
    r_chosen, r_rejected = config.beta * (logps[:, 0] - ref[:, 0]), config.beta * (logps[:, 1] - ref[:, 1])
    losses = None
    if config.loss not in ("rrhf", "kto"):
        lengths = torch.tensor([[len(p.chosen_ids), len(p.rejected_ids)] for p in pairs], dtype=torch.float)
        losses, r_chosen, r_rejected, _ = sequence_pair_losses(config, logps[:, 0], logps[:, 1], ref, lengths)
    out = {f"eval/{k}": float(v.mean()) for k, v in implicit_reward_stats(r_chosen, r_rejected).items()}
    out["eval/logps/chosen"], out["eval/logps/rejected"] = float(logps[:, 0].mean()), float(logps[:, 1].mean())
    if losses is not None:
        out["eval/loss"] = float(losses.mean())
    return out


# ---------------------------------------------------------------------------------------------------------
# On-the-fly pairs: sample from the policy, label with a reward model / ensemble objective
# ---------------------------------------------------------------------------------------------------------


def sample_and_label(run: Run, model, tokenizer, scorer, prompts: list[Prompt], round_index: int,
                     config: DPOConfig) -> tuple[list[TokenizedPair], dict[str, float], list[dict]]:
    """Two samples per prompt from the current policy; the one the RM objective scores higher is chosen.

    Pairs whose two samples get the same combined reward (e.g. identical texts) carry no preference and are left out.
    """
    from rlhf_lab.generation import DecodingConfig, generate
    from rlhf_lab.rewards.ensemble import combine_scores

    order = epoch_order(len(prompts), config.seed, round_index)[: config.prompts_per_round]
    chosen_prompts = [prompts[i] for i in order]
    texts = [render_prompt(p.messages, config.template, tokenizer) for p in chosen_prompts]
    unwrapped = run.accelerator.unwrap_model(model)
    decoding = DecodingConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature)
    generations = generate(unwrapped, tokenizer, texts, samples_per_prompt=2, decoding=decoding,
                           batch_size=config.generation_batch_size, seed=config.seed * 1_000 + round_index,
                           progress=False)
    messages = [p.messages for p in chosen_prompts for _ in range(2)]
    responses = [g.text for gens in generations for g in gens]
    member_scores = scorer.score(messages, responses)
    rewards = combine_scores(member_scores, config.objective, config.uwo_weight).view(-1, 2)
    pairs, rows = [], []
    for prompt, text, gens, r in zip(chosen_prompts, texts, generations, rewards.tolist(), strict=True):
        if r[0] == r[1]:
            continue
        w, lo = (0, 1) if r[0] > r[1] else (1, 0)
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        fitted = fit_pair(TokenizedPair(prompt_ids, gens[w].token_ids, gens[lo].token_ids), config.max_length,
                          config.truncation, keep="start")
        if fitted is None:
            continue
        pairs.append(fitted)
        rows.append({"prompt": prompt.messages, "chosen": gens[w].text, "rejected": gens[lo].text,
                     "chosen_reward": r[w], "rejected_reward": r[lo], "prompt_ids": fitted.prompt_ids,
                     "chosen_ids": fitted.chosen_ids, "rejected_ids": fitted.rejected_ids})
    lengths = torch.tensor([g.num_tokens for gens in generations for g in gens], dtype=torch.float)
    stats = {"round/reward": float(rewards.mean()), "round/pairs": len(pairs),
             "round/response_length": float(lengths.mean()),
             "round/chosen_length": sum(len(p.chosen_ids) for p in pairs) / max(1, len(pairs)),
             "round/rejected_length": sum(len(p.rejected_ids) for p in pairs) / max(1, len(pairs))}
    return pairs, stats, rows


def round_pairs(run: Run, model, tokenizer, scorer, prompts: list[Prompt], round_index: int,
                config: DPOConfig) -> list[TokenizedPair]:
    """The pairs of one round: read back from ``rounds/round-{r}.jsonl`` when resuming, else sampled and saved."""
    from accelerate.utils import broadcast_object_list

    path = run.dir / "rounds" / f"round-{round_index}.jsonl"
    if path.is_file():
        rows = read_jsonl(path)
        run.print(f"dpo: round {round_index}: {len(rows)} pairs read from {path}")
        return [TokenizedPair(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in rows]
    # The main process samples and labels; the others receive the same pairs (one labelling per round).
    payload = [None]
    if run.is_main:
        pairs, stats, rows = sample_and_label(run, model, tokenizer, scorer, prompts, round_index, config)
        write_jsonl(path, rows)
        payload = [(pairs, stats)]
    if run.world_size > 1:
        broadcast_object_list(payload)
    pairs, stats = payload[0]
    run.log({**stats, "round": round_index}, _round_first_step(round_index, config))
    run.print(f"dpo: round {round_index}: {len(pairs)} pairs from {config.prompts_per_round} prompts, "
              f"mean reward {stats['round/reward']:.4f}")
    return pairs


def _round_first_step(round_index: int, config: DPOConfig) -> int:
    return round_index * config.max_steps


# ---------------------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------------------


def run(config: DPOConfig) -> dict[str, float]:
    check_bounds(config.model_name, tokens=config.max_length, tokens_flag="max_length",
                 batch=config.per_device_train_batch_size, batch_flag="per_device_train_batch_size", sequences_per_item=2,
                 online=config.online, dtype=config.dtype, backward_layers=-1)
    run = Run(config, config.output_dir, resume=config.resume, overwrite=config.overwrite_output_dir,
              mixed_precision=config.mixed_precision, report_to=config.report_to, seed=config.seed)
    tokenizer = load_tokenizer(config.model_name, config.online, config.trust_remote_code)
    pad_id = tokenizer.pad_token_id

    # --- data -----------------------------------------------------------------------------------------
    load = dict(data_format=config.data_format, on_bad_row=config.on_bad_row)
    train: list[TokenizedPair] = []
    prompts: list[Prompt] = []
    kto_labels = torch.zeros(0, dtype=torch.bool)
    eval_from_dataset = True  # held-out pairs from the eval split of --dataset (not for unpaired KTO data)
    if config.loss == "kto":
        from rlhf_lab.data.unpaired import check_both_labels, load_unpaired

        rows, reports, eval_from_dataset = load_unpaired(config.dataset, split=config.split, limit=config.limit,
                                                         bottom=config.bottom, top=config.top, **load)
        for report in reports:
            run.print(report.summary())
        train, kto_labels, dropped = tokenize_unpaired(rows, tokenizer, config)
        check_both_labels(kto_labels.tolist(), f"{config.dataset} (the rows that fit in --max_length)")
        run.print(f"dpo: {len(train)} KTO rows, {int(kto_labels.sum())} desirable ({dropped} dropped as longer than "
                  f"{config.max_length} tokens)")
    elif config.label_with:
        prompts, reports = load_prompts(config.dataset, split=config.split, limit=config.limit,
                                          bottom=config.bottom, top=config.top, **load)
        for report in reports:
            run.print(report.summary())
        run.print(f"dpo: {len(prompts)} prompts; {config.rounds} round(s) of {config.prompts_per_round} prompts "
                  f"× 2 samples labelled by {config.label_with} ({config.objective})")
    else:
        raw, reports = load_pairs(config.dataset, split=config.split, limit=config.limit, bottom=config.bottom,
                                  top=config.top, **load)
        for report in reports:
            run.print(report.summary())
        train, dropped = pair_token_ids(raw, tokenizer, config)
        run.print(f"dpo: {len(train)} training pairs ({dropped} dropped as longer than {config.max_length} tokens)")
    eval_pairs: list[TokenizedPair] = []
    if config.eval_limit and not (config.eval_dataset or eval_from_dataset):
        run.print("dpo: no held-out pairs (the KTO data are unpaired; give --eval_dataset with pairs to evaluate)")
    elif config.eval_limit:
        eval_spec = config.eval_dataset or config.dataset
        raw_eval, _ = load_pairs(eval_spec, split="all" if config.eval_dataset else "eval", limit=config.eval_limit,
                                 **load)
        eval_pairs, _ = pair_token_ids(raw_eval, tokenizer, config)
        run.print(f"dpo: {len(eval_pairs)} held-out pairs")

    # --- model ----------------------------------------------------------------------------------------
    model = load_causal_lm(config.model_name, torch_dtype(config.dtype), config.online, config.trust_remote_code,
                           config.allow_pickle)
    model = make_trainable(model, config.trainable, config)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model.train()
    world, accumulation = run.world_size, config.gradient_accumulation_steps
    global_batch = config.per_device_train_batch_size * accumulation * world
    if config.label_with:
        steps_per_round = config.max_steps
        total_steps = config.rounds * steps_per_round
    else:
        total_steps = steps_per_round = total_training_steps(len(train), global_batch, config.num_train_epochs,
                                                             config.max_steps)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config.lr_scheduler_type, config.warmup_steps, total_steps)
    model, optimizer = run.accelerator.prepare(model, optimizer)

    start_step = 0
    if config.resume and (checkpoint := resume_checkpoint(run)) is not None:
        state, _ = load_checkpoint(run, checkpoint, model, optimizer, scheduler)
        start_step = state["step"]
        run.print(f"dpo: resumed from {checkpoint} at step {start_step}")

    # --- reference log-probs, once (LoRA: the base model under disable_adapter; full: the initial weights) ---
    is_lora = config.trainable == "lora"
    timings = {"seconds/reference": 0.0, "seconds/train": 0.0}  # reference passes vs the training loop
    reference_free = config.loss in REFERENCE_FREE
    if reference_free:
        run.print(f"dpo: --loss {config.loss} is reference-free: no reference pass (training or eval)")
    clock = time.perf_counter()
    eval_ref = None
    if eval_pairs:
        eval_ref = (torch.zeros(len(eval_pairs), 2) if reference_free else
                    reference_logps(run, model, eval_pairs, pad_id, config, "ref_eval", is_lora, start_step == 0))
    timings["seconds/reference"] += time.perf_counter() - clock
    scorer = None
    if config.label_with:
        from rlhf_lab.rewards.scorer import RewardScorer

        scorer = RewardScorer([n.strip() for n in config.label_with.split(",") if n.strip()],
                              allow_pickle=config.allow_pickle)

    # --- train ----------------------------------------------------------------------------------------
    throughput = Throughput()
    progress = progress_bar(run, config.progress, total_steps, start_step, config.loss)
    metrics: dict[str, float] = {}
    for round_index in range(start_step // steps_per_round, config.rounds):
        if config.label_with:
            # Iterative DPO: fresh pairs from the current policy; the reference is the policy at the round start.
            train = round_pairs(run, model, tokenizer, scorer, prompts, round_index, config)
            ref_name, ref_is_base = f"rounds/ref-{round_index}", False
        else:
            ref_name, ref_is_base = "ref_train", is_lora
        first = round_index * steps_per_round
        clock = time.perf_counter()
        ref = (reference_logps(run, model, train, pad_id, config, ref_name, ref_is_base, start_step <= first)
               if config.loss != "rrhf" and not reference_free else torch.zeros(len(train), 2))
        timings["seconds/reference"] += time.perf_counter() - clock
        clock = time.perf_counter()
        steps_per_epoch = max(1, len(train) // global_batch)
        for round_step, epoch, indices in global_batches(len(train), global_batch, config.seed + round_index,
                                                         max(start_step - first, 0), steps_per_round):
            step = first + round_step
            # Sorting the step's pairs by length cuts padding; the step's loss is a sum, so order is irrelevant.
            indices = sorted(indices, key=lambda i: train[i].length)
            sums: dict[str, torch.Tensor] = {}
            micro_batches = split_for_process(indices, world, run.rank, accumulation)
            for k, micro in enumerate(micro_batches):
                pairs = [train[i] for i in micro]
                sync = k == len(micro_batches) - 1
                with run.accelerator.autocast(), (nullcontext() if sync else run.accelerator.no_sync(model)):
                    token_logps, mask, logps = policy_logps(model, pairs, pad_id, config.share_prompt)
                    kto = {}
                    if config.loss == "kto":  # rows B..2B−1 are the mismatched completions: z0 of this micro-batch
                        kto = {"labels": kto_labels[micro],
                               "reference_point": kto_z0(run, logps[len(pairs):], ref[micro][:, 1])}
                    losses, stats = pair_losses(config, pairs, token_logps, mask, logps, ref[micro], **kto)
                    # mean over the global batch; DDP averages gradients over processes, hence × world
                    loss = losses.sum() / global_batch * world
                    check_finite(loss, step + 1, f"{config.loss} loss", run.checkpoints)
                    run.accelerator.backward(loss)
                for name, value in {"loss": losses.detach(), **stats}.items():
                    sums[name] = sums.get(name, torch.zeros(())) + value.float().sum()
                throughput.add(int(mask.sum()))
            grad_norm = optimizer_step(run, model, optimizer, scheduler, config.max_grad_norm)
            done = step + 1
            names = sorted(sums)
            totals = run.accelerator.reduce(torch.stack([sums[n] for n in names]), reduction="sum") / global_batch
            if done % config.logging_steps == 0 or done == total_steps:
                metrics = {**dict(zip(names, totals.tolist(), strict=True)), "grad_norm": float(grad_norm),
                           "learning_rate": scheduler.get_last_lr()[0],
                           "epoch": (round_step + 1) / steps_per_epoch, "tokens_per_second": throughput.rate() * world}
                run.log(metrics, done)
            if eval_pairs and config.eval_steps and done % config.eval_steps == 0 and done < total_steps:
                run.log(evaluate(run, model, eval_pairs, eval_ref, pad_id, config), done)
            if config.save_steps and done % config.save_steps == 0 and done < total_steps:
                save_checkpoint(run, done, model, optimizer, scheduler, {"epoch": epoch, "round": round_index},
                                config.save_total_limit)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{metrics.get('loss', float('nan')):.3f}")
        timings["seconds/train"] += time.perf_counter() - clock
    if progress is not None:
        progress.close()

    # --- finish ---------------------------------------------------------------------------------------
    results = {"train/loss": metrics.get("loss", float("nan")), "steps": total_steps, **timings}
    if eval_pairs:
        eval_metrics = evaluate(run, model, eval_pairs, eval_ref, pad_id, config)
        results.update(eval_metrics)
        run.log(eval_metrics, total_steps)
    save_checkpoint(run, total_steps, model, optimizer, scheduler, {"epoch": -1}, config.save_total_limit)
    if run.is_main:
        export_causal_lm(run.accelerator.unwrap_model(model), tokenizer, run.dir / "model", config.export)
        run.print(f"dpo: model written to {run.dir / 'model'}")
        run.print(f"dpo: seconds in reference passes {timings['seconds/reference']:.1f}, in the training loop "
                  f"{timings['seconds/train']:.1f}")
        if eval_pairs:
            reward = "policy-only reward" if config.loss in REFERENCE_FREE else "implicit-reward"
            run.print(f"dpo: held-out {reward} accuracy {results['eval/rewards/accuracies']:.3f}, "
                      f"margin {results['eval/rewards/margins']:.4f}")
    run.accelerator.wait_for_everyone()
    run.end()
    return results

