"""Raw data files as rows with their place: ``_RawRow(loc, line, value, bad)`` in file order.

Line-based files (.jsonl, .jsonl.gz, .json, .csv, .txt) are read line by line in binary with a strict UTF-8
decode per line, so every error names the 1-based line. We do not use the JSON builder of HF ``datasets`` for
them: its errors carry no line numbers, and it unifies the schema across rows (a row with a missing key comes
back with ``None`` in it, a number where the rest have strings is cast or refused for the whole file), which hides
exactly the rows we want to report. Parquet files and hub datasets are columnar; their errors name the 1-based
row instead of a line. A bad row is not raised here: it comes back with ``bad`` set, for the loader's policy.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

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
FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".csv", ".csv.gz", ".parquet", ".txt", ".txt.gz")
_BOM = b"\xef\xbb\xbf"


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


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _excerpt(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[:n] + "…")


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


