"""Build the static C workloads of the checkpoint/restore tests (gcc -static, no other deps)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

WORKLOADS_DIR = Path(__file__).resolve().parent
MEMHOLD_SOURCE = WORKLOADS_DIR / "memhold.c"
GCC_CANDIDATES = ("gcc", "cc")


class BuildUnavailable(Exception):
    """This machine cannot build static C programs (no compiler or no static libc)."""


def find_compiler() -> str:
    for name in GCC_CANDIDATES:
        found = shutil.which(name)
        if found is not None:
            return found
    raise BuildUnavailable("no C compiler (gcc) on PATH; the Debian package is gcc")


def build_static(source: Path, output: Path) -> Path:
    """Compile `source` into the static executable `output`; raise on any compiler error.

    A missing static libc (libc6-dev / glibc-static) is reported as BuildUnavailable, other
    compiler errors as CalledProcessError-style RuntimeError with the compiler's output.
    """
    compiler = find_compiler()
    output.parent.mkdir(parents=True, exist_ok=True)
    completed = subprocess.run(
        [compiler, "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(output), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if completed.returncode != 0:
        if "cannot find -lc" in completed.stderr:
            raise BuildUnavailable(
                "no static C library (Debian: libc6-dev; Amazon Linux: glibc-static)"
            )
        raise RuntimeError(f"building {source.name} failed:\n{completed.stderr}")
    return output


def build_memhold(output_dir: Path) -> Path:
    return build_static(MEMHOLD_SOURCE, output_dir / "memhold")
