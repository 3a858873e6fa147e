"""`archctl bundle`: one offline archive that installs ARCH on an instance without the internet.

The archive is an uncompressed tar (wheels and the CRIU source are compressed already) of one
directory, `arch-bundle/`:

    SHA256SUMS        every other file, in `sha256sum -c` format (the userdata checks it)
    manifest.json     format, ARCH version, the wheel, the interpreters, the CRIU source
    arch-V-....whl    the arch wheel (it carries the role and the installer)
    wheels/           binary wheels of every dependency of arch and of the installer's
                      ansible-core, for each named interpreter (manylinux up to glibc 2.34,
                      the oldest glibc of the supported systems: Amazon Linux 2023)
    criu/             the pinned CRIU release the role builds where the distribution's fails

pip evaluates environment markers (`tomli; python_version < "3.11"`, ansible-core's own
`importlib_resources; python_version < "3.10"`) with the interpreter it runs under, also when
`--python-version` names another: so each interpreter's wheels are resolved by that interpreter
itself, found on this machine (PATH, /usr/bin, pyenv).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from arch import __version__
from arch.delivery.resources import ansible_dir
from arch.delivery.wheel import build_wheel

FORMAT = 1
TOP = "arch-bundle"
MANIFEST = "manifest.json"
CHECKSUMS = "SHA256SUMS"
WHEELS = "wheels"
CRIU_DIR = "criu"
PYTHON_VERSION = re.compile(r"^3\.(9|1[0-9])$")
# manylinux_2_17 (manylinux2014) up to 2_34: Amazon Linux 2023's glibc.
GLIBC_MINORS = range(17, 35)
PIP_TIMEOUT = 1800
DOWNLOAD_TIMEOUT = 600
_REQUIREMENT = re.compile(
    r"^(?P<requirement>[A-Za-z0-9_.\-\[\]]+\s*[=<>!~].*?)\s*(;\s*(?P<marker>.+))?$"
)
_MARKER_CLAUSE = re.compile(
    r"""^python_version\s*(?P<op><=|>=|==|!=|<|>)\s*["'](?P<version>[0-9.]+)["']$"""
)


class BundleError(Exception):
    """The bundle cannot be made as asked."""


@dataclass(frozen=True)
class CriuSource:
    version: str
    url: str
    sha256: str

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class BundlePlan:
    output: Path
    pythons: tuple[str, ...] = ("3.9", "3.11")
    wheel: Path | None = None  # None: build it from this checkout
    criu_archive: Path | None = None  # None: download the role's pinned release
    include_criu: bool = True
    machine: str = field(default_factory=lambda: os.uname().machine)


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def marker_holds(marker: str, python: str) -> bool:
    """A requirement marker of ansible/requirements.txt: `python_version OP "X.Y"` clauses
    joined by `and` (the only form that file uses; anything else is an error)."""
    for clause in marker.split(" and "):
        match = _MARKER_CLAUSE.match(clause.strip())
        if match is None:
            raise BundleError(f"cannot evaluate the marker {clause.strip()!r}")
        left, right = _version_tuple(python), _version_tuple(match["version"])
        holds = {
            "<": left < right,
            "<=": left <= right,
            ">": left > right,
            ">=": left >= right,
            "==": left == right,
            "!=": left != right,
        }[match["op"]]
        if not holds:
            return False
    return True


def installer_requirements(requirements_text: str, python: str) -> list[str]:
    """What ansible/install.sh installs under `python`: the lines whose marker holds (none
    under a Python too old for ansible-core's controller: there only arch's venv runs)."""
    wanted = []
    for raw in requirements_text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _REQUIREMENT.match(line)
        if match is None:
            raise BundleError(f"cannot read the requirement {line!r}")
        if match["marker"] is None or marker_holds(match["marker"], python):
            wanted.append(match["requirement"].strip())
    return wanted


def criu_source(defaults_text: str) -> CriuSource:
    """The role's pinned CRIU release (defaults/main.yml: version, URL, sha256)."""
    values = {}
    for name in ("arch_criu_version", "arch_criu_archive_sha256", "arch_criu_url"):
        match = re.search(rf"^{name}:\s*\"?([^\"\n]+)\"?\s*$", defaults_text, re.M)
        if match is None:
            raise BundleError(f"the role's defaults have no {name}")
        values[name] = match.group(1).strip()
    version = values["arch_criu_version"]
    url = values["arch_criu_url"].replace("{{ arch_criu_version }}", version)
    if "{{" in url:
        raise BundleError(f"cannot resolve arch_criu_url {url!r}")
    return CriuSource(version, url, values["arch_criu_archive_sha256"])


def find_interpreter(version: str) -> Path:
    """A CPython `version` on this machine: /usr/bin, /usr/local/bin, pyenv, then PATH."""
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [Path(f"/usr/bin/python{version}"), Path(f"/usr/local/bin/python{version}")]
    candidates += [
        Path(found)
        for found in sorted(
            glob.glob(str(pyenv_root / "versions" / f"{version}.*" / "bin" / "python"))
        )
    ][::-1]
    on_path = shutil.which(f"python{version}")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and _reports_version(candidate) == version:
            return candidate
    raise BundleError(
        f"no Python {version} on this machine (looked in /usr/bin, /usr/local/bin, "
        f"{pyenv_root}/versions, PATH): pip resolves each interpreter's wheels with that "
        "interpreter"
    )


def _reports_version(interpreter: Path) -> str:
    try:
        completed = subprocess.run(
            [str(interpreter), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return completed.stdout.strip() if completed.returncode == 0 else ""


def platform_tags(machine: str) -> list[str]:
    return [f"manylinux_2_{minor}_{machine}" for minor in GLIBC_MINORS] + [
        f"manylinux2014_{machine}"
    ]


def download_wheels(
    interpreter: Path, requirements: Sequence[str], destination: Path, machine: str
) -> None:
    """`pip download` of binary wheels for `requirements` (and their dependencies)."""
    argv = [
        str(interpreter),
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
        "--only-binary=:all:",
        "--dest",
        str(destination),
    ]
    for tag in platform_tags(machine):
        argv += ["--platform", tag]
    try:
        completed = subprocess.run(
            [*argv, *requirements],
            capture_output=True,
            text=True,
            timeout=PIP_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BundleError(f"pip download under {interpreter}: {error}") from None
    if completed.returncode != 0:
        detail = (completed.stderr or completed.stdout).strip()[-3000:]
        raise BundleError(f"pip download under {interpreter} failed: {detail}")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_criu(source: CriuSource, destination: Path) -> None:
    try:
        with (
            urllib.request.urlopen(source.url, timeout=DOWNLOAD_TIMEOUT) as response,
            open(destination, "wb") as output,
        ):
            shutil.copyfileobj(response, output)
    except OSError as error:
        raise BundleError(
            f"cannot download {source.url}: {error} (give the archive with --criu-archive)"
        ) from None


def _stage_criu(plan: BundlePlan, source: CriuSource, directory: Path) -> str:
    directory.mkdir()
    target = directory / (plan.criu_archive.name if plan.criu_archive else source.file_name)
    if plan.criu_archive is not None:
        shutil.copyfile(plan.criu_archive, target)
    else:
        fetch_criu(source, target)
    actual = sha256_of(target)
    if actual != source.sha256:
        raise BundleError(
            f"{target.name} has sha256 {actual}, the role pins CRIU {source.version} as "
            f"{source.sha256}"
        )
    return target.name


def _write_checksums(top: Path) -> None:
    lines = [
        f"{sha256_of(path)}  {path.relative_to(top).as_posix()}"
        for path in sorted(top.rglob("*"))
        if path.is_file() and path.name != CHECKSUMS
    ]
    (top / CHECKSUMS).write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def _write_archive(top: Path, output: Path) -> None:
    partial = output.with_name(f".{output.name}.part")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as archive:
        archive.add(top, arcname=TOP, filter=_normalised)
    os.replace(partial, output)


def _normalised(member: tarfile.TarInfo) -> tarfile.TarInfo:
    member.uid = member.gid = 0
    member.uname = member.gname = "root"
    member.mode = 0o755 if member.isdir() else 0o644
    return member


def make_bundle(plan: BundlePlan) -> dict[str, object]:
    """Write the bundle to plan.output; its manifest."""
    for python in plan.pythons:
        if PYTHON_VERSION.match(python) is None:
            raise BundleError(f"--python {python!r}: give a version like 3.9 or 3.11")
    interpreters = {python: find_interpreter(python) for python in plan.pythons}
    requirements_text = (ansible_dir() / "requirements.txt").read_text(encoding="utf-8")
    source = criu_source(
        (ansible_dir() / "roles" / "arch" / "defaults" / "main.yml").read_text(encoding="utf-8")
    )
    with tempfile.TemporaryDirectory(prefix="arch-bundle-") as scratch:
        top = Path(scratch) / TOP
        top.mkdir()
        wheel = plan.wheel or build_wheel(Path(scratch) / "built")
        shutil.copyfile(wheel, top / wheel.name)
        wheels = top / WHEELS
        wheels.mkdir()
        installer: dict[str, list[str]] = {}
        for python, interpreter in interpreters.items():
            installer[python] = installer_requirements(requirements_text, python)
            download_wheels(
                interpreter, [str(top / wheel.name), *installer[python]], wheels, plan.machine
            )
        (wheels / wheel.name).unlink(missing_ok=True)  # the wheel sits at the top
        criu_name = _stage_criu(plan, source, top / CRIU_DIR) if plan.include_criu else ""
        manifest: dict[str, object] = {
            "format": FORMAT,
            "arch_version": __version__,
            "wheel": wheel.name,
            "machine": plan.machine,
            "pythons": list(plan.pythons),
            "installer": installer,
            "wheels": sorted(path.name for path in wheels.iterdir()),
            "criu": {
                "version": source.version,
                "archive": f"{CRIU_DIR}/{criu_name}",
                "sha256": source.sha256,
            }
            if criu_name
            else None,
        }
        (top / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _write_checksums(top)
        plan.output.parent.mkdir(parents=True, exist_ok=True)
        _write_archive(top, plan.output)
    return manifest
