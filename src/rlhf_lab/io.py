"""Small file helpers: atomic writes and JSON lines."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from rlhf_lab.errors import UserError


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temp file beside ``path``; on success it replaces ``path`` in one rename, on error it vanishes.

    Readers therefore see the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # a failed write (disk full): name the file
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see ``atomic_file``)."""
    with atomic_file(path) as f:
        f.write(text)


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write rows as JSON lines, atomically."""
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def append_jsonl(path: str | Path, row: dict[str, Any]) -> None:
    """Append one JSON line and flush it (metrics logs survive a kill up to the last full line).

    A torn last line (a kill mid-append: no newline after it) is cut off first, so a resumed run's rows never
    run on from a fragment.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _drop_torn_tail(path)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
    except OSError as e:
        if e.filename is None:  # a failed write (disk full): name the file
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def _drop_torn_tail(path: Path) -> None:
    """Cut a file back to its last newline when it does not end with one (the fragment a kill left)."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read JSON lines written by this package. A torn last line (no newline after it, not valid JSON: a kill
    mid-append) is ignored; any other bad line is a ``UserError`` naming ``file:line``, as are a missing file
    and bytes that are not UTF-8 before the last line."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such file")
    lines = p.read_bytes().split(b"\n")  # the last element is b"" when the file ends with a newline
    rows = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            rows.append(json.loads(raw.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            if number == len(lines):  # no newline after it: the torn write of a killed run
                break
            reason = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
            raise UserError(f"{path}:{number}: not valid JSON ({reason})") from None
    return rows


def publish_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written ``tmp_dir`` to ``final_dir`` in one rename, replacing an older ``final_dir``."""
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old-{os.getpid()}")
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)


def fsync_dir(path: Path) -> None:
    """Flush every file in ``path`` to disk before it is published by a rename."""
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
