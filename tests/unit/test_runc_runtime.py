"""How ARCH's own runc calls pick their global options and CRIU."""

from __future__ import annotations

from arch.runc.parser import parse
from arch.runc.runtime import Runc


def test_caller_globals_are_kept_and_host_criu_added() -> None:
    command = parse(["--root", "/run/containerd/runc/default", "--log-format", "json",
                     "checkpoint", "--image-path", "/i", "job"])  # fmt: skip
    runc = Runc.for_command("/usr/sbin/runc", command, "/usr/local/sbin/criu")
    assert runc.argv(["state", "job"]) == [
        "/usr/sbin/runc", "--root", "/run/containerd/runc/default", "--log-format", "json",
        "--criu", "/usr/local/sbin/criu", "state", "job",
    ]  # fmt: skip
    assert runc.criu == "/usr/local/sbin/criu"


def test_a_criu_the_caller_names_wins() -> None:
    command = parse(["--criu=/opt/criu", "checkpoint", "job"])
    runc = Runc.for_command("/usr/sbin/runc", command, "/usr/local/sbin/criu")
    assert runc.argv(["state", "job"]) == ["/usr/sbin/runc", "--criu=/opt/criu", "state", "job"]
    assert runc.criu == "/opt/criu"


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
        "/usr/sbin/runc", "--root", "/r", "--log", "/b/log.json", "--criu", "/usr/local/sbin/criu",
        "restore", "--bundle", "/b", "--pid-file", "/b/init.pid", "--detach", "job",
    ]  # fmt: skip
