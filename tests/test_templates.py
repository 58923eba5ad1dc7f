"""Templates: exact strings for every template, with the real SmolLM2 tokenizer (shared by tiny-random)."""

from __future__ import annotations

import pytest

from rlhf_lab.data.templates import (
    TEMPLATES,
    render_prompt,
    render_response,
    response_end_marker,
    stop_strings,
)
from rlhf_lab.errors import UserError

SMOL_SYSTEM = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
)
ONE = [{"role": "user", "content": "Hi"}]
MULTI = [
    {"role": "system", "content": "Be nice."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "How are you?"},
]


@pytest.fixture(scope="module")
def tok():
    from rlhf_lab.models import load_tokenizer

    return load_tokenizer("tiny-random")


def test_chat_template_smollm2(tok):
    assert (
        render_prompt(ONE, "chat", tok)
        == SMOL_SYSTEM + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_prompt(MULTI, "chat", tok) == (
        "<|im_start|>system\nBe nice.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nHow are you?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render_response("Fine.", "chat", tok) == "Fine.<|im_end|>\n"
    assert response_end_marker("chat", tok) == "<|im_end|>"
    assert stop_strings("chat") == []
    # prompt + response is exactly the template's rendering of the whole conversation
    full = tok.apply_chat_template([*ONE, {"role": "assistant", "content": "Yo"}], tokenize=False)
    assert render_prompt(ONE, "chat", tok) + render_response("Yo", "chat", tok) == full


def test_hh_template(tok):
    assert render_prompt(ONE, "hh") == "\n\nHuman: Hi\n\nAssistant:"
    assert render_prompt(MULTI, "hh", tok) == (
        "\n\nHuman: Be nice.\n\nHi\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant:"
    )
    assert render_response("Fine.", "hh", tok) == " Fine.<|im_end|>"
    assert render_response("Fine.", "hh") == " Fine."
    assert response_end_marker("hh", tok) == "<|im_end|>"
    assert response_end_marker("hh") == ""
    assert stop_strings("hh") == ["\n\nHuman:"]


def test_lmflow_template(tok):
    assert render_prompt(ONE, "lmflow") == "###Human: Hi###Assistant:"
    assert render_prompt(MULTI, "lmflow", tok) == (
        "###Human: Be nice.\n\nHi###Assistant: Hello!###Human: How are you?###Assistant:"
    )
    assert render_response("Fine.", "lmflow", tok) == " Fine.<|im_end|>"
    assert response_end_marker("lmflow", tok) == "<|im_end|>"
    assert stop_strings("lmflow") == ["###Human:"]


def test_question_answer_template(tok):
    assert render_prompt(ONE, "question_answer") == "Question: Hi\n\nAnswer: "
    # earlier turns join the question hh-style (the length-bias seed's rlcd questions look exactly like this)
    assert render_prompt(MULTI, "question_answer", tok) == (
        "Question: Be nice.\n\nHi\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAnswer: "
    )
    assert render_response("Fine.", "question_answer", tok) == "Fine.<|im_end|>"
    assert render_response("Fine.", "question_answer") == "Fine."
    assert response_end_marker("question_answer", tok) == "<|im_end|>"
    assert stop_strings("question_answer") == ["\n\nQuestion:"]


def test_oasst_template(tok):
    assert render_prompt(ONE, "oasst") == "<|prompter|>Hi<|endoftext|><|assistant|>"
    assert render_prompt(MULTI, "oasst", tok) == (
        "<|prompter|>Be nice.\n\nHi<|endoftext|><|assistant|>Hello!<|endoftext|>"
        "<|prompter|>How are you?<|endoftext|><|assistant|>"
    )
    # the literal OA end token, with or without a tokenizer
    assert render_response("Fine.", "oasst", tok) == "Fine.<|endoftext|>"
    assert response_end_marker("oasst") == response_end_marker("oasst", tok) == "<|endoftext|>"
    assert stop_strings("oasst") == ["<|prompter|>"]


def test_raw_template(tok):
    assert render_prompt(ONE, "raw") == "Hi"
    assert render_prompt(MULTI, "raw", tok) == "Be nice.\n\nHi\nHello!\nHow are you?"
    assert render_response("Fine.", "raw", tok) == "Fine.<|im_end|>"
    assert response_end_marker("raw") == ""
    assert stop_strings("raw") == []


def test_system_only_and_empty_conversations(tok):
    system_only = [{"role": "system", "content": "S"}]
    assert render_prompt(system_only, "hh") == "\n\nHuman: S\n\nAssistant:"
    for template in TEMPLATES:
        assert render_prompt([], template, tok) == ""  # plain-text SFT rows have no prompt


def test_template_errors(tok):
    with pytest.raises(UserError, match=r"^--template: unknown template 'alpaca'"):
        render_prompt(ONE, "alpaca")
    with pytest.raises(UserError, match="needs the model's tokenizer"):
        render_prompt(ONE, "chat")
    with pytest.raises(UserError, match="unknown template"):
        stop_strings("nope")

    class NoTemplate:
        chat_template = None
        eos_token = "</s>"

    with pytest.raises(UserError, match="has no chat template; pass --template"):
        render_response("x", "chat", NoTemplate())

    class NotAPrefix:
        chat_template = "something"
        eos_token = "</s>"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            text = "".join(f"[{m['role']}]{m['content']}" for m in messages)
            return text + ("<gen>" if add_generation_prompt else "")

    with pytest.raises(UserError, match="not a prefix"):
        render_response("x", "chat", NotAPrefix())

    class Raises:
        chat_template = "something"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            raise ValueError("System role not supported\nmore")

    with pytest.raises(
        UserError, match=r"chat template failed on this conversation: System role not supported$"
    ):
        render_prompt(MULTI, "chat", Raises())


def test_messages_are_not_mutated():
    messages = [dict(m) for m in MULTI]
    render_prompt(messages, "hh")
    assert messages == MULTI
