"""The EC2 userdata bootstrap (templates/userdata.sh.j2): options, their checks, rendering.

The rendered script is the first-boot script of a stock ECS-optimized (or Batch) instance: it
fetches the arch wheel, runs the Ansible role bundled inside it on the instance, configures the
ECS agent through the role, and ends with `archctl verify`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from arch import __version__
from arch.delivery.definitions import ECS_NAME, EFS_ID
from arch.delivery.render import render_template

# PEP 427: {distribution}-{version}(-{build tag})?-{python tag}-{abi tag}-{platform tag}.whl
WHEEL_NAME = re.compile(
    r"^[A-Za-z0-9_.]+-[A-Za-z0-9_.!+]+(-[0-9][A-Za-z0-9_.]*)?-[^-/]+-[^-/]+-[^-/]+\.whl$"
)
# What `archctl bundle` writes: any name ending in .tar.
BUNDLE_NAME = re.compile(r"^[A-Za-z0-9_.+-]+\.tar$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
SSM_PARAMETER = re.compile(r"^[A-Za-z0-9_.\-/]{1,2048}$")
# Secrets Manager, GetSecretValue: SecretId is "the ARN or name of the secret"; CreateSecret: a
# name "can contain ASCII letters, numbers, and the following characters: /_+=.@-" (at most
# 512). https://docs.aws.amazon.com/secretsmanager/latest/apireference/API_GetSecretValue.html
SECRET_ID = re.compile(
    r"^(arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:)?[A-Za-z0-9/_+=.@-]{1,512}$"
)
S3_URL = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/\S+$")
ROLE_VARIABLE = re.compile(r"^arch_[a-z0-9_]+$")
# Where the instance keeps the wheel, the unpacked role and the bootstrap log.
WORK_DIR = "/var/lib/arch/bootstrap"
LOG_FILE = "/var/log/arch-bootstrap.log"
MIME_BOUNDARY = "==ARCH-USERDATA-BOUNDARY=="


class UserdataError(Exception):
    """An option the bootstrap cannot work with."""


@dataclass(frozen=True)
class PackageSource:
    kind: str  # "url", "s3" or "file"
    location: str
    wheel_name: str  # the file name: a wheel, or a bundle (.tar)

    @property
    def is_bundle(self) -> bool:
        return self.wheel_name.endswith(".tar")

    @classmethod
    def parse(cls, text: str) -> PackageSource:
        """A wheel or bundle: URL (http/https), s3:// path, or absolute path on the instance."""
        if text.startswith("s3://"):
            kind, path = "s3", text[len("s3://") :]
            if S3_URL.match(text) is None:
                raise UserdataError(f"{text!r} is not an s3://BUCKET/KEY path")
        elif text.startswith(("https://", "http://")):
            kind, path = "url", urlsplit(text).path
        elif text.startswith("/"):
            kind, path = "file", text
        else:
            raise UserdataError(
                f"--package {text!r}: give a wheel URL (https://...), an s3:// path or an "
                "absolute path of a wheel on the instance"
            )
        if any(character.isspace() or character in "'\"\\`$" for character in text):
            raise UserdataError(f"--package {text!r}: quotes, spaces and $ are not allowed")
        name = PurePosixPath(path).name
        if WHEEL_NAME.match(name) is None and BUNDLE_NAME.match(name) is None:
            raise UserdataError(
                f"--package {text!r} does not end in a wheel file name "
                "(arch-VERSION-py3-none-any.whl) or a bundle's (NAME.tar, `archctl bundle`)"
            )
        return cls(kind, text, name)


@dataclass(frozen=True)
class UserdataOptions:
    package: PackageSource
    package_sha256: str = ""
    efs_file_system_id: str = ""
    efs_region: str = ""  # empty: the instance's region (instance metadata)
    checkpoint_root: str = "/checkpoint"
    ecs_cluster: str = ""
    spot_watch: bool = True
    fleet_key_file: str = ""
    fleet_key_ssm_parameter: str = ""
    fleet_key_secret: str = ""  # a Secrets Manager secret (name or ARN) holding the key
    role_variables: dict[str, str] = field(default_factory=dict)
    # ECS/Batch instances: write the ECS agent's settings (hosts pushed to by `archctl remote`
    # without an ECS cluster are not assumed to run the agent).
    configure_ecs_agent: bool = True
    # arch.toml `platform` (ecs, batch, none); "": ecs with an ECS cluster, else batch (Batch
    # registers its instances itself), none for hosts without the agent.
    platform: str = ""

    @property
    def effective_platform(self) -> str:
        if self.platform:
            return self.platform
        if not self.configure_ecs_agent:
            return "none"
        return "ecs" if self.ecs_cluster else "batch"

    def check(self) -> None:
        if self.package_sha256 and SHA256.match(self.package_sha256) is None:
            raise UserdataError("--package-sha256 must be 64 lower-case hex digits")
        if self.efs_file_system_id and EFS_ID.match(self.efs_file_system_id) is None:
            raise UserdataError(f"--efs {self.efs_file_system_id!r} is not an EFS id (fs-...)")
        if self.efs_region and re.fullmatch(r"[a-z]{2}(-[a-z]+)+-[0-9]+", self.efs_region) is None:
            raise UserdataError(f"--efs-region {self.efs_region!r} is not an AWS region")
        if (
            not re.fullmatch(r"/[A-Za-z0-9_./-]*", self.checkpoint_root)
            or ".." in self.checkpoint_root
        ):
            raise UserdataError(f"--checkpoint-root {self.checkpoint_root!r}: an absolute path")
        if self.platform not in ("", "ecs", "batch", "none"):
            raise UserdataError(f"--platform {self.platform!r}: ecs, batch or none")
        if self.ecs_cluster and ECS_NAME.match(self.ecs_cluster) is None:
            raise UserdataError(f"--ecs-cluster {self.ecs_cluster!r} is not an ECS cluster name")
        sources = [self.fleet_key_file, self.fleet_key_ssm_parameter, self.fleet_key_secret]
        if sum(1 for source in sources if source) > 1:
            raise UserdataError(
                "give the fleet key from one of a file, SSM or Secrets Manager, not several"
            )
        if self.fleet_key_secret and not SECRET_ID.match(self.fleet_key_secret):
            raise UserdataError(
                f"--fleet-key-secret {self.fleet_key_secret!r} is not a Secrets Manager name or ARN"
            )
        if self.fleet_key_file and not re.fullmatch(r"/[A-Za-z0-9_./-]+", self.fleet_key_file):
            raise UserdataError(f"--fleet-key-file {self.fleet_key_file!r}: an absolute path")
        if self.fleet_key_ssm_parameter and not SSM_PARAMETER.match(self.fleet_key_ssm_parameter):
            raise UserdataError(
                f"--fleet-key-ssm {self.fleet_key_ssm_parameter!r} is not an SSM name"
            )
        for name in self.role_variables:
            if ROLE_VARIABLE.match(name) is None:
                raise UserdataError(f"--role-var {name}: the role's variables are arch_*")

    def role_vars(self) -> dict[str, Any]:
        """The role's variables known when rendering; the script adds the instance's own.

        arch_ecs gives the ECS agent the Spot settings ARCH relies on for the platform (ECS:
        instance draining and a two-minute stop timeout; Batch: draining off, the jobs are
        held). ECS_CLUSTER is not the role's: the script writes it after `archctl verify`
        passed (fail closed).
        """
        variables: dict[str, Any] = {
            "arch_docker_default_runtime": True,
            "arch_checkpoint_root": self.checkpoint_root,
            "arch_ecs": self.configure_ecs_agent,
            "arch_spot_watch_enabled": self.spot_watch,
            "arch_platform": self.effective_platform,
        }
        variables.update(self.role_variables)
        return variables


def render_userdata(options: UserdataOptions) -> str:
    options.check()
    return render_template(
        "userdata.sh.j2",
        {
            "version": __version__,
            "options": options,
            "package": options.package,
            "role_vars_json": json.dumps(options.role_vars(), indent=2, sort_keys=True),
            "work_dir": WORK_DIR,
            "log_file": LOG_FILE,
        },
    )


def as_mime_multipart(script: str) -> str:
    """The script as MIME multi-part user data (cloud-init's format; what AWS Batch requires
    of a launch template's user data, so that it can add its own part)."""
    if MIME_BOUNDARY in script:
        raise UserdataError("the script contains the MIME boundary")
    return (
        "MIME-Version: 1.0\n"
        f'Content-Type: multipart/mixed; boundary="{MIME_BOUNDARY}"\n'
        "\n"
        f"--{MIME_BOUNDARY}\n"
        'Content-Type: text/x-shellscript; charset="us-ascii"\n'
        "\n"
        f"{script}"
        f"\n--{MIME_BOUNDARY}--\n"
    )
