"""The wheel of the arch package this archctl runs from, when it was installed from a wheel.

An installed distribution keeps what its wheel held (RECORD lists every file with its sha256),
so the wheel can be put together again: the same files, the same metadata, the same tag. Files
the installer added (INSTALLER, REQUESTED, direct_url.json, console scripts outside
site-packages, byte code) are left out, as they were not in the wheel. A file that no longer
matches RECORD's hash means the installation was changed after it was installed: refused, so
that an AMI never carries code its version does not name.

The archive is deterministic (sorted entries, fixed timestamps): the same installation gives the
same bytes, hence the same sha256 in every build manifest.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from email.parser import HeaderParser
from importlib import metadata
from pathlib import Path, PurePosixPath

DISTRIBUTION = "arch"
# Not in a wheel: written by the installer (PEP 376, PEP 610, PEP 627).
INSTALLER_FILES = frozenset({"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"})
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry


class InstalledWheelError(Exception):
    """The installed arch cannot be packed into a wheel again (the message says why)."""


def repack_installed(output_dir: Path, distribution: str = DISTRIBUTION) -> Path:
    """Write the installed distribution's wheel into `output_dir`; its path."""
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise InstalledWheelError(f"the {distribution} distribution is not installed") from None
    if dist.files is None:
        raise InstalledWheelError(f"the installed {distribution} has no RECORD to rebuild from")
    info_dir = _dist_info_dir(dist)
    entries = _wheel_entries(dist, info_dir)
    tag = _wheel_tag(dist)
    name = f"{distribution}-{dist.version}-{tag}.whl"
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / name
    partial = output_dir / f".{name}.partial"
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        record_lines = []
        for archive_name, data, mode in entries:
            _write(archive, archive_name, data, mode)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record_lines.append(f"{archive_name},sha256={digest.decode()},{len(data)}")
        record_name = f"{info_dir}/RECORD"
        record_lines.append(f"{record_name},,")
        _write(archive, record_name, ("\n".join(record_lines) + "\n").encode(), 0o644)
    partial.replace(target)
    return target


def _dist_info_dir(dist: metadata.Distribution) -> str:
    assert dist.files is not None
    for path in dist.files:
        parts = path.parts
        if len(parts) == 2 and parts[1] == "METADATA" and parts[0].endswith(".dist-info"):
            return parts[0]
    raise InstalledWheelError("the installed arch has no .dist-info/METADATA in its RECORD")


def _wheel_entries(dist: metadata.Distribution, info_dir: str) -> list[tuple[str, bytes, int]]:
    """(name in the wheel, contents, mode) of every file the wheel held, checked against
    RECORD; the mode keeps the executable bit (the role's scripts)."""
    assert dist.files is not None
    entries: list[tuple[str, bytes, int]] = []
    for path in dist.files:
        posix = PurePosixPath(str(path))
        if _installer_made(posix, info_dir):
            continue
        location = Path(str(dist.locate_file(path)))
        try:
            data = location.read_bytes()
            mode = 0o755 if location.stat().st_mode & 0o111 else 0o644
        except OSError as error:
            raise InstalledWheelError(
                f"cannot read {location}, listed in the installed arch's RECORD: "
                f"{error.strerror or error}"
            ) from None
        _check_hash(path, data, location)
        entries.append((str(posix), data, mode))
    return sorted(entries)


def _installer_made(path: PurePosixPath, info_dir: str) -> bool:
    if path.parts[0] == ".." or "__pycache__" in path.parts or path.suffix == ".pyc":
        return True  # console scripts (bin/), byte code
    return path.parent == PurePosixPath(info_dir) and path.name in INSTALLER_FILES


def _check_hash(path: metadata.PackagePath, data: bytes, location: Path) -> None:
    if path.hash is None:
        raise InstalledWheelError(f"RECORD gives no hash for {path}: cannot vouch for {location}")
    if path.hash.mode != "sha256":
        raise InstalledWheelError(f"RECORD hashes {path} with {path.hash.mode}, not sha256")
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    if digest != path.hash.value:
        raise InstalledWheelError(
            f"{location} was changed after arch was installed (its sha256 differs from RECORD): "
            "reinstall arch, or give the wheel to use"
        )


def _wheel_tag(dist: metadata.Distribution) -> str:
    """The tag the wheel was built with (WHEEL's `Tag:`), e.g. py3-none-any."""
    text = dist.read_text("WHEEL")
    if text is None:
        raise InstalledWheelError("the installed arch has no .dist-info/WHEEL")
    tags = HeaderParser().parsestr(text).get_all("Tag") or []
    if len(tags) != 1:
        raise InstalledWheelError(f"the installed arch's WHEEL names {len(tags)} tags, not one")
    return str(tags[0]).strip()


def _write(archive: zipfile.ZipFile, name: str, data: bytes, mode: int) -> None:
    info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (0o100000 | mode) << 16  # a regular file with this mode
    archive.writestr(info, data)
