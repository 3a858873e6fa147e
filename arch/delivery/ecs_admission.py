"""Fail closed: an instance joins its ECS cluster, marked as an ARCH host, only once ARCH works.

The ECS agent reads /etc/ecs/ecs.config (KEY=VALUE lines) when it starts: ECS_CLUSTER names the
cluster it registers the instance in, ECS_INSTANCE_ATTRIBUTES (a JSON object) the custom
attributes it registers with the instance. ("Amazon ECS container agent configuration",
https://docs.aws.amazon.com/AmazonECS/latest/developerguide/ecs-agent-config.html.) ARCH's
task definitions carry the placement constraint `attribute:arch.version exists` ("Create
expressions to define container instances for Amazon ECS tasks",
https://docs.aws.amazon.com/AmazonECS/latest/developerguide/cluster-query-language.html), so
ECS places ARCH tasks only on instances that registered ARCH's attribute.

The userdata bootstrap runs `withdraw` before it changes the host and `admit` only after
`archctl verify` passed; its ecs.service drop-in (templates/userdata.sh.j2) refuses to start the
agent while ecs.config lacks the attribute, so a failed bootstrap never joins any cluster (an
agent without ECS_CLUSTER would register in `default`).

Run with the system python3 from the unpacked wheel (`PYTHONPATH=... python3 -m
arch.delivery.ecs_admission`): standard library only, the running ARCH's own version.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from arch import __version__

ECS_CONFIG = "/etc/ecs/ecs.config"
ATTRIBUTE = "arch.version"
# What placement constraints test: the instance registered ARCH's attribute.
PLACEMENT_EXPRESSION = f"attribute:{ATTRIBUTE} exists"
CLUSTER_KEY = "ECS_CLUSTER"
ATTRIBUTES_KEY = "ECS_INSTANCE_ATTRIBUTES"
# Attribute values: up to 128 letters, numbers, hyphens, underscores, periods, at signs, forward
# slashes, colons and spaces (API Reference, "Attribute"); the agent exits for good (status 5,
# RestartPreventExitStatus of ecs.service) on an invalid attribute.
_VALUE_FORBIDDEN = re.compile(r"[^A-Za-z0-9_.@/: -]")
# ECS cluster names: up to 255 letters, numbers, underscores and hyphens (API "CreateCluster").
_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


class AdmissionError(Exception):
    """ecs.config cannot be read or changed as asked."""


def attribute_value(version: str = __version__) -> str:
    """ARCH's version as an ECS attribute value (a PEP 440 local part's `+` becomes `-`)."""
    return _VALUE_FORBIDDEN.sub("-", version)[:128]


def _attributes(lines: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in lines:
        if line.startswith(f"{ATTRIBUTES_KEY}="):
            text = line.split("=", 1)[1].strip()
            try:
                value = json.loads(text) if text else {}
            except json.JSONDecodeError as error:
                raise AdmissionError(f"{ATTRIBUTES_KEY} is not a JSON object: {error}") from None
            if not isinstance(value, dict) or not all(
                isinstance(item, str) for item in value.values()
            ):
                raise AdmissionError(f"{ATTRIBUTES_KEY} is not a JSON object of strings")
            found = value  # the agent reads the last assignment, as a shell would
    return found


def _with_setting(lines: list[str], key: str, value: str | None) -> list[str]:
    """lines with every `key=` line replaced by one `key=value` (None: removed) in place."""
    result: list[str] = []
    placed = False
    for line in lines:
        if line.startswith(f"{key}="):
            if value is not None and not placed:
                result.append(f"{key}={value}")
                placed = True
            continue
        result.append(line)
    if value is not None and not placed:
        result.append(f"{key}={value}")
    return result


def admitted_lines(lines: Sequence[str], cluster: str, version: str = __version__) -> list[str]:
    """ecs.config's lines with ECS_CLUSTER (when given) and ARCH's attribute set; other lines
    and other attributes kept."""
    attributes = {**_attributes(lines), ATTRIBUTE: attribute_value(version)}
    result = _with_setting(list(lines), ATTRIBUTES_KEY, json.dumps(attributes, sort_keys=True))
    if cluster:
        result = _with_setting(result, CLUSTER_KEY, cluster)
    return result


def withdrawn_lines(lines: Sequence[str]) -> list[str]:
    """ecs.config's lines without ARCH's attribute (other attributes kept)."""
    attributes = {name: value for name, value in _attributes(lines).items() if name != ATTRIBUTE}
    encoded = json.dumps(attributes, sort_keys=True) if attributes else None
    return _with_setting(list(lines), ATTRIBUTES_KEY, encoded)


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    except OSError as error:
        raise AdmissionError(f"cannot read {path}: {error.strerror}") from None


def write_lines(path: Path, lines: Sequence[str]) -> None:
    """Replace the file atomically (the agent may start at any moment), mode 0644 like the
    AMI's own ecs.config."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.arch-tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as output:
            output.write("".join(f"{line}\n" for line in lines))
            output.flush()
            os.fsync(output.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as error:
        raise AdmissionError(f"cannot write {path}: {error.strerror}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m arch.delivery.ecs_admission",
        description="Admit this instance to its ECS cluster as an ARCH host, or withdraw it.",
    )
    parser.add_argument("action", choices=("admit", "withdraw"))
    parser.add_argument("--config", default=ECS_CONFIG, type=Path)
    parser.add_argument("--cluster", default="", help="ECS_CLUSTER to write (admit)")
    args = parser.parse_args(argv)
    if args.cluster and _CLUSTER_NAME.match(args.cluster) is None:
        print(f"ecs_admission: {args.cluster!r} is not an ECS cluster name", file=sys.stderr)
        return 2
    try:
        lines = read_lines(args.config)
        if args.action == "admit":
            changed = admitted_lines(lines, args.cluster)
        else:
            changed = withdrawn_lines(lines)
        if changed != lines:
            write_lines(args.config, changed)
    except AdmissionError as error:
        print(f"ecs_admission: {error}", file=sys.stderr)
        return 1
    for line in changed:
        if line.startswith((f"{CLUSTER_KEY}=", f"{ATTRIBUTES_KEY}=")):
            print(f"{args.config}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
