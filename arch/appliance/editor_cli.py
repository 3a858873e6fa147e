"""The command-line frame shared by the config editors the Ansible role calls.

Exit 0 with the editor's output (one JSON line for changes) on stdout, 1 with a message on
stderr when the edit failed (the file is then untouched), 2 for bad usage (argparse).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from arch.appliance.atomic_write import FileEditError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


def non_empty(value: str) -> str:
    """argparse type for paths and names that must not be blank."""
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def run_editor(
    prog: str,
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], str | None],
    argv: Sequence[str] | None,
) -> int:
    args = parser.parse_args(argv)
    try:
        output = run(args)
    except (FileEditError, OSError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    if output is not None:
        print(output)
    return 0
