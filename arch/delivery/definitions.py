"""ECS task definitions and AWS Batch job definitions that opt a workload in to ARCH.

Each kind has a template in templates/, a table of parameters (given as KEY=VALUE, checked and
converted here) and the AWS request its output must be (checked against botocore's service
model: arch.delivery.aws_models).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from arch import __version__
from arch.delivery.aws_models import (
    BATCH_REGISTER_JOB_DEFINITION,
    ECS_REGISTER_TASK_DEFINITION,
    AwsRequest,
    ModelUnavailable,
    request_problems,
)
from arch.delivery.ecs_admission import PLACEMENT_EXPRESSION
from arch.delivery.render import render_template

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

ARCH_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
EFS_ID = re.compile(r"^fs-[0-9a-f]{8,40}$")
ECS_NAME = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
BATCH_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class DefinitionError(Exception):
    """Bad parameters, or a rendered definition that does not have the shape AWS documents."""


Converter = Callable[[str], Any]


def _matching(pattern: re.Pattern[str], what: str) -> Converter:
    def convert(text: str) -> str:
        if pattern.fullmatch(text) is None or text in (".", ".."):
            raise ValueError(f"{text!r} is not {what}")
        return text

    return convert


def _integer(low: int, high: int | None = None) -> Converter:
    def convert(text: str) -> int:
        try:
            number = int(text, 10)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
        if number < low or (high is not None and number > high):
            bound = f"{low}..{high}" if high is not None else f">= {low}"
            raise ValueError(f"{number} is out of range ({bound})")
        return number

    return convert


def _absolute_path(text: str) -> str:
    if not text.startswith("/") or "\x00" in text:
        raise ValueError(f"{text!r} is not an absolute path")
    return text


def _optional(convert: Converter) -> Converter:
    return lambda text: convert(text) if text else ""


def _command(text: str) -> list[str]:
    """A JSON array of strings, or a command line split like a shell would."""
    if text.lstrip().startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"not a JSON array: {error}") from None
        if not isinstance(parsed, list) or not all(isinstance(word, str) for word in parsed):
            raise ValueError("a JSON command must be an array of strings")
        return parsed
    try:
        return shlex.split(text)
    except ValueError as error:
        raise ValueError(f"cannot split {text!r}: {error}") from None


def _one_of(*choices: str) -> Converter:
    def convert(text: str) -> str:
        if text not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return text

    return convert


@dataclass(frozen=True)
class Parameter:
    name: str
    help: str
    convert: Converter
    default: str | None = None  # None: the parameter is required


@dataclass(frozen=True)
class DefinitionKind:
    name: str
    template: str
    summary: str
    request: AwsRequest
    parameters: tuple[Parameter, ...]
    # Parameters whose default is another parameter's value (e.g. the pool is the family).
    defaults_from: tuple[tuple[str, str], ...] = ()


_EFS_PARAMETERS = (
    Parameter(
        "efs_file_system_id",
        "EFS file system (fs-...) mounted into the container; the same one the hosts mount as "
        "their checkpoint root (userdata --efs), so the restored process finds its files",
        _optional(_matching(EFS_ID, "an EFS file system id (fs-...)")),
        "",
    ),
    Parameter("efs_container_path", "where the EFS volume appears", _absolute_path, "/shared"),
    Parameter("efs_root_directory", "directory of the file system to mount", _absolute_path, "/"),
    Parameter(
        "checkpoint_host_path",
        "host directory for the images (ARCH_CHECKPOINT_HOST_PATH; empty: the host's "
        "checkpoint_root)",
        _optional(_absolute_path),
        "",
    ),
)
_ECS_COMMON = (
    Parameter("family", "task definition family", _matching(ECS_NAME, "an ECS family name")),
    Parameter("image", "container image", _matching(re.compile(r"^\S{1,255}$"), "an image")),
    Parameter("container_name", "container name", _matching(ECS_NAME, "a name"), "app"),
    Parameter("cpu", "CPU units", _integer(0), "256"),
    Parameter("memory", "hard memory limit, MiB", _integer(6), "512"),
    Parameter("command", "command: a JSON array or a shell-style line", _optional(_command), ""),
    Parameter(
        "network_mode",
        "bridge, host, awsvpc or none",
        _one_of("bridge", "host", "awsvpc", "none"),
        "bridge",
    ),
    Parameter(
        "stop_timeout",
        "seconds between SIGTERM and SIGKILL when the task stops (ECS allows at most 120): "
        "time for `archctl checkpoint --all` to finish on a Spot notice",
        _integer(0, 120),
        "120",
    ),
)

KINDS: dict[str, DefinitionKind] = {
    kind.name: kind
    for kind in (
        DefinitionKind(
            name="ecs-service",
            template="ecs-service.json.j2",
            summary="ECS task definition for a service (replicas share a checkpoint pool)",
            request=ECS_REGISTER_TASK_DEFINITION,
            parameters=(
                *_ECS_COMMON,
                Parameter(
                    "pool",
                    "ARCH_CHECKPOINT_POOL (default: the family)",
                    _optional(_matching(ARCH_ID, "a checkpoint pool name ([A-Za-z0-9_.:-])")),
                    "",
                ),
                *_EFS_PARAMETERS,
            ),
            defaults_from=(("pool", "family"),),
        ),
        DefinitionKind(
            name="ecs-task",
            template="ecs-task.json.j2",
            summary="ECS task definition for a standalone task (a fixed checkpoint id)",
            request=ECS_REGISTER_TASK_DEFINITION,
            parameters=(
                *_ECS_COMMON,
                Parameter(
                    "checkpoint_id",
                    "ARCH_CHECKPOINT_ID: the same for every run of this task",
                    _matching(ARCH_ID, "a checkpoint id ([A-Za-z0-9_.:-], at most 128)"),
                ),
                *_EFS_PARAMETERS,
            ),
        ),
        DefinitionKind(
            name="batch-job",
            template="batch-job.json.j2",
            summary="AWS Batch job definition (retried when the Spot host was reclaimed)",
            request=BATCH_REGISTER_JOB_DEFINITION,
            parameters=(
                Parameter("name", "job definition name", _matching(BATCH_NAME, "a name")),
                Parameter("image", "container image", _matching(re.compile(r"^\S+$"), "an image")),
                Parameter("vcpus", "vCPUs", _integer(1), "1"),
                Parameter("memory", "memory, MiB", _integer(4), "2048"),
                Parameter("command", "a JSON array or a shell-style line", _optional(_command), ""),
                Parameter("attempts", "attempts in all (1..10)", _integer(1, 10), "3"),
                *_EFS_PARAMETERS,
            ),
        ),
    )
}


def parse_assignments(assignments: Sequence[str]) -> dict[str, str]:
    """KEY=VALUE strings as a dict; a KEY given twice is an error."""
    values: dict[str, str] = {}
    for assignment in assignments:
        key, separator, value = assignment.partition("=")
        if not separator or not key:
            raise DefinitionError(f"{assignment!r} is not KEY=VALUE")
        if key in values:
            raise DefinitionError(f"{key} is given twice")
        values[key] = value
    return values


def definition_context(kind: DefinitionKind, given: Mapping[str, str]) -> dict[str, Any]:
    """The template's values: every parameter converted, defaults filled in."""
    known = {parameter.name for parameter in kind.parameters}
    unknown = sorted(set(given) - known)
    if unknown:
        raise DefinitionError(
            f"{kind.name} has no parameter {', '.join(unknown)} "
            f"(it takes: {', '.join(sorted(known))})"
        )
    context: dict[str, Any] = {}
    for parameter in kind.parameters:
        text = given.get(parameter.name, parameter.default)
        if text is None:
            raise DefinitionError(
                f"{kind.name} needs --param {parameter.name}=... ({parameter.help})"
            )
        try:
            context[parameter.name] = parameter.convert(text)
        except ValueError as error:
            raise DefinitionError(f"{parameter.name}: {error}") from None
    for name, source in kind.defaults_from:
        if not context[name]:
            context[name] = context[source]
    context["rendered_by"] = f"archctl {__version__}"
    context["arch_placement_expression"] = PLACEMENT_EXPRESSION
    return context


def render_definition(kind_name: str, given: Mapping[str, str]) -> dict[str, Any]:
    """The definition as a JSON object, checked against the request's AWS service model."""
    kind = KINDS.get(kind_name)
    if kind is None:
        raise DefinitionError(f"no template {kind_name!r} (known: {', '.join(sorted(KINDS))})")
    text = render_template(kind.template, definition_context(kind, given))
    try:
        document: dict[str, Any] = json.loads(text)
    except json.JSONDecodeError as error:
        raise DefinitionError(f"{kind.template} rendered invalid JSON: {error}") from None
    try:
        problems = request_problems(document, kind.request)
    except ModelUnavailable as error:
        raise DefinitionError(str(error)) from None
    if problems:
        raise DefinitionError(
            f"{kind.template} is not a valid {kind.request.service} {kind.request.operation} "
            f"request ({kind.request.documentation}): " + "; ".join(problems)
        )
    return document
