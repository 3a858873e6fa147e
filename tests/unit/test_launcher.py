"""The native arch-runc front: pass-through calls go straight to runc, the rest to Python."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import TYPE_CHECKING, NamedTuple

import pytest

from tests.unit import fake_runc

if TYPE_CHECKING:
    from pathlib import Path

SOURCE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "arch", "shim", "launcher.c",
)  # fmt: skip
COMPILER = shutil.which("cc") or shutil.which("gcc")
pytestmark = pytest.mark.skipif(COMPILER is None, reason="no C compiler to build the launcher")


class Front(NamedTuple):
    binary: Path
    config: Path
    runc: Path
    runc_record: Path
    python_record: Path
    state_dir: Path
    workdir: Path

    def run(self, args: list[str], **env: str) -> subprocess.CompletedProcess[bytes]:
        environment = {"PATH": "/usr/bin:/bin", "ARCH_CONFIG": str(self.config), **env}
        return subprocess.run([str(self.binary), *args], env=environment, capture_output=True,
                              timeout=30, check=False, cwd=self.workdir)  # fmt: skip

    def give_arch_state(self, namespace: str, container_id: str) -> None:
        (self.state_dir / namespace / container_id).mkdir(parents=True)

    def bundle(self, name: str, env: list[str]) -> Path:
        bundle = self.workdir / name
        bundle.mkdir()
        spec = {"ociVersion": "1.0.2", "process": {"args": ["sh"], "env": env}}
        (bundle / "config.json").write_text(json.dumps(spec))
        return bundle

    def went_to_runc(self) -> bool:
        return fake_runc.was_called(self.runc_record) and not fake_runc.was_called(
            self.python_record
        )

    def went_to_python(self) -> bool:
        return fake_runc.was_called(self.python_record) and not fake_runc.was_called(
            self.runc_record
        )


@pytest.fixture
def front(tmp_path: Path) -> Front:
    runc, runc_record = fake_runc.install(tmp_path, "runc")
    python_shim, python_record = fake_runc.install(tmp_path, "python-arch-runc")
    binary = tmp_path / "arch-runc"
    subprocess.run(
        [COMPILER or "cc", "-O2", "-Wall", "-Wextra", "-Werror",
         f'-DARCH_PYTHON_SHIM="{python_shim}"', "-o", str(binary), SOURCE],
        check=True,
    )  # fmt: skip
    config = tmp_path / "arch.toml"
    state_dir = tmp_path / "state"
    config.write_text(
        f'# ARCH host configuration\nrunc = "{runc}"  # detected\nstate_dir = "{state_dir}"\n'
        "log_level = \"info\"\nallowed_roots = [\"/checkpoint\", \"/data/team\"]\n"
    )
    return Front(binary, config, runc, runc_record, python_record, state_dir, tmp_path)


@pytest.mark.parametrize(
    "args",
    [
        ["state", "job-1"],
        ["--root", "/run/containerd/runc/default", "--log", "/b/log.json", "--log-format", "json",
         "kill", "job-1", "9"],
        ["--root=/r", "--debug", "exec", "--process", "/tmp/p", "--detach", "job-1"],
        ["--criu", "/usr/local/sbin/criu", "pause", "job-1"],
        ["--version"],
        [],
        ["--", "list"],
        ["--root", "create", "list"],  # "create" is --root's value, not the subcommand
    ],
)  # fmt: skip
def test_pass_through_goes_straight_to_runc(front: Front, args: list[str]) -> None:
    result = front.run(args, FAKE_RUNC_EXIT="3")
    assert front.went_to_runc()
    call = fake_runc.read_call(front.runc_record)
    assert call.argv == [str(front.runc), *args]
    assert result.returncode == 3
    assert result.stdout == b"fake runc stdout\n"
    assert result.stderr == b"fake runc stderr\n"


@pytest.mark.parametrize(
    "args",
    [
        ["--root", "/run/containerd/runc/default", "start", "job-1"],
        ["--root=/run/containerd/runc/default/", "checkpoint", "--image-path", "/i", "job-1"],
        ["--root", "/run/containerd/runc/default", "resume", "job-1"],
        ["--root", "/run/containerd/runc/default", "--log-format=json", "delete", "job-1",
         "--force"],
        ["--root", "/run/containerd/runc/default", "--", "start", "job-1"],
    ],
)  # fmt: skip
def test_calls_for_a_container_with_arch_state_go_to_python(front: Front, args: list[str]) -> None:
    front.give_arch_state("default", "job-1")
    front.run(args)
    assert front.went_to_python()
    assert fake_runc.read_call(front.python_record).argv[1:] == args


@pytest.mark.parametrize(
    "args",
    [
        ["--root", "/run/containerd/runc/default", "start", "job-1"],
        ["--root", "/run/containerd/runc/other", "delete", "--force", "job-2"],
        ["start", "job-2"],  # default root /run/runc: namespace "runc"
    ],
)
def test_calls_for_containers_without_arch_state_go_to_runc(front: Front, args: list[str]) -> None:
    front.give_arch_state("default", "job-2")
    front.give_arch_state("runc", "job-1")
    front.run(args)
    assert front.went_to_runc()
    assert fake_runc.read_call(front.runc_record).argv[1:] == args


@pytest.mark.parametrize(
    ("env", "to_python"),
    [
        (["PATH=/bin"], False),
        (["PATH=/bin", "ARCH_ENABLE=1"], True),
        (["ARCH_ENABLE=no"], True),  # Python decides what the value means
        (["PATH=/bin", "ARCH\u005fENABLE=1"], True),  # a JSON escape could hide the name
    ],
)
def test_create_goes_to_python_only_when_config_may_opt_in(
    front: Front, env: list[str], to_python: bool
) -> None:
    bundle = front.bundle("b", env)
    for args in (
        ["create", "--bundle", str(bundle), "job-1"],
        ["create", f"--bundle={bundle}", "job-1"],
        ["create", "job-1", "-b", str(bundle)],  # runc moves flags after the id in front
    ):
        for record in (front.python_record, front.runc_record):
            for leftover in record.parent.glob(record.name + ".*"):
                leftover.unlink()
        front.run(args)
        assert front.went_to_python() if to_python else front.went_to_runc()


def test_create_reads_the_working_directory_bundle_by_default(front: Front) -> None:
    (front.workdir / "config.json").write_text('{"process": {"env": ["ARCH_ENABLE=1"]}}')
    front.run(["create", "job-1"])
    assert front.went_to_python()


def test_create_with_an_unreadable_bundle_goes_to_python(front: Front) -> None:
    front.run(["create", "--bundle", str(front.workdir / "absent"), "job-1"])
    assert front.went_to_python()


def test_create_of_a_container_with_stale_state_goes_to_python(front: Front) -> None:
    bundle = front.bundle("b", ["PATH=/bin"])
    front.give_arch_state("runc", "job-1")
    front.run(["create", "--bundle", str(bundle), "job-1"])
    assert front.went_to_python()


@pytest.mark.parametrize(
    "args", [["--no-such-global", "state", "x"], ["--root", "/", "start", "x"]]
)
def test_unsure_goes_to_python(front: Front, args: list[str]) -> None:
    front.run(args)
    assert front.went_to_python()


@pytest.mark.parametrize(
    "config_text",
    [
        "",  # no runc key: Python searches PATH
        'state_dir = "/run/arch"\n',
        '[section]\nrunc = "/usr/sbin/runc"\n',  # not top-level
        'runc = "/usr/sbin/r\\u0075nc"\n',  # escapes are TOML's business
        'runc = "relative/runc"\n',
        'runc = "/usr/sbin/runc"\nrunc = "/usr/bin/runc"\n',  # duplicate key: malformed
        'runc = "/usr/sbin/runc" trailing\n',
        'notes = """\nrunc = "/x"\n"""\n',  # inside a multi-line string
        'runc = "/usr/sbin/runc"\nstate_dir = "run/arch"\n',  # not absolute
        'runc = "/usr/sbin/runc"\nstate_dir = "/a"\nstate_dir = "/b"\n',
    ],
)
def test_config_it_cannot_read_simply_goes_to_python(front: Front, config_text: str) -> None:
    front.config.write_text(config_text)
    front.run(["state", "x"])
    assert front.went_to_python()


def test_missing_config_goes_to_python(front: Front) -> None:
    front.config.unlink()
    front.run(["state", "x"])
    assert front.went_to_python()


def test_single_quoted_path_is_read(front: Front) -> None:
    front.config.write_text(f"runc = '{front.runc}'\n")
    front.run(["state", "x"])
    assert front.went_to_runc()


def test_environment_and_process_are_kept(front: Front) -> None:
    front.config.write_text(f'runc = "{front.runc}"\n')
    launcher = subprocess.Popen(
        [str(front.binary), "state", "x"],
        env={"PATH": "/bin", "ARCH_CONFIG": str(front.config), "LANG": "C"},
    )
    assert launcher.wait(timeout=30) == 0
    call = fake_runc.read_call(front.runc_record)
    assert call.pid == launcher.pid
    assert call.env == {"PATH": "/bin", "ARCH_CONFIG": str(front.config), "LANG": "C"}


def test_unexecutable_runc_is_a_clear_error(front: Front, tmp_path: Path) -> None:
    front.config.write_text(f'runc = "{tmp_path}/nope"\n')
    result = front.run(["state", "x"])
    assert result.returncode == 127
    assert result.stdout == b""
    assert result.stderr.decode() == (
        f"arch-runc: cannot execute the real runc {tmp_path}/nope: No such file or directory\n"
    )


@pytest.mark.parametrize(
    ("subcommand", "flag"), [("start", "skip_start"), ("resume", "skip_resume")]
)
def test_one_shot_no_op_is_answered_natively(front: Front, subcommand: str, flag: str) -> None:
    front.give_arch_state("default", "job-1")
    flag_file = front.state_dir / "default" / "job-1" / flag
    flag_file.write_text("")
    args = ["--root", "/run/containerd/runc/default", subcommand, "job-1"]
    result = front.run(args)
    assert result.returncode == 0
    assert (result.stdout, result.stderr) == (b"", b"")
    assert not fake_runc.was_called(front.runc_record)
    assert not fake_runc.was_called(front.python_record)
    assert not flag_file.exists()
    front.run(args)  # the flag is spent: the next call is a real one, for Python to route
    assert front.went_to_python()


@pytest.mark.parametrize(
    ("args", "noted"),
    [
        (["kill", "job-1"], True),  # runc's default signal: SIGTERM
        (["kill", "job-1", "9"], True),
        (["kill", "--all", "job-1", "SIGKILL"], True),
        (["kill", "job-1", "sigterm"], True),
        (["kill", "job-1", "USR1"], False),
        (["kill", "job-1", "HUP"], False),
        (["kill", "job-2", "TERM"], False),  # no ARCH state: nothing created
    ],
)
def test_a_stop_signal_to_an_arch_container_is_noted_and_goes_to_runc(
    front: Front, args: list[str], noted: bool
) -> None:
    front.give_arch_state("default", "job-1")
    root = ["--root", "/run/containerd/runc/default"]
    front.run([*root, *args])
    assert front.went_to_runc()  # no notice: the kill itself is runc's
    flag = front.state_dir / "default" / "job-1" / "stop_signalled"
    assert flag.exists() == noted
    assert not (front.state_dir / "default" / "job-2").exists()
