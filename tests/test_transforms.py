"""Data transforms: length balancing, R-DA, index selection and files, shuffling."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest

from rlhf_lab.data import Pair, Prompt, load_pairs
from rlhf_lab.data.transforms import (
    all_bins,
    balance_length,
    balance_length_indices,
    length_bin,
    length_difference_histogram,
    random_pair_augmentation,
    rda_pairs,
    read_index_file,
    select_indices,
    shuffle_pairs,
    token_lengths,
)
from rlhf_lab.errors import UserError
from rlhf_lab.eval.length import longer_preferred_rate


def make_pairs(n: int) -> list[Pair]:
    return [
        Pair(Prompt.from_text(f"q{i}"), f"good {i}", f"bad {i}", {"source": "t", "line": i + 1, "row_index": i})
        for i in range(n)
    ]


def is_symmetric(hist: dict[tuple[int, int], int]) -> bool:
    return all(count == hist[(-b, -a)] for (a, b), count in hist.items())


# --------------------------------------------------------------------------------------------------------------
# Binning and balancing
# --------------------------------------------------------------------------------------------------------------
def test_length_bin_matches_pandas_cut():
    diffs = list(range(-260, 261))
    cut = pd.cut(pd.Series(diffs), bins=range(-200, 201, 10))
    for d, interval in zip(diffs, cut, strict=True):
        expected = None if pd.isna(interval) else (int(interval.left), int(interval.right))
        assert length_bin(d) == expected, d
    assert length_bin(0) == (-10, 0) and length_bin(-200) is None and length_bin(200) == (190, 200)
    assert len(all_bins()) == 40


def test_balance_length_hand_example():
    # diff:       0  5  5  15 -3 -12 -15 250 -200 200 10 -10
    # bin (k):    0  1  1   2  0  -1  -1   -    -  20  1  -1     (k: the bin (10k - 10, 10k], right-closed)
    # (-10,0]:   {0, 4}      vs (0,10]:  {1, 2, 10} -> keep 0, 4 and two of 1, 2, 10
    # (-20,-10]: {5, 6, 11}  vs (10,20]: {3}        -> keep 3 and one of 5, 6, 11 (-10 is in (-20,-10])
    # (190,200]: {9} vs (-200,-190]: {} -> dropped; 250 and -200 are outside every bin. Kept: 6 pairs.
    diffs = [0, 5, 5, 15, -3, -12, -15, 250, -200, 200, 10, -10]
    rejected = [300] * len(diffs)
    chosen = [300 + d for d in diffs]
    pairs = make_pairs(len(diffs))
    snapshot = copy.deepcopy(pairs)
    seen_pos, seen_neg = set(), set()
    for seed in range(30):
        kept = balance_length(pairs, chosen, rejected, seed=seed)
        rows = [p.meta["row_index"] for p in kept]
        assert rows == sorted(rows), "original order"
        assert len(rows) == 6
        assert {0, 3, 4} <= set(rows)
        pos, neg = set(rows) & {1, 2, 10}, set(rows) & {5, 6, 11}
        assert len(pos) == 2 and len(neg) == 1
        seen_pos |= pos
        seen_neg |= neg
        assert kept == balance_length(pairs, chosen, rejected, seed=seed), "deterministic"
        assert is_symmetric(length_difference_histogram([chosen[i] for i in rows], [rejected[i] for i in rows]))
    assert seen_pos == {1, 2, 10} and seen_neg == {5, 6, 11}, "the seed changes which pairs are drawn"
    assert pairs == snapshot, "inputs untouched"


def test_histogram_counts_and_custom_bins():
    hist = length_difference_histogram([5, 0, 30], [0, 3, 0], bin_width=5, max_abs_diff=20)
    assert hist[(0, 5)] == 1 and hist[(-5, 0)] == 1 and sum(hist.values()) == 2  # 30 is out of range
    with pytest.raises(ValueError):
        balance_length_indices([1], [2], bin_width=7, max_abs_diff=20)
    with pytest.raises(ValueError):
        balance_length_indices([1, 2], [2], bin_width=10)


@pytest.fixture(scope="module")
def hh_pairs_and_lengths(tiny_tokenizer):
    pairs, _ = load_pairs("hh-rlhf:helpful-base", split="all")
    chosen = token_lengths([p.chosen for p in pairs], tiny_tokenizer)
    rejected = token_lengths([p.rejected for p in pairs], tiny_tokenizer)
    return pairs, chosen, rejected


def test_token_lengths_no_special_tokens(tiny_tokenizer):
    texts = ["hello", "", "Hello world, how are you?"]
    assert token_lengths(texts, tiny_tokenizer, batch_size=2) == [
        len(tiny_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts
    ]
    assert token_lengths([], tiny_tokenizer) == []


def test_balance_length_on_hh_rlhf_is_symmetric(hh_pairs_and_lengths):
    pairs, chosen, rejected = hh_pairs_and_lengths
    before = longer_preferred_rate(chosen, rejected)
    kept_idx = balance_length_indices(chosen, rejected, seed=0)
    kept = balance_length(pairs, chosen, rejected, seed=0)
    assert [p.meta["row_index"] for p in kept] == [pairs[i].meta["row_index"] for i in kept_idx]
    kc, kr = [chosen[i] for i in kept_idx], [rejected[i] for i in kept_idx]
    hist = length_difference_histogram(kc, kr)
    assert is_symmetric(hist)
    assert sum(hist.values()) == len(kept)
    after = longer_preferred_rate(kc, kr)
    # helpful-base prefers the longer reply more often than not; after balancing it is a coin flip.
    assert before > 0.55
    assert abs(after - 0.5) < 0.03
    assert 0.3 * len(pairs) < len(kept) < len(pairs)


# --------------------------------------------------------------------------------------------------------------
# R-DA
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [0.25, 0.5, 1.0])
def test_random_pair_augmentation(ratio):
    pairs = make_pairs(40)
    snapshot = copy.deepcopy(pairs)
    out = random_pair_augmentation(pairs, ratio, seed=3)
    n = int(ratio * len(pairs))
    assert len(out) == len(pairs) + n
    augmented = [p for p in out if p.meta.get("augmented") == "rda"]
    originals = [p for p in out if "augmented" not in p.meta]
    assert sorted(p.meta["row_index"] for p in originals) == list(range(40))
    assert len(augmented) == n
    subset_chosen = {pairs[i].chosen: i for i in range(n)}
    for p in augmented:
        src = p.meta["source_row"]
        assert src < n and p.prompt is pairs[src].prompt and p.chosen == pairs[src].chosen
        assert p.rejected in subset_chosen, "rejected is the chosen reply of a pair from the first n"
        assert subset_chosen[p.rejected] == p.meta["rejected_source_row"] != src, "never itself"
        assert "row_index" not in p.meta
    assert sorted(p.meta["source_row"] for p in augmented) == list(range(n)), "one new pair per subset pair"
    assert out == random_pair_augmentation(pairs, ratio, seed=3), "deterministic"
    assert out != random_pair_augmentation(pairs, ratio, seed=4)
    assert pairs == snapshot


def test_rda_pairs_then_shuffle_is_random_pair_augmentation():
    pairs = make_pairs(12)
    new = rda_pairs(pairs, 0.5, seed=7)
    assert [p.meta["source_row"] for p in new] == list(range(6))
    assert random_pair_augmentation(pairs, 0.5, seed=7) == shuffle_pairs([*pairs, *new], 7)


def test_random_pair_augmentation_edges():
    pairs = make_pairs(10)
    assert random_pair_augmentation(pairs, 0.0) == pairs
    assert random_pair_augmentation(pairs, 0.05) == pairs  # floor(0.5) = 0
    assert len(random_pair_augmentation(pairs, 0.1)) == 10  # one pair and no other to pair it with
    assert len(random_pair_augmentation(pairs, 0.1, allow_self=True)) == 11
    with pytest.raises(ValueError):
        random_pair_augmentation(pairs, 1.5)
    # allow_self reproduces the seed's distribution: with a subset of 2, picking itself happens.
    selfs = sum(
        p.chosen == p.rejected
        for seed in range(30)
        for p in random_pair_augmentation(make_pairs(4), 0.5, seed=seed, allow_self=True)
    )
    assert selfs > 0


# --------------------------------------------------------------------------------------------------------------
# Selection, index files, shuffling
# --------------------------------------------------------------------------------------------------------------
def test_select_indices_keeps_order():
    pairs = shuffle_pairs(make_pairs(10), seed=1)
    out = select_indices(pairs, [7, 2, 99, 2])
    assert [p.meta["row_index"] for p in out] == [p.meta["row_index"] for p in pairs if p.meta["row_index"] in (2, 7)]
    tagged = [Pair(p.prompt, p.chosen, p.rejected, {**p.meta, "uid": 100 + i}) for i, p in enumerate(pairs)]
    assert select_indices(tagged, [100, 105], key="uid") == [tagged[0], tagged[5]]
    augmented = random_pair_augmentation(pairs, 0.5, seed=0)
    assert select_indices(augmented, range(10)) == [p for p in augmented if "augmented" not in p.meta]  # no row


def test_shuffle_pairs():
    pairs = make_pairs(20)
    a = shuffle_pairs(pairs, 0)
    assert a == shuffle_pairs(pairs, 0) and a != pairs and sorted(a, key=lambda p: p.meta["row_index"]) == pairs
    assert pairs == make_pairs(20)


def test_read_index_file_formats(tmp_path: Path):
    from rlhf_lab.eval.carto import write_index_file

    lines = tmp_path / "keep.txt"
    write_index_file(lines, [3, 0, 17])
    assert lines.read_text() == "3\n0\n17\n"
    assert read_index_file(lines) == [3, 0, 17]
    # The seed's file: pandas Series.to_json(lines=True, orient="records").
    seed_file = tmp_path / "seed.json"
    pd.Series([5, 1, 8]).to_json(seed_file, lines=True, orient="records")
    assert read_index_file(seed_file) == [5, 1, 8]
    as_list = tmp_path / "keep.json"
    as_list.write_text(json.dumps([4, 2], indent=2))
    assert read_index_file(as_list) == [4, 2]
    blank = tmp_path / "blank.txt"
    blank.write_text("1\n\n2\n")
    assert read_index_file(blank) == [1, 2]


@pytest.mark.parametrize(
    ("text", "where"),
    [("1\n2\nthree\n", ":3:"), ("1\n2.5\n", ":2:"), ("-1\n", ":1:"), ("true\n", ":1:"), ("[1, 2,\n", ":2:"),
     ('["a"]', ":1:"), ('{"a": 1}\n', ":1:")],
)
def test_read_index_file_errors(tmp_path: Path, text: str, where: str):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        read_index_file(path)
    assert f"{path}{where}" in str(e.value)
    assert "\n" not in str(e.value)


def test_read_index_file_missing(tmp_path: Path):
    with pytest.raises(UserError, match="no such index file"):
        read_index_file(tmp_path / "nope.txt")
