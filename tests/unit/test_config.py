from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from arch.config import ConfigError, load_config

if TYPE_CHECKING:
    from pathlib import Path


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "arch.toml"
    path.write_text(text)
    return str(path)


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    config = load_config(str(tmp_path / "absent.toml"))
    assert config.runc is None
    assert config.checkpoint_root == "/checkpoint"
    assert config.state_dir == "/run/arch"
    assert config.log_level == "info"
    assert config.allowed_roots == ("/checkpoint",)


def test_arch_config_env_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCH_CONFIG", write(tmp_path, 'runc = "/opt/runc"\n'))
    assert load_config().runc == "/opt/runc"


def test_all_keys_are_read(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            'runc = "/usr/sbin/runc"\ncheckpoint_root = "/data/ckpt/"\nstate_dir = "/run/a"\n'
            'log_file = "/var/log/a.log"\nlog_level = "DEBUG"\nallowed_roots = ["/data", "/efs"]\n',
        )
    )
    assert config.runc == "/usr/sbin/runc"
    assert config.checkpoint_root == "/data/ckpt"
    assert config.state_dir == "/run/a"
    assert config.log_file == "/var/log/a.log"
    assert config.log_level == "debug"
    assert config.allowed_roots == ("/data", "/efs")


def test_allowed_roots_default_follows_checkpoint_root(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'checkpoint_root = "/data/ckpt"\n'))
    assert config.allowed_roots == ("/data/ckpt",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("runc = ", "malformed TOML"),
        ('runc = "relative/runc"\n', "runc must be an absolute path"),
        ("runc = 3\n", "runc must be an absolute path"),
        ('log_level = "loud"\n', "log_level must be one of"),
        ('allowed_roots = "/x"\n', "allowed_roots must be a list"),
        ('allowed_roots = ["x"]\n', "allowed_roots must be an absolute path"),
        ('checkpoint_rot = "/x"\n', "unknown key(s): checkpoint_rot"),
    ],
)
def test_malformed_file_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert path in str(raised.value)
    assert message in str(raised.value)


def test_non_utf8_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "arch.toml"
    path.write_bytes(b'runc = "/\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(str(path))


def test_criu_path(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, 'criu = "/usr/local/sbin/criu"\n')).criu == (
        "/usr/local/sbin/criu"
    )
    with pytest.raises(ConfigError, match="criu must be an absolute path"):
        load_config(write(tmp_path, 'criu = "criu"\n'))


def test_images_are_signed_and_unsigned_ones_refused_by_default(tmp_path: Path) -> None:
    config = load_config(str(tmp_path / "absent.toml"))
    assert config.image_key_file == "/etc/arch/image.key"
    assert config.unsigned_images == "refuse"
    assert config.verify_key_files == ("/etc/arch/image.key",)


def test_image_key_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'image_key_file = "/srv/keys//fleet.key"\n'))
    assert config.image_key_file == "/srv/keys/fleet.key"
    assert load_config(write(tmp_path, 'image_key_file = ""\n')).image_key_file is None
    with pytest.raises(ConfigError, match="image_key_file must be an absolute path"):
        load_config(write(tmp_path, 'image_key_file = "image.key"\n'))


def test_rotation_accepts_several_keys_and_signs_with_one(tmp_path: Path) -> None:
    text = 'image_key_file = "/k/new.key"\nimage_verify_key_files = ["/k/old.key", "/k/new.key"]\n'
    config = load_config(write(tmp_path, text))
    assert config.image_key_file == "/k/new.key"
    assert config.verify_key_files == ("/k/new.key", "/k/old.key")
    unsigned = load_config(write(tmp_path, 'image_key_file = ""\n'
                                 'image_verify_key_files = ["/k/old.key"]\n'))  # fmt: skip
    assert unsigned.verify_key_files == ("/k/old.key",)
    with pytest.raises(ConfigError, match="image_verify_key_files must be an absolute path"):
        load_config(write(tmp_path, 'image_verify_key_files = ["old.key"]\n'))
    with pytest.raises(ConfigError, match="image_verify_key_files must be a list"):
        load_config(write(tmp_path, 'image_verify_key_files = "/k/old.key"\n'))


@pytest.mark.parametrize("value", ["allow", "refuse"])
def test_unsigned_images(tmp_path: Path, value: str) -> None:
    assert load_config(write(tmp_path, f'unsigned_images = "{value}"\n')).unsigned_images == value


@pytest.mark.parametrize("value", ['"Allow"', '"yes"', "true", '""'])
def test_unsigned_images_is_refuse_or_allow(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="unsigned_images must be one of refuse, allow"):
        load_config(write(tmp_path, f"unsigned_images = {value}\n"))


def test_checkpoint_timeout_defaults_to_an_hour_and_0_means_no_limit(tmp_path: Path) -> None:
    assert load_config(str(tmp_path / "absent.toml")).checkpoint_timeout == 3600.0
    assert load_config(write(tmp_path, "checkpoint_timeout = 90\n")).checkpoint_timeout == 90.0
    assert load_config(write(tmp_path, "checkpoint_timeout = 0\n")).checkpoint_timeout is None


def test_restore_timeout_defaults_below_the_ecs_start_timeout_and_0_means_no_limit(
    tmp_path: Path,
) -> None:
    assert load_config(str(tmp_path / "absent.toml")).restore_timeout == 45.0
    assert load_config(write(tmp_path, "restore_timeout = 20\n")).restore_timeout == 20.0
    assert load_config(write(tmp_path, "restore_timeout = 2.5\n")).restore_timeout == 2.5
    assert load_config(write(tmp_path, "restore_timeout = 0\n")).restore_timeout is None


@pytest.mark.parametrize("key", ["checkpoint_timeout", "restore_timeout"])
@pytest.mark.parametrize("value", ['"60"', "-1", "true", "1e12"])
def test_time_limits_must_be_seconds(tmp_path: Path, key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"{key} must be a number of seconds"):
        load_config(write(tmp_path, f"{key} = {value}\n"))


def test_platform_defaults_to_none_and_takes_ecs_or_batch(tmp_path: Path) -> None:
    assert load_config(str(tmp_path / "absent.toml")).platform == "none"
    assert load_config(write(tmp_path, 'platform = "batch"\n')).platform == "batch"
    assert load_config(write(tmp_path, 'platform = "ecs"\n')).platform == "ecs"


@pytest.mark.parametrize("value", ['"k8s"', '"ECS"', "1", '""'])
def test_platform_must_be_one_of_three(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="platform must be one of ecs, batch, none"):
        load_config(write(tmp_path, f"platform = {value}\n"))


def test_restore_wait_defaults_below_the_ecs_start_timeout(tmp_path: Path) -> None:
    assert load_config(str(tmp_path / "absent.toml")).restore_wait == 120.0
    assert load_config(write(tmp_path, "restore_wait = 0\n")).restore_wait == 0.0
    assert load_config(write(tmp_path, "restore_wait = 30.5\n")).restore_wait == 30.5


@pytest.mark.parametrize("value", ['"60"', "-1", "true", "1e12"])
def test_restore_wait_must_be_seconds(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="restore_wait must be a number of seconds"):
        load_config(write(tmp_path, f"restore_wait = {value}\n"))


def test_failpoints_default_off_and_must_be_a_boolean(tmp_path: Path) -> None:
    assert load_config(str(tmp_path / "absent.toml")).failpoints is False
    assert load_config(write(tmp_path, "failpoints = true\n")).failpoints is True
    with pytest.raises(ConfigError, match="failpoints must be true or false"):
        load_config(write(tmp_path, 'failpoints = "yes"\n'))
