"""store.identity and remove(..., expected): delete after exit 0 removes only the image the
instance was created against, never one published at the same path since."""

from __future__ import annotations

from pathlib import Path

import pytest

from arch.checkpoint.storage import store
from arch.checkpoint.storage.beneath import opened_root


def identity(path: str) -> str | None:
    root, name = path.rsplit("/", 1)
    with opened_root(root) as root_fd:
        return store.identity(root_fd, name)


def remove_if_same(path: str, expected: str) -> bool:
    root, name = path.rsplit("/", 1)
    with opened_root(root) as root_fd:
        return store.remove(root_fd, name, expected)


def image(path: Path, metadata: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "metadata.json").write_text(metadata)
    (path / "pages-1.img").write_bytes(b"memory")
    return path


def test_identity_names_the_metadata_and_nothing_is_none(tmp_path: Path) -> None:
    assert identity(str(tmp_path / "absent")) is None
    first = identity(str(image(tmp_path / "job", '{"created": "1"}')))
    assert first is not None and first.startswith("metadata:")
    (tmp_path / "job" / "metadata.json").write_text('{"created": "2"}')
    assert identity(str(tmp_path / "job")) not in (None, first)
    (tmp_path / "bare").mkdir()
    assert str(identity(str(tmp_path / "bare"))).startswith("inode:")


def test_an_image_published_since_is_kept(tmp_path: Path) -> None:
    created_against = identity(str(image(tmp_path / "job", '{"created": "1"}')))
    assert created_against is not None
    image(tmp_path / "job", '{"created": "2"}')  # another container's checkpoint

    assert remove_if_same(str(tmp_path / "job"), created_against) is False
    assert (tmp_path / "job" / "metadata.json").read_text() == '{"created": "2"}'
    assert [p.name for p in tmp_path.iterdir()] == ["job"]


def test_the_image_created_against_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from arch.checkpoint.storage import store

    monkeypatch.setattr(store, "UNLEASED_GRACE_SECONDS", 0.0)  # the leftover is abandoned
    created_against = identity(str(image(tmp_path / "job", '{"created": "1"}')))
    assert created_against is not None
    (tmp_path / ".staging-job-0123456789ab").mkdir()  # an interrupted publication's leftover

    assert remove_if_same(str(tmp_path / "job"), created_against) is True
    assert list(tmp_path.iterdir()) == []
    assert remove_if_same(str(tmp_path / "job"), created_against) is False
