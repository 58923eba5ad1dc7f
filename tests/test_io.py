"""JSON lines: a torn last line (a kill mid-append) is skipped and cut before the next append; any other bad line
is an error naming file:line."""

import pytest

from rlhf_lab.errors import UserError
from rlhf_lab.io import append_jsonl, read_jsonl


def test_a_torn_last_line_is_skipped_and_cut_before_the_next_append(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\n\n{"step": 2}\n{"step": 3, "lo')  # killed while writing step 3
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    append_jsonl(path, {"step": 3})  # the resumed run
    assert path.read_bytes() == b'{"step": 1}\n\n{"step": 2}\n{"step": 3}\n'
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}, {"step": 3}]
    path.write_bytes(b'{"step": 1}\n{"a": "\xc3')  # torn inside a UTF-8 character
    assert read_jsonl(path) == [{"step": 1}]


def test_a_bad_line_before_the_last_is_an_error_naming_it(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(UserError, match=r"rows\.jsonl:2: not valid JSON"):
        read_jsonl(path)
    path.write_bytes(b'{"a": 1}\n{"a": 2} trailing\n')  # a bad last line that ends with a newline is not torn
    with pytest.raises(UserError, match=r"rows\.jsonl:2: not valid JSON"):
        read_jsonl(path)
    with pytest.raises(UserError, match="no such file"):
        read_jsonl(tmp_path / "missing.jsonl")
