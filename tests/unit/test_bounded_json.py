"""arch.bounded_json: planted documents are clear errors, never crashes or CPU sinks."""

from __future__ import annotations

import contextlib
import json
import os
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arch.bounded_json import MAX_DEPTH, BoundedJsonError, loads, read_at

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested deeper"),  # RecursionError in json.loads
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "nested deeper"),
        ('{"a":' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1), "nested deeper"),
        ("1" * 5000, "more than 40 digits"),  # ValueError on 3.11+, minutes on 3.9 at 4 MiB
        ('{"expires": 1e400}', "out of range"),  # inf: a lease held for ever
        ('{"expires": -1e400}', "out of range"),
        ('{"expires": NaN}', "NaN is not a JSON value"),
        ('{"expires": Infinity}', "Infinity is not a JSON value"),
        ('{"a": 1', "Expecting"),
        (b'{"a": "\xff"}', "utf-8"),
    ],
    ids=["100000 deep", "one too deep", "objects too deep", "long integer", "1e400",
         "-1e400", "NaN", "Infinity", "truncated", "not UTF-8"],
)  # fmt: skip
def test_a_document_outside_the_bounds_is_a_value_error(text: str | bytes, problem: str) -> None:
    with pytest.raises(BoundedJsonError, match=problem) as raised:
        loads(text)
    assert isinstance(raised.value, ValueError)  # what every caller already handles


def test_documents_within_the_bounds_read_as_json_does() -> None:
    nested = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert loads(nested) == json.loads(nested)
    document = {"pid": 12, "expires": 1.5e9, "big": 10**39, "list": [None, True, "x"]}
    assert loads(json.dumps(document).encode()) == document


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
)  # fmt: skip


@given(json_values)
@settings(max_examples=300, deadline=None)
def test_any_small_json_value_reads_back(value: object) -> None:
    text = json.dumps(value)
    try:
        assert loads(text) == json.loads(text)
    except BoundedJsonError as error:  # only for what the bounds name
        assert "nested deeper" in str(error) or "digits" in str(error), error


@given(st.binary(max_size=300))
@settings(max_examples=500, deadline=None)
def test_any_bytes_parse_or_raise_the_bounded_error(data: bytes) -> None:
    """Nothing but BoundedJsonError escapes (a RecursionError or other ValueError would)."""
    with contextlib.suppress(BoundedJsonError):
        loads(data)


def test_read_at_refuses_large_files_and_symlinks(tmp_path: Path) -> None:
    (tmp_path / "big.json").write_text(json.dumps({"a": "x" * 100}))
    (tmp_path / "link.json").symlink_to(tmp_path / "big.json")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert read_at(fd, "big.json", 200) == {"a": "x" * 100}
        with pytest.raises(BoundedJsonError, match="larger than 50 bytes"):
            read_at(fd, "big.json", 50)
        with pytest.raises(OSError):  # ELOOP: never followed
            read_at(fd, "link.json", 200)
        os.mkfifo(tmp_path / "fifo")
        with pytest.raises(OSError, match="not a regular file"):  # never blocks on a FIFO
            read_at(fd, "fifo", 200)
    finally:
        os.close(fd)
