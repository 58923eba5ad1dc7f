"""Loading: a spec (files, comma-separated; an embedded ``hh-rlhf:NAME``; a hub name when online) → canonical
records and one ``LoadReport`` per source. The name resolution, the bad-row policy and the fixed-seed split live
here; the raw rows come from ``data.rows``, their conversion from ``data.formats``. The contract (see also
``docs/data.md``):

* A bad row either stops the load with a one-line ``UserError("<file>:<line>: <reason>: <detail>")``
  (``on_bad_row="error"``) or is skipped and counted per reason (``on_bad_row="skip"``). The reasons are
  ``BAD_ROW_REASONS``. The default ``"auto"`` is ``error`` for the user's files and ``skip`` for the embedded
  dataset, whose 15 bad rows (9 diverging transcripts, 2 identical pairs, 4 empty replies) are known and
  documented: the shipped default must work out of the box.
* The train/eval split is a fixed-seed shuffle of row *positions* (bad rows included), so skipping a bad row
  never moves a good row between train and eval.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf_lab.data.formats import _ROW_PARSERS, FORMATS, PAIR_FORMATS, _detect_rows, _Parsed, _type_name
from rlhf_lab.data.records import Pair, Prompt, Sample
from rlhf_lab.data.rows import (
    BAD_ROW_REASONS,
    FILE_SUFFIXES,
    _BadRow,
    _excerpt,
    _file_kind,
    _one_line,
    _read_source,
    _Source,
)
from rlhf_lab.errors import UserError

SPLITS = ("auto", "train", "eval", "all")
ON_BAD_ROW = ("auto", "error", "skip")
EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
EMBEDDED_PREFIX = "hh-rlhf:"


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

