"""RestoreJob's failure paths around the filesystem journal (one module; runc and the layer
apply are stand-ins): a restore whose rollback fails raises RollbackFailed (one line: the
failure and the rollback's reason, which names where its backups stay); a failure after runc
restore succeeded leaves `restored` set, so the caller keeps the restored container instead of
creating the id again."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from arch.checkpoint import restore_job
from arch.checkpoint.image.metadata import (
    ContainerEssentials,
    CriuFile,
    FilesystemInfo,
    ImageMetadata,
)
from arch.checkpoint.image.validation import ValidImage
from arch.checkpoint.layer import filesystem
from arch.checkpoint.layer.filesystem import LayerError
from arch.checkpoint.restore_job import RestoreJob, RestoreRefused, RollbackFailed
from arch.container import interrupted
from arch.container.bundle import Bundle
from arch.container.interrupted import OPERATION_FLAG, Operation
from arch.container.state import ContainerState
from arch.runc.runtime import RuncResult, RuncTimeout


class Journal:
    def __init__(self, rollback_error: bool = False, commit_error: bool = False) -> None:
        self.rollback_error = rollback_error
        self.commit_error = commit_error
        self.rolled_back = False

    def rollback(self) -> None:
        self.rolled_back = True
        if self.rollback_error:
            raise LayerError("rollback incomplete: data/file.txt: Read-only file system")

    def commit(self) -> None:
        if self.commit_error:
            raise OSError(5, "Input/output error")


class Runc:
    """runc restore exits `status`; None: it hangs until restore_timeout cuts it off."""

    criu = "/bin/false"

    def __init__(self, status: int | None) -> None:
        self.global_args: list[str] = []
        self.status = status
        self.deleted: list[str] = []
        self.waited: list[float | None] = []

    def subcommand_args(self, command: Any) -> list[str]:
        return ["restore"]

    def start_guarded(self, args: Any, on_start: Any, *, capture: bool = True) -> Runc:
        return self

    def wait(self, timeout: float | None) -> RuncResult:
        self.waited.append(timeout)
        if self.status is None:
            raise RuncTimeout(f"runc restore did not finish within {timeout} s")
        return RuncResult(self.status, "", "")

    def delete_force(self, container_id: str) -> RuncResult:
        self.deleted.append(container_id)
        return RuncResult(0, "", "")


class Create:
    def get(self, name: str) -> None:
        return None

    def with_subcommand(self, *args: Any, **kwargs: Any) -> Create:
        return self

    def with_option(self, *args: Any) -> Create:
        return self


def job(
    tmp_path: Path,
    runc: Runc,
    journal: Journal,
    monkeypatch: pytest.MonkeyPatch,
    timeout: float | None = None,
) -> RestoreJob:
    monkeypatch.setattr(filesystem, "apply_layer", lambda *args, **kwargs: journal)
    monkeypatch.setattr(restore_job, "job_differences", lambda *args: [])  # the same job
    monkeypatch.setattr(RestoreJob, "_verify_criu_files", lambda self, names: None)
    monkeypatch.setattr(RestoreJob, "_check_credentials", lambda self: None)  # no real image
    metadata = ImageMetadata.new(
        namespace="default", container_id="c1", checkpoint_id="c1", runc_version="1",
        criu_version="4.2", filesystem=FilesystemInfo.overlay("0" * 64, 10), criu_files=(),
        container=ContainerEssentials(),
    )  # fmt: skip
    state = ContainerState(str(tmp_path / "state"), "default", "c1")
    return RestoreJob(
        runc,  # type: ignore[arg-type]
        Create(),  # type: ignore[arg-type]
        Bundle(str(tmp_path / "bundle"), {}),
        ValidImage(str(tmp_path / "image"), metadata),
        "c1",
        str(tmp_path / "work"),
        Operation(state, "restore", []),
        timeout=timeout,
    )


def test_a_failed_rollback_fails_the_restore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    restore = job(tmp_path, Runc(status=1), Journal(rollback_error=True), monkeypatch)
    with pytest.raises(RollbackFailed, match=r"^runc restore exited 1; rollback incomplete"):
        restore.run()
    assert not restore.restored
    assert list((tmp_path / "work").iterdir()) == []


def test_a_failed_restore_with_a_good_rollback_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runc = Runc(status=1)
    restore = job(tmp_path, runc, Journal(), monkeypatch)
    with pytest.raises(RestoreRefused):
        restore.run()
    assert runc.deleted == ["c1"]
    assert list((tmp_path / "work").iterdir()) == []


def test_a_restore_past_restore_timeout_is_undone_and_refused_as_a_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    undone: list[tuple[str, str, str]] = []

    def undo_restore(
        runc: Any, container_id: str, bundle: str, work_dir: str, criu_work_dir: Any
    ) -> Any:
        assert criu_work_dir is None  # no CRIU configuration file moves it here
        undone.append((container_id, bundle, work_dir))
        return interrupted.RestoreUndone([4242], [f"{work_dir}/.criu.cgyard.Ab12Cd"])

    monkeypatch.setattr(interrupted, "undo_restore", undo_restore)
    runc, journal = Runc(status=None), Journal()
    restore = job(tmp_path, runc, journal, monkeypatch, timeout=7.5)
    with pytest.raises(RestoreRefused) as refused:
        restore.run()
    assert runc.waited == [7.5]
    assert refused.value.reason == "timeout"
    first_line = str(refused.value).splitlines()[0]
    assert first_line.startswith("runc restore did not finish within restore_timeout (7.5 s): "
                                 "runc and CRIU were stopped, killed pids [4242], unmounted ")
    assert len(undone) == 1 and undone[0][:2] == ("c1", str(tmp_path / "bundle"))
    assert undone[0][2].startswith(str(tmp_path / "work"))
    assert journal.rolled_back and not restore.restored
    assert list((tmp_path / "work").iterdir()) == []


def test_a_failure_after_runc_restore_leaves_the_container_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    restore = job(tmp_path, Runc(status=0), Journal(commit_error=True), monkeypatch)
    restore.run()  # the commit's failure is logged, not raised
    assert restore.restored
    state = ContainerState(str(tmp_path / "state"), "default", "c1")
    assert state.has(OPERATION_FLAG)  # until the caller has marked the start as done


def test_a_refusal_is_one_line_with_criu_s_first_error() -> None:
    from arch.shim.call import one_line

    message = (
        "runc checkpoint exited 1: criu failed\ndump.log (last lines):\n"
        "(00.1) Error (criu/cr-dump.c:1): Can't dump\n...\n(00.2) Dumping FAILED."
    )
    assert one_line(message) == (
        "runc checkpoint exited 1: criu failed; CRIU: Error (criu/cr-dump.c:1): Can't dump"
    )
    assert one_line("plain reason") == "plain reason"


def test_a_compressed_image_too_big_to_unpack_is_refused_before_anything_is_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    applied: list[object] = []
    restore = job(tmp_path, Runc(status=0), Journal(), monkeypatch)
    monkeypatch.setattr(filesystem, "apply_layer", lambda *args, **kwargs: applied.append(args))
    pages = CriuFile("pages-1.img.zst", 5, None, "zstd", 1 << 60)  # an exabyte unpacked
    restore.image = ValidImage(restore.image.path, dataclasses.replace(
        restore.image.metadata, criu_files=(pages,), compression_level=1, format_version=3))
    with pytest.raises(RestoreRefused, match=r"needs 1152921504606846976 bytes to unpack"):
        restore.run()
    assert applied == [] and not restore.restored
    assert list((tmp_path / "work").iterdir()) == []
