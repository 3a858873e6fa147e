"""The project's own standards, enforced: ruff, mypy --strict and ansible-lint (production)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = os.path.dirname(sys.executable)


def run_tool(argv: list[str], cwd: str = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.parametrize("paths", [["arch", "tests", "benchmarks"]])
def test_ruff_is_clean(paths: list[str]) -> None:
    result = run_tool([os.path.join(TOOLS, "ruff"), "check", *paths])
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    result = run_tool([sys.executable, "-m", "mypy"])  # files and strictness: pyproject.toml
    assert result.returncode == 0, result.stdout + result.stderr


def test_ansible_lint_production_profile() -> None:
    result = run_tool(
        [os.path.join(TOOLS, "ansible-lint"), "--profile", "production", "--offline", "."],
        cwd=os.path.join(REPO, "ansible"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
