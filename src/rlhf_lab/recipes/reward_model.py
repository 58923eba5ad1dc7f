"""Reward-model training (`rlhf-lab train-rm`): Bradley-Terry on preference pairs, single or ensemble.

    pairs   = preference data → [carto_file filter] → [balance_len] → [R-DA augmentation]
    texts   = template(prompt) + reply + end marker, for chosen and rejected
    head / top:K:  trunk features computed once (frozen), k members (own head, own top-K layers) train on them
    lora / full:   the whole reward model trains end to end (one member)
    a pair is one row, its prompt read once for both replies (--share_prompt): trunk pass, top layers, lora, full
    every step, member j takes its own batch (own data order, optional bootstrap) and minimises
        L = −log σ(r_c − r_r − margin) + l2 · ½(r_c² + r_r²) + center · (r_c + r_r)²
    --length_head (ODIN): r = r_quality + r_length above, plus λ_L·L_length + λ_O·L_orthogonal (losses.py);
    the export keeps r_quality, the length head goes beside it
    eval accuracy every eval_steps; each member's best-accuracy weights are exported as a plain HF directory

References: Ouyang et al. 2022 (InstructGPT RM), Coste et al. 2023 (RM ensembles, seed `llm_optimization`),
Singhal et al. 2023 (length debiasing and cartography, code `rlhf-length-biases`), Chen et al. 2024 (ODIN: the
disentangled length head), EasyRLHF.
"""

from __future__ import annotations

import copy
import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from rlhf_lab.config import DataArgs, LoraArgs, ModelArgs, arg, require, require_seed, torch_dtype
from rlhf_lab.data import load_pairs
from rlhf_lab.data.collate import TokenizedPair, tokenize_pairs
from rlhf_lab.data.records import Pair
from rlhf_lab.data.transforms import balance_length, rda_pairs, read_index_file, shuffle_pairs, token_lengths
from rlhf_lab.engine import (
    Run,
    TrainArgs,
    check_finite,
    global_batches,
    load_checkpoint,
    make_optimizer,
    make_scheduler,
    progress_bar,
    resume_checkpoint,
    save_checkpoint,
    split_for_process,
    total_training_steps,
)
from rlhf_lab.errors import UserError
from rlhf_lab.eval.length import pairwise_accuracy
from rlhf_lab.eval.rm_metrics import bins_words, length_gap_words, pair_metrics
from rlhf_lab.io import atomic_write_text, read_jsonl, write_jsonl
from rlhf_lab.losses import bradley_terry_loss, odin_length_loss, odin_orthogonal_loss
from rlhf_lab.models import load_tokenizer, pad_right, resolve_model_path
from rlhf_lab.models.batching import pair_rows, split_shared_prefix
from rlhf_lab.models.bounds import check_bounds
from rlhf_lab.models.checkpointing import enable_gradient_checkpointing
from rlhf_lab.models.policy import make_trainable
from rlhf_lab.rewards.features import (
    FeatureStore,
    cache_namespace,
    compute_features,
    find_upstream,
    stack_features,
    stack_pair_features,
)
from rlhf_lab.rewards.model import (
    MANIFEST,
    TopStack,
    decoder_layers,
    load_reward_backbone,
    parse_trainable,
    pool_last,
)

LENGTH_HEAD_FILE = "length_head.safetensors"  # --length_head: ODIN's length head, beside the exported model


@dataclass
class RewardModelConfig(ModelArgs, DataArgs, LoraArgs, TrainArgs):
    eval_dataset: str | None = arg(None, "held-out pairs (default: the eval split of --dataset); comma list ok")
    eval_limit: int = arg(256, "held-out pairs used for eval accuracy (0 = no eval)")
    eval_steps: int = arg(50, "evaluate every N steps (and at the end)")
    test_dataset: str | None = arg(None, "pairs used neither for training nor for picking the best step (comma "
                                   "list ok): at export each member and the ensemble get eval-rm's accuracy and "
                                   "length metrics on them, in held_out_metrics.json")
    test_limit: int = arg(0, "test pairs used (0 = all)")
    max_length: int = arg(512, "tokens per text (prompt + reply)")
    truncation: str = arg("drop", "pairs with a text over max_length: drop them (as Coste et al. 2023 and Singhal et al. 2023 do), or keep the last "
                          "max_length tokens", ("drop", "truncate"))
    trainable: str = arg("top:2", "what trains: head (linear probe on frozen features), top:K (the top K "
                         "layers + head), lora, or full")
    num_layers: int | None = arg(None, "use only the first L layers of the backbone (a smaller RM)")
    learning_rate: float | None = arg(None, "peak learning rate (default: head 1e-3, top:K 5e-5, lora 1e-4, "
                                      "full 1e-5)")
    num_train_epochs: float = arg(1.0, "passes over the training pairs (ignored when max_steps > 0)")
    per_device_train_batch_size: int = arg(8, "pairs per batch and member")
    margin: float = arg(0.0, "margin m in −log σ(r_c − r_r − m)")
    score_l2: float = arg(0.0, "L2 on the scores, l2·½(r_c²+r_r²) (Coste et al. 2023 used 0.001)")
    center_rewards_coefficient: float = arg(0.0, "pull scores towards 0: coef·(r_c + r_r)² (as TRL)")
    ensemble_size: int = arg(1, "members trained on one shared frozen trunk (head / top:K modes)")
    rng_seed: int | None = arg(None, "seed of member 0 (members get rng_seed..rng_seed+k−1; default --seed)")
    bootstrap: bool = arg(False, "each member trains on a bootstrap resample of the pairs")
    balance_len: bool = arg(False, "balance the chosen−rejected token-length difference (length-bias paper)")
    rand_ratio: float = arg(0.0, "R-DA: append rand_ratio·|D| pairs whose rejected reply is another prompt's "
                            "chosen reply")
    carto_file: str | None = arg(None, "keep only the pair indices listed in this file (from rlhf-lab carto)")
    share_prompt: bool = arg(True, "score both replies of a pair in one row that reads their shared prompt "
                             "once (a block attention mask keeps the replies apart): the trunk feature pass, "
                             "top:K layers, lora and full; off: a row per reply, as TRL")
    feature_dtype: str = arg("float32", "dtype of cached trunk features", ("float32", "bfloat16"))
    feature_batch_size: int = arg(16, "texts per forward pass when computing trunk features")
    feature_cache: str | None = arg(None, "keep trunk features in this directory (content-addressed) so later "
                                    "runs on the same model and layer split skip the trunk")
    length_head: bool = arg(False, "ODIN (Chen et al. 2024): a second linear head on the trunk trained to carry "
                            "length, r = r_quality + r_length in the Bradley-Terry loss, plus the length and "
                            "orthogonality terms; the exported model scores with r_quality only (the length head "
                            "is saved beside it as length_head.safetensors)")
    length_loss_weight: float | None = arg(None, "λ_L of --length_head (default 1): weight of "
                                           "|ρ(r_quality, len)| − ρ(r_length, len) over each micro-batch")
    orthogonal_loss_weight: float | None = arg(None, "λ_O of --length_head (default 1): weight of "
                                               "|cos(w_quality, w_length)|")

    def validate(self) -> None:
        require(self.num_layers is None or self.num_layers >= 1, "num_layers", "must be at least 1")
        parse_trainable(self.trainable, self.num_layers)  # the syntax (and K <= --num_layers) before any work
        if self.learning_rate is None:
            mode = self.trainable.split(":")[0]
            self.learning_rate = {"head": 1e-3, "top": 5e-5, "lora": 1e-4, "full": 1e-5}.get(mode, 5e-5)
        self.validate_training()
        require(self.max_length >= 8, "max_length", "must be at least 8")
        require(self.ensemble_size >= 1, "ensemble_size", "must be at least 1")
        require(self.eval_limit >= 0, "eval_limit", "must be >= 0")
        require(self.eval_steps >= 0, "eval_steps", "must be >= 0")
        require(self.test_limit >= 0, "test_limit", "must be >= 0")
        require(0.0 <= self.rand_ratio <= 1.0, "rand_ratio", "must be in [0, 1]")
        require(self.score_l2 >= 0, "score_l2", "must be >= 0")
        require(self.center_rewards_coefficient >= 0, "center_rewards_coefficient", "must be >= 0")
        require(self.feature_batch_size >= 1, "feature_batch_size", "must be at least 1")
        require_seed(self.rng_seed, "rng_seed", self.ensemble_size)
        require_seed(self.seed, "seed", self.ensemble_size)  # members default to seed..seed+k−1
        self.validate_lora()
        self.validate_data()
        self.validate_length_head()
        if self.ensemble_size > 1:
            require(self.trainable == "head" or self.trainable.startswith("top:"), "ensemble_size",
                    "ensembles share a frozen trunk: use --trainable head or top:K (train lora/full members "
                    "as separate runs with different --rng_seed)")

    def validate_length_head(self) -> None:
        weights = ("length_loss_weight", "orthogonal_loss_weight")
        if not self.length_head:
            for name in weights:
                require(getattr(self, name) is None, name, "only applies with --length_head")
            return
        for name in weights:
            if getattr(self, name) is None:
                setattr(self, name, 1.0)  # as the authors' re-implementation (RLHFlow/RLHF-Reward-Modeling)
            require(getattr(self, name) >= 0, name, "must be >= 0")
        # the length term is a Pearson correlation over a micro-batch's replies: one pair gives two points, whose
        # correlation is always ±1 (or 0), never a measurement
        require(self.per_device_train_batch_size >= 2, "per_device_train_batch_size",
                "--length_head correlates rewards with lengths over a micro-batch: it needs at least 2 pairs")


# ---------------------------------------------------------------------------------------------------------
# Data: pairs → token ids
# ---------------------------------------------------------------------------------------------------------


def prepare_pairs(config: RewardModelConfig, run: Run, tokenizer) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """Load, filter, augment and debias the training pairs (in Singhal et al. 2023's order); load the eval and test pairs.

    Every pair gets ``meta["uid"]`` = its position in the loaded training split (R-DA pairs: numbered after
    them); cartography logs it and ``--carto_file`` selects by it.
    """
    pairs, reports = load_pairs(config.dataset, data_format=config.data_format, split=config.split,
                                limit=config.limit, bottom=config.bottom, top=config.top,
                                on_bad_row=config.on_bad_row)
    for report in reports:
        run.print(report.summary())
    for uid, pair in enumerate(pairs):
        pair.meta["uid"] = uid  # stable example id for cartography and --carto_file
    if config.carto_file:
        keep = set(read_index_file(config.carto_file))
        pairs = [p for p in pairs if p.meta["uid"] in keep]
        run.print(f"train-rm: {len(pairs)} pairs kept by {config.carto_file}")
    if config.rand_ratio > 0:
        # R-DA over the first r·|D| pairs of a seeded shuffle (Singhal et al.'s code shuffles before augmenting)
        new = rda_pairs(shuffle_pairs(pairs, config.seed), config.rand_ratio, seed=config.seed)
        for uid, pair in enumerate(new, start=len(pairs)):
            pair.meta = {**pair.meta, "uid": uid}
        pairs = pairs + new
        run.print(f"train-rm: R-DA added {len(new)} pairs")
    if config.balance_len:  # after R-DA, as in Singhal et al. 2023's train_rm.py
        before = len(pairs)
        pairs = balance_length(pairs, token_lengths([p.chosen for p in pairs], tokenizer),
                               token_lengths([p.rejected for p in pairs], tokenizer), seed=config.seed)
        run.print(f"train-rm: balance_len kept {len(pairs)} of {before} pairs")
    eval_pairs: list[Pair] = []
    if config.eval_limit:
        spec = config.eval_dataset or config.dataset
        eval_pairs, _ = load_pairs(spec, data_format=config.data_format, on_bad_row=config.on_bad_row,
                                   split="all" if config.eval_dataset else "eval", limit=config.eval_limit)
    test_pairs: list[Pair] = []
    if config.test_dataset:
        test_pairs, reports = load_pairs(config.test_dataset, data_format=config.data_format,
                                         on_bad_row=config.on_bad_row, split="all", limit=config.test_limit or None)
        for report in reports:
            run.print(report.summary())
    return pairs, eval_pairs, test_pairs


# ---------------------------------------------------------------------------------------------------------
# Members: k reward heads (and top layers) on a shared frozen trunk
# ---------------------------------------------------------------------------------------------------------


def score_heads(hidden: torch.Tensor, head: nn.Module, length_head: nn.Module | None) -> torch.Tensor:
    """Pooled states (N, D) → rewards (N,); with an ODIN length head, (N, 2): [r_quality, r_length]."""
    if length_head is None:
        return head(hidden)[:, 0]
    hidden = hidden.to(length_head.weight.dtype)  # float32, as the length head (a bf16 trunk's r_quality too)
    return torch.cat([head(hidden.to(head.weight.dtype)).to(hidden.dtype), length_head(hidden)], dim=1)


class TrainableMember(nn.Module):
    """One ensemble member: optional trainable top layers, then a scalar head at the last real token (and, with
    ``length_head``, ODIN's second head beside it)."""

    def __init__(self, backbone: nn.Module, top_layers: int, hidden_size: int, seed: int,
                 init_std: float, length_head: bool = False) -> None:
        super().__init__()
        # a member trains in float32 whatever --dtype the frozen trunk runs in (cached features are read as
        # float32; bf16 weights under AdamW would also lose small updates)
        self.top = TopStack(backbone, top_layers).float() if top_layers else None
        self.head = nn.Linear(hidden_size, 1, bias=False)
        self.length_head = nn.Linear(hidden_size, 1, bias=False) if length_head else None
        with torch.no_grad():  # members differ by head init (and data order)
            generator = torch.Generator().manual_seed(seed)
            self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=generator) * init_std)
            if self.length_head is not None:  # drawn after the quality head: that one starts as without it
                self.length_head.weight.copy_(torch.randn(self.head.weight.shape, generator=generator) * init_std)

    def quality_head(self) -> nn.Linear:
        return self.head

    def forward(self, features: torch.Tensor, attention_mask: torch.Tensor | None,
                position_ids: torch.Tensor | None = None, score_rows: torch.Tensor | None = None,
                score_positions: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled features (head); or (T, D) states per text, read at the last real token; or shared-prompt
        rows (``stack_pair_features``), read at ``score_positions`` of rows ``score_rows``."""
        if self.top is None:
            return score_heads(features, self.head, self.length_head)  # features are already pooled
        hidden = self.top(features, attention_mask, position_ids)
        if score_positions is None:
            return score_heads(pool_last(hidden, attention_mask), self.head, self.length_head)
        return score_heads(hidden[score_rows, score_positions], self.head, self.length_head)


def member_rewards(member: nn.Module, features: list[torch.Tensor], pooled: bool) -> torch.Tensor:
    hidden, mask = stack_features(features, pooled)
    return member(hidden, mask)


# ---------------------------------------------------------------------------------------------------------
# End-to-end (lora / full)
# ---------------------------------------------------------------------------------------------------------


class EndToEnd(nn.Module):
    """The whole reward model as one member: token ids in, scores out.

    Plain rows (``attention_mask`` 2-D): one text per row, the score read at its last real token. Shared-prompt
    rows (``pair_rows``: a 4-D mask and ``position_ids``): one pair per row, the scores read at
    ``score_positions`` (2B,) of rows ``score_rows`` — chosen ends first, then rejected ends.
    """

    def __init__(self, model: nn.Module, length_head: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.length_head = length_head  # ODIN's second head (the model's own ``score`` is the quality head)

    def quality_head(self) -> nn.Linear:
        inner = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return inner.score

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None,
                score_rows: torch.Tensor | None = None, score_positions: torch.Tensor | None = None) -> torch.Tensor:
        inner = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        hidden = inner.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                  use_cache=False).last_hidden_state
        if score_positions is None:
            return score_heads(pool_last(hidden, attention_mask), inner.score, self.length_head)
        return score_heads(hidden[score_rows, score_positions], inner.score, self.length_head)


def shared_prompt_inputs(chosen: list[list[int]], rejected: list[list[int]], pad_id: int,
                         dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """``EndToEnd`` inputs with one row per pair: the shared prefix (the prompt, and any identical start of the
    replies) once, then the chosen and the rejected remainders, kept apart by the mask. Scores equal those of
    separate rows up to float rounding; a pair costs P + |c| + |r| positions instead of 2P + |c| + |r|."""
    rows = pair_rows(chosen, rejected, pad_id, dtype)
    b = len(chosen)
    score_rows = torch.arange(b).repeat(2)
    score_positions = torch.cat([rows["first_end"], rows["second_end"]])
    return rows["input_ids"], rows["attention_mask"], rows["position_ids"], score_rows, score_positions


# ---------------------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------------------


def trained_layers(trainable: str) -> int:
    """Layers the backward pass goes through: none for head (features are cached), K for top:K, all (-1) else."""
    mode, k = parse_trainable(trainable, None)
    return {"head": 0, "top": k}.get(mode, -1)


class CachedTrunkRewards:
    """(r_chosen, r_rejected) of member j of an ensemble on a frozen trunk (``--trainable head | top:K``): the
    trunk runs once over every text (``compute_features``, cached on disk); each step runs only the members' top
    layers and heads on the cached states. ``top:K`` with ``--share_prompt`` reads a pair's prompt states once."""

    def __init__(self, members: nn.ModuleList, split_features: dict[str, list[torch.Tensor]], mode: str,
                 share_prompt: bool, shared_prefix: dict[str, list[int]]) -> None:
        self.members, self.split_features, self.mode = members, split_features, mode
        self.share_prompt, self.shared_prefix = share_prompt, shared_prefix

    def __call__(self, j: int, pair_indices: list[int], split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        n = len(pair_indices)
        feats = self.split_features[split]
        if self.mode == "top" and self.share_prompt:
            scores = self.members[j](*stack_pair_features([feats[2 * i] for i in pair_indices],
                                                          [feats[2 * i + 1] for i in pair_indices],
                                                          [self.shared_prefix[split][i] for i in pair_indices]))
        else:
            both = [feats[2 * i] for i in pair_indices] + [feats[2 * i + 1] for i in pair_indices]
            scores = member_rewards(self.members[j], both, self.mode == "head")
        return scores[:n], scores[n:]


def cached_trunk_ensemble(config: RewardModelConfig, run: Run, model: nn.Module, mode: str, top_layers: int,
                          seeds: list[int], train: list[TokenizedPair], evals: list[TokenizedPair],
                          tests: list[TokenizedPair], shared_prefix: dict[str, list[int]]) -> CachedTrunkRewards:
    """The cheap ensemble: freeze the backbone, compute (or load) its trunk features for every text once, and
    build one ``TrainableMember`` (top K layers + head, seeded) per seed."""
    start = time.perf_counter()
    pad_id = model.config.pad_token_id
    model.requires_grad_(False)
    backbone = model.base_model
    feature_dtype = torch_dtype(config.feature_dtype)
    texts = [t for part in (train, evals, tests) for p in part for t in (p.chosen, p.rejected)]
    model_path = resolve_model_path(config.model_name, config.online)
    layers = model.config.num_hidden_layers
    store = FeatureStore(config.feature_cache, cache_namespace(model_path, layers, top_layers, feature_dtype))
    # a head run on a model with a top:K cache runs only those K layers on the cached states
    upstream = find_upstream(config.feature_cache, model_path, layers, feature_dtype) if mode == "head" else None
    if upstream is not None:
        run.print(f"train-rm: head features from the top:{upstream[1]} feature cache (only those layers run)")
    features = compute_features(backbone, texts, top_layers, pad_id, config.feature_batch_size, feature_dtype,
                                store, progress=config.progress and run.is_main, upstream=upstream,
                                paired=config.share_prompt)
    n_train, n_eval = 2 * len(train), 2 * len(evals)
    split_features = {"train": features[:n_train], "eval": features[n_train: n_train + n_eval],
                      "test": features[n_train + n_eval:]}
    members = nn.ModuleList([
        TrainableMember(backbone, top_layers, model.config.hidden_size, seed, model.config.initializer_range,
               config.length_head)
        for seed in seeds])
    run.print(f"train-rm: trunk features for {len(texts)} texts in {time.perf_counter() - start:.1f}s")
    return CachedTrunkRewards(members, split_features, mode, config.share_prompt, shared_prefix)


class EndToEndRewards:
    """(r_chosen, r_rejected) of one reward model trained end to end (``--trainable lora | full``): one forward
    pass over both replies of every pair (``--share_prompt``: one row per pair that reads the prompt once).
    ``forward`` is the module the optimizer steps (the DDP wrapper under accelerate launch)."""

    def __init__(self, model: nn.Module, splits: dict[str, list[TokenizedPair]], pad_id: int,
                 share_prompt: bool, length_head: nn.Module | None = None) -> None:
        self.model = model
        self.members = nn.ModuleList([EndToEnd(model, length_head)])
        self.forward: nn.Module = self.members[0]
        self.splits, self.pad_id, self.share_prompt = splits, pad_id, share_prompt
        self.mask_dtype = next(model.parameters()).dtype

    def __call__(self, j: int, pair_indices: list[int], split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        n = len(pair_indices)
        data = self.splits[split]
        chosen, rejected = [data[i].chosen for i in pair_indices], [data[i].rejected for i in pair_indices]
        if self.share_prompt:
            scores = self.forward(*shared_prompt_inputs(chosen, rejected, self.pad_id, self.mask_dtype))
        else:
            scores = self.forward(*pad_right(chosen + rejected, self.pad_id))
        return scores[:n], scores[n:]


def end_to_end_model(config: RewardModelConfig, model: nn.Module, mode: str, seed: int,
                     train: list[TokenizedPair], evals: list[TokenizedPair], tests: list[TokenizedPair],
                     pad_id: int) -> EndToEndRewards:
    """One reward model trained end to end: LoRA (+ the score head) or every weight; the head starts from
    N(0, initializer_range) drawn with ``seed``."""
    model = make_trainable(model, mode, config, task_type="SEQ_CLS", modules_to_save=["score"])
    torch.manual_seed(seed)
    length_head = None
    with torch.no_grad():
        head = model.get_base_model().score if hasattr(model, "get_base_model") else model.score
        head.weight.normal_(0.0, model.config.initializer_range)
        if config.length_head:  # drawn after the quality head, in float32 like a cached-trunk member's
            length_head = nn.Linear(head.in_features, 1, bias=False)
            length_head.weight.normal_(0.0, model.config.initializer_range)
    return EndToEndRewards(model, {"train": train, "eval": evals, "test": tests}, pad_id, config.share_prompt,
                           length_head)


def run(config: RewardModelConfig) -> dict[str, float]:
    check_bounds(config.model_name, tokens=config.max_length, tokens_flag="max_length",
                 batch=config.per_device_train_batch_size, batch_flag="per_device_train_batch_size", sequences_per_item=2,
                 online=config.online, dtype=config.dtype, backward_layers=trained_layers(config.trainable))
    run = Run(config, config.output_dir, resume=config.resume, overwrite=config.overwrite_output_dir,
              mixed_precision=config.mixed_precision, report_to=config.report_to, seed=config.seed)
    if run.world_size > 1 and (config.trainable == "head" or config.trainable.startswith("top:")):
        raise UserError("--trainable: head and top:K train on cached trunk features in one process; "
                        "use lora or full under accelerate launch")
    tokenizer = load_tokenizer(config.model_name, config.online, config.trust_remote_code)
    model = load_reward_backbone(config.model_name, tokenizer, config.num_layers, torch_dtype(config.dtype),
                                 config.online, config.trust_remote_code)
    pad_id = model.config.pad_token_id
    mode, top_layers = parse_trainable(config.trainable, model.config.num_hidden_layers)

    train_pairs, eval_pairs, test_pairs = prepare_pairs(config, run, tokenizer)
    # a reward model reads its score at the reply's end marker: a cut keeps the end (keep="end")
    fit = {"template": config.template, "max_length": config.max_length, "keep": "end"}
    train, dropped = tokenize_pairs(train_pairs, tokenizer, truncation=config.truncation, **fit)
    evals, _ = tokenize_pairs(eval_pairs, tokenizer, truncation=config.truncation, **fit)
    # test pairs are never dropped for length: truncation keeps the reply end, where the score is read
    tests, _ = tokenize_pairs(test_pairs, tokenizer, truncation="truncate", **fit)
    fitting = (f"{dropped} dropped over {config.max_length} tokens" if config.truncation == "drop" else
               f"those over {config.max_length} tokens cut to their last {config.max_length}")
    run.print(f"train-rm: {len(train)} training pairs ({fitting}), {len(evals)} eval pairs, {len(tests)} test "
              f"pairs, trainable={config.trainable}, members={config.ensemble_size}")
    if not train:
        raise UserError(f"{config.dataset}: no training pairs left after filtering")

    seeds = [(config.rng_seed if config.rng_seed is not None else config.seed) + j
             for j in range(config.ensemble_size)]
    cached = mode in ("head", "top")
    # the tokens a pair's two texts share (the prompt): read once with --share_prompt
    shared_prefix = {name: [split_shared_prefix(p.chosen, p.rejected) for p in data]
                     for name, data in (("train", train), ("eval", evals), ("test", tests))}
    timings: dict[str, float] = {}
    start = time.perf_counter()
    if cached:
        rewards_of = cached_trunk_ensemble(config, run, model, mode, top_layers, seeds, train, evals, tests,
                                           shared_prefix)
    else:
        rewards_of = end_to_end_model(config, model, mode, seeds[0], train, evals, tests, pad_id)
        model = rewards_of.model  # wrapped for training (LoRA / full)
    members = rewards_of.members
    trainable_module: nn.Module = members if cached else members[0]
    # training mode from the first step, as after every evaluation (from_pretrained returns eval mode, and the
    # layers of --gradient_checkpointing checkpoint only in training mode)
    trainable_module.train()
    if config.gradient_checkpointing and mode == "head":
        run.print("train-rm: --gradient_checkpointing does nothing with --trainable head (no layer trains: the "
                  "trunk runs once, without gradients)")
    elif config.gradient_checkpointing:
        enable_gradient_checkpointing(trainable_module)
    timings["features"] = time.perf_counter() - start

    # --- optimisation ---------------------------------------------------------------------------------
    # the global batch spans every process (as in sft / dpo): without × world_size a 2-process run took half the
    # pairs per step of the 1-process run it should equal (issue #9)
    batch = config.per_device_train_batch_size * config.gradient_accumulation_steps * run.world_size
    total_steps = total_training_steps(len(train), batch, config.num_train_epochs, config.max_steps)
    optimizer = make_optimizer(trainable_module, config)
    scheduler = make_scheduler(optimizer, config.lr_scheduler_type, config.warmup_steps, total_steps)
    trainable_module, optimizer = run.accelerator.prepare(trainable_module, optimizer)
    if not cached:
        rewards_of.forward = trainable_module  # the DDP-wrapped model under accelerate launch

    # member j's data: its own order, optionally a bootstrap resample (fixed by its seed)
    member_data = [bootstrap_indices(len(train), seed) if config.bootstrap else list(range(len(train)))
                   for seed in seeds]
    best = [{"accuracy": -1.0, "step": 0, "state": None} for _ in seeds]
    start_step = 0
    if config.resume and (checkpoint := resume_checkpoint(run)) is not None:
        state, extras = load_checkpoint(run, checkpoint, trainable_module, optimizer, scheduler)
        start_step = state["step"]
        for j, b in enumerate(state["best"]):
            best[j].update(accuracy=b["accuracy"], step=b["step"])
            prefix = f"best.{j}."
            if any(k.startswith(prefix) for k in extras):
                best[j]["state"] = {k[len(prefix):]: v for k, v in extras.items() if k.startswith(prefix)}
        run.print(f"train-rm: resumed from {checkpoint} at step {start_step}")

    carto_log = run.dir / "carto.jsonl"
    if run.is_main:
        if start_step == 0:
            carto_log.unlink(missing_ok=True)
            write_carto_lengths(run.dir / "carto_lengths.jsonl", train)
        else:  # drop what a killed run logged after its last checkpoint: those steps run again
            write_jsonl(carto_log, [r for r in read_jsonl(carto_log) if r["step"] <= start_step]
                        if carto_log.exists() else [])
    steps_per_epoch = len(train) // batch
    iterators = [global_batches(len(train), batch, seed, start_step, total_steps) for seed in seeds]
    progress = progress_bar(run, config.progress, total_steps, start_step, "train-rm")
    metrics: dict[str, float] = {}
    start = time.perf_counter()
    for step_batches in zip(*iterators, strict=True):
        step = step_batches[0][0]
        loss_total = torch.zeros(())
        stats, carto_rows, odin_stats = [], [], []
        for j, (_, epoch, positions) in enumerate(step_batches):
            indices = [member_data[j][p] for p in positions]
            mine = split_for_process(indices, run.world_size, run.rank, config.gradient_accumulation_steps)
            for k, part in enumerate(mine):
                sync = k == len(mine) - 1
                with nullcontext() if sync or cached else run.accelerator.no_sync(trainable_module):
                    r_c, r_r = rewards_of(j, part)
                    if config.length_head:  # ODIN: the preference is on r = r_quality + r_length
                        length_term, orthogonal_term = odin_terms(r_c, r_r, [train[i].reply_lengths for i in part],
                                                                  members[j])
                        odin = config.length_loss_weight * length_term + config.orthogonal_loss_weight * orthogonal_term
                        odin_stats.append((length_term.detach(), orthogonal_term.detach()))
                        r_c, r_r = r_c.sum(1), r_r.sum(1)
                    losses = bradley_terry_loss(r_c, r_r, config.margin, config.score_l2,
                                                config.center_rewards_coefficient)
                    # the mean over the whole global batch; DDP averages over processes, hence × world size
                    loss = losses.sum() / len(indices) * run.world_size
                    if config.length_head:  # batch-level terms, weighted by this micro-batch's share
                        loss = loss + odin * len(part) / len(indices) * run.world_size
                    check_finite(loss, step + 1, f"reward-model loss (member {j})", run.checkpoints)
                    run.accelerator.backward(loss)
                loss_total += loss.detach() / run.world_size
                stats.append((r_c.detach(), r_r.detach()))
                carto_rows += [{"uid": train[i].uid, "epoch": epoch, "step": step + 1, "member": j,
                                "r_chosen": c, "r_rejected": r}
                               for i, c, r in zip(part, r_c.tolist(), r_r.tolist(), strict=True)]
        if run.is_main:
            append_jsonl_rows(carto_log, carto_rows)
        if config.max_grad_norm > 0:  # clip each member on its own: members are independent models
            for member in members:
                torch.nn.utils.clip_grad_norm_(member.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        if done % config.logging_steps == 0 or done == total_steps:
            r_c = torch.cat([s[0] for s in stats])
            r_r = torch.cat([s[1] for s in stats])
            metrics = {"loss": float(run.accelerator.reduce(loss_total, "sum")) / len(members), "accuracy": float((r_c > r_r).float().mean()),
                       "margin": float((r_c - r_r).mean()), "rewards/chosen": float(r_c.mean()),
                       "rewards/rejected": float(r_r.mean()), "learning_rate": scheduler.get_last_lr()[0],
                       "epoch": done / steps_per_epoch}
            if odin_stats:  # this process's micro-batches, averaged over them and the members
                metrics["length_loss"] = float(torch.stack([s[0] for s in odin_stats]).mean())
                metrics["orthogonal_loss"] = float(torch.stack([s[1] for s in odin_stats]).mean())
            run.log(metrics, done)
        if evals and ((config.eval_steps and done % config.eval_steps == 0) or done == total_steps):
            eval_metrics = evaluate_members(members, rewards_of, len(evals))
            run.log(eval_metrics, done)
            for j in range(len(members)):
                accuracy = eval_metrics[f"eval/accuracy/member_{j}"]
                if accuracy > best[j]["accuracy"]:
                    best[j].update(accuracy=accuracy, step=done,
                                   state={n: p.detach().clone() for n, p in members[j].named_parameters()
                                          if p.requires_grad})
        if config.save_steps and done % config.save_steps == 0 and done < total_steps:
            save_checkpoint(run, done, trainable_module, optimizer, scheduler,
                            {"best": [{"accuracy": b["accuracy"], "step": b["step"]} for b in best]},
                            config.save_total_limit, extra_tensors=_best_tensors(best))
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{metrics.get('loss', float('nan')):.3f}")
    if progress is not None:
        progress.close()
    timings["train"] = time.perf_counter() - start

    # --- export: each member's best weights as a plain HF reward model ------------------------------
    results: dict[str, float] = {"train/loss": metrics.get("loss", float("nan")), "steps": total_steps,
                                 "seconds/features": timings["features"], "seconds/train": timings["train"]}
    if run.is_main:
        manifest = {"base_model": config.model_name, "template": config.template, "trainable": config.trainable,
                    "shared_trunk_layers": (model.config.num_hidden_layers - top_layers) if cached else 0,
                    "members": []}
        # eval: the pairs that picked each member's best step; test: pairs used for nothing before now
        held_out = {name: ([t.source for t in data], [None] * len(seeds))
                    for name, data in (("eval", evals), ("test", tests)) if data}
        for j, seed in enumerate(seeds):
            if best[j]["state"] is not None:
                members[j].load_state_dict(best[j]["state"], strict=False)
            for name, (pairs, scores) in held_out.items():
                scores[j] = split_scores(members[j], j, rewards_of, name, len(pairs))
            member_stats = reward_stats(held_out["eval"][1][j]) if evals else {}
            path = "model" if len(seeds) == 1 else f"members/seed-{seed}"
            export_member(model, members[j], mode, top_layers, tokenizer, run.dir / path, config.template,
                          member_stats)
            extra = {}
            if config.length_head:  # for analysis only: scoring reads the quality head in model.safetensors
                save_file({"weight": members[j].length_head.weight.detach().float().contiguous()},
                          str(run.dir / path / LENGTH_HEAD_FILE))
                extra["length_head"] = f"{path}/{LENGTH_HEAD_FILE}"
            manifest["members"].append({"path": path, "seed": seed, "best_step": best[j]["step"],
                                        "eval_accuracy": best[j]["accuracy"], **member_stats, **extra})
            results[f"eval/accuracy/member_{j}"] = best[j]["accuracy"]
        atomic_write_text(run.dir / MANIFEST, json.dumps(manifest, indent=2))
        if held_out:
            report = held_out_metrics(held_out, tokenizer, [f"seed-{s}" for s in seeds], config.seed)
            atomic_write_text(run.dir / "held_out_metrics.json", json.dumps(report, indent=2))
            for name, block in report.items():
                headline = block.get("ensemble", next(iter(block["members"].values())))
                results[f"{name}/accuracy"] = headline["accuracy"]
                run.print(f"train-rm: {name} ({block['pairs']} pairs, best weights): " + ", ".join(
                    f"{k} {headline[k]:.3f}" for k in ("accuracy", "accuracy_length_balanced",
                                                       "rm_longer_preferred_rate", "length_reward_corr")))
                run.print(f"train-rm: {name}: {length_gap_words(headline)}")
                run.print(f"train-rm: {name}: accuracy by len(chosen) − len(rejected): {bins_words(headline)}")
        run.print(f"train-rm: {len(seeds)} reward model(s) written under {run.dir} "
                  f"(manifest {MANIFEST}); best eval accuracy "
                  + ", ".join(f"{b['accuracy']:.3f}" for b in best))
    run.accelerator.wait_for_everyone()
    run.end()
    return results


def odin_terms(r_chosen: torch.Tensor, r_rejected: torch.Tensor, reply_lengths: list[tuple[int, int]],
               member: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_length, L_orthogonal) of Chen et al. 2024 for one micro-batch: ``r_*`` are (B, 2) = [r_quality,
    r_length]; the correlations run over all 2B replies (chosen and rejected), ℓ = reply tokens."""
    scores = torch.cat([r_chosen, r_rejected])
    lengths = torch.tensor([c for c, _ in reply_lengths] + [r for _, r in reply_lengths], dtype=scores.dtype)
    return (odin_length_loss(scores[:, 0], scores[:, 1], lengths),
            odin_orthogonal_loss(member.quality_head().weight, member.length_head.weight))


def bootstrap_indices(n: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed + 7919)
    return torch.randint(0, n, (n,), generator=generator).tolist()


def _best_tensors(best: list[dict]) -> dict[str, torch.Tensor]:
    return {f"best.{j}.{k}": v for j, b in enumerate(best) if b["state"] for k, v in b["state"].items()}


@torch.no_grad()
def evaluate_members(members: nn.ModuleList, rewards_of, num_eval: int) -> dict[str, float]:
    """Eval accuracy (ties count ½), margin and reward stats per member, and of the ensemble mean."""
    scores = [split_scores(member, j, rewards_of, "eval", num_eval) for j, member in enumerate(members)]
    all_c, all_r = [c for c, _ in scores], [r for _, r in scores]
    out = {}
    for j, (c, r) in enumerate(zip(all_c, all_r, strict=True)):
        out[f"eval/accuracy/member_{j}"] = pairwise_accuracy(c.tolist(), r.tolist())
    mean_c, mean_r = torch.stack(all_c).mean(0), torch.stack(all_r).mean(0)
    out["eval/accuracy"] = pairwise_accuracy(mean_c.tolist(), mean_r.tolist())
    out["eval/margin"] = float((mean_c - mean_r).mean())
    return out


@torch.no_grad()
def split_scores(member: nn.Module, j: int, rewards_of, split: str, num_pairs: int,
                 batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Member j's (r_chosen, r_rejected) over all pairs of ``split``, in eval mode."""
    member.eval()
    scored = [rewards_of(j, list(range(s, min(s + batch_size, num_pairs))), split)
              for s in range(0, num_pairs, batch_size)]
    member.train()
    chosen, rejected = torch.cat([c for c, _ in scored]), torch.cat([r for _, r in scored])
    if chosen.dim() == 2:  # --length_head: a member is judged (and exported) by its quality head alone
        chosen, rejected = chosen[:, 0], rejected[:, 0]
    return chosen, rejected


def held_out_metrics(held_out: dict[str, tuple[list[Pair], list]], tokenizer, names: list[str],
                     seed: int) -> dict[str, dict]:
    """eval-rm's metrics (accuracy, length-balanced accuracy, longer-preferred rates, length–reward
    correlations) per held-out split, per member and for the ensemble mean, from the members' best weights."""
    def reply_tokens(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    report = {}
    for name, (pairs, scores) in held_out.items():
        len_c, len_r = reply_tokens([p.chosen for p in pairs]), reply_tokens([p.rejected for p in pairs])
        block: dict = {"pairs": len(pairs), "members": {
            member: pair_metrics(c, r, len_c, len_r, seed) for member, (c, r) in zip(names, scores, strict=True)}}
        if len(names) > 1:
            mean_c = torch.stack([c for c, _ in scores]).mean(0)
            mean_r = torch.stack([r for _, r in scores]).mean(0)
            block["ensemble"] = {"objective": "mean", **pair_metrics(mean_c, mean_r, len_c, len_r, seed)}
        report[name] = block
    return report


def reward_stats(eval_scores: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    """Mean and std of a member's rewards over eval prompt+reply texts (both replies), for normalisation."""
    scores = torch.cat(eval_scores)
    return {"reward_mean": float(scores.mean()), "reward_std": float(scores.std())}


def export_member(model: nn.Module, member: nn.Module, mode: str, top_layers: int, tokenizer, out_dir: Path,
                  template: str, stats: dict[str, float]) -> None:
    """Write member j as a standard ``AutoModelForSequenceClassification`` directory."""
    from rlhf_lab.models.policy import export_causal_lm

    if mode in ("head", "top"):
        rm = copy.deepcopy(model)
        with torch.no_grad():
            rm.score.weight.copy_(member.head.weight)
            if top_layers:
                layers = decoder_layers(rm.base_model)
                for i, layer in enumerate(member.top.stack.layers):
                    layers[len(layers) - top_layers + i].load_state_dict(layer.state_dict())
                rm.base_model.norm.load_state_dict(member.top.stack.norm.state_dict())
    else:
        rm = member.model
    base = rm.get_base_model() if hasattr(rm, "get_base_model") else rm
    base.config.rlhf_lab_template = template
    for key, value in stats.items():
        setattr(base.config, key, value)
    export_causal_lm(rm, tokenizer, out_dir, "merged")


def append_jsonl_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(row) + "\n" for row in rows))


def write_carto_lengths(path: Path, train: list[TokenizedPair]) -> None:
    write_jsonl(path, ({"uid": p.uid, "len_chosen": len(p.chosen), "len_rejected": len(p.rejected)} for p in train))
