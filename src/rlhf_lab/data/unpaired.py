"""Unpaired feedback for KTO: single replies labelled desirable (``True``) or undesirable (``False``).

Two sources, as TRL's KTOTrainer takes them:

* TRL's unpaired format: rows ``{"prompt": ..., "completion": ..., "label": true|false}`` (prompt and completion as
  text or as conversations, like an SFT row). ``label`` must be a JSON boolean; anything else is a one-line error
  naming the file and line, whatever ``on_bad_row`` says (a wrong label would silently flip the objective).
* Any preference format of ``rlhf_lab.data.formats``, unpaired as TRL's ``unpair_preference_dataset`` does: every
  pair gives one desirable row (prompt, chosen) and one undesirable row (prompt, rejected). The desirable rows
  come first, then the undesirable ones in the same order, as TRL's batched map lays them out.

Each row is a ``Sample(prompt, response, meta)`` with ``meta["label"]`` the boolean.
"""

from __future__ import annotations

from typing import Any

from rlhf_lab.data.loading import LoadReport, _resolve, _split_spec, load_pairs, load_sft_examples
from rlhf_lab.data.records import Sample
from rlhf_lab.data.rows import _read_source
from rlhf_lab.errors import UserError

UNPAIRED_KEYS = ("prompt", "completion", "label")
_MISSING = object()


def _first_object(source) -> dict[str, Any] | None:
    for raw in _read_source(source):
        if isinstance(raw.value, dict):
            return raw.value
    return None


def is_unpaired(spec: str) -> bool:
    """True when every source of ``spec`` is in TRL's unpaired format (its first object row has a ``label``)."""
    sources = [_resolve(item) for item in _split_spec(spec)]
    kinds = {(first := _first_object(s)) is not None and "label" in first for s in sources}
    if len(kinds) > 1:
        raise UserError(f"{spec}: mixes unpaired (prompt, completion, label) and preference sources; use one kind")
    return kinds == {True}


def _labels(spec: str) -> dict[tuple[str, int], tuple[str, Any]]:
    """(source display, row index) → (the row's "file:line" location, its raw ``label`` value)."""
    out: dict[tuple[str, int], tuple[str, Any]] = {}
    for source in (_resolve(item) for item in _split_spec(spec)):
        for index, raw in enumerate(_read_source(source)):
            if isinstance(raw.value, dict):
                out[(source.display, index)] = (raw.loc, raw.value.get("label", _MISSING))
    return out


def load_unpaired(spec: str, *, data_format: str = "auto", split: str = "all", limit: int | None = None,
                  bottom: int | None = None, top: int | None = None, on_bad_row: str = "auto", split_seed: int = 0,
                  eval_fraction: float = 0.1) -> tuple[list[Sample], list[LoadReport], bool]:
    """Labelled single replies from ``spec``: ``(rows, reports, paired)``; ``paired`` says the source was
    preference pairs (unpaired here), so held-out pairs can come from its eval split.

    ``limit`` counts source rows (pairs for a preference source, so a pair's two rows stay together). Raises a
    one-line ``UserError`` for a non-boolean or missing label (naming file:line) and when either label is absent
    from the result (KTO needs desirable and undesirable examples).
    """
    common = dict(split=split, limit=limit, bottom=bottom, top=top, on_bad_row=on_bad_row, split_seed=split_seed,
                  eval_fraction=eval_fraction)
    if data_format in ("auto", "sft") and is_unpaired(spec):
        samples, reports = load_sft_examples(spec, data_format="sft", **common)
        labels = _labels(spec)
        for sample in samples:
            loc, label = labels[(sample.meta["source"], sample.meta["row_index"])]
            if label is _MISSING:
                raise UserError(f"{loc}: missing_keys: unpaired rows need {', '.join(map(repr, UNPAIRED_KEYS))}")
            if not isinstance(label, bool):
                raise UserError(f"{loc}: wrong_type: 'label' must be true or false (a JSON boolean), got {label!r}")
            sample.meta["label"] = label
        rows, paired = samples, False
    else:
        pairs, reports = load_pairs(spec, data_format=data_format, **common)
        rows = [Sample(p.prompt, p.chosen, {**p.meta, "label": True}) for p in pairs]
        rows += [Sample(p.prompt, p.rejected, {**p.meta, "label": False}) for p in pairs]
        paired = True
    check_both_labels([r.meta["label"] for r in rows], spec)
    return rows, reports, paired


def check_both_labels(labels: list[bool], what: str) -> None:
    """KTO's reference point and loss need desirable and undesirable rows: a one-line error otherwise."""
    desirable = sum(1 for label in labels if label)
    if desirable == 0 or desirable == len(labels):
        kind = "desirable" if desirable else "undesirable"
        raise UserError(f"{what}: all {len(labels)} rows are {kind}; KTO needs both desirable (label true) and "
                        "undesirable (label false) rows")
