"""The static program that is the whole of `archctl selftest`'s container image.

Its C source (selftest_payload.c, shipped in the package) is compiled with the host's C compiler
and static C library, which the appliance role installs: no busybox, shell or registry is needed.
This module builds it and reads its `report` output.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from arch.appliance.oci_image import is_static_elf

SOURCE = Path(__file__).with_name("selftest_payload.c")
COMPILER = "cc"
CFLAGS = ("-static", "-O2", "-Wall", "-Wextra", "-s")
COMPILE_TIMEOUT = 120.0
# Where the image holds it, and its two modes (see selftest_payload.c).
IMAGE_PATH = "/bin/arch-selftest-payload"
RUN_COMMAND = (IMAGE_PATH, "run")
REPORT_COMMAND = (IMAGE_PATH, "report")
# What a linker says when the static C library (libc.a) is not installed.
_NO_STATIC_LIBC = re.compile(r"cannot find -lc\b|cannot find libc\.a")
_PACKAGES_HINT = "glibc-static (Amazon Linux, RHEL) or libc6-dev (Debian, Ubuntu)"
_LINKER_LINE = re.compile(r"(?:\S*/)?ld(?:\.\w+)?: ")
_HEX = re.compile(r"(?:[0-9a-f]{2})*")


class PayloadError(Exception):
    """The payload cannot be built or used; the message (one line) says why and what to do."""


def build(compiler: str = COMPILER) -> bytes:
    """Compile SOURCE statically with `compiler` (looked up on PATH); the executable's bytes."""
    compiler_path = shutil.which(compiler)
    if compiler_path is None:
        raise PayloadError(
            f"no C compiler ({compiler}) on PATH to build the selftest payload: install gcc, "
            "or pass --payload PATH"
        )
    if not SOURCE.is_file():
        raise PayloadError(f"the payload's source {SOURCE} is missing from the arch package")
    with tempfile.TemporaryDirectory(prefix="arch-selftest-payload-") as work_dir:
        output = os.path.join(work_dir, "payload")
        argv = [compiler_path, *CFLAGS, "-o", output, str(SOURCE)]
        try:
            completed = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=COMPILE_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise PayloadError(
                f"{compiler} did not build the payload in {COMPILE_TIMEOUT:.0f}s"
            ) from error
        if completed.returncode != 0:
            raise PayloadError(_compile_failure(compiler, completed))
        return checked(Path(output), f"{compiler} -static's output")


def load(path: str) -> bytes:
    """The bytes of a prebuilt payload (`--payload PATH`), once shown to be a static ELF."""
    return checked(Path(path), path)


def checked(path: Path, name: str) -> bytes:
    if not path.is_file():
        raise PayloadError(f"payload {name}: no such file")
    if not is_static_elf(path):
        raise PayloadError(
            f"payload {name} is not a statically linked 64-bit ELF executable "
            f"(build it with: cc {' '.join(CFLAGS)} -o PATH {SOURCE})"
        )
    return path.read_bytes()


def _compile_failure(compiler: str, completed: subprocess.CompletedProcess[str]) -> str:
    output = completed.stderr or completed.stdout
    if _NO_STATIC_LIBC.search(output):
        return (
            f"{compiler} cannot link statically: the static C library (libc.a) is missing; "
            f"install {_PACKAGES_HINT}, or pass --payload PATH"
        )
    status = completed.returncode
    reason = _first_error(output)
    return f"{compiler} failed to build the selftest payload (exit {status}): {reason}"


def _first_error(compiler_output: str) -> str:
    """The compiler's or linker's first own error line (not collect2's summary)."""
    lines = [line.strip() for line in compiler_output.splitlines() if line.strip()]
    for line in lines:
        if ("error:" in line or _LINKER_LINE.match(line)) and not line.startswith("collect2"):
            return line
    return lines[-1] if lines else "(no output)"


def parse_report(output: str) -> dict[str, bytes | None]:
    """The payload's `report` lines: {path: content, or None for no such file}.

    A file the payload could not read (or a line not in its format) raises PayloadError.
    """
    found: dict[str, bytes | None] = {}
    for line in output.splitlines():
        fields = line.split("\t")
        if len(fields) == 2 and fields[1] == "missing":
            found[fields[0]] = None
        elif len(fields) == 3 and fields[1] == "file" and _HEX.fullmatch(fields[2]):
            found[fields[0]] = bytes.fromhex(fields[2])
        elif len(fields) >= 3 and fields[1] == "error":
            raise PayloadError(f"the container cannot read {fields[0]}: {fields[-1]}")
        elif len(fields) == 5 and fields[1] == "file" and fields[3] == "error":
            raise PayloadError(f"the container cannot read {fields[0]}: {fields[4]}")
        else:
            raise PayloadError(f"not a line of the payload's report: {line[:200]!r}")
    return found
