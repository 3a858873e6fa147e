"""arch-runc used directly as runc: same output bytes, exit codes and errors as the real runc for
run/create/start/state/list/kill/delete on an OCI bundle (no containerd involved)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import procs
from harness.arch_host import ArchHost, write_arch_host
from harness.bundles import RuncCli, make_bundle, normalise_runc_error
from harness.images import BusyboxImage

pytestmark = [pytest.mark.root]

# Fields of `runc state` that differ between two containers made from equal bundles.
PER_CONTAINER_FIELDS = ("id", "pid", "bundle", "rootfs", "created")


@dataclass
class RuncPair:
    """arch-runc and the real runc sharing one --root, and what arch-runc recorded."""

    arch: RuncCli
    runc: RuncCli
    host: ArchHost
    work: Path
    image: BusyboxImage

    def bundle(self, name: str, args: list[str]) -> Path:
        return make_bundle(self.runc.binary, self.image, self.work / name, args)

    def create(self, cli: RuncCli, container_id: str, bundle: Path) -> None:
        created = cli.detached(
            "create",
            "--bundle",
            str(bundle),
            container_id,
            output=self.work / f"{container_id}.out",
        )
        assert created.returncode == 0, (self.work / f"{container_id}.out").read_text()

    def state(self, cli: RuncCli, container_id: str) -> dict[str, object]:
        state: dict[str, object] = json.loads(cli("state", container_id).stdout)
        return state


@pytest.fixture
def runc_pair(
    tmp_path: Path, arch_runc_binary: Path, real_runc_binary: Path, test_image: BusyboxImage
) -> Iterator[RuncPair]:
    root = tmp_path / "runc-root"
    host = write_arch_host(tmp_path / "arch", real_runc_binary)
    pair = RuncPair(
        arch=RuncCli(arch_runc_binary, root, env=host.environment),
        runc=RuncCli(real_runc_binary, root),
        host=host,
        work=tmp_path,
        image=test_image,
    )
    yield pair
    for state_dir in sorted(root.glob("*")) if root.is_dir() else []:
        pair.runc.force_delete(state_dir.name)
    leftovers = procs.unmount_all_under(tmp_path)
    assert not leftovers, f"still mounted: {leftovers}"


def without_per_container_fields(state: dict[str, object]) -> dict[str, object]:
    return {key: value for key, value in state.items() if key not in PER_CONTAINER_FIELDS}


def test_create_start_state_list_kill_delete_match_runc(runc_pair: RuncPair) -> None:
    arch, runc = runc_pair.arch, runc_pair.runc
    runc_pair.create(arch, "by-arch", runc_pair.bundle("a", ["sleep", "1000"]))
    runc_pair.create(runc, "by-runc", runc_pair.bundle("b", ["sleep", "1000"]))

    for subcommand in (
        ["state", "by-arch"],
        ["state", "by-runc"],
        ["list"],
        ["list", "--format", "json"],
        ["list", "--quiet"],
    ):
        assert arch(*subcommand).stdout == runc(*subcommand).stdout, subcommand
    assert runc_pair.state(arch, "by-arch")["status"] == "created"
    assert without_per_container_fields(
        runc_pair.state(arch, "by-arch")
    ) == without_per_container_fields(runc_pair.state(runc, "by-runc"))

    arch("start", "by-arch")
    runc("start", "by-runc")
    assert arch("state", "by-arch").stdout == runc("state", "by-arch").stdout
    assert runc_pair.state(runc, "by-arch")["status"] == "running"
    assert arch("list").stdout == runc("list").stdout

    arch("kill", "by-arch", "KILL")
    assert procs.wait_until(lambda: runc_pair.state(runc, "by-arch")["status"] == "stopped", 15)
    assert arch("state", "by-arch").stdout == runc("state", "by-arch").stdout
    arch("delete", "by-arch")
    assert runc("state", "by-arch", check=False).returncode != 0
    assert runc("list", "--quiet").stdout == "by-runc\n"
    recorded = runc_pair.host.subcommands_for("by-arch")
    assert [call for call in recorded if call != "state"] == ["create", "start", "kill", "delete"]


def test_run_foreground_output_and_exit_code_match_runc(runc_pair: RuncPair) -> None:
    command = ["sh", "-c", "echo out; echo err >&2; exit 3"]
    by_arch = runc_pair.arch(
        "run", "--bundle", str(runc_pair.bundle("a", command)), "ra", check=False
    )
    by_runc = runc_pair.runc(
        "run", "--bundle", str(runc_pair.bundle("b", command)), "rb", check=False
    )

    assert (by_arch.returncode, by_arch.stdout, by_arch.stderr) == (3, "out\n", "err\n")
    assert (by_runc.returncode, by_runc.stdout, by_runc.stderr) == (3, "out\n", "err\n")
    assert runc_pair.host.subcommands_for("ra") == ["run"]


def test_run_detached_then_delete_force(runc_pair: RuncPair) -> None:
    bundle = runc_pair.bundle("a", ["sleep", "1000"])
    started = runc_pair.arch.detached(
        "run", "--detach", "--bundle", str(bundle), "rd", output=runc_pair.work / "rd.out"
    )
    assert started.returncode == 0, (runc_pair.work / "rd.out").read_text()
    assert runc_pair.state(runc_pair.runc, "rd")["status"] == "running"

    runc_pair.arch("delete", "--force", "rd")
    assert runc_pair.runc("list", "--quiet").stdout == ""


@pytest.mark.parametrize(
    ("subcommand", "runc_exit_status"),
    [
        (["state"], 1),
        (["delete"], 1),
        (["delete", "--force"], 0),
        (["kill", "{id}", "KILL"], 1),
        (["start"], 1),
        (["pause"], 1),
        (["resume"], 1),
        (["ps"], 1),
        (["exec", "{id}", "true"], 255),
        (["checkpoint"], 1),
    ],
    ids=lambda value: (
        "-".join(part for part in value if part != "{id}")
        if isinstance(value, list)
        else str(value)
    ),
)
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_unknown_container_gives_runcs_error(
    runc_pair: RuncPair, subcommand: list[str], runc_exit_status: int, log_format: str
) -> None:
    argv = [part.replace("{id}", "nosuch") for part in subcommand]
    if "{id}" not in subcommand:
        argv.append("nosuch")
    results = {}
    for name, cli in (("arch", runc_pair.arch), ("runc", runc_pair.runc)):
        log = runc_pair.work / f"{name}.log"
        completed = cli("--log", str(log), "--log-format", log_format, *argv, check=False)
        log_text = log.read_text() if log.exists() else ""
        results[name] = (
            completed.returncode,
            completed.stdout,
            normalise_runc_error(completed.stderr),
            normalise_json_log(log_text),
        )

    assert results["runc"][0] == runc_exit_status
    assert results["arch"] == results["runc"]


def normalise_json_log(text: str) -> str:
    """runc's log file with the timestamps blanked (JSON lines or logrus text)."""
    lines = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            lines.append(normalise_runc_error(line))
            continue
        entry.pop("time", None)
        lines.append(json.dumps(entry, sort_keys=True))
    return "\n".join(lines)
