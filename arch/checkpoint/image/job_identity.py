"""What identifies a job, recorded in its image and compared before a create becomes a restore.

An image restores only into the job it was taken from: the same command (process.args), working
directory, user (uid, gid, additional gids), container image (arch.checkpoint.image.fingerprint)
and environment, except the variables the platform sets per task or attempt and ARCH's own
(PER_TASK_VARIABLES, ARCH_PREFIX; the README lists why each is there). Everything is read from
config.json as runc reads it (arch.container.oci_spec), after ARCH's own shared-filesystem
rewrite on both sides, so a checkpoint and the following create compare like with like.

Environment values can hold secrets: the image records a salted sha256 per variable, not the
value, and a mismatch is reported by field and variable name, never by value.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from arch.checkpoint.image.errors import InvalidImage

if TYPE_CHECKING:
    from collections.abc import Mapping

# Set by the platform for one task, container or attempt: a new task of the same job gets new
# values, which must not block its restore.
PER_TASK_VARIABLES = frozenset(
    {
        "HOSTNAME",  # Docker/containerd: the container's host name (Docker: its id)
        "ECS_CONTAINER_METADATA_URI",  # ECS: task metadata endpoint v3, per container
        "ECS_CONTAINER_METADATA_URI_V4",  # ECS: task metadata endpoint v4, per container
        "ECS_CONTAINER_METADATA_FILE",  # ECS agent: per-task metadata file path
        "ECS_AGENT_URI",  # ECS: per-task agent endpoint
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",  # ECS: per-task role credentials path
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",  # per-task credentials endpoint (when used)
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",  # its token
        "AWS_BATCH_JOB_ATTEMPT",  # Batch: attempt number, 1, 2, ...
        "AWS_BATCH_CE_NAME",  # Batch: compute environment the attempt was placed in
        "AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS",  # Batch multi-node: main node's address
        "AWS_BATCH_JOB_KUBERNETES_NODE_UID",  # Batch on EKS: the node
    }
)
ARCH_PREFIX = "ARCH_"  # ARCH's own settings: where the image lives, not what the job is

COMMAND, WORKDIR, USER, IMAGE, ENVIRONMENT = (
    "command", "working directory", "user", "container image", "environment",
)  # fmt: skip
SALT_BYTES = 16


def bound_environment(env: list[str] | tuple[str, ...]) -> dict[str, str]:
    """The variables that identify the job: runc's last-wins view minus the per-task ones."""
    from arch.container.identity import env_map

    return {
        name: value
        for name, value in env_map(env).items()
        if name not in PER_TASK_VARIABLES and not name.startswith(ARCH_PREFIX)
    }


@dataclass(frozen=True)
class JobIdentity:
    args: tuple[str, ...]
    cwd: str
    uid: int
    gid: int
    additional_gids: tuple[int, ...]
    image: str | None  # image_fingerprint of the rootfs's layers; None: not an overlay rootfs
    env_salt: str
    env_digests: tuple[tuple[str, str], ...]  # (name, salted sha256 of the value), by name

    @classmethod
    def of(
        cls, spec: Mapping[str, Any], image: str | None, env_salt: str | None = None
    ) -> JobIdentity:
        """The identity of the job in a decoded config.json (arch.container.oci_spec)."""
        from arch.container.oci_spec import zero_process

        process = spec.get("process") or zero_process()
        user = process["user"]
        salt = env_salt if env_salt is not None else os.urandom(SALT_BYTES).hex()
        env = bound_environment(process["env"] or [])
        return cls(
            args=tuple(process["args"] or ()),
            cwd=process["cwd"],
            uid=user["uid"],
            gid=user["gid"],
            additional_gids=tuple(sorted(set(user["additionalGids"] or ()))),
            image=image,
            env_salt=salt,
            env_digests=tuple((name, _digest(salt, name, env[name])) for name in sorted(env)),
        )

    def differences(self, spec: Mapping[str, Any], image: str | None) -> list[str]:
        """The fields in which the job in `spec` (with rootfs image `image`) differs from this
        recorded one; variable names for the environment, never values."""
        other = JobIdentity.of(spec, image, self.env_salt)
        user, other_user = (
            (identity.uid, identity.gid, identity.additional_gids) for identity in (self, other)
        )
        differing = [
            name
            for name, same in (
                (COMMAND, other.args == self.args),
                (WORKDIR, other.cwd == self.cwd),
                (USER, other_user == user),
                (IMAGE, other.image == self.image),
            )
            if not same
        ]
        mine, theirs = dict(self.env_digests), dict(other.env_digests)
        variables = sorted(
            name for name in set(mine) | set(theirs) if mine.get(name) != theirs.get(name)
        )
        if variables:
            differing.append(f"{ENVIRONMENT} ({', '.join(variables)})")
        return differing

    def to_dict(self) -> dict[str, Any]:
        return {
            "args": list(self.args),
            "cwd": self.cwd,
            "user": {
                "uid": self.uid,
                "gid": self.gid,
                "additional_gids": list(self.additional_gids),
            },
            "image": self.image,
            "env_salt": self.env_salt,
            "env_sha256": dict(self.env_digests),
        }

    @classmethod
    def from_dict(cls, value: object) -> JobIdentity:
        """Parse metadata.json's `identity` section (InvalidImage when malformed)."""
        section = _object(value, "identity")
        user = _object(section.get("user"), "identity.user")
        args = section.get("args")
        if not isinstance(args, list) or not all(isinstance(arg, str) for arg in args):
            raise InvalidImage("metadata.json: identity.args must be a list of strings")
        gids = user.get("additional_gids")
        if not isinstance(gids, list) or not all(_is_id(gid) for gid in gids):
            raise InvalidImage("metadata.json: identity.user.additional_gids must be ids")
        image = section.get("image")
        salt = section.get("env_salt")
        digests = _object(section.get("env_sha256"), "identity.env_sha256")
        if not isinstance(section.get("cwd"), str) or not (image is None or isinstance(image, str)):
            raise InvalidImage("metadata.json: identity.cwd and identity.image must be strings")
        if (
            not isinstance(salt, str)
            or not salt
            or not set(salt) <= set("0123456789abcdef")
            or not all(isinstance(digest, str) for digest in digests.values())
        ):
            raise InvalidImage(
                "metadata.json: identity.env_salt must be hex and env_sha256 hold strings"
            )
        if not _is_id(user.get("uid")) or not _is_id(user.get("gid")):
            raise InvalidImage("metadata.json: identity.user.uid and gid must be ids")
        return cls(
            args=tuple(args),
            cwd=section["cwd"],
            uid=user["uid"],
            gid=user["gid"],
            additional_gids=tuple(sorted(set(gids))),
            image=image,
            env_salt=salt,
            env_digests=tuple(sorted(digests.items())),
        )


def _digest(salt: str, name: str, value: str) -> str:
    message = f"{name}={value}".encode("utf-8", "surrogatepass")
    return hmac.new(salt.encode("ascii"), message, hashlib.sha256).hexdigest()


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidImage(f"metadata.json: {where} must be an object")
    return value


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32
