"""Transforms over lists of preference pairs: the length-bias paper's data interventions.

Every function here is pure: it returns a new list (sharing the unchanged ``Pair`` objects), never mutates its
inputs, and is deterministic given ``seed`` (each call builds its own ``random.Random(seed)``).

The order ``train-rm`` applies them in (``recipes/reward_model.py: prepare_pairs``), as in Singhal et al. 2023's
``train_rm.py``::

    pairs = [p for p in pairs if p.meta["uid"] in read_index_file(carto_file)]   # --carto_file (cartography cut)
    pairs += rda_pairs(shuffle_pairs(pairs, seed), rand_ratio, seed)            # --rand_ratio (R-DA, appended)
    pairs = balance_length(pairs, token_lengths(chosen), token_lengths(rejected), seed)   # --balance_len, last

See ``docs/length_bias.md`` for what each intervention is for and where we differ from Singhal et al. 2023's code.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rlhf_lab.data.records import Pair
from rlhf_lab.errors import UserError

Bin = tuple[int, int]  # a right-closed interval (left, right]


# --------------------------------------------------------------------------------------------------------------
# Lengths
# --------------------------------------------------------------------------------------------------------------
def token_lengths(texts: Sequence[str], tokenizer: Any, batch_size: int = 1024) -> list[int]:
    """Number of tokens of each text (batch tokenization, no special tokens added)."""
    lengths: list[int] = []
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
        lengths.extend(len(x) for x in ids)
    return lengths


# --------------------------------------------------------------------------------------------------------------
# Length balancing (--balance_len)
# --------------------------------------------------------------------------------------------------------------
def _check_bins(bin_width: int, max_abs_diff: int) -> None:
    if bin_width <= 0:
        raise ValueError(f"bin_width must be positive, got {bin_width}")
    if max_abs_diff <= 0 or max_abs_diff % bin_width:
        raise ValueError(f"max_abs_diff must be a positive multiple of bin_width, got {max_abs_diff}")


def _check_same_length(**seqs: Sequence[Any]) -> int:
    sizes = {name: len(s) for name, s in seqs.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"length mismatch: {sizes}")
    return next(iter(sizes.values()), 0)


def length_bin(diff: float, bin_width: int = 10, max_abs_diff: int = 200) -> Bin | None:
    """The right-closed bin ``(k·w − w, k·w]`` holding ``diff``, or None outside ``(−max_abs_diff, max_abs_diff]``.

    Same as ``pandas.cut(diff, bins=range(-max_abs_diff, max_abs_diff + 1, bin_width))``: k = ⌈diff / w⌉, so
    ``diff = 0`` falls in (−w, 0] and ``diff = −max_abs_diff`` falls outside every bin.
    """
    _check_bins(bin_width, max_abs_diff)
    if not -max_abs_diff < diff <= max_abs_diff:
        return None
    k = int(-(-diff // bin_width))  # ceil division, exact for ints
    return ((k - 1) * bin_width, k * bin_width)


def mirror_bin(b: Bin) -> Bin:
    """(a, b] ↦ (−b, −a]: the bin of the same length difference with chosen and rejected swapped."""
    return (-b[1], -b[0])


def all_bins(bin_width: int = 10, max_abs_diff: int = 200) -> list[Bin]:
    """Every bin from (−max_abs_diff, −max_abs_diff + w] to (max_abs_diff − w, max_abs_diff], in order."""
    _check_bins(bin_width, max_abs_diff)
    return [(left, left + bin_width) for left in range(-max_abs_diff, max_abs_diff, bin_width)]


def length_differences(lengths_chosen: Sequence[float], lengths_rejected: Sequence[float]) -> list[float]:
    """diff_i = len(chosen_i) − len(rejected_i)."""
    _check_same_length(lengths_chosen=lengths_chosen, lengths_rejected=lengths_rejected)
    return [c - r for c, r in zip(lengths_chosen, lengths_rejected, strict=True)]


def _members_by_bin(diffs: Sequence[float], bin_width: int, max_abs_diff: int) -> dict[Bin, list[int]]:
    members: dict[Bin, list[int]] = {b: [] for b in all_bins(bin_width, max_abs_diff)}
    for i, d in enumerate(diffs):
        b = length_bin(d, bin_width, max_abs_diff)
        if b is not None:
            members[b].append(i)
    return members


def length_difference_histogram(
    lengths_chosen: Sequence[float],
    lengths_rejected: Sequence[float],
    bin_width: int = 10,
    max_abs_diff: int = 200,
) -> dict[Bin, int]:
    """Count of pairs per length-difference bin (every bin, zeros included, in increasing order).

    Pairs with |diff| > max_abs_diff (or diff = −max_abs_diff) are in no bin and not counted.
    """
    diffs = length_differences(lengths_chosen, lengths_rejected)
    return {b: len(idx) for b, idx in _members_by_bin(diffs, bin_width, max_abs_diff).items()}


def balance_length_indices(
    lengths_chosen: Sequence[float],
    lengths_rejected: Sequence[float],
    seed: int = 0,
    bin_width: int = 10,
    max_abs_diff: int = 200,
) -> list[int]:
    """Indices (increasing) of the pairs ``balance_length`` keeps; see there for the algorithm."""
    diffs = length_differences(lengths_chosen, lengths_rejected)
    members = _members_by_bin(diffs, bin_width, max_abs_diff)
    rng = random.Random(seed)
    kept: list[int] = []
    for neg in members:
        if neg[0] >= 0:
            break  # bins come in increasing order: the negative ones (a < 0) first
        pos = mirror_bin(neg)
        n = min(len(members[neg]), len(members[pos]))
        kept.extend(rng.sample(members[neg], n))
        kept.extend(rng.sample(members[pos], n))
    return sorted(kept)


def balance_length(
    pairs: Sequence[Pair],
    lengths_chosen: Sequence[float],
    lengths_rejected: Sequence[float],
    seed: int = 0,
    bin_width: int = 10,
    max_abs_diff: int = 200,
) -> list[Pair]:
    """Length balancing (Singhal et al. 2023's ``--balance_len=1``): make the length difference symmetric.

    diff_i = len(chosen_i) − len(rejected_i) (tokens). Bin the diffs into right-closed bins of width w over
    (−max_abs_diff, max_abs_diff] (``pandas.cut`` with ``bins=range(-200, 201, 10)``); pairs outside are dropped.
    Each negative bin (a, b], a < 0, is paired with its mirror (−b, −a]; from both, keep
    m = min(count_neg, count_pos) pairs drawn without replacement by ``random.Random(seed)``. Bin (−10, 0]
    (which holds the equal-length pairs) is paired with (0, 10]. Afterwards the histogram of diffs is symmetric
    bin by bin, so "the longer reply is the chosen one" is no longer a useful feature (P ≈ 0.5).

    Returns the kept pairs in their original order.
    """
    _check_same_length(pairs=pairs, lengths_chosen=lengths_chosen)
    keep = balance_length_indices(lengths_chosen, lengths_rejected, seed, bin_width, max_abs_diff)
    return [pairs[i] for i in keep]


# --------------------------------------------------------------------------------------------------------------
# R-DA: random pair augmentation (--rand_ratio)
# --------------------------------------------------------------------------------------------------------------
def _draw_other(rng: random.Random, n: int, i: int, allow_self: bool) -> int:
    """A uniform index in range(n); without ``allow_self`` uniform over range(n) minus {i}."""
    if allow_self:
        return rng.randrange(n)
    j = rng.randrange(n - 1)
    return j + 1 if j >= i else j


def _augmented_pair(pair: Pair, other: Pair) -> Pair:
    meta = {
        "augmented": "rda",
        "source_row": pair.meta.get("row_index"),
        "rejected_source_row": other.meta.get("row_index"),
    }
    if "source" in pair.meta:
        meta["source"] = pair.meta["source"]
    return Pair(pair.prompt, pair.chosen, other.chosen, meta)


def rda_pairs(pairs: Sequence[Pair], rand_ratio: float, seed: int = 0, allow_self: bool = False) -> list[Pair]:
    """Only the new R-DA pairs, in source order (``random_pair_augmentation`` appends and shuffles them).

    With n = ⌊rand_ratio · |D|⌋ and S = the first n pairs: for i = 0 … n−1, the pair
    (prompt_i, chosen_i ≻ chosen_j), j drawn uniformly from S minus {i} (from S with ``allow_self``) by
    ``random.Random(seed)``. Use it when the caller must label the new pairs (e.g. give them uids) before
    mixing them in.
    """
    if not 0 <= rand_ratio <= 1:
        raise ValueError(f"rand_ratio must be in [0, 1], got {rand_ratio}")
    n = int(rand_ratio * len(pairs))
    if n == 0 or (n == 1 and not allow_self):
        return []
    rng = random.Random(seed)
    return [_augmented_pair(pairs[i], pairs[_draw_other(rng, n, i, allow_self)]) for i in range(n)]


def random_pair_augmentation(
    pairs: Sequence[Pair], rand_ratio: float, seed: int = 0, allow_self: bool = False
) -> list[Pair]:
    """R-DA (Singhal et al. 2023's ``--rand_ratio``): teach the RM that an on-topic reply beats an off-topic one.

    With n = ⌊rand_ratio · |D|⌋ and S = the first n pairs of the (already shuffled) data: for each i in S, a new
    pair (prompt_i, chosen_i ≻ chosen_j) where j is drawn uniformly from S (``rda_pairs``). The n new pairs are
    appended to D and the result is shuffled with ``shuffle_pairs(…, seed)``. Augmented pairs share the prompt
    object of their source and carry ``meta = {"augmented": "rda", "source_row": row_index of i,
    "rejected_source_row": row_index of j, "source": ...}``; they have no ``row_index`` (they are no row of any
    file).

    Differences from Singhal et al. 2023's code: it draws j with an unseeded ``random.randint`` (not reproducible) and may
    draw j = i, which makes a pair with chosen == rejected (no signal, loss fixed at log 2). Here the draw is
    seeded and, by default (``allow_self=False``), j is uniform over S without i; ``allow_self=True`` gives the
    distribution of their code. With n < 2 and ``allow_self=False`` there is no other pair and nothing is added.
    ``rand_ratio`` must be in [0, 1]; when n = 0 the pairs come back unchanged (not reshuffled).
    """
    new = rda_pairs(pairs, rand_ratio, seed, allow_self)
    return shuffle_pairs([*pairs, *new], seed) if new else list(pairs)


# --------------------------------------------------------------------------------------------------------------
# Selection, shuffling, index files
# --------------------------------------------------------------------------------------------------------------
def shuffle_pairs(pairs: Sequence[Pair], seed: int) -> list[Pair]:
    """A new list with the pairs in the order of a ``random.Random(seed)`` shuffle."""
    result = list(pairs)
    random.Random(seed).shuffle(result)
    return result


def select_indices(pairs: Sequence[Pair], indices: Iterable[int], key: str = "row_index") -> list[Pair]:
    """The pairs whose ``meta[key]`` is in ``indices``, in their current order (``--carto_file``).

    ``row_index`` is the pair's row in its data file (``rlhf_lab.data.load_pairs`` sets it); use the key the
    training loop logged as ``uid`` to ``carto.jsonl``. Pairs without the key (R-DA pairs have no
    ``row_index``) are never selected, which is why the selection comes before augmentation.
    """
    wanted = set(indices)
    return [p for p in pairs if p.meta.get(key) in wanted]


def _as_index(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"{where}: expected a non-negative integer row index, got {json.dumps(value)[:40]}")
    return value


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _read_json_list(text: str, display: str) -> list[int]:
    try:
        values = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{display}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(values, list):
        raise UserError(f"{display}:1: expected a JSON list of integers")
    # One line for the whole list unless it spans several; name the first line of the list then.
    line = _line_of(text, len(text) - len(text.lstrip()))
    return [_as_index(v, f"{display}:{line}") for v in values]


def _read_lines(text: str, display: str) -> list[int]:
    indices = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{display}:{number}: expected one integer per line, got {line.strip()[:40]!r}") from None
        indices.append(_as_index(value, f"{display}:{number}"))
    return indices


def read_index_file(path: str | Path) -> list[int]:
    """Row indices from a keep file: one integer per line, or one JSON list of integers.

    One integer per line is what ``rlhf_lab.eval.carto.write_index_file`` writes and what Singhal et al. 2023's
    ``pandas.Series.to_json(lines=True, orient="records")`` wrote. Blank lines are ignored. Anything else is a
    ``UserError`` naming ``file:line``.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such index file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    if text.lstrip().startswith("["):
        return _read_json_list(text, str(path))
    return _read_lines(text, str(path))
