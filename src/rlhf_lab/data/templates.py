"""Turn a conversation (``Prompt.messages``) and a reply into model text.

``chat`` uses the model's own chat template (the default for instruct models); the other names reproduce the
seed systems' prompt formats:

===================  =====================================================  ================================
template             prompt                                                 reply
===================  =====================================================  ================================
``chat``             ``tokenizer.apply_chat_template(..., add_generation_   what the template adds for an
                     prompt=True)``                                         assistant turn (SmolLM2:
                                                                            ``text + "<|im_end|>\\n"``)
``hh``               ``"\\n\\nHuman: {u}\\n\\nAssistant: {a}…\\n\\nAssistant:"``  ``" " + text + eos``
``lmflow``           ``"###Human: {u}###Assistant: {a}…###Assistant:"``     ``" " + text + eos``
``question_answer``  ``"Question: {q}\\n\\nAnswer: "``                         ``text + eos``
``oasst``            ``"<|prompter|>{u}<|endoftext|><|assistant|>"``        ``text + "<|endoftext|>"``
``raw``              message contents joined with ``"\\n"``                  ``text + eos``
===================  =====================================================  ================================

``eos`` is ``tokenizer.eos_token`` when a tokenizer is given, else nothing. Every template but ``chat`` folds
system messages into the first user turn (``system + "\\n\\n" + user``). An empty conversation (plain-text SFT
rows) renders as ``""`` in every template.
"""

from __future__ import annotations

from typing import Any

from rlhf_lab.data.records import Message
from rlhf_lab.errors import UserError

TEMPLATES = ("chat", "hh", "lmflow", "question_answer", "oasst", "raw")

_OASST_END = "<|endoftext|>"
_SENTINEL = "\u2063RLHF-LAB-REPLY\u2063"  # text no real reply contains, used to find what a template appends
_PROBE: list[Message] = [{"role": "user", "content": "Hello"}]


def _check_template(template: str) -> None:
    if template not in TEMPLATES:
        raise UserError(f"--template: unknown template {template!r} (one of {', '.join(TEMPLATES)})")


def _eos(tokenizer: Any) -> str:
    token = getattr(tokenizer, "eos_token", None) if tokenizer is not None else None
    return token if isinstance(token, str) else ""


def _fold_system(messages: list[Message]) -> list[Message]:
    """System contents go in front of the first user turn (a user turn of their own when there is none)."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if not system:
        return rest
    prefix = "\n\n".join(system)
    for m in rest:
        if m["role"] == "user":
            m["content"] = f"{prefix}\n\n{m['content']}"
            return rest
    return [{"role": "user", "content": prefix}, *rest]


def _apply_chat_template(tokenizer: Any, messages: list[Message], add_generation_prompt: bool) -> str:
    if tokenizer is None:
        raise UserError("--template chat needs the model's tokenizer")
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            "the model's tokenizer has no chat template; pass --template with one of "
            + ", ".join(t for t in TEMPLATES if t != "chat")
        )
    try:
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as e:  # jinja2 TemplateError, ValueError (e.g. "system role not supported"), ...
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"the model's chat template failed on this conversation: {message}") from None
    if not isinstance(text, str):
        raise UserError("the model's chat template did not return text")
    return text


def render_prompt(messages: list[Message], template: str, tokenizer: Any = None) -> str:
    """The text a model sees before it writes the next assistant turn."""
    _check_template(template)
    if not messages:
        return ""
    if template == "chat":
        return _apply_chat_template(tokenizer, messages, add_generation_prompt=True)
    turns = _fold_system(messages)
    if template == "hh":
        body = "".join(
            f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in turns
        )
        return body + "\n\nAssistant:"
    if template == "lmflow":
        body = "".join(f"###{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in turns)
        return body + "###Assistant:"
    if template == "question_answer":
        # Earlier turns join the question as an hh-style transcript, which reproduces Singhal et al. 2023's
        # rlcd questions ("…\n\nAssistant: …\n\nHuman: …") exactly.
        parts = []
        for i, m in enumerate(turns):
            if i == 0 and m["role"] == "user":
                parts.append(m["content"])
            else:
                parts.append(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}")
        return f"Question: {''.join(parts)}\n\nAnswer: "
    if template == "oasst":
        body = "".join(
            f"<|prompter|>{m['content']}{_OASST_END}"
            if m["role"] == "user"
            else f"<|assistant|>{m['content']}{_OASST_END}"
            for m in turns
        )
        return body + "<|assistant|>"
    return "\n".join(m["content"] for m in turns)  # raw


def render_response(response: str, template: str, tokenizer: Any = None) -> str:
    """The text of an assistant reply as it follows ``render_prompt`` (including what ends the turn)."""
    _check_template(template)
    if template == "chat":
        prompt = _apply_chat_template(tokenizer, _PROBE, add_generation_prompt=True)
        full = _apply_chat_template(
            tokenizer, [*_PROBE, {"role": "assistant", "content": response}], add_generation_prompt=False
        )
        if not full.startswith(prompt):
            raise UserError(
                "the model's chat template does not render a conversation as prompt + reply (the generation "
                "prompt is not a prefix of the rendered reply); pass another --template"
            )
        return full[len(prompt) :]
    if template in ("hh", "lmflow"):
        return " " + response + _eos(tokenizer)
    if template == "oasst":
        return response + _OASST_END
    return response + _eos(tokenizer)  # question_answer, raw


def response_end_marker(template: str, tokenizer: Any = None) -> str:
    """The text that ends an assistant reply: SmolLM2's ``<|im_end|>`` for ``chat``, ``<|endoftext|>`` for
    ``oasst``, else the tokenizer's EOS token (``""`` without a tokenizer)."""
    _check_template(template)
    if template == "chat":
        rendered = render_response(_SENTINEL, template, tokenizer)
        tail = rendered.split(_SENTINEL, 1)[1] if _SENTINEL in rendered else ""
        return tail.strip() or _eos(tokenizer)
    if template == "oasst":
        return _OASST_END
    return _eos(tokenizer)


def stop_strings(template: str) -> list[str]:
    """Strings that mean the model started a new user turn; generation should stop and cut there."""
    _check_template(template)
    return {
        "chat": [],
        "hh": ["\n\nHuman:"],
        "lmflow": ["###Human:"],
        "question_answer": ["\n\nQuestion:"],
        "oasst": ["<|prompter|>"],
        "raw": [],
    }[template]
