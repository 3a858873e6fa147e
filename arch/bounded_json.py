"""JSON read from files that others may write (checkpoint storage, and ARCH's own state read
back): bounded in size, nesting and number length, so a planted document is a clear error
(BoundedJsonError, a ValueError) and never a RecursionError, a memory or CPU sink, or an
infinite number.

- size: the caller's byte limit, read through one descriptor (a regular file, no symlink);
- nesting: at most MAX_DEPTH arrays/objects deep (Python's parser would recurse until
  RecursionError);
- numbers: integers of at most MAX_INTEGER_DIGITS digits (Python < 3.11 converts any length,
  in quadratic time), finite floats; NaN and Infinity literals are refused.

Imported on arch-runc's create path: module-level imports stay cheap.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

MAX_DEPTH = 32
MAX_INTEGER_DIGITS = 40
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class BoundedJsonError(ValueError):
    """The document is not JSON within the bounds."""


def loads(data: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """Parse one JSON document within the bounds (BoundedJsonError otherwise)."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        document = json.loads(text, parse_int=_integer, parse_float=_float,
                              parse_constant=_constant)  # fmt: skip
    except RecursionError:
        raise BoundedJsonError(f"nested deeper than {max_depth} levels") from None
    except BoundedJsonError:
        raise
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise BoundedJsonError(str(error)) from error
    if _depth(document) > max_depth:
        raise BoundedJsonError(f"nested deeper than {max_depth} levels")
    return document


def read_at(dir_fd: int, name: str, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """The document in the regular file `name` of the directory (never through a symlink, at
    most `max_bytes`). OSError when it cannot be opened or read; BoundedJsonError otherwise."""
    return loads(read_small_at(dir_fd, name, max_bytes), max_depth)


def read_small_at(dir_fd: int, name: str, max_bytes: int) -> bytes:
    """The whole regular file `name` of the directory when it has at most `max_bytes`
    (BoundedJsonError for a larger one, OSError for a symlink or other non-regular file)."""
    fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{name} is not a regular file")
        chunks: list[bytes] = []
        length = 0
        while length <= max_bytes:
            chunk = os.read(fd, max_bytes + 1 - length)
            if not chunk:
                break
            chunks.append(chunk)
            length += len(chunk)
    finally:
        os.close(fd)
    if length > max_bytes:
        raise BoundedJsonError(f"{name} is larger than {max_bytes} bytes")
    return b"".join(chunks)


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise BoundedJsonError(f"an integer of more than {MAX_INTEGER_DIGITS} digits")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise BoundedJsonError(f"the number {text[:40]} is out of range")
    return value


def _constant(name: str) -> Any:
    raise BoundedJsonError(f"{name} is not a JSON value")


def _depth(document: Any) -> int:
    """How deeply arrays and objects nest in the parsed document (iterative)."""
    deepest = 0
    pending = [(document, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in children)
    return deepest
