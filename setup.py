"""Build hook: ship the project's top-level templates/, ansible/ and packer/ inside the wheel.

Everything else about the package is declared in pyproject.toml. An installed archctl renders
templates/ (userdata, ECS and Batch definitions), the userdata runs the bundled Ansible role, and
`archctl ami` finds packer/ beside that role: all three must travel with the wheel. They land
under arch/_bundled/ (see arch/delivery/resources.py, which also finds them in a checkout).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

BUNDLED_DIRECTORIES = ("templates", "ansible", "packer")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.retry", ".ansible", "packer_cache")


class BuildPyWithProjectDirectories(build_py):  # type: ignore[misc]
    def run(self) -> None:
        super().run()
        project_root = Path(__file__).resolve().parent
        bundle_root = Path(self.build_lib) / "arch" / "_bundled"
        for name in BUNDLED_DIRECTORIES:
            source = project_root / name
            if not source.is_dir():
                # A full checkout has all three; the Ansible role's copy of the source on a
                # host carries templates/ only (ansible/ and packer/ are not used there).
                continue
            target = bundle_root / name
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(source, target, ignore=IGNORED)


setup(cmdclass={"build_py": BuildPyWithProjectDirectories})
