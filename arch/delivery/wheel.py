"""The arch wheel that the userdata, `archctl remote` and `archctl ami build` deliver: built from
a checkout, or packed again from the installed package (arch/delivery/installed_wheel.py)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

from arch.delivery.installed_wheel import InstalledWheelError, repack_installed
from arch.delivery.resources import CHECKOUT_DIR


class WheelError(Exception):
    """No checkout to build from, or pip could not build the wheel."""


@dataclass(frozen=True)
class WheelInfo:
    """An arch wheel file: what the AMI manifest records of it."""

    path: Path
    version: str
    sha256: str

    @classmethod
    def read(cls, path: Path) -> WheelInfo:
        """The wheel's version (from its METADATA) and sha256; WheelError for anything that is
        not an arch wheel."""
        try:
            with zipfile.ZipFile(path) as archive:
                names = [
                    name
                    for name in archive.namelist()
                    if name.count("/") == 1 and name.endswith(".dist-info/METADATA")
                ]
                if len(names) != 1:
                    raise WheelError(f"{path} is not a wheel (no single .dist-info/METADATA)")
                headers = HeaderParser().parsestr(archive.read(names[0]).decode("utf-8"))
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except (OSError, zipfile.BadZipFile, UnicodeDecodeError) as error:
            raise WheelError(f"cannot read the wheel {path}: {error}") from None
        if str(headers.get("Name", "")).lower() != "arch" or not headers.get("Version"):
            raise WheelError(f"{path} is not an arch wheel (Name: {headers.get('Name')})")
        return cls(path=path, version=str(headers["Version"]), sha256=digest)


def is_checkout(directory: Path = CHECKOUT_DIR) -> bool:
    return (directory / "pyproject.toml").is_file() and (directory / "setup.py").is_file()


def wheel_to_deliver(output_dir: Path, given: Path | None = None) -> Path:
    """The wheel a host or an AMI receives: `given`, else built from this checkout (an editable
    install or a source tree), else the installed arch packed again (a pip-installed archctl)."""
    if given is not None:
        if not given.is_file():
            raise WheelError(f"--wheel {given}: no such file")
        return given
    if is_checkout():
        return build_wheel(output_dir)
    try:
        return repack_installed(output_dir)
    except InstalledWheelError as error:
        raise WheelError(f"{error}; give the wheel with --wheel") from None


def build_wheel(output_dir: Path, checkout: Path = CHECKOUT_DIR) -> Path:
    """`pip wheel` of the checkout into `output_dir`; the wheel's path."""
    if not is_checkout(checkout):
        raise WheelError(
            f"{checkout} is not an ARCH checkout (no pyproject.toml/setup.py): give a wheel with "
            "--wheel, or run from a checkout"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    before = set(output_dir.glob("arch-*.whl"))
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--disable-pip-version-check",
                "--quiet",
                "--wheel-dir",
                str(output_dir),
                str(checkout),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
    except subprocess.CalledProcessError as error:
        raise WheelError(f"pip wheel {checkout} failed: {error.stderr.strip()[-2000:]}") from None
    except (OSError, subprocess.TimeoutExpired) as error:
        raise WheelError(f"pip wheel {checkout}: {error}") from None
    built = sorted(set(output_dir.glob("arch-*.whl")) - before) or sorted(
        output_dir.glob("arch-*.whl")
    )
    if not built:
        raise WheelError(f"pip wheel {checkout} produced no arch wheel in {output_dir}")
    return built[-1]
