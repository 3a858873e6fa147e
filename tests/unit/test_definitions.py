"""ECS/Batch definitions rendered from templates/ and checked against botocore's AWS models."""

from __future__ import annotations

import json
from typing import Any

import pytest

from arch.cli.main import main as archctl
from arch.delivery.aws_models import (
    BATCH_REGISTER_JOB_DEFINITION,
    ECS_REGISTER_TASK_DEFINITION,
    request_problems,
)
from arch.delivery.definitions import DefinitionError, parse_assignments, render_definition

EFS = "fs-0123456789abcdef0"


def environment(container: dict[str, Any]) -> dict[str, str]:
    return {entry["name"]: entry["value"] for entry in container["environment"]}


def test_ecs_service_pools_replicas_under_the_family_by_default() -> None:
    document = render_definition("ecs-service", {"family": "web", "image": "nginx:1"})
    (container,) = document["containerDefinitions"]
    assert environment(container) == {"ARCH_ENABLE": "1", "ARCH_CHECKPOINT_POOL": "web"}
    assert container["stopTimeout"] == 120
    assert "volumes" not in document and "mountPoints" not in container


def test_ecs_service_with_efs_mounts_the_volume_it_declares() -> None:
    document = render_definition(
        "ecs-service",
        {
            "family": "web",
            "image": "nginx:1",
            "pool": "web-blue",
            "efs_file_system_id": EFS,
            "efs_container_path": "/data",
            "checkpoint_host_path": "/checkpoint",
            "command": '["sh", "-c", "echo \\"quoted\\" > /data/x"]',
        },
    )
    (container,) = document["containerDefinitions"]
    (volume,) = document["volumes"]
    assert volume["efsVolumeConfiguration"]["fileSystemId"] == EFS
    assert container["mountPoints"] == [
        {"sourceVolume": volume["name"], "containerPath": "/data", "readOnly": False}
    ]
    assert environment(container)["ARCH_CHECKPOINT_POOL"] == "web-blue"
    assert environment(container)["ARCH_CHECKPOINT_HOST_PATH"] == "/checkpoint"
    assert container["command"] == ["sh", "-c", 'echo "quoted" > /data/x']


def test_ecs_task_has_a_fixed_checkpoint_id() -> None:
    document = render_definition(
        "ecs-task", {"family": "nightly", "image": "etl:7", "checkpoint_id": "nightly-etl"}
    )
    (container,) = document["containerDefinitions"]
    assert environment(container) == {"ARCH_ENABLE": "1", "ARCH_CHECKPOINT_ID": "nightly-etl"}


@pytest.mark.parametrize(
    ("kind", "given"),
    [
        ("ecs-service", {"family": "web", "image": "nginx:1"}),
        ("ecs-task", {"family": "nightly", "image": "etl:7", "checkpoint_id": "n"}),
    ],
)
def test_ecs_definitions_place_tasks_only_on_admitted_arch_hosts(
    kind: str, given: dict[str, str]
) -> None:
    # The attribute the userdata writes into ecs.config only after `archctl verify` passed.
    document = render_definition(kind, given)
    assert document["placementConstraints"] == [
        {"type": "memberOf", "expression": "attribute:arch.version exists"}
    ]


def test_batch_job_retries_only_when_the_host_went_away() -> None:
    document = render_definition(
        "batch-job",
        {"name": "train", "image": "repo/train:3", "efs_file_system_id": EFS, "attempts": "5"},
    )
    strategy = document["retryStrategy"]
    assert strategy["attempts"] == 5
    # First match wins, and AWS retries when no condition matches: the catch-all EXIT is last.
    assert strategy["evaluateOnExit"] == [
        {"onStatusReason": "Host EC2*", "action": "RETRY"},
        {"onReason": "*", "action": "EXIT"},
    ]
    properties = document["containerProperties"]
    assert environment(properties) == {"ARCH_ENABLE": "1"}  # the id defaults to AWS_BATCH_JOB_ID
    assert properties["volumes"][0]["efsVolumeConfiguration"]["fileSystemId"] == EFS
    assert properties["mountPoints"][0]["sourceVolume"] == properties["volumes"][0]["name"]
    assert {"type": "MEMORY", "value": "2048"} in properties["resourceRequirements"]


@pytest.mark.parametrize(
    ("kind", "given", "message"),
    [
        ("ecs-task", {"family": "f", "image": "i"}, "needs --param checkpoint_id"),
        ("ecs-task", {"family": "f", "image": "i", "checkpoint_id": ".."}, "checkpoint_id"),
        ("ecs-service", {"family": "f", "image": "i", "colour": "red"}, "no parameter colour"),
        ("ecs-service", {"family": "f", "image": "i", "stop_timeout": "121"}, "out of range"),
        ("ecs-service", {"family": "f/g", "image": "i"}, "family"),
        ("batch-job", {"name": "n", "image": "i", "efs_file_system_id": "fs-xyz"}, "EFS"),
        ("batch-job", {"name": "n", "image": "i", "attempts": "11"}, "out of range"),
        ("batch-job", {"name": "n", "image": "i", "command": "echo 'open"}, "cannot split"),
        ("batch-job", {"name": "n", "image": "i", "command": "[1]"}, "array of strings"),
        ("lambda", {}, "no template"),
    ],
)
def test_bad_parameters_are_refused(kind: str, given: dict[str, str], message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        render_definition(kind, given)


def test_assignments() -> None:
    assert parse_assignments(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    with pytest.raises(DefinitionError, match="twice"):
        parse_assignments(["a=1", "a=2"])
    with pytest.raises(DefinitionError, match="KEY=VALUE"):
        parse_assignments(["a"])


def test_model_check_reports_each_departure() -> None:
    document = {
        "containerDefinitions": [{"name": "app", "image": "x", "cpu": "2", "colour": "red"}],
        "networkMode": "overlay",
    }
    problems = request_problems(document, ECS_REGISTER_TASK_DEFINITION)
    assert 'Missing required parameter in input: "family"' in problems, problems
    assert any(
        problem.startswith("Invalid type for parameter containerDefinitions[0].cpu")
        for problem in problems
    )
    assert any(
        problem.startswith('Unknown parameter in containerDefinitions[0]: "colour"')
        for problem in problems
    )
    assert (
        "Invalid value for parameter networkMode: 'overlay', must be one of: "
        "['bridge', 'host', 'awsvpc', 'none']" in problems
    )
    assert len(problems) == 4


def test_model_check_of_batch_values() -> None:
    document = {
        "jobDefinitionName": "j",
        "type": "container",
        "retryStrategy": {"attempts": "3", "evaluateOnExit": [{"action": "AGAIN"}]},
        "tags": {"a": 1},
    }
    problems = request_problems(document, BATCH_REGISTER_JOB_DEFINITION)
    assert any(p.startswith("Invalid type for parameter retryStrategy.attempts") for p in problems)
    assert any(p.startswith("Invalid type for parameter tags.a") for p in problems)
    assert any(
        p.startswith("Invalid value for parameter retryStrategy.evaluateOnExit[0].action")
        for p in problems
    ), problems


def test_a_template_that_renders_a_bad_request_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import arch.delivery.definitions as definitions

    def bad_template(name: str, context: dict[str, Any]) -> str:
        return json.dumps({"family": "f", "containerDefinitions": [], "placement": "anywhere"})

    monkeypatch.setattr(definitions, "render_template", bad_template)
    with pytest.raises(DefinitionError) as refused:
        render_definition("ecs-task", {"family": "f", "image": "busybox", "checkpoint_id": "j"})
    message = str(refused.value)
    assert message.startswith("ecs-task.json.j2 is not a valid ecs RegisterTaskDefinition request")
    assert "API_RegisterTaskDefinition.html" in message
    assert 'Unknown parameter in input: "placement"' in message


def test_archctl_template_prints_json_and_refuses_bad_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert archctl(["template", "batch-job", "-p", "name=j", "-p", "image=busybox"]) == 0
    assert json.loads(capsys.readouterr().out)["jobDefinitionName"] == "j"
    assert archctl(["template", "ecs-task", "-p", "family=f", "-p", "image=i"]) == 2
    assert "checkpoint_id" in capsys.readouterr().err
