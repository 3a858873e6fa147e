"""Where the project's top-level directories are: a checkout, or the copy inside the wheel.

setup.py copies templates/, ansible/ and packer/ into the wheel as arch/_bundled/; in a checkout
(or an editable install) they sit beside the arch package.
"""

from __future__ import annotations

from pathlib import Path

import arch

PACKAGE_DIR = Path(arch.__file__).resolve().parent
BUNDLE_DIR = PACKAGE_DIR / "_bundled"
CHECKOUT_DIR = PACKAGE_DIR.parent


class ResourceMissing(Exception):
    """A project directory is neither in the installed package nor in a checkout."""


def project_directory(name: str) -> Path:
    """templates/, ansible/ or packer/ of this installation."""
    for candidate in (BUNDLE_DIR / name, CHECKOUT_DIR / name):
        if candidate.is_dir():
            return candidate
    raise ResourceMissing(
        f"{name}/ is not in {BUNDLE_DIR} nor in {CHECKOUT_DIR}: this arch package was installed "
        f"without its bundled files (build the wheel with the project's setup.py)"
    )


def templates_dir() -> Path:
    return project_directory("templates")


def ansible_dir() -> Path:
    return project_directory("ansible")


def packer_dir() -> Path:
    return project_directory("packer")
