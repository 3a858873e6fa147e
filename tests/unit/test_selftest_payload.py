"""The selftest's static payload: built for real with the host's C compiler, its `report` run on
this host, its `run` workload in a chroot (root only), and the errors when the compiler or the
static C library is missing, or a given payload is not static."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from arch.appliance import selftest_payload
from arch.appliance.oci_image import is_static_elf
from arch.appliance.selftest_payload import PayloadError, parse_report
from tests.conftest import require_root, unavailable

if TYPE_CHECKING:
    from collections.abc import Iterator

WAIT_SECONDS = 30.0
STATE_LINE = re.compile(rb"([0-9a-f]{32}) ([0-9]+)\n")


@pytest.fixture(scope="module")
def compiler() -> str:
    found = shutil.which(selftest_payload.COMPILER)
    if found is None:
        unavailable("no C compiler (cc) to build the selftest payload (the role installs gcc)")
    return found


@pytest.fixture(scope="module")
def payload(compiler: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    del compiler
    path = tmp_path_factory.mktemp("payload") / "arch-selftest-payload"
    path.write_bytes(selftest_payload.build())
    path.chmod(0o755)
    return path


def report(payload: Path, *paths: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(payload), "report", *paths], capture_output=True, text=True, timeout=30, check=False
    )


def test_build_gives_a_static_executable(payload: Path) -> None:
    assert is_static_elf(payload)
    assert selftest_payload.load(str(payload)) == payload.read_bytes()


def test_report_gives_exact_contents_and_missing_files(payload: Path, tmp_path: Path) -> None:
    text = tmp_path / "text"
    text.write_bytes(b"two\nlines\n")
    binary = tmp_path / "binary"
    binary.write_bytes(bytes(range(256)) * 40)  # longer than the payload's read buffer
    empty = tmp_path / "empty"
    empty.write_bytes(b"")

    completed = report(payload, str(text), str(binary), str(empty), str(tmp_path / "absent"))

    assert completed.returncode == 0, completed.stderr
    assert parse_report(completed.stdout) == {
        str(text): b"two\nlines\n",
        str(binary): bytes(range(256)) * 40,
        str(empty): b"",
        str(tmp_path / "absent"): None,
    }


def test_report_of_what_is_not_a_regular_file_is_an_error(payload: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    for path in (tmp_path, fifo):
        completed = report(payload, str(path))

        assert completed.returncode == 0, completed.stderr
        assert completed.stdout == f"{path}\terror\tnot a regular file\n"
        with pytest.raises(PayloadError, match=f"cannot read {path}: not a regular file"):
            parse_report(completed.stdout)


def test_payload_without_a_mode_is_a_usage_error(payload: Path) -> None:
    for argv in ([], ["run", "extra"], ["dance"]):
        completed = subprocess.run(
            [str(payload), *argv], capture_output=True, text=True, timeout=30, check=False
        )

        assert completed.returncode == 2
        assert completed.stderr.startswith("usage: arch-selftest-payload run | report PATH...")


@pytest.fixture
def chroot_workload(
    payload: Path, tmp_path: Path
) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """The payload's `run` in a chroot holding /etc/group and /etc/hostname; killed at the end."""
    require_root()
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "group").write_text("root:x:0:\n")
    (root / "etc" / "hostname").write_text("before\n")
    (root / "bin").mkdir()
    shutil.copy(payload, root / "bin" / "payload")
    workload = subprocess.Popen(
        ["chroot", str(root), "/bin/payload", "run"],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield root, workload
    finally:
        workload.kill()
        workload.wait()
        if workload.stderr is not None:
            workload.stderr.close()


def wait_for_counter(root: Path, workload: subprocess.Popen[bytes], above: int) -> re.Match[bytes]:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        assert workload.poll() is None, workload.stderr.read() if workload.stderr else ""
        state = root / "selftest" / "state"
        match = STATE_LINE.fullmatch(state.read_bytes()) if state.exists() else None
        if match is not None and int(match.group(2)) > above:
            return match
        assert time.monotonic() < deadline, f"the counter did not pass {above}"
        time.sleep(0.1)


def test_workload_changes_the_filesystem_and_counts_in_memory(
    chroot_workload: tuple[Path, subprocess.Popen[bytes]],
) -> None:
    root, workload = chroot_workload

    first = wait_for_counter(root, workload, above=0)
    later = wait_for_counter(root, workload, above=int(first.group(2)) + 1)

    token = first.group(1)
    assert later.group(1) == token
    assert (root / "selftest" / "note").read_bytes() == token + b"\n"
    assert (root / "etc" / "hostname").read_bytes() == b"changed by archctl selftest\n"
    assert not (root / "etc" / "group").exists()
    assert not (root / "selftest" / "to-rename").exists()
    assert (root / "selftest" / "renamed").read_bytes() == b"renamed\n"
    assert (root / "selftest" / "boots").read_bytes() == b"boot\n"
    assert stat.S_IMODE((root / "selftest").stat().st_mode) == 0o755


def test_workload_fails_loudly_when_it_cannot_change_the_image(
    payload: Path, tmp_path: Path
) -> None:
    require_root()
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy(payload, root / "bin" / "payload")  # no /etc at all

    completed = subprocess.run(
        ["chroot", str(root), "/bin/payload", "run"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert completed.returncode == 1
    assert completed.stderr == (
        "arch-selftest-payload: cannot open /etc/hostname: No such file or directory\n"
    )
    assert (root / "selftest" / "boots").read_bytes() == b"boot\n"


def test_build_without_a_compiler_says_what_to_install() -> None:
    with pytest.raises(PayloadError) as raised:
        selftest_payload.build("no-such-cc-anywhere")

    message = str(raised.value)
    assert "\n" not in message
    assert message == (
        "no C compiler (no-such-cc-anywhere) on PATH to build the selftest payload: install "
        "gcc, or pass --payload PATH"
    )


def test_build_without_the_static_c_library_says_what_to_install(
    compiler: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real compiler on a host without libc.a: where the host has one, it is hidden by a
    whiteout in an overlay over its directory, in a private mount namespace of the compiler."""
    static_libc = subprocess.run(
        [compiler, "-print-file-name=libc.a"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if os.path.isabs(static_libc):
        require_root()
        monkeypatch.setenv("PATH", f"{hiding_wrapper(compiler, static_libc, tmp_path)}:/usr/bin")

    with pytest.raises(PayloadError) as raised:
        selftest_payload.build()

    assert str(raised.value) == (
        "cc cannot link statically: the static C library (libc.a) is missing; install "
        "glibc-static (Amazon Linux, RHEL) or libc6-dev (Debian, Ubuntu), or pass --payload PATH"
    )


def hiding_wrapper(compiler: str, static_libc: str, work_dir: Path) -> Path:
    """A directory holding `cc`: `compiler` in a mount namespace where `static_libc` is absent."""
    upper, overlay_work, wrapper_dir = (work_dir / name for name in ("upper", "work", "bin"))
    for directory in (upper, overlay_work, wrapper_dir):
        directory.mkdir()
    os.mknod(upper / "libc.a", stat.S_IFCHR | 0o600, os.makedev(0, 0))  # an overlay whiteout
    library_dir = os.path.dirname(static_libc)
    options = f"lowerdir={library_dir},upperdir={upper},workdir={overlay_work}"
    wrapper = wrapper_dir / "cc"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"exec unshare --mount sh -c 'mount -t overlay overlay -o {options} {library_dir} "
        f'&& exec {compiler} "$@"\' sh "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper_dir


def test_compile_errors_are_reported_by_their_first_error_line(
    compiler: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real compiler without the system headers.
    wrapper_dir = tmp_path / "bin"
    wrapper_dir.mkdir()
    wrapper = wrapper_dir / "cc-without-headers"
    wrapper.write_text(f'#!/bin/sh\nexec {compiler} -nostdinc "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper_dir}{os.pathsep}{os.environ['PATH']}")

    with pytest.raises(PayloadError) as raised:
        selftest_payload.build("cc-without-headers")

    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("cc-without-headers failed to build the selftest payload (exit 1): ")
    reason = message.split("(exit 1): ", 1)[1]
    assert "error: " in reason and "errno.h" in reason, message


def test_a_dynamically_linked_payload_is_refused() -> None:
    dynamic = shutil.which("env")
    assert dynamic is not None and not is_static_elf(Path(dynamic))

    with pytest.raises(PayloadError, match="is not a statically linked 64-bit ELF executable"):
        selftest_payload.load(dynamic)
    with pytest.raises(PayloadError, match="no such file"):
        selftest_payload.load("/nonexistent/payload")


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("", {}),
        ("/a\tfile\t\n", {"/a": b""}),
        ("/a\tfile\t6f6b0a\n/b\tmissing\n", {"/a": b"ok\n", "/b": None}),
    ],
)
def test_parse_report(output: str, expected: dict[str, bytes | None]) -> None:
    assert parse_report(output) == expected


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("/a\terror\tPermission denied\n", "the container cannot read /a: Permission denied"),
        ("/a\tfile\t6f6b\terror\tInput/output error\n", "cannot read /a: Input/output error"),
        ("/a=ok\n", "not a line of the payload's report: '/a=ok'"),
        ("/a\tfile\t6f6\n", "not a line of the payload's report"),
        ("/a\tfile\tXY\n", "not a line of the payload's report"),
        ("/a\tgone\n", "not a line of the payload's report"),
    ],
)
def test_parse_report_refuses_errors_and_foreign_lines(output: str, message: str) -> None:
    with pytest.raises(PayloadError, match=re.escape(message)):
        parse_report(output)


def test_the_source_ships_in_the_package() -> None:
    assert selftest_payload.SOURCE.is_file()
    assert selftest_payload.SOURCE.parent.name == "appliance"
