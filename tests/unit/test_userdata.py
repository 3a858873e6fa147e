"""archctl userdata: option checks, and every rendered variant passes bash -n and shellcheck."""

from __future__ import annotations

import email
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from arch.cli.main import main as archctl
from arch.delivery.userdata import PackageSource, UserdataError, UserdataOptions, render_userdata
from tests.conftest import unavailable

WHEEL = "arch-0.1.0-py3-none-any.whl"
VARIANTS = {
    "url, local storage, batch": UserdataOptions(
        PackageSource.parse(f"https://example.com/dist/{WHEEL}?versionId=3"), spot_watch=False
    ),
    "s3, efs, ecs, ssm key": UserdataOptions(
        PackageSource.parse(f"s3://my-bucket/arch/{WHEEL}"),
        package_sha256="a" * 64,
        efs_file_system_id="fs-0123456789abcdef0",
        ecs_cluster="prod",
        fleet_key_ssm_parameter="/arch/fleet-key",
    ),
    "bundle over https, ecs": UserdataOptions(
        PackageSource.parse("https://example.com/dist/arch-bundle.tar"), ecs_cluster="prod"
    ),
    "file, efs in another region, key file": UserdataOptions(
        PackageSource.parse(f"/opt/dist/{WHEEL}"),
        efs_file_system_id="fs-01234567",
        efs_region="eu-west-1",
        checkpoint_root="/mnt/checkpoints",
        fleet_key_file="/etc/arch/fleet.key",
        role_variables={"arch_log_level": "debug"},
    ),
    "url, secrets manager key": UserdataOptions(
        PackageSource.parse(f"https://example.com/dist/{WHEEL}"),
        fleet_key_secret="arn:aws:secretsmanager:eu-west-1:123456789012:secret:arch/fleet-AbCdEf",
    ),
}


def shellcheck() -> str:
    found = shutil.which("shellcheck")
    if found is None:
        unavailable("shellcheck is not installed (Debian package shellcheck)")
    return found


def embedded_role_vars(script: str) -> dict[str, object]:
    match = re.search(r"<<'ARCH_ROLE_VARS'\n(.*?)\nARCH_ROLE_VARS\n", script, re.S)
    assert match is not None
    loaded: dict[str, object] = json.loads(match.group(1))
    return loaded


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_rendered_variants_pass_bash_n_and_shellcheck(name: str, tmp_path: Path) -> None:
    script = tmp_path / "userdata.sh"
    script.write_text(render_userdata(VARIANTS[name]))
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    lint = subprocess.run([shellcheck(), str(script)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_options_reach_the_script() -> None:
    script = render_userdata(VARIANTS["s3, efs, ecs, ssm key"])
    assert script.startswith("#!/bin/bash\n")
    assert "set -Eeuo pipefail" in script
    assert "readonly package_kind=s3\n" in script
    assert f"readonly package_name={WHEEL}\n" in script
    assert "readonly efs_file_system_id=fs-0123456789abcdef0\n" in script
    assert "readonly fleet_key_ssm_parameter=/arch/fleet-key\n" in script
    role_vars = embedded_role_vars(script)
    assert role_vars["arch_docker_default_runtime"] is True
    assert role_vars["arch_ecs"] is True  # the role's Spot settings for the agent
    # ECS_CLUSTER is written by the script after `archctl verify` passed, never by the role.
    assert "arch_ecs_agent_settings" not in role_vars
    assert "readonly ecs_cluster=prod\n" in script
    assert "readonly ecs_admission=true\n" in script
    assert role_vars["arch_spot_watch_enabled"] is True
    assert role_vars["arch_platform"] == "ecs"  # with a cluster: an ECS host


def test_batch_instances_get_no_cluster_and_role_vars_pass_through() -> None:
    batch = embedded_role_vars(render_userdata(VARIANTS["url, local storage, batch"]))
    assert batch["arch_ecs"] is True and "arch_ecs_agent_settings" not in batch
    assert batch["arch_spot_watch_enabled"] is False
    assert batch["arch_platform"] == "batch"  # no cluster: Batch registers the instance
    pushed = UserdataOptions(PackageSource.parse(f"/tmp/{WHEEL}"), configure_ecs_agent=False)
    assert embedded_role_vars(render_userdata(pushed))["arch_ecs"] is False
    assert "readonly ecs_admission=false\n" in render_userdata(pushed)
    assert embedded_role_vars(render_userdata(pushed))["arch_platform"] == "none"
    chosen = UserdataOptions(PackageSource.parse(f"/tmp/{WHEEL}"), platform="ecs")
    assert embedded_role_vars(render_userdata(chosen))["arch_platform"] == "ecs"
    with pytest.raises(UserdataError, match="--platform"):
        render_userdata(UserdataOptions(PackageSource.parse(f"/tmp/{WHEEL}"), platform="k8s"))
    custom = embedded_role_vars(render_userdata(VARIANTS["file, efs in another region, key file"]))
    assert custom["arch_log_level"] == "debug"
    assert custom["arch_checkpoint_root"] == "/mnt/checkpoints"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("ftp://host/arch-0.1.0-py3-none-any.whl", "give a wheel URL"),
        ("relative/arch-0.1.0-py3-none-any.whl", "give a wheel URL"),
        ("https://example.com/download?id=3", "wheel file name"),
        ("/opt/dist/arch.tar.gz", "wheel file name"),
        ("s3://Bad_Bucket/arch-0.1.0-py3-none-any.whl", "s3://BUCKET/KEY"),
        ("/opt/$(reboot)/arch-0.1.0-py3-none-any.whl", "not allowed"),
    ],
)
def test_bad_package_sources(source: str, message: str) -> None:
    with pytest.raises(UserdataError, match=re.escape(message)):
        PackageSource.parse(source)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"package_sha256": "abc"}, "sha256"),
        ({"efs_file_system_id": "fs-1"}, "EFS id"),
        ({"efs_region": "Europe"}, "AWS region"),
        ({"checkpoint_root": "/x/../etc"}, "absolute path"),
        ({"ecs_cluster": "a b"}, "cluster name"),
        ({"fleet_key_file": "/k", "fleet_key_ssm_parameter": "/k"}, "not several"),
        ({"fleet_key_ssm_parameter": "/k", "fleet_key_secret": "k"}, "not several"),
        ({"fleet_key_secret": "a b"}, "not a Secrets Manager name or ARN"),
        ({"fleet_key_secret": "arn:aws:s3:::bucket"}, "not a Secrets Manager name or ARN"),
        ({"fleet_key_ssm_parameter": "a b"}, "SSM name"),
        ({"role_variables": {"ansible_user": "x"}}, "arch_*"),
    ],
)
def test_bad_options(changes: dict[str, object], message: str) -> None:
    options = UserdataOptions(PackageSource.parse(f"/opt/{WHEEL}"), **changes)  # type: ignore[arg-type]
    with pytest.raises(UserdataError, match=re.escape(message)):
        render_userdata(options)


def test_archctl_userdata_writes_an_executable_script(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "userdata.sh"
    argv = ["userdata", "--package", f"/opt/{WHEEL}", "--ecs-cluster", "prod", "-o", str(output)]
    assert archctl(argv) == 0
    assert output.stat().st_mode & 0o777 == 0o700
    assert "ECS_CLUSTER" in output.read_text()
    assert archctl(["userdata", "--package", "nope"]) == 2
    assert "give a wheel URL" in capsys.readouterr().err


def test_mime_wrapping_for_batch_launch_templates(tmp_path: Path) -> None:
    output = tmp_path / "userdata.mime"
    assert archctl(["userdata", "--package", f"/opt/{WHEEL}", "--mime", "-o", str(output)]) == 0
    message = email.message_from_string(output.read_text())
    assert message.is_multipart() and message.get_content_type() == "multipart/mixed"
    (part,) = message.get_payload()
    assert part.get_content_type() == "text/x-shellscript"
    assert part.get_payload().startswith("#!/bin/bash\n")
    assert part.get_payload().rstrip().endswith('log "done: ARCH is installed and verified"')
