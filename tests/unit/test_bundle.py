"""config.json handling: shared-filesystem mount and working directory, refused conflicts."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import pytest

from arch.container.bundle import Bundle, BundleError

if TYPE_CHECKING:
    from pathlib import Path


def make_bundle(tmp_path: Path, mounts: list[dict[str, object]]) -> Path:
    spec = {
        "process": {"cwd": "/", "env": ["ARCH_ENABLE=1"], "user": {"uid": 1000, "gid": 100}},
        "root": {"path": "rootfs"},
        "mounts": mounts,
    }
    (tmp_path / "config.json").write_text(json.dumps(spec))
    os.chmod(tmp_path / "config.json", 0o640)
    return tmp_path


def test_reads_env_rootfs_and_owner(tmp_path: Path) -> None:
    bundle = Bundle.load(str(make_bundle(tmp_path, [])))
    assert bundle.env == ["ARCH_ENABLE=1"]
    assert bundle.rootfs == str(tmp_path / "rootfs")
    assert bundle.process_owner() == (1000, 100)


def test_sharedfs_mount_and_cwd_are_added_and_saved(tmp_path: Path) -> None:
    bundle = Bundle.load(str(make_bundle(tmp_path, [{"destination": "/proc", "type": "proc"}])))
    changed = bundle.with_sharedfs_workdir("/efs/work/default/job", "/work")
    assert changed is not None
    changed.save()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["process"]["cwd"] == "/work"
    assert saved["mounts"][-1] == {
        "destination": "/work", "type": "bind", "source": "/efs/work/default/job",
        "options": ["rbind", "rw"],
    }  # fmt: skip
    assert os.stat(tmp_path / "config.json").st_mode & 0o777 == 0o640
    reloaded = Bundle.load(str(tmp_path))
    assert reloaded.with_sharedfs_workdir("/efs/work/default/job", "/work") is None


@pytest.mark.parametrize("destination", ["/work", "/work/", "/work/sub"])
def test_conflicting_mount_is_refused_config_unchanged(tmp_path: Path, destination: str) -> None:
    make_bundle(tmp_path, [{"destination": destination, "type": "bind", "source": "/data"}])
    before = (tmp_path / "config.json").read_bytes()
    with pytest.raises(BundleError, match="ARCH_WORKDIR_CONTAINER_PATH=/work conflicts"):
        Bundle.load(str(tmp_path)).with_sharedfs_workdir("/efs/work/default/job", "/work")
    assert (tmp_path / "config.json").read_bytes() == before


def test_a_mount_above_the_workdir_is_no_conflict(tmp_path: Path) -> None:
    make_bundle(tmp_path, [{"destination": "/data", "type": "bind", "source": "/srv"}])
    assert Bundle.load(str(tmp_path)).with_sharedfs_workdir("/efs/w", "/data/work") is not None


def test_unreadable_config_is_a_bundle_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(BundleError, match=r"config\.json"):
        Bundle.load(str(tmp_path))
