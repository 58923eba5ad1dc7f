"""Model loading: the built-in names rebuild a broken cache entry; pickle-only weights are refused."""

import shutil
from pathlib import Path

import pytest
import torch

from rlhf_lab.errors import UserError
from rlhf_lab.models import load_causal_lm, resolve_model_path


def test_an_incomplete_cache_directory_is_rebuilt(tmp_path, monkeypatch):
    good = Path(resolve_model_path("tiny-random"))
    default = Path(resolve_model_path("default"))  # tiny-random takes its tokenizer from here: no re-conversion
    monkeypatch.setenv("RLHF_LAB_CACHE", str(tmp_path / "cache"))
    broken = tmp_path / "cache" / "models" / "tiny-random"
    broken.mkdir(parents=True)
    (broken.parent / default.name).symlink_to(default)
    shutil.copy(good / "tokenizer.json", broken / "tokenizer.json")  # what a half-written entry looked like
    path = Path(resolve_model_path("tiny-random"))
    assert path == broken and (path / "config.json").is_file()
    assert sorted(p.name for p in (tmp_path / "cache" / "models").iterdir()) == [default.name, "tiny-random"]  # no leftovers
    model = load_causal_lm("tiny-random")
    reference = load_causal_lm(str(good))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values(),
                                                 strict=True))  # the same deterministic weights


def test_pickle_only_weights_are_refused_unless_allowed(tmp_path):
    model = load_causal_lm("tiny-random")
    model.config.save_pretrained(tmp_path / "m")
    torch.save(model.state_dict(), tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(UserError, match="allow_pickle"):
        load_causal_lm(str(tmp_path / "m"))
    loaded = load_causal_lm(str(tmp_path / "m"), allow_pickle=True)
    assert torch.equal(loaded.model.norm.weight, model.model.norm.weight)
