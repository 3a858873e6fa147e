"""arch.runc.binary_facts: versions and cpuinfo.img cached per binary and boot, and recomputed
whenever the binary changes or the cache cannot be used."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from arch.checkpoint.cpu_check import CpuCheck
from arch.checkpoint.image.metadata import (
    ContainerEssentials,
    CpuInfo,
    FilesystemInfo,
    ImageMetadata,
)
from arch.checkpoint.image.validation import ValidImage
from arch.runc import binary_facts
from tests.conftest import find_executable, unavailable


def fake_binary(directory: Path, version_line: str, counter: Path) -> Path:
    """A `--version` that prints `version_line` and counts its runs in `counter`."""
    script = directory / "tool"
    script.write_text(
        f"#!/bin/sh\necho run >> {counter}\necho '{version_line}'\necho 'second line'\n"
    )
    script.chmod(0o755)
    return script


def runs(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def test_version_is_read_once_then_cached(tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    tool = fake_binary(tmp_path, "tool version 1.2.3", counter)
    cache = tmp_path / "cache"
    assert binary_facts.version(str(tool), str(cache)) == "tool version 1.2.3"
    assert binary_facts.version(str(tool), str(cache)) == "tool version 1.2.3"
    assert runs(counter) == 1
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700


def test_a_replaced_binary_is_asked_again(tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    tool = fake_binary(tmp_path, "tool version 1.0", counter)
    cache = str(tmp_path / "cache")
    binary_facts.version(str(tool), cache)
    replacement = tmp_path / "new-tool"
    replacement.write_text(f"#!/bin/sh\necho run >> {counter}\necho 'tool version 2.0'\n")
    replacement.chmod(0o755)
    os.replace(replacement, tool)  # a package upgrade: a new inode at the same path
    assert binary_facts.version(str(tool), cache) == "tool version 2.0"
    assert runs(counter) == 2


def test_without_a_cache_dir_every_call_asks(tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    tool = fake_binary(tmp_path, "tool version 1", counter)
    binary_facts.version(str(tool), None)
    binary_facts.version(str(tool), None)
    assert runs(counter) == 2


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"identity": 1, "value": "x"}',
                                     b'{"identity": "?", "value": "***"}', b"[]"])
def test_a_damaged_cache_entry_is_ignored_and_rewritten(tmp_path: Path, content: bytes) -> None:
    counter = tmp_path / "runs"
    tool = fake_binary(tmp_path, "tool version 3", counter)
    cache = tmp_path / "cache"
    binary_facts.version(str(tool), str(cache))
    (entry,) = cache.iterdir()
    entry.write_bytes(content)
    assert binary_facts.version(str(tool), str(cache)) == "tool version 3"
    assert binary_facts.version(str(tool), str(cache)) == "tool version 3"
    assert runs(counter) == 2


def test_an_unusable_cache_dir_only_costs_the_cache(tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    tool = fake_binary(tmp_path, "tool version 4", counter)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    assert binary_facts.version(str(tool), str(not_a_dir / "cache")) == "tool version 4"
    assert binary_facts.version(str(tool), str(not_a_dir / "cache")) == "tool version 4"
    assert runs(counter) == 2


def test_a_failing_or_missing_binary_is_not_cached(tmp_path: Path) -> None:
    failing = tmp_path / "failing"
    failing.write_text("#!/bin/sh\necho 'usage: no --version'\nexit 2\n")
    failing.chmod(0o755)
    cache = tmp_path / "cache"
    assert binary_facts.version(str(failing), str(cache)) == "usage: no --version"
    assert not cache.exists()
    assert binary_facts.version(str(tmp_path / "absent"), str(cache)).startswith("unknown (")


@pytest.mark.root  # CRIU runs as root
def test_cpuinfo_image_is_criu_s_own_and_cached(tmp_path: Path) -> None:
    criu = find_executable("criu")
    if criu is None:
        unavailable("criu is not installed")
    started: list[int] = []
    cache = str(tmp_path / "cache")
    first = binary_facts.cpuinfo_image(criu, cache, started.append)
    assert len(started) == 1 and first
    dumped = tmp_path / "dumped"
    dumped.mkdir()
    subprocess.run([criu, "cpuinfo", "dump", "-D", str(dumped)], check=True,
                   capture_output=True)  # fmt: skip
    assert first == (dumped / "cpuinfo.img").read_bytes()
    assert binary_facts.cpuinfo_image(criu, cache, started.append) == first
    assert len(started) == 1  # the second answer came from the cache


def test_a_failing_cpuinfo_dump_raises(tmp_path: Path) -> None:
    failing = tmp_path / "criu"
    failing.write_text("#!/bin/sh\necho 'cannot dump cpuinfo' >&2\nexit 1\n")
    failing.chmod(0o755)
    with pytest.raises(binary_facts.CpuinfoDumpFailed, match="cannot dump cpuinfo"):
        binary_facts.cpuinfo_image(str(failing), str(tmp_path / "cache"), lambda pid: None)
    assert not (tmp_path / "cache").exists()


def image_with_cpuinfo(tmp_path: Path, cpuinfo: bytes) -> ValidImage:
    image_dir = tmp_path / "image"
    image_dir.mkdir(exist_ok=True)
    (image_dir / "cpuinfo.img").write_bytes(cpuinfo)
    metadata = ImageMetadata.new(
        namespace="default", container_id="c1", checkpoint_id="c1", runc_version="1",
        criu_version="4.2", filesystem=FilesystemInfo.none(), criu_files=(),
        container=ContainerEssentials(), cpu=CpuInfo("Test CPU", ("fpu", "sse2")),
    )  # fmt: skip
    return ValidImage(str(image_dir), metadata)


def counting_criu(tmp_path: Path, status: int) -> tuple[Path, Path]:
    counter = tmp_path / "criu-runs"
    criu = tmp_path / "criu"
    criu.write_text(f"#!/bin/sh\necho \"$@\" >> {counter}\necho 'cpu differs' >&2\nexit {status}\n")
    criu.chmod(0o755)
    return criu, counter


def test_an_accepted_cpuinfo_is_not_checked_again(tmp_path: Path) -> None:
    criu, counter = counting_criu(tmp_path, 0)
    cache = str(tmp_path / "cache")
    image = image_with_cpuinfo(tmp_path, b"cpu of kind A")
    assert CpuCheck.start(image, str(criu), None, cache).problems() == []
    assert CpuCheck.start(image, str(criu), None, cache).problems() == []
    assert runs(counter) == 1
    assert "cpuinfo check --cpu-cap=cpu -D" in counter.read_text()
    # Another cpuinfo.img (another kind of host) is asked about again.
    (tmp_path / "b").mkdir()
    other = image_with_cpuinfo(tmp_path / "b", b"cpu of kind B")
    assert CpuCheck.start(other, str(criu), None, cache).problems() == []
    assert runs(counter) == 2


def test_a_refused_cpuinfo_is_asked_about_every_time(tmp_path: Path) -> None:
    criu, counter = counting_criu(tmp_path, 1)
    cache = str(tmp_path / "cache")
    image = image_with_cpuinfo(tmp_path, b"cpu of kind C")
    for _ in range(2):
        (problem,) = CpuCheck.start(image, str(criu), None, cache).problems()
        assert "refuses this CPU" in problem and "cpu differs" in problem
    assert runs(counter) == 2
