"""--gradient_checkpointing in every training recipe: each recipe run end to end on tiny-random for two steps with
and without the flag ends with the same weights, the same Adam moments (the accumulated gradients) and the same
logged losses to 1e-5, and with the flag every decoder layer that trains really is recomputed in the backward pass
(its MLP runs twice as often with gradients on). Sampling is unchanged: same tokens, KV cache still used."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rlhf_lab.config import LoraArgs, make_config
from rlhf_lab.engine import TrainArgs
from rlhf_lab.io import read_jsonl
from rlhf_lab.models import load_causal_lm, load_tokenizer, resolve_model_path
from rlhf_lab.models.checkpointing import checkpointed_layers, enable_gradient_checkpointing
from rlhf_lab.models.policy import make_trainable
from rlhf_lab.recipes import ama, dpo, grpo, ppo, raft, reward_model, sft

pytestmark = pytest.mark.usefixtures("one_thread")


class MLPCalls:
    """Counts decoder-layer MLP forwards run with gradients on: a training forward, or its recompute in the
    backward pass of a checkpointed layer (sampling and reference passes run without gradients)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, module, args) -> None:
        if type(module).__name__ == "LlamaMLP" and torch.is_grad_enabled():
            self.count += 1


def _run_both(run, config_cls, args: dict, tmp_path: Path) -> dict[bool, tuple[Path, int]]:
    out = {}
    for flag in (False, True):
        calls = MLPCalls()
        handle = torch.nn.modules.module.register_module_forward_pre_hook(calls)
        try:
            run(make_config(config_cls, {**args, "output_dir": str(tmp_path / f"gc-{flag}"),
                                         "gradient_checkpointing": flag}))
        finally:
            handle.remove()
        out[flag] = (tmp_path / f"gc-{flag}", calls.count)
    return out


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert a.shape == b.shape, what
    assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-8), (what, float((a - b).abs().max()))


def _assert_same_training(runs: dict[bool, tuple[Path, int]]) -> None:
    """Same final checkpoint (weights, Adam moments) and logged losses; with the flag, every training forward of a
    layer is run again in the backward pass."""
    (plain, plain_calls), (checkpointed, checkpointed_calls) = runs[False], runs[True]
    assert plain_calls > 0 and checkpointed_calls == 2 * plain_calls, (plain_calls, checkpointed_calls)
    [last] = sorted((plain / "checkpoints").iterdir())
    other = checkpointed / "checkpoints" / last.name
    weights, weights_gc = load_file(str(last / "trainable.safetensors")), load_file(str(other / "trainable.safetensors"))
    assert weights.keys() == weights_gc.keys() and weights
    for name in weights:
        _close(weights[name], weights_gc[name], name)
    state = torch.load(last / "optimizer.pt", weights_only=True)["optimizer"]["state"]
    state_gc = torch.load(other / "optimizer.pt", weights_only=True)["optimizer"]["state"]
    assert state.keys() == state_gc.keys() and state
    for index in state:
        for moment in ("exp_avg", "exp_avg_sq"):  # (1-β)-weighted sums of the gradients and their squares
            assert float(state[index][moment].abs().max()) > 0
            _close(state[index][moment], state_gc[index][moment], f"{moment} of parameter {index}")
    rows, rows_gc = read_jsonl(plain / "metrics.jsonl"), read_jsonl(checkpointed / "metrics.jsonl")
    assert len(rows) == len(rows_gc)
    losses = 0
    for row, row_gc in zip(rows, rows_gc, strict=True):
        for key, value in row.items():
            if "loss" in key:
                assert abs(value - row_gc[key]) <= 1e-5, (key, value, row_gc[key])
                losses += 1
    assert losses > 0


def test_every_training_recipe_has_the_flag_off_by_default():
    for config in (sft.SFTConfig, dpo.DPOConfig, reward_model.RewardModelConfig, ppo.PPOConfig, grpo.GRPOConfig,
                   raft.RaftConfig, ama.AMAConfig):
        assert issubclass(config, TrainArgs)
        assert {f.name: f.default for f in config.__dataclass_fields__.values()}["gradient_checkpointing"] is False


# ---- data and models ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("gc")
    topics = ["cats", "tea", "rain", "maps", "jazz", "bread", "chess", "snow"]
    pairs = [{"prompt": f"Tell me about {t} {i}.", "chosen": f"Sure! {t} are wonderful.", "rejected": f"No. Not {t}."}
             for i in range(2) for t in topics]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    sft_rows = [{"prompt": f"Count to {n}.", "completion": " ".join(str(i) for i in range(1, n + 1))}
                for n in range(2, 18)]
    (root / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft_rows))
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"Say something about {t}."}) + "\n"
                                                for t in topics * 2))
    (root / "rewards.py").write_text("def brevity(prompts, completions, **kwargs):\n"
                                     "    return [-len(c[0]['content']) / 10 for c in completions]\n")
    # a reward model: tiny-random as a sequence classifier with a seeded head
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(1)
    rm = AutoModelForSequenceClassification.from_pretrained(resolve_model_path("tiny-random"), num_labels=1)
    with torch.no_grad():
        rm.score.weight.normal_(0, 1.0)
    rm.save_pretrained(root / "rm", safe_serialization=True)
    load_tokenizer("tiny-random").save_pretrained(root / "rm")
    # AMA: a perturbed copy of tiny-random as the tuned model
    shutil.copytree(resolve_model_path("tiny-random"), root / "tuned")
    generator = torch.Generator().manual_seed(1)
    for f in (root / "tuned").glob("*.safetensors"):
        tensors = {k: v + 0.05 * torch.randn(v.shape, generator=generator) for k, v in load_file(str(f)).items()}
        save_file(tensors, str(f), metadata={"format": "pt"})
    return root


COMMON = dict(model_name="tiny-random", split="all", max_steps=2, progress=False, seed=3, learning_rate=1e-3)


# ---- the recipes ----------------------------------------------------------------------------------------------


def test_sft_lora_with_dropout(data, tmp_path):
    # LoRA dropout on: the recompute must draw the forward's dropout masks again
    args = dict(COMMON, dataset=str(data / "sft.jsonl"), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                max_length=48, eval_limit=0, trainable="lora", lora_r=4, lora_dropout=0.2)
    _assert_same_training(_run_both(sft.run, sft.SFTConfig, args, tmp_path))


def test_dpo_full(data, tmp_path):
    args = dict(COMMON, dataset=str(data / "pairs.jsonl"), per_device_train_batch_size=2, max_length=64,
                eval_limit=0, trainable="full")
    _assert_same_training(_run_both(dpo.run, dpo.DPOConfig, args, tmp_path))


@pytest.mark.parametrize("trainable", ["top:1", "lora", "full"])
def test_train_rm(data, tmp_path, trainable):
    args = dict(COMMON, dataset=str(data / "pairs.jsonl"), per_device_train_batch_size=4, max_length=64,
                trainable=trainable, eval_limit=4, eval_steps=1, eval_dataset=str(data / "pairs.jsonl"),
                ensemble_size=2 if trainable.startswith("top") else 1, feature_cache=str(tmp_path / "features"),
                max_steps=3, save_steps=2)  # train-rm checkpoints only before its last step
    _assert_same_training(_run_both(reward_model.run, reward_model.RewardModelConfig, args, tmp_path))


def test_train_rm_head_is_a_no_op(data, tmp_path, capsys):
    args = dict(COMMON, dataset=str(data / "pairs.jsonl"), per_device_train_batch_size=4, max_length=64,
                trainable="head", eval_limit=0, feature_cache=str(tmp_path / "features"))
    runs = _run_both(reward_model.run, reward_model.RewardModelConfig, args, tmp_path)
    assert runs[False][1] == runs[True][1] == 0  # no layer runs with gradients: nothing to checkpoint
    assert "--gradient_checkpointing does nothing with --trainable head" in capsys.readouterr().err
    rows, rows_gc = (read_jsonl(runs[flag][0] / "metrics.jsonl") for flag in (False, True))
    assert [r["loss"] for r in rows] == [r["loss"] for r in rows_gc]


@pytest.mark.parametrize("critic", ["policy", "rm"])
def test_ppo_policy_and_value(data, tmp_path, critic):
    # critic=policy: the value head on the LoRA policy's trunk; rm: a LoRA critic (sequence classifier) beside it
    args = dict(COMMON, dataset=str(data / "prompts.jsonl"), reward_models=str(data / "rm"), objective="mean",
                critic=critic, per_device_train_batch_size=2, gradient_accumulation_steps=2, max_new_tokens=6,
                ppo_epochs=2, num_eval_prompts=0, lora_r=4)
    _assert_same_training(_run_both(ppo.run, ppo.PPOConfig, args, tmp_path))


def test_grpo(data, tmp_path):
    args = dict(COMMON, dataset=str(data / "prompts.jsonl"), reward_funcs=f"{data / 'rewards.py'}:brevity",
                num_generations=2, per_device_train_batch_size=4, gradient_accumulation_steps=2, max_new_tokens=6,
                num_iterations=2, beta=0.1, lora_r=4, num_eval_prompts=0)
    _assert_same_training(_run_both(grpo.run, grpo.GRPOConfig, args, tmp_path))


def test_raft(data, tmp_path):
    args = dict(COMMON, dataset=str(data / "prompts.jsonl"), reward_models=str(data / "rm"), num_raft_iteration=2,
                raft_batch_size=4, top_reward_percentage=0.5, output_min_length=3, output_max_length=8,
                per_device_train_batch_size=2, generation_batch_size=8, max_steps=0, trainable="full")
    _assert_same_training(_run_both(raft.run, raft.RaftConfig, args, tmp_path))


def test_ama(data, tmp_path):
    # the merged weights exist only inside AMA's functional_call: the recompute must see them again
    args = dict(COMMON, base="tiny-random", tuned=str(data / "tuned"), dataset=str(data / "sft.jsonl"),
                per_device_train_batch_size=2, max_length=48, learning_rate=0.5)
    del args["model_name"]
    _assert_same_training(_run_both(ama.run, ama.AMAConfig, args, tmp_path))


# ---- the helper on its own ------------------------------------------------------------------------------------


def test_peft_and_value_models_get_every_layer_checkpointed():
    policy = make_trainable(load_causal_lm("tiny-random"), "lora", LoraArgs(lora_r=4))
    agent = ppo.PolicyAndValue(policy)
    assert enable_gradient_checkpointing(agent) == 2  # tiny-random's two decoder layers
    assert len(checkpointed_layers(agent)) == 2


@pytest.mark.parametrize("sampler", ["fast", "hf"])
def test_sampling_is_unchanged_and_keeps_its_kv_cache(tiny_tokenizer, sampler):
    from rlhf_lab.decode import DecodingConfig
    from rlhf_lab.generation import generate

    prompts = [tiny_tokenizer("Tell me about cats.")["input_ids"], tiny_tokenizer("Hi")["input_ids"]]
    results = {}
    for flag in (False, True):
        model = make_trainable(load_causal_lm("tiny-random"), "lora", LoraArgs(lora_r=4, lora_dropout=0.2))
        if flag:
            enable_gradient_checkpointing(model)
        model.train()  # as SFT, DPO and RAFT hold their model between steps
        widths: list[int] = []
        handle = model.get_base_model().model.register_forward_pre_hook(
            lambda module, args, kwargs, widths=widths: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
        gens = generate(model, tiny_tokenizer, prompts, samples_per_prompt=2, sampler=sampler, seed=7,
                        decoding=DecodingConfig(max_new_tokens=8, temperature=1.0), progress=False,
                        return_logprobs=sampler == "fast")
        handle.remove()
        assert model.training and all(m.training for m in model.modules())  # generate restores the modes
        results[flag] = ([(g.token_ids, g.logprobs) for group in gens for g in group], widths)
    assert results[True] == results[False]
    widths = results[True][1]
    assert max(widths) > 1 and widths.count(1) >= 6  # a prefill, then one new token per step: the cache is used
