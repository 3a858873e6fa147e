"""The request shapes AWS documents for the definitions ARCH renders, and a check against them.

A small subset of JSON Schema (type, required, properties, additionalProperties, items, enum,
pattern, length and range bounds), enough to catch what `aws ... --cli-input-json` would
reject: a missing required member, a wrong type, an unknown member, a value out of range. The
shapes list the members AWS documents for RegisterTaskDefinition (ECS) and RegisterJobDefinition
(Batch) that ARCH's templates use, plus their required ones. No network, no botocore.
"""

from __future__ import annotations

import re
from typing import Any

Schema = dict[str, Any]

_KEY_VALUE: Schema = {
    "type": "object",
    "required": ["name", "value"],
    "properties": {"name": {"type": "string", "minLength": 1}, "value": {"type": "string"}},
}
_EFS_VOLUME_CONFIGURATION: Schema = {
    "type": "object",
    "required": ["fileSystemId"],
    "properties": {
        "fileSystemId": {"type": "string", "pattern": r"^fs-[0-9a-f]{8,40}$"},
        "rootDirectory": {"type": "string", "maxLength": 4096},
        "transitEncryption": {"type": "string", "enum": ["ENABLED", "DISABLED"]},
        "transitEncryptionPort": {"type": "integer", "minimum": 0, "maximum": 65535},
    },
}
_VOLUME: Schema = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[A-Za-z0-9_-]{1,255}$"},
        "host": {"type": "object", "properties": {"sourcePath": {"type": "string"}}},
        "efsVolumeConfiguration": _EFS_VOLUME_CONFIGURATION,
    },
}
_MOUNT_POINT: Schema = {
    "type": "object",
    "properties": {
        "sourceVolume": {"type": "string"},
        "containerPath": {"type": "string", "pattern": "^/"},
        "readOnly": {"type": "boolean"},
    },
}
_STRINGS: Schema = {"type": "array", "items": {"type": "string"}}

# https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_RegisterTaskDefinition.html
ECS_REGISTER_TASK_DEFINITION: Schema = {
    "type": "object",
    "required": ["family", "containerDefinitions"],
    "properties": {
        "family": {"type": "string", "pattern": r"^[A-Za-z0-9_-]{1,255}$"},
        "requiresCompatibilities": {
            "type": "array",
            "items": {"type": "string", "enum": ["EC2", "FARGATE", "EXTERNAL"]},
        },
        "networkMode": {"type": "string", "enum": ["bridge", "host", "awsvpc", "none"]},
        "containerDefinitions": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "image"],
                "properties": {
                    "name": {"type": "string", "pattern": r"^[A-Za-z0-9_-]{1,255}$"},
                    "image": {"type": "string", "minLength": 1, "maxLength": 255},
                    "essential": {"type": "boolean"},
                    "cpu": {"type": "integer", "minimum": 0},
                    "memory": {"type": "integer", "minimum": 6},
                    "command": _STRINGS,
                    "stopTimeout": {"type": "integer", "minimum": 0, "maximum": 120},
                    "environment": {"type": "array", "items": _KEY_VALUE},
                    "mountPoints": {"type": "array", "items": _MOUNT_POINT},
                },
            },
        },
        "volumes": {"type": "array", "items": _VOLUME},
        # TaskDefinitionPlacementConstraint: type memberOf, a cluster query language expression
        # (at most 10 constraints per task).
        "placementConstraints": {
            "type": "array",
            "maxItems": 10,
            "items": {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "enum": ["memberOf"]},
                    "expression": {"type": "string", "maxLength": 2000},
                },
            },
        },
        "tags": {
            "type": "array",
            "maxItems": 50,
            "items": {
                "type": "object",
                "required": ["key"],
                "properties": {
                    "key": {"type": "string", "minLength": 1, "maxLength": 128},
                    "value": {"type": "string", "maxLength": 256},
                },
            },
        },
    },
}

_EVALUATE_ON_EXIT: Schema = {
    "type": "object",
    "required": ["action"],
    "properties": {
        "action": {"type": "string", "enum": ["RETRY", "EXIT"]},
        "onStatusReason": {"type": "string", "maxLength": 512},
        "onReason": {"type": "string", "maxLength": 512},
        "onExitCode": {"type": "string", "maxLength": 512},
    },
}

# https://docs.aws.amazon.com/batch/latest/APIReference/API_RegisterJobDefinition.html
BATCH_REGISTER_JOB_DEFINITION: Schema = {
    "type": "object",
    "required": ["jobDefinitionName", "type"],
    "properties": {
        "jobDefinitionName": {"type": "string", "pattern": r"^[A-Za-z0-9_-]{1,128}$"},
        "type": {"type": "string", "enum": ["container", "multinode"]},
        "platformCapabilities": {
            "type": "array",
            "items": {"type": "string", "enum": ["EC2", "FARGATE"]},
        },
        "containerProperties": {
            "type": "object",
            "properties": {
                "image": {"type": "string", "minLength": 1},
                "resourceRequirements": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["type", "value"],
                        "properties": {
                            "type": {"type": "string", "enum": ["GPU", "VCPU", "MEMORY"]},
                            "value": {"type": "string", "minLength": 1},
                        },
                    },
                },
                "command": _STRINGS,
                "environment": {"type": "array", "items": _KEY_VALUE},
                "volumes": {"type": "array", "items": _VOLUME},
                "mountPoints": {"type": "array", "items": _MOUNT_POINT},
            },
        },
        "retryStrategy": {
            "type": "object",
            "properties": {
                "attempts": {"type": "integer", "minimum": 1, "maximum": 10},
                "evaluateOnExit": {"type": "array", "maxItems": 5, "items": _EVALUATE_ON_EXIT},
            },
        },
        "tags": {
            "type": "object",
            "additionalProperties": {"type": "string", "maxLength": 256},
        },
    },
}

_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "boolean": (bool,),
}


def shape_problems(value: Any, schema: Schema, where: str = "$") -> list[str]:
    """Every way `value` departs from `schema`, each naming the member ("$.a[0].b")."""
    expected = schema.get("type")
    if expected is not None:
        is_bool = isinstance(value, bool)
        if not isinstance(value, _PYTHON_TYPES[expected]) or (is_bool and expected == "integer"):
            return [f"{where}: expected {expected}, got {type(value).__name__}"]
    problems: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, str):
        problems.extend(_string_problems(value, schema, where))
    elif isinstance(value, int) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{where}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{where}: {value} is above the maximum {schema['maximum']}")
    elif isinstance(value, list):
        problems.extend(_array_problems(value, schema, where))
    elif isinstance(value, dict):
        problems.extend(_object_problems(value, schema, where))
    return problems


def _string_problems(value: str, schema: Schema, where: str) -> list[str]:
    problems = []
    if len(value) < schema.get("minLength", 0):
        problems.append(f"{where}: shorter than {schema['minLength']} characters")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        problems.append(f"{where}: longer than {schema['maxLength']} characters")
    if "pattern" in schema and re.search(schema["pattern"], value) is None:
        problems.append(f"{where}: {value!r} does not match {schema['pattern']}")
    return problems


def _array_problems(value: list[Any], schema: Schema, where: str) -> list[str]:
    problems = []
    if len(value) < schema.get("minItems", 0):
        problems.append(f"{where}: fewer than {schema['minItems']} items")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        problems.append(f"{where}: more than {schema['maxItems']} items")
    if "items" in schema:
        for index, item in enumerate(value):
            problems.extend(shape_problems(item, schema["items"], f"{where}[{index}]"))
    return problems


def _object_problems(value: dict[str, Any], schema: Schema, where: str) -> list[str]:
    problems = [
        f"{where}: required member {name!r} is missing"
        for name in schema.get("required", [])
        if name not in value
    ]
    properties: dict[str, Schema] = schema.get("properties", {})
    extra_schema: Schema | None = schema.get("additionalProperties")
    for name, member in value.items():
        if name in properties:
            problems.extend(shape_problems(member, properties[name], f"{where}.{name}"))
        elif extra_schema is not None:
            problems.extend(shape_problems(member, extra_schema, f"{where}.{name}"))
        else:
            problems.append(f"{where}: unknown member {name!r}")
    return problems
