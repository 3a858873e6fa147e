"""Rendered definitions checked against the AWS service models that botocore ships.

botocore carries each service's API model (every request's members, types, required members,
minimums and enums) and ParamValidator, the check boto3 runs before it sends a request. A
definition that passes here is what `aws ecs register-task-definition --cli-input-json` or
`aws batch register-job-definition` accept as a request shape (the services still check values
the models do not describe, such as an image that exists).

ParamValidator reports missing required members, unknown members, wrong types and values below
a model's minimum. It does not check enums: that is done here from the same model (a string
shape's `enum`), so `networkMode: overlay` is refused as the service would refuse it.

botocore (arch[delivery]) is imported only when a definition is checked.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

INSTALL_HINT = "pip install 'arch[delivery]'"


class ModelUnavailable(Exception):
    """botocore is not installed, or has no model of the service or operation."""


@dataclass(frozen=True)
class AwsRequest:
    service: str
    operation: str
    documentation: str


ECS_REGISTER_TASK_DEFINITION = AwsRequest(
    "ecs",
    "RegisterTaskDefinition",
    "https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_RegisterTaskDefinition.html",
)
BATCH_REGISTER_JOB_DEFINITION = AwsRequest(
    "batch",
    "RegisterJobDefinition",
    "https://docs.aws.amazon.com/batch/latest/APIReference/API_RegisterJobDefinition.html",
)


def request_problems(document: Any, request: AwsRequest) -> list[str]:
    """Every way `document` departs from the request's input shape, one sentence each."""
    from botocore.validate import ParamValidator

    shape = input_shape(request)
    report = ParamValidator().validate(document, shape)
    problems = report.generate_report().splitlines() if report.has_errors() else []
    return problems + enum_problems(document, shape, "")


@functools.cache
def input_shape(request: AwsRequest) -> Any:
    try:
        import botocore.loaders
        import botocore.model
        from botocore.exceptions import DataNotFoundError
    except ImportError as error:
        raise ModelUnavailable(
            f"checking an AWS definition needs botocore ({INSTALL_HINT}): {error}"
        ) from None
    try:
        model_data = botocore.loaders.create_loader().load_service_model(
            request.service, "service-2"
        )
        model = botocore.model.ServiceModel(model_data, service_name=request.service)
        return model.operation_model(request.operation).input_shape
    except (DataNotFoundError, botocore.model.OperationNotFoundError):
        raise ModelUnavailable(
            f"botocore has no model of {request.service} {request.operation}"
        ) from None


def enum_problems(value: Any, shape: Any, where: str) -> list[str]:
    """Strings outside their shape's enum, walking the parts ParamValidator accepted."""
    kind = shape.type_name
    if kind == "string":
        allowed = list(shape.enum or [])
        if allowed and isinstance(value, str) and value not in allowed:
            return [f"Invalid value for parameter {where}: {value!r}, must be one of: {allowed}"]
        return []
    problems: list[str] = []
    if kind == "structure" and isinstance(value, dict):
        for name, member in value.items():
            if name in shape.members:
                path = f"{where}.{name}" if where else name
                problems += enum_problems(member, shape.members[name], path)
    elif kind == "list" and isinstance(value, list):
        for index, item in enumerate(value):
            problems += enum_problems(item, shape.member, f"{where}[{index}]")
    elif kind == "map" and isinstance(value, dict):
        for key, item in value.items():
            problems += enum_problems(key, shape.key, f"{where} (key {key!r})")
            problems += enum_problems(item, shape.value, f"{where}.{key}")
    return problems
