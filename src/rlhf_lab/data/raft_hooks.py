"""RAFT's post-processing hooks: ``clean_text`` (what of a generation is the reply) and ``discard_sample`` (which
replies may never enter the training set), and how a hook named in the config as ``"module:function"`` is found.

A hook is any Python callable. ``clean_text(text, context) -> str`` and ``discard_sample(text, context) -> bool``
get the decoded generation (special tokens kept, so template markup stays visible) and a :class:`HookContext`
(the prompt template's markers and the prompt itself); a one-argument callable ``f(text)`` works too, as in
LMFlow, where they were the methods ``RaftAligner._clean_text`` / ``_discard_sample``.

The defaults generalise LMFlow's (Dong et al. 2023; ``raft_aligner.py``, written for the ``###Human: …###Assistant:``
template) to every template:

    clean_text:      keep the first assistant turn: the text before the first turn marker, stripped
                     (LMFlow: ``[x for x in text.split("###Human") if x][0].strip().strip("#")``)
    discard_sample:  discard a reply that still contains a marker of the template, or is shorter than 2 characters
                     (LMFlow: ``"#" in text or len(text) < 2``)

Markers per template (``template_markers``):

    lmflow           turn starts "###Human"; markers "#"  (exactly LMFlow's)
    hh               turn starts "Human:"; markers "Human:", "Assistant:"
    question_answer  turn starts "Question:"; markers "Question:", "Answer:"
    oasst            turn starts "<|prompter|>"; markers "<|prompter|>", "<|assistant|>", "<|endoftext|>"
    chat             the tokenizer's special tokens (SmolLM2: "<|im_start|>", "<|im_end|>", "<|endoftext|>"):
                     a special token inside a reply is template markup, never content
    raw              none (only the length rule)

One deliberate difference: LMFlow kept the first *non-empty* piece, so a generation that opened with
"###Human: …" kept the imagined human turn as the reply; here the first turn is the text before the first marker,
and an empty first turn is discarded by the length rule.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rlhf_lab.data.records import Message
from rlhf_lab.errors import UserError
from rlhf_lab.user_code import load_function

MIN_CHARS = 2  # LMFlow's "len(text) < 2" (the AMA fork used 4)


@dataclass(frozen=True)
class HookContext:
    """What a hook may need besides the text: the template's markers and the prompt being answered."""

    template: str
    turn_starts: tuple[str, ...]  # text that opens a new (user) turn: the reply ends before it
    markers: tuple[str, ...]  # text that never belongs in a reply under this template
    strip_chars: str = ""  # characters stripped from both ends after the whitespace (LMFlow: "#")
    prompt: list[Message] = field(default_factory=list)


def template_markers(template: str, tokenizer: Any = None) -> HookContext:
    """The markers of ``template`` (see the module docstring); ``chat`` reads them from the tokenizer."""
    if template == "lmflow":
        return HookContext(template, ("###Human",), ("#",), "#")
    if template == "hh":
        return HookContext(template, ("Human:",), ("Human:", "Assistant:"))
    if template == "question_answer":
        return HookContext(template, ("Question:",), ("Question:", "Answer:"))
    if template == "oasst":
        return HookContext(template, ("<|prompter|>",), ("<|prompter|>", "<|assistant|>", "<|endoftext|>"))
    if template == "chat":
        special = tuple(dict.fromkeys(getattr(tokenizer, "all_special_tokens", []) or []))
        return HookContext(template, special, special)
    return HookContext(template, (), ())  # raw


def clean_text(text: str, context: HookContext) -> str:
    """The first assistant turn: everything before the first turn marker, stripped of whitespace (and of the
    template's ``strip_chars`` at both ends)."""
    for marker in context.turn_starts:
        text = text.split(marker, 1)[0]
    text = text.strip()
    if context.strip_chars:
        text = text.strip(context.strip_chars).strip()
    return text


def discard_sample(text: str, context: HookContext) -> bool:
    """True when the reply must never be trained on: it contains template markup, or is (nearly) empty."""
    return len(text) < MIN_CHARS or any(marker in text for marker in context.markers)


def keep_text(text: str, context: HookContext) -> str:
    """A ``clean_text`` that changes nothing (``--clean_text none``)."""
    return text


def keep_all(text: str, context: HookContext) -> bool:
    """A ``discard_sample`` that discards nothing (``--discard_sample none``): LMFlow's "always False"."""
    return False


# ---------------------------------------------------------------------------------------------------------
# Finding a hook by name
# ---------------------------------------------------------------------------------------------------------

def load_hook(spec: str, flag: str) -> Callable[[str, HookContext], Any]:
    """The callable named ``"package.module:function"`` or ``"path/to/file.py:function"``, called as
    ``f(text, context)`` (or ``f(text)`` if it takes one argument). ``none`` = the do-nothing hook.

    Every failure (``user_code.load_function``: bad spec, module not importable, no such function, not callable)
    is a one-line user error naming the flag.
    """
    if spec.strip().lower() == "none":
        return keep_text if flag == "clean_text" else keep_all
    function = load_function(spec, flag)
    return _adapt(function, spec, flag)


def _adapt(function: Callable, spec: str, flag: str) -> Callable[[str, HookContext], Any]:
    """Call one-argument hooks (LMFlow's ``_clean_text(text)``) with the text alone."""
    try:
        params = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: assume f(text)
        return lambda text, context: function(text)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
    if varargs or len(positional) >= 2:
        return function
    if len(positional) == 1:
        return lambda text, context: function(text)
    raise UserError(f"--{flag}: {spec} must take the text (and optionally the context) as arguments")


def checked_clean(hook: Callable, text: str, context: HookContext, spec: str) -> str:
    out = hook(text, context)
    if not isinstance(out, str):
        raise UserError(f"--clean_text: {spec} returned {type(out).__name__}, not str")
    return out


def checked_discard(hook: Callable, text: str, context: HookContext, spec: str) -> bool:
    out = hook(text, context)
    if not isinstance(out, (bool, int)) and type(out).__name__ != "bool_":
        raise UserError(f"--discard_sample: {spec} returned {type(out).__name__}, not bool")
    return bool(out)


__all__ = [
    "HookContext",
    "checked_clean",
    "checked_discard",
    "clean_text",
    "discard_sample",
    "keep_all",
    "keep_text",
    "load_hook",
    "template_markers",
]
