from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import pytest

from arch.config import HostConfig
from arch.container.identity import (
    ImageLocation,
    ImagePathError,
    checkpoint_id,
    env_map,
    image_location,
    opted_in,
)

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An allowed root (resolved: tmp_path itself may sit behind a symlink)."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    return allowed.resolve()


@pytest.fixture
def config(root: Path) -> HostConfig:
    return HostConfig("/nonexistent/arch.toml", checkpoint_root=str(root / "ckpt"),
                      allowed_roots=(str(root),))


def test_env_map_last_repeated_key_wins_and_junk_is_ignored() -> None:
    assert env_map(["A=1", "B=x=y", "A=2", "NOEQUALS", "=v", "C="]) == {
        "A": "2", "B": "x=y", "C": "",
    }


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "True", "yes", "YeS"])
def test_opted_in_values(value: str) -> None:
    assert opted_in(["PATH=/bin", f"ARCH_ENABLE={value}"])


@pytest.mark.parametrize("env", [[], ["ARCH_ENABLE="], ["OTHER=1"]])
def test_not_opted_in_without_value(env: list[str], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="arch"):
        assert not opted_in(env)
    assert caplog.records == []


@pytest.mark.parametrize("value", ["0", "false", "on", "enable", " 1"])
def test_unrecognised_enable_value_warns(value: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="arch"):
        assert not opted_in([f"ARCH_ENABLE={value}"])
    assert len(caplog.records) == 1
    assert "ARCH_ENABLE" in caplog.records[0].getMessage()
    assert repr(value) in caplog.records[0].getMessage()


def test_checkpoint_id_precedence() -> None:
    both = ["AWS_BATCH_JOB_ID=batch-1:3", "ARCH_CHECKPOINT_ID=mine"]
    assert checkpoint_id(both, "c1") == "mine"
    assert checkpoint_id(["AWS_BATCH_JOB_ID=batch-1:3"], "c1") == "batch-1:3"
    assert checkpoint_id(["ARCH_CHECKPOINT_ID="], "c1") == "c1"
    assert checkpoint_id([], "c1") == "c1"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (".", "may not be '.'"),
        ("..", "may not be '.'"),
        ("a/b", "may only hold"),
        ("a b", "may only hold"),
        ("a\0b", "may only hold"),
        ("x" * 129, "1 to 128"),
        ("é", "may only hold"),
    ],
)
def test_invalid_checkpoint_id(value: str, message: str) -> None:
    with pytest.raises(ImagePathError, match=message) as raised:
        checkpoint_id([f"ARCH_CHECKPOINT_ID={value}"], "c1")
    assert "ARCH_CHECKPOINT_ID" in str(raised.value)


def test_invalid_batch_job_id_names_its_variable() -> None:
    with pytest.raises(ImagePathError, match="AWS_BATCH_JOB_ID"):
        checkpoint_id(["AWS_BATCH_JOB_ID=job#2"], "c1")


def test_longest_allowed_checkpoint_id() -> None:
    assert checkpoint_id(["ARCH_CHECKPOINT_ID=" + "a" * 128], "c1") == "a" * 128


def test_default_location_is_under_checkpoint_root(config: HostConfig) -> None:
    location = image_location(["ARCH_ENABLE=1"], "default", "c1", config)
    assert location == ImageLocation(
        os.path.join(config.checkpoint_root, "default", "c1"), "default", "c1", None, None,
        root=config.checkpoint_root, relative="default/c1",
    )


def test_checkpoint_host_path(root: Path, config: HostConfig) -> None:
    env = [f"ARCH_CHECKPOINT_HOST_PATH={root}/data/", "ARCH_CHECKPOINT_ID=job"]
    location = image_location(env, "moby", "c1", config)
    assert location.image_dir == f"{root}/data/moby/job"
    assert (location.root, location.relative) == (str(root), "data/moby/job")
    assert location.sharedfs_workdir is None
    assert location.container_workdir is None


def test_sharedfs_mode_takes_precedence(root: Path, config: HostConfig) -> None:
    env = [
        f"ARCH_CHECKPOINT_HOST_PATH={root}/other",
        f"ARCH_SHAREDFS_HOST_PATH={root}/efs",
        "ARCH_WORKDIR_CONTAINER_PATH=/work//dir/",
    ]
    location = image_location(env, "k8s.io", "c1", config)
    assert location == ImageLocation(
        f"{root}/efs/checkpoint/k8s.io/c1", "k8s.io", "c1", f"{root}/efs/work/k8s.io/c1",
        "/work/dir", root=str(root), relative="efs/checkpoint/k8s.io/c1",
        workdir_relative="efs/work/k8s.io/c1",
    )


def test_a_location_lies_beneath_the_allowed_root_that_holds_it(
    tmp_path: Path, root: Path
) -> None:
    """The root is the resolved allowed root; the path below it holds no symlink."""
    (root / "team").mkdir()
    (tmp_path / "team-link").symlink_to(root / "team")
    nested = HostConfig("/nonexistent/arch.toml", checkpoint_root=str(root / "ckpt"),
                        allowed_roots=(str(tmp_path / "missing"), str(root)))
    env = [f"ARCH_CHECKPOINT_HOST_PATH={tmp_path}/team-link"]
    location = image_location(env, "ns", "c1", nested)
    assert (location.root, location.relative) == (str(root), "team/ns/c1")
    assert location.image_dir == f"{root}/team/ns/c1"


def test_a_record_without_a_root_lies_beneath_slash() -> None:
    """State records written before roots were recorded: no symlink anywhere on the path."""
    old = ImageLocation.from_dict(
        {"image_dir": "/c/ns/id", "namespace": "ns", "checkpoint_id": "id",
         "sharedfs_workdir": "/efs/work/ns/id", "container_workdir": "/work"}
    )
    assert (old.root, old.relative, old.workdir_relative) == ("/", "c/ns/id", "efs/work/ns/id")


@pytest.mark.parametrize(
    "env",
    [
        ["ARCH_SHAREDFS_HOST_PATH=/x"],
        ["ARCH_WORKDIR_CONTAINER_PATH=/work"],
        ["ARCH_SHAREDFS_HOST_PATH=/x", "ARCH_WORKDIR_CONTAINER_PATH="],
    ],
)
def test_sharedfs_needs_both_variables(env: list[str], config: HostConfig) -> None:
    with pytest.raises(ImagePathError, match="needs both"):
        image_location(env, "default", "c1", config)


@pytest.mark.parametrize("variable", ["ARCH_CHECKPOINT_HOST_PATH", "ARCH_SHAREDFS_HOST_PATH"])
@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("relative/path", "absolute"),
        ("{root}/../etc", r"'\.' or '\.\.'"),
        ("{root}/./x", r"'\.' or '\.\.'"),
        ("/etc", "not inside an allowed root"),
        ("{root}x", "not inside an allowed root"),  # a sibling sharing the prefix
        ("{root}/a\0b", "NUL"),
    ],
)
def test_refused_host_paths(
    variable: str, template: str, message: str, root: Path, config: HostConfig
) -> None:
    env = [f"{variable}={template.format(root=root)}"]
    if variable == "ARCH_SHAREDFS_HOST_PATH":
        env.append("ARCH_WORKDIR_CONTAINER_PATH=/w")
    with pytest.raises(ImagePathError, match=message) as raised:
        image_location(env, "default", "c1", config)
    assert variable in str(raised.value)


def test_symlink_escape_is_refused(tmp_path: Path, root: Path, config: HostConfig) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    with pytest.raises(ImagePathError, match=r"ARCH_CHECKPOINT_HOST_PATH.*resolved"):
        image_location([f"ARCH_CHECKPOINT_HOST_PATH={root}/escape"], "default", "c1", config)


def test_symlinked_namespace_dir_escape_is_refused(
    tmp_path: Path, root: Path, config: HostConfig
) -> None:
    """The check covers the whole derived path, not only the variable's value."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "data").mkdir()
    (root / "data" / "default").symlink_to(outside)
    with pytest.raises(ImagePathError, match="not inside an allowed root"):
        image_location([f"ARCH_CHECKPOINT_HOST_PATH={root}/data"], "default", "c1", config)


def test_sharedfs_work_dir_symlink_escape_is_refused(
    tmp_path: Path, root: Path, config: HostConfig
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "efs").mkdir()
    (root / "efs" / "work").symlink_to(outside)
    env = [f"ARCH_SHAREDFS_HOST_PATH={root}/efs", "ARCH_WORKDIR_CONTAINER_PATH=/w"]
    with pytest.raises(ImagePathError, match="ARCH_SHAREDFS_HOST_PATH"):
        image_location(env, "default", "c1", config)


def test_symlink_inside_allowed_root_is_resolved(root: Path, config: HostConfig) -> None:
    (root / "real").mkdir()
    (root / "link").symlink_to(root / "real")
    location = image_location([f"ARCH_CHECKPOINT_HOST_PATH={root}/link"], "ns", "c1", config)
    assert location.image_dir == f"{root}/real/ns/c1"


def test_allowed_root_behind_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real-root"
    real.mkdir()
    (tmp_path / "root-link").symlink_to(real)
    config = HostConfig("/x", allowed_roots=(str(tmp_path / "root-link"),))
    location = image_location(
        [f"ARCH_CHECKPOINT_HOST_PATH={tmp_path}/root-link/sub"], "ns", "c1", config
    )
    assert location.image_dir == f"{real.resolve()}/sub/ns/c1"


def test_the_allowed_root_itself_is_allowed(root: Path, config: HostConfig) -> None:
    location = image_location([f"ARCH_CHECKPOINT_HOST_PATH={root}"], "ns", "c1", config)
    assert location.image_dir == f"{root}/ns/c1"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("work", "absolute"),
        ("/work/../etc", r"'\.\.'"),
        ("/", "below '/'"),
        ("//", "below '/'"),
    ],
)
def test_refused_container_workdir(
    value: str, message: str, root: Path, config: HostConfig
) -> None:
    env = [f"ARCH_SHAREDFS_HOST_PATH={root}", f"ARCH_WORKDIR_CONTAINER_PATH={value}"]
    with pytest.raises(ImagePathError, match=message) as raised:
        image_location(env, "default", "c1", config)
    assert "ARCH_WORKDIR_CONTAINER_PATH" in str(raised.value)


def test_container_workdir_leading_double_slash_is_collapsed(
    root: Path, config: HostConfig
) -> None:
    env = [f"ARCH_SHAREDFS_HOST_PATH={root}", "ARCH_WORKDIR_CONTAINER_PATH=//work/x/"]
    assert image_location(env, "default", "c1", config).container_workdir == "/work/x"


@pytest.mark.parametrize("namespace", ["", ".", "..", "a/b", "a\0", "x" * 129])
def test_unsafe_namespace_is_refused(namespace: str, config: HostConfig) -> None:
    with pytest.raises(ImagePathError, match="namespace"):
        image_location([], namespace, "c1", config)


def test_invalid_container_id_without_override_is_refused(config: HostConfig) -> None:
    with pytest.raises(ImagePathError, match="container id"):
        image_location([], "default", "../x", config)


def test_image_location_as_dict_round_trips() -> None:
    location = ImageLocation("/c/ns/id", "ns", "id", "/efs/work/ns/id", "/work")
    assert ImageLocation.from_dict(location.as_dict()) == location
    with pytest.raises(ValueError, match="not an image location"):
        ImageLocation.from_dict({"image_dir": "/x", "namespace": "ns"})
    assert location != ImageLocation("/c/ns/id", "ns", "id")
    assert "sharedfs_workdir='/efs/work/ns/id'" in repr(location)


def test_pool_member_holds_no_image_until_it_claims_one(root: Path, config: HostConfig) -> None:
    env = ["ARCH_CHECKPOINT_POOL=web", "AWS_BATCH_JOB_ID=ignored"]
    location = image_location(env, "default", "c1", config)
    assert location.image_dir == ""
    assert location.pool_dir == os.path.join(config.checkpoint_root, "default", "web")
    assert (location.pool, location.checkpoint_id) == ("web", "web")
    claimed = location.with_image_dir(f"{location.pool_dir}/.claimed~h~0~image-1")
    assert ImageLocation.from_dict(claimed.as_dict()) == claimed
    assert claimed.pool == "web"


def test_pool_in_sharedfs_mode(root: Path, config: HostConfig) -> None:
    env = [f"ARCH_SHAREDFS_HOST_PATH={root}/efs", "ARCH_WORKDIR_CONTAINER_PATH=/w",
           "ARCH_CHECKPOINT_POOL=svc"]  # fmt: skip
    location = image_location(env, "ns", "c1", config)
    assert location.pool_dir == f"{root}/efs/checkpoint/ns/svc"
    assert location.sharedfs_workdir == f"{root}/efs/work/ns/svc"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (["ARCH_CHECKPOINT_POOL=a/b"], "ARCH_CHECKPOINT_POOL='a/b'"),
        (["ARCH_CHECKPOINT_POOL=.."], "ARCH_CHECKPOINT_POOL='..'"),
        (["ARCH_CHECKPOINT_POOL=" + "p" * 129], "1 to 128"),
        (["ARCH_CHECKPOINT_POOL=p", "ARCH_CHECKPOINT_ID=i"], "both set"),
    ],
)
def test_refused_pools(env: list[str], message: str, config: HostConfig) -> None:
    with pytest.raises(ImagePathError, match=message):
        image_location(env, "default", "c1", config)


def test_location_records_without_pool_still_load() -> None:
    record = {"image_dir": "/c/ns/id", "namespace": "ns", "checkpoint_id": "id"}
    location = ImageLocation.from_dict(record)
    assert (location.pool_dir, location.pool) == (None, None)
