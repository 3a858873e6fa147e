"""Signed images: the key file's checks, signing at publication, verification before use."""

from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING

import pytest

from arch.checkpoint.image.errors import InvalidImage
from arch.checkpoint.image.metadata import METADATA_FILE, ROOTFS_TAR, SIGNATURE_FILE
from arch.checkpoint.image.signing import ImageKeyError, Trust, load_key, signature
from arch.checkpoint.image.validation import validate, verify_criu_files, verify_tar_checksum
from tests.unit.test_image import begin, fill_staging

if TYPE_CHECKING:
    from pathlib import Path

KEY = b"0123456789abcdef0123456789abcdef-fleet-key"
OTHER_KEY = b"fedcba9876543210fedcba9876543210-other-key"


def write_key(path: Path, data: bytes = KEY + b"\n", mode: int = 0o600) -> Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


# --- the key file ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_root_only_key_file_loads(tmp_path: Path, mode: int) -> None:
    assert load_key(str(write_key(tmp_path / "key", mode=mode))) == KEY


@pytest.mark.parametrize(
    ("mode", "owner", "message"),
    [
        (0o640, 0, "mode 0640: group and others must have no access"),
        (0o604, 0, "mode 0604"),
        (0o600, 1000, "owned by uid 1000, not root"),
    ],
)
@pytest.mark.root  # chown to another owner
def test_a_key_file_others_could_read_or_write_is_refused(
    tmp_path: Path, mode: int, owner: int, message: str
) -> None:
    path = write_key(tmp_path / "key", mode=mode)
    os.chown(path, owner, owner)
    with pytest.raises(ImageKeyError, match=message) as raised:
        load_key(str(path))
    assert KEY.decode() not in str(raised.value)


def test_a_symlinked_missing_or_short_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(write_key(tmp_path / "key"))
    with pytest.raises(ImageKeyError, match="is a symlink"):
        load_key(str(tmp_path / "link"))
    with pytest.raises(ImageKeyError, match="No such file"):
        load_key(str(tmp_path / "absent"))
    with pytest.raises(ImageKeyError, match="fewer than 32 bytes") as raised:
        load_key(str(write_key(tmp_path / "short", b"  tiny-secret  \n")))
    assert "tiny-secret" not in str(raised.value)
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(ImageKeyError, match="not a regular file"):
        load_key(str(tmp_path / "dir"))


# --- signing and verification ----------------------------------------------------------------


def trust(*keys: bytes, unsigned: bool = False, namespace: str = "default",
          checkpoint_id: str = "job-1") -> Trust:  # fmt: skip
    """What a restore of default/job-1 (fill_staging's image) accepts."""
    return Trust(keys, unsigned, namespace, checkpoint_id)


def publish_signed(image_dir: Path, key: bytes | None = KEY) -> None:
    with begin(image_dir) as staging:
        metadata = fill_staging(staging)
        digests = staging.describe_criu_files(digests=key is not None)
        metadata = type(metadata)(**{**metadata.__dict__, "criu_files": digests})
        staging.publish(metadata, key)


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    return tmp_path / "checkpoint" / "default" / "job-1"


def test_a_signed_image_records_every_digest_and_verifies(image_dir: Path) -> None:
    publish_signed(image_dir)
    metadata_bytes = (image_dir / METADATA_FILE).read_bytes()
    assert (image_dir / SIGNATURE_FILE).read_bytes() == signature(
        KEY, metadata_bytes, "default", "job-1"
    )
    assert (image_dir / SIGNATURE_FILE).read_bytes().startswith(b"hmac-sha256-v2:")
    listed = json.loads(metadata_bytes)["process"]["criu_files"]
    for entry in listed:
        content = (image_dir / entry["name"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(content).hexdigest()
    valid = validate(str(image_dir), trust=trust(KEY))
    verify_criu_files(valid)
    verify_tar_checksum(valid)
    assert oct(os.stat(image_dir / SIGNATURE_FILE).st_mode & 0o777) == "0o600"


def test_a_signed_image_restores_unchecked_where_signing_is_off_and_unsigned_allowed(
    image_dir: Path,
) -> None:
    publish_signed(image_dir)
    verify_criu_files(validate(str(image_dir), trust=trust(unsigned=True)))


def test_a_signed_image_is_refused_where_no_key_can_verify_it_and_unsigned_are_refused(
    image_dir: Path,
) -> None:
    publish_signed(image_dir)
    with pytest.raises(InvalidImage, match="this host has no key to verify it"):
        validate(str(image_dir), trust=trust())


def test_rotation_accepts_any_listed_key(image_dir: Path) -> None:
    publish_signed(image_dir, key=OTHER_KEY)
    validate(str(image_dir), trust=trust(KEY, OTHER_KEY))
    with pytest.raises(InvalidImage, match="does not verify with this host's key as an image"):
        validate(str(image_dir), trust=trust(KEY))


@pytest.mark.parametrize(("namespace", "checkpoint_id"), [("other", "job-1"), ("default", "job-2")])
def test_an_image_moved_to_another_namespace_or_id_does_not_verify(
    image_dir: Path, namespace: str, checkpoint_id: str
) -> None:
    publish_signed(image_dir)
    with pytest.raises(InvalidImage, match=f"as an image of {namespace}/{checkpoint_id}"):
        validate(str(image_dir), trust=trust(KEY, namespace=namespace, checkpoint_id=checkpoint_id))


def test_a_signature_of_the_old_format_is_refused(image_dir: Path) -> None:
    """hmac-sha256: over metadata.json alone: not bound to a place, so not accepted."""
    import hmac

    publish_signed(image_dir)
    data = (image_dir / METADATA_FILE).read_bytes()
    old = b"hmac-sha256:" + hmac.new(KEY, data, hashlib.sha256).hexdigest().encode() + b"\n"
    (image_dir / SIGNATURE_FILE).write_bytes(old)
    with pytest.raises(InvalidImage, match="signature does not verify"):
        validate(str(image_dir), trust=trust(KEY))


def test_a_tar_changed_with_recomputed_checksums_is_refused(image_dir: Path) -> None:
    publish_signed(image_dir)
    tampered = b"evil tar bytes"
    (image_dir / ROOTFS_TAR).write_bytes(tampered)
    document = json.loads((image_dir / METADATA_FILE).read_text())
    document["filesystem"].update(sha256=hashlib.sha256(tampered).hexdigest(), size=len(tampered))
    (image_dir / METADATA_FILE).write_text(json.dumps(document))
    with pytest.raises(InvalidImage, match="signature does not verify"):
        validate(str(image_dir), trust=trust(KEY))
    with pytest.raises(InvalidImage, match="signature does not verify"):
        validate(str(image_dir), trust=trust(KEY, unsigned=True))  # a bad signature is no excuse


def test_an_unsigned_image_is_refused_unless_unsigned_images_are_allowed(image_dir: Path) -> None:
    publish_signed(image_dir, key=None)
    with pytest.raises(InvalidImage, match="not signed"):
        validate(str(image_dir), trust=trust(KEY))
    validate(str(image_dir), trust=trust(KEY, unsigned=True))


def test_an_image_signed_with_another_key_is_refused(image_dir: Path) -> None:
    publish_signed(image_dir, key=OTHER_KEY)
    with pytest.raises(InvalidImage, match="signature does not verify"):
        validate(str(image_dir), trust=trust(KEY))


def test_a_signed_metadata_without_file_digests_is_refused(image_dir: Path) -> None:
    publish_signed(image_dir, key=None)
    data = (image_dir / METADATA_FILE).read_bytes()
    (image_dir / SIGNATURE_FILE).write_bytes(signature(KEY, data, "default", "job-1"))
    with pytest.raises(InvalidImage, match="records no sha256 for"):
        validate(str(image_dir), trust=trust(KEY))


def test_a_changed_criu_file_is_refused_before_use(image_dir: Path) -> None:
    publish_signed(image_dir)
    pages = image_dir / "pages-1.img"
    pages.write_bytes(b"\x90" * pages.stat().st_size)  # same size: validation cannot tell
    valid = validate(str(image_dir), trust=trust(KEY))
    verify_criu_files(valid, ["inventory.img"])  # only the files asked for are read
    with pytest.raises(InvalidImage, match=r"pages-1\.img: contents differ"):
        verify_criu_files(valid)


def test_digests_taken_while_the_capture_runs_cover_only_sealed_files(image_dir: Path) -> None:
    """A signed checkpoint hashes the sealed dump early; a file written later (or still being
    written then) is hashed when the metadata is made."""
    from arch.checkpoint.image.signing import file_sha256
    from tests.unit.test_image import staging_path

    with begin(image_dir) as staging:
        fill_staging(staging)
        assert staging.criu_file_digests() == {}  # written, not sealed: not hashed early
        staging.seal_dump()
        early = staging.criu_file_digests()
        assert early and "inventory.img" in early
        staging.add_file("cpuinfo.img", b"cpu")  # after the early digests
        described = {f.name: f.sha256 for f in staging.describe_criu_files(True, known=early)}
        directory = os.open(staging_path(staging), os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert described == {name: file_sha256(directory, name) for name in described}
        finally:
            os.close(directory)
        assert "cpuinfo.img" in described and "cpuinfo.img" not in early
        staging.abort()
