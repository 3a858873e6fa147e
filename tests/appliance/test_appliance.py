"""The host after ansible/install.sh: packages, CRIU on this kernel, files, wiring, services."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import testinfra

pytestmark = pytest.mark.appliance

ROOT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
VENV = "/opt/arch/venv"
ARCH_RUNC = "/usr/local/bin/arch-runc"
ARCHCTL = "/usr/local/bin/archctl"
CONTAINERD_CONFIG = "/etc/containerd/config.toml"
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
UNIT = "/etc/systemd/system/arch-verify.service"
WANTS = "/etc/systemd/system/multi-user.target.wants"
EXIT_WATCH_UNIT = "/etc/systemd/system/arch-exit-watch.service"
EXIT_WATCH_PIDFILE = "/run/arch/exit-watch.pid"
SPOT_WATCH_UNIT = "/etc/systemd/system/arch-spot-watch.service"
ELF_PT_INTERP = 3

Host = testinfra.host.Host


def version_tuple(text: str, pattern: str) -> tuple[int, ...]:
    found = re.search(pattern, text)
    assert found, f"no version matching {pattern!r} in {text!r}"
    return tuple(int(part) for part in found.group(1).split("."))


def arch_toml(host: Host) -> dict[str, object]:
    """/etc/arch/arch.toml parsed by the venv's python (tomllib, or tomli before 3.11)."""
    script = (
        "import json, sys\n"
        "try:\n    import tomllib\nexcept ImportError:\n    import tomli as tomllib\n"
        "print(json.dumps(tomllib.load(open('/etc/arch/arch.toml', 'rb'))))\n"
    )
    output = host.check_output(f"{VENV}/bin/python -c %s", script)
    parsed: dict[str, object] = json.loads(output)
    return parsed


def test_packages_are_installed(host: Host) -> None:
    assert host.exists("runc")
    assert host.file("/usr/bin/containerd").exists
    assert host.file("/usr/bin/ctr").exists
    assert host.run(f"{ROOT_PATH} command -v iptables-restore").rc == 0
    assert host.file("/usr/bin/python3").exists
    assert host.run("/usr/bin/python3 -c 'import venv, ensurepip'").rc == 0
    assert host.run(f"{ROOT_PATH} command -v cc").rc == 0


def test_runc_is_at_least_1_1(host: Host) -> None:
    runc = str(arch_toml(host)["runc"])
    output = host.check_output(f"{runc} --version")
    assert version_tuple(output, r"runc version (\d+\.\d+)") >= (1, 1)


def test_criu_is_at_least_3_17_and_passes_check(host: Host) -> None:
    version = host.check_output(f"{ROOT_PATH} criu --version")
    assert version_tuple(version, r"Version:\s*(\d+\.\d+)") >= (3, 17)
    check = host.run(f"{ROOT_PATH} criu check")
    assert check.rc == 0, f"criu check failed: {check.stdout}{check.stderr}"


def test_arch_toml_points_to_the_real_runc(host: Host) -> None:
    config_file = host.file("/etc/arch/arch.toml")
    assert config_file.user == "root"
    assert config_file.mode == 0o644
    config = arch_toml(host)
    runc = str(config["runc"])
    assert runc.startswith("/")
    real_runc = host.file(runc)
    assert real_runc.exists and not real_runc.is_symlink, f"{runc} is not a resolved path"
    assert "arch-runc" not in runc and not runc.startswith(VENV)
    assert host.check_output(f"{runc} --version").startswith("runc version")
    assert config["checkpoint_root"] == "/checkpoint"
    assert config["state_dir"] == "/run/arch"
    assert config["log_file"] == "/var/log/arch/arch.log"
    assert config["log_level"] == "info"
    assert config["allowed_roots"] == ["/checkpoint"]
    assert config["restore_timeout"] == 45


@pytest.mark.parametrize(
    ("path", "mode"),
    [("/checkpoint", 0o700), ("/run/arch", 0o700), ("/var/log/arch", 0o700), ("/etc/arch", 0o755)],
)
def test_directories_and_permissions(host: Host, path: str, mode: int) -> None:
    directory = host.file(path)
    assert directory.is_directory
    assert directory.user == "root"
    assert directory.group == "root"
    assert directory.mode == mode


def test_venv_is_built_with_the_host_python(host: Host) -> None:
    pyvenv = host.file(f"{VENV}/pyvenv.cfg").content_string
    assert re.search(r"^home = /usr/bin$", pyvenv, re.MULTILINE), pyvenv
    for script in ("arch-runc", "archctl"):
        assert host.file(f"{VENV}/bin/{script}").mode & 0o111


def test_executables_on_path(host: Host) -> None:
    archctl = host.file(ARCHCTL)
    assert archctl.is_symlink and archctl.linked_to == f"{VENV}/bin/archctl"
    arch_runc = host.file(ARCH_RUNC)
    assert arch_runc.exists and arch_runc.mode & 0o111
    if not arch_runc.is_symlink:  # the native launcher
        assert host.file("/opt/arch/src/arch/shim/launcher.c").exists
    assert host.run(f"{ARCHCTL} --help").rc == 0


def test_arch_runc_version_is_runc_version(host: Host) -> None:
    runc = str(arch_toml(host)["runc"])
    expected = host.run(f"{runc} --version")
    actual = host.run(f"{ARCH_RUNC} --version")
    assert (actual.rc, actual.stdout, actual.stderr) == (
        expected.rc,
        expected.stdout,
        expected.stderr,
    )


def test_containerd_calls_arch_runc(host: Host) -> None:
    show = host.check_output(
        f"{VENV}/bin/python -m arch.appliance.containerd_config show --config {CONTAINERD_CONFIG}"
    )
    assert show.strip() == ARCH_RUNC
    assert re.search(
        r'BinaryName\s*=\s*"/usr/local/bin/arch-runc"', host.file(CONTAINERD_CONFIG).content_string
    )


def test_docker_has_the_arch_runtime_where_installed(host: Host) -> None:
    if not (host.file("/usr/sbin/dockerd").exists or host.file("/usr/bin/dockerd").exists):
        pytest.skip("dockerd is not installed (arch_install_docker=false): no daemon.json wiring")
    daemon = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert daemon["runtimes"]["arch"]["path"] == ARCH_RUNC


def test_tmpfiles_and_units(host: Host) -> None:
    tmpfiles = host.file("/etc/tmpfiles.d/arch.conf").content_string
    assert re.search(r"^d /run/arch 0700 root root -$", tmpfiles, re.MULTILINE)
    unit = host.file(UNIT)
    assert unit.mode == 0o644
    assert "ExecStart=/usr/local/bin/archctl verify" in unit.content_string
    assert "After=containerd.service" in unit.content_string
    link = host.file(f"{WANTS}/arch-verify.service")
    assert link.is_symlink and link.linked_to == UNIT
    containerd_link = host.file(f"{WANTS}/containerd.service")
    assert containerd_link.is_symlink and containerd_link.linked_to.endswith("containerd.service")


def test_containerd_socket_answers(host: Host) -> None:
    version = host.run(f"ctr --address {CONTAINERD_SOCKET} version")
    assert version.rc == 0, version.stderr
    assert "Server:" in version.stdout


def test_archctl_verify_passes(host: Host) -> None:
    verify = host.run(f"{ARCHCTL} verify")
    assert verify.rc == 0, f"{verify.stdout}{verify.stderr}"


def test_exit_watch_unit_is_installed_and_enabled(host: Host) -> None:
    unit = host.file(EXIT_WATCH_UNIT)
    assert unit.user == "root" and unit.mode == 0o644
    content = unit.content_string
    assert f"ExecStart={ARCHCTL} --address {CONTAINERD_SOCKET} watch-exits" in content, content
    assert "Environment=ARCH_CONFIG=/etc/arch/arch.toml" in content
    assert "After=containerd.service" in content
    assert "WantedBy=multi-user.target" in content
    link = host.file(f"{WANTS}/arch-exit-watch.service")
    assert link.is_symlink and link.linked_to == EXIT_WATCH_UNIT


def test_spot_watch_unit_is_installed_and_enabled(host: Host) -> None:
    unit = host.file(SPOT_WATCH_UNIT)
    assert unit.user == "root" and unit.mode == 0o644
    content = unit.content_string
    expected = f"ExecStart={ARCHCTL} --address {CONTAINERD_SOCKET} spot-watch --interval 1"
    assert expected in content, content
    assert "Environment=ARCH_CONFIG=/etc/arch/arch.toml" in content
    assert "KillMode=mixed" in content
    link = host.file(f"{WANTS}/arch-spot-watch.service")
    assert link.is_symlink and link.linked_to == SPOT_WATCH_UNIT
    # The unit's command line parses: --help exits 0 with the options the unit passes.
    usage = host.run(f"{ARCHCTL} spot-watch --help")
    assert usage.rc == 0 and "--rebalance" in usage.stdout, usage.stderr
    if not host.file("/run/systemd/system").is_directory:
        # No systemd: not started (there is no metadata service to poll on such hosts).
        assert host.run("pgrep -f 'archctl .*spot-watc[h]'").rc == 1


def test_exit_watcher_runs(host: Host) -> None:
    if host.file("/run/systemd/system").is_directory:
        assert host.service("arch-exit-watch").is_running
        return
    # No systemd: the role started it directly and tracks it by its pidfile.
    pidfile = host.file(EXIT_WATCH_PIDFILE)
    assert pidfile.exists, f"{EXIT_WATCH_PIDFILE} missing: the exit watcher was not started"
    pid = pidfile.content_string.strip()
    assert pid.isdigit(), f"{EXIT_WATCH_PIDFILE} holds {pid!r}"
    cmdline = host.file(f"/proc/{pid}/cmdline")
    assert cmdline.exists, f"exit watcher pid {pid} is not running"
    argv = cmdline.content.split(b"\0")
    assert b"watch-exits" in argv, argv
    assert any(arg.endswith(b"/archctl") for arg in argv), argv
    assert argv[argv.index(b"--address") + 1] == CONTAINERD_SOCKET.encode(), argv
    environ = host.file(f"/proc/{pid}/environ").content.split(b"\0")
    assert b"ARCH_CONFIG=/etc/arch/arch.toml" in environ


def elf_has_interpreter(binary: bytes) -> bool:
    """Whether a 64-bit little-endian ELF has a PT_INTERP header: dynamically linked."""
    assert binary[:4] == b"\x7fELF" and binary[4] == 2 and binary[5] == 1, "not an ELF64 LE file"
    phoff = int.from_bytes(binary[0x20:0x28], "little")
    phentsize = int.from_bytes(binary[0x36:0x38], "little")
    phnum = int.from_bytes(binary[0x38:0x3A], "little")
    return any(
        int.from_bytes(binary[offset : offset + 4], "little") == ELF_PT_INTERP
        for offset in range(phoff, phoff + phentsize * phnum, phentsize)
    )


def test_selftest_payload_builds_static(host: Host, tmp_path: Path) -> None:
    """`archctl selftest` compiles its container's program with the compiler and static C
    library the role installs; built here by the installed package, as selftest builds it."""
    payload = tmp_path / "payload"
    script = (
        "import sys\nfrom arch.appliance import selftest_payload\n"
        "open(sys.argv[1], 'wb').write(selftest_payload.build())\n"
    )
    built = host.run(f"{ROOT_PATH} {VENV}/bin/python -c %s %s", script, str(payload))
    assert built.rc == 0, built.stderr
    assert not elf_has_interpreter(payload.read_bytes()), "the payload is not static"
    payload.chmod(0o755)
    report = host.run(f"{payload} report /nonexistent")
    assert (report.rc, report.stdout) == (0, "/nonexistent\tmissing\n"), report.stderr
