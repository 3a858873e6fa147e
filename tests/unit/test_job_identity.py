"""The job identity recorded in an image and the fingerprint of the container image."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import pytest

from arch.checkpoint.image.errors import InvalidImage
from arch.checkpoint.image.fingerprint import image_fingerprint
from arch.checkpoint.image.job_identity import JobIdentity

if TYPE_CHECKING:
    from pathlib import Path

IMAGE = "layers-sha256:" + "a" * 64


def spec(**process: Any) -> dict[str, Any]:
    from arch.container.oci_spec import zero_process

    base = zero_process()
    base.update(args=["python", "train.py"], cwd="/work", env=["PATH=/bin", "TOKEN=secret"])
    base["user"].update(uid=1000, gid=1000, additionalGids=[10, 20])
    base.update(process)
    return {"process": base}


RECORDED = JobIdentity.of(spec(), IMAGE)


@pytest.mark.parametrize(
    ("changed", "image", "fields"),
    [
        (spec(), IMAGE, []),
        (spec(env=["PATH=/bin", "TOKEN=secret", "HOSTNAME=b", "AWS_BATCH_JOB_ATTEMPT=2",
                   "ECS_CONTAINER_METADATA_URI_V4=http://x", "ARCH_CHECKPOINT_ID=other"]),
         IMAGE, []),
        (spec(env=["TOKEN=old", "PATH=/bin", "TOKEN=secret"]), IMAGE, []),  # last one wins
        (spec(args=["python", "train.py", "--v2"]), IMAGE, ["command"]),
        (spec(cwd="/"), IMAGE, ["working directory"]),
        (spec(user={"uid": 0, "gid": 1000, "additionalGids": [10, 20], "umask": None,
                    "username": ""}), IMAGE, ["user"]),
        (spec(user={"uid": 1000, "gid": 1000, "additionalGids": [20, 10, 10], "umask": None,
                    "username": ""}), IMAGE, []),
        (spec(), "layers-sha256:" + "b" * 64, ["container image"]),
        (spec(), None, ["container image"]),
        (spec(env=["PATH=/bin", "TOKEN=rotated", "EXTRA=1"]), IMAGE,
         ["environment (EXTRA, TOKEN)"]),
        (spec(env=["PATH=/bin"]), IMAGE, ["environment (TOKEN)"]),
        ({}, IMAGE, ["command", "working directory", "user", "environment (PATH, TOKEN)"]),
    ],
)
def test_differences_name_fields_never_values(
    changed: dict[str, Any], image: str | None, fields: list[str]
) -> None:
    differences = RECORDED.differences(changed, image)
    assert differences == fields
    assert not any("secret" in text or "rotated" in text for text in differences)


def test_round_trip_keeps_no_environment_value() -> None:
    document = RECORDED.to_dict()
    assert "secret" not in repr(document)
    assert JobIdentity.from_dict(document) == RECORDED
    assert JobIdentity.from_dict(document).differences(spec(), IMAGE) == []


@pytest.mark.parametrize(
    "change",
    [
        {"args": "python"},
        {"user": {"uid": True, "gid": 0, "additional_gids": []}},
        {"user": {"uid": 0, "gid": 0, "additional_gids": [-1]}},
        {"env_salt": ""},
        {"env_sha256": {"A": 1}},
        {"image": 3},
    ],
)
def test_malformed_identity_is_refused(change: dict[str, Any]) -> None:
    with pytest.raises(InvalidImage, match="identity"):
        JobIdentity.from_dict({**RECORDED.to_dict(), **change})


def make_layer(root: Path) -> Path:
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "tool").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "usr" / "bin" / "tool", 0o755)
    os.symlink("tool", root / "usr" / "bin" / "alias")
    for path in (root / "usr" / "bin" / "tool", root / "usr" / "bin" / "alias"):
        os.utime(path, (1_600_000_000, 1_600_000_000), follow_symlinks=False)
    return root


def test_fingerprint_is_the_same_for_the_same_layers_anywhere(tmp_path: Path) -> None:
    first = image_fingerprint([str(make_layer(tmp_path / "host-a" / "snapshots" / "7" / "fs"))])
    second = make_layer(tmp_path / "host-b" / "snapshots" / "31" / "fs")
    os.utime(second / "usr", (1, 1))  # directory mtimes: the unpack's time, not the image's
    assert image_fingerprint([str(second)]) == first


@pytest.mark.parametrize(
    "change",
    [
        lambda layer: os.chmod(layer / "usr/bin/tool", 0o4755),
        lambda layer: (layer / "usr/bin/tool").write_bytes(b"#!/bin/bash\n"),
        lambda layer: os.utime(layer / "usr/bin/tool", (1, 1)),
        lambda layer: (layer / "usr/bin/new").write_bytes(b""),
        lambda layer: os.unlink(layer / "usr/bin/alias"),
    ],
)
def test_fingerprint_changes_with_the_layer_contents(tmp_path: Path, change: Any) -> None:
    layer = make_layer(tmp_path / "fs")
    before = image_fingerprint([str(layer)])
    change(layer)
    assert image_fingerprint([str(layer)]) != before


def test_fingerprint_depends_on_layer_order_and_skips_dockers_init_layer(tmp_path: Path) -> None:
    lower = make_layer(tmp_path / "overlay2" / "abc" / "diff")
    upper = tmp_path / "overlay2" / "def" / "diff"
    upper.mkdir(parents=True)
    (upper / "etc").mkdir()
    init = tmp_path / "overlay2" / "def-init" / "diff"
    init.mkdir(parents=True)
    (init / ".dockerenv").write_bytes(b"")  # created per container, with its creation time
    link = tmp_path / "overlay2" / "l" / "SHORTID"
    link.parent.mkdir()
    os.symlink("../def-init/diff", link)
    layers = [str(upper), str(lower)]
    assert image_fingerprint([str(link), *layers]) == image_fingerprint(layers)
    assert image_fingerprint(layers[::-1]) != image_fingerprint(layers)
