"""Model averaging, the components (Lin et al. 2023, "Mitigating the Alignment Tax of RLHF", arXiv:2309.06256, §3–4).

Interpolate the weights of the model before RLHF (``--base``, the SFT model θ_base) and after it (``--tuned``):

    for every tensor k of the base model (streamed one at a time from safetensors):
        a_k = ratio(k)                               # --alpha, or the partwise rule below
        θ_k = a_k · θ_base,k + (1 − a_k) · θ_tuned,k # a = 1 → the base model, a = 0 → the tuned model
    write θ shard by shard into a temp dir, then rename it to --output_dir (config + tokenizer from the base)

Partwise averaging (the paper's §4, Lin et al.'s ``split|10#20|0.4|0.3|0.2`` save-name code, here a flag):
``--partwise "P1#P2#…|r0|r1|…|rK"`` with K pivots and K+1 ratios. A tensor of decoder layer L
(``model.layers.L.*``, its layer norms included) takes r_j where j = #{pivots p : L > p}, so with
``10#20|0.4|0.3|0.2`` layers 0–10 use 0.4, 11–20 use 0.3 and 21+ use 0.2. Outside the decoder layers,
``lm_head`` and every tensor whose name contains ``norm`` (the final norm) use ``--alpha``; everything else
(the token embeddings) uses r0. Tied embeddings: one stored matrix is both the input embedding and the output
head; it takes the ``lm_head`` ratio — what Lin et al.'s code ends up with, because its state-dict load writes
``lm_head.weight`` after ``embed_tokens.weight`` into the shared tensor.

A PEFT adapter directory (for either model) is first merged into its own base in memory (PEFT's
``merge_and_unload``) and written to a temp dir; full model directories are streamed, so merging a model larger
than memory needs only one output shard (``--max_shard_size_mb``) in memory at a time.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from rlhf_lab.config import warn
from rlhf_lab.errors import UserError
from rlhf_lab.io import atomic_write_text, fsync_dir, publish_dir
from rlhf_lab.rundir import write_manifest

RatioFn = Callable[[str], float]

_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.")  # Lin et al.'s code: terms[0] == 'model' and terms[1] == 'layers'
_HEAD_KEY = "lm_head.weight"
_EMBED_SUFFIXES = ("embed_tokens.weight", "wte.weight", "embed_in.weight", "word_embeddings.weight")
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".index.json", ".gguf")


# ---------------------------------------------------------------------------------------------------------
# The ratio of each tensor
# ---------------------------------------------------------------------------------------------------------


def parse_partwise(spec: str) -> tuple[list[int], list[float]]:
    """``"10#20|0.4|0.3|0.2"`` → pivots [10, 20], ratios [0.4, 0.3, 0.2] (Lin et al.'s ``split|…`` part, also
    accepted with its ``split|`` prefix). Needs #ratios = #pivots + 1, increasing pivots, ratios in [0, 1]."""
    terms = spec.strip().split("|")
    if terms and terms[0] == "split":
        terms = terms[1:]
    if len(terms) < 2:
        raise UserError(f"--partwise {spec!r}: expected 'P1#P2|r0|r1|r2' (pivots, then one ratio per block)")
    try:
        pivots = [int(p) for p in terms[0].split("#")]
    except ValueError:
        raise UserError(f"--partwise {spec!r}: layer pivots {terms[0]!r} must be integers joined by '#'") from None
    try:
        ratios = [float(r) for r in terms[1:]]
    except ValueError:
        raise UserError(f"--partwise {spec!r}: ratios {terms[1:]} must be numbers") from None
    if len(ratios) != len(pivots) + 1:
        raise UserError(f"--partwise {spec!r}: {len(pivots)} pivot(s) need {len(pivots) + 1} ratios, "
                        f"got {len(ratios)}")
    if any(b <= a for a, b in itertools.pairwise(pivots)):
        raise UserError(f"--partwise {spec!r}: pivots must increase")
    if any(not (0.0 <= r <= 1.0) or math.isnan(r) for r in ratios):
        raise UserError(f"--partwise {spec!r}: ratios must be in [0, 1]")
    return pivots, ratios


def check_partwise_layers(spec: str, pivots: list[int], num_layers: int) -> None:
    """Every block must hold at least one layer: 0 ≤ pivot < num_layers − 1."""
    bad = [p for p in pivots if not 0 <= p < num_layers - 1]
    if bad:
        raise UserError(f"--partwise {spec!r}: pivot(s) {bad} outside the layer range of a {num_layers}-layer "
                        f"model (each must be in 0..{num_layers - 2} so every block has a layer)")


def layer_index(key: str) -> int | None:
    m = _LAYER_KEY.match(key)
    return int(m.group(1)) if m else None


def partwise_ratio(key: str, alpha: float, pivots: list[int], ratios: list[float]) -> float:
    """Lin et al.'s ``merge_split`` rule for one state-dict key (see the module docstring)."""
    layer = layer_index(key)
    if layer is not None:
        return ratios[sum(layer > p for p in pivots)]
    if "lm_head" in key or "norm" in key:
        return alpha
    return ratios[0]


def ratio_fn_for(alpha: float, partwise: str | None, num_layers: int) -> RatioFn:
    """The ratio of each tensor for ``--alpha`` / ``--partwise`` (validated against the layer count)."""
    if partwise is None:
        return lambda key: alpha
    pivots, ratios = parse_partwise(partwise)
    check_partwise_layers(partwise, pivots, num_layers)
    return lambda key: partwise_ratio(key, alpha, pivots, ratios)


def merge_tensor(base: torch.Tensor, tuned: torch.Tensor, ratio: float) -> torch.Tensor:
    """θ = a·θ_base + (1 − a)·θ_tuned, computed in float32 and returned in the base's dtype.
    Non-float tensors (index buffers) are taken from the base. The inputs are never written to: tensors read
    with ``safe_open`` are private memory maps, and writing them would turn file pages into process memory."""
    if not base.is_floating_point():
        return base
    merged = base.float() * ratio
    return merged.add_(tuned.float() * (1.0 - ratio)).to(base.dtype)


# ---------------------------------------------------------------------------------------------------------
# Reading weights tensor by tensor
# ---------------------------------------------------------------------------------------------------------


class WeightSource:
    """The safetensors files of one HF model dir, read lazily one tensor at a time (memory-mapped)."""

    def __init__(self, model_dir: Path) -> None:
        self.dir = model_dir
        files = sorted(model_dir.glob("*.safetensors"))
        if not files:
            raise UserError(f"{model_dir}: no .safetensors weights (pickle checkpoints are not merged; convert them)")
        self.config = read_model_config(model_dir)
        self._handles = {f: safe_open(str(f), framework="pt") for f in files}
        self.where: dict[str, Path] = {}
        for f, handle in self._handles.items():
            for key in handle.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                self.where[key] = f
        self.tied = bool(self.config.get("tie_word_embeddings", False))
        self.embed_key = next((k for k in self.where if k.endswith(_EMBED_SUFFIXES)), None)

    def stored_keys(self) -> list[str]:
        return list(self.where)

    def resolve(self, key: str) -> str | None:
        """The stored key holding ``key``: a tied model's head is its input embedding."""
        if key in self.where:
            return key
        if key == _HEAD_KEY and self.tied and self.embed_key is not None:
            return self.embed_key
        return None

    def get(self, key: str) -> torch.Tensor:
        stored = self.resolve(key)
        if stored is None:
            raise KeyError(key)
        return self._handles[self.where[stored]].get_tensor(stored)

    def get_all(self) -> dict[str, torch.Tensor]:
        return {key: self.get(key) for key in self.where}

    def nbytes(self, key: str) -> int:
        piece = self._handles[self.where[key]].get_slice(key)
        return math.prod(piece.get_shape()) * _DTYPE_BYTES.get(piece.get_dtype(), 4)

    def shape(self, key: str) -> list[int]:
        return list(self._handles[self.where[key]].get_slice(key).get_shape())


def read_model_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise UserError(f"{model_dir}: no config.json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def num_hidden_layers(config: dict) -> int:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(config.get(key), int):
            return config[key]
    raise UserError("config.json has no num_hidden_layers: partwise averaging needs the layer count")


@contextmanager
def materialized(name: str, online: bool = False) -> Iterator[Path]:
    """A full-weights HF dir for ``name``: the dir itself, or (PEFT adapter) the adapter merged into its base
    in memory and saved to a temp dir that is removed afterwards."""
    from rlhf_lab.models import load_tokenizer, resolve_model_path

    path = Path(resolve_model_path(name, online))
    if (path / "config.json").is_file() or not (path / "adapter_config.json").is_file():
        yield path
        return
    from peft import PeftConfig

    from rlhf_lab.models import load_causal_lm

    model = load_causal_lm(str(path), torch.float32, online).merge_and_unload()
    has_tokenizer = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = load_tokenizer(str(path) if has_tokenizer else PeftConfig.from_pretrained(str(path))
                               .base_model_name_or_path, online)
    tmp = Path(tempfile.mkdtemp(prefix="rlhf-lab-peft-merged-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        del model
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def base_key_for(base: WeightSource, key: str) -> str:
    """The ratio key of a stored base tensor: a tied embedding merges with the head's ratio (module docstring)."""
    if base.tied and key == base.embed_key and _HEAD_KEY not in base.where:
        return _HEAD_KEY
    return key


def check_compatible(base: WeightSource, tuned: WeightSource) -> None:
    if base.tied and not tuned.tied and _HEAD_KEY in tuned.where:
        raise UserError(f"{base.dir} ties its embeddings to lm_head but {tuned.dir} does not: the merged model "
                        "cannot hold the tuned head; merge into an untied base")
    for key in base.stored_keys():
        stored = tuned.resolve(key)
        if stored is None:
            raise UserError(f"{tuned.dir}: has no tensor {key!r} of the base model (different architectures?)")
        if base.shape(key) != tuned.shape(stored):
            raise UserError(f"{key}: shape {base.shape(key)} in {base.dir} but {tuned.shape(stored)} in {tuned.dir}")
    extra = sorted(k for k in tuned.stored_keys() if base.resolve(k) is None and not (k == _HEAD_KEY and base.tied))
    if extra:
        warn(f"{tuned.dir}: {len(extra)} tensor(s) not in the base model are left out (first: {extra[0]})")


# ---------------------------------------------------------------------------------------------------------
# Streaming merge
# ---------------------------------------------------------------------------------------------------------


def merge_dirs(base_dir: Path, tuned_dir: Path, out_dir: Path, ratio_fn: RatioFn, max_shard_bytes: int,
               info: dict | None = None) -> dict[str, float]:
    """Write the merged model to ``out_dir`` (atomically: temp dir, then one rename). Returns key → ratio."""
    base, tuned = WeightSource(base_dir), WeightSource(tuned_dir)
    check_compatible(base, tuned)
    keys = base.stored_keys()
    shards: list[list[str]] = [[]]
    size = 0
    for key in keys:  # plan the shards from the headers alone (no tensor is read yet)
        nbytes = base.nbytes(key)
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    ratios: dict[str, float] = {}
    try:
        weight_map, total = {}, 0
        for name, shard in zip(names, shards, strict=True):
            tensors = {}
            for key in shard:  # one tensor of each model in memory at a time, one output shard at most
                ratio = float(ratio_fn(base_key_for(base, key)))
                tensors[key] = merge_tensor(base.get(key), tuned.get(key), ratio).contiguous()
                ratios[key] = ratio
                weight_map[key] = name
                total += tensors[key].numel() * tensors[key].element_size()
            save_file(tensors, str(tmp / name), metadata={"format": "pt"})
            del tensors
        if len(shards) > 1:
            atomic_write_text(tmp / "model.safetensors.index.json",
                              json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        for f in base_dir.iterdir():  # config, generation config, tokenizer, chat template
            if f.is_file() and not f.name.endswith(_WEIGHT_FILES) and not f.name.startswith("adapter_"):
                shutil.copy2(f, tmp / f.name)
        atomic_write_text(tmp / "merge_config.json", json.dumps({**(info or {}), "ratios": ratios}, indent=1))
        fsync_dir(tmp)
        write_manifest(tmp)  # replaces a manifest copied from base_dir
        publish_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ratios
