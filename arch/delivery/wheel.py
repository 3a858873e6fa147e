"""Build the arch wheel from a checkout (what the userdata and `archctl remote` deliver)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from arch.delivery.resources import CHECKOUT_DIR


class WheelError(Exception):
    """No checkout to build from, or pip could not build the wheel."""


def build_wheel(output_dir: Path, checkout: Path = CHECKOUT_DIR) -> Path:
    """`pip wheel` of the checkout into `output_dir`; the wheel's path."""
    if not (checkout / "pyproject.toml").is_file() or not (checkout / "setup.py").is_file():
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
