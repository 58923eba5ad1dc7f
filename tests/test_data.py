"""Readers: every format and file type, bad-row policy, split, selection, specs, the real hh-rlhf splits."""

from __future__ import annotations

import csv
import gzip
import json
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhf_lab.data import (
    BAD_ROW_REASONS,
    FORMATS,
    LoadReport,
    Pair,
    Prompt,
    Sample,
    embedded_names,
    load_pairs,
    load_prompts,
    load_sft_examples,
    split_indices,
)
from rlhf_lab.errors import UserError

DATA = Path(__file__).parent / "data"
SHARED = Path("/work/shared/data/hh-rlhf")
EMBEDDED = Path(__file__).parents[1] / "src/rlhf_lab/data/embedded/hh-rlhf/helpful-base-test.jsonl.gz"


def hh(*turns: str) -> str:
    """An hh-rlhf transcript from alternating Human/Assistant turns."""
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


def hh_row(i: int) -> dict:
    return {"chosen": hh(f"question {i}?", f"good answer {i}"), "rejected": hh(f"question {i}?", f"bad {i}")}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.delenv("RLHF_LAB_ONLINE", raising=False)


# ----------------------------------------------------------------------------------------------------------------
# Formats
# ----------------------------------------------------------------------------------------------------------------
def test_hh_rlhf_multi_turn_and_whitespace(tmp_path):
    row = {
        "chosen": hh("Hi", "Hello!", "Name a colour.", " Blue,\n\n  and green.  "),
        "rejected": hh("Hi", "Hello!", "Name a colour.", "Seven."),
    }
    pairs, reports = load_pairs(str(write_jsonl(tmp_path / "d.jsonl", [row])))
    (pair,) = pairs
    assert pair.prompt.messages == [user("Hi"), assistant("Hello!"), user("Name a colour.")]
    assert pair.chosen == " Blue,\n\n  and green.  "  # one leading space stripped, inner whitespace kept
    assert pair.rejected == "Seven."
    assert pair.meta == {"source": str(tmp_path / "d.jsonl"), "line": 1, "row_index": 0}
    assert pair.prompt.meta == pair.meta
    assert reports[0].data_format == "hh-rlhf"


def test_hh_rlhf_preamble_and_missing_leading_blank_line(tmp_path):
    rows = [
        {"chosen": "Human: hi\n\nAssistant: a", "rejected": "Human: hi\n\nAssistant: b"},
        {"chosen": "Be brief." + hh("hi", "a"), "rejected": "Be brief." + hh("hi", "b")},
    ]
    pairs, _ = load_pairs(str(write_jsonl(tmp_path / "d.jsonl", rows)))
    assert pairs[0].prompt.messages == [user("hi")]
    assert pairs[1].prompt.messages == [{"role": "system", "content": "Be brief."}, user("hi")]


@pytest.mark.parametrize(
    ("chosen", "detail"),
    [
        ("no turns at all", "not a Human/Assistant transcript"),
        (hh("hi", "a", "and then?"), "does not end with an assistant reply"),
        ("\n\nAssistant: hello", "no prompt"),
    ],
)
def test_hh_rlhf_unparseable_transcripts_are_wrong_type(tmp_path, chosen, detail):
    rejected = "\n\nAssistant: bye" if detail == "no prompt" else hh("hi", "b")
    path = write_jsonl(tmp_path / "d.jsonl", [{"chosen": chosen, "rejected": rejected}])
    with pytest.raises(UserError, match=rf"d\.jsonl:1: wrong_type: .*{detail}"):
        load_pairs(str(path))


def test_trl_string_conversational_and_implicit(tmp_path):
    rows = [
        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Rome."},
        {
            "prompt": [{"role": "system", "content": "Be terse."}, user("2+2?")],
            "chosen": [assistant("4")],
            "rejected": [assistant("5")],
        },
        {
            "chosen": [user("hi"), assistant("hello"), user("bye"), assistant("ciao")],
            "rejected": [user("hi"), assistant("hello"), user("bye"), assistant("whatever")],
        },
        {"chosen": hh("q", "good"), "rejected": hh("q", "bad")},  # implicit-prompt text form = hh-rlhf
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    pairs, _ = load_pairs(str(path), data_format="trl")
    assert [p.prompt.messages for p in pairs] == [
        [user("Capital of France?")],
        [{"role": "system", "content": "Be terse."}, user("2+2?")],
        [user("hi"), assistant("hello"), user("bye")],
        [user("q")],
    ]
    assert [(p.chosen, p.rejected) for p in pairs] == [
        ("Paris.", "Rome."),
        ("4", "5"),
        ("ciao", "whatever"),
        ("good", "bad"),
    ]
    assert load_pairs(str(path))[1][0].data_format == "trl"  # detected from the first row's "prompt" key


def test_trl_bad_messages(tmp_path):
    def one(row):
        path = write_jsonl(tmp_path / "d.jsonl", [row])
        with pytest.raises(UserError) as e:
            load_pairs(str(path), data_format="trl")
        return str(e.value)

    assert "wrong_type: chosen[0].role is 'robot'" in one(
        {"prompt": "q", "chosen": [{"role": "robot", "content": "x"}], "rejected": "y"}
    )
    assert "missing_keys: chosen[0] has no 'content'" in one(
        {"prompt": "q", "chosen": [{"role": "assistant"}], "rejected": "y"}
    )
    assert "diverging_transcript" in one(
        {"chosen": [user("a"), assistant("x")], "rejected": [user("b"), assistant("y")]}
    )
    assert "wrong_type: 'prompt' is a number" in one({"prompt": 3, "chosen": "x", "rejected": "y"})


def test_webgpt_preference_and_ties(tmp_path):
    rows = [
        {
            "question": {"full_text": "Why is the sky blue?"},
            "answer_0": "Rayleigh.",
            "answer_1": "Paint.",
            "score_0": 1.0,
            "score_1": -1.0,
        },
        {"question": "Why?", "answer_0": "A0", "answer_1": "A1", "score_0": -0.5, "score_1": 0.5},
        {"question": "Tie?", "answer_0": "T0", "answer_1": "T1", "score_0": 0.0, "score_1": 0.0},
    ]
    pairs, reports = load_pairs(str(write_jsonl(tmp_path / "w.jsonl", rows)))
    assert reports[0].data_format == "webgpt"
    assert pairs[0].prompt.text == "Why is the sky blue?"
    assert [(p.chosen, p.rejected) for p in pairs] == [("Rayleigh.", "Paint."), ("A1", "A0"), ("T1", "T0")]
    assert [p.meta["tie"] for p in pairs] == [False, False, True]


def test_stack_exchange_paired(tmp_path):
    rows = [{"qid": 1, "question": "How to sort?", "response_j": "Use sorted().", "response_k": "Don't."}]
    pairs, reports = load_pairs(str(write_jsonl(tmp_path / "s.jsonl", rows)))
    assert reports[0].data_format == "stack-exchange-paired"
    assert (pairs[0].prompt.text, pairs[0].chosen, pairs[0].rejected) == (
        "How to sort?",
        "Use sorted().",
        "Don't.",
    )


def test_rlcd_csv_handmade():
    path = DATA / "rlcd_small.csv"
    pairs, reports = load_pairs(str(path), on_bad_row="skip")
    assert reports[0].data_format == "rlcd"
    assert (reports[0].rows_read, reports[0].rows_kept) == (5, 2)
    assert reports[0].skipped == {"missing_keys": 1, "wrong_type": 1, "empty_response": 1}
    assert pairs[0].prompt.messages == [user("How do I boil an egg?")]
    assert (pairs[0].chosen, pairs[0].rejected) == (
        "Put it in boiling water for 8 minutes.",
        "Eggs are nice.",
    )
    assert pairs[1].prompt.messages == [
        user("Name a fruit."),
        assistant("Do you like sweet ones?"),
        user("Yes."),
    ]
    assert (pairs[1].chosen, pairs[1].rejected) == ("Mango, ripe\nand cold.", "Sugar.")
    assert [p.meta["line"] for p in pairs] == [2, 5]  # records span lines; the first line is reported
    with pytest.raises(
        UserError, match=r"rlcd_small\.csv:13: wrong_type: 'preference' is '3', expected 1 or 2"
    ):
        load_pairs(str(path))


def test_alpaca_farm_both_layouts(tmp_path):
    rows = [
        {"instruction": "Translate.", "input": "Hallo", "output_1": "Hi", "output_2": "Bye", "preference": 2},
        {"instruction": "Say hi.", "input": "", "output_1": "Hi", "output_2": "No", "preference": 1},
    ]
    pairs, reports = load_pairs(str(write_jsonl(tmp_path / "a.jsonl", rows)))
    assert reports[0].data_format == "alpaca_farm"
    assert [p.prompt.text for p in pairs] == ["Translate.\nHallo", "Say hi."]
    assert [(p.chosen, p.rejected) for p in pairs] == [("Bye", "Hi"), ("Hi", "No")]
    seed_rows = [
        {"instruction": "Pick.", "input": "x", "answers": ["A", "B"], "preference": 1},
        {"instruction": "Pick.", "input": "", "answers": ["A", "B"], "preference": 0},
    ]
    pairs, reports = load_pairs(str(write_jsonl(tmp_path / "b.jsonl", seed_rows)))
    assert reports[0].data_format == "alpaca_farm"
    assert [(p.prompt.text, p.chosen, p.rejected) for p in pairs] == [
        ("Pick.\nx", "B", "A"),
        ("Pick.", "A", "B"),
    ]


def test_prompts_jsonl_and_txt(tmp_path):
    rows = [
        {"prompt": "Tell a joke."},
        {"text": "Write a haiku."},
        {"instruction": "Summarise.", "input": "Long text"},
        {"messages": [user("hi"), assistant("hello"), user("what now?")]},
        {"messages": [user("hi"), assistant("dropped reply")]},
        {"prompt": [user("as messages")]},
    ]
    prompts, reports = load_prompts(str(write_jsonl(tmp_path / "p.jsonl", rows)))
    assert reports[0].data_format == "prompts"
    assert [p.messages for p in prompts] == [
        [user("Tell a joke.")],
        [user("Write a haiku.")],
        [user("Summarise.\nLong text")],
        [user("hi"), assistant("hello"), user("what now?")],
        [user("hi")],
        [user("as messages")],
    ]
    txt = tmp_path / "p.txt"
    txt.write_bytes(b"First prompt\r\n\nSecond  prompt \n\xff bad\n")
    prompts, reports = load_prompts(str(txt), on_bad_row="skip")
    assert [p.text for p in prompts] == ["First prompt", "Second  prompt "]
    assert [p.meta["line"] for p in prompts] == [1, 3]
    assert reports[0].skipped == {"undecodable_bytes": 1}
    with pytest.raises(UserError, match=r"p\.txt:4: undecodable_bytes: invalid UTF-8 byte 0xff at column 1"):
        load_prompts(str(txt))
    with pytest.raises(UserError, match="has no preference pairs"):
        load_pairs(str(txt))
    with pytest.raises(UserError, match=r"p\.txt: a \.txt file holds one plain prompt per line"):
        load_prompts(str(txt), data_format="trl")


def test_sft_layouts(tmp_path):
    rows = [
        {"prompt": "2+2?", "completion": "4"},
        {"prompt": [user("hi")], "completion": [assistant("hello")]},
        {"messages": [{"role": "system", "content": "S"}, user("q"), assistant("a")]},
        {"instruction": "Add.", "input": "1 1", "output": "2"},
        {"text": "Once upon a time."},
    ]
    samples, reports = load_sft_examples(str(write_jsonl(tmp_path / "s.jsonl", rows)))
    assert reports[0].data_format == "sft"
    assert [(s.prompt.messages, s.response) for s in samples] == [
        ([user("2+2?")], "4"),
        ([user("hi")], "hello"),
        ([{"role": "system", "content": "S"}, user("q")], "a"),
        ([user("Add.\n1 1")], "2"),
        ([], "Once upon a time."),
    ]
    assert all(isinstance(s, Sample) for s in samples)
    bad = write_jsonl(tmp_path / "b.jsonl", [{"messages": [user("q")]}])
    with pytest.raises(
        UserError, match=r"b\.jsonl:1: wrong_type: 'messages' must end with an assistant turn"
    ):
        load_sft_examples(str(bad))
    empty = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "p", "completion": " "}])
    with pytest.raises(UserError, match="empty_response"):
        load_sft_examples(str(empty))
    with pytest.raises(UserError, match="has no SFT examples"):
        load_sft_examples(str(bad), data_format="prompts")


def test_preference_data_as_prompts_and_sft(tmp_path):
    rows = [hh_row(0), {"chosen": hh("q1", "fine"), "rejected": hh("q1", "")}, hh_row(2), hh_row(2)]
    path = str(write_jsonl(tmp_path / "d.jsonl", rows))
    prompts, _ = load_prompts(path)  # an empty rejected reply does not spoil the prompt; no deduplication
    assert [p.text for p in prompts] == ["question 0?", "q1", "question 2?", "question 2?"]
    assert all(isinstance(p, Prompt) for p in prompts)
    samples, _ = load_sft_examples(path)  # (prompt, chosen)
    assert [s.response for s in samples] == ["good answer 0", "fine", "good answer 2", "good answer 2"]
    with pytest.raises(UserError, match=r"d\.jsonl:2: empty_response: 'rejected' reply is empty"):
        load_pairs(path)


def test_lone_surrogate_escape_is_undecodable(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a\\ud800b", "chosen": "x", "rejected": "y"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"d\.jsonl:1: undecodable_bytes: 'prompt' holds a lone surrogate"):
        load_pairs(str(path))


# ----------------------------------------------------------------------------------------------------------------
# File types
# ----------------------------------------------------------------------------------------------------------------
def test_jsonl_gz_and_bom(tmp_path):
    path = tmp_path / "d.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\xef\xbb\xbf" + b"".join(json.dumps(hh_row(i)).encode() + b"\n" for i in range(3)))
    pairs, _ = load_pairs(str(path))
    assert [p.chosen for p in pairs] == ["good answer 0", "good answer 1", "good answer 2"]


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "d.jsonl.gz"
    data = gzip.compress(b"".join(json.dumps(hh_row(i)).encode() + b"\n" for i in range(50)))
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt or truncated gzip"):
        load_pairs(str(path))


def test_json_list_names_element_lines(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([hh_row(0), hh_row(1), {"chosen": hh("a", "b")}], indent=2), encoding="utf-8")
    with pytest.raises(UserError) as e:
        load_pairs(str(path))
    starts = [i + 1 for i, text in enumerate(path.read_text().splitlines()) if text == "  {"]
    line = starts[2]  # the line where the third element starts
    assert str(e.value).startswith(f"{path}:{line}: missing_keys: missing 'rejected'")
    pairs, reports = load_pairs(str(path), on_bad_row="skip")
    assert [p.meta["line"] for p in pairs] == starts[:2]
    assert reports[0].skipped == {"missing_keys": 1}


def test_json_lines_in_a_json_file_and_broken_list(tmp_path):
    lines = tmp_path / "l.json"
    write_jsonl(lines, [hh_row(0), hh_row(1)])
    assert len(load_pairs(str(lines))[0]) == 2
    broken = tmp_path / "b.json"
    broken.write_text('[\n  {"chosen": "x", "rejected": "y"},\n  {"chosen": \n]\n', encoding="utf-8")
    for mode in ("error", "skip"):  # a broken JSON document cannot be resynchronised: always an error
        with pytest.raises(UserError, match=r"b\.json:4: malformed_json: .*one JSON list or JSON lines"):
            load_pairs(str(broken), on_bad_row=mode)


def test_csv_field_count_and_header_only(tmp_path):
    path = tmp_path / "s.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["question", "response_j", "response_k"])
        w.writerow(["q", "good", "bad"])
        w.writerow(["q", "good", "bad", "extra"])
    with pytest.raises(UserError, match=r"s\.csv:3: wrong_type: 4 fields, header has 3"):
        load_pairs(str(path))
    header_only = tmp_path / "h.csv"
    header_only.write_text("question,response_j,response_k\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"h\.csv: empty file"):
        load_pairs(str(header_only))


def test_parquet_rows(tmp_path):
    path = tmp_path / "d.parquet"
    rows = [hh_row(0), hh_row(1), {"chosen": hh("q", "same"), "rejected": hh("q", "same")}]
    pq.write_table(pa.Table.from_pylist(rows), path)
    pairs, reports = load_pairs(str(path), on_bad_row="skip")
    assert len(pairs) == 2 and reports[0].skipped == {"identical_responses": 1}
    assert pairs[1].meta == {"source": str(path), "line": None, "row_index": 1}
    with pytest.raises(UserError, match=r"d\.parquet:row 3: identical_responses"):
        load_pairs(str(path))
    conv = tmp_path / "c.parquet"  # nested lists of structs come back as messages
    pq.write_table(
        pa.Table.from_pylist(
            [{"prompt": [user("hi")], "chosen": [assistant("a")], "rejected": [assistant("b")]}]
        ),
        conv,
    )
    (pair,), _ = load_pairs(str(conv))
    assert (pair.prompt.messages, pair.chosen, pair.rejected) == ([user("hi")], "a", "b")
    not_parquet = tmp_path / "x.parquet"
    not_parquet.write_text("nope")
    with pytest.raises(UserError, match=r"x\.parquet: cannot read as parquet"):
        load_pairs(str(not_parquet))


# ----------------------------------------------------------------------------------------------------------------
# Detection and forcing
# ----------------------------------------------------------------------------------------------------------------
def test_detection_skips_bad_leading_rows_and_forcing(tmp_path):
    rows = [{"chosen": hh("a", "b")}, hh_row(1)]  # the first row's keys match nothing; detection reads on
    path = str(write_jsonl(tmp_path / "d.jsonl", rows))
    with pytest.raises(UserError, match=r"d\.jsonl:1: missing_keys"):
        load_pairs(path)
    _, reports = load_pairs(path, on_bad_row="skip")
    assert reports[0].data_format == "hh-rlhf"
    with pytest.raises(UserError, match=r"d\.jsonl:1: missing_keys: missing 'question', 'response_j'"):
        load_pairs(path, data_format="stack-exchange-paired")
    unknown = str(write_jsonl(tmp_path / "u.jsonl", [{"foo": 1}]))
    with pytest.raises(UserError, match=r"u\.jsonl:1: cannot detect the data format .*'foo'.*--data_format"):
        load_pairs(unknown)
    with pytest.raises(UserError, match=r"u\.jsonl: no usable rows"):
        load_pairs(unknown, on_bad_row="skip")
    prompts_only = str(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x"}]))
    with pytest.raises(UserError, match="reads preference pairs in hh-rlhf"):
        load_pairs(prompts_only)
    with pytest.raises(UserError, match="has no preference pairs"):
        load_pairs(prompts_only, data_format="sft")


# ----------------------------------------------------------------------------------------------------------------
# Bad rows
# ----------------------------------------------------------------------------------------------------------------
HANDMADE_BAD = {  # line in tests/data/hh_bad_rows.jsonl -> (reason, detail fragment)
    2: ("malformed_json", "Expecting value at column"),
    3: ("undecodable_bytes", "invalid UTF-8 byte 0xe9 at column 27"),
    4: ("missing_keys", "missing 'rejected'"),
    5: ("wrong_type", "'chosen' is a number, expected a string"),
    6: ("empty_response", "'rejected' reply is empty"),
    7: ("identical_responses", "chosen and rejected are the same"),
    8: ("diverging_transcript", "differ before the final reply (at turn 2"),
    9: ("wrong_type", "row is a list, expected a JSON object"),
}


@pytest.mark.parametrize("line", sorted(HANDMADE_BAD))
def test_each_bad_row_reason_errors_with_file_and_line(tmp_path, line):
    raw = (DATA / "hh_bad_rows.jsonl").read_bytes().split(b"\n")
    path = tmp_path / "bad.jsonl"
    path.write_bytes(raw[0] + b"\n" + raw[line - 1] + b"\n")  # a good row, then the bad one at line 2
    reason, detail = HANDMADE_BAD[line]
    with pytest.raises(UserError) as e:
        load_pairs(str(path))
    message = str(e.value)
    assert message.startswith(f"{path}:2: {reason}: ")
    assert detail in message
    assert "\n" not in message and "Traceback" not in message
    pairs, reports = load_pairs(str(path), on_bad_row="skip")
    assert len(pairs) == 1 and reports[0].skipped == {reason: 1}


def test_handmade_file_skip_counts():
    path = DATA / "hh_bad_rows.jsonl"
    pairs, (report,) = load_pairs(str(path), on_bad_row="skip")
    assert [p.meta["line"] for p in pairs] == [1, 11]
    assert [p.meta["row_index"] for p in pairs] == [0, 9]  # the blank line 10 is not a row
    assert report == LoadReport(
        str(path),
        10,
        2,
        {
            "malformed_json": 1,
            "undecodable_bytes": 1,
            "missing_keys": 1,
            "wrong_type": 2,
            "empty_response": 1,
            "identical_responses": 1,
            "diverging_transcript": 1,
        },
        "hh-rlhf",
    )
    assert report.summary() == (
        f"{path}: kept 2 of 10 rows (skipped: malformed_json 1, undecodable_bytes 1, missing_keys 1, "
        "wrong_type 2, empty_response 1, identical_responses 1, diverging_transcript 1)"
    )
    assert set(report.skipped) == set(BAD_ROW_REASONS)
    with pytest.raises(UserError, match=r"hh_bad_rows\.jsonl:2: malformed_json"):
        load_pairs(str(path))


def test_huge_integer_and_deep_nesting_are_malformed(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(hh_row(0)) + "\n" + "9" * 5000 + "\n" + "[" * 100000 + "\n", encoding="utf-8")
    _, (report,) = load_pairs(str(path), on_bad_row="skip")
    assert report.skipped == {"malformed_json": 2}


def test_empty_and_all_bad_files(tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(UserError, match=r"e\.jsonl: empty file"):
        load_pairs(str(empty), on_bad_row="skip")
    all_bad = tmp_path / "b.jsonl"
    all_bad.write_text(json.dumps(hh_row(0)).replace("good answer 0", "bad 0") + "\n")
    with pytest.raises(UserError, match=r"b\.jsonl: no usable rows: .*kept 0 of 1 rows \(skipped: identical"):
        load_pairs(str(all_bad), on_bad_row="skip")


# ----------------------------------------------------------------------------------------------------------------
# Split and selection
# ----------------------------------------------------------------------------------------------------------------
def test_split_is_deterministic_disjoint_and_complete(tmp_path):
    path = str(write_jsonl(tmp_path / "d.jsonl", [hh_row(i) for i in range(101)]))
    idx = {s: [p.meta["row_index"] for p in load_pairs(path, split=s)[0]] for s in ("train", "eval", "all")}
    assert idx["all"] == list(range(101))
    assert len(idx["eval"]) == round(0.1 * 101) == 10
    assert set(idx["train"]).isdisjoint(idx["eval"])
    assert sorted(idx["train"] + idx["eval"]) == idx["all"]
    assert idx["train"] == sorted(idx["train"]) and idx["eval"] == sorted(idx["eval"])  # file order kept
    assert [p.meta["row_index"] for p in load_pairs(path, split="eval")[0]] == idx["eval"]  # stable
    assert idx["eval"] == split_indices(101, "eval", 0, 0.1)
    other = [p.meta["row_index"] for p in load_pairs(path, split="eval", split_seed=1)[0]]
    assert other != idx["eval"] and len(other) == 10
    assert len(load_pairs(path, split="eval", eval_fraction=0.5)[0]) == round(0.5 * 101)
    assert load_pairs(path, split="train", eval_fraction=1.0, on_bad_row="skip")[0] == []


def test_skipping_bad_rows_never_moves_good_rows(tmp_path):
    rows = [hh_row(i) for i in range(60)]
    clean = str(write_jsonl(tmp_path / "clean.jsonl", rows))
    bad_positions = {0, 7, 8, 30, 59}
    dirty_rows = [{"chosen": 1} if i in bad_positions else r for i, r in enumerate(rows)]
    dirty = str(write_jsonl(tmp_path / "dirty.jsonl", dirty_rows))
    for split in ("train", "eval"):
        want = [
            p.chosen for p in load_pairs(clean, split=split)[0] if p.meta["row_index"] not in bad_positions
        ]
        got = [p.chosen for p in load_pairs(dirty, split=split, on_bad_row="skip")[0]]
        assert got == want


def test_bottom_top_limit(tmp_path):
    path = str(write_jsonl(tmp_path / "d.jsonl", [hh_row(i) for i in range(20)]))

    def rows(**kw):
        return [p.meta["row_index"] for p in load_pairs(path, **kw)[0]]

    assert rows(bottom=5, top=9) == [5, 6, 7, 8]
    assert rows(bottom=18) == [18, 19]
    assert rows(top=3) == [0, 1, 2]
    assert rows(bottom=2, top=10, limit=3) == [2, 3, 4]
    assert rows(limit=0) == []
    assert rows(bottom=30) == []
    evals = rows(split="eval")
    assert rows(split="eval", bottom=1, limit=1) == evals[1:2]


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"split": "test"}, "--split"),
        ({"on_bad_row": "ignore"}, "--on_bad_row"),
        ({"data_format": "csv"}, "--data_format"),
        ({"limit": -1}, "--limit"),
        ({"bottom": -2}, "--bottom"),
        ({"top": 1.5}, "--top"),
        ({"bottom": 5, "top": 3}, "--bottom"),
        ({"eval_fraction": 1.5}, "--eval_fraction"),
        ({"split_seed": "x"}, "--split_seed"),
    ],
)
def test_bad_arguments_name_the_flag(kwargs, flag):
    with pytest.raises(UserError, match=f"^{flag}"):
        load_pairs("hh-rlhf:helpful-base", **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Specs
# ----------------------------------------------------------------------------------------------------------------
def test_comma_list_concatenates_with_one_report_each(tmp_path):
    a = str(write_jsonl(tmp_path / "a.jsonl", [hh_row(i) for i in range(3)]))
    b = tmp_path / "b.csv"
    b.write_text("question,response_j,response_k\nq,good,bad\n", encoding="utf-8")
    pairs, reports = load_pairs(f"{a}, {b}")
    assert [(p.meta["source"], p.meta["row_index"]) for p in pairs] == [(a, 0), (a, 1), (a, 2), (str(b), 0)]
    assert [(r.source, r.data_format, r.rows_read) for r in reports] == [
        (a, "hh-rlhf", 3),
        (str(b), "stack-exchange-paired", 1),
    ]
    # The split is over the concatenation's row positions.
    evals = [p.meta for p in load_pairs(f"{a},{b}", split="eval", eval_fraction=0.5)[0]]
    positions = [m["row_index"] + (3 if m["source"] == str(b) else 0) for m in evals]
    assert positions == split_indices(4, "eval", 0, 0.5)


def test_embedded_dataset_and_spec_errors(tmp_path, monkeypatch):
    assert "hh-rlhf:helpful-base" in embedded_names()
    pairs, (report,) = load_pairs("hh-rlhf:helpful-base", on_bad_row="skip", limit=3)
    assert report.source == "hh-rlhf:helpful-base" and report.rows_read == 2354 and len(pairs) == 3
    assert Path(pairs[0].meta["source"]) == EMBEDDED.resolve()
    assert load_pairs("hh-rlhf:helpful-base-test", on_bad_row="skip", limit=1)[0] == pairs[:1]
    with pytest.raises(
        UserError, match=r"^hh-rlhf:nope: no such embedded dataset \(embedded: .*hh-rlhf:helpful-base"
    ):
        load_pairs("hh-rlhf:nope")
    with pytest.raises(UserError, match=r"^/nonexistent/x\.jsonl: no such file$"):
        load_pairs("/nonexistent/x.jsonl")
    with pytest.raises(
        UserError, match=r"^someone/dataset: no such file or embedded dataset \(embedded: hh-rlhf"
    ):
        load_pairs("someone/dataset")
    with pytest.raises(UserError, match="is a directory"):
        load_pairs(str(tmp_path))
    (tmp_path / "x.xml").write_text("<a/>")
    with pytest.raises(UserError, match="unknown file type"):
        load_pairs(str(tmp_path / "x.xml"))
    with pytest.raises(UserError, match="dataset spec is empty"):
        load_pairs(" , ")


def test_hub_only_when_online(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return [hh_row(0), {"chosen": hh("q", "x"), "rejected": hh("q", "x")}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setenv("RLHF_LAB_ONLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="no such file or embedded dataset"):
        load_pairs("someone/dataset")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with pytest.raises(UserError, match=r"^someone/dataset:row 2: identical_responses"):
        load_pairs("someone/dataset")
    pairs, (report,) = load_pairs("someone/dataset", on_bad_row="skip")
    assert calls[-1] == ("someone/dataset", "train")
    assert report.summary() == "someone/dataset: kept 1 of 2 rows (skipped: identical_responses 1)"
    assert pairs[0].meta == {"source": "someone/dataset", "line": None, "row_index": 0}


# ----------------------------------------------------------------------------------------------------------------
# The real hh-rlhf splits
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "rows", "skipped"),
    [
        # README: 9 diverging, 2 identical, 4 empty final replies. Measured: the same; no row has two reasons.
        ("helpful-base", 2354, {"empty_response": 4, "identical_responses": 2, "diverging_transcript": 9}),
        # README: 5 diverging, 4 empty final replies. Measured: the same.
        ("harmless-base", 2312, {"empty_response": 4, "diverging_transcript": 5}),
        # README: 32 identical pairs. Measured: 32 identical, and 3 diverging transcripts the README omits
        # (lines 720, 1598, 2365: one side has an extra Assistant turn before the final reply).
        ("helpful-rejection-sampled", 2749, {"identical_responses": 32, "diverging_transcript": 3}),
    ],
)
def test_shared_hh_rlhf_splits(name, rows, skipped):
    path = SHARED / f"{name}-test.jsonl.gz"
    assert path.exists(), f"{path}: the shared data must sit beside the repo (../shared)"
    pairs, (report,) = load_pairs(str(path), on_bad_row="skip")
    assert (report.rows_read, report.skipped) == (rows, skipped)
    assert report.rows_kept == len(pairs) == rows - sum(skipped.values())
    assert all(
        p.chosen.strip() and p.rejected.strip() and p.chosen.strip() != p.rejected.strip() for p in pairs
    )


def test_embedded_dataset_works_by_default_and_reports_its_known_bad_rows(tmp_path):
    pairs, (report,) = load_pairs("hh-rlhf:helpful-base")  # on_bad_row="auto": skip for the embedded data
    assert len(pairs) == 2339
    assert report.skipped == {"diverging_transcript": 9, "identical_responses": 2, "empty_response": 4}
    user_copy = tmp_path / "copy.jsonl.gz"
    user_copy.write_bytes(EMBEDDED.read_bytes())
    with pytest.raises(UserError, match=r"copy\.jsonl\.gz:121: empty_response"):
        load_pairs(str(user_copy))  # ... but "error" for a user's own file


def test_embedded_helpful_base_error_mode_is_one_line():
    with pytest.raises(UserError) as e:
        load_pairs("hh-rlhf:helpful-base", on_bad_row="error")
    assert str(e.value) == f"{EMBEDDED.resolve()}:121: empty_response: 'rejected' reply is empty"
    prompts, (report,) = load_prompts("hh-rlhf:helpful-base", on_bad_row="skip")
    assert len(prompts) == 2354 - 9
    assert report.skipped == {"diverging_transcript": 9}  # empty/identical replies do not spoil a prompt
    evals, _ = load_pairs("hh-rlhf:helpful-base", on_bad_row="skip", split="eval")
    trains, _ = load_pairs("hh-rlhf:helpful-base", on_bad_row="skip", split="train")
    assert len(evals) + len(trains) == 2339
    assert len(split_indices(2354, "eval")) == 235
    # split "auto" (the evaluation verbs' default): the embedded dataset keeps its held-out eval split ...
    autos, _ = load_pairs("hh-rlhf:helpful-base", on_bad_row="skip", split="auto")
    assert [p.meta for p in autos] == [p.meta for p in evals]


def test_auto_split_reads_a_named_file_whole(tmp_path):
    """A file the user names (e.g. a test set for eval-rm) is read whole under split "auto", not cut to 10%."""
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "yes", "rejected": "no"}) + "\n"
                            for i in range(40)))
    assert len(load_pairs(str(path), split="auto")[0]) == 40
    assert len(load_pairs(str(path), split="eval")[0]) == 4
    # a mix of the embedded dataset and a file of yours counts as yours: every row
    mixed, _ = load_pairs(f"hh-rlhf:helpful-base,{path}", on_bad_row="skip", split="auto")
    assert len(mixed) == 2339 + 40


def test_hh_parse_round_trips_real_transcripts():
    from rlhf_lab.data.templates import render_prompt

    with gzip.open(EMBEDDED, "rb") as f:
        raw = [json.loads(line) for line in f]
    pairs, _ = load_pairs("hh-rlhf:helpful-base", on_bad_row="skip")
    for pair in pairs:
        row = raw[pair.meta["row_index"]]
        rendered = render_prompt(pair.prompt.messages, "hh")
        assert rendered + " " + pair.chosen == row["chosen"]
        assert rendered + " " + pair.rejected == row["rejected"]


# ----------------------------------------------------------------------------------------------------------------
# Properties: whatever is in the file, the loader returns or raises UserError
# ----------------------------------------------------------------------------------------------------------------
KEYS = [
    "chosen",
    "rejected",
    "prompt",
    "question",
    "answer_0",
    "answer_1",
    "score_0",
    "score_1",
    "response_j",
    "response_k",
    "instruction",
    "input",
    "output_1",
    "output_2",
    "preference",
    "answers",
    "messages",
    "role",
    "content",
    "full_text",
]
TEXTS = st.sampled_from(
    ["", " ", hh("hi", "a"), hh("hi", "b"), hh("hi"), "Human: x\n\nAssistant: y", "\ud800"]
)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | TEXTS
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner, max_size=5)
    ),
    max_leaves=12,
)
PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check_loader(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "d.jsonl")
        with open(path, "wb") as f:
            f.write(data)
        try:
            pairs, _ = load_pairs(path, on_bad_row="error")
            assert all(isinstance(p, Pair) for p in pairs)
        except UserError as e:
            assert "\n" not in str(e)
        try:
            load_pairs(path, on_bad_row="skip")
        except UserError as e:
            assert "empty file" in str(e) or "no usable rows" in str(e), str(e)


@PROPERTY
@given(st.lists(st.binary(max_size=40), max_size=6))
def test_random_bytes_never_crash(lines):
    _check_loader(b"\n".join(lines))


@PROPERTY
@given(st.lists(JSON, max_size=6))
def test_random_json_values_never_crash(values):
    _check_loader("".join(json.dumps(v) + "\n" for v in values).encode("utf-8", "surrogatepass"))


@PROPERTY
@given(st.lists(st.fixed_dictionaries({"chosen": TEXTS, "rejected": TEXTS}) | JSON, min_size=1, max_size=6))
def test_mostly_hh_rows_never_crash(values):
    _check_loader("".join(json.dumps(v) + "\n" for v in values).encode("utf-8", "surrogatepass"))


def test_formats_constant():
    assert FORMATS[0] == "auto" and len(FORMATS) == 9
