"""Read preference pairs, prompts and SFT examples from files, the embedded dataset, or a hub dataset.

Every reader returns canonical records (``rlhf_lab.data.records``) plus one ``LoadReport`` per source, so a
recipe never sees a file format. The contract the CLI relies on:

* A bad row either stops the load with a one-line ``UserError("<file>:<line>: <reason>: <detail>")``
  (``on_bad_row="error"``) or is skipped and counted per reason (``on_bad_row="skip"``). The reasons are
  ``BAD_ROW_REASONS``. The default ``"auto"`` is ``error`` for the user's files and ``skip`` for the embedded
  dataset, whose 15 bad rows (9 diverging transcripts, 2 identical pairs, 4 empty replies) are known and
  documented: the shipped default must work out of the box.
* The train/eval split is a fixed-seed shuffle of row *positions* (bad rows included), so skipping a bad row
  never moves a good row between train and eval.
* Line-based files (.jsonl, .jsonl.gz, .json, .csv, .txt) are read here, line by line in binary with a strict
  UTF-8 decode per line, so every error names the 1-based line. We do not use the JSON builder of HF
  ``datasets`` for them: its errors carry no line numbers, and it unifies the schema across rows (a row with a
  missing key comes back with ``None`` in it, a number where the rest have strings is cast or refused for the
  whole file), which hides exactly the rows we want to report. Parquet files and hub datasets are columnar;
  their errors name the 1-based row instead of a line.

See ``docs/data.md`` for the formats table and the policy in prose.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import random
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from rlhf_lab.data.records import Message, Pair, Prompt, Sample
from rlhf_lab.errors import UserError

BAD_ROW_REASONS = (
    "malformed_json",
    "undecodable_bytes",
    "missing_keys",
    "wrong_type",
    "empty_response",
    "identical_responses",
    "diverging_transcript",
)
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
SPLITS = ("auto", "train", "eval", "all")
ON_BAD_ROW = ("auto", "error", "skip")
FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".csv", ".csv.gz", ".parquet", ".txt", ".txt.gz")
EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
EMBEDDED_PREFIX = "hh-rlhf:"

_ROLES = ("system", "user", "assistant")
_TURN = re.compile(r"\n\n(Human|Assistant):")
_BOM = b"\xef\xbb\xbf"


# --------------------------------------------------------------------------------------------------------------
# Public records
# --------------------------------------------------------------------------------------------------------------
@dataclass
class LoadReport:
    """What was read from one source and what was skipped.

    ``rows_read`` counts every row (blank lines are not rows), ``rows_kept`` the rows that survived bad-row
    handling; the split, ``bottom``/``top`` and ``limit`` selections are applied afterwards, across all sources.
    ``skipped`` maps a reason from ``BAD_ROW_REASONS`` to a count (only reasons that occurred).
    """

    source: str
    rows_read: int
    rows_kept: int
    skipped: dict[str, int] = field(default_factory=dict)
    data_format: str = ""

    def summary(self) -> str:
        """One line, e.g. ``hh-rlhf:helpful-base: kept 2339 of 2354 rows (skipped: diverging_transcript 9, ...)``."""
        line = f"{self.source}: kept {self.rows_kept} of {self.rows_read} rows"
        if self.skipped:
            parts = [
                f"{reason} {self.skipped[reason]}" for reason in BAD_ROW_REASONS if reason in self.skipped
            ]
            line += f" (skipped: {', '.join(parts)})"
        return line


# --------------------------------------------------------------------------------------------------------------
# Internal plumbing
# --------------------------------------------------------------------------------------------------------------
class _BadRow(Exception):
    """A row that is bad for ``reason`` (one of BAD_ROW_REASONS); ``detail`` is a short one-line explanation."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class _RawRow(NamedTuple):
    loc: str  # "file:12" or "file:row 3": the prefix of every message about this row
    line: int | None  # 1-based line (None for parquet and hub rows)
    value: Any  # the decoded row (a dict for a good row), or None when ``bad`` is set
    bad: _BadRow | None


@dataclass
class _Source:
    name: str  # what the user wrote (LoadReport.source)
    display: str  # the file path (or hub name) that errors and meta name
    path: Path | None  # None for a hub dataset


@dataclass
class _Parsed:
    """A row in the canonical shape, before it becomes a Pair, Prompt or Sample."""

    messages: list[Message]
    chosen: str | None = None
    rejected: str | None = None
    response: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _excerpt(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[:n] + "…")


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
    # As in the length-bias seed: answer_0 only when strictly better, so a tie makes answer_1 "preferred".
    if score_0 > score_1:
        chosen, rejected = answer_0, answer_1
    else:
        chosen, rejected = answer_1, answer_0
    return _Parsed(messages, chosen=chosen, rejected=rejected, extra={"tie": score_0 == score_1})


def _row_stack(row: dict[str, Any]) -> _Parsed:
    _require(row, ("question", "response_j", "response_k"), "stack-exchange-paired")
    return _Parsed(_question(row), chosen=_str(row, "response_j"), rejected=_str(row, "response_k"))


def _rlcd_prompt(instruction: str) -> list[Message]:
    """``Human: …\\n\\nAssistant:`` → messages; the seed strips that leading/trailing text and keeps the rest."""
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
        # The RM-ensembles seed's layout: answers=[a, b], preference = index of the preferred answer.
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


# --------------------------------------------------------------------------------------------------------------
# File readers: yield _RawRow in file order
# --------------------------------------------------------------------------------------------------------------
def _file_kind(path: Path) -> str:
    name = path.name.lower()
    for suffix in FILE_SUFFIXES:
        if name.endswith(suffix):
            return suffix.removesuffix(".gz").lstrip(".")
    raise UserError(
        f"{path}: unknown file type (expected one of {', '.join(FILE_SUFFIXES)}, or an embedded dataset name)"
    )


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _binary_lines(path: Path, display: str) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes without the line ending); a corrupt .gz stops with a UserError."""
    lineno = 0
    try:
        with _open_binary(path) as f:
            for lineno, raw in enumerate(f, 1):
                if lineno == 1 and raw.startswith(_BOM):
                    raw = raw[len(_BOM) :]
                yield lineno, raw.rstrip(b"\r\n")
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise UserError(f"{display}:{lineno + 1}: corrupt or truncated gzip data ({e})") from None
    except OSError as e:
        raise UserError(f"{display}: cannot read: {e.strerror or e}") from None


def _decode_error(raw: bytes, e: UnicodeDecodeError) -> _BadRow:
    return _BadRow("undecodable_bytes", f"invalid UTF-8 byte 0x{raw[e.start]:02x} at column {e.start + 1}")


def _parse_json_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _BadRow("malformed_json", f"{e.msg} at column {e.colno}") from None
    except RecursionError:
        raise _BadRow("malformed_json", "nested too deeply") from None
    except ValueError as e:  # e.g. an integer with more digits than Python's conversion limit
        raise _BadRow("malformed_json", _one_line(str(e))[:120]) from None


def _read_json_lines(path: Path, display: str) -> Iterator[_RawRow]:
    for lineno, raw in _binary_lines(path, display):
        if not raw.strip():
            continue  # blank lines are not rows
        loc = f"{display}:{lineno}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield _RawRow(loc, lineno, None, _decode_error(raw, e))
            continue
        try:
            yield _RawRow(loc, lineno, _parse_json_text(text), None)
        except _BadRow as bad:
            yield _RawRow(loc, lineno, None, bad)


def _read_json_file(path: Path, display: str) -> Iterator[_RawRow]:
    """A .json file: one JSON list of objects (each element located by its line), or JSON lines."""
    try:
        with _open_binary(path) as f:
            data = f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise UserError(f"{display}: corrupt or truncated gzip data ({e})") from None
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    if not data.lstrip().startswith(b"["):
        yield from _read_json_lines(path, display)
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(
            f"{display}:{line}: undecodable_bytes: invalid UTF-8 byte 0x{data[e.start]:02x} "
            "(a .json list must be valid UTF-8 throughout)"
        ) from None
    try:
        rows = list(_scan_json_list(text, display))
    except UserError as error:
        # Maybe JSON lines whose first line happens to be a list: fall back when that line parses on its own.
        first = next(line for line in text.splitlines() if line.strip())
        try:
            json.loads(first)
        except (ValueError, RecursionError):
            raise error from None
        yield from _read_json_lines(path, display)
        return
    yield from rows


def read_json_objects(path: str | Path, kind: str = "one row") -> Iterator[tuple[str, dict]]:
    """``("file:line", row)`` for every row of a JSON-lines or JSON-list file (gzip allowed), strictly: a missing
    file, malformed JSON or a row that is not an object is a ``UserError`` naming its file:line (``kind`` says
    what one row is, for that message)."""
    if not Path(path).is_file():
        raise UserError(f"{path}: no such file")
    for raw in _read_json_file(Path(path), str(path)):
        if raw.bad is not None:
            raise UserError(f"{raw.loc}: {raw.bad.reason}: {raw.bad.detail}")
        if not isinstance(raw.value, dict):
            raise UserError(f"{raw.loc}: a row must be a JSON object ({kind}), got {type(raw.value).__name__}")
        yield raw.loc, raw.value


def _scan_json_list(text: str, display: str) -> Iterator[_RawRow]:
    decoder = json.JSONDecoder()
    ws = re.compile(r"[ \t\n\r]*")
    pos = ws.match(text, 0).end() + 1  # past "["
    line, counted_to = 1, 0
    index = 0

    def line_at(p: int) -> int:
        nonlocal line, counted_to
        line += text.count("\n", counted_to, p)
        counted_to = p
        return line

    def fail(p: int, message: str) -> UserError:
        return UserError(
            f"{display}:{line_at(p)}: malformed_json: {message} (a .json file must be one JSON list or JSON lines)"
        )

    pos = ws.match(text, pos).end()
    if text.startswith("]", pos):
        pos = ws.match(text, pos + 1).end()
        if pos != len(text):
            raise fail(pos, "extra data after the list")
        return
    while True:
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise fail(e.pos, e.msg) from None
        except (ValueError, RecursionError) as e:
            raise fail(pos, _one_line(str(e))[:120] or "nested too deeply") from None
        start_line = line_at(pos)
        yield _RawRow(f"{display}:{start_line}", start_line, value, None)
        index += 1
        pos = ws.match(text, end).end()
        if text.startswith(",", pos):
            pos = ws.match(text, pos + 1).end()
            continue
        if text.startswith("]", pos):
            pos = ws.match(text, pos + 1).end()
            if pos != len(text):
                raise fail(pos, "extra data after the list")
            return
        raise fail(pos, "expected ',' or ']' after a list element")


def _read_csv(path: Path, display: str) -> Iterator[_RawRow]:
    bad_lines: set[int] = set()
    last_line = 0

    def decoded() -> Iterator[str]:
        nonlocal last_line
        for lineno, raw in _binary_lines(path, display):
            last_line = lineno
            try:
                yield raw.decode("utf-8") + "\n"
            except UnicodeDecodeError:
                bad_lines.add(lineno)
                yield raw.decode("utf-8", "replace") + "\n"

    old_limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # long generations exceed the 128 KiB default
    try:
        reader = csv.reader(decoded())
        try:
            header = next(reader)
        except StopIteration:
            raise UserError(f"{display}: empty file (no header, no rows)") from None
        except csv.Error as e:
            raise UserError(f"{display}:1: malformed CSV header ({e})") from None
        if 1 in bad_lines:
            raise UserError(f"{display}:1: undecodable_bytes: invalid UTF-8 in the CSV header")
        header = [h.strip() for h in header]
        previous = reader.line_num
        while True:
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                first = previous + 1
                previous = max(reader.line_num, last_line)
                yield _RawRow(
                    f"{display}:{first}", first, None, _BadRow("malformed_json", f"bad CSV record: {e}")
                )
                continue
            first, previous = previous + 1, reader.line_num
            if not record or (len(record) == 1 and not record[0].strip() and len(header) > 1):
                continue  # a blank line
            loc = f"{display}:{first}"
            if any(n in bad_lines for n in range(first, reader.line_num + 1)):
                yield _RawRow(
                    loc, first, None, _BadRow("undecodable_bytes", "invalid UTF-8 in this CSV record")
                )
            elif len(record) < len(header):
                missing = header[len(record) :]
                yield _RawRow(
                    loc,
                    first,
                    None,
                    _BadRow(
                        "missing_keys",
                        f"{len(record)} fields, header has {len(header)} (missing {', '.join(map(repr, missing))})",
                    ),
                )
            elif len(record) > len(header):
                detail = f"{len(record)} fields, header has {len(header)}"
                yield _RawRow(loc, first, None, _BadRow("wrong_type", detail))
            else:
                yield _RawRow(loc, first, dict(zip(header, record, strict=True)), None)
    finally:
        csv.field_size_limit(old_limit)


def _read_txt(path: Path, display: str) -> Iterator[_RawRow]:
    for lineno, raw in _binary_lines(path, display):
        if not raw.strip():
            continue
        loc = f"{display}:{lineno}"
        try:
            yield _RawRow(loc, lineno, {"prompt": raw.decode("utf-8")}, None)
        except UnicodeDecodeError as e:
            yield _RawRow(loc, lineno, None, _decode_error(raw, e))


def _read_parquet(path: Path, display: str) -> Iterator[_RawRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        row = 0
        for batch in parquet.iter_batches(batch_size=1024):
            for value in batch.to_pylist():
                row += 1
                yield _RawRow(f"{display}:row {row}", None, value, None)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{display}: cannot read as parquet: {_one_line(str(e))[:200]}") from None


def _read_hub(name: str) -> Iterator[_RawRow]:
    try:
        import datasets

        dataset = datasets.load_dataset(name, split="train")
    except Exception as e:  # the hub raises many types (HTTP, FileNotFound, ValueError for bad configs)
        message = _one_line(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        raise UserError(f"{name}: cannot load from the Hugging Face hub: {message[:200]}") from None
    for row, value in enumerate(dataset, 1):
        yield _RawRow(f"{name}:row {row}", None, dict(value), None)


def _read_source(source: _Source) -> Iterator[_RawRow]:
    if source.path is None:
        return _read_hub(source.name)
    kind = _file_kind(source.path)
    readers: dict[str, Callable[[Path, str], Iterator[_RawRow]]] = {
        "jsonl": _read_json_lines,
        "json": _read_json_file,
        "csv": _read_csv,
        "txt": _read_txt,
        "parquet": _read_parquet,
    }
    return readers[kind](source.path, source.display)


# --------------------------------------------------------------------------------------------------------------
# Resolving a spec
# --------------------------------------------------------------------------------------------------------------
def _embedded_files() -> dict[str, Path]:
    """``hh-rlhf:NAME`` → file, for NAME-test.jsonl.gz / NAME.jsonl.gz (and .jsonl) in the embedded dir."""
    found: dict[str, Path] = {}
    for path in sorted((EMBEDDED_DIR / "hh-rlhf").glob("*.jsonl*")):
        stem = path.name.removesuffix(".gz").removesuffix(".jsonl")
        found.setdefault(stem, path)
        if stem.endswith("-test"):
            found.setdefault(stem.removesuffix("-test"), path)
    return found


def embedded_names() -> list[str]:
    """The embedded dataset names a spec may use, e.g. ``["hh-rlhf:helpful-base"]``."""
    return [f"{EMBEDDED_PREFIX}{name}" for name in _embedded_files() if not name.endswith("-test")]


def _online() -> bool:
    """Offline is the default; the hub is tried only with ``RLHF_LAB_ONLINE=1`` and no HF offline switch."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return False
    return os.environ.get("RLHF_LAB_ONLINE", "").strip() == "1"


def _resolve(item: str) -> _Source:
    path = Path(item).expanduser()
    if path.exists():
        if path.is_dir():
            raise UserError(f"{item}: is a directory; expected a data file ({', '.join(FILE_SUFFIXES)})")
        _file_kind(path)
        return _Source(item, item, path)
    names = ", ".join(embedded_names())
    if item.startswith(EMBEDDED_PREFIX):
        embedded = _embedded_files().get(item[len(EMBEDDED_PREFIX) :])
        if embedded is None:
            raise UserError(f"{item}: no such embedded dataset (embedded: {names})")
        return _Source(item, str(embedded), embedded)
    if item.lower().endswith(FILE_SUFFIXES):
        raise UserError(f"{item}: no such file")
    if _online():
        return _Source(item, item, None)
    raise UserError(
        f"{item}: no such file or embedded dataset (embedded: {names}); "
        "hub datasets load only online (RLHF_LAB_ONLINE=1)"
    )


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------
def _check_nonneg(value: Any, flag: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"{flag}: must be a non-negative integer, got {value!r}")


def _validate(
    data_format: str,
    split: str,
    limit: int | None,
    bottom: int | None,
    top: int | None,
    on_bad_row: str,
    split_seed: int,
    eval_fraction: float,
) -> None:
    if data_format not in FORMATS:
        raise UserError(f"--data_format: unknown format {data_format!r} (one of {', '.join(FORMATS)})")
    if split not in SPLITS:
        raise UserError(f"--split: expected one of {', '.join(SPLITS)}, got {split!r}")
    if on_bad_row not in ON_BAD_ROW:
        raise UserError(f"--on_bad_row: expected auto, error or skip, got {on_bad_row!r}")
    _check_nonneg(limit, "--limit")
    _check_nonneg(bottom, "--bottom")
    _check_nonneg(top, "--top")
    if bottom is not None and top is not None and bottom > top:
        raise UserError(f"--bottom: must not exceed --top (got --bottom {bottom} > --top {top})")
    if isinstance(split_seed, bool) or not isinstance(split_seed, int):
        raise UserError(f"--split_seed: must be an integer, got {split_seed!r}")
    if (
        isinstance(eval_fraction, bool)
        or not isinstance(eval_fraction, (int, float))
        or not 0.0 <= eval_fraction <= 1.0
    ):
        raise UserError(f"--eval_fraction: must be a number between 0 and 1, got {eval_fraction!r}")


_WANT_NAMES = {"pairs": "preference pairs", "prompts": "prompts", "sft": "SFT examples"}


def _allowed_formats(want: str) -> tuple[str, ...]:
    if want == "pairs":
        return PAIR_FORMATS
    if want == "sft":
        return (*PAIR_FORMATS, "sft")
    return FORMATS[1:]


def _check_row(parsed: _Parsed, want: str) -> None:
    """Checks that depend on what is loaded: empty replies matter only where the reply is used."""
    if want == "pairs":
        assert parsed.chosen is not None and parsed.rejected is not None
        for key, text in (("chosen", parsed.chosen), ("rejected", parsed.rejected)):
            if not text.strip():
                raise _BadRow("empty_response", f"{key!r} reply is empty")
        if parsed.chosen.strip() == parsed.rejected.strip():
            raise _BadRow(
                "identical_responses", f"chosen and rejected are the same ({_excerpt(parsed.chosen)})"
            )
    elif want == "sft":
        response = parsed.response if parsed.response is not None else parsed.chosen
        key = "response" if parsed.response is not None else "chosen"
        if response is None or not response.strip():
            raise _BadRow("empty_response", f"{key!r} reply is empty")


def _build(parsed: _Parsed, want: str, meta: dict[str, Any]) -> Pair | Prompt | Sample:
    prompt = Prompt(parsed.messages, dict(meta))
    if want == "pairs":
        return Pair(prompt, parsed.chosen or "", parsed.rejected or "", {**meta, **parsed.extra})
    if want == "sft":
        response = parsed.response if parsed.response is not None else parsed.chosen
        return Sample(prompt, response or "", {**meta, **parsed.extra})
    prompt.meta.update(parsed.extra)
    return prompt


def _load_source(
    source: _Source, want: str, data_format: str, on_bad_row: str
) -> tuple[list[tuple[int, Any]], LoadReport]:
    """Read one source: ([(row_index, record)], report). Raises UserError on a bad row in error mode."""
    rows = list(_read_source(source))
    if not rows:
        raise UserError(f"{source.display}: empty file (no rows)")
    allowed = _allowed_formats(want)
    if source.path is not None and _file_kind(source.path) == "txt":
        if data_format not in ("auto", "prompts"):
            raise UserError(
                f"{source.display}: a .txt file holds one plain prompt per line; "
                f"--data_format {data_format} does not apply"
            )
        if "prompts" not in allowed:
            raise UserError(
                f"{source.display}: a .txt file holds plain prompts and has no {_WANT_NAMES[want]}; "
                f"this loader reads {', '.join(allowed)}"
            )
        data_format = "prompts"
    if data_format == "auto":
        fmt = _detect_rows(rows, want)
        if fmt is None:
            signature = "a known " + ("preference " if want == "pairs" else "") + "format"
            if on_bad_row == "skip":
                raise UserError(
                    f"{source.display}: no usable rows: none of its {len(rows)} rows has the keys of {signature} "
                    f"(pass --data_format, one of {', '.join(allowed)})"
                )
            for r in rows:
                if r.bad is not None:
                    raise UserError(f"{r.loc}: {r.bad.reason}: {_one_line(r.bad.detail)}")
                if not isinstance(r.value, dict):
                    raise UserError(
                        f"{r.loc}: wrong_type: row is {_type_name(r.value)}, expected a JSON object"
                    )
                keys = ", ".join(_excerpt(str(k), 30) for k in list(r.value)[:8]) or "none"
                raise UserError(
                    f"{r.loc}: cannot detect the data format from the keys ({keys}); this loader reads "
                    f"{_WANT_NAMES[want]} in {', '.join(allowed)}; pass --data_format"
                )
    else:
        fmt = data_format
        if fmt not in allowed:
            raise UserError(
                f"--data_format {fmt}: has no {_WANT_NAMES[want]}; this loader reads {', '.join(allowed)}"
            )
    parse = _ROW_PARSERS[fmt]
    records: list[tuple[int, Any]] = []
    skipped: dict[str, int] = {}
    for index, raw in enumerate(rows):
        try:
            if raw.bad is not None:
                raise raw.bad
            if not isinstance(raw.value, dict):
                raise _BadRow("wrong_type", f"row is {_type_name(raw.value)}, expected a JSON object")
            parsed = parse(raw.value)
            _check_row(parsed, want)
        except _BadRow as bad:
            if on_bad_row == "error":
                raise UserError(f"{raw.loc}: {bad.reason}: {_one_line(bad.detail)}") from None
            skipped[bad.reason] = skipped.get(bad.reason, 0) + 1
            continue
        meta = {"source": source.display, "line": raw.line, "row_index": index}
        records.append((index, _build(parsed, want, meta)))
    report = LoadReport(source.name, len(rows), len(records), skipped, fmt)
    if not records:
        raise UserError(f"{source.display}: no usable rows: {report.summary()}")
    return records, report


def _split_spec(spec: str) -> list[str]:
    if not isinstance(spec, str):
        raise UserError(f"dataset spec must be a string, got {_type_name(spec)}")
    items = [item.strip() for item in spec.split(",") if item.strip()]
    if not items:
        raise UserError(
            "dataset spec is empty (give a file, an embedded name like hh-rlhf:helpful-base, or a list)"
        )
    return items


def split_indices(n: int, split: str, split_seed: int = 0, eval_fraction: float = 0.1) -> list[int]:
    """The row positions (sorted) that belong to ``split`` among ``n`` rows.

    A ``random.Random(split_seed)`` shuffle of ``range(n)``; its first ``round(eval_fraction * n)`` entries are
    ``eval``, the rest ``train``; ``all`` is every position.
    """
    if split == "all":
        return list(range(n))
    order = list(range(n))
    random.Random(split_seed).shuffle(order)
    n_eval = round(eval_fraction * n)
    chosen = order[:n_eval] if split == "eval" else order[n_eval:]
    return sorted(chosen)


def _bad_row_policy(source: _Source, on_bad_row: str) -> str:
    """``auto``: skip (and report) the known, documented bad rows of the embedded dataset; stop on a user file's."""
    if on_bad_row != "auto":
        return on_bad_row
    embedded = source.path is not None and EMBEDDED_DIR in source.path.resolve().parents
    return "skip" if embedded else "error"


def resolve_split(split: str, sources: list[_Source]) -> str:
    """``auto``: the fixed-seed eval split of the embedded dataset, but every row of a file the user names (a test
    set named for evaluation is evaluated whole); any other split as given."""
    if split != "auto":
        return split
    embedded = all(s.path is not None and EMBEDDED_DIR in s.path.resolve().parents for s in sources)
    return "eval" if embedded else "all"


def _load(
    spec: str,
    want: str,
    data_format: str,
    split: str,
    limit: int | None,
    bottom: int | None,
    top: int | None,
    on_bad_row: str,
    split_seed: int,
    eval_fraction: float,
) -> tuple[list[Any], list[LoadReport]]:
    _validate(data_format, split, limit, bottom, top, on_bad_row, split_seed, eval_fraction)
    sources = [_resolve(item) for item in _split_spec(spec)]
    split = resolve_split(split, sources)
    positioned: list[tuple[int, Any]] = []
    reports: list[LoadReport] = []
    offset = 0
    for source in sources:
        records, report = _load_source(source, want, data_format, _bad_row_policy(source, on_bad_row))
        positioned.extend((offset + index, record) for index, record in records)
        offset += report.rows_read
        reports.append(report)
    # The split is over every row position (bad rows included), so skipping never moves a good row.
    keep = set(split_indices(offset, split, split_seed, eval_fraction))
    selected = [record for position, record in positioned if position in keep]
    selected = selected[(bottom or 0) : top]
    if limit is not None:
        selected = selected[:limit]
    return selected, reports


def load_pairs(
    spec: str,
    *,
    data_format: str = "auto",
    split: str = "all",
    limit: int | None = None,
    bottom: int | None = None,
    top: int | None = None,
    on_bad_row: str = "auto",
    split_seed: int = 0,
    eval_fraction: float = 0.1,
) -> tuple[list[Pair], list[LoadReport]]:
    """Load preference pairs from ``spec`` and report what was read and skipped per source.

    ``spec`` is a file (.jsonl, .jsonl.gz, .json, .csv, .parquet), an embedded dataset
    (``hh-rlhf:helpful-base``), a hub dataset name (only online: ``RLHF_LAB_ONLINE=1``), or a comma-separated
    list of these, concatenated in order. ``data_format`` is detected from the keys of the rows unless given.
    Bad rows raise a one-line ``UserError`` naming file and line (``on_bad_row="error"``) or are skipped and
    counted (``"skip"``). Then the rows of ``split`` (a fixed-seed split of row positions, see
    ``split_indices``) are kept, sliced ``[bottom:top]``, and cut to the first ``limit``.
    """
    return _load(spec, "pairs", data_format, split, limit, bottom, top, on_bad_row, split_seed, eval_fraction)


def load_prompts(
    spec: str,
    *,
    data_format: str = "auto",
    split: str = "all",
    limit: int | None = None,
    bottom: int | None = None,
    top: int | None = None,
    on_bad_row: str = "auto",
    split_seed: int = 0,
    eval_fraction: float = 0.1,
) -> tuple[list[Prompt], list[LoadReport]]:
    """Load prompts: a prompt file (.txt lines, ``prompt``/``text``/``instruction``/``messages`` rows) or the
    prompt of every row of a preference or SFT dataset (one per row, not deduplicated).

    Arguments as in ``load_pairs``; only checks that concern the prompt apply (an empty or identical reply is
    not a bad row here, a diverging transcript is).
    """
    return _load(
        spec, "prompts", data_format, split, limit, bottom, top, on_bad_row, split_seed, eval_fraction
    )


def load_sft_examples(
    spec: str,
    *,
    data_format: str = "auto",
    split: str = "all",
    limit: int | None = None,
    bottom: int | None = None,
    top: int | None = None,
    on_bad_row: str = "auto",
    split_seed: int = 0,
    eval_fraction: float = 0.1,
) -> tuple[list[Sample], list[LoadReport]]:
    """Load SFT examples as ``Sample(prompt, response)``: SFT rows (``prompt``/``completion``, ``messages``,
    ``instruction``/``output``, ``text``) or ``(prompt, chosen)`` of every row of a preference dataset.

    Arguments as in ``load_pairs``; an empty target reply is a bad row, the rejected reply is not checked.
    """
    return _load(spec, "sft", data_format, split, limit, bottom, top, on_bad_row, split_seed, eval_fraction)
