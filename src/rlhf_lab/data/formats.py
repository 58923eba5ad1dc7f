"""One converter per data format: a decoded row (a dict) → ``_Parsed`` (prompt messages and the replies), the
canonical shape before it becomes a ``Pair``, ``Prompt`` or ``Sample``; or ``_BadRow`` naming the reason. Also the
format detection from the first rows. The formats table is in ``docs/data.md``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rlhf_lab.data.records import Message
from rlhf_lab.data.rows import _BadRow, _excerpt, _RawRow

FORMATS = (
    "auto",
    "hh-rlhf",
    "trl",
    "webgpt",
    "stack-exchange-paired",
    "rlcd",
    "alpaca_farm",
    "prompts",
    "sft",
)
PAIR_FORMATS = ("hh-rlhf", "trl", "webgpt", "stack-exchange-paired", "rlcd", "alpaca_farm")

_ROLES = ("system", "user", "assistant")
_TURN = re.compile(r"\n\n(Human|Assistant):")


@dataclass
class _Parsed:
    """A row in the canonical shape, before it becomes a Pair, Prompt or Sample."""

    messages: list[Message]
    chosen: str | None = None
    rejected: str | None = None
    response: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _check_unicode(text: str, what: str) -> str:
    # json.loads accepts "\ud800" escapes; such a string cannot be written back as UTF-8 or tokenized.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _BadRow(
            "undecodable_bytes", f"{what} holds a lone surrogate escape, not valid Unicode"
        ) from None
    return text


def _require(row: dict[str, Any], keys: tuple[str, ...], fmt: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise _BadRow(
            "missing_keys",
            f"missing {', '.join(repr(k) for k in missing)} ({fmt} rows need {', '.join(repr(k) for k in keys)})",
        )


def _str(row: dict[str, Any], key: str) -> str:
    value = row[key]
    if not isinstance(value, str):
        raise _BadRow("wrong_type", f"{key!r} is {_type_name(value)}, expected a string")
    return _check_unicode(value, repr(key))


def _messages(value: Any, key: str) -> list[Message]:
    """A list of ``{"role", "content"}`` messages (extra keys in a message are dropped)."""
    if not isinstance(value, list):
        raise _BadRow("wrong_type", f"{key!r} is {_type_name(value)}, expected a list of messages")
    out: list[Message] = []
    for i, message in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(message, dict):
            raise _BadRow("wrong_type", f"{where} is {_type_name(message)}, expected a message object")
        for k in ("role", "content"):
            if k not in message:
                raise _BadRow("missing_keys", f"{where} has no {k!r}")
        role, content = message["role"], message["content"]
        if not isinstance(role, str) or role not in _ROLES:
            shown = _excerpt(role) if isinstance(role, str) else _type_name(role)
            raise _BadRow("wrong_type", f"{where}.role is {shown}, expected system, user or assistant")
        if not isinstance(content, str):
            raise _BadRow("wrong_type", f"{where}.content is {_type_name(content)}, expected a string")
        out.append({"role": role, "content": _check_unicode(content, where)})
    return out


def _prompt_messages(value: Any, key: str) -> list[Message]:
    """A prompt field: a plain string (one user turn) or a list of messages."""
    if isinstance(value, str):
        return [{"role": "user", "content": _check_unicode(value, repr(key))}]
    if isinstance(value, list):
        return _messages(value, key)
    raise _BadRow("wrong_type", f"{key!r} is {_type_name(value)}, expected a string or a list of messages")


def _reply_messages(value: Any, key: str) -> list[Message]:
    """A reply field: a plain string (one assistant turn) or a list of messages ending with the reply."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": _check_unicode(value, repr(key))}]
    if isinstance(value, list):
        return _messages(value, key)
    raise _BadRow("wrong_type", f"{key!r} is {_type_name(value)}, expected a string or a list of messages")


def _transcript(text: str, key: str) -> list[Message]:
    """Parse an hh-rlhf transcript (``\\n\\nHuman: …\\n\\nAssistant: …``) into messages.

    Each turn's text loses a single leading space (the one after the colon) and keeps everything else, so the
    ``hh`` template renders the prompt back byte for byte. A transcript that starts with ``Human:`` without the
    leading blank line is accepted; non-blank text before the first turn becomes a system message.
    """
    if text.startswith(("Human:", "Assistant:")):
        text = "\n\n" + text
    marks = list(_TURN.finditer(text))
    if not marks:
        raise _BadRow(
            "wrong_type", f"{key!r} is not a Human/Assistant transcript (no '\\n\\nAssistant:' turn)"
        )
    messages: list[Message] = []
    preamble = text[: marks[0].start()]
    if preamble.strip():
        messages.append({"role": "system", "content": preamble.strip()})
    for mark, nxt in zip(marks, [*marks[1:], None], strict=True):
        content = text[mark.end() : nxt.start() if nxt is not None else len(text)]
        if content.startswith(" "):
            content = content[1:]
        messages.append({"role": "user" if mark.group(1) == "Human" else "assistant", "content": content})
    return messages


def _split_final_reply(chosen: list[Message], rejected: list[Message], what: str) -> _Parsed:
    """Two full conversations → shared prompt + the two final assistant replies."""
    for key, msgs in (("chosen", chosen), ("rejected", rejected)):
        if not msgs or msgs[-1]["role"] != "assistant":
            raise _BadRow("wrong_type", f"{key!r} does not end with an assistant reply")
    prompt_c, prompt_r = chosen[:-1], rejected[:-1]
    if prompt_c != prompt_r:
        turn = next(
            (i for i, (a, b) in enumerate(zip(prompt_c, prompt_r, strict=False)) if a != b),
            min(len(prompt_c), len(prompt_r)),
        )
        raise _BadRow(
            "diverging_transcript",
            f"chosen and rejected {what} differ before the final reply (at turn {turn + 1}; "
            f"{len(prompt_c)} vs {len(prompt_r)} earlier turns)",
        )
    if not prompt_c:
        raise _BadRow("wrong_type", "no prompt: nothing before the final assistant reply")
    return _Parsed(prompt_c, chosen=chosen[-1]["content"], rejected=rejected[-1]["content"])


def _instruction_prompt(row: dict[str, Any]) -> list[Message]:
    """Alpaca-style ``instruction`` + optional ``input`` (appended after a newline when non-empty)."""
    instruction = _str(row, "instruction")
    extra = row.get("input")
    if extra is None:
        extra = ""
    if not isinstance(extra, str):
        raise _BadRow("wrong_type", f"'input' is {_type_name(extra)}, expected a string")
    _check_unicode(extra, "'input'")
    text = instruction + ("\n" + extra if extra.strip() else "")
    return [{"role": "user", "content": text}]


def _question(row: dict[str, Any]) -> list[Message]:
    q = row["question"]
    if isinstance(q, dict):
        if "full_text" not in q:
            raise _BadRow("missing_keys", "'question' object has no 'full_text'")
        q = q["full_text"]
    if not isinstance(q, str):
        raise _BadRow(
            "wrong_type", f"'question' is {_type_name(q)}, expected a string or {{'full_text': ...}}"
        )
    return [{"role": "user", "content": _check_unicode(q, "'question'")}]


def _preference(value: Any, allowed: tuple[int, ...]) -> int:
    """1/2 (or 0/1) as an int, a float or a CSV string; anything else is a wrong type."""
    parsed: int | None = None
    if isinstance(value, bool):
        parsed = None
    elif isinstance(value, int):
        parsed = value
    elif isinstance(value, float) and value.is_integer():
        parsed = int(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
            parsed = int(number) if number.is_integer() else None
        except ValueError:
            parsed = None
    if parsed not in allowed:
        if isinstance(value, str):
            shown = _excerpt(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < 1e15:
            shown = repr(value)
        else:
            shown = _type_name(value)
        raise _BadRow("wrong_type", f"'preference' is {shown}, expected {' or '.join(map(str, allowed))}")
    return parsed  # type: ignore[return-value]


def _score(row: dict[str, Any], key: str) -> float:
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _BadRow("wrong_type", f"{key!r} is {_type_name(value)}, expected a number")
    return float(value)


# --------------------------------------------------------------------------------------------------------------
# Row parsers, one per format: dict -> _Parsed, or raise _BadRow
# --------------------------------------------------------------------------------------------------------------
def _row_hh(row: dict[str, Any]) -> _Parsed:
    _require(row, ("chosen", "rejected"), "hh-rlhf")
    chosen = _transcript(_str(row, "chosen"), "chosen")
    rejected = _transcript(_str(row, "rejected"), "rejected")
    return _split_final_reply(chosen, rejected, "transcripts")


def _row_trl(row: dict[str, Any]) -> _Parsed:
    _require(row, ("chosen", "rejected"), "trl")
    if "prompt" not in row:
        if isinstance(row["chosen"], str) and isinstance(row["rejected"], str):
            return _row_hh(row)  # TRL's implicit-prompt text form is the hh-rlhf transcript format
        # Implicit prompt, conversational: two full conversations sharing everything but the final reply.
        return _split_final_reply(
            _messages(row["chosen"], "chosen"), _messages(row["rejected"], "rejected"), "conversations"
        )
    prompt = _prompt_messages(row["prompt"], "prompt")
    chosen = _reply_messages(row["chosen"], "chosen")
    rejected = _reply_messages(row["rejected"], "rejected")
    return _split_final_reply(prompt + chosen, prompt + rejected, "conversations")


def _row_webgpt(row: dict[str, Any]) -> _Parsed:
    _require(row, ("question", "answer_0", "answer_1", "score_0", "score_1"), "webgpt")
    messages = _question(row)
    answer_0, answer_1 = _str(row, "answer_0"), _str(row, "answer_1")
    score_0, score_1 = _score(row, "score_0"), _score(row, "score_1")
    # As in Singhal et al. 2023's code: answer_0 only when strictly better, so a tie makes answer_1 "preferred".
    if score_0 > score_1:
        chosen, rejected = answer_0, answer_1
    else:
        chosen, rejected = answer_1, answer_0
    return _Parsed(messages, chosen=chosen, rejected=rejected, extra={"tie": score_0 == score_1})


def _row_stack(row: dict[str, Any]) -> _Parsed:
    _require(row, ("question", "response_j", "response_k"), "stack-exchange-paired")
    return _Parsed(_question(row), chosen=_str(row, "response_j"), rejected=_str(row, "response_k"))


def _rlcd_prompt(instruction: str) -> list[Message]:
    """``Human: …\\n\\nAssistant:`` → messages; Singhal et al.'s code strips that leading/trailing text and keeps the rest."""
    text = instruction
    stripped = text.rstrip()
    if stripped.endswith("\n\nAssistant:"):
        text = stripped[: -len("\n\nAssistant:")]
    if text.startswith("Human:"):
        messages = _transcript(text, "instruction")
        if messages[-1]["role"] == "user":
            return messages
    return [{"role": "user", "content": text}]


def _row_rlcd(row: dict[str, Any]) -> _Parsed:
    _require(row, ("instruction", "output_1", "output_2", "preference"), "rlcd")
    messages = _rlcd_prompt(_str(row, "instruction"))
    output_1, output_2 = _str(row, "output_1"), _str(row, "output_2")
    if _preference(row["preference"], (1, 2)) == 1:
        return _Parsed(messages, chosen=output_1, rejected=output_2)
    return _Parsed(messages, chosen=output_2, rejected=output_1)


def _row_alpaca_farm(row: dict[str, Any]) -> _Parsed:
    if "answers" in row and "output_1" not in row:
        # The layout of Coste et al. 2023's code (reward-model ensembles): answers=[a, b], preference = index of the preferred answer.
        _require(row, ("instruction", "answers", "preference"), "alpaca_farm")
        messages = _instruction_prompt(row)
        answers = row["answers"]
        if not isinstance(answers, list) or len(answers) != 2:
            shown = f"a list of {len(answers)}" if isinstance(answers, list) else _type_name(answers)
            raise _BadRow("wrong_type", f"'answers' is {shown}, expected a list of 2 strings")
        for i, answer in enumerate(answers):
            if not isinstance(answer, str):
                raise _BadRow("wrong_type", f"'answers'[{i}] is {_type_name(answer)}, expected a string")
            _check_unicode(answer, f"'answers'[{i}]")
        best = _preference(row["preference"], (0, 1))
        return _Parsed(messages, chosen=answers[best], rejected=answers[1 - best])
    _require(row, ("instruction", "output_1", "output_2", "preference"), "alpaca_farm")
    messages = _instruction_prompt(row)
    output_1, output_2 = _str(row, "output_1"), _str(row, "output_2")
    if _preference(row["preference"], (1, 2)) == 1:
        return _Parsed(messages, chosen=output_1, rejected=output_2)
    return _Parsed(messages, chosen=output_2, rejected=output_1)


def _row_prompts(row: dict[str, Any]) -> _Parsed:
    if "messages" in row:
        messages = _messages(row["messages"], "messages")
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]  # a full conversation: prompt = everything before the final reply
        if not messages or messages[-1]["role"] != "user":
            raise _BadRow("wrong_type", "'messages' must end with a user turn")
        return _Parsed(messages)
    if "prompt" in row:
        return _Parsed(_prompt_messages(row["prompt"], "prompt"))
    if "text" in row:
        return _Parsed([{"role": "user", "content": _str(row, "text")}])
    if "instruction" in row:
        return _Parsed(_instruction_prompt(row))
    if "question" in row:
        return _Parsed(_question(row))
    raise _BadRow(
        "missing_keys", "prompt rows need one of 'prompt', 'text', 'instruction', 'question', 'messages'"
    )


def _row_sft(row: dict[str, Any]) -> _Parsed:
    if "messages" in row:
        messages = _messages(row["messages"], "messages")
        if not messages or messages[-1]["role"] != "assistant":
            raise _BadRow("wrong_type", "'messages' must end with an assistant turn")
        return _Parsed(messages[:-1], response=messages[-1]["content"])
    if "completion" in row:
        _require(row, ("prompt", "completion"), "sft")
        full = _prompt_messages(row["prompt"], "prompt") + _reply_messages(row["completion"], "completion")
        if full[-1]["role"] != "assistant":
            raise _BadRow("wrong_type", "'completion' does not end with an assistant reply")
        return _Parsed(full[:-1], response=full[-1]["content"])
    if "output" in row:
        _require(row, ("instruction", "output"), "sft")
        return _Parsed(_instruction_prompt(row), response=_str(row, "output"))
    if "text" in row:
        return _Parsed([], response=_str(row, "text"))
    raise _BadRow(
        "missing_keys", "sft rows need 'prompt'+'completion', 'messages', 'instruction'+'output', or 'text'"
    )


_ROW_PARSERS: dict[str, Callable[[dict[str, Any]], _Parsed]] = {
    "hh-rlhf": _row_hh,
    "trl": _row_trl,
    "webgpt": _row_webgpt,
    "stack-exchange-paired": _row_stack,
    "rlcd": _row_rlcd,
    "alpaca_farm": _row_alpaca_farm,
    "prompts": _row_prompts,
    "sft": _row_sft,
}


def _detect(row: dict[str, Any], want: str) -> str | None:
    """The format whose signature keys ``row`` has; ``want`` (pairs | prompts | sft) breaks ties."""
    keys = set(row)
    if {"chosen", "rejected"} <= keys:
        return "trl" if "prompt" in keys or isinstance(row["chosen"], list) else "hh-rlhf"
    if {"answer_0", "answer_1"} <= keys:
        return "webgpt"
    if {"response_j", "response_k"} <= keys:
        return "stack-exchange-paired"
    if {"output_1", "output_2"} <= keys:
        return "alpaca_farm" if "input" in keys else "rlcd"
    if {"answers", "preference"} <= keys:
        return "alpaca_farm"
    if want == "pairs":
        return None
    if "completion" in keys or {"instruction", "output"} <= keys:
        return "sft"
    if keys & {"messages", "text"}:
        return "prompts" if want == "prompts" else "sft"
    if want == "prompts" and keys & {"prompt", "instruction", "question"}:
        return "prompts"
    return None


def _detect_rows(rows: list[_RawRow], want: str) -> str | None:
    """The format of the first object row whose keys match a format signature (bad rows are passed over)."""
    for row in rows:
        if isinstance(row.value, dict):
            fmt = _detect(row.value, want)
            if fmt is not None:
                return fmt
    return None


