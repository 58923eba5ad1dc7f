"""``rlhf-lab merge``: model averaging (Lin et al. 2023, "Mitigating the Alignment Tax of RLHF", arXiv:2309.06256,
§3–4) of the model before RLHF (``--base``) and after it (``--tuned``):

    θ_k = a_k · θ_base,k + (1 − a_k) · θ_tuned,k    for every tensor k, a_k = --alpha or the --partwise rule

The components (the ratio of each tensor, weight sources, the streamed shard-by-shard merge) are in
``rlhf_lab.models.merging``, whose docstring has the partwise rule; ``ama`` and ``pareto`` use them too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhf_lab.config import arg, require
from rlhf_lab.errors import UserError
from rlhf_lab.models.merging import (
    materialized,
    merge_dirs,
    num_hidden_layers,
    parse_partwise,
    ratio_fn_for,
    read_model_config,
)
from rlhf_lab.rundir import claim_run_dir


@dataclass
class MergeConfig:
    base: str = arg("default", "model before RLHF (θ_base, e.g. the SFT model): default, tiny-random, an HF or "
                    "PEFT dir")
    tuned: str = arg("", "model after RLHF (θ_tuned): an HF dir or a PEFT adapter dir")
    alpha: float = arg(0.5, "θ = alpha·θ_base + (1 − alpha)·θ_tuned (1 = base, 0 = tuned); with --partwise "
                       "only lm_head and the norms outside the decoder layers use it")
    partwise: str | None = arg(None, "per-layer ratios 'P1#P2|r0|r1|r2': layers 0..P1 use r0, P1+1..P2 r1, "
                               "the rest r2; embeddings r0 (see docs/merge.md)")
    output_dir: str = arg("runs/merge", "the merged model: a standard HF directory (config + tokenizer of base)")
    overwrite_output_dir: bool = arg(False, "replace an existing model in output_dir")
    max_shard_size_mb: int = arg(2000, "largest output shard (MB); also the most merged weights held in memory")
    online: bool = arg(False, "allow fetching models from a hub (offline by default)")

    def validate(self) -> None:
        require(bool(self.tuned), "tuned", "give the tuned (post-RLHF) model directory")
        require(0.0 <= self.alpha <= 1.0, "alpha", f"must be in [0, 1] (got {self.alpha})")
        require(self.max_shard_size_mb >= 1, "max_shard_size_mb", "must be at least 1")
        if self.partwise is not None:
            parse_partwise(self.partwise)


def run(config: MergeConfig) -> Path:
    out = Path(config.output_dir)
    # the model directory is published by a rename, so its lock lives beside it
    claim_run_dir(out, lock_file=out.parent / f".{out.name}.lock")
    if out.exists() and any(out.iterdir()) and not config.overwrite_output_dir:
        raise UserError(f"{out}: already exists; pass --overwrite_output_dir to replace it")
    with materialized(config.base, config.online) as base_dir, materialized(config.tuned, config.online) as tuned_dir:
        layers = num_hidden_layers(read_model_config(base_dir)) if config.partwise else 0
        ratio_fn = ratio_fn_for(config.alpha, config.partwise, layers)
        info = {"base": config.base, "tuned": config.tuned, "alpha": config.alpha, "partwise": config.partwise}
        ratios = merge_dirs(base_dir, tuned_dir, out, ratio_fn, config.max_shard_size_mb * 2**20, info)
    distinct = sorted(set(ratios.values()))
    print(f"merge: {len(ratios)} tensors, ratios {distinct} -> {out}", flush=True)
    return out
