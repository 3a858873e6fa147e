"""arch.packer.ami's choices per packer generation, against a stand-in packer that records its
calls (the real packer 1.6.6 is driven by tests/integration/delivery/test_ami.py; no packer >= 1.7
is reachable here)."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from arch.delivery.wheel import WheelInfo
from arch.packer.ami import build_images, validate_templates
from arch.packer.driver import Packer, PackerError

REPO = Path(__file__).resolve().parents[2]

FAKE_PACKER = """#!/usr/bin/env python3
import json, os, sys
argv = sys.argv[1:]
settings = open("variables.pkr.hcl").read() if os.path.exists("variables.pkr.hcl") else ""
sources = open("source_ami.pkr.hcl").read() if os.path.exists("source_ami.pkr.hcl") else ""
call = {"argv": argv, "cwd": os.getcwd(), "has_packer_block": "required_plugins {" in settings,
        "reads_ssm": 'data "amazon-parameterstore"' in sources}
with open(os.environ["FAKE_PACKER_LOG"], "a") as log:
    log.write(json.dumps(call) + "\\n")
if argv[:2] == ["-machine-readable", "version"]:
    print("1,,version," + os.environ["FAKE_PACKER_VERSION"])
elif "build" in argv:
    manifest = next(a.split("=", 1)[1] for a in argv if a.startswith("manifest_path="))
    only = next(a.split("=", 1)[1] for a in argv if a.startswith("-only="))
    builds = [{"name": name.split(".")[2], "builder_type": name.split(".")[1],
               "artifact_id": "eu-west-1:ami-0abc", "build_time": 1, "packer_run_uuid": "u1",
               "custom_data": {"flavour": name.split(".")[0]}} for name in only.split(",")]
    json.dump({"builds": builds, "last_run_uuid": "u1"}, open(manifest, "w"))
    print("1,,ui,say,Build finished.")
"""


def a_wheel(tmp_path: Path) -> WheelInfo:
    path = tmp_path / "arch-9.8.7-py3-none-any.whl"
    path.write_bytes(b"not really a wheel")
    return WheelInfo(path=path, version="9.8.7", sha256="ab" * 32)


def fake_packer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str) -> Path:
    script = tmp_path / "packer"
    script.write_text(FAKE_PACKER)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_PACKER_LOG", str(log))
    monkeypatch.setenv("FAKE_PACKER_VERSION", version)
    return script


def calls(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "calls.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def subcommand(call: dict[str, Any]) -> str:
    return str(call["argv"][1])


def test_current_packer_inits_and_validates_every_build_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packer = Packer(str(fake_packer(tmp_path, monkeypatch, "1.11.2")))
    checks = validate_templates(packer, REPO / "packer", {})
    assert [(check.name, check.level, check.ok) for check in checks] == [
        ("fmt", "fmt", True),
        ("local", "full", True),
        ("ecs", "full", True),
        ("batch", "full", True),
    ]
    made = [call for call in calls(tmp_path) if subcommand(call) != "version"]
    assert [subcommand(call) for call in made] == [
        "fmt",
        "init",
        "validate",
        "validate",
        "validate",
    ]
    assert all(call["cwd"] == str(REPO / "packer") for call in made)  # no staging copy
    assert all(call["has_packer_block"] and call["reads_ssm"] for call in made)
    only = [arg for call in made for arg in call["argv"] if str(arg).startswith("-only=")]
    assert only == [
        "-only=local.null.local",
        "-only=ecs.amazon-ebs.ecs-x86_64,ecs.amazon-ebs.ecs-arm64",
        "-only=batch.amazon-ebs.batch-x86_64,batch.amazon-ebs.batch-arm64",
    ]


def test_old_packer_gets_a_copy_without_the_packer_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packer = Packer(str(fake_packer(tmp_path, monkeypatch, "1.6.6")))
    checks = validate_templates(packer, REPO / "packer", {"region": "eu-west-1"})
    assert [(check.name, check.level) for check in checks] == [
        ("fmt", "fmt"),
        ("local", "full"),
        ("ecs", "syntax only"),
        ("batch", "syntax only"),
    ]
    made = [call for call in calls(tmp_path) if subcommand(call) not in ("version", "fmt")]
    assert [subcommand(call) for call in made] == ["validate", "validate"]
    assert all(call["cwd"] != str(REPO / "packer") for call in made)
    assert not any(call["has_packer_block"] or call["reads_ssm"] for call in made)
    assert "-syntax-only" in made[1]["argv"]
    assert "region=eu-west-1" in made[0]["argv"]
    with pytest.raises(PackerError, match=r"packer 1\.6\.6 cannot build the AMI flavours"):
        build_images(
            packer,
            REPO / "packer",
            local=False,
            flavours=[],
            wheel=a_wheel(tmp_path),
            manifest=tmp_path / "m.json",
            overrides={},
        )


def test_build_of_one_flavour_reads_its_artifact_from_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packer = Packer(str(fake_packer(tmp_path, monkeypatch, "1.11.2")))
    manifest = tmp_path / "manifest.json"
    (artifact,) = build_images(
        packer,
        REPO / "packer",
        local=False,
        flavours=["batch"],
        architectures=["arm64"],
        wheel=a_wheel(tmp_path),
        manifest=manifest,
        overrides={"region": "eu-west-1"},
    )
    assert (artifact.name, artifact.artifact_id) == ("batch-arm64", "eu-west-1:ami-0abc")
    build_call = next(call for call in calls(tmp_path) if subcommand(call) == "build")
    assert "-only=batch.amazon-ebs.batch-arm64" in build_call["argv"]
    assert build_call["cwd"] == str(REPO / "packer") and build_call["reads_ssm"]
    # The wheel's own version names the image, and its path and hash go to the templates.
    assert "arch_version=9.8.7" in build_call["argv"]
    assert f"arch_wheel={tmp_path / 'arch-9.8.7-py3-none-any.whl'}" in build_call["argv"]
    assert f"arch_wheel_sha256={'ab' * 32}" in build_call["argv"]
    for flavours, architectures, message in (
        (["gpu"], [], "no AMI flavour gpu"),
        (["ecs"], ["riscv64"], "no architecture riscv64"),
    ):
        with pytest.raises(PackerError, match=message):
            build_images(
                packer,
                REPO / "packer",
                local=False,
                flavours=flavours,
                architectures=architectures,
                wheel=a_wheel(tmp_path),
                manifest=manifest,
                overrides={},
            )


def test_every_flavour_builds_both_architectures_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packer = Packer(str(fake_packer(tmp_path, monkeypatch, "1.11.2")))
    artifacts = build_images(
        packer,
        REPO / "packer",
        local=False,
        flavours=[],
        wheel=a_wheel(tmp_path),
        manifest=tmp_path / "manifest.json",
        overrides={},
    )
    assert [artifact.name for artifact in artifacts] == [
        "ecs-x86_64", "ecs-arm64", "batch-x86_64", "batch-arm64",
    ]  # fmt: skip


def test_the_local_build_reads_nothing_from_aws_on_a_current_packer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packer = Packer(str(fake_packer(tmp_path, monkeypatch, "1.11.2")))
    (artifact,) = build_images(
        packer,
        REPO / "packer",
        local=True,
        flavours=[],
        wheel=a_wheel(tmp_path),
        manifest=tmp_path / "manifest.json",
        overrides={},
    )
    assert artifact.name == "local"
    made = [call for call in calls(tmp_path) if subcommand(call) in ("init", "build")]
    assert [subcommand(call) for call in made] == ["init", "build"]
    # A staged copy: the plugins are still required, the SSM data sources are gone.
    assert all(call["cwd"] != str(REPO / "packer") for call in made)
    assert all(call["has_packer_block"] and not call["reads_ssm"] for call in made)
