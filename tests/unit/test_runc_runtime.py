"""How ARCH's own runc calls pick their global options and CRIU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from arch.runc.parser import parse
from arch.runc.runtime import Runc, RuncError


def test_caller_globals_are_kept_and_host_criu_goes_first_on_path() -> None:
    command = parse(["--root", "/run/containerd/runc/default", "--log-format", "json",
                     "checkpoint", "--image-path", "/i", "job"])  # fmt: skip
    runc = Runc.for_command("/usr/sbin/runc", command, "/usr/local/sbin/criu")
    # runc >= 1.2 ignores --criu (and warns on stderr): the host's CRIU is found through PATH.
    assert runc.argv(["state", "job"]) == [
        "/usr/sbin/runc", "--root", "/run/containerd/runc/default", "--log-format", "json",
        "state", "job",
    ]  # fmt: skip
    assert runc.criu == "/usr/local/sbin/criu"
    environment = runc.environment()
    assert environment is not None
    assert environment["PATH"].split(os.pathsep)[0] == "/usr/local/sbin"


def test_a_host_criu_not_named_criu_can_only_be_given_as_the_option() -> None:
    runc = Runc.for_command("/usr/sbin/runc", parse(["checkpoint", "job"]), "/opt/criu-4.2")
    assert runc.argv(["state", "job"]) == [
        "/usr/sbin/runc", "--criu", "/opt/criu-4.2", "state", "job"
    ]  # fmt: skip
    assert runc.environment() is None


def test_a_criu_the_caller_names_wins() -> None:
    command = parse(["--criu=/opt/criu", "checkpoint", "job"])
    runc = Runc.for_command("/usr/sbin/runc", command, "/usr/local/sbin/criu")
    assert runc.argv(["state", "job"]) == ["/usr/sbin/runc", "--criu=/opt/criu", "state", "job"]
    assert runc.criu == "/opt/criu"
    assert runc.environment() is None


def test_without_host_criu_runc_looks_it_up() -> None:
    runc = Runc.for_command("/usr/sbin/runc", parse(["checkpoint", "job"]), None)
    assert runc.argv(["state", "job"]) == ["/usr/sbin/runc", "state", "job"]
    assert runc.criu.endswith("criu")


def test_subcommand_args_leave_the_globals_to_runc() -> None:
    create = parse(["--root", "/r", "--log", "/b/log.json", "create", "--bundle", "/b",
                    "--pid-file", "/b/init.pid", "--no-new-keyring", "job"])  # fmt: skip
    restore = create.with_subcommand("restore", drop_unsupported=True).with_option("detach")
    runc = Runc.for_command("/usr/sbin/runc", create, "/usr/local/sbin/criu")
    assert runc.argv(Runc.subcommand_args(restore)) == [
        "/usr/sbin/runc", "--root", "/r", "--log", "/b/log.json",
        "restore", "--bundle", "/b", "--pid-file", "/b/init.pid", "--detach", "job",
    ]  # fmt: skip


def test_state_reads_stdout_only_and_errors_carry_stderr(tmp_path: Path) -> None:
    # runc >= 1.2 warns on stderr ("--criu ignored") while printing the state on stdout.
    fake = tmp_path / "runc"
    fake.write_text(
        "#!/bin/sh\n"
        'echo "WARNING: --criu ignored" >&2\n'
        'if [ "$1" = state ]; then echo \'{"id": "job", "status": "running"}\'; exit 0; fi\n'
        'echo "container does not exist" >&2; exit 1\n'
    )
    fake.chmod(0o755)
    runc = Runc(str(fake), [], "criu")
    assert runc.state("job") == {"id": "job", "status": "running"}
    with pytest.raises(RuncError) as raised:
        runc.pause("job")
    assert raised.value.status == 1
    assert "container does not exist" in raised.value.output


def test_runc_finds_the_host_criu_on_its_path(tmp_path: Path) -> None:
    criu_dir = tmp_path / "criu-bin"
    criu_dir.mkdir()
    (criu_dir / "criu").write_text("#!/bin/sh\necho host-criu\n")
    (criu_dir / "criu").chmod(0o755)
    fake = tmp_path / "runc"
    fake.write_text("#!/bin/sh\nexec criu\n")  # how runc >= 1.2 starts CRIU: by name
    fake.chmod(0o755)
    runc = Runc.for_command(str(fake), parse(["checkpoint", "job"]), str(criu_dir / "criu"))
    assert runc.check(["checkpoint", "job"]).strip() == "host-criu"
