from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import stat
import time
from typing import TYPE_CHECKING, Any

import pytest

from arch.checkpoint.image import validation
from arch.checkpoint.image.errors import ImageMissing, InvalidImage
from arch.checkpoint.image.job_identity import JobIdentity
from arch.checkpoint.image.metadata import (
    CRIU_DUMP_LOG,
    METADATA_FILE,
    ROOTFS_TAR,
    ContainerEssentials,
    CpuInfo,
    FilesystemInfo,
    ImageMetadata,
    MountInfo,
    host_cpu_summary,
    parse_criu_version,
)
from arch.checkpoint.image.validation import read_metadata, validate, verify_tar_checksum
from arch.checkpoint.storage import store
from arch.checkpoint.storage.beneath import NotBeneath, opened_root
from arch.checkpoint.storage.store import (
    ImageStaging,
    LeftoverAction,
    PublishError,
    cleanup_stale,
    recover,
    remove,
)
from arch.container import oci_spec

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

DUMP_LOG_OK = (
    "(00.000000) Version: 4.2 (gitid v4.2)\n"
    "(00.167430) Unfreezing tasks into 2\n"
    "(00.168857) Writing stats\n"
    "(00.170276) Dumping finished successfully\n"
)
CRIU_FILES = {
    "inventory.img": b"inventory",
    "core-1.img": b"core" * 100,
    "pages-1.img": b"\0" * 4096,
    "descriptors.json": b'["/dev/null","pipe:[1]","pipe:[2]"]',
    "tmpfs-dev-47.tar.gz.img": b"tmpfs",
    CRIU_DUMP_LOG: DUMP_LOG_OK.encode(),
}
OCI_CONFIG = {
    "process": {"args": ["sh", "-c", "loop"], "env": ["PATH=/bin", "ARCH_ENABLE=1"], "cwd": "/w"},
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/data", "source": "/host/data", "options": ["rbind"]},
    ],
}


def fill_staging(
    staging: ImageStaging,
    container_id: str = "new",
    tar: bytes | None = b"tar bytes",
    dump_log: str = DUMP_LOG_OK,
    criu_version: str = "4.2",
    generation: int = 0,
) -> ImageMetadata:
    """Write what runc/CRIU and the layer module would, and the matching metadata."""
    for name, data in CRIU_FILES.items():
        (staging_path(staging) / name).write_bytes(data)
    (staging_path(staging) / CRIU_DUMP_LOG).write_text(dump_log)
    if tar is None:
        filesystem = FilesystemInfo.none()
    else:
        with open(staging.create_tar(), "wb") as tar_file:
            tar_file.write(tar)
        filesystem = FilesystemInfo.overlay(hashlib.sha256(tar).hexdigest(), len(tar))
    parent = os.path.dirname(staging.relative)
    return ImageMetadata.new(
        namespace=os.path.basename(parent),
        container_id=container_id,
        checkpoint_id=os.path.basename(staging.relative),
        runc_version="1.1.5",
        criu_version=criu_version,
        filesystem=filesystem,
        criu_files=staging.describe_criu_files(),
        container=ContainerEssentials.from_oci_config(OCI_CONFIG),
        cpu=CpuInfo("Test CPU", ("fpu", "sse2")),
        identity=JobIdentity.of(
            oci_spec.decode(json.dumps(OCI_CONFIG).encode()).spec, "layers-sha256:" + "0" * 64
        ),
        lineage="lineage-1",
        generation=generation,
    )


def staging_path(staging: ImageStaging) -> Path:
    from pathlib import Path

    return Path(staging.path)


def beneath_slash(path: Path | str) -> str:
    """`path` relative to "/", the root these tests resolve image paths beneath."""
    return str(path).lstrip("/")


def begin(image_dir: Path | str) -> ImageStaging:
    with opened_root("/") as root_fd:
        return ImageStaging.begin(root_fd, beneath_slash(image_dir))


def remove_at(image_dir: Path | str) -> bool:
    with opened_root("/") as root_fd:
        return remove(root_fd, beneath_slash(image_dir))


def recover_at(image_dir: Path | str) -> bool:
    with opened_root("/") as root_fd:
        return recover(root_fd, beneath_slash(image_dir))


def cleanup_at(parent: Path | str, **kwargs: Any) -> list[LeftoverAction]:
    with opened_root("/") as root_fd:
        return cleanup_stale(root_fd, beneath_slash(parent), **kwargs)


def publish_image(image_dir: Path, container_id: str = "new", **kwargs: Any) -> ImageMetadata:
    with begin(image_dir) as staging:
        metadata = fill_staging(staging, container_id, **kwargs)
        staging.publish(metadata)
    return metadata


def rewrite_metadata(image_dir: Path, change: Callable[[dict[str, Any]], None]) -> None:
    document = json.loads((image_dir / METADATA_FILE).read_text())
    change(document)
    (image_dir / METADATA_FILE).write_text(json.dumps(document))


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    return tmp_path / "checkpoint" / "default" / "job-1"


def leftovers(parent: Path) -> list[str]:
    return sorted(name for name in os.listdir(parent) if name.startswith("."))


# --- publication ---------------------------------------------------------------------------


def test_publish_then_validate(image_dir: Path) -> None:
    metadata = publish_image(image_dir)
    valid = validate(str(image_dir), criu_version="Version: 4.2\nGitID: v4.2")
    assert valid.metadata == metadata
    assert valid.tar_path == str(image_dir / ROOTFS_TAR)
    verify_tar_checksum(valid)
    assert sorted(os.listdir(image_dir)) == sorted([*CRIU_FILES, ROOTFS_TAR, METADATA_FILE])
    assert leftovers(image_dir.parent) == []


def test_published_image_is_private(image_dir: Path) -> None:
    publish_image(image_dir)
    for directory in (image_dir.parent.parent, image_dir.parent, image_dir):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for entry in image_dir.iterdir():
        info = entry.stat()
        assert stat.S_IMODE(info.st_mode) == 0o600
        if os.geteuid() == 0:
            assert (info.st_uid, info.st_gid) == (0, 0)


def test_files_sealed_early_and_added_files_are_private_after_publication(
    image_dir: Path,
) -> None:
    # As a checkpoint does: the dump sealed while the capture still runs, then cpuinfo.img.
    with begin(image_dir) as staging:
        for name, data in CRIU_FILES.items():
            (staging_path(staging) / name).write_bytes(data)
            (staging_path(staging) / name).chmod(0o644)
        (staging_path(staging) / CRIU_DUMP_LOG).write_text(DUMP_LOG_OK)
        staging.seal_dump()
        assert {entry.name: stat.S_IMODE(entry.stat().st_mode)
                for entry in staging_path(staging).iterdir()
                if entry.name in CRIU_FILES} == dict.fromkeys(CRIU_FILES, 0o600)  # fmt: skip
        staging.add_file("cpuinfo.img", b"cpu")
        metadata = fill_staging(staging)
        staging.publish(metadata)
    assert (image_dir / "cpuinfo.img").read_bytes() == b"cpu"
    assert {stat.S_IMODE(entry.stat().st_mode) for entry in image_dir.iterdir()} == {0o600}
    validate(str(image_dir), criu_version="Version: 4.2")


def test_metadata_json_round_trip(image_dir: Path) -> None:
    metadata = publish_image(image_dir)
    document = json.loads((image_dir / METADATA_FILE).read_text())
    assert document["format_version"] == 2
    assert document["filesystem"] == {
        "mode": "overlay", "tar": ROOTFS_TAR, "size": 9,
        "sha256": hashlib.sha256(b"tar bytes").hexdigest(),
    }
    assert {"name": "inventory.img", "size": 9} in document["process"]["criu_files"]
    assert document["container"]["mounts"][1] == {
        "destination": "/data", "source": "/host/data", "type": None,
    }
    assert document["kernel"] == os.uname().release
    assert document["created"].endswith("Z")
    assert ImageMetadata.from_json(metadata.to_json()) == metadata
    assert read_metadata(str(image_dir)) == metadata


def test_image_without_filesystem_capture(image_dir: Path) -> None:
    publish_image(image_dir, tar=None)
    valid = validate(str(image_dir))
    assert valid.metadata.filesystem == FilesystemInfo.none()
    assert valid.tar_path is None
    verify_tar_checksum(valid)


def test_abort_and_context_exit_remove_staging(image_dir: Path) -> None:
    staging = begin(image_dir)
    fill_staging(staging)
    assert staging.name.startswith(".staging-job-1-")
    assert leftovers(image_dir.parent) == [staging.name]
    staging.abort()
    assert leftovers(image_dir.parent) == []
    with pytest.raises(RuntimeError), begin(image_dir) as staging:
        fill_staging(staging)
        raise RuntimeError("checkpoint failed")
    assert leftovers(image_dir.parent) == []
    assert not image_dir.exists()


def test_publish_refuses_an_invalid_staging(image_dir: Path) -> None:
    with begin(image_dir) as staging:
        metadata = fill_staging(staging, dump_log="(00.1) Error (criu/cr-dump.c:1): boom\n")
        with pytest.raises(InvalidImage, match="does not end with"):
            staging.publish(metadata)
    assert not image_dir.exists()
    assert leftovers(image_dir.parent) == []


def test_publish_twice_is_refused(image_dir: Path) -> None:
    with begin(image_dir) as staging:
        metadata = fill_staging(staging)
        staging.publish(metadata)
        with pytest.raises(PublishError, match="already"):
            staging.publish(metadata)


def test_begin_refuses_a_symlinked_parent(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "ns").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(NotBeneath, match="symlink"):
        begin(tmp_path / "ns" / "job")
    assert os.listdir(tmp_path / "elsewhere") == []


@pytest.mark.parametrize("exchange", [True, False], ids=["rename-exchange", "rename-aside"])
def test_publish_replaces_an_existing_image(
    image_dir: Path, exchange: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not exchange:
        monkeypatch.setattr(store, "_rename_exchange", lambda *args: False)
    publish_image(image_dir, "old")
    publish_image(image_dir, "new")
    assert validate(str(image_dir)).metadata.container_id == "new"
    assert leftovers(image_dir.parent) == []


def test_publish_over_a_symlink_replaces_the_link_only(tmp_path: Path, image_dir: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("x")
    image_dir.parent.mkdir(parents=True)
    image_dir.symlink_to(victim)
    publish_image(image_dir)
    assert not image_dir.is_symlink()
    assert validate(str(image_dir)).metadata.container_id == "new"
    assert (victim / "keep").read_text() == "x"


# --- crash windows of publish ----------------------------------------------------------------


def _crash_during_publish(image_dir: str, exchange: bool, crash_at: str) -> None:
    """Child process: publish "new" over "old" and die (os._exit, no cleanup) at `crash_at`."""
    real_rename = os.rename
    real_exchange = store._rename_exchange
    renames = []

    def rename(*args: Any, **kwargs: Any) -> None:
        renames.append(args)
        if crash_at == f"rename-{len(renames)}":
            os._exit(0)
        real_rename(*args, **kwargs)

    def exchange_then(*args: Any) -> bool:
        if not exchange:
            return False
        if crash_at == "before-exchange":
            os._exit(0)
        result = real_exchange(*args)
        if crash_at == "after-exchange":
            os._exit(0)
        return result

    def remove_entry(*args: Any) -> None:
        os._exit(0)

    os.rename = rename
    store._rename_exchange = exchange_then  # type: ignore[assignment]
    if crash_at == "before-remove-old":
        store._remove_entry = remove_entry  # type: ignore[assignment]
    staging = begin(image_dir)
    staging.publish(fill_staging(staging, "new"))
    os._exit(3)  # the crash point was never reached


# rename-1 is the plain rename that fails (the final path is taken), rename-2 moves the old
# image aside, rename-3 moves the new one in.
CRASH_POINTS = [
    (True, "before-exchange", "old"),
    (True, "after-exchange", "new"),
    (False, "rename-2", "old"),
    (False, "rename-3", None),  # the final path is empty: recover() brings the old image back
    (False, "before-remove-old", "new"),
]


@pytest.mark.parametrize(("exchange", "crash_at", "at_final"), CRASH_POINTS)
def test_crash_during_publish_leaves_a_complete_image(
    image_dir: Path, exchange: bool, crash_at: str, at_final: str | None
) -> None:
    publish_image(image_dir, "old")
    child = multiprocessing.get_context("fork").Process(
        target=_crash_during_publish, args=(str(image_dir), exchange, crash_at)
    )
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0, "the child did not stop at the crash point"

    garbage = leftovers(image_dir.parent)
    assert garbage, "a crash between steps leaves its staging or old directory behind"
    assert all(name.startswith((".staging-job-1-", ".old-job-1-")) for name in garbage)
    if at_final is None:
        assert not os.path.lexists(image_dir)
        assert recover_at(image_dir)
        at_final = "old"
    else:
        assert not recover_at(image_dir)  # an image is in place: nothing to recover
    assert validate(str(image_dir)).metadata.container_id == at_final

    removed = cleanup_at(image_dir.parent, min_age=0)
    assert {action.action for action in removed} <= {"removed"}
    assert leftovers(image_dir.parent) == []
    assert validate(str(image_dir)).metadata.container_id == at_final


# --- cleanup_stale, recover, remove ----------------------------------------------------------


def test_cleanup_skips_a_staging_dir_in_use(image_dir: Path) -> None:
    with begin(image_dir) as staging:
        fill_staging(staging)
        assert cleanup_at(image_dir.parent, min_age=0) == []
        assert os.path.isdir(staging.path)
    assert leftovers(image_dir.parent) == []


def test_cleanup_waits_for_leftovers_to_age(image_dir: Path) -> None:
    publish_image(image_dir)
    crashed = image_dir.parent / ".staging-job-1-0123456789ab"
    crashed.mkdir()
    (crashed / "pages-1.img").write_bytes(b"x")
    parent = str(image_dir.parent)
    assert cleanup_at(parent) == []
    assert cleanup_at(parent, now=time.time() + 2 * store.STALE_AFTER_SECONDS) == [
        LeftoverAction(crashed.name, "removed")
    ]
    assert validate(str(image_dir)).metadata.container_id == "new"


def test_cleanup_keeps_unrelated_entries_and_images_with_odd_ids(tmp_path: Path) -> None:
    parent = tmp_path / "ns"
    odd_id = ".staging-x-0123456789ab"  # a legal checkpoint id that looks like a leftover
    publish_image(parent / odd_id)
    (parent / ".staging-no-random-suffix").mkdir()
    (parent / "notes.txt").write_text("")
    old_file = parent / ".old-job-abcdefabcdef"
    old_file.write_text("")
    assert cleanup_at(parent, min_age=0) == [LeftoverAction(old_file.name, "removed")]
    assert validate(str(parent / odd_id)).metadata.checkpoint_id == odd_id
    assert sorted(os.listdir(parent)) == sorted(
        [odd_id, ".staging-no-random-suffix", "notes.txt"]
    )


def test_cleanup_of_missing_parent(tmp_path: Path) -> None:
    assert cleanup_at(tmp_path / "absent") == []


def test_recover_ignores_incomplete_old_dirs(image_dir: Path) -> None:
    publish_image(image_dir, "old")
    aside = image_dir.parent / ".old-job-1-0123456789ab"
    os.rename(image_dir, aside)
    (aside / "core-1.img").write_bytes(b"truncated")
    assert not recover_at(image_dir)
    assert not image_dir.exists()


def test_remove_deletes_without_following_symlinks(
    tmp_path: Path, image_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "UNLEASED_GRACE_SECONDS", 0.0)  # the staging is abandoned
    publish_image(image_dir)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    (image_dir / "link").symlink_to(outside)
    (image_dir.parent / ".staging-job-1-0123456789ab").mkdir()
    assert remove_at(image_dir)
    assert not os.path.lexists(image_dir)
    assert (outside / "precious").read_text() == "keep"
    assert leftovers(image_dir.parent) == []
    assert not remove_at(image_dir)
    assert not remove_at(tmp_path / "no" / "such" / "image")


def test_remove_of_a_symlinked_image_removes_the_link(tmp_path: Path, image_dir: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    image_dir.parent.mkdir(parents=True)
    image_dir.symlink_to(outside)
    assert remove_at(image_dir)
    assert not os.path.lexists(image_dir)
    assert (outside / "precious").read_text() == "keep"


# --- validation failures --------------------------------------------------------------------


def test_missing_image(image_dir: Path) -> None:
    with pytest.raises(ImageMissing, match="no image"):
        validate(str(image_dir))


def test_missing_metadata(image_dir: Path) -> None:
    publish_image(image_dir)
    (image_dir / METADATA_FILE).unlink()
    with pytest.raises(InvalidImage, match=r"metadata\.json is missing"):
        validate(str(image_dir))


def test_truncated_criu_file(image_dir: Path) -> None:
    publish_image(image_dir)
    with open(image_dir / "pages-1.img", "r+b") as pages:
        pages.truncate(100)
    with pytest.raises(InvalidImage, match=r"pages-1.img has 100 bytes.*says 4096"):
        validate(str(image_dir))


def test_missing_criu_file(image_dir: Path) -> None:
    publish_image(image_dir)
    (image_dir / "core-1.img").unlink()
    with pytest.raises(InvalidImage, match=r"core-1\.img is missing"):
        validate(str(image_dir))


def test_bad_tar_size(image_dir: Path) -> None:
    publish_image(image_dir)
    with open(image_dir / ROOTFS_TAR, "ab") as tar:
        tar.write(b"more")
    with pytest.raises(InvalidImage, match=f"{ROOTFS_TAR} has 13 bytes"):
        validate(str(image_dir))


def test_missing_tar(image_dir: Path) -> None:
    publish_image(image_dir)
    (image_dir / ROOTFS_TAR).unlink()
    with pytest.raises(InvalidImage, match=f"{ROOTFS_TAR} is missing"):
        validate(str(image_dir))


def test_tar_checksum_mismatch(image_dir: Path) -> None:
    publish_image(image_dir)
    (image_dir / ROOTFS_TAR).write_bytes(b"tar bytez")  # same size
    valid = validate(str(image_dir))
    with pytest.raises(InvalidImage, match="sha256"):
        verify_tar_checksum(valid)


@pytest.mark.parametrize(
    ("log", "message"),
    [
        ("(00.1) Dumping tasks\n", "does not end with"),
        ("", "does not end with"),
        (DUMP_LOG_OK + "(00.2) Error (criu/cr-dump.c:2): late failure\n", "error after success"),
        ("(00.1) Error (criu/x.c:1): boom\n(00.2) Dumping FAILED.\n", "does not end with"),
    ],
)
def test_dump_log_without_success(image_dir: Path, log: str, message: str) -> None:
    publish_image(image_dir)
    (image_dir / CRIU_DUMP_LOG).write_text(log)
    rewrite_metadata(image_dir, lambda document: _set_size(document, CRIU_DUMP_LOG, len(log)))
    with pytest.raises(InvalidImage, match=message):
        validate(str(image_dir))


def test_dump_log_success_in_a_long_log(image_dir: Path) -> None:
    long_log = "(00.0) x\n" * 20000 + DUMP_LOG_OK + "(00.3) Running post-dump scripts\n"
    publish_image(image_dir, dump_log=long_log)
    validate(str(image_dir))


def _set_size(document: dict[str, Any], name: str, size: int) -> None:
    for entry in document["process"]["criu_files"]:
        if entry["name"] == name:
            entry["size"] = size


def test_unknown_format_version(image_dir: Path) -> None:
    publish_image(image_dir)
    rewrite_metadata(image_dir, lambda document: document.update(format_version=4))
    with pytest.raises(InvalidImage, match="format_version 4 is not supported"):
        validate(str(image_dir))


def test_image_from_before_identity_binding_is_refused(image_dir: Path) -> None:
    publish_image(image_dir)

    def as_format_1(document: dict[str, Any]) -> None:
        document.update(format_version=1)
        document.pop("identity")

    rewrite_metadata(image_dir, as_format_1)
    with pytest.raises(InvalidImage, match="format_version 1 records no job identity"):
        validate(str(image_dir))


def test_symlink_inside_image(tmp_path: Path, image_dir: Path) -> None:
    publish_image(image_dir)
    (tmp_path / "elsewhere").write_bytes(b"core" * 100)
    (image_dir / "core-1.img").unlink()
    (image_dir / "core-1.img").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InvalidImage, match=r"core-1\.img is a symlink"):
        validate(str(image_dir))


def test_symlinked_metadata(tmp_path: Path, image_dir: Path) -> None:
    publish_image(image_dir)
    os.rename(image_dir / METADATA_FILE, tmp_path / "metadata.json")
    (image_dir / METADATA_FILE).symlink_to(tmp_path / "metadata.json")
    with pytest.raises(InvalidImage, match="symlink"):
        validate(str(image_dir))


def test_image_dir_itself_a_symlink(tmp_path: Path, image_dir: Path) -> None:
    real = tmp_path / "real" / "job-1"
    publish_image(real)
    image_dir.parent.mkdir(parents=True)
    image_dir.symlink_to(real)
    with pytest.raises(InvalidImage, match="is a symlink"):
        validate(str(image_dir))


def test_subdirectory_and_fifo_inside_image(image_dir: Path) -> None:
    publish_image(image_dir)
    (image_dir / "sub").mkdir()
    with pytest.raises(InvalidImage, match="sub is not a regular file"):
        validate(str(image_dir))
    (image_dir / "sub").rmdir()
    os.mkfifo(image_dir / "fifo")
    with pytest.raises(InvalidImage, match="fifo is not a regular file"):
        validate(str(image_dir))


def test_unlisted_file(image_dir: Path) -> None:
    publish_image(image_dir)
    (image_dir / "pages-2.img").write_bytes(b"injected")
    with pytest.raises(InvalidImage, match=r"not listed.*pages-2\.img"):
        validate(str(image_dir))


def test_criu_version_compatibility(image_dir: Path) -> None:
    publish_image(image_dir, criu_version="4.2.1")
    validate(str(image_dir), criu_version="4.1")  # same major: accepted
    validate(str(image_dir), criu_version="Version: 5.0")
    with pytest.raises(InvalidImage, match="newer major version"):
        validate(str(image_dir), criu_version="Version: 3.17.1\n")


def test_expected_namespace_and_checkpoint_id(image_dir: Path) -> None:
    publish_image(image_dir)
    validate(str(image_dir), namespace="default", checkpoint_id="job-1")
    with pytest.raises(InvalidImage, match="namespace"):
        validate(str(image_dir), namespace="moby")
    with pytest.raises(InvalidImage, match="checkpoint id"):
        validate(str(image_dir), checkpoint_id="job-2")


def _delete(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda document: document.pop(key)


def _nested(section: str, key: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda document: document[section].update({key: value})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_delete("format_version"), "format_version is missing"),
        (lambda d: d.update(format_version="1"), "format_version must be an integer"),
        (lambda d: d.update(format_version=True), "format_version must be an integer"),
        (_delete("checkpoint_id"), "checkpoint_id is missing"),
        (_delete("identity"), "identity is missing"),
        (lambda d: d.update(identity=[]), "identity must be an object"),
        (_nested("identity", "env_salt", "../x"), "env_salt must be hex"),
        (_nested("identity", "args", "sh"), "identity.args must be a list of strings"),
        (_nested("identity", "user", {"uid": -1, "gid": 0, "additional_gids": []}),
         "uid and gid must be ids"),
        (lambda d: d.update(namespace=3), "namespace must be a string"),
        (lambda d: d.update(checkpoint_id="../x"), "not a safe path component"),
        (lambda d: d.update(created="yesterday"), "RFC 3339"),
        (lambda d: d.update(created="2024-01-01T00:00:00"), "RFC 3339"),
        (lambda d: d.update(criu_version="unknown"), "no version number"),
        (_delete("filesystem"), "filesystem is missing"),
        (_nested("filesystem", "mode", "btrfs"), "filesystem.mode"),
        (_nested("filesystem", "sha256", "ABC"), "sha256"),
        (_nested("filesystem", "size", -1), "must not be negative"),
        (_nested("filesystem", "tar", "../../etc/shadow"), "filesystem.tar must be"),
        (lambda d: d["filesystem"].update(mode="none"), "mode 'none' names a tar"),
        (_nested("process", "criu_files", {}), "criu_files must be a list"),
        (lambda d: d["process"]["criu_files"].append({"name": "../x", "size": 1}),
         "not an acceptable file name"),
        (lambda d: d["process"]["criu_files"].append({"name": METADATA_FILE, "size": 1}),
         "not an acceptable|lists metadata.json"),
        (lambda d: d["process"]["criu_files"].append(d["process"]["criu_files"][0]),
         "lists a file twice"),
        (lambda d: d["process"].update(criu_files=[
            f for f in d["process"]["criu_files"] if f["name"] != "inventory.img"]),
         "lacks inventory.img"),
        (_nested("process", "criu_log", "custom.log"), "lacks custom.log"),
        (_nested("process", "criu_log", "../x.log"), "not an acceptable file name"),
        (_nested("process", "criu_log", 3), "criu_log must be a string"),
        (_nested("process", "criu_config", []), "criu_config must be an object"),
        (_nested("process", "criu_config", {"file": 1}), "criu_config.file must be a string"),
        (_nested("process", "criu_config", {"sha256": "abc"}), "criu_config.sha256 is not"),
        (_nested("container", "args", "sh"), "container.args must be a list of strings"),
        (_nested("container", "mounts", [{"source": "/x"}]), "destination is missing"),
        (lambda d: d.update(cpu={"model": "x"}), "cpu.flags is missing"),
    ],
)
def test_invalid_metadata(
    image_dir: Path, change: Callable[[dict[str, Any]], None], message: str
) -> None:
    publish_image(image_dir)
    rewrite_metadata(image_dir, change)
    with pytest.raises(InvalidImage, match=message):
        validate(str(image_dir))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "metadata must be an object"),
        (b'{"format_version": NaN}', "not valid JSON"),
    ],
)
def test_unparsable_metadata(image_dir: Path, raw: bytes, message: str) -> None:
    publish_image(image_dir)
    (image_dir / METADATA_FILE).write_bytes(raw)
    with pytest.raises(InvalidImage, match=message):
        validate(str(image_dir))


def test_oversized_metadata(image_dir: Path) -> None:
    publish_image(image_dir)
    (image_dir / METADATA_FILE).write_bytes(b" " * (validation.METADATA_MAX_BYTES + 1))
    with pytest.raises(InvalidImage, match="larger than"):
        validate(str(image_dir))


def test_unknown_keys_are_ignored(image_dir: Path) -> None:
    publish_image(image_dir)
    rewrite_metadata(image_dir, lambda document: document.update(future_field={"a": 1}))
    validate(str(image_dir))


def test_images_without_a_log_name_or_criu_config_read_as_before(image_dir: Path) -> None:
    """Images made before process.criu_log / criu_config: dump.log, no configuration known."""
    publish_image(image_dir)

    def drop(document: dict[str, Any]) -> None:
        document["process"].pop("criu_log")
        document["process"].pop("criu_config")

    rewrite_metadata(image_dir, drop)
    metadata = validate(str(image_dir)).metadata
    assert (metadata.criu_log, metadata.criu_config) == ("dump.log", None)


def test_a_renamed_dump_log_is_recorded_and_validated(image_dir: Path) -> None:
    """A CRIU configuration's log-file: the image keeps the log under CRIU's name."""
    from arch.checkpoint.criu_config import CriuConfig

    config = CriuConfig("/etc/criu/job.conf", "a" * 64, "custom.log", None)

    def publish_renamed(dump_log: str = DUMP_LOG_OK) -> None:
        with begin(image_dir) as staging:
            metadata = fill_staging(staging, dump_log=dump_log)
            os.rename(staging_path(staging) / CRIU_DUMP_LOG, staging_path(staging) / "custom.log")
            metadata = dataclasses.replace(
                metadata, criu_files=staging.describe_criu_files(), criu_log="custom.log",
                criu_config=config,
            )  # fmt: skip
            staging.publish(metadata)

    publish_renamed()
    valid = validate(str(image_dir)).metadata
    assert (valid.criu_log, valid.criu_config) == ("custom.log", config)
    with pytest.raises(InvalidImage, match=r"custom\.log does not end with"):
        publish_renamed("(00.1) Error (criu/cr-dump.c:1): boom\n")


# --- helpers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4.2", (4, 2)),
        ("4.2.1", (4, 2, 1)),
        ("Version: 3.17.1\nGitID: v3.17.1\n", (3, 17, 1)),
        ("Version: 4.2\n", (4, 2)),
    ],
)
def test_parse_criu_version(text: str, expected: tuple[int, ...]) -> None:
    assert parse_criu_version(text) == expected


def test_container_essentials_from_oci_config() -> None:
    essentials = ContainerEssentials.from_oci_config(OCI_CONFIG)
    assert essentials.args == ("sh", "-c", "loop")
    assert essentials.cwd == "/w"
    assert essentials.mounts[1] == MountInfo("/data", "/host/data", None)
    assert ContainerEssentials.from_oci_config({}) == ContainerEssentials()
    with pytest.raises(ValueError, match=r"process\.args"):
        ContainerEssentials.from_oci_config({"process": {"args": "sh"}})
    with pytest.raises(ValueError, match="mounts"):
        ContainerEssentials.from_oci_config({"mounts": {"a": 1}})


def test_host_cpu_summary(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Example CPU @ 2.0GHz\nflags\t\t: fpu vme sse2\n\n"
        "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n\n"
    )
    assert host_cpu_summary(str(cpuinfo)) == CpuInfo("Example CPU @ 2.0GHz", ("fpu", "vme", "sse2"))
    assert host_cpu_summary(str(tmp_path / "absent")) is None
    real = host_cpu_summary()
    assert real is None or isinstance(real.flags, tuple)


# --- confinement: a parent swapped for a symlink ---------------------------------------------


def swap_for_symlink(directory: Path, target: Path) -> None:
    directory.rename(directory.with_name(directory.name + "-moved"))
    directory.symlink_to(target)


def test_publish_refuses_a_parent_swapped_after_begin(image_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / image_dir.name).mkdir(parents=True)
    (outside / image_dir.name / "precious").write_text("keep")
    with begin(image_dir) as staging:
        metadata = fill_staging(staging)
        swap_for_symlink(image_dir.parent, outside)
        with pytest.raises(NotBeneath, match="symlink"):
            staging.publish(metadata)
    assert sorted(p.name for p in outside.rglob("*")) == [image_dir.name, "precious"]
    assert leftovers(image_dir.parent.with_name(image_dir.parent.name + "-moved")) == []


def test_publish_refuses_a_parent_replaced_by_another_directory(image_dir: Path) -> None:
    with begin(image_dir) as staging:
        metadata = fill_staging(staging)
        image_dir.parent.rename(image_dir.parent.with_name("moved"))
        image_dir.parent.mkdir()
        with pytest.raises(PublishError, match="no longer the directory"):
            staging.publish(metadata)
    assert list(image_dir.parent.iterdir()) == []


def test_remove_and_recover_refuse_a_symlinked_parent(image_dir: Path, tmp_path: Path) -> None:
    publish_image(image_dir)
    outside = tmp_path / "outside"
    (outside / image_dir.name).mkdir(parents=True)
    swap_for_symlink(image_dir.parent, outside)
    with pytest.raises(NotBeneath):
        remove_at(image_dir)
    with pytest.raises(NotBeneath):
        recover_at(image_dir)
    with pytest.raises(NotBeneath):
        cleanup_at(image_dir.parent, min_age=0)
    assert (outside / image_dir.name).is_dir()


def _foreign_lease(directory: Path, expires: float) -> None:
    from arch.checkpoint.storage.lease import LEASE_FILE

    lease = {"host": "i-0another0host0000", "boot": "other-boot", "pid": 1, "start": 1,
             "expires": expires}  # fmt: skip
    (directory / LEASE_FILE).write_text(json.dumps(lease))


def test_a_same_id_remove_leaves_another_hosts_staging_while_its_lease_is_live(
    image_dir: Path,
) -> None:
    """Invariant 3: the other host may publish it yet; only an expired lease frees it."""
    publish_image(image_dir)
    held = image_dir.parent / ".staging-job-1-aaaaaaaaaaaa"
    held.mkdir()
    _foreign_lease(held, time.time() + 100)
    unleased_fresh = image_dir.parent / ".staging-job-1-bbbbbbbbbbbb"
    unleased_fresh.mkdir()
    expired = image_dir.parent / ".staging-job-1-cccccccccccc"
    expired.mkdir()
    _foreign_lease(expired, time.time() - 1000)
    assert remove_at(image_dir)
    assert held.is_dir() and unleased_fresh.is_dir()
    assert not expired.exists()


def test_the_lease_stays_until_the_publishing_rename(image_dir: Path) -> None:
    from arch.checkpoint.storage.lease import LEASE_FILE, is_held, lease_of

    with begin(image_dir) as staging:
        metadata = fill_staging(staging)
        staging.seal(metadata)
        parent_fd = os.open(image_dir.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            lease = lease_of(parent_fd, staging.name)
        finally:
            os.close(parent_fd)
        assert lease is not None and is_held(lease), "sealed, not yet renamed: still leased"
        staging.commit()
    assert not (image_dir / LEASE_FILE).exists(), "the lease is not part of the image"
    validate(str(image_dir))


def test_removers_clear_old_copies_so_recover_brings_no_older_state_back(
    image_dir: Path,
) -> None:
    publish_image(image_dir, "older")
    old_copy = image_dir.parent / ".old-job-1-0123456789ab"
    os.rename(image_dir, old_copy)
    publish_image(image_dir, "newer")
    with opened_root("/") as root_fd:
        assert store.remove_old_copies(root_fd, beneath_slash(image_dir)) == [old_copy.name]
    os.rename(image_dir, image_dir.parent / ".removing-job-1-0123456789ab")  # as gc does
    assert not recover_at(image_dir)


def test_recover_takes_the_newest_generation(image_dir: Path) -> None:
    for generation, name in ((3, "aaaaaaaaaaaa"), (5, "bbbbbbbbbbbb"), (4, "cccccccccccc")):
        publish_image(image_dir, f"gen-{generation}", generation=generation)
        os.rename(image_dir, image_dir.parent / f".old-job-1-{name}")
    assert recover_at(image_dir)
    assert validate(str(image_dir)).metadata.generation == 5
