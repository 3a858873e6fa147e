"""Fixtures for the appliance tests: pytest-testinfra on this host (local://), skipped with a
reason when the appliance is not installed (a failure with ARCH_TESTS_STRICT=1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import testinfra

ARCH_CONFIG = Path("/etc/arch/arch.toml")
NOT_INSTALLED = "appliance not installed: run ansible/install.sh"
STRICT_ENV = "ARCH_TESTS_STRICT"


@pytest.fixture(scope="session")
def host() -> testinfra.host.Host:
    """This machine, through testinfra's local backend."""
    return testinfra.get_host("local://")


@pytest.fixture(autouse=True)
def _require_installed_appliance() -> None:
    if ARCH_CONFIG.exists():
        return
    if os.environ.get(STRICT_ENV) == "1":
        pytest.fail(f"{NOT_INSTALLED} [{STRICT_ENV}=1 turns this skip into a failure]")
    pytest.skip(NOT_INSTALLED)
