"""``--gradient_checkpointing``: keep only each decoder layer's input from the forward pass and recompute the layer
during the backward pass (less activation memory, about one more forward of compute).

Every training recipe turns it on through ``enable_gradient_checkpointing`` on the module it trains: a causal LM,
a PEFT-wrapped one, PPO's policy-and-value, a reward model, a reward member's top layers. It is transformers' own
checkpointing of each decoder layer, non-reentrant: it needs no ``enable_input_require_grads`` under LoRA or with
frozen embeddings, and it restores the RNG state for the recompute, so dropout draws the same mask twice and the
gradients equal those without it.

transformers checkpoints a layer only while it is in training mode and gradients are on, so sampling (eval mode,
``inference_mode``) runs as without the flag, KV cache included. PPO and GRPO train in eval mode (no dropout):
their update phase runs inside ``checkpointed_layers_training``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer

from rlhf_lab.errors import UserError


def enable_gradient_checkpointing(
    module: nn.Module, recompute_context: Callable[[], AbstractContextManager] | None = None,
) -> int:
    """Turn on transformers' non-reentrant checkpointing in every transformers model inside ``module``; return the
    number of decoder layers now checkpointed.

    ``recompute_context``, when given, is called as each layer's forward starts and its result entered around
    that layer's recompute: a forward that swaps weights in for the call (AMA's ``functional_call``) must swap the
    same ones in again, or the backward would use the module's own weights.
    """
    kwargs: dict = {"use_reentrant": False}
    if recompute_context is not None:
        kwargs["context_fn"] = lambda: (nullcontext(), recompute_context())
    outermost: list[PreTrainedModel] = []
    inside: set[int] = set()
    for sub in module.modules():  # parents come before their children
        if isinstance(sub, PreTrainedModel) and id(sub) not in inside:
            outermost.append(sub)
            inside.update(id(m) for m in sub.modules())
    for model in outermost:
        if not model.supports_gradient_checkpointing:
            raise UserError(f"--gradient_checkpointing: {type(model).__name__} does not support it")
        # transformers 5 renamed the method (the old name warns); 4.x has only the old one
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return len(checkpointed_layers(module))


def checkpointed_layers(module: nn.Module) -> list[nn.Module]:
    """The decoder layers of ``module`` whose forward is checkpointed (when in training mode, gradients on)."""
    return [m for m in module.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]


@contextmanager
def checkpointed_layers_training(module: nn.Module) -> Iterator[None]:
    """Within the block the checkpointed decoder layers of ``module`` count as in training mode, so transformers
    checkpoints them, while everything else (their attention, MLP and LoRA dropout inside) keeps its mode.

    For PPO and GRPO, which train in eval mode so that dropout cannot make π differ from π_old. The block spans
    the backward passes, so the recompute runs in the same mode as the forward. (OPT and Falcon decoder layers
    apply a dropout of their own in training mode; with these models the flag turns that dropout on.)
    """
    layers = checkpointed_layers(module)
    modes = [layer.training for layer in layers]
    for layer in layers:
        layer.training = True  # this module only: not .train(), which would switch its sub-modules too
    try:
        yield
    finally:
        for layer, mode in zip(layers, modes, strict=True):
            layer.training = mode
