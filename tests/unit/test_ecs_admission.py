"""ECS admission (fail closed): ECS_CLUSTER and ARCH's attribute in ecs.config, and back out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arch.delivery.ecs_admission import (
    AdmissionError,
    admitted_lines,
    attribute_value,
    main,
    withdrawn_lines,
)

STOCK = ["ECS_ENABLE_SPOT_INSTANCE_DRAINING=true", "ECS_CONTAINER_STOP_TIMEOUT=2m"]


def attributes(lines: list[str]) -> dict[str, str]:
    (line,) = [line for line in lines if line.startswith("ECS_INSTANCE_ATTRIBUTES=")]
    loaded: dict[str, str] = json.loads(line.split("=", 1)[1])
    return loaded


def test_admission_adds_cluster_and_attribute_and_keeps_the_rest() -> None:
    lines = [*STOCK, 'ECS_INSTANCE_ATTRIBUTES={"team": "data"}']
    admitted = admitted_lines(lines, "prod", version="1.2.3")
    assert admitted[:2] == STOCK
    assert "ECS_CLUSTER=prod" in admitted
    assert attributes(admitted) == {"team": "data", "arch.version": "1.2.3"}
    assert admitted_lines(admitted, "prod", version="1.2.3") == admitted  # converges


def test_admission_without_cluster_leaves_a_given_cluster_alone() -> None:
    # AWS Batch writes ECS_CLUSTER in its own user-data part.
    admitted = admitted_lines(["ECS_CLUSTER=batch-ce_Batch_1"], "", version="1.0")
    assert admitted[0] == "ECS_CLUSTER=batch-ce_Batch_1"
    assert attributes(admitted) == {"arch.version": "1.0"}
    replaced = admitted_lines(["ECS_CLUSTER=old", "ECS_CLUSTER=older"], "new", version="1.0")
    assert [line for line in replaced if line.startswith("ECS_CLUSTER=")] == ["ECS_CLUSTER=new"]


def test_withdrawal_removes_only_arch_attribute() -> None:
    admitted = admitted_lines([*STOCK, 'ECS_INSTANCE_ATTRIBUTES={"team": "data"}'], "p", "1.0")
    withdrawn = withdrawn_lines(admitted)
    assert attributes(withdrawn) == {"team": "data"}
    assert not any("arch.version" in line for line in withdrawn_lines(admitted_lines([], "", "1")))


def test_version_becomes_a_valid_attribute_value() -> None:
    # Attribute values: letters, digits, - _ . @ / : and spaces (the agent exits on others).
    assert attribute_value("0.1.0") == "0.1.0"
    assert attribute_value("0.2.0.dev3+g1a2b.dirty") == "0.2.0.dev3-g1a2b.dirty"


def test_malformed_attributes_are_an_error_not_a_silent_rewrite() -> None:
    with pytest.raises(AdmissionError, match="not a JSON object"):
        admitted_lines(["ECS_INSTANCE_ATTRIBUTES={oops"], "prod")
    with pytest.raises(AdmissionError, match="of strings"):
        admitted_lines(['ECS_INSTANCE_ATTRIBUTES={"a": 1}'], "prod")


def test_command_line_writes_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "ecs" / "ecs.config"
    assert main(["admit", "--config", str(config), "--cluster", "prod"]) == 0
    text = config.read_text()
    assert "ECS_CLUSTER=prod\n" in text and '"arch.version"' in text
    assert config.stat().st_mode & 0o777 == 0o644
    assert "ECS_CLUSTER=prod" in capsys.readouterr().out
    assert main(["withdraw", "--config", str(config)]) == 0
    assert "arch.version" not in config.read_text()
    assert main(["admit", "--config", str(config), "--cluster", "a b"]) == 2
    config.write_text("ECS_INSTANCE_ATTRIBUTES=[1]\n")
    assert main(["admit", "--config", str(config)]) == 1
    assert config.read_text() == "ECS_INSTANCE_ATTRIBUTES=[1]\n"  # left as it was
