"""Model averaging: interpolation and partwise merges are exact tensor by tensor; bad specs are one-line errors."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from rlhf_lab.config import make_config
from rlhf_lab.errors import UserError
from rlhf_lab.models import merging, resolve_model_path
from rlhf_lab.recipes import merge


def _perturbed_copy(src: Path, dst: Path, seed: int) -> Path:
    """A second model of the same shape: every float tensor plus seeded noise (config and tokenizer copied)."""
    shutil.copytree(src, dst)
    generator = torch.Generator().manual_seed(seed)
    for f in dst.glob("*.safetensors"):
        tensors = load_file(str(f))
        tensors = {k: v + 0.05 * torch.randn(v.shape, generator=generator) for k, v in tensors.items()}
        save_file(tensors, str(f), metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """tiny-random (2 layers, tied embeddings) and a perturbed copy of it."""
    root = tmp_path_factory.mktemp("pair")
    base = Path(resolve_model_path("tiny-random"))
    return base, _perturbed_copy(base, root / "tuned", seed=1)


@pytest.fixture(scope="module")
def untied_pair(tmp_path_factory):
    """A 5-layer Llama with an untied lm_head (so embedding and head ratios can differ) and a perturbed copy."""
    root = tmp_path_factory.mktemp("untied")
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=5,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "base", safe_serialization=True)
    return root / "base", _perturbed_copy(root / "base", root / "tuned", seed=2)


def _weights(d: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in d.glob("*.safetensors"):
        out.update(load_file(str(f)))
    return out


def _run(base, tuned, out, **over):
    args = dict(base=str(base), tuned=str(tuned), output_dir=str(out))
    args.update(over)
    return merge.run(make_config(merge.MergeConfig, args))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_interpolation_is_exact_for_every_tensor(tiny_pair, tmp_path, alpha):
    base, tuned = tiny_pair
    out = _run(base, tuned, tmp_path / "m", alpha=alpha)
    b, t, m = _weights(base), _weights(tuned), _weights(out)
    assert m.keys() == b.keys()
    for k in b:
        assert not torch.equal(b[k], t[k]), k  # the two models really differ
        expected = alpha * b[k] + (1 - alpha) * t[k]
        assert torch.equal(m[k], expected), k
    if alpha == 1.0:
        assert all(torch.equal(m[k], b[k]) for k in b)
    if alpha == 0.0:
        assert all(torch.equal(m[k], t[k]) for k in b)
    # a standard HF dir: config and tokenizer copied, loads with transformers, head still tied to the embedding
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert torch.equal(model.model.embed_tokens.weight, m["model.embed_tokens.weight"])


def test_partwise_ratios_per_layer(untied_pair, tmp_path):
    base, tuned = untied_pair
    out = _run(base, tuned, tmp_path / "m", alpha=0.7, partwise="1#3|0.4|0.3|0.2")
    b, t, m = _weights(base), _weights(tuned), _weights(out)
    # layers 0-1 → 0.4, 2-3 → 0.3, 4 → 0.2 (pivot layer inclusive); in-layer norms follow their layer
    by_layer = {0: 0.4, 1: 0.4, 2: 0.3, 3: 0.3, 4: 0.2}
    seen = set()
    for k in b:
        layer = merging.layer_index(k)
        if layer is not None:
            ratio = by_layer[layer]
        elif k in ("lm_head.weight", "model.norm.weight"):
            ratio = 0.7
        else:
            assert k == "model.embed_tokens.weight"
            ratio = 0.4
        seen.add(ratio)
        assert torch.equal(m[k], ratio * b[k] + (1 - ratio) * t[k]), (k, ratio)
    assert seen == {0.2, 0.3, 0.4, 0.7}
    recorded = json.loads((out / "merge_config.json").read_text())["ratios"]
    assert recorded["model.layers.1.input_layernorm.weight"] == 0.4
    assert recorded["model.layers.2.mlp.down_proj.weight"] == 0.3


def test_tied_embedding_takes_the_head_ratio(tiny_pair, tmp_path):
    base, tuned = tiny_pair
    out = _run(base, tuned, tmp_path / "m", alpha=0.9, partwise="0|0.1|0.5")
    b, t, m = _weights(base), _weights(tuned), _weights(out)
    k = "model.embed_tokens.weight"
    assert torch.equal(m[k], 0.9 * b[k] + 0.1 * t[k])
    k = "model.layers.1.self_attn.q_proj.weight"
    assert torch.equal(m[k], 0.5 * b[k] + 0.5 * t[k])


def test_sharded_output_equals_single_file(tiny_pair, tmp_path):
    base, tuned = tiny_pair
    single = _run(base, tuned, tmp_path / "single", alpha=0.25)
    sharded = _run(base, tuned, tmp_path / "sharded", alpha=0.25, max_shard_size_mb=1)
    files = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(files) >= 2 and (sharded / "model.safetensors.index.json").is_file()
    a, b = _weights(single), _weights(sharded)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model = AutoModelForCausalLM.from_pretrained(sharded)
    assert torch.equal(model.model.layers[1].mlp.up_proj.weight, a["model.layers.1.mlp.up_proj.weight"])
    assert not list(tmp_path.glob(".*tmp-*"))  # no temp dirs left behind


def test_peft_adapter_is_merged_into_its_base_first(tiny_pair, tmp_path):
    from peft import LoraConfig, get_peft_model

    base, _ = tiny_pair
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(3)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.1)  # a non-zero update (B starts at zero)
    model.save_pretrained(tmp_path / "adapter")
    full = model.merge_and_unload().state_dict()
    out = _run(base, tmp_path / "adapter", tmp_path / "m", alpha=0.5)
    b, m = _weights(base), _weights(out)
    k = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(full[k], b[k])
    assert torch.allclose(m[k], 0.5 * b[k] + 0.5 * full[k], atol=1e-7, rtol=0)
    k = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(m[k], b[k])


@pytest.mark.parametrize("spec,message", [
    ("0#1|0.4|0.3", "2 pivot(s) need 3 ratios"),
    ("a#b|0.1|0.2|0.3", "must be integers"),
    ("0|0.1|x", "must be numbers"),
    ("0|0.1|1.5", "in [0, 1]"),
    ("1#0|0.1|0.2|0.3", "must increase"),
    ("3|0.1|0.2", "outside the layer range"),
    ("0.4", "expected"),
])
def test_bad_partwise_spec_is_rejected(tiny_pair, tmp_path, spec, message):
    base, tuned = tiny_pair
    with pytest.raises(UserError, match="--partwise") as error:
        _run(base, tuned, tmp_path / "m", partwise=spec)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_bad_spec_on_the_command_line_is_one_line_exit_2(tiny_pair, tmp_path):
    base, tuned = tiny_pair
    argv = [sys.executable, "-m", "rlhf_lab.cli", "merge", "--base", str(base), "--tuned", str(tuned),
            "--partwise", "5|0.1|0.2", "--output_dir", str(tmp_path / "m")]
    result = subprocess.run(argv, capture_output=True, text=True, env={**os.environ}, timeout=120)
    assert result.returncode == 2, result.stderr[-1000:]
    assert result.stderr.strip().count("\n") == 0 and "outside the layer range" in result.stderr
    assert not (tmp_path / "m").exists()


def test_mismatched_models_and_alpha_range(tiny_pair, untied_pair, tmp_path):
    with pytest.raises(UserError, match="--alpha"):
        make_config(merge.MergeConfig, {"tuned": "x", "alpha": 1.5})
    with pytest.raises(UserError, match=r"no tensor|shape"):
        _run(untied_pair[0], tiny_pair[1], tmp_path / "m")
