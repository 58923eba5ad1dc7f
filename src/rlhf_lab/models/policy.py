"""Make a loaded causal LM trainable (LoRA or full) and export it as a standard HF directory."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from rlhf_lab.config import LoraArgs
from rlhf_lab.io import publish_dir
from rlhf_lab.rundir import write_manifest


def make_trainable(model: torch.nn.Module, trainable: str, lora: LoraArgs | None = None,
                   task_type: str = "CAUSAL_LM", modules_to_save: list[str] | None = None) -> torch.nn.Module:
    """``full``: every parameter trains. ``lora``: wrap with a PEFT LoRA adapter; only the adapter (and
    ``modules_to_save``, e.g. a reward head) trains, and the frozen base doubles as the reference model
    (adapter disabled), so RLHF needs no second copy."""
    if trainable == "full":
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    lora = lora or LoraArgs()
    config = LoraConfig(r=lora.lora_r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                        target_modules=lora.lora_targets(), task_type=task_type, modules_to_save=modules_to_save)
    return get_peft_model(model, config)


def export_causal_lm(model: torch.nn.Module, tokenizer, out_dir: str | Path, export: str = "merged") -> Path:
    """Save a standard HF directory that ``AutoModelForCausalLM.from_pretrained`` (or PEFT) loads.

    ``merged`` folds a LoRA adapter into the weights (on a copy of the adapter modules, so the caller's model
    keeps its adapter); ``adapter`` writes only the adapter. Written to a temp dir, its ``manifest.json`` (size and
    sha256 of every file) last, and renamed into place.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        is_peft = hasattr(model, "peft_config")
        if is_peft and export == "merged":
            import copy

            merged = copy.deepcopy(model).merge_and_unload()
            merged.save_pretrained(tmp, safe_serialization=True)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_manifest(tmp)  # sizes + sha256, for `rlhf-lab verify`
        publish_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
