"""The packer driver's parsing: machine-readable events, versions, manifests, the 1.6 staging."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arch.packer.ami import strip_packer_block
from arch.packer.driver import PackerError, PackerVersion, RunResult, find_packer, read_manifest
from arch.packer.machine_readable import parse_line


def test_events_unescape_commas_and_newlines() -> None:
    event = parse_line(
        "1796057042,,ui,error,Error: bad\\n\\nat variables.pkr.hcl:28%!(PACKER_COMMA)3-13.\\n\n"
    )
    assert event is not None
    assert (event.timestamp, event.target, event.type, event.ui_level) == (
        1796057042,
        "",
        "ui",
        "error",
    )
    assert event.text == "Error: bad\n\nat variables.pkr.hcl:28,3-13.\n"
    artifact = parse_line("1796056967,null.local,artifact,0,id,Null")
    assert artifact is not None and artifact.target == "null.local"
    assert artifact.data == ("0", "id", "Null") and artifact.ui_level is None
    assert parse_line("local.pkr.hcl") is None
    assert parse_line("") is None


def test_failure_message_prefers_packer_ui_errors() -> None:
    with_errors = RunResult(["packer", "build"], 1, stderr="noise")
    error_event = parse_line("1,,ui,error,Build 'x' errored: boom")
    assert error_event is not None
    with_errors.events.append(error_event)
    assert with_errors.failure_message().endswith("failed (exit 1):\nBuild 'x' errored: boom")
    plain = RunResult(["packer", "fmt"], 3, plain_output=["a.pkr.hcl", ""])
    assert plain.failure_message().endswith("\na.pkr.hcl")


@pytest.mark.parametrize(
    ("text", "version", "plugins"),
    [("1.6.6", (1, 6, 6), False), ("v1.11.2", (1, 11, 2), True), ("1.7.0-dev", (1, 7, 0), True)],
)
def test_versions(text: str, version: tuple[int, int, int], plugins: bool) -> None:
    parsed = PackerVersion.parse(text)
    assert (parsed.major, parsed.minor, parsed.patch) == version
    assert parsed.has_plugin_requirements is plugins


def test_unreadable_version() -> None:
    with pytest.raises(PackerError, match="cannot read"):
        PackerVersion.parse("banana")


def test_missing_binary_is_a_clear_error() -> None:
    with pytest.raises(PackerError, match=r"packer not found .* apt-get install packer"):
        find_packer("/nonexistent/packer")


def test_manifest_gives_the_last_run_only(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.json"
    entry = {"name": "ecs", "builder_type": "amazon-ebs", "build_time": 5}
    manifest.write_text(
        json.dumps(
            {
                "builds": [
                    {**entry, "artifact_id": "eu-west-1:ami-old", "packer_run_uuid": "r1"},
                    {
                        **entry,
                        "artifact_id": "eu-west-1:ami-new",
                        "packer_run_uuid": "r2",
                        "custom_data": {"flavour": "ecs"},
                    },
                ],
                "last_run_uuid": "r2",
            }
        )
    )
    (artifact,) = read_manifest(manifest)
    assert artifact.artifact_id == "eu-west-1:ami-new"
    assert artifact.custom_data == {"flavour": "ecs"}
    manifest.write_text("{")
    with pytest.raises(PackerError, match="cannot read the build manifest"):
        read_manifest(manifest)


def test_strip_packer_block_keeps_everything_else() -> None:
    text = (
        "# header\npacker {\n  required_plugins {\n    amazon = {\n    }\n  }\n}\n\n"
        'variable "a" {\n  default = 1\n}\n'
    )
    assert strip_packer_block(text) == '# header\n\nvariable "a" {\n  default = 1\n}\n'
    with pytest.raises(PackerError, match="no closing brace"):
        strip_packer_block("packer {\n  x = 1\n")


def test_the_real_settings_file_loses_only_its_packer_block() -> None:
    settings = Path(__file__).resolve().parents[2] / "packer" / "variables.pkr.hcl"
    original = settings.read_text()
    stripped = strip_packer_block(original)
    assert "required_plugins {" in original and "required_plugins {" not in stripped
    assert stripped.count('variable "') == original.count('variable "') > 10
