"""The shared work directory made at create: beneath its allowed root, following no symlink."""

from __future__ import annotations

import json
import os
import stat
from typing import TYPE_CHECKING

import pytest

from arch.config import HostConfig
from arch.container.bundle import Bundle
from arch.container.identity import ImageLocation, ImagePathError, image_location
from arch.shim.sharedfs import with_sharedfs_workdir

if TYPE_CHECKING:
    from pathlib import Path

OWNER = (4321, 4322)


@pytest.fixture
def bundle(tmp_path: Path) -> Bundle:
    directory = tmp_path / "bundle"
    directory.mkdir()
    spec = {"process": {"args": ["sh"], "cwd": "/", "user": {"uid": OWNER[0], "gid": OWNER[1]}}}
    (directory / "config.json").write_text(json.dumps(spec))
    return Bundle.load(str(directory))


@pytest.fixture
def location(tmp_path: Path) -> ImageLocation:
    allowed = (tmp_path / "allowed").resolve()
    (allowed / "efs").mkdir(parents=True)
    config = HostConfig("/nonexistent/arch.toml", checkpoint_root=str(allowed / "ckpt"),
                        allowed_roots=(str(allowed),))
    env = [f"ARCH_SHAREDFS_HOST_PATH={allowed}/efs", "ARCH_WORKDIR_CONTAINER_PATH=/work"]
    return image_location(env, "ns", "job", config)


@pytest.mark.root  # chown to another user
def test_makes_the_work_directory_for_the_container_user(
    bundle: Bundle, location: ImageLocation
) -> None:
    changed = with_sharedfs_workdir(bundle, location, "/work")
    workdir = str(location.sharedfs_workdir)
    info = os.stat(workdir)
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o700, *OWNER)
    assert changed.spec["process"]["cwd"] == "/work"
    assert {"destination": "/work", "type": "bind", "source": workdir,
            "options": ["rbind", "rw"]} in changed.spec["mounts"]


@pytest.mark.parametrize("swapped", ["efs/work", "efs/work/ns", "efs/work/ns/job"])
def test_refuses_a_directory_swapped_for_a_symlink_after_the_location_was_decided(
    bundle: Bundle, location: ImageLocation, tmp_path: Path, swapped: str
) -> None:
    outside = tmp_path / "outside"
    (outside / "ns" / "job").mkdir(parents=True)
    link = os.path.join(location.root, swapped)
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(outside, link)

    with pytest.raises(ImagePathError, match=r"shared work directory .* symlink"):
        with_sharedfs_workdir(bundle, location, "/work")

    assert sorted(str(p.relative_to(outside)) for p in outside.rglob("*")) == ["ns", "ns/job"]
    assert os.stat(outside / "ns" / "job").st_uid == 0
    assert Bundle.load(bundle.path).mounts == []
